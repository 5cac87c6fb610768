"""`soul-mcp serve --http` as a real subprocess on a free loopback port, driven by the SDK's HTTP
client (both protocol eras) and by hand-made requests for what a client would never send.

Most tests share one server (started once for the module, with the `confirm` soul policy from the
environment and DEBUG logging, so the log check sees everything); the ones that need their own
flags or kill it start their own.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import server_env
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitRequestParams, ElicitResult, Implementation

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf

pytestmark = pytest.mark.anyio

TIMEOUT = 30  # seconds for any single step; generous for a loaded 2-core machine
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def make_tokens(db: Path, scopes: dict[str, str]) -> dict[str, str]:
    agent_self = await AgentSelf.open(Settings(db_path=db))
    try:
        return {name: (await agent_self.create_token(name, wanted)).token for name, wanted in scopes.items()}
    finally:
        await agent_self.close()


@dataclass
class HttpServer:
    process: subprocess.Popen[bytes]
    port: int
    db: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=TIMEOUT)

    def stopped_gracefully(self) -> bool:
        """uvicorn finishes its shutdown, then ends by the signal it caught, as a Unix server should
        (a supervisor sees it was stopped, not that it failed)."""
        return self.process.returncode == -signal.SIGTERM and "Application shutdown complete" in self.stderr()


def start_server(
    db: Path, *flags: str, env: dict[str, str] | None = None, database: str | None = None
) -> HttpServer:
    """`serve --http` on a free port, once it answers /healthz. `database` (a PostgreSQL URL) is
    served instead of the file `db`, whose folder then only keeps the log."""
    port = free_port()
    log = db.with_suffix(f".{port}.log")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soul_mcp",
            "serve",
            "--http",
            "--port",
            str(port),
            "--db",
            database or str(db),
            *flags,
        ],
        env=env or server_env(db),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    server = HttpServer(process, port, db, log)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{server.stderr()}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"the server did not answer /healthz within {TIMEOUT} s:\n{server.stderr()}")


@asynccontextmanager
async def connect(url: str, token: str | None, mode: str = "auto", **options: Any) -> AsyncIterator[Client]:
    """The SDK's Streamable HTTP client with a bearer token in every request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, **options) as client,
    ):
        yield client


