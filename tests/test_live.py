"""Live updates: a client subscribed to the soul, the intent or the north star hears when any client
changes it, in both protocol eras, in the same server process and across processes on one file.

Handshake era: `resources/subscribe`, then `notifications/resources/updated`. 2026-07-28 era: a
`subscriptions/listen` stream carrying the same notification. Waits are bounded but generous (a
loaded 2-core machine); nothing here asserts how fast a notification came.
"""

from __future__ import annotations

import json
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from conftest import load_bench, server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import ResourceUpdatedNotification

from soul_mcp.config import Settings
from soul_mcp.server import build_server, sdk_private

pytestmark = pytest.mark.anyio

WAIT = 10  # seconds: how long a notification may take before the test fails (the watcher polls every 0.5 s)
GRACE = 1.0  # seconds given to a notification that must NOT arrive (two polls of the watcher)


class Updates:
    """The resource URIs one client was told changed, in order of arrival."""

    def __init__(self) -> None:
        self.uris: list[str] = []

    async def wait_for(self, uri: str, count: int = 1) -> None:
        with anyio.fail_after(WAIT):
            while self.uris.count(uri) < count:
                await anyio.sleep(0.02)


@asynccontextmanager
async def subscriber(target: Any, mode: str, uris: Sequence[str]) -> AsyncIterator[tuple[Client, Updates]]:
    """A client subscribed to `uris` in the way its protocol era allows."""
    updates = Updates()
    if mode == "legacy":

        async def on_message(message: Any) -> None:
            if isinstance(message, ResourceUpdatedNotification):
                updates.uris.append(str(message.params.uri))

        async with Client(target, mode="legacy", message_handler=on_message) as client:
            with warnings.catch_warnings():  # resources/subscribe is deprecated as of 2026-07-28
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                for uri in uris:
                    await client.subscribe_resource(uri)
            yield client, updates
        return

    async with Client(target, mode=mode) as client, client.listen(resource_subscriptions=uris) as stream:

        async def pump() -> None:
            async for event in stream:
                if isinstance(event, ResourceUpdated):
                    updates.uris.append(event.uri)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            yield client, updates
            tg.cancel_scope.cancel()


def stdio(db: Path) -> StdioServerParameters:
    command, args = server_command(db)
    return StdioServerParameters(command=command, args=args, env=server_env(db))


async def write(client: Client, tool: str, content: str) -> None:
    arguments = {"content": content} if tool == "write_intent" else {"content": content, "reason": "testing"}
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content


# In one server process ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "uri"),
    [
        ("write_soul", "self://soul"),
        ("write_intent", "self://intent"),
        ("write_north_star", "self://north-star"),
    ],
)
async def test_subscriber_hears_when_another_client_writes(
    server: Any, mode: str, tool: str, uri: str
) -> None:
    async with subscriber(server, mode, [uri]) as (_, updates), Client(server, mode="legacy") as writer:
        await write(writer, tool, "# Written by another client\nwhile the first one listens.")
        await updates.wait_for(uri)
        # The news is fresh: reading the resource gives the new content.
        async with Client(server) as reader:
            read = await reader.read_resource(uri)
        assert read.contents[0].text == "# Written by another client\nwhile the first one listens."  # type: ignore[union-attr]


async def test_restore_is_announced_too(server: Any, mode: str) -> None:
    async with subscriber(server, mode, ["self://soul"]) as (client, updates):
        await write(client, "write_soul", "# Soul one")
        await write(client, "write_soul", "# Soul two")
        await updates.wait_for("self://soul", count=2)
        restored = await client.call_tool("restore", {"document": "soul", "version": 1, "reason": "back"})
        assert not restored.is_error, restored.content
        await updates.wait_for("self://soul", count=3)


async def test_only_subscribers_of_the_changed_document_hear_of_it(server: Any, mode: str) -> None:
    async with (
        subscriber(server, mode, ["self://soul"]) as (_, soul_news),
        subscriber(server, mode, ["self://intent"]) as (_, intent_news),
        subscriber(server, mode, [])
        if mode == "legacy"
        else subscriber(server, mode, ["self://nothing"]) as (
            _,
            no_news,
        ),
        Client(server) as writer,
    ):
        await write(writer, "write_soul", "# A soul for the soul subscriber only")
        await writer.call_tool("remember", {"content": "memories are not subscribable documents"})
        await soul_news.wait_for("self://soul")
        await anyio.sleep(GRACE)
        assert soul_news.uris == ["self://soul"]  # once, although two watchers may have seen it
        assert intent_news.uris == []
        assert no_news.uris == []


async def test_unsubscribed_client_hears_nothing_more(server: Any) -> None:
    """Handshake era only: the 2026 era ends a subscription by closing its listen stream."""
    async with subscriber(server, "legacy", ["self://intent", "self://soul"]) as (client, updates):
        await write(client, "write_intent", "first")
        await updates.wait_for("self://intent")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.unsubscribe_resource("self://intent")
            await client.unsubscribe_resource("self://intent")  # twice is harmless
        await write(client, "write_intent", "second")
        await write(client, "write_soul", "# still subscribed to the soul")
        await updates.wait_for("self://soul")
        await anyio.sleep(GRACE)
        assert updates.uris == ["self://intent", "self://soul"]


