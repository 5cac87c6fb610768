"""Several MCP hosts on one database: each starts its own `soul-mcp serve`, all share the file.

Nothing may be lost or doubled when they write at once, and a brand-new file opened by several
processes at the same moment must be migrated exactly once.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from soul_mcp.storage.schema import SCHEMA_VERSION

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROCESSES = 4
WRITES_EACH = 50
# Half the hosts speak the handshake era, half the 2026 era: real setups mix clients.
MODES = ["legacy", "auto"]


def stdio_params(db: Path) -> StdioServerParameters:
    command, args = server_command(db)
    return StdioServerParameters(command=command, args=args, env=server_env(db))


def table_facts(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        return {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
            "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
            "contents": [row[0] for row in conn.execute("SELECT content FROM memories")],
            "tables": sorted(
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ),
        }


async def test_four_servers_writing_at_once_lose_nothing(db_path: Path) -> None:
    errors: list[str] = []
    shared: list[tuple[str, bool]] = []  # (id, is_new) of the content every host stores at once

    async def host(number: int) -> None:
        async with Client(stdio_params(db_path), mode=MODES[number % 2]) as client:

            async def write(n: int) -> None:
                result = await client.call_tool("remember", {"content": f"Host {number} writes note {n}"})
                if result.is_error:
                    errors.append(result.content[0].text)  # type: ignore[union-attr]

            async def write_shared() -> None:
                result = await client.call_tool("remember", {"content": "Every host knows this one fact"})
                if result.is_error:
                    errors.append(result.content[0].text)  # type: ignore[union-attr]
                else:
                    memory = result.structured_content
                    shared.append((memory["memory"]["id"], memory["is_new"]))  # type: ignore[index]

            async with anyio.create_task_group() as tg:
                tg.start_soon(write_shared)
                for n in range(WRITES_EACH):
                    tg.start_soon(write, n)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for number in range(PROCESSES):
                tg.start_soon(host, number)

    assert errors == []
    expected = {f"Host {p} writes note {n}" for p in range(PROCESSES) for n in range(WRITES_EACH)}
    facts = table_facts(db_path)
    assert facts["integrity"] == "ok"
    contents = facts["contents"]
    # None lost, none doubled.
    assert sorted(contents) == sorted([*expected, "Every host knows this one fact"])
    # The same content stored by every host at once: one memory, created by exactly one of them.
    assert len({memory_id for memory_id, _ in shared}) == 1
    assert sorted(is_new for _, is_new in shared) == [False] * (PROCESSES - 1) + [True]

    # And a fresh server pages through all of them with recall's cursor.
    seen: list[str] = []
    async with Client(stdio_params(db_path)) as client:
        arguments: dict[str, Any] = {"limit": 50}
        while True:
            page = await client.call_tool("recall", arguments)
            assert not page.is_error, page.content
            data = page.structured_content
            seen += [hit["content"] for hit in data["hits"]]  # type: ignore[index]
            if data["next_cursor"] is None:  # type: ignore[index]
                break
            arguments = {"limit": 50, "cursor": data["next_cursor"]}  # type: ignore[index]
    assert sorted(seen) == sorted(contents)


# Each process waits, after its imports, until the same wall-clock moment and only then starts
# serving (which opens and migrates the file): without the gate, interpreter start-up spreads
# the processes over a second and the race never happens.
GATED_SERVE = (
    "import sys, time\n"
    "import soul_mcp.server\n"  # the heavy imports (mcp, aiosqlite) happen before the gate
    "from soul_mcp.cli import main\n"
    "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


async def test_servers_opening_a_new_file_at_the_same_moment_migrate_it_once(tmp_path: Path) -> None:
    db = tmp_path / "brand-new.db"
    assert not db.exists()
    start_at = time.time() + 3.0  # later than every process's imports on a loaded 2-core machine
    stored: list[str] = []

    async def host(number: int) -> None:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-c", GATED_SERVE, str(start_at), "serve", "--db", str(db)],
            env=server_env(db),
        )
        async with Client(params, mode=MODES[number % 2]) as client:
            result = await client.call_tool("remember", {"content": f"Host {number} was here first"})
            assert not result.is_error, result.content
            stored.append(result.structured_content["memory"]["id"])  # type: ignore[index]

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for number in range(PROCESSES):
                tg.start_soon(host, number)

    assert len(set(stored)) == PROCESSES
    facts = table_facts(db)
    assert facts["integrity"] == "ok"
    assert facts["user_version"] == SCHEMA_VERSION
    assert "memories" in facts["tables"] and "document_versions" in facts["tables"]
    assert sorted(facts["contents"]) == sorted(f"Host {n} was here first" for n in range(PROCESSES))


async def test_a_server_recalls_what_another_server_just_wrote(db_path: Path) -> None:
    # Each server ranks from what it keeps in memory (recall/index.py); the other's writes
    # must reach it at once: new memories found, forgotten ones gone, restored ones back.
    async def ids(client: Client, query: str) -> list[str]:
        result = await client.call_tool("recall", {"query": query, "limit": 50})
        assert not result.is_error, result.content
        return [hit["id"] for hit in result.structured_content["hits"]]  # type: ignore[index]

    async def remember(client: Client, content: str) -> str:
        result = await client.call_tool("remember", {"content": content})
        assert not result.is_error, result.content
        return result.structured_content["memory"]["id"]  # type: ignore[index]

    with anyio.fail_after(60):
        async with Client(stdio_params(db_path)) as reader, Client(stdio_params(db_path)) as writer:
            first = await remember(writer, "The garden needs water on Mondays")
            assert await ids(reader, "garden water") == [first]  # the reader now keeps "garden"
            second = await remember(writer, "Maya planted tomatoes in the garden")
            assert set(await ids(reader, "garden water")) == {first, second}
            forgotten = await writer.call_tool("forget", {"memory_id": first, "reason": "moved house"})
            assert not forgotten.is_error
            assert await ids(reader, "garden water") == [second]
            await writer.call_tool(
                "revise_memory",
                {
                    "memory_id": second,
                    "content": "Maya planted beans in the garden",
                    "reason": "it was beans",
                },
            )
            found = await ids(reader, "garden beans tomatoes")
            assert second not in found and len(found) == 1
