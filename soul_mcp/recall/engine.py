"""`Recall`: the ranking engine's entry point, one per opened self, over any `RecallSource`."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from soul_mcp.recall.bm25 import idf
from soul_mcp.recall.hybrid import rank_hybrid
from soul_mcp.recall.index import RecallIndex
from soul_mcp.recall.lending import LENDERS, NEIGHBOUR_WEIGHT
from soul_mcp.recall.query import RANKED_MAX, SearchHit, SearchQuery
from soul_mcp.recall.query_facts import query_facts
from soul_mcp.recall.ranker import (
    RANKER_FILE,
    TIME_WORDS,
    Model,
    Pool,
    features,
    load_models,
    order,
    scores,
)
from soul_mcp.recall.source import RecallSource
from soul_mcp.recall.vectors import VectorCaches

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# The preload waits this long after the database opens (or until the first text search), so that
# the start's own requests (initialize, tools/list) are answered before numpy's import competes.
PRELOAD_AFTER = 0.1

# The ranking is computed over the same CANDIDATES best matches whatever page is asked for, so that
# pages never overlap; paging ends there (recall says so), and a narrower query or a filter reaches
# the rest.
CANDIDATES = RANKED_MAX


class Recall:
    """Ranks the memories of `source` for a query: BM25 over the words, neighbour lending, with a
    query vector hybrid fusion, then the learned ranker over those candidates (ranker.py). What it keeps in memory (RecallIndex, VectorCaches) is loaded at
    the first text search and kept in step with the source's change log."""

    # How many matches a text search ranks; per engine, so that a test can page past it on a small
    # database.
    candidates: int = CANDIDATES
    # The learned ranker's weights (ranker.py), read at the first text search; None: rank by the
    # fused score, the model's first feature (for a test of what feeds it).
    ranker_file: Path | None = RANKER_FILE

    def __init__(self, source: RecallSource) -> None:
        self.source = source
        self._index: RecallIndex | None = None
        self._making_index = threading.Lock()
        self._preloading: threading.Thread | None = None
        self._preload_now = threading.Event()
        self.vectors = VectorCaches(source)
        self._models: dict[str, Model] | None = None

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
        import numpy as np

        pool, rows = await self._pool(query, index)
        # The model was fitted on pools where the query's words match memories; a query none of
        # whose words any memory holds (found by meaning alone) is ranked by the fused score.
        lexical = bool((pool.bm25_rank >= 0).any())
        model = self._model("bm25" if pool.dense is None else "hybrid") if lexical else None
        rank_by = scores(rows, model) if model is not None else pool.fused
        shown = order(pool.rowids, rank_by)[query.offset : query.offset + query.limit]
        # The model's score is shown as the odds against the best candidate's (1 for the best, the
        # same on every page).
        score = np.exp(rank_by - rank_by.max()) if model is not None and len(rows) else rank_by
        # Only a memory here as a neighbour says which memory lent to it (context_of).
        lenders = np.where(pool.candidate[shown], 0, pool.lender[shown])
        return await self._hits(pool.rowids[shown].tolist(), score[shown].tolist(), lenders.tolist())

    async def pool(self, query: SearchQuery) -> tuple[Pool, np.ndarray]:
        """Every candidate of a text query with its row of ranker.FEATURES, before the model scores
        them: what bench/train_ranker.py fits the model on."""
        index = self.index
        with index.recalling():
            return await self._pool(query, index)

    async def _pool(self, query: SearchQuery, index: RecallIndex) -> tuple[Pool, np.ndarray]:
        """The candidates of a text query (the same pool whatever page is asked for) and their
        features."""
        # 1. The best full-text matches.
        async with index.lock:
            await index.refresh()
            words = await index.postings(query.terms)
            filters = await self._filters(query)
            rowids, bm25 = index.rank(words, self.candidates, **filters)
        # Once the first text search has ranked (not before: the thread would slow it down), the
        # commonest words are fetched ahead.
        index.start_prefill()
        await index.save_if_due()
        pool = None
        if query.vector is not None:  # 2. hybrid recall, when there are embeddings by its model
            pool = await rank_hybrid(query, index, self.vectors, rowids, bm25, filters)
        async with index.lock:
            if pool is None:  # 2. BM25 alone: the matches and their neighbours in the same context
                pool = bm25_pool(index, rowids, bm25, filters)
            when, context = index.when[pool.rowids], index.context[pool.rowids]
            memories = index.memories
            # 3. Each candidate's features: the parts of its score, and how it fits the query's facts.
            facts = query_facts(query.text or " ".join(query.terms))
            time_words = await index.postings(TIME_WORDS) if facts.wants_time else []
        distinct: dict[int, int] = {}  # two forms of a word ("meeting", "meetings") count once
        for i, word in enumerate(words):
            distinct.setdefault(id(word), i)
        kept = list(distinct.values())
        place = {i: n for n, i in enumerate(kept)}
        unique = [words[i] for i in kept]
        idfs = [idf(memories, getattr(w, "matches", 0)) if len(w.rowids) else 0.0 for w in unique]
        terms = query.terms

        def words_of(text: str) -> list[int]:
            found = {place[distinct[id(words[i])]] for i, term in enumerate(terms) if term in text.split()}
            return sorted(found)

        names = sorted({n for name in facts.names for n in words_of(name)})
        quoted = [words_of(" ".join(re.findall(r"\w+", phrase))) for phrase in facts.quoted]
        rows = features(pool, unique, idfs, names, quoted, when, context, facts, time_words)
        return pool, rows

    def _model(self, name: str) -> Model | None:
        if self._models is None:
            self._models = (load_models(self.ranker_file) if self.ranker_file else None) or {}
        return self._models.get(name)

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


def bm25_pool(index: RecallIndex, rowids: np.ndarray, bm25: np.ndarray, filters: dict[str, Any]) -> Pool:
    """The candidates of BM25 alone: its matches (`rowids` with their `bm25` scores, best first)
    and the neighbours they lend to (lending.py)."""
    import numpy as np

    ranked, totals, lenders = index.with_neighbours(rowids, bm25, LENDERS, NEIGHBOUR_WEIGHT, **filters)
    by_rowid = np.argsort(ranked)
    found = ranked[by_rowid]
    place = np.full(len(found), -1, dtype=np.int64)
    at = np.searchsorted(found, rowids)  # every match is in the pool
    place[at] = np.arange(len(rowids))
    own = np.zeros(len(found))
    own[at] = bm25
    best = float(bm25[0]) if len(bm25) and bm25[0] > 0 else 1.0
    return Pool(
        rowids=found,
        fused=totals[by_rowid],
        own=own,
        lender=lenders[by_rowid],
        candidate=place >= 0,
        bm25=own / best,
        bm25_rank=place,
        dense=None,
        similarity=None,
    )
