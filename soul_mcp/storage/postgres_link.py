"""A link to PostgreSQL that went silent: noticed while a call waits on it, and cut.

tcp_user_timeout and keepalives (postgres.DEAD_LINK) find a link whose far end stopped answering,
but not one where something on the way (a proxy, a NAT, a firewall) still acknowledges every byte
and passes none: a call would wait on it forever. Time alone cannot tell such a link from a long
statement or a big transaction (`migrate` writes a whole self in one), so a call that has waited
LOOK_AFTER_S is looked at from a new connection: if the database says the call's backend is
working, or has been waiting on us for less than LOOK_AFTER_S, it goes on and is looked at again
later; if the backend sits idle while libpq waits for its answer, is gone, or the database cannot
be reached, the link is dead and its socket is shut. libpq then reads an end of stream, and the call
fails as in any outage. A block that is busy on this side (tokenizing between statements) is left
alone: libpq is not waiting then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

LOOK_AFTER_S = 6.0  # a call waiting this long is looked at (then again every LOOK_AFTER_S)
LOOK_TIMEOUT_S = 3  # for the look's own connection and question (libpq's connect_timeout is whole seconds)

# The backend's state, and how long it has been in it (pg_stat_activity shows a role its own backends).
BACKEND_STATE = (
    "SELECT state, extract(epoch FROM clock_timestamp() - state_change) FROM pg_stat_activity WHERE pid = %s"
)


class LinkWatch:
    """Watches the calls made on connections to the database at `conninfo`."""

    def __init__(self, conninfo: str, options: dict[str, Any] | None = None) -> None:
        self.conninfo = conninfo
        self.options = options or {}

    @contextlib.contextmanager
    def watching(self, conn: Any, after_s: float | None = None) -> Iterator[None]:
        """Look at `conn`'s backend whenever the block has run `after_s` more (LOOK_AFTER_S)."""
        after_s = LOOK_AFTER_S if after_s is None else after_s
        loop = asyncio.get_running_loop()
        pending: dict[str, Any] = {}

        def look() -> None:
            pending["task"] = loop.create_task(self._look(conn, after_s, arm))

        def arm() -> None:
            pending["timer"] = loop.call_later(after_s, look)

        arm()
        try:
            yield
        finally:
            pending["timer"].cancel()
            if "task" in pending:
                pending["task"].cancel()

    async def _look(self, conn: Any, after_s: float, again: Any) -> None:
        from psycopg import pq

        if conn.pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
            again()  # no statement in flight: the time went on this side
            return
        try:
            pid = conn.info.backend_pid
            state, idle_s = await asyncio.wait_for(self._backend_state(pid), LOOK_TIMEOUT_S + 1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database cannot be reached, or the backend is gone
            log.warning("a call waited %g s and the database could not say why (%s): cutting its link",
                        after_s, type(exc).__name__)  # fmt: skip
            shut(conn)
            return
        if state == "active" or (idle_s is not None and float(idle_s) < after_s):
            again()  # a long statement, or a transaction still being sent: not a dead link
            return
        log.warning("a call waited %g s on a backend idle for %.0f s: taking its link for dead, cutting it",
                    after_s, float(idle_s or 0))  # fmt: skip
        shut(conn)

    async def _backend_state(self, pid: int) -> tuple[str | None, float | None]:
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=LOOK_TIMEOUT_S, **self.options
        ) as probe:
            cursor = await probe.execute(BACKEND_STATE, (pid,))
            row = await cursor.fetchone()
        if row is None:
            raise LookupError("the backend is gone")
        return row[0], row[1]


def shut(conn: Any) -> None:
    """Shut `conn`'s socket (not close it: psycopg is waiting on it, and must see the end)."""
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)  # (the suppress: a connection closed already has no socket)