async def tool(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, name: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(name, args)
    assert result.is_error, f"{name} was expected to be refused"
    return result.content[0].text


def only_connection_errors(exc: BaseException) -> bool:
    inner = getattr(exc, "exceptions", None)  # an exception group
    if inner is not None:
        return all(only_connection_errors(e) for e in inner)
    return isinstance(exc, httpx2.TransportError)


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def approve(context: Any, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="accept", content={"approve": True})


# The shared server -------------------------------------------------------------------------------


@dataclass
class Shared:
    server: HttpServer
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    db = tmp_path_factory.mktemp("http") / "soul.db"
    tokens = anyio.run(
        make_tokens,
        db,
        {"full": "read,write,identity", "writer": "read,write", "reader": "read", "blind": "write"},
    )
    env = {**server_env(db), "SOUL_MCP_SOUL_POLICY": "confirm", "SOUL_MCP_LOG_LEVEL": "DEBUG"}
    server = start_server(db, env=env)
    try:
        yield Shared(server, tokens)
    finally:
        server.stop()
        assert server.stopped_gracefully(), server.stderr()


async def test_healthz_answers_without_a_token(shared: Shared) -> None:
    async with httpx2.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{shared.server.port}/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


async def test_a_token_reads_and_writes_as_its_name(shared: Shared, mode: str) -> None:
    async with connect(shared.server.url, shared.tokens["writer"], mode) as client:
        stored = await tool(
            client, "remember", {"content": f"Maya deploys on Fridays ({mode})", "tags": ["maya"]}
        )
        assert stored["memory"]["author"] == "writer"
        found = await tool(client, "recall", {"query": f"deploys Fridays {mode}"})
        assert found["hits"][0]["id"] == stored["memory"]["id"]
        written = await tool(client, "write_intent", {"content": f"Next: the deploy checklist ({mode})"})
        assert written["version"]["author"] == "writer"
        woken = await tool(client, "wake_up", {"focus": "deploys"})
        assert "deploy checklist" in woken["text"]
        soul = await client.read_resource("self://soul")
        assert soul.contents


@pytest.mark.parametrize(
    "token", [None, "soul_not-a-real-token", "Basic dXNlcjpwYXNz"], ids=["none", "bad", "basic"]
)
async def test_requests_without_a_valid_token_get_401(shared: Shared, token: str | None) -> None:
    headers = dict(JSON_HEADERS)
    if token is not None:
        headers["authorization"] = token if token.startswith("Basic") else f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        answer = await http.post(shared.server.url, json=INITIALIZE, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_a_revoked_token_stops_working_at_once(shared: Shared) -> None:
    token = (await make_tokens(shared.server.db, {"soon-revoked": "read,write"}))["soon-revoked"]
    async with connect(shared.server.url, token) as client:
        await tool(client, "recall", {"query": "anything"})
    # Revoked from another process (the CLI), while the server runs.
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", "token", "revoke", "soon-revoked", "--db", str(shared.server.db)],
        env=server_env(shared.server.db),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    async with httpx2.AsyncClient() as http:
        answer = await http.post(
            shared.server.url, json=INITIALIZE, headers={**JSON_HEADERS, "authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 401


async def test_a_read_only_token_cannot_remember(shared: Shared, mode: str) -> None:
    async with connect(shared.server.url, shared.tokens["reader"], mode) as client:
        text = await refused(client, "remember", {"content": "I should not be stored"})
        assert "'write' scope" in text and "'reader'" in text and "--scope read,write" in text
        text = await refused(client, "write_intent", {"content": "nor this"})
        assert "'write' scope" in text
        await tool(client, "recall", {"query": "stored"})  # reading is what it may do
        await tool(client, "wake_up", {})
    assert rows(shared.server.db, "SELECT count(*) FROM memories WHERE content LIKE 'I should not%'") == [
        (0,)
    ]


async def test_a_write_token_cannot_change_identity(shared: Shared, mode: str) -> None:
    asked: list[str] = []

    async def person(context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    async with connect(
        shared.server.url, shared.tokens["writer"], mode, elicitation_callback=person
    ) as client:
        for name, args in [
            ("write_soul", {"content": "# Soul\nsomeone else", "reason": "takeover"}),
            ("write_north_star", {"content": "Another direction", "reason": "takeover"}),
            ("restore", {"document": "soul", "version": 1, "reason": "takeover"}),
            (
                "write_document",
                {"document": "identity", "content": "# Identity\nsomeone else", "reason": "x"},
            ),
        ]:
            text = await refused(client, name, args)
            assert "'identity' scope" in text, text
        # What it knows about its person is not identity: the write scope covers it.
        written = await tool(
            client,
            "write_document",
            {"document": "user", "content": f"# User\nMaya ({mode})", "reason": "met"},
        )
        assert written["version"]["author"] == "writer"
    assert asked == []  # refused before anyone is asked


async def test_resources_need_the_read_scope(shared: Shared) -> None:
    async with connect(shared.server.url, shared.tokens["blind"], "legacy") as client:
        stored = await tool(client, "remember", {"content": "Written blind"})
        assert stored["memory"]["author"] == "blind"
        with pytest.raises(Exception, match="'read' scope"):
            await client.read_resource("self://soul")
        text = await refused(client, "recall", {"query": "blind"})
        assert "'read' scope" in text


async def test_identity_over_http_asks_the_person_when_the_policy_is_confirm(
    shared: Shared, mode: str
) -> None:
    content = f"# Soul\n\nI am Ada ({mode})."
    async with connect(
        shared.server.url, shared.tokens["full"], mode, elicitation_callback=approve
    ) as client:
        written = await tool(client, "write_soul", {"content": content, "reason": f"first soul over {mode}"})
        assert written["version"]["author"] == "full"
    async with connect(shared.server.url, shared.tokens["full"], mode) as client:  # cannot ask
        text = await refused(
            client, "write_soul", {"content": content + " Again.", "reason": "no one to ask"}
        )
        assert "soul-mcp soul edit" in text


async def test_each_http_session_gets_its_own_session_id(shared: Shared) -> None:
    contents = [f"Session marker {i}" for i in range(2)]
    for content in contents:
        async with connect(shared.server.url, shared.tokens["writer"], "legacy") as client:
            await tool(client, "wake_up", {})
            await tool(client, "remember", {"content": content})
    found = dict(
        rows(
            shared.server.db, "SELECT content, session_id FROM memories WHERE content LIKE 'Session marker%'"
        )
    )
    assert len(set(found.values())) == 2 and None not in found.values()
    recorded = {row[0] for row in rows(shared.server.db, "SELECT id FROM sessions WHERE client = 'writer'")}
    assert set(found.values()) <= recorded
    # The 2026-07-28 era has no sessions: a client still gets an id, the same for all its calls.
    async with connect(shared.server.url, shared.tokens["writer"]) as client:
        await tool(client, "remember", {"content": "Modern marker 1"})
        await tool(client, "remember", {"content": "Modern marker 2"})
    modern = {
        row[0]
        for row in rows(
            shared.server.db, "SELECT session_id FROM memories WHERE content LIKE 'Modern marker%'"
        )
    }
    assert len(modern) == 1 and None not in modern and not modern & set(found.values())


async def test_the_token_records_when_it_was_last_used(shared: Shared) -> None:
    async with connect(shared.server.url, shared.tokens["reader"]) as client:
        await tool(client, "recall", {"query": "anything"})
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", "token", "list", "--json", "--db", str(shared.server.db)],
        env=server_env(shared.server.db),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    listed = {t["name"]: t for t in json.loads(done.stdout)}
    assert listed["reader"]["last_used_at"] is not None
    assert "token" not in listed["reader"] and "token_hash" not in done.stdout


async def test_bad_requests_are_refused_and_the_server_keeps_serving(shared: Shared) -> None:
    auth = {**JSON_HEADERS, "authorization": f"Bearer {shared.tokens['writer']}"}
    url = shared.server.url
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        # A body over the limit (1 MiB): refused before it is parsed.
        big = {**INITIALIZE, "params": {**INITIALIZE["params"], "padding": "x" * (2 * 1024 * 1024)}}
        answer = await http.post(url, content=json.dumps(big), headers=auth)
        assert answer.status_code == 413
        # Not JSON at all.
        answer = await http.post(url, content=b"{not json", headers=auth)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == -32700  # JSON-RPC parse error
        # JSON, but not a JSON-RPC message.
        answer = await http.post(url, json={"hello": "world"}, headers=auth)
        assert answer.status_code == 400
        assert "error" in answer.json()
        # Not declared as JSON.
        answer = await http.post(
            url, content=json.dumps(INITIALIZE), headers={**auth, "content-type": "text/plain"}
        )
        assert answer.status_code == 415
        assert answer.json()["error"]["message"].startswith("Content-Type must be application/json")
        # DNS rebinding: a Host or an Origin that is not this server's.
        answer = await http.post(url, json=INITIALIZE, headers={**auth, "host": "attacker.example"})
        assert answer.status_code == 421
        answer = await http.post(url, json=INITIALIZE, headers={**auth, "origin": "http://attacker.example"})
        assert answer.status_code == 403
        # A session id the server never gave out.
        answer = await http.post(url, json=INITIALIZE, headers={**auth, "mcp-session-id": "0" * 32})
        assert answer.status_code == 404
    assert shared.server.process.poll() is None
    async with connect(url, shared.tokens["writer"]) as client:
        stored = await tool(client, "remember", {"content": "Still serving after the bad requests"})
        assert stored["is_new"]


async def test_tokens_never_reach_the_log(shared: Shared) -> None:
    async with connect(
        shared.server.url, shared.tokens["full"], "legacy", elicitation_callback=approve
    ) as client:
        await tool(client, "recall", {"query": "log check"})
    async with httpx2.AsyncClient() as http:
        await http.post(
            shared.server.url,
            json=INITIALIZE,
            headers={**JSON_HEADERS, "authorization": "Bearer soul_leak-me"},
        )
    log = shared.server.stderr()
    assert "POST /mcp" in log  # the access log is on, at DEBUG level even
    for token in [*shared.tokens.values(), "soul_leak-me"]:
        assert token not in log


# Servers of their own ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--http", "--host", "0.0.0.0", "--insecure-no-auth", "--allowed-host", "soul.lan"],
            "loopback only",
        ),
        (["--http", "--host", "0.0.0.0"], "--allowed-host"),
        (["--insecure-no-auth"], "only apply with --http"),
    ],
    ids=["no-auth-off-loopback", "no-allowed-host", "http-option-without-http"],
)
def test_unsafe_options_are_refused_before_serving(tmp_path: Path, flags: list[str], message: str) -> None:
    db = tmp_path / "soul.db"
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", "serve", *flags, "--db", str(db)],
        env=server_env(db),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert message in done.stderr


async def test_insecure_no_auth_on_loopback_uses_the_client_name(db_path: Path) -> None:
    server = start_server(db_path, "--insecure-no-auth")
    try:
        async with connect(
            server.url, None, client_info=Implementation(name="home-agent", version="1")
        ) as client:
            stored = await tool(client, "remember", {"content": "No token on loopback"})
        assert stored["memory"]["author"] == "home-agent"
    finally:
        server.stop()
        assert server.stopped_gracefully(), server.stderr()


async def test_sigterm_during_a_stream_of_remembers_keeps_every_acknowledged_one(db_path: Path) -> None:
    token = (await make_tokens(db_path, {"stream": "read,write"}))["stream"]
    server = start_server(db_path)
    acknowledged: list[str] = []

    async def writer(worker: int) -> None:
        """One client of its own, so that another's connection error cannot cancel its calls."""
        try:
            async with connect(server.url, token, "legacy") as client:  # legacy: a GET stream too
                for i in range(10_000):
                    try:
                        result = await client.call_tool("remember", {"content": f"stream {worker}-{i}"})
                    except Exception:  # the server is gone: this call was not acknowledged
                        return
                    if result.is_error:
                        return
                    acknowledged.append(result.structured_content["memory"]["id"])  # type: ignore[index]
        except Exception as exc:
            # Once the server has gone, the SDK client's own tasks fail to connect; nothing else may.
            if not only_connection_errors(exc):
                raise

    async def stopper() -> None:
        while len(acknowledged) < 40:
            await anyio.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)

    try:
        with anyio.fail_after(3 * TIMEOUT):
            async with anyio.create_task_group() as tg:
                for worker in range(4):
                    tg.start_soon(writer, worker)
                tg.start_soon(stopper)
        # Hang guard, not a speed test: the open GET streams must not hold the stop until the grace
        # period (30 s) runs out.
        code = await anyio.to_thread.run_sync(lambda: server.process.wait(timeout=25))
    except BaseException:
        server.stop()
        raise
    assert code == -signal.SIGTERM and server.stopped_gracefully(), server.stderr()
    assert "ERROR" not in server.stderr()
    stored = {row[0] for row in rows(db_path, "SELECT id FROM memories")}
    assert len(acknowledged) >= 40
    # Every acknowledged remember is stored, and the calls in flight at the signal were finished and
    # answered: nothing was stored that its client did not hear about.
    assert stored == set(acknowledged)
    assert rows(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_token_commands(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "soul_mcp", *args, "--db", str(db)],
            env=server_env(db),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    created = cli("token", "create", "laptop", "--scope", "write,read", "--json")
    assert created.returncode == 0, created.stderr
    data = json.loads(created.stdout)
    assert data["scopes"] == ["read", "write"] and data["token"].startswith("soul_")
    # Only the hash is stored.
    stored = rows(db, "SELECT name, token_hash, scopes FROM tokens")
    assert stored[0][0] == "laptop" and stored[0][2] == "read,write" and data["token"] not in str(stored)
    assert cli("token", "create", "laptop").returncode == 1  # names are unique
    bad = cli("token", "create", "phone", "--scope", "read,admin")
    assert bad.returncode == 1 and "unknown scope 'admin'" in bad.stderr
    listed = cli("token", "list")
    assert "laptop" in listed.stdout and "read,write" in listed.stdout and data["token"] not in listed.stdout
    revoked = cli("token", "revoke", "laptop")
    assert revoked.returncode == 0 and "Revoked" in revoked.stdout
    assert "revoked" in cli("token", "list").stdout
    assert cli("token", "revoke", "nobody").returncode == 1


@pytest.mark.anyio
async def test_in_a_database_outage_only_tokens_still_valid_pass_the_door(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soul_mcp.errors import StorageError
    from soul_mcp.server.access import StoreTokenVerifier
    from soul_mcp.server.state import SelfHolder

    holder = SelfHolder(settings)
    async with holder.session() as session:
        agent_self = session.agent_self
        kept = (await agent_self.create_token("kept", "read")).token
        gone = (await agent_self.create_token("gone", "read,write")).token
        verifier = StoreTokenVerifier(holder)
        assert (await verifier.verify_token(kept)) is not None
        assert (await verifier.verify_token(gone)) is not None
        await agent_self.revoke_token("gone")
        assert await verifier.verify_token(gone) is None

        async def unavailable(token: str) -> None:
            raise StorageError("database unavailable at postgresql://x/db; retrying")

        monkeypatch.setattr(agent_self, "check_token", unavailable)
        accepted = await verifier.verify_token(kept)
        assert accepted is not None and accepted.client_id == "kept" and accepted.scopes == ["read"]
        with pytest.raises(Exception, match="cannot use its database"):
            await verifier.verify_token(gone)
        with pytest.raises(Exception, match="cannot use its database"):
            await verifier.verify_token("never-seen")
