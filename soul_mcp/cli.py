"""The soul-mcp command line: a thin layer over AgentSelf, the same core the MCP server calls.

Each command opens the database, makes one call, prints the result (text, or JSON with --json) and
closes. At a terminal the text has aligned tables and colour (none when NO_COLOR is set or stdout is
not a terminal); --json prints the same data with stable keys for scripts. Errors go to stderr as
`error: ...`.

Exit codes scripts can rely on:
    0  success; also when the reader of stdout went away early (`soul-mcp recall x | head -1`)
    1  refused or not found: the message on stderr says why (bad value, unknown id, no reason, ...);
       also `serve --http` that cannot listen (the port is taken, the address is not this machine's)
    2  usage error: unknown command or option, missing argument, an option's value out of range
       (`--port 99999`), an invalid setting in the environment (`SOUL_MCP_LOG_LEVEL=verbose`)
    3  database problem: it does not exist (for a command that reads or changes what is stored; only
       init, remember, import, edit, token create and serve create one), its folder cannot be
       created, it cannot be opened or is damaged, or `doctor` found a problem
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from soul_mcp import __version__, terminal
from soul_mcp.config import DB_ENV, Settings, SettingsError, log_level_from_env
from soul_mcp.errors import SoulError, StorageError
from soul_mcp.files import make_private_dirs

log = logging.getLogger("soul_mcp")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_DATABASE = 0, 1, 2, 3


def doc_commands() -> dict[str, str]:
    """CLI name -> document, for every document the self keeps ('north-star' -> 'north_star')."""
    from soul_mcp.names import DOCUMENTS

    return {document.replace("_", "-"): document for document in DOCUMENTS}


def _actor() -> Any:
    from soul_mcp.models import Actor

    try:
        user = getpass.getuser()
    except Exception:  # no user name on some containers
        user = "user"
    return Actor(name=f"cli:{user}")


def _style() -> terminal.Style:
    return terminal.Style(terminal.colour_enabled(sys.stdout))


def _count(n: int, noun: str, plural: str = "") -> str:
    """'1 version', '2 versions', '1 memory' ('memories' given as the plural)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def _clean_name(name: str) -> str:
    """An author or client name made safe to print: older databases may hold escape codes."""
    from soul_mcp.core.text import clean_name  # imported here: soul_mcp.core is not light

    return clean_name(name)


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def _print(args: argparse.Namespace, model: Any, text: str) -> None:
    if args.json:
        data = model.model_dump(mode="json") if hasattr(model, "model_dump") else model
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(text)


def _database_problem(settings: Settings, must_exist: bool) -> str | None:
    """Why the database cannot be used, found before opening it: it is missing (for a command that
    only reads or changes what is stored), or its folder cannot be created. None: go ahead."""
    path = settings.db_path.expanduser().absolute()
    check = f"check --db / ${DB_ENV}"
    if must_exist and not path.exists():
        return f"no database at {path}; create it with `soul-mcp init` (or {check})"
    try:
        make_private_dirs(path.parent)
    except OSError as exc:
        why = exc.strerror or str(exc)
        blocking = next(parent for parent in path.parents if parent.exists())
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and not blocking.is_dir():
            why = f"{blocking} is a file, not a folder"
        return f"cannot create the database folder {path.parent}: {why} ({check})"
    return None


