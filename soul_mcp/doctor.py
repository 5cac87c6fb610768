"""The checks behind `soul-mcp doctor`: is the database whole and current, does the full-text index
match the memories, who may read the files, what a client sees. The result is a typed report;
the CLI renders it (soul_mcp/cli/doctor.py), as text or as JSON with stable keys.

Looking leaves no trace: wake_up is called without a session and the client view reads the
wake_up prompt, so `stats` shows no doctor among the clients.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soul_mcp.config import Settings
from soul_mcp.wording import count, human_bytes

if TYPE_CHECKING:
    from soul_mcp.server.probe import ClientView


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # passed, with something the owner should fix


@dataclass
class Configuration:
    """The settings in effect, with where the database path came from."""

    db_path: str
    db_source: str  # "--db", "$SOUL_MCP_DB" or "default"
    synchronous: str
    max_memory_chars: int
    max_document_chars: int
    synchronous_in_effect: str | None = None  # what SQLite reports, once the database opened

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.synchronous_in_effect is None:
            del data["synchronous_in_effect"]
        return data


@dataclass
class WakeUpSize:
    used_chars: int
    budget_chars: int
    trimmed: list[str]


@dataclass
class DoctorReport:
    db_path: str
    config: Configuration
    checks: list[Check] = field(default_factory=list)
    client_view: ClientView | None = None  # None when the checks stopped before a client connected
    wake_up: WakeUpSize | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, name: str, ok: bool, detail: str, warning: bool = False) -> None:
        self.checks.append(Check(name, ok, detail, warning))

    def as_json(self) -> dict[str, Any]:
        """The report as `doctor --json` prints it; keys missing rather than null where a check
        could not get that far, as scripts have always seen it."""
        data: dict[str, Any] = {
            "ok": self.ok,
            "db_path": self.db_path,
            "checks": [asdict(check) for check in self.checks],
            "config": self.config.as_json(),
            "client_view": asdict(self.client_view) if self.client_view else None,
        }
        if self.wake_up is not None:
            data["wake_up"] = asdict(self.wake_up)
        return data


def database_file_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk of the database and its WAL and shared-memory files (0 when absent)."""
    sizes = {}
    for key, suffix in (("database", ""), ("wal", "-wal"), ("shm", "-shm")):
        try:
            sizes[key] = os.stat(f"{path}{suffix}").st_size
        except OSError:
            sizes[key] = 0
    return sizes


async def examine(settings: Settings, db_source: str) -> DoctorReport:
    """Run every check on the database `settings` name; never creates it."""
    from soul_mcp.storage.sqlite import exposed_files

    # A PostgreSQL database is named by its URL without the password, and has no file here.
    path = settings.db_path if settings.db_url else settings.db_path.expanduser().resolve()
    shown = settings.shown_db if settings.db_url else str(path)
    report = DoctorReport(
        db_path=shown,
        config=Configuration(
            db_path=shown,
            db_source=db_source,
            synchronous=settings.synchronous,
            max_memory_chars=settings.limits.memory_chars,
            max_document_chars=settings.limits.document_chars,
        ),
    )
    if settings.db_url:
        await _examine_database(settings, path, report)
        return report
    if not path.exists():
        report.check("database file", False, f"no database at {path}; create it with `soul-mcp init` "
                     "or point --db / $SOUL_MCP_DB at an existing one")  # fmt: skip
        return report
    await _examine_database(settings, path, report)
    exposed = exposed_files(path)
    if exposed:
        files = " ".join(shlex.quote(str(p)) for p, _ in exposed if p != path.parent)
        fix = " && ".join(([f"chmod 600 {files}"] if files else []) + (
            [f"chmod 700 {shlex.quote(str(path.parent))}"] if exposed[0][0] == path.parent else []))  # fmt: skip
        report.check("file permissions", True, "other users may read or change "
                     + ", ".join(f"{p} ({mode:o})" for p, mode in exposed) + f"; to fix: {fix}", warning=True)  # fmt: skip
    else:
        report.check("file permissions", True, "only the owner can read the database and its folder")
    return report


async def _examine_database(settings: Settings, path: Path, report: DoctorReport) -> None:
    """Open the self and check what is stored, then what a client sees; stops at the first
    failure that makes the later checks meaningless."""
    from soul_mcp.core import AgentSelf
    from soul_mcp.errors import StorageError
    from soul_mcp.models import Actor

    check = report.check
    try:
        agent_self = await AgentSelf.open(settings)
    except StorageError as exc:
        check("database opens", False, str(exc))
        return
    try:
        d = await agent_self.diagnose()
        if settings.db_url:
            check("database opens", True, f"PostgreSQL, {d.synchronous}")
        else:
            size = database_file_sizes(path)
            check("database opens", True, f"{human_bytes(size['database'])}, WAL "
                  f"{human_bytes(size['wal'])}, journal mode {d.journal_mode}")  # fmt: skip
        if agent_self.read_only:
            check("writable", False, f"the database is read-only here ({agent_self.read_only}): "
                  "soul-mcp can read it but not store anything; run it as a user who may write the "
                  "file and its folder, or fix their permissions")  # fmt: skip
        check("integrity", d.integrity == ["ok"], "; ".join(d.integrity[:5]))
        migrated = f", migrated from {d.migrated_from} just now" if d.migrated_from is not None else ""
        check("schema version", d.schema_version == d.expected_schema_version,
              f"{d.schema_version} (this soul-mcp expects {d.expected_schema_version}{migrated})")  # fmt: skip
        # Its check writes; on a read-only file the "writable" check has said what is wrong.
        check("full-text index", d.index_check == "ok" or bool(agent_self.read_only),
              f"internal check: {d.index_check}")  # fmt: skip
        consistent = d.missing_from_index == 0 and d.stale_in_index == 0
        detail = (f"{count(d.active_memories, 'active memory', 'active memories')}, "
                  f"{d.indexed_memories} indexed")  # fmt: skip
        if not consistent:
            detail += (f"; {d.missing_from_index} missing from the index, {d.stale_in_index} stale "
                       "in it: recall misses or misranks memories; `soul-mcp reindex` rebuilds it")  # fmt: skip
        check("index matches memories", consistent, detail)
        report.config.synchronous_in_effect = d.synchronous
        woken = await agent_self.wake_up(Actor(name="doctor"))  # no session: leaves no trace
        report.wake_up = WakeUpSize(woken.used_chars, woken.budget_chars, woken.trimmed)
    except (StorageError, sqlite3.DatabaseError) as exc:
        check("database readable", False, str(exc))
        return
    finally:
        await agent_self.close()
    try:
        from soul_mcp.server.probe import client_view

        view = await client_view(settings)
    except Exception as exc:  # whatever breaks here is what a client would hit
        check("a client connects", False, f"{type(exc).__name__}: {exc}")
        return
    report.client_view = view
    check("a client connects", bool(view.tools),
          f"{len(view.tools)} tools, {len(view.resources) + len(view.resource_templates)} "
          f"resources, {len(view.prompts)} prompts")  # fmt: skip
