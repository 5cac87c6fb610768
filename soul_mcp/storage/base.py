"""The interface every storage backend implements.

It is deliberately narrow: the domain (`soul_mcp.core`) validates and normalises everything before
it reaches a store, and a store only keeps, finds and changes records atomically. What recall ranks
it hands to the recall engine (soul_mcp.recall) as a `RecallSource`; it ranks nothing itself. A
PostgreSQL store would implement the same methods; the tools and the CLI would not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from soul_mcp.models import (
    Backup,
    ClientActivity,
    DocumentVersion,
    Memory,
    NewMemory,
    Stats,
    StoreDiagnosis,
    TokenInfo,
)
from soul_mcp.recall.source import RecallSource


class Store(RecallSource, Protocol):
    """Records kept atomically; and, as a RecallSource, what the recall engine ranks from."""

    # Why this process can only read (e.g. "the folder /x is not writable"); None when it can write.
    read_only: str | None

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
        self,
        memory_id: str,
        status: str,
        reason: str | None,
        changed_at: str,
        expect: tuple[str, ...],
        by: str | None = None,
    ) -> Memory:
        """Move a memory to `status` if it is in one of `expect`, recording who did (`by`); raises
        NotFound / InvalidInput."""
        ...

    async def revise_memory(
        self, memory_id: str, new: NewMemory, reason: str, created_at: str
    ) -> tuple[Memory, Memory]:
        """Atomically store `new` as superseding `memory_id`; returns (old, new)."""
        ...

    async def purge_memory(self, memory_id: str) -> None:
        """Delete a forgotten memory for good; raises unless it is forgotten."""
        ...

    # Sessions and counts.
    async def record_session(self, session_id: str, client: str, started_at: str) -> None: ...

    async def stats(self) -> Stats: ...

    # Change detection (live updates) and backup.
    async def change_marker(self) -> int:
        """A number that changes whenever anyone commits to the store (this process or another).
        Cheap: polled about twice a second by every server."""
        ...

    async def document_heads(self) -> dict[str, int]:
        """The latest version number of each document that has at least one version."""
        ...

    async def backup(self, target: Path) -> Backup:
        """Write a consistent copy of the whole store to `target` while others may be writing,
        check the copy and describe it. `target` must not be the store itself."""
        ...

    async def client_activity(self) -> list[ClientActivity]:
        """Per client (session client name or author): sessions, memories, versions, last times."""
        ...

    # Listing and checking, for people running the store (the CLI).
    async def list_memories(
        self,
        statuses: tuple[str, ...],
        kind: str | None,
        tags: tuple[str, ...],
        since: str | None,
        until: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[Memory], int]:
        """Memories in any of `statuses` matching the filters, newest first; and how many match."""
        ...

    async def diagnose(self) -> StoreDiagnosis:
        """Check the database and its full-text index; read-only, may be slow on big files."""
        ...

    async def check_intact(self) -> None:
        """Raise StorageError, saying what is damaged, unless the database passes its own check."""
        ...

    # Bearer tokens for the HTTP server: only a hash of each token is stored.
    async def add_token(
        self, name: str, token_hash: str, scopes: tuple[str, ...], created_at: str
    ) -> TokenInfo:
        """Store a new token; raises InvalidInput when the name is taken (revoked names stay taken)."""
        ...

    async def list_tokens(self) -> list[TokenInfo]:
        """Every token, revoked ones too, oldest first."""
        ...

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        """The token with this hash, revoked or not; None when there is none."""
        ...

    async def revoke_token(self, name: str, revoked_at: str) -> TokenInfo:
        """Revoke a token by name (again is a no-op); raises NotFound for an unknown name."""
        ...

    async def touch_token(self, name: str, used_at: str) -> None:
        """Record that the token was just used."""
        ...


@dataclass(frozen=True)
class EmbeddingJob:
    """A memory to embed: the text to embed (the memory with its context) and that text's hash."""

    memory_id: str
    text: str
    text_hash: str
    position: int = 0  # where the memory stands in the store's order (for paging through them all)


@runtime_checkable
class EmbeddingStore(Protocol):
    """What a store offers when it can keep embeddings beside the memories (SQLiteStore does).

    Apart from `Store` so that the core interface stays narrow: a store without it still recalls
    through BM25 alone. The store decides which text stands for a memory (`EmbeddingJob.text`);
    the domain embeds it and hands the vectors back.
    """

    async def close(self) -> None: ...

    async def pending_embeddings(
        self, model: str, limit: int, above: int = 0
    ) -> tuple[list[EmbeddingJob], int]:
        """Up to `limit` active memories with no embedding by `model` whose position is above
        `above`, newest first; and the newest position there is, seen at the same moment."""
        ...

    async def stale_embeddings(
        self, model: str, after: int, limit: int
    ) -> tuple[list[EmbeddingJob], int | None]:
        """Walking all active memories in order from position `after`: those whose embedding is
        missing or was made from another text. Returns them and the position to continue from
        (None at the end)."""
        ...

    async def save_embeddings(self, model: str, jobs: list[EmbeddingJob], vectors: Any) -> int:
        """Store one vector (row of `vectors`) per job, unless its memory left recall or its text
        changed meanwhile; returns how many were stored."""
        ...

    async def embedding_counts(self, model: str) -> tuple[int, int]:
        """(active memories with an embedding by `model`, active memories)."""
        ...

    async def rebuild_text_index(self) -> int:
        """Rebuild the full-text index from the memories; returns how many it holds."""
        ...
