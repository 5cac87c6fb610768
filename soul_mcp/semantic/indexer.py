"""SemanticIndexer: embeds queries for hybrid recall, and keeps the memories' embeddings up to date.

Embedding stays off the request path: `remember` stores the memory and returns; a background thread
of the server process embeds new memories in batches and, on first use, every older memory that has
no embedding yet (backfill). Nothing is queued in memory: the thread asks the store which memories
lack an embedding, so a restart, a crash or another process's writes lose nothing, they are simply
found again.

Why a thread with its own event loop and its own store connection rather than a task on the
server's loop: the indexer then outlives no session and depends on none (the server opens one self
for all its sessions), and a slow embedding never holds up a request. It has its own model instance
too (the weights are memory-mapped, so they are shared), so a query never waits for a batch of
passages; that instance computes on one core at the lowest priority (LocalE5's `background`), so a
backfill on a small machine leaves the CPU to requests first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from soul_mcp.config import Semantic
from soul_mcp.errors import EmbeddingError, StorageError
from soul_mcp.semantic.embedders import Embedder, embedder_for
from soul_mcp.storage.base import EmbeddingJob, EmbeddingStore

log = logging.getLogger(__name__)

BATCH = 16  # memories per look and per save; reindex embeds them in one call (~0.2 s on two cores)
IDLE_RESCAN_S = 60.0  # when idle, look again this often (for memories other processes stored)
RETRY_S = 30.0  # after an embedder failure (an endpoint that is down)
RECENT_QUERIES = 256  # query vectors kept (SemanticIndexer.embed_query)
# The indexer embeds in the gaps between requests: running beside a recall, even on one core at the
# lowest priority, it made the recall's query embedding several times slower (a thread that wakes from
# sleep gets the CPU first). So it embeds BACKGROUND_CHUNK passages at a time, each once no request
# came for QUIET_S, or after MAX_DEFER_S at most, so that a steady stream of requests cannot starve it.
BACKGROUND_CHUNK = 2
QUIET_S = 0.25
MAX_DEFER_S = 2.0

Progress = Callable[[int, int], None]


async def embed_jobs(
    store: EmbeddingStore,
    embedder: Embedder,
    jobs: list[EmbeddingJob],
    chunk: int | None = None,
    before_chunk: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Embed `jobs` (`chunk` texts per model call, awaiting `before_chunk()` before each) and store
    the vectors; returns how many were stored."""
    if not jobs:
        return 0
    import numpy as np  # an embedder returns numpy arrays, so numpy is there

    texts = [job.text for job in jobs]
    size = chunk or len(texts)
    parts = []
    for start in range(0, len(texts), size):
        if before_chunk is not None:
            await before_chunk()
        try:
            parts.append(await anyio.to_thread.run_sync(embedder.embed_passages, texts[start : start + size]))
        except EmbeddingError:
            raise
        except Exception as exc:  # the model's own failure: report it as the embedder's
            raise EmbeddingError(f"the embedding model {embedder.name} failed: {exc}") from exc
    return await store.save_embeddings(embedder.name, jobs, np.concatenate(parts))


class BackgroundIndexer:
    """A daemon thread that embeds what the store says is missing, woken by `kick()`."""

    def __init__(
        self, open_store: Callable[[], Awaitable[EmbeddingStore]], make_embedder: Callable[[], Embedder]
    ) -> None:
        self._open_store = open_store
        self._make_embedder = make_embedder
        self._wake = threading.Event()
        self._full = threading.Event()  # look at every memory, not only the newest
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._busy_at = float("-inf")  # when a request last used the model or stored memories
        self.embedded = 0  # how many vectors this indexer stored (for logs and tests of this process)

    def mark_busy(self) -> None:
        """A request is being served: the indexer waits for a quiet moment (QUIET_S)."""
        self._busy_at = time.monotonic()

    def kick(self, everything: bool = False) -> None:
        """Wake the indexer: for memories stored since it last looked, or (`everything`) for any
        memory without an embedding, e.g. the neighbours of a memory forgotten or restored."""
        self.mark_busy()  # a write often comes with more requests: let them pass first
        if everything:
            self._full.set()
        with self._start_lock:
            if self._stop.is_set():
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="soul-mcp-indexer", daemon=True)
                self._thread.start()
        self._wake.set()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it (it finishes the batch it is embedding)."""
        with self._start_lock:
            self._stop.set()
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the indexer thread did not stop within %.0f s", timeout)

    def _run(self) -> None:
        try:
            anyio.run(self._main)
        except Exception:
            log.exception("the indexer stopped after an unexpected error; recall goes on with BM25 for "
                          "memories without embeddings")  # fmt: skip

    async def _opened(self) -> EmbeddingStore | None:
        """The indexer's own store, once the database can be opened (None: stopped meanwhile)."""
        while not self._stop.is_set():
            try:
                return await self._open_store()
            except StorageError as exc:
                log.warning("could not open the database to embed memories (will retry in %.0f s): %s",
                            RETRY_S, exc)  # fmt: skip
                await anyio.to_thread.run_sync(self._stop.wait, RETRY_S)
        return None

    async def _main(self) -> None:
        store = await self._opened()
        if store is None:
            return
        embedder = self._make_embedder()
        # Looking at every memory costs ~50 ms at 100k memories, so after a complete look only the
        # memories stored since are looked at (positions only grow), until something asks for a
        # complete look again or IDLE_RESCAN_S pass (for what other processes forgot or restored).
        complete_up_to = 0
        complete_at = -IDLE_RESCAN_S
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before looking: a kick from now on wakes the next wait
                if self._full.is_set() or time.monotonic() - complete_at >= IDLE_RESCAN_S:
                    self._full.clear()
                    above, started = 0, time.monotonic()
                else:
                    above, started = complete_up_to, None
                try:
                    while not self._stop.is_set():
                        jobs, newest = await store.pending_embeddings(embedder.name, BATCH, above)
                        if not jobs:  # everything above `above`, up to `newest`, has its embedding
                            complete_up_to = max(complete_up_to, newest) if above else newest
                            if started is not None:
                                complete_at = started
                            break
                        self.embedded += await embed_jobs(
                            store, embedder, jobs, BACKGROUND_CHUNK, self._until_quiet
                        )
                    timeout = IDLE_RESCAN_S
                except (EmbeddingError, StorageError) as exc:
                    # The model's endpoint, or the database (a PostgreSQL restart, a cut link), is
                    # away for a while: what is missing is embedded when it is back.
                    log.warning("could not embed memories (will retry in %.0f s): %s", RETRY_S, exc)
                    timeout = RETRY_S
                if not self._stop.is_set():
                    await anyio.to_thread.run_sync(self._wake.wait, timeout)
        finally:
            await store.close()

    async def _until_quiet(self) -> None:
        """Wait until no request came for QUIET_S, or for MAX_DEFER_S at most."""
        deadline = time.monotonic() + MAX_DEFER_S
        while not self._stop.is_set():
            wait = min(self._busy_at + QUIET_S, deadline) - time.monotonic()
            if wait <= 0:
                return
            await anyio.to_thread.run_sync(self._stop.wait, wait)  # returns at once on stop()


