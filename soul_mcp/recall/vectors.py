"""The vectors of one embedding model in memory, and exact nearest-neighbour search over them.

All vectors of a model are held as one matrix (VectorCache), per process, and loaded from the
source incrementally by embedding id, which only grows; the cost of a search is one matrix-vector
product per query, split over PRODUCT_THREADS threads (it reads the whole matrix, so memory
bandwidth bounds it). Vectors dropped by the store (a neighbour changed status, a memory was
purged) are found through the recall index's change feed (RecallIndex.changes_since): only the
memories beside a change are checked against the source. Timings are in bench/README.md.

A new process (every stdio session starts one) would read every vector from SQLite at its first
hybrid recall, ~0.45 s at 100k memories. So the matrix is also kept in a file beside the recall
snapshot (`<db>-recall-vectors`, vectors_file), read by the server's read-ahead thread as it starts
(read_early, opening.read_ahead). Layout: a fixed head (magic, format, the header's length, the
body's length, the body's sum as 64-bit words), a JSON header (model, dtype, dims, slots, the last
embedding id held, how many vectors are held), then the arrays (matrix, ids, rowids, the running
sum), each padded to 8 bytes. A damaged file fails its checksum and is ignored. One that reads
whole is still checked against the database before it is used (VectorCaches._mismatch): embedding
ids only grow (AUTOINCREMENT) and a stored vector is never changed in place, so once the rows past
its last id are loaded, the vectors held must be exactly as many as the database has, a sample of
memories must have the embedding ids the file says, and a few of them its vectors (a database made
anew has the same ids). Otherwise everything is read from SQLite. A thread writes the file after a
process read everything from SQLite, and at close when the vectors held moved on from it (one
dropped, or SAVE_ROWS added), from the arrays themselves (VectorCache.stored).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
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
# The file of vectors (see above).
FILE_MAGIC = b"SOULVEC\x00"
FILE_FORMAT = 1
FILE_HEAD = struct.Struct("<8sIIQQ")  # magic, format, header length, body length, body sum
FILE_SAMPLE = 16  # memories whose embedding ids are checked against the database's
FILE_VECTORS = 4  # ... and whose vectors are
SAVE_ROWS = 1_000  # vectors loaded from SQLite beyond the file's before it is written anew (at close)
SPARE_ROWS = 1_024  # rows of room past the file's, so that the next new vectors are not a regrowth
ABANDONED_AFTER = 600  # seconds: a temporary file older than this was left by a killed writer


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
        # The file of vectors (VectorCaches): read once, checked once; what changed since it was
        # read or written decides when it is written anew.
        self.opened = False
        self.unchecked = False  # restored from the file and not yet checked against the database
        self.saved = False  # the file holds these vectors, but for what is counted below
        self.changed_rows = 0  # vectors added since
        self.dropped = False  # and whether any was dropped
        self._lent: StoredVectors | None = None  # arrays a writer of the file still reads (stored())

    def slot(self, rowid: int) -> int | None:
        """The matrix row holding this memory's vector, if any."""
        if self.slot_of is None or not 0 <= rowid < len(self.slot_of):
            return None
        slot = int(self.slot_of[rowid])
        return slot if slot >= 0 else None

    def drop(self, rowids: list[int]) -> None:
        """Forget these memories' vectors (their rows stay, marked with rowid 0)."""
        if rowids:
            self._own()
        for rowid in rowids:
            slot = self.slot(rowid)
            if slot is not None:
                self.rowids[slot] = 0
                self.slot_of[rowid] = -1
                self._total -= self.matrix[slot]
                self._held -= 1
                self.dropped = True

    def add(self, rows: list[EmbeddingRow]) -> None:
        """Rows (embedding id, memory rowid, dims, vector) in id order: new memories are appended,
        a memory embedded again has its row overwritten."""
        import numpy as np

        self._own()
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
        self.changed_rows += len(rows_ok)

    def restore(self, stored: StoredVectors) -> None:
        """Hold what a file of vectors holds (before any vector is loaded)."""
        import numpy as np

        self.dims, self.size, self.last_id = stored.dims, stored.size, stored.last_id
        self.matrix, self.ids, self.rowids = stored.matrix, stored.ids, stored.rowids
        held = np.flatnonzero(self.rowids[: self.size] > 0)
        top = int(self.rowids[: self.size].max()) if self.size else 0
        self.slot_of = np.full(top + 1, -1)
        self.slot_of[self.rowids[held]] = held
        self._total, self._held = stored.total, len(held)
        self.expected = self.size
        self.unchecked = self.saved = True
        self.changed_rows, self.dropped = 0, False

    def clear(self) -> None:
        """Hold nothing again (a file of vectors that does not hold for the database)."""
        self._lent = None  # a writer may keep reading the arrays: they are no longer changed
        self.dims, self.size, self.last_id = None, 0, 0
        self.matrix = self.ids = self.rowids = self.slot_of = self._total = None
        self._held = 0
        self.expected = None
        self.unchecked = self.saved = False
        self.changed_rows, self.dropped = 0, False

    def stored(self) -> StoredVectors:
        """What is held, for the file (taken under the lock), without copying the arrays on the
        request's path: they are lent to the writer until it gives them back (returned), and a
        change meanwhile goes to copies (_own)."""
        assert self.dims is not None
        size = self.size
        self._lent = StoredVectors(
            self.model, self.matrix.dtype.newbyteorder("<").str, self.dims, size, self.last_id, self._held,
            self.matrix[:size], self.ids[:size], self.rowids[:size], self._total.copy(),
        )  # fmt: skip
        return self._lent

    def returned(self, stored: StoredVectors) -> None:
        """The writer is done with the arrays of `stored` (called from its thread)."""
        if self._lent is stored:
            self._lent = None

    def _own(self) -> None:
        """Before the arrays change in place: if a writer still reads them, they are copied first."""
        if self._lent is not None:
            self.matrix, self.ids, self.rowids = self.matrix.copy(), self.ids.copy(), self.rowids.copy()
            self._lent = None

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


