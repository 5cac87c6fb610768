"""Hybrid recall: BM25 fused with exact vector search.

For every candidate (the BM25 matches and the DENSE_CANDIDATES most similar memories that pass the
filters):
    own = (bm25 / best bm25)² + DENSE_WEIGHT * max(0, (cos - mean cos) / (best cos - mean cos))²
where mean cos is over all embedded memories, so an average (or less similar) memory adds nothing
and the most similar one adds DENSE_WEIGHT. Squaring each part, scaled to [0, 1], matters because
both scorers bunch: OR-ed query words give many memories 0.3 to 0.7 of the best BM25 score, and e5's
cosines sit in a narrow band; added linearly, a memory middling on both (0.7 + 0.5 x 0.7) beat the
clear match of one (1.0). Squared, it does not (0.74). Below-average similarity is no evidence
against a lexical match, hence the floor at 0. Then, as in BM25-only recall, each memory adds
NEIGHBOUR_WEIGHT of the `own` score of its neighbours in the same context (lending.py). A memory
without a (current) embedding gets no dense part. Filters and contexts come from the recall index,
so a hybrid recall reads no memory rows but the page it returns. The measurements behind these
choices (LoCoMo sweeps of exponents, weights and candidates; reciprocal rank fusion) are in
bench/README.md.

This total is no longer the order itself: with the parts it is made of, it is what the learned
ranker (ranker.py) re-scores every candidate from; it ranks alone when the model cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soul_mcp.recall.lending import NEIGHBOUR_WEIGHT, lend
from soul_mcp.recall.query import SearchQuery
from soul_mcp.recall.ranker import Pool
from soul_mcp.recall.vectors import VectorCaches, most_similar, slots_of

if TYPE_CHECKING:
    import numpy as np

    from soul_mcp.recall.index import RecallIndex

DENSE_WEIGHT = 0.5
# How many of the most similar memories (among those that pass the filters) join the BM25 matches.
DENSE_CANDIDATES = 100
# With filters that at most this many memories pass, only their vectors are multiplied with the
# query; otherwise all are, and the others set aside. A memory's vector is one row, so gathering a
# few is cheaper than the product with all (bench/README.md).
GATHER_MAX = 5_000
# Neighbours are looked up for the best candidates only: only they can lift a neighbour into a page.
HYBRID_LENDERS = 100


async def rank_hybrid(
    query: SearchQuery,
    index: RecallIndex,
    caches: VectorCaches,
    rowids: np.ndarray,
    scores: np.ndarray,
    filters: dict[str, Any],
) -> Pool | None:
    """The candidates of the hybrid ranking of a text query whose BM25 matches are `rowids` with
    `scores` (best first, from RecallIndex.rank) under `filters` (RecallIndex.keep's), with the parts
    of their scores, for the ranker (ranker.py). None when the query has no vector or no memory has
    an embedding by its model: then BM25 ranks alone."""
    import numpy as np

    assert query.vector is not None
    cache = await caches.current(query.vector.model, index)
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
    # 3. Every memory found lends to its neighbours in the same context (lending.lend).
    total, lender = lend(
        receivers, own(receivers), context, np.ones(len(receivers), dtype=bool), NEIGHBOUR_WEIGHT
    )
    kept = np.flatnonzero(total > 0)
    found = receivers[kept]
    has, at_slots = slots_of(found, slot_of, owner)
    similarity = np.full(len(found), -np.inf)
    similarity[has] = sims[at_slots]
    place = np.full(len(found), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(lexical_rowids, found), max(len(lexical_rowids) - 1, 0))
    if len(lexical_rowids):
        matched = lexical_rowids[at] == found
        place[matched] = by_rowid[at[matched]]  # rowids are best first: the index is the place
    return Pool(
        rowids=found,
        fused=total[kept],
        own=own(found),
        lender=lender[kept],
        candidate=np.isin(found, candidates),
        bm25=np.where(place >= 0, scores[np.maximum(place, 0)] / (best_bm25 or 1.0), 0.0)
        if len(scores)
        else np.zeros(len(found)),
        bm25_rank=place,
        dense=np.where(has, np.maximum((similarity - mean) / spread, 0.0), 0.0),
        similarity=similarity,
    )
