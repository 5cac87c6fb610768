"""The learned ranker: a logistic regression that re-scores every candidate of a text recall.

The candidates are what BM25 (and, in hybrid recall, the vector search) found, with the neighbours
they lend to (lending.py); `Pool` holds them with the parts of their score. `features` turns a pool
and the query into one row of numbers per candidate (FEATURES names them); the model's weights,
fitted by bench/train_ranker.py on LoCoMo's development split, turn a row into a score. The model
file, ranker.json beside this module, holds one set of weights for BM25 alone and one for hybrid
recall; it is read at the first text recall and checked (its features must be these, its numbers
finite). A file that fails the check is logged and recall ranks by the fused score (the old
fusion, which is also the first feature), so a damaged file never stops recall.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soul_mcp.recall.query_facts import QueryFacts

if TYPE_CHECKING:
    import numpy as np

    from soul_mcp.recall.bm25 import Postings

log = logging.getLogger(__name__)

RANKER_FILE = Path(__file__).with_name("ranker.json")
MODEL_VERSION = 1

FEATURES = (
    "fused",  # the old fusion's total (own score + neighbours' loans) / the pool's best
    "fused_rank",  # 1 / (1 + its place in the old fusion's order)
    "fused_log_rank",  # 1 - log(1 + place) / log(1 + RANKED_MAX), the same place on a gentler scale
    "bm25",  # own BM25 / the query's best
    "bm25_rank",  # 1 / (1 + its place among the BM25 matches); 0 when not one
    "bm25_log_rank",  # as fused_log_rank, among the BM25 matches; 0 when not one
    "dense",  # max(0, (cos - mean cos) / (best cos - mean cos)); 0 without a vector
    "dense_rank",  # 1 / (1 + its place by similarity in the pool); 0 without a vector
    "dense_log_rank",  # as fused_log_rank, by similarity; 0 without a vector
    "no_vector",  # hybrid recall, and the memory has no embedding yet
    "neighbour_only",  # here only as a neighbour of a match
    "lent",  # the part of the fused total lent by neighbours / the pool's best
    "previous_own",  # the own score of the memory before it in the same context / the best own
    "next_own",  # the same for the memory after it: an answer follows the question that matched
    "coverage",  # the share of the query words' idf that the memory holds
    "held",  # the share of the query words it holds
    "previous_coverage",  # the coverage of the memory before it in the same context
    "next_coverage",  # the coverage of the memory after it in the same context
    "previous_dense",  # the dense part of the memory before it in the same context
    "next_dense",  # the dense part of the memory after it in the same context
    "name_match",  # the share of the query's names it holds (0: the query names no one)
    "name_missing",  # the query names someone and it holds none of the names
    "date_match",  # its date falls in a period the query names
    "date_miss",  # the query names a period and its date is outside every one
    "recency",  # its date's place in the pool, 0 oldest to 1 newest
    "quoted",  # it holds every word of one of the query's quoted phrases
    "when_dated",  # the query asks "when" and it holds a time word ("yesterday", "last week", "ago")
)
# The words that date an event in a memory's text, for "when" questions (query_facts.form).
TIME_WORDS = (
    "yesterday",
    "today",
    "tomorrow",
    "tonight",
    "last",
    "next",
    "ago",
    "week",
    "weekend",
    "month",
    "year",
    "recently",
    "since",
)
# The deepest place log ranks are scaled by (query.RANKED_MAX; a pool may hold its neighbours too).
DEEPEST = 1000


@dataclass
class Pool:
    """The candidates of one text recall, by ascending rowid, with the parts of their score."""

    rowids: np.ndarray  # int64, ascending
    fused: np.ndarray  # own + lent (lending.lend)
    own: np.ndarray  # the fused score before lending
    lender: np.ndarray  # the neighbour that lent the most (0 for none): context_of
    candidate: np.ndarray  # bool: found by BM25 or the vector search itself
    bm25: np.ndarray  # own BM25 / the best
    bm25_rank: np.ndarray  # place among the BM25 matches, from 0; -1 when not one
    dense: np.ndarray | None  # the vector part, scaled; None: BM25 alone
    similarity: np.ndarray | None  # the raw cosine (-inf without a vector); None: BM25 alone


@dataclass(frozen=True)
class Model:
    """A linear score over FEATURES and the products of some pairs of them (their interactions:
    a neighbour's match counts more when the memory itself holds few of the query's words)."""

    weights: tuple[float, ...]  # one per feature
    pairs: tuple[tuple[int, int], ...] = ()  # indexes into FEATURES
    pair_weights: tuple[float, ...] = ()
    bias: float = 0.0


def design(rows: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The rows with the products of `pairs` of their columns after them: what a model weighs."""
    import numpy as np

    if not pairs:
        return rows
    first, second = (np.array(side, dtype=np.int64) for side in zip(*pairs, strict=True))
    return np.hstack([rows, rows[:, first] * rows[:, second]])


