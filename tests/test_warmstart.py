"""Warm start of `soul-mcp serve` (server/warmstart.py), through real server processes on stdio.

A start with no cache is answered by the SDK and writes the cache; the next start answers
`initialize` and `tools/list` from it while the SDK loads, and hands the SDK everything else.
Whether an answer came from the cache is read from the server's debug log on stderr, or, where a
real client is used, from a marker written into the cached answer (only the cache can produce it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ROOT, server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import Implementation
from test_stdio import TIMEOUT, RawStdio, raw_server

from soul_mcp.server.warmstart import CACHE_DIR_ENV, WARM_START_ENV

VERSION = "2025-11-25"  # the newest handshake-era version, what mcp.Client(mode="legacy") sends
FROM_CACHE = "answered initialize ({}) from the warm-start cache"
TOOLS_FROM_CACHE = "answered tools/list from the warm-start cache"
MARKER = "instructions that only the warm-start cache knows"


@pytest.fixture(scope="module", autouse=True)
def code_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The servers run a copy of soul_mcp taken when this module starts. The cache is keyed by a hash
    of the source, so an edit made while the tests run (a developer's editor, a formatter) would
    otherwise change the key between two starts of one test."""
    global SNAPSHOT
    SNAPSHOT = tmp_path_factory.mktemp("code")
    shutil.copytree(ROOT / "soul_mcp", SNAPSHOT / "soul_mcp", ignore=shutil.ignore_patterns("__pycache__"))
    yield


SNAPSHOT: Path | None = None


def warm_env(db: Path, cache_dir: Path, **extra: str) -> dict[str, str]:
    assert SNAPSHOT is not None
    env = {CACHE_DIR_ENV: str(cache_dir), "SOUL_MCP_LOG_LEVEL": "DEBUG", "PYTHONPATH": str(SNAPSHOT)}
    return server_env(db) | env | extra