def _run(args: argparse.Namespace, work: Callable[[Any], Awaitable[None]], must_exist: bool = False) -> int:
    """Open the self, run one piece of work, close. A database problem exits 3, any other
    SoulError (refused, not found) exits 1. With `must_exist` (commands that read or change what is
    stored) a missing database is refused rather than created empty."""
    import anyio

    from soul_mcp.core import AgentSelf

    settings = Settings.load(args.db)
    if problem := _database_problem(settings, must_exist):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_DATABASE

    async def main() -> None:
        agent_self = await AgentSelf.open(settings)
        try:
            await work(agent_self)
        finally:
            await agent_self.close()

    try:
        anyio.run(main)
    except (StorageError, sqlite3.DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except SoulError as exc:
        return _refuse(str(exc))
    return EXIT_OK


# Commands ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db, soul_policy=args.soul_policy)
    http_only = [flag for flag, value in (("--host", args.host), ("--port", args.port),
                 ("--allowed-host", args.allowed_host), ("--insecure-no-auth", args.insecure_no_auth)) if value]  # fmt: skip
    if http_only and not args.http:
        print(f"error: {', '.join(http_only)} only apply with --http", file=sys.stderr)
        return 2
    if args.http:
        # Over HTTP an operator is watching the start: a database that cannot be used stops it
        # there. Over stdio the server stays up and every call answers why (server/state.py).
        if problem := _database_problem(settings, must_exist=False):
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_DATABASE
        return _serve_http(args, settings)
    if sys.stdin.isatty():
        print(_serve_hint(args, settings), file=sys.stderr)
    from soul_mcp.server.warmstart import serve_stdio

    log.info("serving over stdio, database %s", settings.db_path)
    # Answers initialize and tools/list from a cache while the SDK loads: see server/warmstart.py.
    return serve_stdio(settings)


def _serve_hint(args: argparse.Namespace, settings: Settings) -> str:
    """What `serve` says at a terminal: how a client starts this very installation (by absolute
    path, as `soul-mcp config` prints it: a client has neither your PATH nor your venv)."""
    from soul_mcp.clients import launcher, shell_join

    command, *rest = launcher()
    # A client does not see $SOUL_MCP_DB either: name any database that is not the default.
    db = ["--db", str(settings.db_path.expanduser().absolute())] if _db_source(args) != "default" else []
    serve = [*rest, "serve", *db]
    config = {"mcpServers": {"soul": {"command": command, "args": serve}}}
    return (
        "soul-mcp speaks MCP over stdin/stdout; it is meant to be started by an MCP client.\n"
        f"Database: {settings.db_path.expanduser().absolute()}\n"
        "Add it to a client, e.g. Claude Code:  "
        f"{shell_join(['claude', 'mcp', 'add', 'soul', '--', command, *serve])}\n"
        "or Claude Desktop's claude_desktop_config.json:\n"
        f"  {json.dumps(config)}\n"
        "(`soul-mcp config HOST` prints these for claude-desktop, claude-code, cursor and vscode.)\n"
        "Waiting for a client on stdin (Ctrl-C to stop)."
    )


def cmd_wake(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        woken = await s.wake_up(_actor(), focus=args.focus, budget_chars=args.budget)
        _print(args, woken, woken.text)

    return _run(args, work, must_exist=True)


def cmd_remember(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.remember(
            args.text, _actor(), kind=args.kind, tags=args.tag, importance=args.importance,
            occurred_at=args.occurred_at,
        )  # fmt: skip
        _print(args, result, render.remember(result))

    return _run(args, work)


def cmd_recall(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.recall(
            args.query, limit=args.limit, tags=args.tag, kind=args.kind, since=args.since,
            until=args.until, cursor=args.cursor,
        )  # fmt: skip
        _print(args, result, render.recall(result))

    return _run(args, work, must_exist=True)


def cmd_forget(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.forget(args.memory_id, args.reason)
        _print(args, memory, "Forgotten (restore-memory brings it back):\n" + render.memory(memory))

    return _run(args, work, must_exist=True)


def cmd_restore_memory(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.restore_memory(args.memory_id)
        _print(args, memory, "Restored:\n" + render.memory(memory))

    return _run(args, work, must_exist=True)


def cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "error: purge deletes for good; pass --yes to confirm when not at a terminal", file=sys.stderr
            )
            return 1
        answer = input(f"Delete forgotten memory {args.memory_id} for good? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("Nothing deleted.")
            return 1

    async def work(s: Any) -> None:
        await s.purge(args.memory_id)
        _print(args, {"purged": args.memory_id}, f"Purged {args.memory_id}.")

    return _run(args, work, must_exist=True)


def cmd_doc_show(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        doc = await s.read(args.document, args.version)
        _print(args, doc, doc.content if args.raw else render.document(doc))

    return _run(args, work, must_exist=True)


def cmd_doc_history(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.history(args.document, limit=args.limit, before_version=args.before)
        _print(args, result, render.history(result))

    return _run(args, work, must_exist=True)


def cmd_doc_diff(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.diff(args.document, args.a, args.b)
        _print(args, result, render.diff(result).rstrip("\n"))

    return _run(args, work, must_exist=True)


def cmd_backup(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        done = await s.backup(args.path, overwrite=args.force)
        stats = done.stats
        lines = [
            f"Backed up to {done.path}: {done.bytes:,} bytes, integrity {done.integrity}",
            f"Memories: {stats.memories_active} active, {stats.memories_forgotten} forgotten, "
            f"{stats.memories_superseded} superseded",
            *(f"{doc}: {_count(n, 'version')}" for doc, n in sorted(stats.document_versions.items())),
            f"Sessions: {stats.sessions}",
        ]
        _print(args, done, "\n".join(lines))

    return _run(args, work, must_exist=True)


def cmd_doc_edit(args: argparse.Namespace) -> int:
    """Read the document, open the editor, store a new version only if the text changed."""
    from soul_mcp.core import render
    from soul_mcp.core.self import REASON_REQUIRED
    from soul_mcp.errors import InvalidInput

    name = args.command
    needs_reason = args.document in REASON_REQUIRED
    if needs_reason and args.reason is None and not sys.stdin.isatty():
        return _refuse(f"a change to the {name} needs a reason: pass --reason when not at a terminal")
    before: dict[str, Any] = {}

    async def read(s: Any) -> None:
        before["doc"] = await s.read(args.document)

    if code := _run(args, read):
        return code
    doc = before["doc"]
    try:
        edited, path = terminal.edit_text(doc.content, args.document)
    except terminal.EditorError as exc:
        return _refuse(str(exc))
    if edited.replace("\r\n", "\n") == doc.content:
        path.unlink(missing_ok=True)
        unchanged = None if doc.version is None else doc.model_dump(exclude={"adopted", "hint"})
        _print(args, {"version": unchanged, "changed": False}, f"No changes to the {name}; nothing saved.")
        return 0
    reason = args.reason
    if needs_reason and reason is None:
        try:
            reason = input(f"Why this change to the {name}? ")
        except EOFError:
            reason = ""

    async def write(s: Any) -> None:
        latest = await s.read(args.document)
        if latest.version != doc.version:
            raise InvalidInput(
                f"the {name} changed while you were editing (now version {latest.version} by "
                f"{_clean_name(latest.author)}); edit again to start from it"
            )
        result = await s.write(args.document, edited, _actor(), reason)
        _print(args, result, render.write(result))

    code = _run(args, write)
    if code == 0:
        path.unlink(missing_ok=True)
    else:
        print(f"Your text is kept in {path}", file=sys.stderr)
    return code


def cmd_doc_restore(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.restore(args.document, args.version, args.reason, _actor())
        _print(args, result, render.write(result))

    return _run(args, work, must_exist=True)


# Memories, listed -------------------------------------------------------------------------------


def cmd_memories_list(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        page = await s.list_memories(
            args.status, kind=args.kind, tags=args.tag, since=args.since, until=args.until,
            limit=args.limit, cursor=args.cursor, offset=args.offset,
        )  # fmt: skip
        _print(args, page, _memory_table(page))

    return _run(args, work, must_exist=True)


def _memory_table(page: Any) -> str:
    style = _style()
    label = "memories" if page.status == "all" else f"{page.status} memories"
    if not page.memories:
        return f"No {label} on this page ({page.total} match)." if page.total else f"No {label} match."
    first, last = page.offset + 1, page.offset + len(page.memories)
    head = f"{label.capitalize()} {first}-{last} of {page.total}, newest first:"
    show_status = page.status == "all"
    headers = ["ID", "DATE", "KIND", "IMP", *(["STATUS"] if show_status else []), "TAGS", "AUTHOR"]
    rows = [
        [m.id, m.occurred_at[:10], m.kind, str(m.importance), *([m.status] if show_status else []),
         terminal.clip(" ".join(f"#{t}" for t in m.tags), 24), terminal.clip(_clean_name(m.author), 20)]
        for m in page.memories
    ]  # fmt: skip
    used = sum(
        max(terminal.width(h), *(terminal.width(r[i]) for r in rows)) + 2 for i, h in enumerate(headers)
    )
    room = max(24, terminal.terminal_columns() - used)  # the content fills the rest of the line
    headers.append("CONTENT")
    for row, memory in zip(rows, page.memories, strict=True):
        row.append(terminal.clip(memory.content, room))
    lines = [head, terminal.table(headers, rows, style, right=[3])]
    if page.next_cursor:
        lines.append(style(f"More: --cursor {page.next_cursor} (or --offset {page.next_offset})", "dim"))
    return "\n".join(lines)


def cmd_memories_show(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.get_memory(args.memory_id)
        _print(args, memory, render.memory(memory))

    return _run(args, work, must_exist=True)


# The database: init, stats, doctor --------------------------------------------------------------


def _db_source(args: argparse.Namespace) -> str:
    """Where the database path came from: "--db", "$SOUL_MCP_DB" or "default" (stable, for --json)."""
    if args.db:
        return "--db"
    return f"${DB_ENV}" if os.environ.get(DB_ENV) else "default"


def _file_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk of the database and its WAL and shared-memory files (0 when absent)."""
    sizes = {}
    for key, suffix in (("database", ""), ("wal", "-wal"), ("shm", "-shm")):
        try:
            sizes[key] = os.stat(f"{path}{suffix}").st_size
        except OSError:
            sizes[key] = 0
    return sizes


def cmd_init(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db)
    path = settings.db_path.expanduser().resolve()
    existed = path.exists()

    async def work(s: Any) -> None:
        stats = await s.stats()
        db = f" --db {shlex.quote(str(path))}" if args.db else ""
        if existed:
            head = (
                f"The database at {path} already exists "
                f"({_count(stats.memories_active, 'active memory', 'active memories')}, "
                f"{_count(sum(stats.document_versions.values()), 'document version')}); nothing changed."
            )
        else:
            head = f"Created the database at {path}."
        steps = [
            (f"soul-mcp config claude-desktop{db}", "a ready client configuration (also: claude-code, cursor, vscode)"),
            (f"soul-mcp import WORKSPACE{db}", "bring in SOUL.md, MEMORY.md and memory/*.md"),
            (f"soul-mcp doctor{db}", "check the database and what a client will see"),
        ]  # fmt: skip
        pad = max(len(command) for command, _ in steps) + 3
        text = "\n".join([head, "Next steps:", *(f"  {c:<{pad}}{what}" for c, what in steps)])
        _print(args, {"db_path": str(path), "created": not existed, "source": _db_source(args)}, text)

    return _run(args, work)


def cmd_stats(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db)

    async def work(s: Any) -> None:
        stats = await s.stats()
        clients = await s.client_activity()
        files = _file_sizes(settings.db_path)
        if args.json:
            data = {**stats.model_dump(mode="json"), "db_path": str(settings.db_path), "files": files,
                    "clients": [c.model_dump(mode="json") for c in clients]}  # fmt: skip
            _print(args, data, "")
            return
        style = _style()
        docs = ", ".join(
            f"{doc.replace('_', '-')} {n} version{'s' if n != 1 else ''}"
            for doc, n in sorted(stats.document_versions.items())
        )
        lines = [
            f"Memories: {stats.memories_active} active, {stats.memories_forgotten} forgotten, "
            f"{stats.memories_superseded} superseded",
            f"Documents: {docs or 'none written yet'}",
            f"Sessions: {stats.sessions}",
            f"Database: {settings.db_path} ({terminal.human_bytes(files['database'])}, "
            f"WAL {terminal.human_bytes(files['wal'])})",
        ]
        if clients:
            rows = [
                [
                    _clean_name(c.client),
                    str(c.sessions),
                    str(c.memories),
                    str(c.versions),
                    c.last_active_at or "-",
                ]
                for c in clients
            ]
            headers = ["CLIENT", "SESSIONS", "MEMORIES", "VERSIONS", "LAST ACTIVE"]
            lines += ["", "Activity per client, most recent first:",
                      terminal.table(headers, rows, style, right=[1, 2, 3])]  # fmt: skip
        _print(args, None, "\n".join(lines))

    return _run(args, work, must_exist=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check everything a working self needs; exit 3 when anything is wrong."""
    import anyio

    from soul_mcp.core import AgentSelf
    from soul_mcp.errors import StorageError
    from soul_mcp.models import Actor
    from soul_mcp.storage.sqlite import exposed_files

    settings = Settings.load(args.db)
    path = settings.db_path.expanduser().resolve()
    checks: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "ok": True,
        "db_path": str(path),
        "checks": checks,
        "config": {
            "db_path": str(path),
            "db_source": _db_source(args),
            "synchronous": settings.synchronous,
            "max_memory_chars": settings.limits.memory_chars,
            "max_document_chars": settings.limits.document_chars,
        },
        "client_view": None,
    }

    def check(name: str, ok: bool, detail: str, warning: bool = False) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail, "warning": warning})
        report["ok"] = report["ok"] and ok

    async def examine() -> None:
        try:
            agent_self = await AgentSelf.open(settings)
        except StorageError as exc:
            check("database opens", False, str(exc))
            return
        try:
            d = await agent_self.diagnose()
            size = _file_sizes(path)
            check("database opens", True, f"{terminal.human_bytes(size['database'])}, WAL "
                  f"{terminal.human_bytes(size['wal'])}, journal mode {d.journal_mode}")  # fmt: skip
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
            detail = (f"{_count(d.active_memories, 'active memory', 'active memories')}, "
                      f"{d.indexed_memories} indexed")  # fmt: skip
            if not consistent:
                detail += (f"; {d.missing_from_index} missing from the index, {d.stale_in_index} stale "
                           "in it: recall misses or misranks memories; `soul-mcp reindex` rebuilds it")  # fmt: skip
            check("index matches memories", consistent, detail)
            report["config"]["synchronous_in_effect"] = d.synchronous
            woken = await agent_self.wake_up(Actor(name="doctor"))  # no session: leaves no trace
            report["wake_up"] = {"used_chars": woken.used_chars, "budget_chars": woken.budget_chars,
                                 "trimmed": woken.trimmed}  # fmt: skip
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
        report["client_view"] = view
        check("a client connects", bool(view["tools"]),
              f"{len(view['tools'])} tools, {len(view['resources']) + len(view['resource_templates'])} "
              f"resources, {len(view['prompts'])} prompts")  # fmt: skip

    if not path.exists():
        check("database file", False, f"no database at {path}; create it with `soul-mcp init` "
              "or point --db / $SOUL_MCP_DB at an existing one")  # fmt: skip
    else:
        anyio.run(examine)
        exposed = exposed_files(path)
        if exposed:
            files = " ".join(shlex.quote(str(p)) for p, _ in exposed if p != path.parent)
            fix = " && ".join(([f"chmod 600 {files}"] if files else []) + (
                [f"chmod 700 {shlex.quote(str(path.parent))}"] if exposed[0][0] == path.parent else []))  # fmt: skip
            check("file permissions", True, "other users may read or change "
                  + ", ".join(f"{p} ({mode:o})" for p, mode in exposed) + f"; to fix: {fix}", warning=True)  # fmt: skip
        else:
            check("file permissions", True, "only the owner can read the database and its folder")
    _print(args, report, _doctor_text(report))
    return 0 if report["ok"] else EXIT_DATABASE


def _doctor_text(report: dict[str, Any]) -> str:
    style = _style()
    lines = [style(f"soul-mcp doctor: {report['db_path']}", "bold"), ""]
    rows = [
        [style("FAIL", "red", "bold") if not c["ok"] else style("warn", "yellow") if c.get("warning")
         else style("ok", "green"), c["name"], c["detail"]]
        for c in report["checks"]
    ]  # fmt: skip
    lines.append(terminal.table(["", "CHECK", "DETAIL"], rows, style, indent="  "))
    config = report["config"]
    sync = config["synchronous"]
    if config.get("synchronous_in_effect", sync) != sync:
        sync += f" (in effect: {config['synchronous_in_effect']})"
    lines += [
        "",
        style("Configuration", "bold"),
        f"  database     {config['db_path']} (from {config['db_source'].replace('default', 'the platform default')})",
        f"  synchronous  {sync} (SOUL_MCP_SYNCHRONOUS)",
        terminal.wrap(
            "  limits       ",
            f"memory {config['max_memory_chars']:,} chars (SOUL_MCP_MAX_MEMORY_CHARS), "
            f"document {config['max_document_chars']:,} chars (SOUL_MCP_MAX_DOCUMENT_CHARS)",
        ),
    ]
    view = report.get("client_view")
    if view:
        wake = report.get("wake_up") or {}
        trimmed = ", ".join(wake.get("trimmed") or []) or "nothing trimmed"
        lines += [
            "",
            style("What a client sees", "bold"),
            f"  server     {view['server']}",
            terminal.wrap("  tools      ", ", ".join(view["tools"])),
            terminal.wrap("  resources  ", ", ".join(view["resources"] + view["resource_templates"])),
            terminal.wrap("  prompts    ", ", ".join(view["prompts"])),
            f"  wake_up    {wake.get('used_chars', '?'):,} of {wake.get('budget_chars', '?'):,} characters, {trimmed}",
        ]
    problems = sum(not c["ok"] for c in report["checks"])
    warnings = sum(bool(c["ok"] and c.get("warning")) for c in report["checks"])
    passed = "All checks passed." if not warnings else f"All checks passed, {warnings} with a warning."
    lines += ["", style(passed, "green") if not problems else
              style(f"{problems} problem{'s' if problems != 1 else ''} found.", "red", "bold")]  # fmt: skip
    return "\n".join(lines)


# Hosts: ready configuration ---------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    from soul_mcp.clients import host_config

    settings = Settings.load(args.db)
    config = host_config(args.host, settings.db_path, name=args.name, scope=getattr(args, "scope", "user"))
    if args.json:
        _print(args, config, "")
    else:
        print(json.dumps(config["snippet"], indent=2) if config["snippet"] else config["shell"])
        print(f"# {config['where']}", file=sys.stderr)
    return 0


def _serve_http(args: argparse.Namespace, settings: Settings) -> int:
    from soul_mcp.server.http import BindError, ConfigError, serve_http

    try:
        serve_http(
            settings,
            host=args.host or "127.0.0.1",
            port=args.port if args.port is not None else 8765,
            allowed_hosts=args.allowed_host or [],
            insecure_no_auth=args.insecure_no_auth,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BindError as exc:
        return _refuse(str(exc))
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        new = await s.create_token(args.name, args.scope)
        info = new.info
        _print(
            args,
            {**info.model_dump(mode="json"), "token": new.token},
            f"Created token {info.name!r} with scopes {', '.join(info.scopes)}.\n"
            "This is the only time it is shown (only its hash is stored); put it in the client's "
            "Authorization header:\n\n"
            f"{new.token}\n\n"
            f"Authorization: Bearer {new.token}",
        )

    return _run(args, work)


def cmd_token_list(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        found = await s.list_tokens()
        if args.json:
            _print(args, [t.model_dump(mode="json") for t in found], "")
            return
        if not found:
            print("No tokens yet. Create one: soul-mcp token create NAME --scope read,write")
            return
        rows = [
            [t.name, ",".join(t.scopes), t.created_at, t.last_used_at or "never",
             f"revoked {t.revoked_at}" if t.revoked_at else "active"]
            for t in found
        ]  # fmt: skip
        print(terminal.table(["NAME", "SCOPES", "CREATED", "LAST USED", "STATUS"], rows, _style()))

    return _run(args, work, must_exist=True)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        info = await s.revoke_token(args.name)
        _print(args, info, f"Revoked token {info.name!r} ({info.revoked_at}); requests with it now get 401.")

    return _run(args, work, must_exist=True)


def _reindex_progress(label: str) -> Callable[[int, int], None]:
    """A progress bar on stderr: redrawn in place at a terminal, else a line per tenth of the way
    (a reindex can take minutes, so logs see it move too)."""
    at_terminal = sys.stderr.isatty()
    shown = [-1]

    def show(done: int, total: int) -> None:
        if total == 0:
            return
        if at_terminal:
            filled = 30 * done // total
            end = "\n" if done == total else ""
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}{end}")
        elif 10 * done // total > shown[0]:
            shown[0] = 10 * done // total
            sys.stderr.write(f"{label}: {done}/{total}\n")
        sys.stderr.flush()

    return show


def cmd_reindex(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        done = await s.reindex(progress=None if args.json else _reindex_progress("Embedding memories"))
        lines = [f"Rebuilt the full-text index: {done.text_indexed} active memories."]
        if done.embedding_model is None:
            lines.append(
                "Semantic search is off (pip install 'soul-mcp[semantic]', or set "
                "SOUL_MCP_EMBEDDINGS_URL and SOUL_MCP_EMBEDDINGS_MODEL): no embeddings to compute."
            )
        else:
            lines.append(
                f"Embeddings by {done.embedding_model}: computed {done.embedded}; "
                f"{done.with_embeddings} of {done.active} active memories have one."
            )
        _print(args, done, "\n".join(lines))

    return _run(args, work, must_exist=True)


def cmd_version(args: argparse.Namespace) -> int:
    _print(args, {"version": __version__}, f"soul-mcp {__version__}")
    return EXIT_OK


# Workspaces: import and export (soul_mcp/workspace.py does the work) ---------------------------


def _progress_bar(label: str) -> Callable[[int, int], None] | None:
    """A one-line bar on stderr for imports big enough to wait for; none when stderr is not a
    terminal (scripts and CI logs get only the summary)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if total < 200:
            return
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\r" + " " * (len(label) + width + 2 * len(str(total)) + 6) + "\r")
        sys.stderr.flush()

    return show


def cmd_import(args: argparse.Namespace) -> int:
    from soul_mcp import workspace

    async def work(s: Any) -> None:
        summary = await workspace.import_workspace(
            s,
            args.directory,
            _actor(),
            dry_run=args.dry_run,
            progress=_progress_bar("Importing memories"),
            follow_links=args.follow_links,
        )
        _print(args, summary, workspace.render_import(summary))

    return _run(args, work)


def cmd_export(args: argparse.Namespace) -> int:
    from soul_mcp import workspace

    async def work(s: Any) -> None:
        summary = await workspace.export_workspace(s, args.directory, dry_run=args.dry_run, force=args.force)
        _print(args, summary, workspace.render_export(summary))

    return _run(args, work, must_exist=True)


def _add_workspace_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    layout = (
        "Layout: SOUL.md, IDENTITY.md, USER.md, intent.md and north-star.md are the documents; "
        "MEMORY.md (long-term) and memory/YYYY-MM-DD.md (daily notes) hold memories, one per list item "
        "or paragraph."
    )
    p = sub.add_parser(
        "import",
        parents=[common],
        help="read a workspace folder (SOUL.md, MEMORY.md, memory/YYYY-MM-DD.md, ...) into the self",
        description="Read a workspace folder (the OpenClaw layout) into the self. " + layout + " A document "
        "gets a new version only when its file differs; memories already stored, or forgotten before, "
        "are skipped, so importing the same folder again adds nothing. Everything is checked before "
        "anything is written. Only regular files are read: symbolic links, FIFOs and devices are "
        "listed as not imported.",
    )
    p.add_argument("directory", metavar="DIR", help="the workspace folder")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="read symbolic links that lead to a file inside the workspace (links out are never read)",
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write the self as a workspace folder that import reads back losslessly",
        description="Write the self as a workspace folder. " + layout + " Each memory keeps its date, "
        "kind, importance, tags and author in a comment under it, so export, import into a fresh "
        "database and export again gives identical files. Only active memories and current "
        "document versions are written; forgotten memories and history stay in the database. "
        "New files are private (0600, folders 0700); export never writes through a symbolic link.",
    )
    p.add_argument("directory", metavar="DIR", help="a new or empty folder (created when missing)")
    p.add_argument("--dry-run", action="store_true", help="show which files would change; write nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="export into a folder that is not empty: replace the files export writes, leave the rest",
    )
    p.set_defaults(func=cmd_export)


# Parser -----------------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, got {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help=f"SQLite file (default: ${DB_ENV}, else the platform's user data folder)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="soul-mcp",
        description="One persistent self (soul, memories, intent, north star) for every MCP client.",
        epilog="Every command takes --db PATH and --json; `soul-mcp COMMAND --help` explains it.\n"
        "Exit codes: 0 ok, 1 refused or not found, 2 usage error, 3 database problem.\n"
        "Only init, remember, import, edit, token create and serve create a missing database.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"soul-mcp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log soul-mcp's debug detail to stderr (no memory contents)")  # fmt: skip
    parser.add_argument("--log-sql", action="store_true",
                        help="also log every SQL statement with its values, memories included")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "init",
        parents=[common],
        help="create the database and print where it is and what to do next",
        description="Create the database (an existing one is left as it is), then print its path and "
        "the next steps: configure a client, import a workspace, check with doctor.",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the MCP server: on stdio (started by an MCP client), or over HTTP with --http",
        description="Run the MCP server. Without --http it speaks MCP on stdin/stdout and is started by "
        "an MCP client. With --http it serves Streamable HTTP at http://HOST:PORT/mcp for many clients "
        "at once; each request needs a bearer token (soul-mcp token create), and /healthz answers "
        "without one. SIGTERM or Ctrl-C stops it after the calls in flight.",
    )
    p.add_argument("--http", action="store_true", help="serve Streamable HTTP instead of stdio")
    p.add_argument("--host", help="address to bind with --http (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, help="port with --http, 1 to 65535 (default 8765)")
    p.add_argument("--allowed-host", action="append", metavar="HOST[:PORT]",
                   help="a host name clients use to reach the server (repeatable); needed to bind "
                   "an address other than loopback; other Host headers are refused")  # fmt: skip
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="with --http on loopback only: serve without tokens")  # fmt: skip
    p.add_argument("--soul-policy", choices=["open", "confirm", "locked"],
                   help="identity changes over MCP: open (default), confirm (ask through the client's "
                   "elicitation form; the client answers it, which proves no person did) or locked "
                   "(only the CLI: the one way to be sure a person made the change); also "
                   "$SOUL_MCP_SOUL_POLICY")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("wake", parents=[common], help="print what a new session would see")
    p.add_argument("--focus", help="what the session is about")
    p.add_argument("--budget", type=int, help="character budget (default 8000)")
    p.set_defaults(func=cmd_wake)

    p = sub.add_parser("remember", parents=[common], help="store a memory")
    p.add_argument("text")
    p.add_argument("--kind", help="fact, event, preference, lesson, reflection, person or other")
    p.add_argument("--tag", action="append", help="a tag (repeat for several)")
    p.add_argument("--importance", type=int, help="1 to 5 (default 3)")
    p.add_argument("--occurred-at", help="ISO date or date-time (default now)")
    p.set_defaults(func=cmd_remember)

    p = sub.add_parser("recall", parents=[common], help="search memories (empty query: most recent)")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--limit", type=int)
    p.add_argument("--tag", action="append", help="only memories with this tag (repeatable: all of them)")
    p.add_argument("--kind")
    p.add_argument("--since", help="ISO date or date-time, inclusive")
    p.add_argument("--until", help="ISO date or date-time; a bare date includes that day")
    p.add_argument("--cursor", help="next_cursor from a previous page")
    p.set_defaults(func=cmd_recall)

    p = sub.add_parser("forget", parents=[common], help="take a memory out of recall (restorable)")
    p.add_argument("memory_id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("restore-memory", parents=[common], help="bring a forgotten memory back into recall")
    p.add_argument("memory_id")
    p.set_defaults(func=cmd_restore_memory)

    p = sub.add_parser("purge", parents=[common], help="delete a forgotten memory for good (asks first)")
    p.add_argument("memory_id")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_purge)

    mem = sub.add_parser("memories", help="list memories by status with filters and paging, or show one")
    mem_sub = mem.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = mem_sub.add_parser(
        "list",
        parents=[common],
        help="list memories, newest first (not a search: recall searches)",
        description="List memories by status, newest first, with filters; pages of --limit (default 20, "
        "at most 200). Continue with the --cursor (or --offset) printed under the page.",
    )
    p.add_argument("--status", choices=["active", "forgotten", "superseded", "all"], default="active",
                   help="which memories (default active)")  # fmt: skip
    p.add_argument(
        "--kind", help="only this kind (fact, event, preference, lesson, reflection, person, other)"
    )
    p.add_argument("--tag", action="append", help="only memories with this tag (repeatable: all of them)")
    p.add_argument("--since", help="occurred at or after: ISO date or date-time, '2024-05', 'last week', ...")
    p.add_argument("--until", help="occurred before the end of: same forms; a bare date includes that day")
    p.add_argument("--limit", type=int, help="memories per page, 1 to 200 (default 20)")
    paging = p.add_mutually_exclusive_group()
    paging.add_argument("--cursor", help="the cursor printed under the previous page")
    paging.add_argument("--offset", type=int, help="skip this many matching memories")
    p.set_defaults(func=cmd_memories_list)
    p = mem_sub.add_parser("show", parents=[common], help="one memory with its status and history links")
    p.add_argument("memory_id")
    p.set_defaults(func=cmd_memories_show)

    for command, document in doc_commands().items():
        title = command.replace("-", " ")
        doc = sub.add_parser(command, help=f"the {title}: show, edit, history, diff, restore")
        doc_sub = doc.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = doc_sub.add_parser("show", parents=[common], help=f"print the current (or a given) {command}")
        p.add_argument("--version", type=int)
        p.add_argument("--raw", action="store_true", help="only the content")
        p.set_defaults(func=cmd_doc_show, document=document)
        p = doc_sub.add_parser("history", parents=[common], help="list versions, newest first")
        p.add_argument("--limit", type=int)
        p.add_argument("--before", type=int, help="only versions older than this")
        p.set_defaults(func=cmd_doc_history, document=document)
        p = doc_sub.add_parser("diff", parents=[common], help="unified diff between versions A and B")
        p.add_argument("a", type=int)
        p.add_argument("b", type=int)
        p.set_defaults(func=cmd_doc_diff, document=document)
        p = doc_sub.add_parser(
            "edit",
            parents=[common],
            help=f"edit the {title} in your editor; a change is stored as a new version",
            description=f"Open $VISUAL or $EDITOR (else vi, or notepad on Windows) on the current {title}. "
            "Save and quit: a changed text is stored as a new version by cli:<your user name>; an "
            "unchanged one stores nothing. The soul and the north star need a reason: --reason, or "
            "you are asked at the terminal.",
        )
        p.add_argument("--reason", help="why this change (asked at a terminal when needed)")
        p.set_defaults(func=cmd_doc_edit, document=document)
        p = doc_sub.add_parser(
            "restore",
            parents=[common],
            help="make an old version current again, stored as a new version",
            description=f"Store version VERSION of the {title} again as its newest version. History is "
            "never rewritten, so a restore can itself be undone.",
        )
        p.add_argument("version", type=int, help="the version to bring back (see history)")
        p.add_argument("--reason", required=True, help="why, stored with the new version")
        p.set_defaults(func=cmd_doc_restore, document=document)

    p = sub.add_parser(
        "stats", parents=[common], help="counts, file sizes and the last activity of each client"
    )
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the database, its index, the configuration and what a client sees",
        description="Check the database's integrity, its schema version, that the full-text index "
        "matches the active memories, the configuration in effect, and what an MCP client sees "
        "(tools, resources, prompts, the size of wake_up). Exits 3 when anything is wrong.",
    )
    p.set_defaults(func=cmd_doctor)

    hosts = sub.add_parser(
        "config",
        help="print a ready configuration for an MCP host, with absolute paths",
        description="Print what to add to an MCP host so it starts this soul-mcp on this database. "
        "The paths are absolute, so the host needs neither your PATH nor your venv; where the "
        "snippet goes is printed on stderr.",
    )
    host_sub = hosts.add_subparsers(dest="host", metavar="HOST", required=True)
    for host, text in {
        "claude-desktop": "JSON for claude_desktop_config.json (mcpServers)",
        "claude-code": "the `claude mcp add` command line",
        "cursor": "JSON for ~/.cursor/mcp.json or .cursor/mcp.json (mcpServers)",
        "vscode": "JSON for .vscode/mcp.json (servers, type stdio)",
    }.items():
        p = host_sub.add_parser(host, parents=[common], help=text)
        p.add_argument("--name", default="soul", help="the server's name in the host (default soul)")
        if host == "claude-code":
            p.add_argument("--scope", choices=["local", "project", "user"], default="user",
                           help="user: every project (default); local: this project, for you; "
                           "project: .mcp.json, shared")  # fmt: skip
        p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "backup", parents=[common], help="write a consistent copy of the database (safe while serving)"
    )
    p.add_argument("path", help="the new file (an existing one only with --force)")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.set_defaults(func=cmd_backup)

    token = sub.add_parser(
        "token",
        help="create, list and revoke bearer tokens for the HTTP server",
        description="Bearer tokens for `soul-mcp serve --http`. Scopes: read (wake_up, recall, reading "
        "documents, resources and prompts), write (remember, forget, revise_memory, the intent and user "
        "documents) and identity (the soul, the north star and the identity document). The token's name "
        "is the author of everything written with it.",
    )
    token_sub = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = token_sub.add_parser("create", parents=[common], help="make a token and print it (once)")
    p.add_argument("name", help="1 to 64 letters, digits, '.', '_' or '-', e.g. laptop")
    p.add_argument("--scope", default="read,write",
                   help="comma-separated: read, write, identity (default read,write)")  # fmt: skip
    p.set_defaults(func=cmd_token_create)
    p = token_sub.add_parser("list", parents=[common], help="names, scopes, created and last used")
    p.set_defaults(func=cmd_token_list)
    p = token_sub.add_parser("revoke", parents=[common], help="stop a token from working, at once")
    p.add_argument("name")
    p.set_defaults(func=cmd_token_revoke)

    p = sub.add_parser(
        "reindex",
        parents=[common],
        help="rebuild the full-text index and compute missing or stale embeddings",
        description="Rebuild the full-text index from the active memories, then, when semantic search "
        "is on, embed every active memory that has no embedding or was embedded from a text that has "
        "changed (a progress bar on stderr). Safe while servers run; a server also embeds new and "
        "older memories in the background by itself.",
    )
    p.set_defaults(func=cmd_reindex)

    _add_workspace_commands(sub, common)

    p = sub.add_parser("version", help="print the version")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_version)
    _explain(parser)
    return parser


def _explain(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without its own description its one-line help, so `--help` says
    what it does and not only how to call it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                text = helps.get(name)
                if sub.description is None and text:
                    sub.description = text[0].upper() + text[1:] + "."
                _explain(sub)


def _configure_logging(args: argparse.Namespace) -> None:
    """Logs go to stderr (stdout belongs to the protocol when serving). -v or $SOUL_MCP_LOG_LEVEL
    set soul-mcp's own level; other libraries stay at INFO or above, because their debug lines
    can carry what is stored (aiosqlite logs each statement with its values) unless --log-sql."""
    default = "DEBUG" if args.verbose else "INFO" if args.command == "serve" else "WARNING"
    level = logging.getLevelName(log_level_from_env() or default)
    logging.basicConfig(
        level=max(level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level < logging.INFO:
        logging.getLogger("soul_mcp").setLevel(level)
    if args.log_sql:
        logging.getLogger("aiosqlite").setLevel(logging.DEBUG)


def _quiet_stdout() -> None:
    """The reader of our output went away (`soul-mcp recall x | head -1`): send what is left to
    devnull, so the flush at exit does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _configure_logging(args)
        code = args.func(args)
        sys.stdout.flush()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Not a failure: the reader had what it wanted, as with `head`.
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130  # as a shell reports a command stopped by Ctrl-C
    return code