def _rank_of(values: np.ndarray) -> np.ndarray:
    """Each value's place when sorted descending, from 0 (ties share the lowest place)."""
    import numpy as np

    order = np.argsort(-values, kind="stable")
    place = np.empty(len(values), dtype=np.int64)
    place[order] = np.arange(len(values))
    return place


def _holding(rowids: np.ndarray, postings: np.ndarray) -> np.ndarray:
    """Which of the ascending `rowids` are in the ascending `postings`: the shorter one is looked
    up in the longer (a common word's postings hold a third of the memories, a rare one's a few)."""
    import numpy as np

    if len(postings) >= len(rowids):
        at = np.minimum(np.searchsorted(postings, rowids), len(postings) - 1)
        return postings[at] == rowids
    out = np.zeros(len(rowids), dtype=bool)
    if len(rowids):
        at = np.minimum(np.searchsorted(rowids, postings), len(rowids) - 1)
        out[at[rowids[at] == postings]] = True
    return out


def features(
    pool: Pool,
    words: list[Postings],
    idfs: list[float],
    name_words: list[int],
    quoted_words: list[list[int]],
    when: np.ndarray,
    context: np.ndarray,
    facts: QueryFacts,
    time_words: Sequence[Postings] = (),
) -> np.ndarray:
    """One row of FEATURES per memory of `pool`. `words` are the query words' postings with their
    `idfs`; `name_words` and `quoted_words` index into them; `when` and `context` are the pool's
    memories' dates (filters.moments) and context numbers; `time_words` the postings of TIME_WORDS
    when the query asks "when"."""
    import numpy as np

    n = len(pool.rowids)
    out = np.zeros((n, len(FEATURES)))
    if n == 0:
        return out
    column = {name: i for i, name in enumerate(FEATURES)}

    def log_rank(place: np.ndarray) -> np.ndarray:
        return np.where(place >= 0, 1.0 - np.log1p(np.maximum(place, 0)) / np.log1p(DEEPEST), 0.0)

    best = float(pool.fused.max()) or 1.0
    out[:, column["fused"]] = pool.fused / best
    place = np.empty(n, dtype=np.int64)
    place[np.lexsort((-pool.rowids, -pool.fused))] = np.arange(n)
    out[:, column["fused_rank"]] = 1.0 / (1.0 + place)
    out[:, column["fused_log_rank"]] = log_rank(place)
    out[:, column["bm25"]] = pool.bm25
    out[:, column["bm25_rank"]] = np.where(pool.bm25_rank >= 0, 1.0 / (1.0 + np.abs(pool.bm25_rank)), 0.0)
    out[:, column["bm25_log_rank"]] = log_rank(pool.bm25_rank)
    if pool.dense is not None and pool.similarity is not None:
        has = np.isfinite(pool.similarity)
        by_similarity = np.where(has, _rank_of(pool.similarity), -1)
        out[:, column["dense"]] = np.where(has, pool.dense, 0.0)
        out[:, column["dense_rank"]] = np.where(has, 1.0 / (1.0 + np.abs(by_similarity)), 0.0)
        out[:, column["dense_log_rank"]] = log_rank(by_similarity)
        out[:, column["no_vector"]] = ~has
    out[:, column["neighbour_only"]] = ~pool.candidate
    out[:, column["lent"]] = (pool.fused - pool.own) / best
    # Memories side by side in the same context: [i] is just before [i + 1].
    beside = (pool.rowids[1:] - pool.rowids[:-1] == 1) & (context[1:] == context[:-1])

    def previous(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n)
        out[1:] = np.where(beside, values[:-1], 0.0)
        return out

    def following(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n)
        out[:-1] = np.where(beside, values[1:], 0.0)
        return out

    own = pool.own / (float(pool.own.max()) or 1.0)
    out[:, column["previous_own"]] = previous(own)
    out[:, column["next_own"]] = following(own)
    dense = out[:, column["dense"]]
    out[:, column["previous_dense"]] = previous(dense)
    out[:, column["next_dense"]] = following(dense)
    held = np.zeros((len(words), n), dtype=bool)
    for i, word in enumerate(words):
        if len(word.rowids):
            held[i] = _holding(pool.rowids, np.asarray(word.rowids))
    if len(words):
        weight = np.asarray(idfs, dtype=np.float64)
        coverage = (weight @ held) / (weight.sum() or 1.0)
        out[:, column["coverage"]] = coverage
        out[:, column["held"]] = held.mean(axis=0)
        out[:, column["previous_coverage"]] = previous(coverage)
        out[:, column["next_coverage"]] = following(coverage)
    if name_words:
        share = held[name_words].mean(axis=0)
        out[:, column["name_match"]] = share
        out[:, column["name_missing"]] = share == 0
    if facts.periods:
        inside = np.zeros(n, dtype=bool)
        for start, end in facts.periods:
            inside |= (when >= start) & (when < end)
        out[:, column["date_match"]] = inside
        out[:, column["date_miss"]] = ~inside
    if n > 1:
        out[:, column["recency"]] = 1.0 - _rank_of(when.astype(np.float64)) / (n - 1)
    for word in time_words:
        if len(word.rowids):
            dated = _holding(pool.rowids, np.asarray(word.rowids))
            out[:, column["when_dated"]] = np.maximum(out[:, column["when_dated"]], dated)
    for phrase in quoted_words:
        if phrase:
            out[:, column["quoted"]] = np.maximum(out[:, column["quoted"]], held[phrase].all(axis=0))
    return out