async def test_subscribe_capability_is_advertised(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as client:
        resources = client.server_capabilities.resources
        assert resources is not None and resources.subscribe is True


async def test_subscribing_to_an_unknown_resource_says_what_can_be_subscribed(server: Any) -> None:
    async with Client(server, mode="legacy") as client:
        with warnings.catch_warnings(), pytest.raises(MCPError) as raised:
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.subscribe_resource("self://memories/m_000000000000")
    message = str(raised.value)
    assert "self://memories/m_000000000000" in message
    assert "subscribable resources are" in message
    assert all(uri in message for uri in ("self://soul", "self://intent", "self://north-star"))


# Across processes --------------------------------------------------------------------------------


async def test_server_hears_of_a_write_made_by_another_process(db_path: Path, mode: str) -> None:
    async with (
        subscriber(stdio(db_path), mode, ["self://intent"]) as (listener, updates),
        Client(stdio(db_path), mode="legacy") as writer,
    ):
        await write(writer, "write_north_star", "Process B also changes what A did not subscribe to")
        await write(writer, "write_intent", "Written by process B, heard by process A")
        await updates.wait_for("self://intent")
        read = await listener.read_resource("self://intent")
        assert read.contents[0].text == "Written by process B, heard by process A"  # type: ignore[union-attr]
        await anyio.sleep(GRACE)
        assert updates.uris == ["self://intent"]


async def test_http_clients_of_both_eras_hear_of_a_write_by_another_client(
    db_path: Path, tmp_path: Path
) -> None:
    """One shared `serve --http`: handshake-era news rides the session's GET stream, 2026-era news
    the listen stream."""
    bench = load_bench("concurrency")
    with bench.http_server(db_path, tmp_path / "server.log", auth=False) as url:
        async with (
            subscriber(url, "legacy", ["self://intent"]) as (_, old_era),
            subscriber(url, "auto", ["self://intent"]) as (_, new_era),
            bench.http_client(url, None, "legacy") as writer,
        ):
            await write(writer, "write_intent", "Written over HTTP, heard over HTTP")
            await old_era.wait_for("self://intent")
            await new_era.wait_for("self://intent")


def test_server_with_a_watcher_and_a_subscriber_stops_cleanly_when_the_client_leaves(db_path: Path) -> None:
    """The watcher ends with the lifespan: closing stdin ends the process with 0 and nothing on stderr
    worse than INFO."""
    command, args = server_command(db_path)
    lines = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "leaving", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": "self://soul"}},
    ]
    process = subprocess.Popen(
        [command, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(db_path),
    )
    assert process.stdin is not None and process.stdout is not None
    for line in lines:
        process.stdin.write(json.dumps(line).encode() + b"\n")
    process.stdin.flush()
    answers = [json.loads(process.stdout.readline()) for _ in range(2)]
    assert answers[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}
    time.sleep(1.0)  # let the watcher poll a couple of times
    _, stderr = process.communicate(timeout=30)  # closes stdin: the client has gone
    assert process.returncode == 0, stderr.decode()
    assert not [line for line in stderr.decode().splitlines() if " WARNING " in line or " ERROR " in line]
    assert "Traceback" not in stderr.decode()


async def test_this_sdk_still_has_what_live_updates_reach_for(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Fails when an SDK upgrade moved an internal: the fallbacks below are then what serves."""
    assert sdk_private.lowlevel_server(server) is not None
    async with subscriber(server, "legacy", ["self://intent"]) as (client, updates):
        await write(client, "write_intent", "heard through the connection")
        await updates.wait_for("self://intent")
    assert "this version of the MCP SDK" not in caplog.text


def test_sdk_private_answers_none_for_what_is_not_there() -> None:
    assert sdk_private.lowlevel_server(object()) is None
    assert sdk_private.lowlevel_server(SimpleNamespace(_lowlevel_server=SimpleNamespace())) is None
    assert sdk_private.connection(SimpleNamespace(session=SimpleNamespace())) is None  # type: ignore[arg-type]


async def test_without_the_low_level_server_the_2026_era_still_hears(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sdk_private, "lowlevel_server", lambda server: None)
    server = build_server(settings)
    assert "clients of the handshake era cannot subscribe" in caplog.text
    async with subscriber(server, "auto", ["self://soul"]) as (client, updates):
        await write(client, "write_soul", "# Heard without resources/subscribe")
        await updates.wait_for("self://soul")
    async with Client(server, mode="legacy") as client:
        resources = client.server_capabilities.resources
        assert resources is not None and not resources.subscribe  # not offered, so not attempted


async def test_without_a_requests_connection_a_subscriber_still_hears(
    monkeypatch: pytest.MonkeyPatch, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sdk_private, "connection", lambda ctx: None)
    async with subscriber(server, "legacy", ["self://intent"]) as (client, updates):
        await write(client, "write_intent", "heard through the subscribing request")
        await updates.wait_for("self://intent")
    assert "hides a request's connection" in caplog.text
