"""The interface every storage backend implements.

It is deliberately narrow: the domain (`soul_mcp.core`) validates and normalises everything before
it reaches a store, and a store only keeps, finds and changes records atomically. A PostgreSQL
store would implement the same methods; the tools and the CLI would not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from soul_mcp.models import DocumentVersion, Memory, NewMemory, Stats

# A text search ranks at most this many matches (plus their context neighbours); pages end there.
RANKED_MAX = 500


@dataclass(frozen=True)
class SearchQuery:
    """What recall asks a store for. `terms` empty means: list by `order` without text matching."""

    terms: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # a memory must carry every one of them
    kind: str | None = None
    since: str | None = None  # inclusive, UTC ISO string comparable as text
    until: str | None = None  # exclusive
    order: Literal["relevance", "recent", "importance"] = "relevance"
    offset: int = 0
    limit: int = 10
    exclude_ids: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class SearchHit:
    memory: Memory
    score: float  # higher is better; 0 when listing by time
    context_of: str | None = None  # set when it is here as the neighbour of a memory that matched


class Store(Protocol):
    async def close(self) -> None: ...

    # Documents: append-only versions.
    async def append_version(
        self,
        document: str,
        content: str,
        author: str,
        reason: str | None,
        created_at: str,
        session_id: str | None,
        restored_from: int | None = None,
    ) -> DocumentVersion: ...

    async def get_version(self, document: str, version: int | None = None) -> DocumentVersion | None:
        """The given version, or the latest when version is None; None when there is none."""
        ...

    async def list_versions(self, document: str, limit: int, before: int | None) -> list[DocumentVersion]:
        """Newest first, only versions below `before` when given."""
        ...

    # Memories.
    async def add_memory(self, new: NewMemory, created_at: str) -> tuple[Memory, bool]:
        """Store a memory unless an active one has the same content_key; returns (memory, is_new)."""
        ...

    async def get_memory(self, memory_id: str) -> Memory | None: ...

    async def set_memory_status(
        self, memory_id: str, status: str, reason: str | None, changed_at: str, expect: tuple[str, ...]
    ) -> Memory:
        """Move a memory to `status` if it is in one of `expect`; raises NotFound / InvalidInput."""
        ...

    async def revise_memory(
        self, memory_id: str, new: NewMemory, reason: str, created_at: str
    ) -> tuple[Memory, Memory]:
        """Atomically store `new` as superseding `memory_id`; returns (old, new)."""
        ...

    async def purge_memory(self, memory_id: str) -> None:
        """Delete a forgotten memory for good; raises unless it is forgotten."""
        ...

    async def search(self, query: SearchQuery) -> list[SearchHit]:
        """Active memories matching the query, best first."""
        ...

    # Sessions and counts.
    async def record_session(self, session_id: str, client: str, started_at: str) -> None: ...

    async def stats(self) -> Stats: ...
