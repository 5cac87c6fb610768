"""The other servers' writes, heard: one connection that LISTENs for the "changed" ping.

Every transaction that makes a document version or changes a memory sends an empty NOTIFY on
CHANGE_CHANNEL at commit (a trigger, postgres_schema.py migration 2). The ping says only "look":
the watcher (server/live.py) then reads what changed from the tables, as it does when it polls, so
a ping lost while this connection was down costs at most one poll interval.

The connection is opened on the first wait, not when the store opens (the CLI never waits), and is
its own, outside the pool: a LISTEN holds its connection for as long as it listens. When the
database drops it, it is opened again with a growing pause (up to MAX_BACKOFF_S); each new
connection counts as a change, since pings sent meanwhile were lost. A drop is also the first sign
of an outage, usually before any call notices: the store is told (`on_lost`), so that calls stop
waiting the full connect timeout for the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from soul_mcp.storage.postgres_schema import CHANGE_CHANNEL

if TYPE_CHECKING:
    import psycopg

    from soul_mcp.storage.postgres_link import LinkWatch

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
# Every this many seconds the listener asks the database a question: a link that went silent while
# something on the way still acknowledges (so that keepalives pass) is noticed and made again.
PROBE_S = 30.0


class ChangeListener:
    """Waits for CHANGE_CHANNEL pings on a connection of its own, reconnecting by itself."""

    def __init__(
        self,
        conninfo: str,
        shown: str,
        connect_timeout: float,
        links: LinkWatch,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._links = links  # a probe on a link gone silent is cut (postgres_link.py)
        self._on_lost = on_lost  # told at once when the connection drops (a restart, a network cut)
        self._shown = shown
        self._connect_timeout = connect_timeout
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.connected = False  # listening now
        self.connections = 0  # connections made so far, reconnections included

    async def wait(self, timeout: float) -> bool:
        """True when a ping came (or the listener reconnected) within `timeout` seconds, or had
        come since the last wait; False when the time ran out first."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="soul-mcp LISTEN")
        if not self._changed.is_set():
            with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
                await asyncio.wait_for(self._changed.wait(), timeout)
        pinged = self._changed.is_set()
        self._changed.clear()
        return pinged

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop()

    async def _listen(self) -> None:
        import psycopg

        backoff = FIRST_BACKOFF_S
        warned = False
        while True:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=int(self._connect_timeout),
                    # It only reads: without keepalives a link cut without a reset would leave it
                    # waiting forever (the polling would still see every change, a poll late).
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
                await self._conn.execute(f"LISTEN {CHANGE_CHANNEL}")
                self.connections += 1
                if self.connections > 1:
                    log.info("listening for changes on %s again", self._shown)
                self.connected, backoff, warned = True, FIRST_BACKOFF_S, False
                self._changed.set()  # whatever was sent while nobody listened
                while True:
                    async for _ in self._conn.notifies(timeout=PROBE_S):
                        self._changed.set()
                    with self._links.watching(self._conn, self._connect_timeout):
                        await self._conn.execute("SELECT 1")
            except Exception as exc:  # a lost or refused connection; anything else is retried too
                # Once per outage at warning level; the retries that follow at debug.
                level = logging.DEBUG if warned else logging.WARNING
                warned = True
                log.log(level, "not listening for changes on %s (%s); trying again", self._shown,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)  # fmt: skip
            if self.connected and self._on_lost is not None:
                self._on_lost()
            self.connected = False
            await self._drop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
