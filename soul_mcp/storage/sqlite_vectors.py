"""Embeddings in SQLite and hybrid recall: BM25 fused with exact vector search.

`SQLiteVectors` is a part of `SQLiteStore` (mixed into it) that implements `EmbeddingStore` and the
hybrid branch of text search. It is kept apart because it is optional: without an embedder the
table stays empty and recall never comes here. numpy is imported only when a vector is handled.

What is embedded. A memory alone is often too short to carry its meaning ("Yes, last spring!"), so
the text embedded for a memory is its previous memory followed by it, when the previous one is active
and was stored in the same context (same author, session and day: the notion of context recall's
neighbour scoring uses). Measured on LoCoMo (bench/locomo.py): a turn alone gives weak dense recall,
with its previous turn much better. The neighbour is clipped to its last NEIGHBOUR_CHARS characters
so that a long neighbour does not drown a short memory. When a memory leaves recall or comes back,
a trigger (schema migration 3) drops its neighbours' embeddings, which are then computed again.

How recall fuses the two (measured on LoCoMo; see bench/README.md). For every candidate (the BM25
matches and the DENSE_CANDIDATES most similar memories that pass the filters):
    own = (bm25 / best bm25)² + DENSE_WEIGHT * max(0, (cos - mean cos) / (best cos - mean cos))²
where mean cos is over all embedded memories, so an average (or less similar) memory adds nothing
and the most similar one adds DENSE_WEIGHT. Squaring each part, scaled to [0, 1], matters because
both scorers bunch: OR-ed query words give many memories 0.3 to 0.7 of the best BM25 score, and e5's
cosines sit in a narrow band; added linearly, a memory middling on both (0.7 + 0.5 x 0.7) beat the
clear match of one (1.0). Squared, it does not (0.74). Below-average similarity is no evidence
against a lexical match, hence the floor at 0. LoCoMo recall@5 / @10: 0.747 / 0.836 linear, 0.766 /
0.848 squared; exponents 1.5 to 2 and either weight at 0.4 to 0.6 all land between 0.755 and 0.766.
Then, as in BM25-only recall, each memory adds NEIGHBOUR_WEIGHT of the `own` score of its neighbours
in the same context. A memory without a (current) embedding gets no dense part. Fusing normalised
scores did at least as well as weighted reciprocal rank fusion (RRF throws away how far ahead the
best match is).

Exact search: all vectors of the model are held in memory as one matrix (VectorCache, float16 with
simsimd), per process, and refreshed incrementally by embedding row id, which only grows; the cost
is one matrix-vector product per query, split over two threads (2.5 to 4 ms at 100k memories on the
2-core machine of bench/; it reads the whole matrix, so memory bandwidth bounds it).
Vectors dropped from the table (a neighbour changed status, a memory was purged) are found through
the recall index's change feed (RecallIndex.changes_since): only the memories beside a change are
checked against the table. Filters and contexts come from the recall index too, so a hybrid recall
reads no memory rows but the page it returns.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from soul_mcp.storage.base import EmbeddingJob, SearchHit, SearchQuery

if TYPE_CHECKING:
    import aiosqlite
    import numpy as np

    from soul_mcp.storage.recall_index import RecallIndex

log = logging.getLogger(__name__)

NEIGHBOUR_CHARS = 500
DENSE_WEIGHT = 0.5
# How many of the most similar memories (among those that pass the filters) join the BM25 matches.
DENSE_CANDIDATES = 100
# With filters that at most this many memories pass, only their vectors are multiplied with the query;
# otherwise all are, and the others set aside. A memory's vector is one row, so gathering is cheap: at
# 100k memories (float16, simsimd) 5,000 rows gathered and multiplied took 0.7 ms, 10,000 2.0 ms, and
# the product with all of them on two threads 2.7 ms.
GATHER_MAX = 5_000
# Neighbours are looked up for the best candidates only: only they can lift a neighbour into a page.
HYBRID_LENDERS = 100
# Above this many vectors the similarity product runs on worker threads, not on the event loop.
THREAD_ABOVE = 20_000
PRODUCT_THREADS = min(2, os.cpu_count() or 1)
LOAD_BATCH = 20_000
SAMPLE_SIZE = 4096  # similarities sampled to find the most similar memories (most_similar)
THRESHOLD_MARGIN = 4  # ... set so that about this many times the candidates wanted reach it
LOOKUP_CHUNK = 800  # rowids per IN (...): SQLite before 3.32 allows 999 variables in all


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def window_text(previous: str | None, content: str) -> str:
    if not previous:
        return content
    if len(previous) > NEIGHBOUR_CHARS:
        previous = "…" + previous[-NEIGHBOUR_CHARS:]
    return previous + "\n" + content


@functools.cache
def blas_on_one_thread() -> None:
    """Keep numpy's BLAS (OpenBLAS in numpy's wheels) to the calling thread, for the whole process.

    OpenBLAS runs a large product on its own worker threads, which then spin for a while waiting for
    more work. The query embedding that follows the next recall's product runs its model on every
    core, and beside those spinning threads it took 70 to 110 ms instead of 12 (in process at 100k
    memories, 2 cores; bimodal from run to run). similarities() splits the product over threads itself.
    Done here, when vectors are first held, rather than by setting OPENBLAS_NUM_THREADS when soul_mcp
    is imported: that works only if numpy is not loaded yet, and it would change a host program's
    BLAS even without hybrid recall. threadpoolctl comes with the semantic extra; without it, BLAS
    keeps its default.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("threadpoolctl is not installed: numpy's BLAS keeps its own threads")
        return
    threadpool_limits(1, user_api="blas")


