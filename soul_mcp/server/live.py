"""Live updates: a client subscribed to a document (the soul, the intent, the north star, ...) hears
when anyone changes it, whichever client, whichever process.

Two protocol eras, two ways to subscribe, one announcement:
- 2026-07-28: the client opens a `subscriptions/listen` stream; the SDK's ListenHandler forwards
  what is published on the server's SubscriptionBus (`bus`, handed to MCPServer).
- the handshake era (up to 2025-11-25): the client sends `resources/subscribe`. MCPServer does not
  serve it, so `install` registers subscribe and unsubscribe on the low-level server and keeps the
  subscribed connections per URI; each is sent `notifications/resources/updated`.

Where changes come from: this process's tools, the other processes on the same file (every stdio
client starts its own server; the CLI writes too). One watcher covers them all: it polls the
store's change marker (SQLite's PRAGMA data_version, which moves on any commit by another
connection, this process's writer included) every POLL_SECONDS, and when it moved compares the
latest version of each document with the last seen. After every tool call the server pokes the
watcher, so a change made here is announced at once instead of at the next poll. Each change is
announced once per process, whoever noticed it first.

A store that can tell of other servers' writes (PostgreSQL's LISTEN/NOTIFY: `wait_for_change`)
pokes the watcher too, so a write through another server is announced within a round trip; the
polling stays, as the fallback for a ping lost while the listening connection was down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from soul_mcp.names import DOCUMENT_URIS
from soul_mcp.server import sdk_private
from soul_mcp.storage.base import Store

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# Every document has a resource of its own: self://soul, self://intent, self://north-star, ...
SUBSCRIBABLE = tuple(DOCUMENT_URIS.values())


class Subscriber(Protocol):
    """What a handshake-era subscription is kept as: the SDK's Connection, or (should an SDK
    release hide it) the subscribing request's ServerSession, which can still notify."""

    async def send_resource_updated(self, uri: str) -> None: ...