@dataclass
class StoredVectors:
    """What the file of vectors holds: a VectorCache's arrays (with room past `size` when read)."""

    model: str
    dtype: str  # numpy's name of the matrix's type: float16 or float32
    dims: int
    size: int
    last_id: int
    held: int
    matrix: Any
    ids: Any
    rowids: Any
    total: Any  # float64, the sum of the vectors held


def vectors_file(snapshot: Path) -> Path:
    """The file of vectors beside the recall snapshot `snapshot` (the source's snapshot_path)."""
    return Path(f"{snapshot}-vectors")


def _word_sum(data: Any) -> int:
    """The sum of `data`'s bytes as little-endian 64-bit words (zero-padded), mod 2**64."""
    import numpy as np

    view = memoryview(data).cast("B")
    whole = len(view) // 8 * 8
    total = int(np.frombuffer(view[:whole], dtype="<u8").sum(dtype=np.uint64))
    if whole < len(view):
        total += int.from_bytes(bytes(view[whole:]).ljust(8, b"\0"), "little")
    return total % 2**64


def _arrays(stored: StoredVectors) -> list[tuple[str, Any]]:
    """The file's arrays in order: (numpy type, the array's first rows)."""
    return [
        (stored.dtype, stored.matrix[: stored.size]),
        ("<i8", stored.ids[: stored.size]),
        ("<i8", stored.rowids[: stored.size]),
        ("<f8", stored.total),
    ]


def write_vectors(path: Path, stored: StoredVectors) -> None:
    """Write `stored` to `path` atomically (a temporary file renamed into place): a reader finds
    the previous file or this one whole. Not synced: a file damaged by a crash fails its checksum."""
    import numpy as np

    header = json.dumps(
        {
            "model": stored.model, "dtype": stored.dtype, "dims": stored.dims, "size": stored.size,
            "last_id": stored.last_id, "held": stored.held,
        },
        separators=(",", ":"),
    ).encode()  # fmt: skip
    header += b" " * (-(FILE_HEAD.size + len(header)) % 8)
    parts = [np.ascontiguousarray(array, dtype=dtype) for dtype, array in _arrays(stored)]
    body_length = sum(part.nbytes + (-part.nbytes % 8) for part in parts)
    body_sum = sum(_word_sum(part) for part in parts) % 2**64
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    for left in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):  # by a writer that was killed
        with contextlib.suppress(OSError):
            if time.time() - left.stat().st_mtime > ABANDONED_AFTER:
                left.unlink()
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            out.write(FILE_HEAD.pack(FILE_MAGIC, FILE_FORMAT, len(header), body_length, body_sum))
            out.write(header)
            for part in parts:
                out.write(part.data.cast("B"))
                out.write(b"\0" * (-part.nbytes % 8))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def read_vectors(path: Path) -> StoredVectors | None:
    """The file of vectors at `path`, with SPARE_ROWS rows of room; None when there is none or it
    fails a check (short, long, foreign, damaged)."""
    import numpy as np

    try:
        with open(path, "rb") as file:
            size_on_disk = os.fstat(file.fileno()).st_size
            head = file.read(FILE_HEAD.size)
            if len(head) < FILE_HEAD.size:
                raise ValueError("shorter than its head")
            magic, version, header_length, body_length, body_sum = FILE_HEAD.unpack(head)
            if magic != FILE_MAGIC or version != FILE_FORMAT:
                raise ValueError("not a file of vectors of this format")
            if size_on_disk != FILE_HEAD.size + header_length + body_length:
                raise ValueError(f"{size_on_disk} bytes where its head says otherwise")
            info = json.loads(file.read(header_length))
            if info["dtype"] not in ("<f2", "<f4"):
                raise ValueError(f"vectors of type {info['dtype']}")
            dims, size = int(info["dims"]), int(info["size"])
            capacity = size + SPARE_ROWS
            stored = StoredVectors(
                str(info["model"]), str(info["dtype"]), dims, size, int(info["last_id"]), int(info["held"]),
                np.zeros((capacity, dims), dtype=np.dtype(info["dtype"])), np.zeros(capacity, dtype=np.int64),
                np.zeros(capacity, dtype=np.int64), np.zeros(dims, dtype=np.float64),
            )  # fmt: skip
            total_sum, length = 0, 0
            for _, array in _arrays(stored):  # each read straight into its array
                data = memoryview(array).cast("B")
                if file.readinto(data) != len(data):
                    raise ValueError("shorter than its head says")
                padding = file.read(-len(data) % 8)
                length += len(data) + len(padding)
                total_sum += _word_sum(data) + int.from_bytes(padding, "little")
            if length != body_length or total_sum % 2**64 != body_sum:
                raise ValueError("its body fails its checksum")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("file of vectors %s ignored: %s", path, exc)
        return None
    return stored