class SemanticIndexer:
    """What AgentSelf holds when hybrid recall is on: it embeds queries and memories; the recall
    engine (soul_mcp.recall) does the searching."""

    def __init__(
        self,
        make_embedder: Callable[[bool], Embedder],
        open_store: Callable[[], Awaitable[EmbeddingStore]] | None = None,
    ) -> None:
        # make_embedder(background): False for the queries' embedder, True for the indexer's.
        self._make_embedder = make_embedder
        self.embedder = make_embedder(False)  # for queries; loads its model on first use
        self.model = self.embedder.name
        self._open_store = open_store
        self.indexer: BackgroundIndexer | None = None
        # Recent queries' vectors: paging through results or a repeated wake-up focus asks the same
        # question again, and embedding it is most of a hybrid recall's time (10 to 25 ms).
        self._recent: OrderedDict[str, Any] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: Semantic, open_store: Callable[[], Awaitable[EmbeddingStore]] | None = None
    ) -> SemanticIndexer | None:
        if embedder_for(settings) is None:
            return None

        def make_embedder(background: bool) -> Embedder:  # one per user: the queries' and the indexer's
            embedder = embedder_for(settings, background)
            assert embedder is not None
            return embedder

        return cls(make_embedder, open_store)

    def start_background(self) -> None:
        """Let `kick()` run the background indexer (the server does; the CLI embeds in `reindex`)."""
        if self._open_store is not None and self.indexer is None:
            self.indexer = BackgroundIndexer(self._open_store, partial(self._make_embedder, True))

    def kick(self, everything: bool = False) -> None:
        """Memories were stored (or, `everything`, changed status): embed what is missing, in the
        background."""
        if self.indexer is not None:
            self.indexer.kick(everything)

    def start(self) -> None:
        """Kick the indexer unless it already runs: a recall does this, so the first one starts the
        backfill without every later recall sending the indexer looking again."""
        if self.indexer is not None and not self.indexer.started:
            self.indexer.kick()

    async def embed_query(self, text: str) -> Any:
        """The query's vector; None when the embedder fails (recall then uses BM25 alone)."""
        if self.indexer is not None:
            self.indexer.mark_busy()
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
            return vector
        try:
            vector = (await anyio.to_thread.run_sync(self.embedder.embed_queries, [text]))[0]
        except Exception as exc:
            log.warning("recall falls back to BM25 alone: could not embed the query: %s", exc)
            return None
        self._recent[text] = vector
        if len(self._recent) > RECENT_QUERIES:
            self._recent.popitem(last=False)
        return vector

    async def index(
        self, store: EmbeddingStore, progress: Progress | None = None, check_text: bool = False
    ) -> int:
        """Embed, in this task, every active memory that lacks an embedding (or, with `check_text`,
        whose embedded text changed); returns how many vectors were stored."""
        jobs: list[EmbeddingJob] = []
        if check_text:
            after: int | None = 0
            while after is not None:
                found, after = await store.stale_embeddings(self.model, after, 500)
                jobs += found
        else:
            jobs, _ = await store.pending_embeddings(self.model, 10**9)
            jobs.reverse()  # oldest first: the order they were stored in
        done = 0
        if progress:
            progress(0, len(jobs))
        for start in range(0, len(jobs), BATCH):
            batch = jobs[start : start + BATCH]
            done += await embed_jobs(store, self.embedder, batch)
            if progress:
                progress(min(start + BATCH, len(jobs)), len(jobs))
        return done

    async def close(self) -> None:
        if self.indexer is not None:
            await anyio.to_thread.run_sync(self.indexer.stop)