class LiveUpdates:
    """Subscribers of one server and the watcher that tells them about changes."""

    def __init__(self, poll_seconds: float = POLL_SECONDS) -> None:
        self.poll_seconds = poll_seconds
        self.bus = InMemorySubscriptionBus()
        self._subscribers: dict[str, set[Subscriber]] = {uri: set() for uri in SUBSCRIBABLE}
        self._warned_no_connection = False
        self._heads: dict[str, int] | None = None  # latest version per document, as last seen
        self._marker: int | None = None
        self._check_lock: anyio.Lock | None = None
        self._wake: anyio.Event | None = None
        self._watchers = 0  # lifespans running a watcher on this object
        self._failing = False  # the last check failed (its warning is not repeated every poll)

    def install(self, server: MCPServer[Any]) -> None:
        """Serve resources/subscribe and resources/unsubscribe, and poke the watcher after tools.

        Registering the handler is also what makes the server advertise `resources.subscribe` to
        handshake-era clients (2026-era clients are told so because subscriptions/listen is served).
        """
        server.middleware.append(self._after_tool_call)
        lowlevel = sdk_private.lowlevel_server(server)  # MCPServer cannot add a request handler
        if lowlevel is None:
            log.warning(
                "this version of the MCP SDK hides the low-level server soul-mcp adds resources/subscribe "
                "to: clients of the handshake era cannot subscribe to documents (2026-07-28 clients can)"
            )
            return
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    # Handshake-era subscriptions ---------------------------------------------------------------

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        uri = str(params.uri)
        if uri not in self._subscribers:
            raise MCPError(
                INVALID_PARAMS,
                f"cannot subscribe to {uri!r}; subscribable resources are: {', '.join(SUBSCRIBABLE)}",
            )
        subscriber = self._subscriber(ctx)
        exit_stack = getattr(subscriber, "exit_stack", None)
        if exit_stack is not None and not any(subscriber in s for s in self._subscribers.values()):
            # Forget the connection when it closes, whether or not it unsubscribed.
            exit_stack.callback(self._drop, subscriber)
        self._subscribers[uri].add(subscriber)
        return EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        # Unsubscribing from something never subscribed is not an error (the spec asks for none).
        self._subscribers.get(str(params.uri), set()).discard(self._subscriber(ctx))
        return EmptyResult()

    def _subscriber(self, ctx: ServerRequestContext[Any, Any]) -> Subscriber:
        connection = sdk_private.connection(ctx)
        if connection is not None:
            return connection
        if not self._warned_no_connection:
            self._warned_no_connection = True
            log.warning(
                "this version of the MCP SDK hides a request's connection: each subscription is kept "
                "with the request that made it, so unsubscribing and closing cannot end it"
            )
        return ctx.session

    def _drop(self, subscriber: Subscriber) -> None:
        for subscribed in self._subscribers.values():
            subscribed.discard(subscriber)

    # Noticing changes --------------------------------------------------------------------------

    async def _after_tool_call(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        try:
            return await call_next(ctx)
        finally:
            if ctx.method == "tools/call":
                self.poke()

    def poke(self) -> None:
        """Check for changes now rather than at the next poll (cheap when nothing changed)."""
        if self._wake is not None:
            self._wake.set()

    async def check(self, store: Store) -> list[str]:
        """Announce every document whose latest version changed since the last check; returns
        their URIs. The first check only records where things stand."""
        if self._check_lock is None:  # called outside `watching` (no lifespan running)
            self._check_lock = anyio.Lock()
        async with self._check_lock:
            marker = await store.change_marker()
            if marker == self._marker and self._heads is not None:
                return []
            self._marker = marker
            heads = await store.document_heads()
            previous, self._heads = self._heads, heads
        if previous is None:
            return []
        changed = [DOCUMENT_URIS[doc] for doc in DOCUMENT_URIS if heads.get(doc) != previous.get(doc)]
        for uri in changed:
            await self.announce(uri)
        return changed

    async def announce(self, uri: str) -> None:
        """Tell every subscriber of `uri`, in both eras, that it changed."""
        log.debug("announcing a change of %s", uri)
        await self.bus.publish(ResourceUpdated(uri=uri))
        for subscriber in list(self._subscribers.get(uri, ())):
            # Connection.notify never raises: a closed connection drops the message. The bound
            # keeps one client that stopped reading its pipe from stalling everyone else's news.
            with anyio.move_on_after(5):
                await subscriber.send_resource_updated(uri)

    @asynccontextmanager
    async def watching(self, store: Store) -> AsyncIterator[None]:
        """Run the watcher while the body runs (a server's lifespan); it stops with the body.

        The SDK runs one lifespan per in-memory client, so several watchers may share this object
        and its store; they share what was last seen, so each change is still announced once.
        """
        if self._watchers == 0:
            # Events and locks belong to one event loop; a server object may be run again later.
            self._wake, self._check_lock = anyio.Event(), anyio.Lock()
            # A new store connection numbers its data_version afresh: compare documents once more.
            self._marker = None
        self._watchers += 1
        try:
            await self._check_quietly(store)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, store)
                # Optional in the Store interface: True when another writer wrote meanwhile.
                wait_for_change = getattr(store, "wait_for_change", None)
                if wait_for_change is not None:
                    tg.start_soon(self._listen, wait_for_change)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._watchers -= 1

    async def _watch(self, store: Store) -> None:
        while True:
            wake = self._wake or anyio.Event()
            with anyio.move_on_after(self.poll_seconds):
                await wake.wait()
            if wake.is_set() and wake is self._wake:
                self._wake = anyio.Event()  # pokes from now on wake the next round
            await self._check_quietly(store)

    async def _listen(self, wait_for_change: Callable[[float], Awaitable[bool]]) -> None:
        while True:
            try:
                if await wait_for_change(self.poll_seconds):
                    self.poke()
            except Exception as exc:  # the polling goes on; a listener that fails must not spin
                log.debug("waiting for a change signal failed: %s", exc)
                await anyio.sleep(self.poll_seconds)

    async def _check_quietly(self, store: Store) -> None:
        try:
            await self.check(store)
        except Exception as exc:  # a busy or failing database must not take the server down
            # Once per outage at warning level: a database away for a minute would log 120 lines.
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(
                level,
                "could not check the database for changes: %s",
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        else:
            if self._failing:
                log.info("checking the database for changes again")
            self._failing = False
