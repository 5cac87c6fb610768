"""Warm start of `soul-mcp serve` (server/warmstart.py), through real server processes on stdio.

A start with no cache is answered by the SDK and writes the cache; the next start answers
`initialize` and `tools/list` (handshake era), or `server/discover` and `tools/list` (2026 era),
from it while the SDK loads, and hands the SDK everything else.
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

from soul_mcp.server.warmstart import (
    CACHE_DIR_ENV,
    WARM_START_ENV,
    Cache,
    _modern_key,
    load_cache,
    save_cache,
)

VERSION = "2025-11-25"  # the newest handshake-era version, what mcp.Client(mode="legacy") sends
FROM_CACHE = "answered initialize ({}) from the warm-start cache"
TOOLS_FROM_CACHE = "answered tools/list from the warm-start cache"
MARKER = "instructions that only the warm-start cache knows"
MODERN = "2026-07-28"
MODERN_FROM_CACHE = "answered {} (2026 era) from the warm-start cache"
DISCOVER = "server/discover"


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
    # `python -m` would otherwise import soul_mcp from the current folder, the live tree.
    env["PYTHONSAFEPATH"] = "1"
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


def envelope(name: str = "warm-test", capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `_meta` every 2026-era request carries."""
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": name, "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": capabilities or {},
    }


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


async def discover(
    db: Path, cache_dir: Path, log: Path, *, meta: dict[str, Any] | None = None, **env: str
) -> tuple[bytes, bytes]:
    """One server start in the 2026 era: server/discover, then tools/list, each awaited as a client
    does; the raw answer lines (ids 0 and 1)."""
    params = {"_meta": meta or envelope()}
    async with raw_server(db, log, warm_env(db, cache_dir, **env)) as raw:
        await raw.send(request(0, DISCOVER, params))
        await raw.answers({0})
        await raw.send(request(1, "tools/list", params))
        await raw.answers({1})
        assert await finish(raw) == 0
    answers = lines_by_id(raw.lines)
    assert sorted(answers) == [0, 1] and all(len(v) == 1 for v in answers.values()), answers
    return answers[0][0], answers[1][0]


async def prime(folder: Path) -> None:
    """What a handshake-era start and a 2026-era start (mcp.Client's own requests) write."""
    db, cache_dir = folder / "soul.db", folder / "cache"
    await handshake(db, cache_dir, folder / "server.err", VERSION)
    command, args = server_command(db)
    params = StdioServerParameters(command=command, args=args, env=warm_env(db, cache_dir))
    async with Client(params, mode="auto") as client:
        await client.list_tools()


@pytest.fixture(scope="module")
def primed_cache(tmp_path_factory: pytest.TempPathFactory, code_snapshot: None) -> Path:
    """A cache folder holding what a start of each era wrote (copied by each test that needs it)."""
    folder = tmp_path_factory.mktemp("primed")
    anyio.run(prime, folder)
    assert len(json.loads(the_cache_file(folder / "cache").read_text())["modern"]) == 2
    return folder / "cache"


@pytest.fixture
def cache_dir(primed_cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(primed_cache, tmp_path / "cache"))


