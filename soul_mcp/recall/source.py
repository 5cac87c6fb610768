"""What the recall engine needs from a store: `RecallSource`.

The engine ranks; a store only hands it data: the memories' columns by rowid, the log of changed
memories, each word's per-memory score parts, tags, pages of memories and embeddings. A store
implements this from its own tables (SQLiteStore from FTS5: storage/sqlite_recall.py), and every
store then ranks identically.

Rowids are a store's positive integer keys of memories: they only grow, except that a purged
memory's rowid may be given to a new memory (the change log says so). Everything here is plain
tuples, lists and dicts; the engine builds its numpy arrays from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from soul_mcp.models import Memory
from soul_mcp.recall.query import SearchQuery

# (rowid, 1 when active else 0, occurred_at, kind, author, session_id, memory id)
MemoryColumns = tuple[int, int, str, str, str, str | None, str]
# (rowid, score part): the part of a memory's score that one word gives; higher is better.
WordScore = tuple[int, float]
# (embedding id, memory rowid, dims, vector as little-endian float32 bytes)
EmbeddingRow = tuple[int, int, int, bytes]


class Tokenizer(Protocol):
    def keys(self, words: Sequence[str]) -> list[str]:
        """Each word's tokens as the store's full-text index makes them, joined by spaces ("" when
        it has none): "meetings" and "meeting" are both "meet"."""
        ...


class BlockingReader(Protocol):
    """A reader of its own for one thread (the prefill), with blocking calls. Raises StorageError."""

    def common_words(self, min_memories: int) -> list[str]:
        """The index's tokens held by at least `min_memories` memories, the commonest first."""
        ...

    def word_scores(self, word: str) -> list[WordScore]:
        """Every memory holding the token `word`, with its part, by rowid (as `word_scores`)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RecallSource(Protocol):
    def tokenizer(self) -> Tokenizer:
        """A new tokenizer (one per thread that uses one)."""
        ...

    def blocking_reader(self) -> Callable[[], BlockingReader] | None:
        """Opens a reader for another thread; None when no other connection can read this store
        (in memory, or a file only readable as it is)."""
        ...

    def snapshot_path(self) -> Path | None:
        """Where the recall index may keep its snapshot (recall/snapshot.py), beside the data; None
        when it should keep none (in memory, or a store this process cannot write)."""
        ...

    async def change_seq(self) -> int:
        """The last sequence number of the change log (0 when empty): one cheap lookup."""
        ...

    async def changed_between(self, after: int, upto: int) -> list[int]:
        """The rowids of memories stored, changed or deleted with a sequence number in (after, upto]."""
        ...

    async def memory_columns(self, rowids: Sequence[int] | None = None) -> list[MemoryColumns]:
        """The columns of the memories at `rowids` that still exist, or of every memory (None)."""
        ...

    async def word_scores(self, words: Sequence[tuple[str, int]]) -> list[list[WordScore]]:
        """For each (word, above): the active memories with a rowid above `above` that hold the
        word, and its part of their score: what the store's full-text ranking gives the memory for
        that word alone (FTS5: -bm25 of a MATCH of the word). In any order."""
        ...

    # A source may also offer `word_parts`, taking and returning what `word_scores` does but with
    # each score divided by the word's idf (what the engine keeps), and its BlockingReader the same
    # for one word. The engine then uses it: a store that computes BM25 itself (PostgreSQL) need not
    # count every memory holding a word to fetch the few stored since (the idf needs that count).
    # Its BlockingReader may also offer `common_parts(min_memories)`: (word, rowids, parts) of every
    # word common_words names, in its order, rowids ascending, from one pass (recall/prefill.py).

    async def tagged_rowids(self, tag: str, above: int, upto: int) -> list[int]:
        """The rowids in (above, upto] of the memories carrying `tag`, ascending."""
        ...

    async def rowids_of(self, memory_ids: Sequence[str]) -> list[int]:
        """The rowids of the memories with these ids, ascending (unknown ids left out)."""
        ...

    async def memories_at(self, rowids: Sequence[int]) -> dict[int, Memory]:
        """{rowid: memory} for those of `rowids` that still exist."""
        ...

    async def ordered_memories(self, query: SearchQuery) -> list[Memory]:
        """A page of the active memories passing the query's filters, by its order (no text)."""
        ...

    async def embedding_count(self, model: str) -> int:
        """How many embeddings by `model` there are."""
        ...

    async def embeddings_after(self, model: str, after_id: int, limit: int) -> list[EmbeddingRow]:
        """Up to `limit` embeddings by `model` with an id above `after_id`, by id. Ids only grow: an
        embedding made again gets a new id."""
        ...

    async def embedding_ids(self, model: str, rowids: Sequence[int]) -> dict[int, int]:
        """{memory rowid: embedding id} of these memories' embeddings by `model`, where there is one."""
        ...
