"""docs/team.md's reverse proxies in front of two real servers on one PostgreSQL database, and a
database link cut without a reset.

The proxies' configurations are the page's own blocks, read from it here, with only the addresses,
ports and TLS lines swapped for loopback ones (so the page cannot drift from what is tested); each
proxy runs unprivileged in a folder of its own. Through it, with the SDK's HTTP client and a real
token: writes and recalls in both protocol eras, live updates streamed unbuffered, the host name
guard, and a server killed with SIGKILL while its agents carry on through the other.

The cut: a `serve --http` process reaches the database through tests/tcp_relay.py, which then stops
passing bytes without closing anything, as a dead network or a stuck middlebox does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from conftest import ROOT
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from postgres_cluster import Cluster
from tcp_relay import TcpRelay
from test_http import TIMEOUT, HttpServer, free_port, start_server, tool
from test_live import Updates, subscriber
from test_postgres_servers import make_token, pg_env, select

pytestmark = pytest.mark.anyio

PAGE = ROOT / "docs" / "team.md"
HOST = "soul.example.com"  # the page's host name: the proxy passes it on, the servers allow only it
PAGE_SERVERS = ("10.0.0.11:8765", "10.0.0.12:8765")
HEARD_WITHIN_S = 2.0  # a write through one server reaches a subscriber through the proxy
CUT_CALL_S = 15.0  # a call while the database link is cut answers within this (postgres_link: a look after 6 s, 3 s for it)
HEAL_S = 30.0  # after the link heals, the server serves again by itself within this
INSTALL = {
    "nginx": "apt-get install nginx (Debian/Ubuntu), brew install nginx (macOS)",
    "caddy": "apt-get install caddy (Debian 12+/Ubuntu 24.04+), brew install caddy (macOS)",
}


def page_block(first_line: str) -> str:
    """The page's ```text block that begins with `first_line`."""
    blocks = re.findall(r"^```text\n(.*?)^```", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return str(block)


def swapped(text: str, swaps: dict[str, str]) -> str:
    """`text` with each key replaced, every key found (a page that changed fails here, loudly)."""
    for old, new in swaps.items():
        assert old in text, f"the page's block no longer holds {old!r}"
        text = text.replace(old, new)
    return text


def binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        message = f"{name} is not installed: {INSTALL[name]}, to test the page's {name} block"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI: .ci/run installs it; a skip would hide the test)")
        pytest.skip(message)
    return found


@dataclass
class Proxy:
    kind: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def nginx_config(folder: Path, port: int, upstreams: tuple[str, str]) -> str:
    block = swapped(page_block("upstream soul {"), {
        PAGE_SERVERS[0]: upstreams[0], PAGE_SERVERS[1]: upstreams[1],
        "listen 443 ssl;": f"listen 127.0.0.1:{port};",
        "    ssl_certificate /etc/letsencrypt/live/soul.example.com/fullchain.pem;\n": "",
        "    ssl_certificate_key /etc/letsencrypt/live/soul.example.com/privkey.pem;\n": "",
    })  # fmt: skip
    # As root, nginx's workers take the user named here; unprivileged, nginx stays who it is.
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {folder}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log notice;\n"
        f"events {{\n    worker_connections 256;\n}}\nhttp {{\n    access_log {folder}/access.log;\n{temp}"
        + block + "}\n"
    )  # fmt: skip


def caddy_config(folder: Path, port: int, upstreams: tuple[str, str]) -> str:
    block = swapped(page_block(f"{HOST} {{"), {
        f"{HOST} {{": f"http://{HOST}:{port} {{",  # plain HTTP: the page's TLS is Caddy's own business
        PAGE_SERVERS[0]: upstreams[0], PAGE_SERVERS[1]: upstreams[1],
    })  # fmt: skip
    return (
        f"{{\n    admin off\n    default_bind 127.0.0.1\n    storage file_system {folder}/data\n}}\n{block}"
    )