def set_cached_instructions(cache_dir: Path, text: str) -> None:
    """In the cached initialize answers and server/discover answers alike."""
    path = the_cache_file(cache_dir)
    data = json.loads(path.read_text())
    data["answers"][VERSION]["initialize"]["instructions"] = text
    for key, result in data["modern"].items():
        if json.loads(key)[0] == DISCOVER:
            result["instructions"] = text
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
async def test_2026_era_answers_come_from_the_cache_and_equal_the_sdk_answers(tmp_path: Path) -> None:
    db, cache_dir = tmp_path / "soul.db", tmp_path / "cache"
    logs = [tmp_path / f"server{n}.err" for n in range(4)]

    # The SDK alone, with the warm start turned off: the reference answers.
    plain = await discover(db, cache_dir, logs[0], **{WARM_START_ENV: "0"})
    assert json.loads(plain[0])["result"]["supportedVersions"] == [MODERN]
    assert not cache_dir.exists()

    # No cache yet: the SDK answers, and its answers are cached.
    first = await discover(db, cache_dir, logs[1])
    assert first == plain
    assert MODERN_FROM_CACHE.format(DISCOVER) not in logs[1].read_text()
    cached = json.loads(the_cache_file(cache_dir).read_text())["modern"]
    assert sorted(cached.values(), key=len) == sorted([json.loads(a)["result"] for a in plain], key=len)

    # Answered from the cache while the SDK loads, byte for byte the SDK's answers; another
    # client's name and version do not matter (neither answer reads them).
    warm = await discover(db, cache_dir, logs[2], meta=envelope(name="another-host"))
    log = logs[2].read_text()
    assert MODERN_FROM_CACHE.format(DISCOVER) in log and MODERN_FROM_CACHE.format("tools/list") in log
    assert warm == plain

    # Other client capabilities are another request: the SDK answers it, and it is cached too.
    other = await discover(db, cache_dir, logs[3], meta=envelope(capabilities={"roots": {}}))
    assert MODERN_FROM_CACHE.format(DISCOVER) not in logs[3].read_text()
    assert other == plain
    assert len(json.loads(the_cache_file(cache_dir).read_text())["modern"]) == 4


