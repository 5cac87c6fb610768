"""Neighbour lending: a memory that matched shares part of its score with the memories stored just
before and after it in the same context (same author, session and day).

A question and its answer, a decision and its reason are stored side by side, and often only one
of them holds the words of the query (bench/README.md has the LoCoMo figures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

NEIGHBOUR_WEIGHT = 0.5
# Only the best matches can lift a neighbour into a page, so only theirs are looked up.
LENDERS = 50


def lend(
    rowids: np.ndarray, own: np.ndarray, context: np.ndarray, candidate: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lending over memories given by ascending `rowids` with their `own` scores and
    `context` numbers; only `candidate` memories lend. Returns each memory's total, and the rowid of
    the neighbour that lent it the most (0 when none lent)."""
    import numpy as np

    beside = (rowids[1:] - rowids[:-1] == 1) & (context[1:] == context[:-1])
    from_previous = np.zeros(len(rowids))
    from_next = np.zeros(len(rowids))
    from_previous[1:] = np.where(beside & candidate[:-1], weight * own[:-1], 0.0)
    from_next[:-1] = np.where(beside & candidate[1:], weight * own[1:], 0.0)
    total = own + from_previous + from_next
    # The previous one wins a tie, and a neighbour that lends nothing is no lender.
    lender = np.where(from_next > np.maximum(from_previous, 0.0), rowids + 1, rowids - 1)
    lender[(from_previous <= 0) & (from_next <= 0)] = 0
    return total, lender


def with_neighbours(
    rowids: np.ndarray,
    scores: np.ndarray,
    lenders: int,
    weight: float,
    keep: Callable[[np.ndarray], np.ndarray],
    context: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour lending over a ranking (from bm25.rank): the best `lenders` lend to their
    neighbours that `keep` keeps (the filters), and any two matches side by side lend to each other.
    `context` is every memory's context number, by rowid. Returns every match and every neighbour
    lent to, best first (ties: the newest first): their rowids, totals, and the rowid of the
    neighbour that lent a neighbour the most (0 for a match)."""
    import numpy as np

    near = (rowids[:lenders, None] + np.array([-1, 1])).ravel()
    receivers = keep(np.union1d(rowids, near))
    at = np.searchsorted(receivers, rowids)
    own = np.zeros(len(receivers))
    own[at] = scores
    candidate = np.zeros(len(receivers), dtype=bool)
    candidate[at] = True
    total, lender = lend(receivers, own, context[receivers], candidate, weight)
    # A match keeps its place with nothing lent (a bm25 score may be 0); a neighbour needs a loan.
    kept = np.flatnonzero(candidate | (total > 0))
    order = kept[np.lexsort((-receivers[kept], -total[kept]))]
    return receivers[order], total[order], np.where(candidate[order], 0, lender[order])
