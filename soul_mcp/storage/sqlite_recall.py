"""SQLiteStore as a `RecallSource` (recall/source.py): what the recall engine reads, from FTS5 and
the memories' tables. Rows and SQL only; the engine does all the ranking.

A word's score part is -bm25() of an FTS5 MATCH of that word alone, with the store's column
weights: bm25 sums over a query's words, so the engine adds the parts up (recall/bm25.py). The
change log is `memory_changes` (schema migration 5), kept by triggers, so writes by other
connections and processes are seen too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soul_mcp.errors import StorageError
from soul_mcp.models import Memory
from soul_mcp.recall.query import SearchQuery
from soul_mcp.recall.source import BlockingReader, EmbeddingRow, MemoryColumns, WordScore
from soul_mcp.storage.schema import memory_id_key
from soul_mcp.storage.sqlite_rows import (
    BY_IMPORTANCE,
    BY_TIME,
    MEMORY_COLUMNS,
    memory_filters,
    memory_from_row,
)

# The tokenizer of memories_fts (schema migration 1).
TOKENIZE = "porter unicode61 remove_diacritics 2"
# bm25 column weights: content, tags, about (kind and date words).
BM25 = "bm25(memories_fts, 1.0, 0.5, 0.5)"
ROWS_PER_QUERY = 800  # rowids per IN (...): SQLite before 3.32 allows 999 variables in all
WORDS_PER_QUERY = 50
MEMORY_COLUMNS_OF_RECALL = "rowid, status = 'active', occurred_at, kind, author, session_id, id"


def _quoted(word: str) -> str:
    """A MATCH of the word as it is: nothing the caller typed is read as FTS5 syntax."""
    return '"' + word.replace('"', '""') + '"'


class Tokens:
    """The tokens FTS5 makes of words, from a tokenizer like the index's in a memory database."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"CREATE VIRTUAL TABLE words USING fts5 (word, tokenize = '{TOKENIZE}')")
        self._db.execute("CREATE VIRTUAL TABLE tokens USING fts5vocab (words, instance)")
        self._known: dict[str, str] = {}

    def keys(self, words: Sequence[str]) -> list[str]:
        """Each word's tokens, joined by spaces ("" when it has none)."""
        if len(self._known) > 100_000:  # before looking: what is asked now is then all todo
            self._known.clear()
        todo = [w for w in dict.fromkeys(words) if w not in self._known]
        if todo:
            self._db.executemany("INSERT INTO words (rowid, word) VALUES (?, ?)", list(enumerate(todo, 1)))
            found: dict[int, list[str]] = {}
            for doc, token in self._db.execute("SELECT doc, term FROM tokens ORDER BY doc, offset"):
                found.setdefault(doc, []).append(token)
            self._db.execute("DELETE FROM words")
            for n, word in enumerate(todo, 1):
                self._known[word] = " ".join(found.get(n, []))
        return [self._known[w] for w in words]


