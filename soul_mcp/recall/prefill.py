"""The prefill: a thread that fetches the commonest words' postings ahead of the recalls.

A word first asked for costs the store its per-memory scoring, for every memory holding it: tens of
milliseconds for a common word at 100k memories (bench/README.md). So once the index is loaded, this thread
fetches the words held by at least PREFILL_MIN memories, the commonest first, over a reader of its
own (RecallSource.blocking_reader), and hands them over; recalls go on meanwhile. A reader that can
give every common word's postings in one pass (PostgreSQL's, `common_parts`) is asked once: a
statement per word costs a store that computes the parts itself a round trip and a plan each.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

from soul_mcp.errors import StorageError
from soul_mcp.recall.bm25 import POSTINGS_KEPT, Postings, idf
from soul_mcp.recall.source import BlockingReader, Tokenizer

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Words held by at least this many memories are fetched ahead, until the postings fetched reach
# PREFILL_SHARE of POSTINGS_KEPT.
PREFILL_MIN = 50
PREFILL_SHARE = 0.8


class Prefill:
    """Fetches postings up to rowid `top` as they were with `memories` active memories; `epoch`
    is the index's when it started (what was fetched is dropped if the index moved on)."""

    def __init__(
        self,
        open_reader: Callable[[], BlockingReader],
        tokenizer: Callable[[], Tokenizer],
        top: int,
        memories: int,
        epoch: int,
        held: frozenset[str] = frozenset(),
    ) -> None:
        self._open_reader, self._tokenizer = open_reader, tokenizer
        self.top, self.memories, self.epoch = top, memories, epoch
        self.held = held  # words the index holds already (from a snapshot): not fetched again
        self.completed = False  # every word it meant to fetch was fetched
        self._done: list[tuple[str, Postings]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Set while no recall is running: the thread fetches only then, so that it never competes
        # with a recall for the CPU (a host's model leaves seconds between calls).
        self._idle = threading.Event()
        self._idle.set()
        self._recalls = 0
        self._thread = threading.Thread(target=self._run, name="soul-mcp-recall-prefill", daemon=True)
        self.fetched = 0  # words (for tests and logs)
        self._reader: BlockingReader | None = None

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        """A recall begins: no new word is fetched until every recall begun has ended."""
        with self._lock:
            self._recalls += 1
            self._idle.clear()

    def resume(self) -> None:
        with self._lock:
            self._recalls -= 1
            if self._recalls <= 0:
                self._recalls = 0
                self._idle.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._idle.set()
        # A reader in the middle of its statement over every word may take seconds: cut it short.
        cancel = getattr(self._reader, "cancel", None)
        if cancel is not None:
            cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def busy(self) -> bool:
        """Still fetching, or holding words not taken yet."""
        with self._lock:
            return self._thread.is_alive() or bool(self._done)

    def take(self) -> list[tuple[str, Postings]]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def _run(self) -> None:
        try:
            reader = self._reader = self._open_reader()
        except StorageError as exc:
            log.warning("recall prefill: %s", exc)
            return
        try:
            tokens = self._tokenizer()
            entries = 0
            # Closed before the reader: its statement over every word ends first.
            with contextlib.closing(self._words(reader)) as words:
                for term, rowids, parts in words:
                    self._idle.wait()
                    if self._stop.is_set():
                        return
                    if entries > PREFILL_SHARE * POSTINGS_KEPT:
                        break
                    # Held already, or a match of it would find another token.
                    if term in self.held or tokens.keys([term]) != [term]:
                        continue
                    if rowids is None:
                        rowids, parts = self._fetch(reader, term)
                    within = rowids <= self.top
                    rowids, parts = rowids[within], parts[within]
                    with self._lock:
                        self._done.append((term, Postings(rowids, parts, self.top, self.memories)))
                    self.fetched += 1
                    entries += len(rowids)
            self.completed = True
        except StorageError as exc:  # e.g. the file was removed: recalls fetch words themselves
            if not self._stop.is_set():
                log.warning("recall prefill stopped: %s", exc)
        finally:
            reader.close()

    def _words(self, reader: BlockingReader) -> Generator[tuple[str, np.ndarray | None, np.ndarray]]:
        """The common words, the commonest first, each with its rowids and parts when the reader
        gives them all in one pass (`common_parts`, source.py); else (word, None, empty), fetched
        one by one."""
        import numpy as np

        common_parts = getattr(reader, "common_parts", None)
        if common_parts is not None:
            yield from common_parts(PREFILL_MIN)
            return
        for term in reader.common_words(PREFILL_MIN):
            yield term, None, np.zeros(0)

    def _fetch(self, reader: BlockingReader, term: str) -> tuple[np.ndarray, np.ndarray]:
        """One word's rowids and parts."""
        import numpy as np

        word_parts = getattr(reader, "word_parts", None)  # parts already (source.py)
        rows = word_parts(term) if word_parts is not None else reader.word_scores(term)
        weight = 1.0 if word_parts is not None else idf(self.memories, len(rows))
        rowids = np.array([r for r, _ in rows], dtype=np.int64)
        parts = np.array([s for _, s in rows], dtype=np.float64) / weight
        return rowids, parts
