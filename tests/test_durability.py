"""Nothing lost under load, and a backup that can be restored.

The loads are small versions of bench/concurrency.py (imported from there, so the benchmark and the
test cannot drift apart): 8 stdio servers on one file writing at once, and concurrent HTTP clients
mixing reads and writes. The full sizes (8 x 500, 32 clients x 30 s) run in the benchmark. Each
checks the file with a sqlite3 connection of its own; no timing is asserted.
The SIGKILL test lives in test_stdio.py.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import load_bench, server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from test_cli import invoke

from soul_mcp.cli import main

pytestmark = pytest.mark.anyio


bench = load_bench("concurrency")


def stdio(db: Path) -> StdioServerParameters:
    command, args = server_command(db)
    return StdioServerParameters(command=command, args=args, env=server_env(db))


def contents(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT content FROM memories")}


# Under load ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_eight_servers_writing_at_once_lose_nothing(db_path: Path) -> None:
    report = await bench.stdio_load(db_path, processes=8, writes=100)
    assert report["errors"] == 0, report["error_samples"]
    assert report["acknowledged"] == 800
    assert report["present"] == 800 and report["doubled"] == 0
    assert report["integrity"] == "ok"
    assert len(contents(db_path)) == 800


@pytest.mark.slow
async def test_http_clients_mixing_reads_and_writes_lose_nothing(db_path: Path, tmp_path: Path) -> None:
    token = bench.make_token(db_path)
    with bench.http_server(db_path, tmp_path / "server.log") as url:
        report = await bench.http_load(url, db_path, token, clients=4, duration=3.0)
    assert report["errors"] == 0, report["error_samples"]
    assert report["by_operation"]["recall"]["count"] > 0
    assert report["remembered"] > 0 and report["missing_memories"] == 0
    assert report["missing_intents"] == 0
    assert report["integrity"] == "ok"
    # The memories were stored by the token's name, not by some anonymous caller.
    with sqlite3.connect(db_path) as conn:
        authors = {row[0] for row in conn.execute("SELECT DISTINCT author FROM memories")}
    assert authors == {"bench"}


# Backup and restore -------------------------------------------------------------------------------


def backup_cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`soul-mcp backup ARGS --db DB` in this process (safe in a worker thread: main() runs its own
    event loop)."""
    return invoke("backup", *args, "--db", str(db))


async def test_backup_while_a_server_writes_restores_everything_it_holds(
    db_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "backups" / "soul-backup.db"
    target.parent.mkdir()
    acknowledged: list[str] = []
    written = [anyio.Event()]  # set, then replaced, after each acknowledged write
    stop = anyio.Event()

    async with Client(stdio(db_path), mode="legacy") as client:
        soul = await client.call_tool(
            "write_soul", {"content": "# Soul\nBacked up.", "reason": "before the backup"}
        )
        assert not soul.is_error, soul.content

        async def keep_writing() -> None:
            n = 0
            while not stop.is_set():
                result = await client.call_tool(
                    "remember", {"content": f"Written during the backup, number {n}"}
                )
                assert not result.is_error, result.content
                acknowledged.append(result.structured_content["memory"]["content"])  # type: ignore[index]
                written[0].set()
                written[0] = anyio.Event()
                n += 1

        async def wait_for(count: int) -> None:
            with anyio.fail_after(60):
                while len(acknowledged) < count:
                    await written[0].wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_writing)
            await wait_for(20)
            before = set(acknowledged)
            done = await anyio.to_thread.run_sync(backup_cli, db_path, str(target))
            after_backup = len(acknowledged)
            await wait_for(after_backup + 20)  # the server went on writing after the backup, too
            stop.set()

    assert done.returncode == 0, done.stderr
    assert f"Backed up to {target}" in done.stdout
    assert "integrity ok" in done.stdout and "bytes" in done.stdout
    assert "soul: 1 version\n" in done.stdout

    # The copy is whole and consistent: every memory acknowledged before the backup began is in it,
    # nothing that was never written, and the number the CLI printed is what it holds.
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        copied = {row[0] for row in conn.execute("SELECT content FROM memories")}
    assert before <= copied <= set(acknowledged)
    assert len(acknowledged) > len(copied)  # writes went on after the copy was taken
    assert f"Memories: {len(copied)} active" in done.stdout
    assert not list(target.parent.glob(".*partial*")), "the temporary copy was left behind"

    # Restore as docs/operations.md says: servers stopped, the backup copied over the database, the stale
    # -wal and -shm removed. A new server then reads exactly what the backup held.
    shutil.copyfile(target, db_path)
    for stale in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        stale.unlink(missing_ok=True)
    seen: set[str] = set()
    async with Client(stdio(db_path)) as client:
        arguments: dict[str, Any] = {"limit": 50}
        while True:
            page = await client.call_tool("recall", arguments)
            assert not page.is_error, page.content
            seen |= {hit["content"] for hit in page.structured_content["hits"]}  # type: ignore[index]
            if page.structured_content["next_cursor"] is None:  # type: ignore[index]
                break
            arguments = {"limit": 50, "cursor": page.structured_content["next_cursor"]}  # type: ignore[index]
        soul = await client.read_resource("self://soul")
    assert seen == copied
    assert soul.contents[0].text == "# Soul\nBacked up."  # type: ignore[union-attr]


def test_backup_refuses_to_overwrite_unless_forced(db_path: Path, tmp_path: Path) -> None:
    assert main(["init", "--db", str(db_path)]) == 0
    target = tmp_path / "existing.db"
    target.write_text("something precious")
    refused = backup_cli(db_path, str(target))
    assert refused.returncode == 1
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert target.read_text() == "something precious"

    forced = backup_cli(db_path, str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("db", "is the database itself"),
        ("folder", "is a folder"),
        ("missing/soul.db", "does not exist"),
        ("busy.db", "busy.db-wal exists"),  # beside a database in use
    ],
)
def test_backup_refuses_a_target_it_cannot_use(
    db_path: Path, tmp_path: Path, where: str, expected: str
) -> None:
    assert main(["init", "--db", str(db_path)]) == 0
    target = {"db": db_path, "folder": tmp_path}.get(where, tmp_path / where)
    if where == "busy.db":
        (tmp_path / "busy.db-wal").touch()
    refused = backup_cli(db_path, str(target), "--force")
    assert refused.returncode == 1
    assert expected in refused.stderr
    if where == "busy.db":
        assert not target.exists()