def scores(rows: np.ndarray, model: Model) -> np.ndarray:
    """The model's score of each row (a logit: only its order and differences mean anything): the
    same as design(rows, model.pairs) @ weights, with the pairs' part as a quadratic form over the
    paired columns, which does not build a column per pair (bench/README.md has the times)."""
    import numpy as np

    paired, square = _quadratic(model)
    linear = rows @ np.asarray(model.weights) + model.bias
    if not len(paired):
        return linear
    part = rows[:, paired]
    return linear + np.einsum("ij,ij->i", part @ square, part)


@functools.lru_cache(maxsize=8)
def _quadratic(model: Model) -> tuple[np.ndarray, np.ndarray]:
    """The columns a model's pairs use, and the matrix W of their weights: the pairs' part of a
    row's score is x W xᵀ over those columns."""
    import numpy as np

    paired = np.array(sorted({i for pair in model.pairs for i in pair}), dtype=np.int64)
    at = {column: n for n, column in enumerate(paired.tolist())}
    square = np.zeros((len(paired), len(paired)))
    for (a, b), weight in zip(model.pairs, model.pair_weights, strict=True):
        square[at[a], at[b]] += weight
    return paired, square


def order(rowids: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positions of the best first; ties: the newest (highest rowid) first, as the old fusion."""
    import numpy as np

    return np.lexsort((-rowids, -score))


def _finite(values: list[Any]) -> bool:
    return all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in values)


def _model(data: Any) -> Model:
    if not isinstance(data, dict):
        raise ValueError("a model is not an object")
    weights, bias, pairs = data.get("weights"), data.get("bias", 0.0), data.get("pairs", [])
    if not isinstance(weights, list) or len(weights) != len(FEATURES):
        raise ValueError(f"a model needs {len(FEATURES)} weights")
    if not _finite([*weights, bias]):
        raise ValueError("a weight is not a finite number")
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 3 and p[0] in FEATURES and p[1] in FEATURES and _finite(p[2:])
        for p in pairs
    ):
        raise ValueError("a pair is not [feature, feature, weight]")
    return Model(
        tuple(float(w) for w in weights),
        tuple((FEATURES.index(a), FEATURES.index(b)) for a, b, _ in pairs),
        tuple(float(w) for _, _, w in pairs),
        float(bias),
    )


def read_models(path: Path) -> dict[str, Model]:
    """The models of a ranker file, checked: {"bm25": ..., "hybrid": ...}. Raises ValueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != MODEL_VERSION:
        raise ValueError(f"not a version {MODEL_VERSION} ranker file")
    if data.get("features") != list(FEATURES):
        raise ValueError("its features are not this version's (retrain: bench/train_ranker.py)")
    models = data.get("models")
    if not isinstance(models, dict) or set(models) != {"bm25", "hybrid"}:
        raise ValueError('it needs the models "bm25" and "hybrid"')
    return {name: _model(value) for name, value in models.items()}


def load_models(path: Path) -> dict[str, Model] | None:
    """The checked models of `path`, or None (logged) when the file fails the check: recall then
    ranks by the fused score."""
    try:
        return read_models(path)
    except ValueError as exc:
        log.error("recall ranker %s refused (%s): ranking by the fused score instead", path, exc)
        return None


def write_models(path: Path, models: dict[str, Model], about: dict[str, Any]) -> None:
    """Write a ranker file (bench/train_ranker.py)."""
    data = {
        "version": MODEL_VERSION,
        "features": list(FEATURES),
        "models": {
            name: {
                "weights": [round(w, 6) for w in m.weights],
                "pairs": [
                    [FEATURES[a], FEATURES[b], round(w, 6)]
                    for (a, b), w in zip(m.pairs, m.pair_weights, strict=True)
                ],
                "bias": round(m.bias, 6),
            }
            for name, m in models.items()
        },
        "about": about,
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
