"""`soul-mcp serve` as a real subprocess on stdio: what every MCP host actually starts.

Most tests talk through `mcp.Client(StdioServerParameters(...))`. Two write JSON-RPC lines by hand
instead, because they need to see every byte the server prints (stdout must carry only protocol)
or to know exactly which writes were acknowledged before the process is killed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from conftest import server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters

HANDSHAKE_VERSION = "2025-11-25"
TIMEOUT = 20  # seconds for any single answer; generous for a loaded 2-core machine


def stdio_params(db: Path, env: dict[str, str] | None = None) -> StdioServerParameters:
    command, args = server_command(db)
    return StdioServerParameters(command=command, args=args, env=env or server_env(db))


def memory_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM memories")}


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# A hand-written JSON-RPC client -----------------------------------------------------------------


class RawStdio:
    """JSON-RPC lines written to the server's stdin and read back from its stdout, byte for byte."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self.lines: list[bytes] = []  # every line the server wrote to stdout, in order

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            line = await self._stdout.receive_until(b"\n", 16 * 1024 * 1024)
        self.lines.append(line)
        return json.loads(line)

    async def answers(self, ids: set[int]) -> dict[int, dict[str, Any]]:
        """Read until every request id in `ids` has its response (they may arrive in any order)."""
        found: dict[int, dict[str, Any]] = {}
        while not ids <= found.keys():
            message = await self.receive()
            if "id" in message and "method" not in message:
                found[message["id"]] = message
        return found

    async def handshake(self) -> dict[str, Any]:
        await self.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "raw-test", "version": "0"},
                },
            }
        )
        answer = (await self.answers({0}))[0]
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    async def read_rest(self) -> None:
        """After stdin is closed: collect whatever else the server writes until it exits."""
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    self.lines.append(await self._stdout.receive_until(b"\n", 16 * 1024 * 1024))
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    return


@asynccontextmanager
async def raw_server(
    db: Path, stderr_path: Path, env: dict[str, str] | None = None, options: tuple[str, ...] = ()
) -> AsyncIterator[RawStdio]:
    command, args = server_command(db)
    args = [*args[:2], *options, *args[2:]]  # options of soul-mcp itself go before `serve`
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            [command, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env or server_env(db),
        )
        try:
            yield RawStdio(process)
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.move_on_after(TIMEOUT):
                await process.wait()
            await process.aclose()


def call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


# Tests ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stdio_session_walks_wake_remember_recall_and_intent(db_path: Path, mode: str) -> None:
    async with Client(stdio_params(db_path), mode=mode) as client:
        woken = await client.call_tool("wake_up", {"focus": "the stdio walk"})
        assert not woken.is_error
        assert woken.structured_content is not None
        assert "Soul" in woken.structured_content["text"]  # the starter soul before any is written

        stored = await client.call_tool(
            "remember", {"content": "The stdio walk stores its memories in SQLite", "tags": ["walk"]}
        )
        assert not stored.is_error, stored.content
        memory_id = stored.structured_content["memory"]["id"]  # type: ignore[index]

        found = await client.call_tool("recall", {"query": "where are memories stored"})
        assert [hit["id"] for hit in found.structured_content["hits"]] == [memory_id]  # type: ignore[index]

        written = await client.call_tool("write_intent", {"content": "Finish the stdio walk, then rest"})
        assert not written.is_error, written.content
        assert written.structured_content["version"]["version"] == 1  # type: ignore[index]

        intent = await client.read_resource("self://intent")
        assert intent.contents[0].text == "Finish the stdio walk, then rest"  # type: ignore[union-attr]

        again = await client.call_tool("wake_up", {"focus": "stdio walk"})
        text = again.structured_content["text"]  # type: ignore[index]
        assert "Finish the stdio walk, then rest" in text
        assert "The stdio walk stores its memories in SQLite" in text
    # The client has gone; the write reached the file itself, not a cache in the server.
    assert memory_id in memory_ids(db_path)


@pytest.mark.anyio
async def test_stdout_carries_only_json_rpc_and_logs_go_to_stderr(db_path: Path, tmp_path: Path) -> None:
    stderr_path = tmp_path / "server.err"
    # DEBUG logging with --log-sql makes the server as chatty as it can be (every SQL statement).
    env = server_env(db_path) | {"SOUL_MCP_LOG_LEVEL": "DEBUG"}
    async with raw_server(db_path, stderr_path, env, ("--log-sql",)) as raw:
        init = await raw.handshake()
        assert init["result"]["serverInfo"]["name"] == "soul-mcp"
        assert init["result"]["protocolVersion"] == HANDSHAKE_VERSION
        await raw.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        await raw.send(call(2, "remember", {"content": "Only protocol on stdout"}))
        await raw.send(call(3, "forget", {"memory_id": "m_000000000000", "reason": "does not exist"}))
        await raw.send(
            {"jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": {"uri": "self://soul"}}
        )
        await raw.send({"jsonrpc": "2.0", "id": 5, "method": "no/such/method"})
        answers = await raw.answers({1, 2, 3, 4, 5})
        assert len(answers[1]["result"]["tools"]) == 16
        assert answers[2]["result"]["isError"] is False
        assert answers[3]["result"]["isError"] is True
        assert "no memory has the id" in answers[3]["result"]["content"][0]["text"]
        assert answers[4]["result"]["contents"][0]["uri"] == "self://soul"
        assert answers[5]["error"]["code"] == -32601  # method not found
        assert raw.process.stdin is not None
        await raw.process.stdin.aclose()
        await raw.read_rest()
        with anyio.fail_after(TIMEOUT):
            assert await raw.process.wait() == 0

    assert raw.lines, "the server wrote nothing to stdout"
    for line in raw.lines:
        message = json.loads(line)  # every line is one JSON document...
        assert message["jsonrpc"] == "2.0"  # ...and a JSON-RPC message
    logs = stderr_path.read_text()
    assert "serving over stdio" in logs
    assert "DEBUG" in logs  # the debug chatter happened, on stderr
    assert "aiosqlite" in logs  # --log-sql's statements too


