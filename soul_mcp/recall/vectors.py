"""The vectors of one embedding model in memory, and exact nearest-neighbour search over them.

All vectors of a model are held as one matrix (VectorCache), per process, and loaded from the
source incrementally by embedding id, which only grows; the cost of a search is one matrix-vector
product per query, split over PRODUCT_THREADS threads (it reads the whole matrix, so memory
bandwidth bounds it). Vectors dropped by the store (a neighbour changed status, a memory was
purged) are found through the recall index's change feed (RecallIndex.changes_since): only the
memories beside a change are checked against the source. Timings are in bench/README.md.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from soul_mcp.recall.source import EmbeddingRow, RecallSource

if TYPE_CHECKING:
    import numpy as np

    from soul_mcp.recall.index import RecallIndex

log = logging.getLogger(__name__)

# Above this many vectors the similarity product runs on worker threads, not on the event loop.
THREAD_ABOVE = 20_000
PRODUCT_THREADS = min(2, os.cpu_count() or 1)
LOAD_BATCH = 20_000
SAMPLE_SIZE = 4096  # similarities sampled to find the most similar memories (most_similar)
THRESHOLD_MARGIN = 4  # ... set so that about this many times the candidates wanted reach it


@functools.cache
def blas_on_one_thread() -> None:
    """Keep numpy's BLAS (OpenBLAS in numpy's wheels) to the calling thread, for the whole process.

    OpenBLAS runs a large product on its own worker threads, which then spin for a while waiting for
    more work. The query embedding that follows the next recall's product runs its model on every
    core, and beside those spinning threads it was several times slower (bench/README.md).
    similarities() splits the product over threads itself.
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
    kernel: the product reads half the bytes, and it is bound by memory bandwidth, so it is faster
    and the matrix half the size (bench/README.md). Every vector is
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

    def add(self, rows: list[EmbeddingRow]) -> None:
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

    Partitioning all similarities was a third of the fusion's time. So a threshold is taken
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


class VectorCaches:
    """Each model's VectorCache, loaded from `source` and kept in step with it."""

    def __init__(self, source: RecallSource) -> None:
        self.source = source
        self.caches: dict[str, VectorCache] = {}

    async def current(self, model: str, index: RecallIndex) -> VectorCache:
        """The model's vectors, brought up to date: new ones loaded, and those of memories beside a
        memory that changed since the last call checked against the source (a status change drops
        the neighbours' embeddings; the indexer stores them again under new ids)."""
        cache = self.caches.setdefault(model, VectorCache(model))
        async with cache.lock:
            changed, cache.changes_seen = index.changes_since(cache.changes_seen)
            if changed is None and cache.size:  # too much changed to follow: load it all again
                cache = self.caches[model] = VectorCache(model)
                cache.changes_seen = index.changes_since(0)[1]
            elif changed:
                near = sorted(
                    {r + step for r in changed for step in (-1, 0, 1) if cache.slot(r + step) is not None}
                )
                stored = await self.source.embedding_ids(model, near) if near else {}
                cache.drop([r for r in near if stored.get(r) != int(cache.ids[cache.slot(r)])])
            if cache.expected is None:  # the first load: room for all at once, not grown by doubling
                cache.expected = await self.source.embedding_count(model)
            while True:
                rows = await self.source.embeddings_after(model, cache.last_id, LOAD_BATCH)
                if rows:
                    cache.add(rows)
                if len(rows) < LOAD_BATCH:
                    break
        return cache