@pytest.mark.anyio
async def test_2026_era_cache_for_other_code_is_ignored_and_replaced(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    path = the_cache_file(cache_dir)
    real = json.loads(path.read_text())
    set_cached_instructions(cache_dir, MARKER)
    stale = json.loads(path.read_text())
    stale["fingerprint"] = "0" * 64  # as if written by another version of soul-mcp
    path.write_text(json.dumps(stale))

    discovered, _ = await discover(db_path, cache_dir, tmp_path / "server.err")
    log = (tmp_path / "server.err").read_text()
    assert json.loads(discovered)["result"]["instructions"] != MARKER
    assert "written for other code" in log and MODERN_FROM_CACHE.format(DISCOVER) not in log
    rewritten = json.loads(the_cache_file(cache_dir).read_text())
    assert rewritten["fingerprint"] == real["fingerprint"]
    assert set(rewritten["modern"]) == {
        _modern_key(DISCOVER, {"_meta": envelope()}),
        _modern_key("tools/list", {"_meta": envelope()}),
    }


@pytest.mark.anyio
async def test_an_enveloped_request_on_a_handshake_connection_is_left_to_the_sdk(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    # The first request settles the era: after initialize, the SDK refuses 2026-era requests, so
    # the cache must not answer them.
    log = tmp_path / "server.err"
    async with raw_server(db_path, log, warm_env(db_path, cache_dir)) as raw:
        for message in (
            initialize(0, VERSION),
            INITIALIZED,
            request(1, "tools/list", {"_meta": envelope()}),
            request(2, DISCOVER, {"_meta": envelope()}),
        ):
            await raw.send(message)
        answers = await raw.answers({0, 1, 2})
        assert await finish(raw) == 0
    assert answers[0]["result"]["protocolVersion"] == VERSION
    assert answers[1]["error"]["code"] == -32600 and "error" in answers[2]
    assert {key: len(lines) for key, lines in lines_by_id(raw.lines).items()} == {0: 1, 1: 1, 2: 1}
    assert "(2026 era) from the warm-start cache" not in log.read_text()


@pytest.mark.anyio
async def test_2026_era_requests_after_the_first_are_answered_once(
    db_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    # Sent at once: discover (answered early and passed on: it settles the SDK's era), tools/list
    # (answered early only), and calls only the SDK can answer.
    meta = {"_meta": envelope(name="eager-2026")}
    log = tmp_path / "server.err"
    async with raw_server(db_path, log, warm_env(db_path, cache_dir)) as raw:
        for message in (
            request(0, DISCOVER, meta),
            request(1, "tools/list", meta),
            request(2, "tools/call", {"name": "remember", "arguments": {"content": "Sent early"}, **meta}),
            request(3, "initialize", initialize(3, VERSION)["params"]),
            request(4, "tools/list", meta),
        ):
            await raw.send(message)
        answers = await raw.answers({0, 1, 2, 3, 4})
        assert await finish(raw) == 0
    assert {key: len(lines) for key, lines in lines_by_id(raw.lines).items()} == dict.fromkeys(range(5), 1)
    assert answers[2]["result"]["structuredContent"]["memory"]["author"] == "eager-2026"
    assert answers[3]["error"]["code"] == -32022  # the SDK saw discover first: a 2026-era connection
    assert answers[4]["result"] == answers[1]["result"]
    assert MODERN_FROM_CACHE.format(DISCOVER) in log.read_text()


@pytest.mark.parametrize(
    ("client_info", "cached"),
    [
        ({"name": "other", "version": "2"}, True),
        ({"name": "other", "version": "2", "title": "Other"}, True),
        (None, True),  # absent: the SDK does not require it
        ({"name": "other"}, False),  # the SDK refuses it: its own error must reach the client
        ({"name": 5, "version": "2"}, False),
        ({"name": "other", "version": "2", "icons": []}, False),  # richer: left to the SDK
    ],
)
def test_modern_key_ignores_only_a_plainly_valid_client_info(client_info: Any, cached: bool) -> None:
    meta = envelope()
    reference = _modern_key(DISCOVER, {"_meta": meta})
    assert reference is not None
    if client_info is None:
        del meta["io.modelcontextprotocol/clientInfo"]
    else:
        meta["io.modelcontextprotocol/clientInfo"] = client_info
    assert (_modern_key(DISCOVER, {"_meta": meta}) == reference) is cached
    assert _modern_key(DISCOVER, {"_meta": meta, "cursor": "x"}) != reference
    assert (
        _modern_key(DISCOVER, {"_meta": {**envelope(), "io.modelcontextprotocol/protocolVersion": "x"}})
        != reference
    )
    assert _modern_key(DISCOVER, {}) is None and _modern_key("tools/call", {"_meta": envelope()}) is None


@pytest.mark.parametrize("key", ["[]", "5", '["tools/call", {}]', "not json"])
def test_a_cache_with_a_foreign_2026_era_entry_is_ignored(tmp_path: Path, key: str) -> None:
    path, fingerprint = tmp_path / "cache.json", "f" * 64
    good = _modern_key(DISCOVER, {"_meta": envelope()})
    assert good is not None
    save_cache(
        path, fingerprint, Cache((VERSION,), VERSION, {}, modern={good: {"supportedVersions": [MODERN]}})
    )
    loaded = load_cache(path, fingerprint)
    assert loaded is not None and loaded.modern == {good: {"supportedVersions": [MODERN]}}
    data = json.loads(path.read_text())
    data["modern"][key] = {}
    path.write_text(json.dumps(data))
    assert load_cache(path, fingerprint) is None


@pytest.mark.anyio
async def test_session_after_a_warm_start_signs_memories_with_the_client_name(
    db_path: Path, cache_dir: Path, mode: str
) -> None:
    set_cached_instructions(cache_dir, MARKER)
    command, args = server_command(db_path)
    params = StdioServerParameters(command=command, args=args, env=warm_env(db_path, cache_dir))
    client_info = Implementation(name="warm-author", version="1")
    async with Client(params, mode=mode, client_info=client_info) as client:
        # initialize, or server/discover, was answered from the cache (only it knows the marker)
        assert client.instructions == MARKER
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
    rewritten = json.loads(path.read_text())  # what this handshake-era start captured
    assert (rewritten["fingerprint"], rewritten["answers"]) == (real["fingerprint"], real["answers"])


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
