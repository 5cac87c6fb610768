"""`Recall`: the ranking engine's entry point, one per opened self, over any `RecallSource`."""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio

from soul_mcp.recall.hybrid import rank_hybrid
from soul_mcp.recall.index import RecallIndex
from soul_mcp.recall.lending import LENDERS, NEIGHBOUR_WEIGHT
from soul_mcp.recall.query import RANKED_MAX, SearchHit, SearchQuery
from soul_mcp.recall.source import RecallSource
from soul_mcp.recall.vectors import VectorCaches

log = logging.getLogger(__name__)

# The preload waits this long after the database opens (or until the first text search), so that
# the start's own requests (initialize, tools/list) are answered before numpy's import competes.
PRELOAD_AFTER = 0.1

# The ranking is computed over the same CANDIDATES best matches whatever page is asked for, so that
# pages never overlap; paging ends there (recall says so), and a narrower query or a filter reaches
# the rest.
CANDIDATES = RANKED_MAX


class Recall:
    """Ranks the memories of `source` for a query: BM25 over the words, neighbour lending, and with
    a query vector hybrid fusion. What it keeps in memory (RecallIndex, VectorCaches) is loaded at
    the first text search and kept in step with the source's change log."""

    # How many matches a text search ranks; per engine, so that a test can page past it on a small
    # database.
    candidates: int = CANDIDATES

    def __init__(self, source: RecallSource) -> None:
        self.source = source
        self._index: RecallIndex | None = None
        self._making_index = threading.Lock()
        self._preloading: threading.Thread | None = None
        self._preload_now = threading.Event()
        self.vectors = VectorCaches(source)

    @property
    def index(self) -> RecallIndex:
        # Made at the first text search, not before: it loads numpy, which a server listing its
        # tools never needs.
        if self._index is None:
            with self._making_index:  # the preload thread may be making it
                if self._index is None:
                    self._index = RecallIndex(self.source)
        return self._index

    def preload(self) -> None:
        """Have a thread load numpy and read the index's snapshot now, so that the first text search
        finds them ready (a server calls this once its database is open)."""
        if self._preloading is None:
            self._preloading = threading.Thread(
                target=self._preload, name="soul-mcp-recall-preload", daemon=True
            )
            self._preloading.start()

    def _preload(self) -> None:
        self._preload_now.wait(PRELOAD_AFTER)
        try:
            # numpy, and the part of it that np.unique loads at its first call (~10 ms).
            import numpy.ma  # noqa: F401

            self.index.read_ahead()
        except Exception:  # the first search does it all itself then
            log.exception("recall preload failed")

    async def close(self) -> None:
        if self._preloading is not None:
            self._preload_now.set()
            await anyio.to_thread.run_sync(self._preloading.join)
        if self._index is not None:
            # What this process fetched is kept for the next one (a session may end before the
            # prefill does).
            await anyio.to_thread.run_sync(self._index.stop_prefill)
            await self._index.save_if_due(closing=True)
            await anyio.to_thread.run_sync(self._index.join_saving)
        await self.vectors.close()  # the file of vectors, for the next process (recall/vectors.py)

    async def search(self, query: SearchQuery) -> list[SearchHit]:
        """Active memories matching the query, best first (by `query.order` without terms)."""
        if query.terms:
            return await self._search_text(query)
        return [SearchHit(memory, 0.0) for memory in await self.source.ordered_memories(query)]

    async def _search_text(self, query: SearchQuery) -> list[SearchHit]:
        if self._preloading is not None and self._preloading.is_alive():
            self._preload_now.set()
            await anyio.to_thread.run_sync(self._preloading.join)
        index = self.index
        with index.recalling():
            return await self._rank_text(query, index)

    async def _rank_text(self, query: SearchQuery, index: RecallIndex) -> list[SearchHit]:
        # 1. The best full-text matches, the same pool of `candidates` whatever page is asked for.
        async with index.lock:
            await index.refresh()
            words = await index.postings(query.terms)
            filters = await self._filters(query)
            rowids, scores = index.rank(words, self.candidates, **filters)
            if query.vector is None:
                # 2. Their neighbours in storage order, when stored in the same context.
                ranked, totals, lenders = index.with_neighbours(
                    rowids, scores, LENDERS, NEIGHBOUR_WEIGHT, **filters
                )
        # Once the first text search has ranked (not before: the thread would slow it down), the
        # commonest words are fetched ahead.
        index.start_prefill()
        await index.save_if_due()
        if query.vector is not None:  # hybrid recall, when there are embeddings by its model
            hybrid = await rank_hybrid(query, index, self.vectors, rowids, scores, filters)
            if hybrid is not None:
                return await self._hits(*hybrid)
            async with index.lock:
                ranked, totals, lenders = index.with_neighbours(
                    rowids, scores, LENDERS, NEIGHBOUR_WEIGHT, **filters
                )
        page = slice(query.offset, query.offset + query.limit)
        return await self._hits(ranked[page].tolist(), totals[page].tolist(), lenders[page].tolist())

    async def _hits(self, shown: list[int], scores: list[float], lenders: list[int]) -> list[SearchHit]:
        """The page of a ranking: the memories at `shown` rowids with their `scores`, and for each
        the rowid of the neighbour that lent it the most (0 for none), whose id goes in context_of."""
        if not shown:
            return []
        score_of = dict(zip(shown, scores, strict=True))
        lent_by = {r: lent for r, lent in zip(shown, lenders, strict=True) if lent}
        memories = await self.source.memories_at(shown + list(lent_by.values()))
        return [
            SearchHit(
                memories[r], score_of[r], memories[lent_by[r]].id if lent_by.get(r) in memories else None
            )
            for r in shown
            if r in memories  # a memory purged since the index was read is left out
        ]

    async def _filters(self, query: SearchQuery) -> dict[str, Any]:
        """The query's filters in the form RecallIndex.keep takes them."""
        import numpy as np

        filters: dict[str, Any] = {"since": query.since, "until": query.until, "kind": query.kind}
        if query.tags:
            filters["within"] = await self.index.tagged(query.tags)
        if query.exclude_ids:
            filters["without"] = np.array(await self.source.rowids_of(query.exclude_ids), dtype=np.int64)
        return filters