def start_proxy(kind: str, upstreams: tuple[str, str]) -> Proxy:
    program = binary(kind)
    folder = Path(tempfile.mkdtemp(prefix=f"soul-{kind}-"))
    folder.chmod(0o755)  # nginx's workers (nobody, when the test runs as root) reach their temp paths
    port = free_port()
    if kind == "nginx":
        (folder / "nginx.conf").write_text(nginx_config(folder, port, upstreams))
        argv = [program, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
    else:
        (folder / "Caddyfile").write_text(caddy_config(folder, port, upstreams))
        argv = [program, "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "XDG_DATA_HOME": str(folder),
           "XDG_CONFIG_HOME": str(folder)}  # fmt: skip
    with (folder / "stderr.log").open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    proxy = Proxy(kind, port, folder, process)
    deadline = time.monotonic() + TIMEOUT
    while True:
        if process.poll() is not None:
            log_text = proxy.log()
            proxy.stop()
            raise AssertionError(f"{kind} exited with {process.returncode}:\n{log_text}")
        with contextlib.suppress(httpx2.TransportError):
            health = httpx2.get(proxy.url.replace("/mcp", "/healthz"), headers={"Host": HOST}, timeout=2)
            if health.status_code == 200:
                return proxy
        if time.monotonic() > deadline:
            proxy.stop()
            raise AssertionError(f"{kind} did not pass /healthz on within {TIMEOUT} s")
        time.sleep(0.1)


@dataclass
class Team:
    """The page's setup: two servers on one database behind one proxy, and an agent's token."""

    servers: list[HttpServer]
    proxy: Proxy
    token: str
    url: str  # the database's

    def stop(self) -> None:
        self.proxy.stop()
        for server in self.servers:
            server.stop()


def start_team(url: str, tmp_path: Path, kind: str) -> Team:
    servers: list[HttpServer] = []
    try:
        for name in ("app1", "app2"):
            (tmp_path / name).mkdir()
            servers.append(start_server(tmp_path / name / "server.db", "--allowed-host", HOST,
                                        env=pg_env(url, tmp_path), database=url))  # fmt: skip
        proxy = start_proxy(kind, (f"127.0.0.1:{servers[0].port}", f"127.0.0.1:{servers[1].port}"))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return Team(servers, proxy, make_token(url, tmp_path, "agent"), url)


@pytest.fixture(params=["nginx", "caddy"])
def team(request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path) -> Iterator[Team]:
    started = start_team(postgres_url, tmp_path, request.param)
    try:
        yield started
    finally:
        started.stop()


def headers(token: str, host: str = HOST) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Host": host}


@asynccontextmanager
async def agent(url: str, token: str, mode: str = "auto") -> AsyncIterator[Client]:
    """The SDK's HTTP client as an agent of the page uses it: its token, the page's host name."""
    async with (
        httpx2.AsyncClient(headers=headers(token), timeout=httpx2.Timeout(TIMEOUT)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@asynccontextmanager
async def subscribed(url: str, token: str, mode: str) -> AsyncIterator[Updates]:
    async with (
        httpx2.AsyncClient(headers=headers(token), timeout=httpx2.Timeout(TIMEOUT)) as http,
        subscriber(streamable_http_client(url, http_client=http), mode, ["self://soul"]) as (_, updates),
    ):
        yield updates


def post(
    url: str, token: str, body: dict[str, Any], host: str = HOST, session: str | None = None
) -> httpx2.Response:
    extra = {"Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-11-25"} if session else {}
    return httpx2.post(url, json=body, timeout=TIMEOUT, headers={
        **headers(token, host), "Accept": "application/json, text/event-stream", **extra})  # fmt: skip


def session_holder(team: Team) -> HttpServer:
    """The server that the proxy sends this machine's handshake-era sessions to: one is begun
    through the proxy, then asked for directly on each server (the other has never heard of it)."""
    begun = post(team.proxy.url, team.token, INITIALIZE)
    assert begun.status_code == 200, begun.text
    session = begun.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    alive = [s for s in team.servers if s.process.poll() is None]
    known = [s for s in alive if post(s.url, team.token, listing, session=session).status_code == 200]
    assert len(known) == 1, "a session lives on the one server that began it"
    return known[0]


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}  # fmt: skip


# Through the proxy --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_pages_proxy_in_front_of_two_servers(team: Team) -> None:
    """One setup per proxy (two servers and a proxy take seconds to start), three stories in turn."""
    await remembered_and_recalled_in_both_eras(team)
    await live_updates_stream_through_from_a_write_through_either_server(team)
    # Debian 12's Caddy 2.6.2 kept sending a new session's requests to the killed server for the
    # whole of fail_duration in about one run in three (a 502 after lb_try_duration each time), so
    # its failover is not claimed by docs/team.md and not tested; nginx's is.
    if team.proxy.kind == "nginx":
        await a_killed_server_leaves_its_agents_to_the_other(team)  # last: it kills one


async def remembered_and_recalled_in_both_eras(team: Team) -> None:
    stored = []
    for mode in ("auto", "legacy"):
        async with agent(team.proxy.url, team.token, mode) as client:
            result = await tool(client, "remember", {"content": f"The {mode} agent ships on Tuesdays"})
            stored.append(result["memory"]["id"])
            hits = (await tool(client, "recall", {"query": "ships Tuesdays"}))["hits"]
            assert set(stored) <= {h["id"] for h in hits}
    # The proxy passes the page's host name on, which --allowed-host lets in; any other is refused.
    assert post(team.proxy.url, team.token, INITIALIZE).status_code == 200
    refused = post(team.proxy.url, team.token, INITIALIZE, host="elsewhere.example.com")
    if team.proxy.kind == "nginx":
        assert refused.status_code == 421  # passed on, and refused by soul-mcp
    else:
        assert refused.status_code == 200 and refused.text == ""  # Caddy serves no other site
    assert sorted(i for (i,) in select(team.url, "SELECT id FROM memories")) == sorted(stored)


async def live_updates_stream_through_from_a_write_through_either_server(team: Team) -> None:
    async with (
        subscribed(team.proxy.url, team.token, "auto") as era_2026,
        subscribed(team.proxy.url, team.token, "legacy") as era_handshake,
    ):
        await anyio.sleep(0.5)  # the subscriptions settle (the 2026 era's listen stream opens)
        # Written straight to each server in turn: one of them is the server the proxy does not use.
        for n, server in enumerate(team.servers, start=1):
            async with agent(server.url, team.token) as writer:
                await tool(writer, "write_soul", {"content": f"# Me\nversion {n}\n", "reason": "test"})
            written = time.monotonic()
            for updates in (era_2026, era_handshake):
                await updates.wait_for("self://soul", count=n)
            heard_after = time.monotonic() - written
            # Unbuffered: a buffering proxy would hold the event until the stream closed (an hour).
            assert heard_after < HEARD_WITHIN_S, (
                f"heard {heard_after:.2f} s after the write through {server.url}"
            )


async def a_killed_server_leaves_its_agents_to_the_other(team: Team) -> None:
    victim = session_holder(team)
    survivor = next(s for s in team.servers if s is not victim)
    async with agent(team.proxy.url, team.token, "auto") as sessionless:
        before = await tool(sessionless, "remember", {"content": "stored before the kill"})
        outcome: Any = None
        with contextlib.suppress(Exception):  # the old session's streams die with its server
            async with agent(team.proxy.url, team.token, "legacy") as handshake:
                await tool(handshake, "recall", {"query": "kill"})
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(timeout=TIMEOUT)
                try:
                    outcome = await handshake.call_tool("recall", {"query": "kill"})
                except Exception as exc:
                    outcome = exc
        assert victim.process.returncode == -signal.SIGKILL
        # Its session lived on the dead server: the other has never heard of it, and says so.
        assert isinstance(outcome, Exception) and "session" in str(outcome).lower(), outcome
        # The 2026 era has no session: the very next call goes through, to the other server.
        after = await tool(sessionless, "remember", {"content": "stored after the kill"})
        hits = (await tool(sessionless, "recall", {"query": "stored kill", "limit": 5}))["hits"]
        assert {before["memory"]["id"], after["memory"]["id"]} <= {h["id"] for h in hits}  # (and neighbours)
    async with agent(team.proxy.url, team.token, "legacy") as again:  # a new session, on the survivor
        contents = {h["content"] for h in (await tool(again, "recall", {"query": "stored kill"}))["hits"]}
        assert {"stored before the kill", "stored after the kill"} <= contents
    assert session_holder(team) is survivor
    assert survivor.process.poll() is None


# A database link cut without a reset -------------------------------------------------------------


@pytest.mark.slow
async def test_a_database_link_cut_without_a_reset_fails_calls_in_seconds_and_heals_by_itself(
    postgres_cluster: Cluster, postgres_url: str, tmp_path: Path
) -> None:
    port = urlsplit(postgres_url).port
    assert port is not None
    relay = TcpRelay("127.0.0.1", port)
    relayed = postgres_url.replace(f":{port}/", f":{relay.port}/")
    token = make_token(postgres_url, tmp_path, "agent")
    # Semantic recall off: only the database link is tested here, and the model would slow the server.
    env = {**pg_env(relayed, tmp_path), "SOUL_MCP_SEMANTIC": "off"}
    server = start_server(tmp_path / "server.db", "--allowed-host", HOST, env=env, database=relayed)
    acknowledged: list[str] = []
    try:
        async with agent(server.url, token) as client:
            for n in range(3):
                await tool(client, "remember", {"content": f"acknowledged before the cut {n}"})
                acknowledged.append(f"acknowledged before the cut {n}")
            relay.cut()
            for name, args in (("remember", {"content": "during the cut"}), ("recall", {"query": "cut"}),
                               ("write_intent", {"content": "during the cut"})):  # fmt: skip
                started = time.monotonic()
                with anyio.fail_after(TIMEOUT):  # the client's own limit, not the bound under test
                    result = await client.call_tool(name, args)
                took = time.monotonic() - started
                assert result.is_error, f"{name} succeeded with the link cut"
                text = result.content[0].text  # type: ignore[union-attr]
                assert "database unavailable" in text and "try again" in text, text
                assert took < CUT_CALL_S, f"{name} hung {took:.1f} s on the cut link"
            # New connections pass again; the links open so far stay silent, as after a NAT lost them.
            relay.heal()
            with anyio.fail_after(HEAL_S):
                while (await client.call_tool("remember", {"content": "after the cut"})).is_error:
                    await anyio.sleep(0.5)
            acknowledged.append("after the cut")
            hits = (await tool(client, "recall", {"query": "acknowledged cut", "limit": 10}))["hits"]
            assert set(acknowledged) <= {h["content"] for h in hits}
        assert server.process.poll() is None, server.stderr()
        stopping = time.monotonic()
        server.stop()  # the LISTEN connection, silent since the cut, must not hold the shutdown
        assert server.stopped_gracefully(), server.stderr()
        assert time.monotonic() - stopping < CUT_CALL_S
    finally:
        server.stop()
        relay.close()
    stored = [c for (c,) in select(postgres_url, "SELECT content FROM memories")]
    assert sorted(stored) == sorted(acknowledged)  # all there, none twice; "during the cut" failed


@pytest.mark.slow
async def test_the_listener_makes_its_link_again_when_it_went_silent(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_postgres_store import NOW

    from soul_mcp.storage import postgres_notify
    from soul_mcp.storage.postgres import PostgresStore

    monkeypatch.setattr(postgres_notify, "PROBE_S", 1.0)  # the question after a second of silence, not 30
    port = urlsplit(postgres_url).port
    relay = TcpRelay("127.0.0.1", port or 5432)
    listening = await PostgresStore.open(postgres_url.replace(f":{port}/", f":{relay.port}/"))
    writing = await PostgresStore.open(postgres_url)
    try:
        assert await listening.wait_for_change(5.0)  # connected
        relay.cut()
        relay.heal()  # its LISTEN link stays silent for good; a new one would pass
        with anyio.fail_after(HEAL_S):  # a new connection counts as a change (pings may have been lost)
            while not await listening.wait_for_change(1.0):
                pass
        assert not await listening.wait_for_change(0.3)
        await writing.append_version("intent", "heard on the new link", "test", None, NOW, None)
        assert await listening.wait_for_change(5.0)
    finally:
        await listening.close()
        await writing.close()
        relay.close()


async def test_the_link_watch_leaves_long_statements_and_busy_clients_alone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call is looked at after LOOK_AFTER_S; a statement the database is still working on, or a
    transaction whose client is busy between statements (migrate, a reindex), is not a dead link."""
    from soul_mcp.storage import postgres_link
    from soul_mcp.storage.postgres import PostgresStore

    monkeypatch.setattr(postgres_link, "LOOK_AFTER_S", 0.5)
    looks: list[tuple[str | None, float | None]] = []
    backend_state = postgres_link.LinkWatch._backend_state

    async def counted(self: Any, pid: int) -> tuple[str | None, float | None]:
        looks.append(await backend_state(self, pid))
        return looks[-1]

    monkeypatch.setattr(postgres_link.LinkWatch, "_backend_state", counted)
    store = await PostgresStore.open(postgres_url)
    try:
        async with store._transaction() as db:
            await db.execute("SELECT pg_sleep(1.6)")  # the database at work, looked at three times
            await anyio.sleep(1.2)  # this side at work: libpq waits for nothing, so no look is made
            cursor = await db.execute("SELECT 42")
            assert await cursor.fetchone() == (42,)
    finally:
        await store.close()
    assert looks and all(state == "active" for state, _ in looks), looks
