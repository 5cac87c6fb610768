"""One open AgentSelf per server, shared by every session that the server is serving.

The SDK runs the lifespan once per stdio process, once per HTTP app, and once per in-memory client;
static resources get no Context at all. So the self is opened on first use, counted, and closed when
the last user leaves, and everything (tools, resources, prompts) reaches it through this holder.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.errors import StorageError


@dataclass
class Session:
    """What a tool knows about the connection it serves."""

    agent_self: AgentSelf
    # Per lifespan: one stdio process or one in-process client, which is one MCP session. An HTTP
    # server has one lifespan for all its sessions; server/access.py derives theirs per request.
    session_id: str
    soul_policy: str = "open"


class SelfHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._self: AgentSelf | None = None
        self._users = 0
        self._lock = anyio.Lock()

    def current(self) -> AgentSelf:
        if self._self is None:
            raise StorageError("the server is not connected to its database yet; try again in a moment")
        return self._self

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self._lock:
            if self._self is None:
                self._self = await AgentSelf.open(self.settings)
                if self._self.semantic is not None:
                    # A server embeds memories in the background (started by the first remember
                    # or recall, never at start-up: initialize and tools/list stay fast).
                    self._self.semantic.start_background()
            self._users += 1
        try:
            yield Session(
                agent_self=self._self,
                session_id=uuid.uuid4().hex[:16],
                soul_policy=self.settings.soul_policy,
            )
        finally:
            async with self._lock:
                self._users -= 1
                if self._users == 0 and self._self is not None:
                    await self._self.close()
                    self._self = None
