"""Embeddings in SQLite: SQLiteStore as an `EmbeddingStore` (storage/base.py).

Optional: without an embedder the table stays empty and recall never reads it. The vectors' search
and their fusion with BM25 are the recall engine's (recall/vectors.py, recall/hybrid.py).

What is embedded. A memory alone is often too short to carry its meaning ("Yes, last spring!"), so
the text embedded for a memory is its previous memory followed by it, when the previous one is active
and was stored in the same context (same author, session and day: the notion of context recall's
neighbour lending uses). On LoCoMo a turn alone gives weak dense recall, with its previous turn much
better (bench/README.md). The neighbour is clipped to its last NEIGHBOUR_CHARS characters so that a
long neighbour does not drown a short memory. When a memory leaves recall or comes back, a trigger
(schema migration 3) drops its neighbours' embeddings, which are then computed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from soul_mcp.storage.base import EmbeddingJob

if TYPE_CHECKING:
    import aiosqlite

NEIGHBOUR_CHARS = 500


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def window_text(previous: str | None, content: str) -> str:
    if not previous:
        return content
    if len(previous) > NEIGHBOUR_CHARS:
        previous = "…" + previous[-NEIGHBOUR_CHARS:]
    return previous + "\n" + content


# The memory rows `windows_of` reads: (rowid, id, content, status, author, session_id, day).
WINDOW_COLUMNS = "rowid, id, content, status, author, session_id, substr(occurred_at, 1, 10)"


def windows_of(rows: dict[int, tuple[Any, ...]], rowids: list[int]) -> dict[int, tuple[str, str]]:
    """{rowid: (memory id, text to embed)} for those of `rowids` that are active, from `rows`
    (WINDOW_COLUMNS by rowid, each memory's previous one included): the previous memory's text
    joins when it is active and of the same author, session and day."""
    out: dict[int, tuple[str, str]] = {}
    for rowid in rowids:
        memory = rows.get(rowid)
        if memory is None or memory[3] != "active":
            continue
        before = rows.get(rowid - 1)
        same_context = before is not None and before[3] == "active" and before[4:] == memory[4:]
        previous = before[2] if before is not None and same_context else None
        out[rowid] = (memory[1], window_text(previous, memory[2]))
    return out


def embedding_jobs(windows: dict[int, tuple[str, str]], order: list[int]) -> list[EmbeddingJob]:
    """The jobs of `windows`, in `order`."""
    return [
        EmbeddingJob(
            memory_id=windows[r][0], text=windows[r][1], text_hash=text_hash(windows[r][1]), position=r
        )
        for r in order
        if r in windows
    ]


class SQLiteEmbeddings:
    """The EmbeddingStore half of SQLiteStore (mixed into it)."""

    if TYPE_CHECKING:
        _fetchall: Callable[..., Awaitable[list[tuple[Any, ...]]]]
        _transaction: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]

    @staticmethod
    async def _windows(
        fetch: Callable[[str, Any], Awaitable[list[tuple[Any, ...]]]], rowids: list[int]
    ) -> dict[int, tuple[str, str]]:
        """{rowid: (memory id, text to embed)} for those of `rowids` that are active."""
        wanted = sorted({r + step for r in rowids for step in (-1, 0)})
        rows: dict[int, tuple[Any, ...]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for row in await fetch(
                f"SELECT {WINDOW_COLUMNS} FROM memories WHERE rowid IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                rows[row[0]] = row
        return windows_of(rows, rowids)

    async def pending_embeddings(
        self, model: str, limit: int, above: int = 0
    ) -> tuple[list[EmbeddingJob], int]:
        # One statement, so `newest` and the rows come from the same snapshot.
        rows = await self._fetchall(
            "SELECT (SELECT coalesce(max(rowid), 0) FROM memories), "
            # NOT INDEXED: walk positions from the newest down, stopping at `above` (the planner would
            # take the status index and sort every active memory).
            "(SELECT group_concat(rowid) FROM (SELECT m.rowid FROM memories m NOT INDEXED WHERE m.rowid > ? "
            "AND m.status = 'active' AND NOT EXISTS (SELECT 1 FROM memory_embeddings e "
            "WHERE e.memory_rowid = m.rowid AND e.model = ?) ORDER BY m.rowid DESC LIMIT ?))",
            [above, model, limit],
        )
        newest, found = rows[0]
        order = [int(r) for r in found.split(",")] if found else []
        return embedding_jobs(await self._windows(self._fetchall, order), order), newest

    async def stale_embeddings(
        self, model: str, after: int, limit: int
    ) -> tuple[list[EmbeddingJob], int | None]:
        rows = await self._fetchall(
            "SELECT rowid FROM memories WHERE status = 'active' AND rowid > ? ORDER BY rowid LIMIT ?",
            [after, limit],
        )
        order = [r for (r,) in rows]
        if not order:
            return [], None
        marks = ", ".join("?" * len(order))
        stored = dict(
            await self._fetchall(
                f"SELECT memory_rowid, text_hash FROM memory_embeddings WHERE model = ? AND memory_rowid IN ({marks})",
                [model, *order],
            )
        )
        jobs = [
            j
            for j in embedding_jobs(await self._windows(self._fetchall, order), order)
            if stored.get(j.position) != j.text_hash
        ]
        return jobs, (order[-1] if len(order) == limit else None)

    async def save_embeddings(self, model: str, jobs: list[EmbeddingJob], vectors: Any) -> int:
        import numpy as np

        matrix = np.asarray(vectors, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(jobs):
            raise ValueError(f"expected {len(jobs)} vectors, got an array of shape {matrix.shape}")
        saved = 0
        async with self._transaction() as db:

            async def fetch(sql: str, params: Any) -> list[tuple[Any, ...]]:
                cursor = await db.execute(sql, params)
                found = await cursor.fetchall()
                await cursor.close()
                return [tuple(r) for r in found]

            # Checked again inside the write transaction: a neighbour forgotten while the text was being
            # embedded would otherwise leave its words in this memory's vector.
            current = await self._windows(fetch, [job.position for job in jobs])
            rows = []
            for job, vector in zip(jobs, matrix, strict=True):
                now = current.get(job.position)
                if now is None or now[0] != job.memory_id or text_hash(now[1]) != job.text_hash:
                    continue
                rows.append((job.position, model, matrix.shape[1], job.text_hash, vector.tobytes()))
            # REPLACE deletes and inserts, so the row gets a new id and caches see the change.
            await db.executemany(
                "INSERT OR REPLACE INTO memory_embeddings (memory_rowid, model, dims, text_hash, vector) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            saved = len(rows)
        return saved

    async def embedding_counts(self, model: str) -> tuple[int, int]:
        rows = await self._fetchall(
            "SELECT (SELECT count(*) FROM memory_embeddings e JOIN memories m ON m.rowid = e.memory_rowid "
            "WHERE e.model = ? AND m.status = 'active'), (SELECT count(*) FROM memories WHERE status = 'active')",
            [model],
        )
        return rows[0][0], rows[0][1]

    async def rebuild_text_index(self) -> int:
        # FTS5's own 'rebuild' would read every row of the content table, forgotten memories too, but
        # this index holds active memories only: so empty it and insert the active ones again.
        columns = [row[1] for row in await self._fetchall("PRAGMA table_info(memories_fts)")]
        names = ", ".join(columns)
        async with self._transaction() as db:
            await db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('delete-all')")
            cursor = await db.execute(
                f"INSERT INTO memories_fts (rowid, {names}) SELECT rowid, {names} FROM memories "
                "WHERE status = 'active'"
            )
            count = cursor.rowcount
            await db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')")
        return count