@dataclass
class _Early:
    done: threading.Event
    stored: StoredVectors | None = None


_early: dict[str, _Early] = {}
_early_lock = threading.Lock()


def read_early(path: Path) -> StoredVectors | None:
    """Read the file of vectors at `path` (blocking: from a thread) for the first hybrid recall of
    this process (VectorCaches takes it; it is checked against the database there). Returns it."""
    key = os.path.abspath(path)
    early = _Early(threading.Event())
    with _early_lock:
        if key in _early:
            return None
        _early[key] = early
    try:
        early.stored = read_vectors(path)
        if early.stored is not None:  # vectors will be held: what VectorCache() does first, now
            blas_on_one_thread()
            simsimd_module()
    finally:
        early.done.set()
    return early.stored


def take_early(path: Path) -> tuple[bool, StoredVectors | None]:
    """What read_early(path) read (waiting for it if it is still reading): (True, the file or None),
    or (False, None) when no early read was begun."""
    with _early_lock:
        early = _early.pop(os.path.abspath(path), None)
    if early is None:
        return False, None
    early.done.wait()
    return True, early.stored


class VectorCaches:
    """Each model's VectorCache, loaded from `source` and kept in step with it; the first time, from
    the file of vectors beside the recall snapshot when it holds for the database."""

    def __init__(self, source: RecallSource) -> None:
        self.source = source
        self.caches: dict[str, VectorCache] = {}
        snapshot = source.snapshot_path()
        self.path = vectors_file(snapshot) if snapshot is not None else None
        self._saving: threading.Thread | None = None

    async def current(self, model: str, index: RecallIndex) -> VectorCache:
        """The model's vectors, brought up to date: new ones loaded, and those of memories beside a
        memory that changed since the last call checked against the source (a status change drops
        the neighbours' embeddings; the indexer stores them again under new ids)."""
        cache = self.caches.setdefault(model, VectorCache(model))
        async with cache.lock:
            if not cache.opened:
                cache.opened = True
                await self._open(cache)
                if cache.unchecked:
                    # The feed's changes so far are in the database, which the file is checked
                    # against (_mismatch), so they need no look.
                    cache.changes_seen = index.changes_since(0)[1]
            changed, cache.changes_seen = index.changes_since(cache.changes_seen)
            if changed is None and cache.size:  # too much changed to follow: load it all again
                cache = self.caches[model] = VectorCache(model)
                cache.opened = True
                cache.changes_seen = index.changes_since(0)[1]
            elif changed:
                near = sorted(
                    {r + step for r in changed for step in (-1, 0, 1) if cache.slot(r + step) is not None}
                )
                stored = await self.source.embedding_ids(model, near) if near else {}
                cache.drop([r for r in near if stored.get(r) != int(cache.ids[cache.slot(r)])])
            await self._load(cache)
            if cache.unchecked:
                why = await self._mismatch(cache)
                if why:
                    log.info("file of vectors %s ignored: %s", self.path, why)
                    cache.clear()
                    await self._load(cache)
                cache.unchecked = False
            if not cache.saved and cache.size:  # none was read: write one now, for the next process
                self._save(cache)
        return cache

    async def _load(self, cache: VectorCache) -> None:
        """Load the vectors stored since the last one held."""
        if cache.expected is None:  # the first load: room for all at once, not grown by doubling
            cache.expected = await self.source.embedding_count(cache.model)
        while True:
            rows = await self.source.embeddings_after(cache.model, cache.last_id, LOAD_BATCH)
            if rows:
                cache.add(rows)
            if len(rows) < LOAD_BATCH:
                break

    async def _open(self, cache: VectorCache) -> None:
        """Start from the file of vectors, if there is one of this model (checked in _mismatch)."""
        import numpy as np

        if self.path is None:
            return
        began, stored = take_early(self.path)
        if not began:
            stored = await anyio.to_thread.run_sync(read_vectors, self.path)
        if stored is None or stored.model != cache.model or np.dtype(stored.dtype) != np.dtype(cache.dtype):
            return
        cache.restore(stored)

    async def _mismatch(self, cache: VectorCache) -> str:
        """Why the vectors restored from the file, with those stored since loaded, are not the
        database's ("" when they are). Ids only grow and a vector is never changed in place, so
        the vectors held must be exactly as many as the database has (a vector dropped while no
        process held the file leaves one too many), and a sample of memories, the newest among
        them, must have the ids held (a file of another database, or of a later copy, does not)."""
        import numpy as np

        count = await self.source.embedding_count(cache.model)
        if count != cache._held:
            # The indexer may have stored vectors meanwhile: load them, and count once more.
            await self._load(cache)
            count = await self.source.embedding_count(cache.model)
        if count != cache._held:
            return f"it holds {cache._held} vectors where the database has {count}"
        held = np.flatnonzero(cache.rowids[: cache.size] > 0)
        if not len(held):
            return ""
        by_id = held[np.argsort(cache.ids[held], kind="stable")]
        spread = np.linspace(0, len(by_id) - 1, FILE_SAMPLE // 2).astype(np.int64)
        sample = {int(cache.rowids[slot]) for slot in [*by_id[-(FILE_SAMPLE // 2) :], *by_id[spread]]}
        stored = await self.source.embedding_ids(cache.model, sorted(sample))
        if any(stored.get(r) != int(cache.ids[cache.slot_of[r]]) for r in sample):
            return "its memories' embeddings are not this database's"
        # Ids alone would not tell a database made anew with the same history (ids and rowids
        # from 1 again) from the one the file was written for; its vectors do.
        newest, spread_out = (
            by_id[-(FILE_VECTORS // 2) :],
            by_id[spread[:: len(spread) // (FILE_VECTORS // 2)]],
        )
        for slot in {int(slot) for slot in [*newest, *spread_out]}:
            embedding_id = int(cache.ids[slot])
            rows = await self.source.embeddings_after(cache.model, embedding_id - 1, 1)
            vector = np.frombuffer(rows[0][3], dtype="<f4") if rows and rows[0][2] == cache.dims else None
            if (
                vector is None
                or (rows[0][0], rows[0][1]) != (embedding_id, int(cache.rowids[slot]))
                or not np.array_equal(vector.astype(cache.dtype), cache.matrix[slot])
            ):
                return "its vectors are not this database's"
        return ""

    def _save(self, cache: VectorCache) -> None:
        """Have a thread write the file of vectors from what `cache` holds (called under its lock)."""
        if self.path is None or cache.dims is None or (self._saving is not None and self._saving.is_alive()):
            return
        stored, path = cache.stored(), self.path
        cache.saved, cache.changed_rows, cache.dropped = True, 0, False

        def write() -> None:
            try:
                write_vectors(path, stored)
            except OSError as exc:
                log.warning("could not write the file of vectors %s: %s", path, exc)
            finally:
                cache.returned(stored)

        self._saving = threading.Thread(target=write, name="soul-mcp-vectors-save", daemon=True)
        self._saving.start()

    async def close(self) -> None:
        """Write the file of vectors if what is held has moved on from it by SAVE_ROWS vectors or
        more, or by any dropped vector (a file that holds one too many is not used), and wait for
        the writing to end."""
        for cache in self.caches.values():
            async with cache.lock:
                if cache.dropped or cache.changed_rows >= SAVE_ROWS:
                    cache.saved = False
                if cache.size and not cache.unchecked and not cache.saved:
                    if self._saving is not None:
                        await anyio.to_thread.run_sync(self._saving.join)
                    self._save(cache)
        if self._saving is not None:
            await anyio.to_thread.run_sync(self._saving.join)
