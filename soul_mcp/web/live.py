"""Live updates for open pages: server-sent events at /ui/events.

The same signals as server/live.py's watcher: the store's change marker, polled every
POLL_SECONDS (and at once after a change made through the page), then the latest version of each
document and the memories' counts by status, compared with the last seen. A store that hears other
servers' writes (PostgreSQL's `wait_for_change`) wakes it at once. Each change becomes one event,
`{"what": "document"|"memory", "name": ..., "id": ...}`, for every open page.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

if TYPE_CHECKING:
    from soul_mcp.core import AgentSelf

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
BUFFER = 64  # events a slow page may fall behind by before it misses some


def memory_change(before: tuple[int, int, int], after: tuple[int, int, int]) -> str | None:
    """What happened to the memories, from their counts (active, forgotten, superseded)."""
    active, forgotten, superseded = (b - a for a, b in zip(before, after, strict=True))
    if superseded > 0:
        return "revised"
    if forgotten > 0:
        return "forgotten"
    if forgotten < 0:
        return "restored" if active > 0 else "purged"
    if active > 0:
        return "remembered"
    return None if (active, forgotten, superseded) == (0, 0, 0) else "changed"


class Changes:
    """The watcher and the pages listening to it."""

    def __init__(self, poll_seconds: float = POLL_SECONDS) -> None:
        self.poll_seconds = poll_seconds
        self._listeners: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self._wake: anyio.Event | None = None  # made in `watch`: events belong to an event loop

    def poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def publish(self, event: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener.send_nowait(event)
            except anyio.WouldBlock:
                pass  # that page stopped reading; it misses this one
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._listeners.discard(listener)

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[MemoryObjectReceiveStream[dict[str, Any]]]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](BUFFER)
        self._listeners.add(send)
        try:
            yield receive
        finally:
            self._listeners.discard(send)
            send.close()
            receive.close()

    async def watch(self, agent_self: AgentSelf) -> None:
        """Runs until cancelled (the page's lifespan)."""
        store = agent_self.store
        marker: int | None = None
        heads: dict[str, int] | None = None
        counts: tuple[int, int, int] | None = None
        async with anyio.create_task_group() as tg:
            wait_for_change = getattr(store, "wait_for_change", None)
            if wait_for_change is not None:
                tg.start_soon(self._listen, wait_for_change)
            while True:
                self._wake = wake = anyio.Event()
                with anyio.move_on_after(self.poll_seconds):
                    await wake.wait()
                try:
                    now = await store.change_marker()
                    if now == marker:
                        continue
                    marker = now
                    new_heads = await store.document_heads()
                    stats = await store.stats()
                except Exception as exc:  # a busy or failing database must not end the page
                    log.debug("could not check the database for changes: %s", exc)
                    continue
                new_counts = (stats.memories_active, stats.memories_forgotten, stats.memories_superseded)
                if heads is not None and counts is not None:
                    for name, version in new_heads.items():
                        if heads.get(name) != version:
                            self.publish({"what": "document", "name": name, "id": version})
                    change = memory_change(counts, new_counts)
                    if change is not None:
                        self.publish(
                            {"what": "memory", "name": change, "id": await self._newest(agent_self, change)}
                        )
                heads, counts = new_heads, new_counts

    async def _listen(self, wait_for_change: Any) -> None:
        while True:
            try:
                if await wait_for_change(self.poll_seconds):
                    self.poke()
            except Exception as exc:  # the polling goes on
                log.debug("waiting for a change signal failed: %s", exc)
                await anyio.sleep(self.poll_seconds)

    @staticmethod
    async def _newest(agent_self: AgentSelf, change: str) -> str | None:
        """The memory just stored, for a memory that was stored (newest first by time)."""
        if change not in ("remembered", "revised"):
            return None
        try:
            page = await agent_self.list_memories(limit=1)
        except Exception:
            return None
        return page.memories[0].id if page.memories else None


async def event_stream(changes: Changes, stopping: anyio.Event) -> AsyncIterator[str]:
    """The text of /ui/events until the page goes away or the server stops."""
    async with changes.listen() as receive:
        yield "retry: 2000\n\n"  # listening already: nothing after this line is missed
        quiet = 0.0
        while not stopping.is_set():
            with anyio.move_on_after(1) as waited:
                event = await receive.receive()
            if waited.cancelled_caught:
                quiet += 1
                if quiet >= KEEP_ALIVE_SECONDS:  # finds a page that is gone, keeps proxies from closing
                    quiet = 0
                    yield ": keep-alive\n\n"
                continue
            quiet = 0
            yield f"event: change\ndata: {json.dumps(event)}\n\n"
