"""Malformed lines on stdio get a JSON-RPC error answer, and the server keeps serving.

The SDK's stdio transport drops a line it cannot parse without a word, so the client waits for its
timeout; server/stdio_guard.py answers instead. Raw bytes go to a real `soul-mcp serve` process,
once with the warm start and once plain (SOUL_MCP_WARM_START=0): one process per mode serves every
case, each followed by a `remember` and a `recall` that must still work.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, server_command, server_env

from soul_mcp.server.warmstart import WARM_START_ENV

TIMEOUT = 10  # seconds for any single answer; generous for a loaded 2-core machine
HANDSHAKE_VERSION = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": HANDSHAKE_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "hostile-test", "version": "0"},
    },
}


class RawServer:
    """`soul-mcp serve` on pipes: bytes written to stdin, stdout read back line by line."""

    def __init__(self, db: Path, stderr_path: Path, env: dict[str, str]) -> None:
        command, args = server_command(db)
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.process = subprocess.Popen(
            [command, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._next_id = 1000

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, raw: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(raw + b"\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no answer within {TIMEOUT} s")
        assert line is not None, f"the server closed stdout: {self.log()}"
        return json.loads(line)

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its answer, which must be the next line the server writes."""
        self._next_id += 1
        self.send(
            json.dumps({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}).encode()
        )
        answer = self.receive()
        assert answer.get("id") == self._next_id, answer
        return answer

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        answer = self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in answer and not answer["result"]["isError"], answer
        return answer["result"]["structuredContent"]

    def handshake(self) -> None:
        self.send(json.dumps(INITIALIZE).encode())
        assert "result" in self.receive()
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')

    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._stderr.close()


def assert_still_serving(server: RawServer) -> None:
    """A remember, then a recall that finds it, in the same process."""
    word = "w" + uuid.uuid4().hex[:10]
    stored = server.call("remember", {"content": f"Maya keeps a {word} in the garden"})
    hits = server.call("recall", {"query": word})["hits"]
    assert hits[0]["id"] == stored["memory"]["id"]  # then maybe its neighbour, stored just before


@pytest.fixture(scope="module", params=["warm", "plain"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawServer]:
    """One server process per mode for the whole module."""
    folder = tmp_path_factory.mktemp(f"hostile-{request.param}")
    db = folder / "soul.db"
    env = server_env(db)
    if request.param == "plain":
        env[WARM_START_ENV] = "0"
    running = RawServer(db, folder / "stderr.log", env)
    try:
        running.handshake()
        yield running
    finally:
        running.close()


CUT = "\\ud83d"  # a lone high surrogate as JSON writes it: the first half of an emoji
CASES = [
    pytest.param(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"remember",'
        b'"arguments":{"content":"Maya loves \\ud83d"}}}',
        -32602,
        1,
        f"invalid params: a string holds a lone UTF-16 surrogate ({CUT} at params.arguments.content); "
        "send whole characters, encoded as UTF-8",
        id="cut-emoji-in-remember",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":"r-2","method":"tools/call","params":{"name":"recall",'
        b'"arguments":{"query":"Maya loves \\ud83d"}}}',
        -32602,
        "r-2",
        f"lone UTF-16 surrogate ({CUT} at params.arguments.query)",
        id="cut-emoji-in-recall",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"remember",'
        b'"arguments":{"content":"Maya","tags":["ok","\\udc00"]}}}',
        -32602,
        3,
        "lone UTF-16 surrogate (\\udc00 at params.arguments.tags[1])",
        id="lone-low-surrogate-in-a-list",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":4,"method":"tools/list","params":[]}',
        -32602,
        4,
        "invalid params: params must be an object, got an array",
        id="params-an-array",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":"remember"}',
        -32602,
        5,
        "invalid params: params must be an object, got a string",
        id="params-a-string",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"remember"',
        -32700,
        None,
        "parse error: ",
        id="invalid-json",
    ),
    pytest.param(
        b'[{"jsonrpc":"2.0","id":7,"method":"tools/list"}]',
        -32600,
        None,
        "invalid request: got an array (batches are not supported)",
        id="batch",
    ),
    pytest.param(b'"tools/list"', -32600, None, "invalid request: got a string", id="not-an-object"),
    pytest.param(
        b'{"jsonrpc":"2.0","id":9,"method":9}',
        -32600,
        9,
        'invalid request: "method" must be a string, got a number',
        id="method-not-a-string",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":[10],"method":"tools/list"}',
        -32600,
        None,
        'invalid request: "id" must be a string or an integer, got an array',
        id="id-an-array",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":11.5,"method":"tools/list"}',
        -32600,
        None,
        'invalid request: "id" must be a string or an integer, got a number',
        id="id-a-fraction",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":"\\ud83d","method":"tools/list"}',
        -32600,
        None,
        f"lone UTF-16 surrogate ({CUT} at id)",
        id="id-a-lone-surrogate",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":13,"method":"tools/li\\udc00st"}',
        -32600,
        13,
        "invalid request: a string holds a lone UTF-16 surrogate (\\udc00 at method)",
        id="lone-surrogate-in-method",
    ),
    pytest.param(
        b'{"jsonrpc":"2.0","id":14,"method":"tools/call","params":{"name":"recall",'
        b'"arguments":{"query":"Maya loves caf\xe9"}}}',
        -32700,
        14,
        "parse error: the line is not valid UTF-8 (byte 0xe9 at offset ",
        id="invalid-utf8",
    ),
    pytest.param(
        b'{"jsonrpc":"1.0","id":15,"method":"tools/list"}',
        -32600,
        15,
        '"jsonrpc" must be "2.0"',
        id="jsonrpc-1.0",
    ),
    pytest.param(b"", -32700, None, "parse error: empty line", id="empty-line"),
    pytest.param(  # python-sdk issue 2751: the SDK's parser stops at 200 levels
        b'{"jsonrpc":"2.0","id":17,"method":"ping","params":{"deep":' + b"[" * 300 + b"]" * 300 + b"}}",
        -32700,
        17,
        "parse error: Invalid JSON: recursion limit exceeded",
        id="nested-too-deeply",
    ),
]


@pytest.mark.parametrize(("line", "code", "request_id", "message"), CASES)
def test_a_malformed_request_gets_an_error_answer_and_the_server_keeps_serving(
    server: RawServer, line: bytes, code: int, request_id: int | str | None, message: str
) -> None:
    server.send(line)
    answer = server.receive()
    assert answer["jsonrpc"] == "2.0" and answer["id"] == request_id, answer
    assert answer["error"]["code"] == code
    assert message in answer["error"]["message"]
    log = server.log()
    assert "WARNING soul_mcp.server.stdio_guard: answered a malformed message" in log
    assert answer["error"]["message"] in log
    assert "Maya loves" not in log  # the problem is logged, never what the client wanted stored
    assert_still_serving(server)


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":[]}',
        b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"message":"Maya loves \\ud83d"}}',
    ],
    ids=["params-an-array", "lone-surrogate"],
)
def test_a_malformed_notification_is_logged_and_not_answered(server: RawServer, line: bytes) -> None:
    server.send(line)
    assert_still_serving(server)  # its answers are the next lines: nothing came for the notification
    log = server.log()
    assert "WARNING soul_mcp.server.stdio_guard: ignored a malformed notification" in log
    assert "Maya loves" not in log


