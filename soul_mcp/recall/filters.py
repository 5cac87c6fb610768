"""Helpers for recall's filters over the in-process columns (RecallIndex.passing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def moments(stored: list[str]) -> np.ndarray:
    """Stored moments ("2024-05-08T14:30:00Z", see core/dates.py) as numbers in the same order:
    20240508143000."""
    import numpy as np

    text = "".join(moment[:20].ljust(20, "0") for moment in stored)  # any other form: still 20 wide
    characters = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).reshape(-1, 20)
    digits = characters[:, [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]].astype(np.int64) - ord("0")
    return digits @ (10 ** np.arange(13, -1, -1, dtype=np.int64))


def among(rowids: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `rowids` are in the ascending array `sorted_set`."""
    import numpy as np

    if not len(sorted_set):
        return np.zeros(len(rowids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, rowids), len(sorted_set) - 1)
    return sorted_set[at] == rowids
