"""BM25 from per-word score parts: idf of the moment, and the best memories by their words' sum.

bm25 sums over a query's words, so a memory's score for a query is the sum of its words' parts. A
word's part is fetched once (RecallSource.word_scores) and kept divided by the idf it was fetched
with; ranking multiplies it by the idf of the moment (as FTS5 computes it, from the active memories
and the word's active matches), since both counts move with every write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

POSTINGS_KEPT = 3_000_000  # score parts kept in all (~48 MB): every word of 100k memories fits


def idf(memories: int, matches: int) -> float:
    """bm25's weight for a word that `matches` of `memories` hold, as FTS5 computes it."""
    # A count read a moment before a burst of writes can be below `matches`: no log of <= 0 then.
    ratio = (memories - matches + 0.5) / (matches + 0.5)
    return max(math.log(ratio), 1e-6) if ratio > 0 else 1e-6


@dataclass
class Postings:
    rowids: np.ndarray  # int64, ascending
    parts: np.ndarray  # float64, the word's score part divided by its idf: higher is better
    upto: int  # matches with a rowid up to this one are in
    memories: int  # how many memories were active when it was fetched
    matches: int = 0  # how many active memories hold it, as of `seq`
    seq: int = -1  # the index's change sequence number when `matches` was counted


class _Nothing:  # the postings of a word with no token: it matches nothing
    rowids: tuple[int, ...] = ()
    parts: tuple[float, ...] = ()


NOTHING: Any = _Nothing()


def rank(
    words: list[Postings], memories: int, top: int, keep: Callable[[np.ndarray], np.ndarray], limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `limit` best memories holding any of the words that `keep` keeps (of `memories` active
    ones, rowids up to `top`), by the sum of their words' scores: (rowids, scores), best first, ties
    by rowid (as FTS5's ORDER BY bm25, rowid)."""
    import numpy as np

    words = [w for w in words if len(w.rowids)]
    if not words:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    total = np.zeros(top + 1, dtype=np.float64)
    for word in words:  # every part is above 0, and so is every idf
        total[word.rowids] += idf(memories, word.matches) * word.parts
    matches = keep(np.flatnonzero(total > 0))
    scores = total[matches]
    if len(matches) > limit:
        best = np.argpartition(-scores, limit - 1)[:limit]
        # Those tied with the last one taken: the lowest rowids win.
        cut = scores[best].min()
        best = np.concatenate([best[scores[best] > cut], np.flatnonzero(scores == cut)])
        matches, scores = matches[best], scores[best]
    order = np.lexsort((matches, -scores))[:limit]
    return matches[order], scores[order]