def test_whole_characters_pass_the_guard_intact(server: RawServer) -> None:
    # An emoji as a JSON surrogate pair, and as raw UTF-8 bytes.
    line = (
        b'{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"remember",'
        b'"arguments":{"content":"Maya loves \\ud83d\\ude00 and \xf0\x9f\x8c\xb5 plants"}}}'
    )
    server.send(line)
    answer = server.receive()
    assert answer["id"] == 77 and answer["result"]["structuredContent"]["memory"]["content"] == (
        "Maya loves \U0001f600 and \U0001f335 plants"
    )
    hits = server.call("recall", {"query": "plants"})["hits"]
    assert hits[0]["content"] == "Maya loves \U0001f600 and \U0001f335 plants"


def test_a_cut_initialize_is_refused_not_answered_from_the_warm_start_cache(tmp_path: Path) -> None:
    # The servers run a copy of the code: the cache is keyed by a hash of the source files, which
    # another edit in the tree must not change between the two starts.
    shutil.copytree(
        ROOT / "soul_mcp", tmp_path / "code" / "soul_mcp", ignore=shutil.ignore_patterns("__pycache__")
    )
    db = tmp_path / "soul.db"
    # PYTHONSAFEPATH: `python -m` would otherwise import soul_mcp from the current folder.
    env = server_env(db) | {"PYTHONPATH": str(tmp_path / "code"), "PYTHONSAFEPATH": "1"}

    first = RawServer(db, tmp_path / "first.log", env)
    try:
        first.handshake()
        assert "result" in first.request("tools/list", {})
    finally:
        first.close()
    assert list((tmp_path / "cache").glob("warm-start-*.json")), "the first start wrote no cache"

    second = RawServer(db, tmp_path / "second.log", env)
    try:
        cut = json.dumps(INITIALIZE).replace('"hostile-test"', '"hostile \\ud83d"')
        second.send(cut.encode())
        answer = second.receive()  # without the guard in the warm start: the cached success
        assert answer["id"] == 0 and "error" in answer, answer
        assert answer["error"]["code"] == -32602
        assert f"({CUT} at params.clientInfo.name)" in answer["error"]["message"]
        second.handshake()
        assert_still_serving(second)
    finally:
        second.close()


def test_a_cut_2026_era_request_is_refused_not_answered_from_the_warm_start_cache(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "soul_mcp", tmp_path / "code" / "soul_mcp", ignore=shutil.ignore_patterns("__pycache__")
    )
    db = tmp_path / "soul.db"
    env = server_env(db) | {"PYTHONPATH": str(tmp_path / "code"), "PYTHONSAFEPATH": "1"}
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "hostile-test", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }

    first = RawServer(db, tmp_path / "first.log", env)
    try:
        assert "result" in first.request("server/discover", {"_meta": meta})
        assert "result" in first.request("tools/list", {"_meta": meta})
    finally:
        first.close()
    cache = json.loads(next((tmp_path / "cache").glob("warm-start-*.json")).read_text())
    assert len(cache["modern"]) == 2, "the first start cached no 2026-era answer"

    second = RawServer(db, tmp_path / "second.log", env)
    try:
        cut = json.dumps({"_meta": meta}).replace('"hostile-test"', '"hostile \\ud83d"')
        second.send(b'{"jsonrpc":"2.0","id":1,"method":"server/discover","params":' + cut.encode() + b"}")
        answer = second.receive()  # without the guard in the warm start: the cached success
        assert answer["id"] == 1 and answer["error"]["code"] == -32602, answer
        assert "params._meta.io.modelcontextprotocol/clientInfo.name" in answer["error"]["message"]
        assert "result" in second.request("server/discover", {"_meta": meta})
        assert "result" in second.request("tools/list", {"_meta": meta})
    finally:
        second.close()