class SQLiteBlockingReader:
    """A read-only connection of its own to the file, for the recall prefill thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(str(exc)) from exc

    def common_words(self, min_memories: int) -> list[str]:
        try:
            return [
                t
                for (t,) in self._db.execute(
                    "SELECT term FROM memories_vocab WHERE doc >= ? ORDER BY doc DESC", (min_memories,)
                )
            ]
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def word_scores(self, word: str) -> list[WordScore]:
        try:
            return self._db.execute(
                f"SELECT memories_fts.rowid, -{BM25} FROM memories_fts WHERE memories_fts MATCH ? "
                "ORDER BY memories_fts.rowid",
                (_quoted(word),),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def close(self) -> None:
        self._db.close()


def snapshot_file(db: Path) -> Path | None:
    """Where the recall index of the database file `db` keeps its snapshot (None: in memory)."""
    return None if str(db) == ":memory:" else Path(f"{db}-recall")


class SQLiteRecall:
    """The RecallSource half of SQLiteStore (mixed into it)."""

    if TYPE_CHECKING:
        path: Path
        read_only: str | None
        _source: str
        _fetchall: Callable[..., Awaitable[list[tuple[Any, ...]]]]

    def tokenizer(self) -> Tokens:
        return Tokens()

    def blocking_reader(self) -> Callable[[], BlockingReader] | None:
        # Not for a file only readable as immutable, which a connection of its own would fail to open.
        if str(self.path) == ":memory:" or "immutable=1" in self._source:
            return None
        path = self.path
        return lambda: SQLiteBlockingReader(path)

    def snapshot_path(self) -> Path | None:
        if self.read_only is not None:
            return None
        return snapshot_file(self.path)

    async def change_seq(self) -> int:
        ((seq,),) = await self._fetchall("SELECT coalesce(max(seq), 0) FROM memory_changes", ())
        return int(seq)

    async def changed_between(self, after: int, upto: int) -> list[int]:
        rows = await self._fetchall(
            "SELECT DISTINCT memory_rowid FROM memory_changes WHERE seq > ? AND seq <= ?", (after, upto)
        )
        return [r for (r,) in rows]

    async def memory_columns(self, rowids: Sequence[int] | None = None) -> list[MemoryColumns]:
        rows: list[Any] = []
        if rowids is None:
            rows += await self._fetchall(f"SELECT {MEMORY_COLUMNS_OF_RECALL} FROM memories", ())
            return rows
        for start in range(0, len(rowids), ROWS_PER_QUERY):
            chunk = list(rowids[start : start + ROWS_PER_QUERY])
            rows += await self._fetchall(
                f"SELECT {MEMORY_COLUMNS_OF_RECALL} FROM memories WHERE rowid IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
        return rows

    async def word_scores(self, words: Sequence[tuple[str, int]]) -> list[list[WordScore]]:
        found: list[list[WordScore]] = []
        for start in range(0, len(words), WORDS_PER_QUERY):
            chunk = words[start : start + WORDS_PER_QUERY]
            # One statement for all the words: each MATCH scores one word, so each score is that
            # word's part.
            select = (
                f"SELECT ?, memories_fts.rowid, -{BM25} FROM memories_fts "
                "WHERE memories_fts MATCH ? AND memories_fts.rowid > ?"
            )
            params: list[Any] = []
            for i, (word, above) in enumerate(chunk):
                params += [i, _quoted(word), above]
            each: list[list[WordScore]] = [[] for _ in chunk]
            for i, rowid, score in await self._fetchall(" UNION ALL ".join([select] * len(chunk)), params):
                each[i].append((rowid, score))
            found += each
        return found

    async def tagged_rowids(self, tag: str, above: int, upto: int) -> list[int]:
        rows = await self._fetchall(
            "SELECT memory_rowid FROM memory_tags WHERE tag = ? AND memory_rowid > ? "
            "AND memory_rowid <= ? ORDER BY memory_rowid",
            (tag, above, upto),
        )
        return [r for (r,) in rows]

    async def rowids_of(self, memory_ids: Sequence[str]) -> list[int]:
        rows = await self._fetchall(
            f"SELECT rowid FROM memories WHERE id_key IN ({', '.join('?' * len(memory_ids))}) ORDER BY rowid",
            [memory_id_key(i) for i in memory_ids],
        )
        return [r for (r,) in rows]

    async def memories_at(self, rowids: Sequence[int]) -> dict[int, Memory]:
        rows = await self._fetchall(
            f"SELECT m.rowid, {MEMORY_COLUMNS} FROM memories m WHERE m.rowid IN ({', '.join('?' * len(rowids))})",
            list(rowids),
        )
        return {row[0]: memory_from_row(row[1:]) for row in rows}

    async def ordered_memories(self, query: SearchQuery) -> list[Memory]:
        where, params = memory_filters(
            ("active",), query.kind, query.tags, query.since, query.until, query.exclude_ids
        )
        order = BY_IMPORTANCE if query.order == "importance" else BY_TIME
        rows = await self._fetchall(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {' AND '.join(where)} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return [memory_from_row(row) for row in rows]

    async def embedding_count(self, model: str) -> int:
        ((count,),) = await self._fetchall("SELECT count(*) FROM memory_embeddings WHERE model = ?", [model])
        return int(count)

    async def embeddings_after(self, model: str, after_id: int, limit: int) -> list[EmbeddingRow]:
        rows: list[Any] = await self._fetchall(
            "SELECT id, memory_rowid, dims, vector FROM memory_embeddings WHERE model = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            [model, after_id, limit],
        )
        return rows

    async def embedding_ids(self, model: str, rowids: Sequence[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        for start in range(0, len(rowids), ROWS_PER_QUERY):
            chunk = list(rowids[start : start + ROWS_PER_QUERY])
            found.update(
                await self._fetchall(
                    "SELECT memory_rowid, id FROM memory_embeddings WHERE model = ? "
                    f"AND memory_rowid IN ({', '.join('?' * len(chunk))})",
                    [model, *chunk],
                )
            )
        return found