@pytest.mark.anyio
async def test_memories_and_soul_survive_a_server_restart(db_path: Path) -> None:
    # Written through the handshake era, read back through the 2026 era by another process.
    async with Client(stdio_params(db_path), mode="legacy") as first:
        stored = await first.call_tool("remember", {"content": "Restarts do not erase what I know"})
        memory_id = stored.structured_content["memory"]["id"]  # type: ignore[index]
        written = await first.call_tool(
            "write_soul", {"content": "# Soul\nI persist across processes.", "reason": "first real soul"}
        )
        assert not written.is_error, written.content

    async with Client(stdio_params(db_path), mode="auto") as second:
        found = await second.call_tool("recall", {"query": "restarts erase"})
        assert [hit["id"] for hit in found.structured_content["hits"]] == [memory_id]  # type: ignore[index]
        soul = await second.call_tool("read_soul", {})
        assert soul.structured_content["content"] == "# Soul\nI persist across processes."  # type: ignore[index]
        assert soul.structured_content["adopted"] is True  # type: ignore[index]
        assert soul.structured_content["version"] == 1  # type: ignore[index]


@pytest.mark.anyio
async def test_killed_server_keeps_every_acknowledged_memory(db_path: Path, tmp_path: Path) -> None:
    requested = 40
    acknowledge_before_kill = 15
    acknowledged: set[str] = set()
    async with raw_server(db_path, tmp_path / "killed.err") as raw:
        await raw.handshake()
        # Pipeline every write at once so that some are still in flight when the process dies.
        for n in range(requested):
            await raw.send(call(100 + n, "remember", {"content": f"Write number {n} before the crash"}))
        while len(acknowledged) < acknowledge_before_kill:
            message = await raw.receive()
            if message.get("id", 0) >= 100:
                assert message["result"]["isError"] is False, message
                acknowledged.add(message["result"]["structuredContent"]["memory"]["id"])
        os.kill(raw.process.pid, signal.SIGKILL)
        with anyio.fail_after(TIMEOUT):
            assert await raw.process.wait() == -signal.SIGKILL

    assert integrity(db_path) == "ok"
    stored = memory_ids(db_path)
    assert acknowledged <= stored
    assert len(stored) <= requested
    with sqlite3.connect(db_path) as conn:
        # The full-text index matches the table: the crash left no half-indexed memory.
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")

    # A new server opens the same file and sees every stored memory in recall.
    async with Client(stdio_params(db_path)) as client:
        found = await client.call_tool("recall", {"query": "crash", "limit": 50})
        assert not found.is_error, found.content
        assert {hit["id"] for hit in found.structured_content["hits"]} == stored  # type: ignore[index]


def test_serve_on_a_terminal_explains_itself_on_stderr_and_still_speaks_mcp(db_path: Path) -> None:
    """A person who runs `soul-mcp serve` by hand gets help; stdout stays clean for the protocol."""
    import pty
    import select

    master, slave = pty.openpty()
    command, args = server_command(db_path)
    process = subprocess.Popen(
        [command, *args], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server_env(db_path)
    )
    os.close(slave)
    try:
        assert process.stderr is not None and process.stdout is not None
        help_text = b""
        while b"Waiting for a client" not in help_text:
            ready, _, _ = select.select([process.stderr], [], [], TIMEOUT)
            assert ready, f"no help on stderr; got {help_text!r}"
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, f"stderr closed early; got {help_text!r}"
            help_text += chunk
        text = help_text.decode()
        assert "meant to be started by an MCP client" in text
        assert str(db_path) in text
        # The command a client needs: absolute (a client has neither this PATH nor this venv).
        assert "claude mcp add soul -- /" in text and " serve --db " in text

        # Typed at the terminal, a JSON-RPC line is still served, and the answer is the first
        # thing on stdout: the help did not leak there.
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "a-person", "version": "0"},
            },
        }
        os.write(master, json.dumps(initialize).encode() + b"\n")
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        assert ready, "no answer on stdout"
        answer = json.loads(process.stdout.readline())
        assert answer["id"] == 1
        assert answer["result"]["serverInfo"]["name"] == "soul-mcp"
    finally:
        os.close(master)
        process.kill()
        process.wait(timeout=TIMEOUT)
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
