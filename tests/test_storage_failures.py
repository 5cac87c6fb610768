"""Storage failures answered, not dropped: a damaged, unopenable, full or read-only database gives
each caller (MCP client or person at the CLI) a message that says what happened and what to do;
the server stays up meanwhile; files soul-mcp creates are private to their owner.

The tests run as root here, which ignores file permissions: read-only cases run the CLI as the
user `nobody` (setpriv), in a folder under /tmp that user can reach.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError

from soul_mcp.cli import main
from soul_mcp.config import Settings
from soul_mcp.server import build_server
from soul_mcp.storage.schema import SCHEMA_VERSION

pytestmark = pytest.mark.anyio


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def make_database(db: Path, *memories: str) -> None:
    for content in memories or ("The garden gate sticks in winter",):
        assert main(["remember", content, "--db", str(db)]) == 0


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# A server whose database cannot be opened ------------------------------------------------------


def garbage_header(db: Path) -> None:
    db.write_bytes(b"these are my notes, not a database\n" * 200)


def truncated(db: Path) -> None:
    make_database(db, *(f"memory number {i} about the orchard, kept at length " * 8 for i in range(60)))
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", [garbage_header, truncated], ids=["garbage-header", "truncated"])
async def test_a_server_on_a_damaged_file_answers_every_call_with_the_reason_and_stays_up(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    # A first start on a healthy file fills the warm-start cache, so that the damaged one's
    # handshake is answered from it, before the database is touched (the default start).
    healthy, db = tmp_path / "healthy.db", tmp_path / "soul.db"
    command, args = server_command(healthy)
    async with Client(
        StdioServerParameters(command=command, args=args, env=server_env(healthy)), mode="legacy"
    ) as c:
        await c.list_tools()
    assert list((tmp_path / "cache").iterdir()), "the warm-start cache was not written"
    await anyio.to_thread.run_sync(damage, db)  # the CLI runs its own event loop

    command, args = server_command(db)
    params = StdioServerParameters(command=command, args=args, env=server_env(db))
    async with Client(params, mode="legacy") as client:
        assert "remember" in {t.name for t in (await client.list_tools()).tools}
        for tool, arguments in (("remember", {"content": "Worth keeping"}), ("recall", {"query": "orchard"}),
                                ("wake_up", {})):  # fmt: skip
            result = await client.call_tool(tool, arguments)
            assert result.is_error, tool
            assert "is damaged" in text_of(result) and f"soul-mcp doctor --db {db}" in text_of(result), tool
        with pytest.raises(MCPError, match="is damaged"):
            await client.read_resource("self://soul")
        with pytest.raises(MCPError, match="is damaged"):
            await client.get_prompt("wake_up", {})
        # Still serving after every failure.
        assert (await client.call_tool("read_intent", {})).is_error
        assert len((await client.list_tools()).tools) == 16


def newer_schema(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


def under_a_file(db: Path) -> None:
    db.parent.joinpath("notes.txt").write_text("a file, not a folder")


@pytest.mark.parametrize(
    ("prepare", "where", "expected"),
    [
        (newer_schema, "soul.db", "newer than this soul-mcp understands"),
        (under_a_file, "notes.txt/soul.db", "a file stands where a folder should be"),
        (lambda db: db.mkdir(), "soul.db", "it is a folder"),
    ],
    ids=["newer-schema", "under-a-file", "a-folder"],
)
async def test_a_database_that_cannot_be_opened_is_the_answer_to_every_call(
    tmp_path: Path, prepare: Callable[[Path], None], where: str, expected: str
) -> None:
    db = tmp_path / where
    prepare(tmp_path / "soul.db")
    async with Client(build_server(Settings(db_path=db))) as client:
        result = await client.call_tool("remember", {"content": "Worth keeping"})
        assert result.is_error and expected in text_of(result)
        with pytest.raises(MCPError, match=expected):
            await client.read_resource("self://memories/m_000000000000")
        with pytest.raises(MCPError, match=expected):
            await client.get_prompt("reflect", {})
        assert (await client.call_tool("recall", {})).is_error


async def test_a_repaired_database_is_opened_at_the_next_call(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    garbage_header(db)
    async with Client(build_server(Settings(db_path=db))) as client:
        assert (await client.call_tool("recall", {})).is_error
        db.unlink()  # the person moves the damaged file aside
        stored = await client.call_tool("remember", {"content": "Stored once the file was fixed"})
        assert not stored.is_error, text_of(stored)
        assert (
            "Stored once"
            in (await client.read_resource("self://memories/" + stored.structured_content["memory"]["id"]))
            .contents[0]
            .text
        )  # type: ignore[index,union-attr]


# A full disk, and what nobody expected ---------------------------------------------------------


def with_store_tool(db: Path, action: Callable[[Any], Any]) -> Any:
    """The real server, plus one test tool that runs `action` on its open store: the door to a
    full disk (SQLite's max_page_count) or a connection lost under the server."""
    server = build_server(Settings(db_path=db))

    async def poke_store(ctx: Context) -> str:
        await action(ctx.request_context.lifespan_context.agent_self.store)
        return "done"

    server.add_tool(poke_store)
    return server


async def test_a_full_disk_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"

    async def fill_the_disk(store: Any) -> None:
        await store._writer.execute("VACUUM")  # no free pages (from dropped indexes) left to reuse
        await store._writer.execute("PRAGMA max_page_count = 1")  # at most the pages it has now

    async with Client(with_store_tool(db, fill_the_disk)) as client:
        await client.call_tool("remember", {"content": "Stored before the disk filled up"})
        assert not (await client.call_tool("poke_store", {})).is_error
        result = await client.call_tool("remember", {"content": "A long memory " * 500})
        assert result.is_error
        assert f"the disk holding {db} is full: free some space" in text_of(result)
        assert text_of(result).endswith("nothing was written")
        listed = await client.call_tool("recall", {})
        assert [h["content"] for h in listed.structured_content["hits"]] == [
            "Stored before the disk filled up"
        ]  # type: ignore[index]


async def test_an_unexpected_failure_is_named_and_logged_without_the_arguments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def lose_the_connections(store: Any) -> None:
        await store._writer.close()
        await store._reader.close()

    async with Client(with_store_tool(tmp_path / "soul.db", lose_the_connections)) as client:
        await client.call_tool("poke_store", {})
        with caplog.at_level(logging.ERROR):
            result = await client.call_tool("remember", {"content": "secret pin 4711"})
        assert result.is_error
        assert text_of(result) == (
            "Error executing tool remember: internal error in remember: ValueError; the server log has details"
        )
        assert "Traceback" in caplog.text and "secret pin 4711" not in caplog.text
        with pytest.raises(MCPError, match=r"internal error in reading self://soul: ValueError"):
            await client.read_resource("self://soul")
        with pytest.raises(MCPError, match=r"internal error in the wake_up prompt: ValueError"):
            await client.get_prompt("wake_up", {})


# reindex and doctor on a damaged file ----------------------------------------------------------


def damage_an_index(db: Path) -> None:
    """Zero the root page of an index: the file opens, doctor's integrity check fails."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        (page,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'memories_by_time'"
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    with db.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\x00" * size)


def test_reindex_refuses_a_damaged_file_instead_of_reporting_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "soul.db"
    for i in range(30):
        assert main(["remember", f"memory {i}", "--tag", f"t{i}", "--db", str(db)]) == 0
    damage_an_index(db)
    capsys.readouterr()
    code, out, _ = cli(capsys, "doctor", "--db", str(db))
    assert code == 3 and "FAIL" in out and "is damaged (database disk image is malformed)" in out
    code, out, err = cli(capsys, "reindex", "--db", str(db))
    assert code == 3 and "Rebuilt" not in out
    assert err.startswith(f"error: the database {db} is damaged (") and f"soul-mcp doctor --db {db}" in err


# Read-only files and folders, as a user who may not write them ---------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder under /tmp that `nobody` can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="soul-ro-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def as_nobody(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to run as a user who cannot write")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG"}} | {"HOME": str(home)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "soul_mcp", *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_read_only_database_can_be_read_and_says_why_it_cannot_be_written(
    shared_dir: Path, what: str
) -> None:
    data = shared_dir / "data"
    db = data / "soul.db"
    make_database(db, "The key is under the blue pot")
    db.chmod(0o644)
    # "folder": nothing can be created beside the file (no -wal, no -shm); "file": only the file is locked.
    data.chmod(0o755 if what == "folder" else 0o777)
    reason = (
        f"the folder {data} is not writable" if what == "folder" else f"the database file {db} is read-only"
    )

    recalled = as_nobody("recall", "key", "--db", str(db), home=shared_dir)
    assert recalled.returncode == 0, recalled.stderr
    assert "blue pot" in recalled.stdout
    assert "WARNING" not in recalled.stderr
    stats = as_nobody("stats", "--json", "--db", str(db), home=shared_dir)
    assert json.loads(stats.stdout)["memories_active"] == 1
    (shared_dir / "out").mkdir(mode=0o777)
    (shared_dir / "out").chmod(0o777)
    backup = as_nobody("backup", str(shared_dir / "out" / "copy.db"), "--db", str(db), home=shared_dir)
    assert backup.returncode == 0, backup.stderr
    refused_backup = as_nobody("backup", str(shared_dir / "copy.db"), "--db", str(db), home=shared_dir)
    assert (
        refused_backup.stderr
        == f"error: cannot write the backup {shared_dir / 'copy.db'}: Permission denied; nothing was written\n"
    )

    refused = as_nobody("remember", "Something new", "--db", str(db), home=shared_dir)
    assert refused.returncode == 3
    assert refused.stderr.strip() == (
        f"error: the database is read-only here ({reason}): soul-mcp can read it but not change it; run it "
        "as a user who may write the file and its folder, or fix their permissions; nothing was written"
    )

    doctor = as_nobody("doctor", "--json", "--db", str(db), home=shared_dir)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 3
    assert [name for name, c in checks.items() if not c["ok"]] == ["writable"]
    assert reason in checks["writable"]["detail"]
    assert checks["integrity"]["detail"] == "ok" and checks["full-text index"]["ok"]


# Private files ---------------------------------------------------------------------------------


async def test_what_soul_mcp_creates_only_its_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "data" / "deeper" / "soul.db"
    old_umask = os.umask(0o022)  # the usual default, which would give 0755 folders and 0644 files
    try:
        async with Client(build_server(Settings(db_path=db))) as client:
            assert not (await client.call_tool("remember", {"content": "Private"})).is_error
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                assert mode_of(path) == 0o600, path
            assert mode_of(db.parent) == mode_of(db.parent.parent) == 0o700
        backup = ["backup", str(tmp_path / "backup.db"), "--db", str(db)]
        assert await anyio.to_thread.run_sync(main, backup) == 0
        assert mode_of(tmp_path / "backup.db") == 0o600
    finally:
        os.umask(old_umask)
    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["doctor", "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["checks"][-1] == {
        "name": "file permissions", "ok": True, "warning": False,
        "detail": "only the owner can read the database and its folder",
    }  # fmt: skip


def test_doctor_warns_about_an_existing_file_others_can_read_and_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "soul.db"
    with sqlite3.connect(db):
        pass
    db.chmod(0o644)
    make_database(db)
    assert mode_of(db) == 0o644  # soul-mcp does not change a file it did not create
    code, out, _ = cli(capsys, "doctor", "--db", str(db))
    assert code == 0
    assert "warn  file permissions" in out and f"{db} (644)" in out and f"chmod 600 {db}" in out
    assert out.rstrip().endswith("All checks passed, 1 with a warning.")
