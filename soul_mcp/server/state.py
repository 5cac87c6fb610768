"""One open AgentSelf per server, shared by every session that the server is serving.

The SDK runs the lifespan once per stdio process, once per HTTP app, and once per in-memory client;
static resources get no Context at all. So the self is opened on first use, counted, and closed when
the last user leaves, and everything (tools, resources, prompts) reaches it through this holder.

A database that cannot be opened (damaged, unreadable, too new) does not stop the server: the
holder keeps the reason, every call that needs the self answers with it, and the next such call
tries again once the file has changed (or a few seconds later), so a repaired file is picked up.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.errors import SoulError, StorageError

log = logging.getLogger(__name__)

# A failed open is tried again at the next call after this long, even when the file looks the
# same (a full disk freed, a permission fixed on a parent folder).
RETRY_SECONDS = 5.0


@dataclass
class Session:
    """What a tool knows about the connection it serves."""

    holder: SelfHolder
    # Per lifespan: one stdio process or one in-process client, which is one MCP session. An HTTP
    # server has one lifespan for all its sessions; server/access.py derives theirs per request.
    session_id: str
    soul_policy: str = "open"

    @property
    def agent_self(self) -> AgentSelf:
        """The open self; StorageError saying why when the database could not be opened."""
        return self.holder.current()


class SelfHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._self: AgentSelf | None = None
        self._users = 0
        self._lock = anyio.Lock()
        self._failure: StorageError | None = None
        self._failed_on: tuple[object, float] | None = None  # the file's look and the time then
        # Set once the self is open (per run of the server: events belong to one event loop).
        self.opened: anyio.Event | None = None

    def current(self) -> AgentSelf:
        if self._self is None:
            if self._failure is not None:
                raise StorageError(str(self._failure))
            raise StorageError("the server is not connected to its database yet; try again in a moment")
        return self._self

    async def ready(self) -> AgentSelf:
        """The open self, opening it again first if the last attempt failed and may now succeed."""
        if self._self is None and self._failure is not None and self._retry_due():
            async with self._lock:
                if self._self is None and self._users > 0 and self._retry_due():
                    await self._open()
        return self.current()

    def _file_look(self) -> object:
        path = Path(self.settings.db_path).expanduser()
        looks: list[object] = []
        for part in (path, path.parent):
            try:
                st = part.stat()
                looks.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid))
            except OSError as exc:
                looks.append(exc.errno)
        return tuple(looks)

    def _retry_due(self) -> bool:
        if self._failed_on is None:
            return True
        look, when = self._failed_on
        return look != self._file_look() or time.monotonic() - when >= RETRY_SECONDS

    async def _open(self) -> None:
        try:
            self._self = await AgentSelf.open(self.settings)
        except Exception as exc:
            if isinstance(exc, SoulError):
                log.error("%s", exc)
                failure = StorageError(str(exc))
            else:
                log.exception("opening the database failed")
                failure = StorageError(
                    f"the server could not open its database ({type(exc).__name__}); the server log has details"
                )
            self._failure, self._failed_on = failure, (self._file_look(), time.monotonic())
            return
        self._failure = self._failed_on = None
        # numpy and the recall index's snapshot, read in a thread meanwhile: the first recall is fast.
        self._self.recall_engine.preload()
        if self._self.semantic is not None:
            # A server embeds memories in the background (started by the first remember or
            # recall, never at start-up: initialize and tools/list stay fast).
            self._self.semantic.start_background()
        if self.opened is not None:
            self.opened.set()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self._lock:
            if self._users == 0:
                self.opened = anyio.Event()
            if self._self is None:
                await self._open()
            self._users += 1
        try:
            yield Session(
                holder=self, session_id=uuid.uuid4().hex[:16], soul_policy=self.settings.soul_policy
            )
        finally:
            async with self._lock:
                self._users -= 1
                if self._users == 0:
                    if self._self is not None:
                        await self._self.close()
                    self._self = self._failure = self._failed_on = self.opened = None