@functools.cache
def simsimd_module() -> Any:
    """simsimd (semantic extra) if installed, else None: then vectors are float32, multiplied by numpy."""
    try:
        import simsimd
    except ImportError:
        return None
    return simsimd


class VectorCache:
    """One model's vectors in memory: a matrix with one row (a "slot") per memory, and per slot the
    memory rowid and the embedding id.

    With simsimd (the semantic extra), rows are float16 and multiplied by simsimd's half-precision
    kernel: the product reads half the bytes, and it is bound by memory bandwidth (100k memories x 384
    dims, 2 cores: 2.7 ms instead of 4.9 for numpy on float32, and 77 MB less memory). Every vector is
    still compared with the query (exact search); a similarity is off by less than 1e-4 (float16 has
    11 bits of mantissa; sums are float32). Without simsimd, rows are float32 and numpy multiplies.
    """

    def __init__(self, model: str) -> None:
        import numpy as np

        blas_on_one_thread()
        self.model = model
        self.lock = anyio.Lock()
        self.dtype = np.float16 if simsimd_module() is not None else np.float32
        self.dims: int | None = None
        self.size = 0
        self.last_id = 0
        self.matrix: Any = None
        self.ids: Any = None
        self.rowids: Any = None
        self.slot_of: Any = None  # memory rowid -> matrix row, -1 for none (numpy array)
        self.expected: int | None = None  # how many vectors the first load brings
        # The sum and count of the vectors held (not dropped), kept up to date: mean_similarity().
        self._total: Any = None
        self._held = 0
        self.changes_seen = 0  # position in the recall index's change feed

    def slot(self, rowid: int) -> int | None:
        """The matrix row holding this memory's vector, if any."""
        if self.slot_of is None or not 0 <= rowid < len(self.slot_of):
            return None
        slot = int(self.slot_of[rowid])
        return slot if slot >= 0 else None

    def drop(self, rowids: list[int]) -> None:
        """Forget these memories' vectors (their rows stay, marked with rowid 0)."""
        for rowid in rowids:
            slot = self.slot(rowid)
            if slot is not None:
                self.rowids[slot] = 0
                self.slot_of[rowid] = -1
                self._total -= self.matrix[slot]
                self._held -= 1

    def add(self, rows: list[tuple[int, int, int, bytes]]) -> None:
        """Rows (embedding id, memory rowid, dims, vector) in id order: new memories are appended,
        a memory embedded again has its row overwritten."""
        import numpy as np

        if self.dims is None:
            self.dims = rows[0][2]
        rows_ok = [r for r in rows if r[2] == self.dims and len(r[3]) == 4 * r[2]]
        if len(rows_ok) < len(rows):
            log.warning(
                "skipped %d embeddings of %s with unexpected sizes", len(rows) - len(rows_ok), self.model
            )
        self.last_id = max(self.last_id, rows[-1][0])
        if not rows_ok:
            return
        vectors = np.frombuffer(b"".join(r[3] for r in rows_ok), dtype="<f4").reshape(len(rows_ok), self.dims)
        rowids = np.array([r[1] for r in rows_ok], dtype=np.int64)
        top = int(rowids.max())
        if self.slot_of is None or top >= len(self.slot_of):
            grown = np.full(max(top + 1, 2 * (0 if self.slot_of is None else len(self.slot_of))), -1)
            if self.slot_of is not None:
                grown[: len(self.slot_of)] = self.slot_of
            self.slot_of = grown
        # A memory seen before keeps its row (embedded again: overwritten); a new one gets the next.
        slots = np.empty(len(rows_ok), dtype=np.int64)
        size = self.size
        for i, rowid in enumerate(rowids.tolist()):
            slot = int(self.slot_of[rowid])
            if slot < 0:
                slot = self.slot_of[rowid] = size
                size += 1
            slots[i] = slot
        self._reserve(size)
        changed = np.unique(slots)
        replaced = changed[self.rowids[changed] > 0]  # held before: embedded again
        if self._total is None:
            self._total = np.zeros(self.dims or 0)
        self._total -= self.matrix[replaced].sum(axis=0, dtype=np.float64)
        self.size = size
        self.matrix[slots] = vectors
        self._total += self.matrix[changed].sum(axis=0, dtype=np.float64)
        self._held += len(changed) - len(replaced)
        self.ids[slots] = [r[0] for r in rows_ok]
        self.rowids[slots] = rowids

    def _reserve(self, needed: int) -> None:
        import numpy as np

        capacity = 0 if self.matrix is None else self.matrix.shape[0]
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, 1024, (self.expected or 0) + 1024)
        matrix = np.zeros((capacity, self.dims or 0), dtype=self.dtype)
        ids = np.zeros(capacity, dtype=np.int64)
        rowids = np.zeros(capacity, dtype=np.int64)
        if self.matrix is not None:
            matrix[: self.size] = self.matrix[: self.size]
            ids[: self.size] = self.ids[: self.size]
            rowids[: self.size] = self.rowids[: self.size]
        self.matrix, self.ids, self.rowids = matrix, ids, rowids

    def query_vector(self, vector: np.ndarray) -> np.ndarray:
        """The query as the product sees it: in the rows' precision."""
        return vector.astype(self.dtype)

    def mean_similarity(self, vector: np.ndarray) -> float:
        """The query's mean similarity with the vectors held (not dropped), from their running sum:
        the same whether all vectors or only some are multiplied with it."""
        import numpy as np

        query = self.query_vector(vector).astype(np.float64)
        return float(query @ self._total) / max(self._held, 1)

    async def similarities(self, vector: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        """The query's cosine similarity with each row, or with the rows `slots` only. A large
        product runs on worker threads, one per core up to PRODUCT_THREADS: it is bound by memory
        bandwidth, and each part runs on the thread that calls it (simsimd without threads of its
        own, numpy's BLAS limited to one)."""
        import numpy as np

        query = self.query_vector(vector)
        if slots is not None:  # a few: gathered, then multiplied
            return await anyio.to_thread.run_sync(self._product, query, self.matrix[slots])
        size = self.size
        out = np.empty(size, dtype=np.float32)
        if size <= THREAD_ABOVE:
            return self._product(query, self.matrix[:size], out)
        bounds = [size * i // PRODUCT_THREADS for i in range(PRODUCT_THREADS + 1)]
        async with anyio.create_task_group() as tasks:
            for start, end in itertools.pairwise(bounds):
                product = partial(self._product, query, self.matrix[start:end], out[start:end])
                tasks.start_soon(anyio.to_thread.run_sync, product)
        return out

    @staticmethod
    def _product(query: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """rows @ query as float32 (into `out` when given); float16 rows exist only with simsimd."""
        import numpy as np

        if rows.dtype != np.float16:
            return np.matmul(rows, query, out=out)
        if out is None:
            out = np.empty(len(rows), dtype=np.float32)
        if len(rows):
            simsimd_module().cdist(query[None], rows, metric="dot", out=out[None], out_dtype="float32")
        return out


def slots_of(rowids: np.ndarray, slot_of: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of these memories have a vector in a snapshot (`owner`: each slot's memory, as
    `slot_of` may have changed since), as a mask over `rowids`, and the slots of those that do."""
    import numpy as np

    slots = slot_of[np.minimum(rowids, len(slot_of) - 1)]
    has = (rowids < len(slot_of)) & (slots >= 0) & (slots < len(owner))
    has[has] &= owner[slots[has]] == rowids[has]
    return has, slots[has]


def most_similar(sims: np.ndarray, take: int) -> np.ndarray:
    """The positions of the `take` highest values of `sims`, in no order; exactly those that a
    partition of all of them gives (ties aside).

    Partitioning 100k similarities took 1 ms, a third of the fusion's time. So a threshold is taken
    first from an evenly spaced sample, set so that a few times `take` values reach it; only those
    are partitioned. Whenever at least `take` values reach the threshold, the `take` highest all
    do, so the answer is exact; otherwise (rare: a lopsided sample) all values are partitioned.
    """
    import numpy as np

    size = len(sims)
    if take >= size:
        return np.arange(size)
    step = size // SAMPLE_SIZE
    wanted = THRESHOLD_MARGIN * take // max(step, 1)  # the rank in the sample of the threshold
    if step >= 2 and 0 < wanted < SAMPLE_SIZE // 2:
        sample = sims[::step]
        threshold = np.partition(sample, len(sample) - wanted)[len(sample) - wanted]
        reaching = np.flatnonzero(sims >= threshold)
        if len(reaching) >= take:
            return reaching[np.argpartition(-sims[reaching], take - 1)[:take]]
    return np.argpartition(-sims, take - 1)[:take]


class SQLiteVectors:
    """The embedding half of SQLiteStore (see the module docstring)."""

    if TYPE_CHECKING:
        _fetchall: Callable[..., Awaitable[list[tuple[Any, ...]]]]
        _transaction: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]]
        _hits: Callable[[list[int], list[float], list[int]], Awaitable[list[SearchHit]]]

    _vector_caches: dict[str, VectorCache] | None = None

    # Which text stands for a memory -----------------------------------------------------------

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
                "SELECT rowid, id, content, status, author, session_id, substr(occurred_at, 1, 10) "
                f"FROM memories WHERE rowid IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                rows[row[0]] = row
        out: dict[int, tuple[str, str]] = {}
        for rowid in rowids:
            row = rows.get(rowid)
            if row is None or row[3] != "active":
                continue
            before = rows.get(rowid - 1)
            previous = before[2] if before and before[3] == "active" and before[4:] == row[4:] else None
            out[rowid] = (row[1], window_text(previous, row[2]))
        return out

    def _jobs(self, windows: dict[int, tuple[str, str]], order: list[int]) -> list[EmbeddingJob]:
        return [
            EmbeddingJob(
                memory_id=windows[r][0], text=windows[r][1], text_hash=text_hash(windows[r][1]), position=r
            )
            for r in order
            if r in windows
        ]

    # EmbeddingStore ---------------------------------------------------------------------------

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
        return self._jobs(await self._windows(self._fetchall, order), order), newest

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
            for j in self._jobs(await self._windows(self._fetchall, order), order)
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

    # Hybrid recall ----------------------------------------------------------------------------

    async def _vector_cache(self, model: str, index: RecallIndex) -> VectorCache:
        """The model's vectors, brought up to date: new ones loaded, and those of memories beside a
        memory that changed since the last call checked against the table (a status change drops
        the neighbours' embeddings; the indexer stores them again under new ids)."""
        if self._vector_caches is None:
            self._vector_caches = {}
        cache = self._vector_caches.setdefault(model, VectorCache(model))
        async with cache.lock:
            changed, cache.changes_seen = index.changes_since(cache.changes_seen)
            if changed is None and cache.size:  # too much changed to follow: load it all again
                cache = self._vector_caches[model] = VectorCache(model)
                cache.changes_seen = index.changes_since(0)[1]
            elif changed:
                near = sorted(
                    {r + step for r in changed for step in (-1, 0, 1) if cache.slot(r + step) is not None}
                )
                for start in range(0, len(near), LOOKUP_CHUNK):
                    chunk = near[start : start + LOOKUP_CHUNK]
                    stored = dict(
                        await self._fetchall(
                            "SELECT memory_rowid, id FROM memory_embeddings WHERE model = ? "
                            f"AND memory_rowid IN ({', '.join('?' * len(chunk))})",
                            [model, *chunk],
                        )
                    )
                    cache.drop([r for r in chunk if stored.get(r) != int(cache.ids[cache.slot(r)])])
            if cache.expected is None:  # the first load: room for all at once, not grown by doubling
                (cache.expected,) = (
                    await self._fetchall("SELECT count(*) FROM memory_embeddings WHERE model = ?", [model])
                )[0]
            while True:
                rows = await self._fetchall(
                    "SELECT id, memory_rowid, dims, vector FROM memory_embeddings WHERE model = ? AND id > ? "
                    "ORDER BY id LIMIT ?",
                    [model, cache.last_id, LOAD_BATCH],
                )
                if rows:
                    cache.add(rows)  # type: ignore[arg-type]
                if len(rows) < LOAD_BATCH:
                    break
        return cache

    async def _search_hybrid(
        self,
        query: SearchQuery,
        index: RecallIndex,
        rowids: np.ndarray,
        scores: np.ndarray,
        filters: dict[str, Any],
    ) -> list[SearchHit] | None:
        """The hybrid ranking of a text query whose BM25 matches are `rowids` with `scores` (best
        first, from RecallIndex.rank) under `filters` (RecallIndex.keep's); None when the query has
        no vector or no memory has an embedding by its model: then BM25 ranks alone."""
        import numpy as np

        from soul_mcp.storage.recall_index import lend
        from soul_mcp.storage.sqlite import NEIGHBOUR_WEIGHT

        assert query.vector is not None
        cache = await self._vector_cache(query.vector.model, index)
        if cache.size == 0:
            return None
        vector = await query.vector.get()  # embedded now, with the full-text part done (QueryVector)
        if vector is None:
            return None
        vector = np.asarray(vector, dtype=np.float32)
        # With filters, only the memories that pass them can be found: the most similar are looked
        # for among them (the mean similarity stays that of all memories).
        filtered = any(value is not None for value in filters.values())
        # Under the cache's lock, and from here on with a snapshot of what it held: a recall running
        # at the same time may add vectors (slots) or drop some meanwhile.
        async with cache.lock:
            size = cache.size
            owner = cache.rowids[:size].copy()  # the memory of each slot; 0: dropped
            slot_of = cache.slot_of  # may change later: each look-up is checked against `owner`
            eligible = owner > 0  # the slots that may be found: not dropped, passing the filters
            if filtered:
                async with index.lock:
                    if filters.get("within") is not None:  # tags: from their memories to their slots
                        others = {k: v for k, v in filters.items() if k != "within"}
                        tagged = index.keep(filters["within"], **others)
                        eligible = np.zeros(size, dtype=bool)
                        eligible[slots_of(tagged, slot_of, owner)[1]] = True
                    else:
                        eligible &= index.passing(owner, **filters)
            eligible_count = int(np.count_nonzero(eligible))
            if eligible_count == 0:
                return None
            slots = np.flatnonzero(eligible) if eligible_count <= min(GATHER_MAX, size // 2) else None
            similar = await cache.similarities(vector, slots)
            mean = cache.mean_similarity(vector)  # over all held vectors, filtered or not
        if slots is not None:  # similarities of the eligible slots only; the others are never found
            sims = np.full(size, -np.inf, dtype=np.float32)
            sims[slots] = similar
        else:
            sims = similar
        all_eligible = eligible_count == size

        # 1. Candidates: the BM25 matches and the memories most similar to the query.
        top = most_similar(sims if all_eligible else np.where(eligible, sims, -np.inf), DENSE_CANDIDATES)
        top = top[eligible[top]]
        best = float(sims[top].max())
        spread = best - mean if best > mean else 1.0
        best_bm25 = float(scores[0]) if len(scores) else 1.0
        by_rowid = np.argsort(rowids)
        lexical_rowids = rowids[by_rowid]
        lexical = ((scores / (best_bm25 or 1.0)) ** 2)[by_rowid]

        def own(memories: np.ndarray) -> np.ndarray:
            """BM25 part + vector part, each scaled to [0, 1] and squared: 0 for an average (or less
            similar) memory, DENSE_WEIGHT for the most similar."""
            at = np.minimum(np.searchsorted(lexical_rowids, memories), max(len(lexical_rowids) - 1, 0))
            out = np.zeros(len(memories))
            if len(lexical_rowids):
                matched = lexical_rowids[at] == memories
                out[matched] = lexical[at[matched]]
            has, at_slots = slots_of(memories, slot_of, owner)
            out[has] += DENSE_WEIGHT * np.maximum((sims[at_slots] - mean) / spread, 0.0) ** 2
            return out

        async with index.lock:
            candidates = index.keep(np.union1d(rowids, owner[top]), **filters)
            # 2. Only the best candidates can lift a neighbour into a page.
            lenders = candidates[np.argsort(-own(candidates), kind="stable")[:HYBRID_LENDERS]]
            near = index.keep(np.union1d(lenders - 1, lenders + 1), **filters)
            receivers = np.union1d(candidates, near)
            context = index.context[receivers]
        # 3. Every memory found lends to its neighbours in the same context (recall_index.lend).
        total, lender = lend(
            receivers, own(receivers), context, np.ones(len(receivers), dtype=bool), NEIGHBOUR_WEIGHT
        )
        kept = np.flatnonzero(total > 0)
        order = kept[np.lexsort((-receivers[kept], -total[kept]))][query.offset : query.offset + query.limit]
        # Only a memory brought in as a neighbour says which memory lent to it (context_of).
        is_candidate = np.isin(receivers[order], candidates)
        return await self._hits(
            receivers[order].tolist(),
            total[order].tolist(),
            np.where(is_candidate, 0, lender[order]).tolist(),
        )
