"""Several `soul-mcp serve --http` processes on one PostgreSQL database: one self, whichever server
a client reaches; and the faults a shared database brings (a restart, a server killed).

Real processes throughout: the session's throwaway cluster (tests/postgres_cluster.py), servers
started as subprocesses with tokens made by `soul-mcp token create`, the SDK's HTTP client.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import server_env
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from test_http import TIMEOUT, HttpServer, connect, start_server, tool
from test_live import Updates, subscriber
from test_postgres_store import NOW, new

pytestmark = pytest.mark.anyio

OUTAGE_CALL_S = 8.0  # a call while the database is down must answer within this (the pool waits 5 s)


def pg_env(url: str, tmp_path: Path) -> dict[str, str]:
    env = server_env(tmp_path / "unused.db")
    env["SOUL_MCP_DB"] = url
    return env


def start_pg_server(url: str, tmp_path: Path) -> HttpServer:
    return start_server(tmp_path / "server.db", env=pg_env(url, tmp_path), database=url)


def make_token(url: str, tmp_path: Path, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", "token", "create", name, "--scope", "read,write,identity", "--json",
         "--db", url],
        env=pg_env(url, tmp_path), capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


def select(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def servers(postgres_url: str, tmp_path: Path) -> Iterator[list[HttpServer]]:
    """Three HTTP servers on one new database."""
    started: list[HttpServer] = []
    try:
        for _ in range(3):
            started.append(start_pg_server(postgres_url, tmp_path))
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def token(postgres_url: str, tmp_path: Path) -> str:
    return make_token(postgres_url, tmp_path, "agent")


@asynccontextmanager
async def subscribed(url: str, token: str, mode: str, uri: str) -> AsyncIterator[Updates]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT) as http,
        subscriber(streamable_http_client(url, http_client=http), mode, [uri]) as (_, updates),
    ):
        yield updates


async def test_a_memory_stored_through_one_server_is_recalled_through_another_at_once(
    servers: list[HttpServer], token: str
) -> None:
    a, b, c = servers
    async with connect(a.url, token) as one, connect(b.url, token) as two, connect(c.url, token) as three:
        # Each server's recall index is built before the write: it must follow the others' writes.
        for client in (one, two, three):
            assert (await tool(client, "recall", {"query": "espresso"}))["hits"] == []
        stored = await tool(one, "remember", {"content": "Ada takes her espresso without sugar"})
        for client in (two, three):
            hits = (await tool(client, "recall", {"query": "espresso"}))["hits"]
            assert [h["id"] for h in hits] == [stored["memory"]["id"]]
        again = await tool(three, "remember", {"content": "ada takes her espresso without sugar"})
        assert not again["is_new"] and again["memory"]["id"] == stored["memory"]["id"]
        await tool(two, "forget", {"memory_id": stored["memory"]["id"], "reason": "she stopped"})
        assert (await tool(one, "recall", {"query": "espresso"}))["hits"] == []


async def test_a_subscriber_on_one_server_hears_a_write_through_another_within_a_second(
    servers: list[HttpServer], token: str, mode: str
) -> None:
    a, b, _ = servers
    async with subscribed(a.url, token, mode, "self://soul") as updates, connect(b.url, token) as writer:
        await anyio.sleep(0.5)  # the subscription settles (the 2026 era's listen stream opens)
        await tool(writer, "write_soul", {"content": "# Me\nCalm, from server B.\n", "reason": "test"})
        written = time.monotonic()
        await updates.wait_for("self://soul")
        heard_after = time.monotonic() - written
    assert updates.uris == ["self://soul"]
    # LISTEN/NOTIFY carries it in milliseconds; the 0.5 s polling alone would also pass on an idle
    # machine, which is why test_the_store_hears_another_connections_write checks the ping itself.
    assert heard_after < 1.0, f"heard {heard_after:.2f} s after the write"


async def test_the_store_hears_another_connections_write(postgres_url: str) -> None:
    from soul_mcp.storage.postgres import PostgresStore

    listening, writing = await PostgresStore.open(postgres_url), await PostgresStore.open(postgres_url)
    try:
        await listening.wait_for_change(2.0)  # the first wait connects, and counts as a change
        assert not await listening.wait_for_change(0.3)  # nothing written: no ping
        async with anyio.create_task_group() as tg:
            heard: list[bool] = []

            async def wait() -> None:
                heard.append(await listening.wait_for_change(5.0))

            tg.start_soon(wait)
            await anyio.sleep(0.1)
            started = time.monotonic()
            await writing.append_version("intent", "next: a ping", "test", None, NOW, None)
        assert heard == [True] and time.monotonic() - started < 0.3  # a ping, not the 5 s timeout
        await writing.add_memory(new("pinged"), NOW)
        assert await listening.wait_for_change(2.0)  # a ping waiting from before the call counts
    finally:
        await listening.close()
        await writing.close()


async def test_the_listener_reconnects_after_a_database_restart(
    postgres_cluster: Any, postgres_url: str
) -> None:
    from soul_mcp.storage.postgres import PostgresStore

    listening, writing = await PostgresStore.open(postgres_url), await PostgresStore.open(postgres_url)
    try:
        assert await listening.wait_for_change(5.0)  # connected
        postgres_cluster.stop_server()
        try:
            assert not await listening.wait_for_change(1.0)  # nobody to hear from, and no error
        finally:
            postgres_cluster.start_server()
        with anyio.fail_after(15):  # reconnected: that counts as a change (pings may have been lost)
            while not await listening.wait_for_change(1.0):
                pass
        assert not await listening.wait_for_change(0.3)
        await writing.append_version("intent", "after the restart", "test", None, NOW, None)
        assert await listening.wait_for_change(5.0)
    finally:
        await listening.close()
        await writing.close()


async def test_the_watcher_announces_another_servers_write_on_the_ping_not_the_poll(
    postgres_url: str,
) -> None:
    from soul_mcp.server.live import LiveUpdates
    from soul_mcp.storage.postgres import PostgresStore

    announced: list[str] = []

    class Recorded(LiveUpdates):
        async def announce(self, uri: str) -> None:
            announced.append(uri)

    live = Recorded(poll_seconds=60)  # a poll would come far too late: only the ping can be in time
    watched, other = await PostgresStore.open(postgres_url), await PostgresStore.open(postgres_url)
    try:
        async with live.watching(watched):
            await anyio.sleep(1.0)  # the listener connects (its first ping makes a check: nothing new)
            await other.append_version("north_star", "Far away", "test", None, NOW, None)
            with anyio.fail_after(5):
                while not announced:
                    await anyio.sleep(0.02)
        assert announced == ["self://north-star"]
    finally:
        await watched.close()
        await other.close()


async def test_concurrent_soul_writes_through_two_servers_get_consecutive_versions(
    servers: list[HttpServer], token: str, postgres_url: str
) -> None:
    a, b, _ = servers
    versions: list[int] = []
    async with connect(a.url, token) as one, connect(b.url, token) as two:

        async def write(client: Client, who: str) -> None:
            for n in range(10):
                result = await tool(client, "write_soul", {"content": f"# {who} {n}\n", "reason": "race"})
                versions.append(result["version"]["version"])

        async with anyio.create_task_group() as tg:
            for client, who in ((one, "A"), (two, "B")):
                for lane in range(2):
                    tg.start_soon(write, client, f"{who}{lane}")
    assert sorted(versions) == list(range(1, 41))
    stored = [
        v for (v,) in select(postgres_url, "SELECT version FROM document_versions WHERE document = 'soul'")
    ]
    assert sorted(stored) == list(range(1, 41))


async def test_a_database_restart_fails_calls_fast_and_the_same_servers_carry_on(
    servers: list[HttpServer], token: str, postgres_url: str, postgres_cluster: Any
) -> None:
    acknowledged: list[str] = []
    async with connect(servers[0].url, token) as one, connect(servers[1].url, token) as two:
        for n in range(5):
            content = f"before the restart {n}"
            await tool(one if n % 2 else two, "remember", {"content": content})
            acknowledged.append(content)
        postgres_cluster.stop_server()
        try:
            for client in (one, two):
                for name, args in (
                    ("remember", {"content": "during the outage"}),
                    ("recall", {"query": "x"}),
                ):
                    started = time.monotonic()
                    result = await client.call_tool(name, args)
                    took = time.monotonic() - started
                    assert result.is_error, f"{name} succeeded with the database down"
                    text = result.content[0].text  # type: ignore[union-attr]
                    assert "database unavailable" in text and "try again" in text, text
                    assert took < OUTAGE_CALL_S, f"{name} took {took:.1f} s to fail"
        finally:
            postgres_cluster.start_server()
        # The same servers and sessions, no restart: they reconnect by themselves.
        for n in range(5):
            content = f"after the restart {n}"
            with anyio.fail_after(TIMEOUT):
                while (result := await one.call_tool("remember", {"content": content})).is_error:
                    await anyio.sleep(0.5)  # the pool's reconnection may take a moment
            acknowledged.append(content)
        hits = (await tool(two, "recall", {"query": "restart", "limit": 20}))["hits"]
        assert len(hits) == 10
    for server in servers:
        assert server.process.poll() is None, server.stderr()
    stored = [c for (c,) in select(postgres_url, "SELECT content FROM memories")]
    assert sorted(stored) == sorted(acknowledged)  # all there, none twice, nothing from the outage


async def test_a_server_killed_right_after_acknowledging_loses_nothing(
    servers: list[HttpServer], token: str, postgres_url: str
) -> None:
    victim = servers[2]
    acknowledged: list[str] = []
    # The client's streams die with the server: what it raises on the way out is not the point.
    with contextlib.suppress(Exception):
        async with connect(victim.url, token) as client:
            await _remember_until_killed(client, victim, acknowledged)
    assert victim.process.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert len(acknowledged) >= 20
    stored = {c for (c,) in select(postgres_url, "SELECT content FROM memories")}
    assert set(acknowledged) <= stored


async def _remember_until_killed(client: Client, victim: HttpServer, acknowledged: list[str]) -> None:
    """60 remembers at once; SIGKILL the server as soon as 20 are acknowledged."""

    async def remember(n: int) -> None:
        content = f"acknowledged before the kill {n}"
        try:
            result = await client.call_tool("remember", {"content": content})
        except Exception:  # the connection went with the server: not acknowledged
            return
        if not result.is_error:
            acknowledged.append(content)
            if len(acknowledged) == 20:
                victim.process.send_signal(signal.SIGKILL)

    async with anyio.create_task_group() as tg:
        for n in range(60):
            tg.start_soon(remember, n)
