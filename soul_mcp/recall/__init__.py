"""The recall engine: ranks memories for a query, whatever store holds them.

A store hands it data through `RecallSource` (source.py); the engine does every part of ranking,
so that all stores rank identically. It imports no database driver.

    query.py     SearchQuery, SearchHit, QueryVector, RANKED_MAX: what recall is asked and answers
    source.py    RecallSource: what the engine needs from a store (and BlockingReader, Tokenizer)
    engine.py    Recall: the entry point; text ranking, pages, hits
    index.py     RecallIndex: the memories' columns and words' postings, in step with the change log
    prefill.py   Prefill: a thread fetching the commonest words' postings ahead
    snapshot.py  read_snapshot, write_snapshot: the index as a checked file beside the data
    bm25.py      idf, Postings, rank: BM25 from per-word score parts
    filters.py   moments, among: helpers of the index's filters
    lending.py   neighbour lending (NEIGHBOUR_WEIGHT)
    vectors.py   VectorCache(s): one model's vectors in memory, exact similarity search
    hybrid.py    rank_hybrid: BM25 fused with vector similarity
    query_facts.py  query_facts: names, times, question form and quotes of a query
    ranker.py    the learned ranker: candidates' features, the model (ranker.json), scores
"""

from soul_mcp.recall.engine import Recall
from soul_mcp.recall.query import RANKED_MAX, QueryVector, SearchHit, SearchQuery
from soul_mcp.recall.source import RecallSource

__all__ = ["RANKED_MAX", "QueryVector", "Recall", "RecallSource", "SearchHit", "SearchQuery"]
