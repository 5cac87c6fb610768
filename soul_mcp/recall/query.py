"""What recall is asked (`SearchQuery`) and what it answers (`SearchHit`), whatever the store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from soul_mcp.models import Memory

# A text search ranks at most this many matches (plus their context neighbours); pages end there.
RANKED_MAX = 500


class QueryVector:
    """The query embedded by `model`, computed when recall first asks for it: when the store holds
    embeddings by that model, similarity to it is fused with BM25 (hybrid recall).

    Lazily, and so after the full-text part rather than beside it: the embedding model runs on every
    core, and on a small machine the full-text work beside it slowed a query's embedding (see
    bench/README.md). With no embeddings by the model, the query is not embedded at all.

    The vector is a unit-length float32 numpy array (typed loosely: numpy comes with the optional
    `semantic` extra); None when it could not be computed, and recall uses BM25 alone.
    """

    def __init__(self, model: str, compute: Callable[[], Awaitable[Any]] | None = None, vector: Any = None):
        self.model = model
        self._compute = compute
        self._vector = vector
        self._lock = anyio.Lock()

    async def get(self) -> Any:
        async with self._lock:  # two tasks asking at once get one computation
            if self._compute is not None:
                compute, self._compute = self._compute, None
                self._vector = await compute()
        return self._vector


@dataclass(frozen=True)
class SearchQuery:
    """What recall is asked. `terms` empty means: list by `order` without text matching."""

    terms: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # a memory must carry every one of them
    kind: str | None = None
    since: str | None = None  # inclusive, UTC ISO string comparable as text
    until: str | None = None  # exclusive
    order: Literal["relevance", "recent", "importance"] = "relevance"
    offset: int = 0
    limit: int = 10
    exclude_ids: tuple[str, ...] = field(default=())
    vector: QueryVector | None = None  # with terms: hybrid recall when the store has such embeddings
    # The query as typed, whose names, times and question form the ranker reads (query_facts.py);
    # empty: the terms stand for it.
    text: str = ""


@dataclass(frozen=True)
class SearchHit:
    memory: Memory
    score: float  # higher is better; 0 when listing by time
    context_of: str | None = None  # set when it is here as the neighbour of a memory that matched