def initialize(request_id: int, version: str, name: str = "warm-test") -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": name, "version": "1"},
        },
    }


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def request(request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def the_cache_file(cache_dir: Path) -> Path:
    files = list(cache_dir.glob("warm-start-*.json"))
    assert len(files) == 1, files
    return files[0]


def lines_by_id(lines: list[bytes]) -> dict[Any, list[bytes]]:
    """Every stdout line must be one JSON-RPC message; responses grouped by id."""
    found: dict[Any, list[bytes]] = {}
    for line in lines:
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0", line
        if "method" not in message:
            found.setdefault(message["id"], []).append(line)
    return found


async def finish(raw: RawStdio) -> int:
    """Close the client's side, read what is left, and return the exit code."""
    assert raw.process.stdin is not None
    await raw.process.stdin.aclose()
    await raw.read_rest()
    with anyio.fail_after(TIMEOUT):
        return await raw.process.wait()


async def handshake(db: Path, cache_dir: Path, log: Path, version: str, **env: str) -> tuple[bytes, bytes]:
    """One server start: initialize, initialized, tools/list; the raw answer lines (ids 0 and 1)."""
    async with raw_server(db, log, warm_env(db, cache_dir, **env)) as raw:
        for message in (initialize(0, version), INITIALIZED, request(1, "tools/list")):
            await raw.send(message)
        await raw.answers({0, 1})
        assert await finish(raw) == 0
    answers = lines_by_id(raw.lines)
    assert sorted(answers) == [0, 1] and all(len(v) == 1 for v in answers.values()), answers
    return answers[0][0], answers[1][0]


@pytest.fixture(scope="module")
def primed_cache(tmp_path_factory: pytest.TempPathFactory, code_snapshot: None) -> Path:
    """A cache folder holding what one start wrote (copied by each test that needs it)."""
    folder = tmp_path_factory.mktemp("primed")
    anyio.run(handshake, folder / "soul.db", folder / "cache", folder / "server.err", VERSION)
    the_cache_file(folder / "cache")
    return folder / "cache"


@pytest.fixture
def cache_dir(primed_cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(primed_cache, tmp_path / "cache"))


def set_cached_instructions(cache_dir: Path, text: str) -> None:
    path = the_cache_file(cache_dir)
    data = json.loads(path.read_text())
    data["answers"][VERSION]["initialize"]["instructions"] = text
    path.write_text(json.dumps(data))


# Tests ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_warm_answers_equal_the_sdk_answers_for_each_protocol_version(tmp_path: Path) -> None:
    db, cache_dir = tmp_path / "soul.db", tmp_path / "cache"
    logs = [tmp_path / f"server{n}.err" for n in range(5)]

    # The SDK alone, with the warm start turned off: the reference answers.
    plain = await handshake(db, cache_dir, logs[0], VERSION, **{WARM_START_ENV: "0"})
    assert not cache_dir.exists()

    # The first warm-start run finds no cache: the SDK answers (unchanged) and the cache is written.
    first = await handshake(db, cache_dir, logs[1], VERSION)
    assert first == plain
    assert FROM_CACHE.format(VERSION) not in logs[1].read_text()
    cached = json.loads(the_cache_file(cache_dir).read_text())
    assert cached["answers"][VERSION] == {
        "initialize": json.loads(plain[0])["result"],
        "tools/list": json.loads(plain[1])["result"],
    }

    # A version the SDK does not speak is negotiated to its latest, which the cache holds.
    unsupported = await handshake(db, cache_dir, logs[2], "1999-01-01")
    log = logs[2].read_text()
    assert FROM_CACHE.format(VERSION) in log and TOOLS_FROM_CACHE in log
    assert unsupported == plain  # byte for byte, negotiated version included

    # An older version is not cached yet: passed to the SDK, captured, then answered from the cache.
    older_plain = await handshake(db, cache_dir, logs[3], "2025-03-26")
    assert FROM_CACHE.format("2025-03-26") not in logs[3].read_text()
    assert json.loads(older_plain[0])["result"]["protocolVersion"] == "2025-03-26"
    older_warm = await handshake(db, cache_dir, logs[4], "2025-03-26")
    assert FROM_CACHE.format("2025-03-26") in logs[4].read_text()
    assert older_warm == older_plain
    assert set(json.loads(the_cache_file(cache_dir).read_text())["answers"]) == {VERSION, "2025-03-26"}


@pytest.mark.anyio
async def test_session_after_a_warm_start_signs_memories_with_the_client_name(
    db_path: Path, cache_dir: Path, mode: str
) -> None:
    set_cached_instructions(cache_dir, MARKER)
    command, args = server_command(db_path)
    params = StdioServerParameters(command=command, args=args, env=warm_env(db_path, cache_dir))
    client_info = Implementation(name="warm-author", version="1")
    async with Client(params, mode=mode, client_info=client_info) as client:
        if mode == "legacy":
            assert client.instructions == MARKER  # the handshake was answered from the cache...
        else:
            assert client.instructions != MARKER  # ...while the 2026 era passes through to the SDK
        stored = await client.call_tool("remember", {"content": "Warm starts keep the client's name"})
        assert not stored.is_error, stored.content
        # The author comes from the session's client info: the replayed initialize reached the SDK.
        assert stored.structured_content["memory"]["author"] == "warm-author"  # type: ignore[index]
        found = await client.call_tool("recall", {"query": "warm starts"})
        hits = found.structured_content["hits"]  # type: ignore[index]
        assert [hit["id"] for hit in hits] == [stored.structured_content["memory"]["id"]]  # type: ignore[index]


@pytest.mark.anyio
async def test_requests_sent_before_the_server_is_ready_are_each_answered_once(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.err"
    async with raw_server(db_path, log, warm_env(db_path, cache_dir)) as raw:
        # All at once, as a fast client would: the SDK is still loading when they arrive.
        for message in (
            initialize(0, VERSION, name="eager-client"),
            INITIALIZED,
            request(1, "tools/list"),
            request(2, "tools/call", {"name": "remember", "arguments": {"content": "Sent before ready"}}),
            request(3, "resources/read", {"uri": "self://soul"}),
            request(4, "ping"),
            request(5, "no/such/method"),
            request(6, "tools/list"),
        ):
            await raw.send(message)
        answers = await raw.answers({0, 1, 2, 3, 4, 5, 6})
        assert await finish(raw) == 0
    assert answers[2]["result"]["structuredContent"]["memory"]["author"] == "eager-client"
    assert answers[3]["result"]["contents"][0]["uri"] == "self://soul"
    assert answers[4]["result"] == {}
    assert answers[5]["error"]["code"] == -32601
    assert answers[6]["result"] == answers[1]["result"]
    assert {key: len(lines) for key, lines in lines_by_id(raw.lines).items()} == dict.fromkeys(range(7), 1)
    assert FROM_CACHE.format(VERSION) in log.read_text()


@pytest.mark.anyio
async def test_stdin_closed_before_the_server_is_ready_exits_cleanly(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    # Everything asked was answered from the cache: nothing is left for the SDK to do.
    async with raw_server(db_path, tmp_path / "first.err", warm_env(db_path, cache_dir)) as raw:
        for message in (initialize(0, VERSION), INITIALIZED, request(1, "tools/list")):
            await raw.send(message)
        assert await finish(raw) == 0
    assert {key: len(lines) for key, lines in lines_by_id(raw.lines).items()} == {0: 1, 1: 1}

    # A request only the SDK can answer: it waits for the SDK, which then sees EOF and stops as
    # it does on a plain start (a request still running is answered "Connection closed" or not at
    # all, never twice).
    async with raw_server(db_path, tmp_path / "second.err", warm_env(db_path, cache_dir)) as raw:
        for message in (
            initialize(0, VERSION),
            INITIALIZED,
            request(1, "resources/read", {"uri": "self://soul"}),
        ):
            await raw.send(message)
        assert await finish(raw) == 0
    answered = lines_by_id(raw.lines)
    assert len(answered[0]) == 1 and len(answered.get(1, [])) <= 1


@pytest.mark.anyio
async def test_a_server_whose_database_cannot_be_opened_answers_why_after_a_warm_handshake(
    cache_dir: Path, tmp_path: Path
) -> None:
    not_a_database = tmp_path / "a-folder"
    not_a_database.mkdir()
    log = tmp_path / "server.err"
    async with raw_server(not_a_database, log, warm_env(not_a_database, cache_dir)) as raw:
        await raw.send(initialize(0, VERSION))
        answer = await raw.receive()  # from the cache, before the database is opened
        assert answer["result"]["serverInfo"]["name"] == "soul-mcp"
        await raw.send(INITIALIZED)
        # The server stays up and gives the reason as the answer to a call.
        await raw.send(request(1, "tools/call", {"name": "recall", "arguments": {}}))
        await raw.answers({1})
        called = json.loads(lines_by_id(raw.lines)[1][0])
        assert called["result"]["isError"] is True
        assert "cannot open the database" in called["result"]["content"][0]["text"]
        assert await finish(raw) == 0
    assert "cannot open the database" in log.read_text()
    lines_by_id(raw.lines)  # nothing but JSON-RPC on stdout


@pytest.mark.anyio
async def test_a_cache_for_other_code_is_ignored_and_replaced(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    path = the_cache_file(cache_dir)
    real = json.loads(path.read_text())
    set_cached_instructions(cache_dir, MARKER)
    stale = json.loads(path.read_text())
    stale["fingerprint"] = "0" * 64  # as if written by another version of soul-mcp
    path.write_text(json.dumps(stale))

    init, _ = await handshake(db_path, cache_dir, tmp_path / "server.err", VERSION)
    assert json.loads(init)["result"]["instructions"] != MARKER
    assert "written for other code" in (tmp_path / "server.err").read_text()
    assert json.loads(the_cache_file(cache_dir).read_text())["answers"] == real["answers"]
    assert json.loads(the_cache_file(cache_dir).read_text())["fingerprint"] == real["fingerprint"]


@pytest.mark.anyio
async def test_a_corrupt_cache_file_is_ignored_and_rewritten(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    path = the_cache_file(cache_dir)
    real = json.loads(path.read_text())
    path.write_bytes(b'{"format": 1, "fingerprint": "torn in the midd')

    init, tools = await handshake(db_path, cache_dir, tmp_path / "server.err", VERSION)
    assert json.loads(init)["result"] == real["answers"][VERSION]["initialize"]
    assert json.loads(tools)["result"] == real["answers"][VERSION]["tools/list"]
    assert "ignoring the warm-start cache" in (tmp_path / "server.err").read_text()
    assert json.loads(path.read_text()) == real


def test_servers_starting_together_leave_one_complete_cache(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    messages = [initialize(0, VERSION), INITIALIZED, request(1, "tools/list")]
    stdin = "".join(json.dumps(m) + "\n" for m in messages).encode()
    processes = []
    for n in range(3):
        db = tmp_path / f"soul{n}.db"
        command, args = server_command(db)
        processes.append(
            subprocess.Popen(
                [command, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=warm_env(db, cache_dir, SOUL_MCP_LOG_LEVEL="WARNING"),
            )
        )
    # Each client waits for both answers before it leaves (EOF would cut the SDK short).
    for process in processes:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(stdin)
        process.stdin.flush()
    for process in processes:
        assert process.stdout is not None and process.stdin is not None
        answered = [json.loads(process.stdout.readline())["id"] for _ in range(2)]
        assert sorted(answered) == [0, 1]
        process.stdin.close()
        assert process.wait(timeout=TIMEOUT) == 0
        process.stdout.close()
    data = json.loads(the_cache_file(cache_dir).read_text())
    assert set(data["answers"][VERSION]) == {"initialize", "tools/list"}
    assert list(cache_dir.glob(".warm-start-*")) == []  # no temporary file left behind


SDK_MOVED = """\
# As if an MCP SDK release had moved the low-level server soul-mcp runs on its own streams.
from soul_mcp.server import sdk_private

sdk_private.lowlevel_server = lambda server: None
"""


@pytest.mark.anyio
@pytest.mark.parametrize("warm", ["1", "0"], ids=["warm-start", "warm-start-off"])
async def test_serve_falls_back_to_the_plain_start_when_the_sdk_internals_moved(
    tmp_path: Path, warm: str
) -> None:
    db, cache_dir, log = tmp_path / "soul.db", tmp_path / "cache", tmp_path / "server.err"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SDK_MOVED)
    env = warm_env(db, cache_dir, **{WARM_START_ENV: warm})
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    remember = request(2, "tools/call", {"name": "remember", "arguments": {"content": "Served all the same"}})
    async with raw_server(db, log, env) as raw:
        # Sent at once: the warm start reads them before the SDK is ready, and must hand them over.
        for message in (initialize(0, VERSION), INITIALIZED, request(1, "tools/list"), remember):
            await raw.send(message)
        answers = await raw.answers({0, 1, 2})
        assert await finish(raw) == 0
    assert all(len(lines) == 1 for lines in lines_by_id(raw.lines).values())
    assert answers[0]["result"]["protocolVersion"] == VERSION
    assert answers[1]["result"]["tools"][0]["name"] == "wake_up"
    assert answers[2]["result"]["isError"] is False, answers[2]
    text = log.read_text()
    assert "the MCP SDK no longer has the low-level server" in text and "MCPServer.run()" in text
    assert not list(cache_dir.glob("warm-start-*.json"))  # nothing cached by a start it did not run
