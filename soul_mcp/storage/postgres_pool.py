"""The pool's check of a connection before it is handed out, without a round trip when it can.

Checking every checkout (psycopg_pool's `check_connection`) costs an empty query before each
statement, and a recall runs three or four statements. A connection the database closed (a
restart, an idle timeout, an administrator) has the end of the stream, or the server's goodbye,
waiting on its socket: one look at the socket, no round trip, finds it, and then the full check
runs (and the pool replaces the connection). The full check also runs for a connection not handed
out for IDLE_CHECK_S (a link cut without a reset sends nothing to look at), and for every
connection once a call has found the database away, until one gets through.
"""

from __future__ import annotations

import select
import time
import weakref
from collections.abc import Callable
from typing import Any

# A connection not handed out for longer than this gets the full check before its next use.
IDLE_CHECK_S = 2.0


def has_input(conn: Any) -> bool:
    """Whether the server sent something to a connection that was not asked anything: the end of
    the stream, or a message such as "terminating connection". True when it has no socket."""
    try:
        fd = conn.pgconn.socket
    except Exception:  # closed: psycopg raises OperationalError
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class IdleCheck:
    """An AsyncConnectionPool's `check`; `doubt()` true: check every connection in full.

    The time kept is when a connection was last handed out, not when it came back: the pool calls
    a `reset` callback on a worker task, a hop that would cost more than the check saves. A
    connection handed out less than `idle_s` ago has been idle for less than that."""

    def __init__(self, idle_s: float = IDLE_CHECK_S) -> None:
        self.idle_s = idle_s
        self.doubt: Callable[[], bool] = lambda: False
        self._handed_out: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self.checked = 0  # full checks made (for tests)

    async def check(self, conn: Any) -> None:
        """Called by the pool before it hands `conn` out; raises when `conn` does not work."""
        from psycopg_pool import AsyncConnectionPool

        now = time.monotonic()
        last = self._handed_out.get(conn)
        self._handed_out[conn] = now
        if last is None or now - last > self.idle_s or self.doubt() or has_input(conn):
            self.checked += 1
            await AsyncConnectionPool.check_connection(conn)
