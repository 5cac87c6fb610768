"""What full-text recall needs to rank, held in memory per process, kept true by a change log.

Why. FTS5's bm25() costs about a microsecond for every memory a query word is in, and at 100k
memories a common word is in thousands: ranking in SQL took 5 to 15 ms a recall. Here each query
word's part of the score is fetched from FTS5 once (bm25 sums over a query's words, so a memory's
score for a query is the sum of its words' parts) and kept; ranking is then a few numpy operations
over arrays indexed by rowid: about a millisecond at 100k memories (bench/latency.py).

What is held:
- per memory, by rowid: whether it is active (in recall), occurred_at, kind, and its context: author,
  session and day, the neighbourhood recall lends scores within (see sqlite.NEIGHBOUR_WEIGHT);
- per word seen lately: the rowids of the memories holding it and the word's part of their score
  (-bm25 of a MATCH of that word alone, with the store's column weights), up to POSTINGS_KEPT entries.

How it stays true while other connections and processes write: schema migration 5 logs every
inserted, status-changed and deleted memory in `memory_changes`. Each recall first reads the log's
last sequence number (one index lookup); when it moved, the logged rows are read again. New
memories reach a word's postings by fetching its matches above the rowid it was fetched up to. A
memory that comes back (restored, or a purged rowid given to a new memory) may hold any word, so all
postings are dropped and fetched again as recalls ask for them. A memory that leaves recall stays
in the postings but is masked as inactive.

A word first asked for costs its bm25() in SQL, about 1.5 µs a memory holding it: ~25 ms for a word
in a quarter of 100k memories. So once loaded, the index fetches the commonest words in a thread
of its own (its own read-only connection) and hands them over; recalls go on meanwhile.

bm25 weighs a word by idf, from how many memories there are and how many hold the word; both move
with every write, and a word's weight moves most when it is held by about half the memories. So what
is kept for a word is its score divided by the idf it was fetched with, and recall multiplies by the
idf of the moment (as FTS5 computes it, from the active memories and the word's active matches).
What is left, the average memory length in bm25's length norm, moves slowly: a word is fetched again
once the number of memories has moved by more than STALE_SHARE since.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]

# The tokenizer of memories_fts (schema migration 1).
TOKENIZE = "porter unicode61 remove_diacritics 2"
# bm25 column weights: content, tags, about (kind and date words).
BM25 = "bm25(memories_fts, 1.0, 0.5, 0.5)"
POSTINGS_KEPT = 3_000_000  # ~48 MB: every word of 100k memories fits
STALE_SHARE = 0.05
ROWS_PER_QUERY = 800  # rowids per IN (...): SQLite before 3.32 allows 999 variables in all
WORDS_PER_QUERY = 50
# Words held by at least this many memories are fetched ahead by the prefill thread, until the
# postings it fetched reach PREFILL_SHARE of POSTINGS_KEPT.
PREFILL_MIN = 50
PREFILL_SHARE = 0.8
# More changed memories than this at once: the columns are read again whole.
RELOAD_ABOVE = 20_000
CHANGED_KEPT = 100_000  # the change feed for the vector caches (changes_since)


def idf(memories: int, matches: int) -> float:
    """bm25's weight for a word that `matches` of `memories` hold, as FTS5 computes it."""
    # A count read a moment before a burst of writes can be below `matches`: no log of <= 0 then.
    ratio = (memories - matches + 0.5) / (matches + 0.5)
    return max(math.log(ratio), 1e-6) if ratio > 0 else 1e-6


@dataclass
class Postings:
    rowids: np.ndarray  # int64, ascending
    parts: np.ndarray  # float64, -bm25 of the word alone divided by its idf: higher is better
    upto: int  # matches with a rowid up to this one are in
    memories: int  # how many memories were active when it was fetched
    matches: int = 0  # how many active memories hold it, as of `seq`
    seq: int = -1  # the index's change sequence number when `matches` was counted


class _Nothing:  # the postings of a word with no token: it matches nothing
    rowids: tuple[int, ...] = ()
    parts: tuple[float, ...] = ()


NOTHING: Any = _Nothing()


class Tokens:
    """The tokens FTS5 makes of words, from a tokenizer like the index's in a memory database."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"CREATE VIRTUAL TABLE words USING fts5 (word, tokenize = '{TOKENIZE}')")
        self._db.execute("CREATE VIRTUAL TABLE tokens USING fts5vocab (words, instance)")
        self._known: dict[str, str] = {}

    def keys(self, words: Sequence[str]) -> list[str]:
        """Each word's tokens, joined by spaces ("" when it has none)."""
        todo = [w for w in dict.fromkeys(words) if w not in self._known]
        if todo:
            if len(self._known) > 100_000:
                self._known.clear()
            self._db.executemany("INSERT INTO words (rowid, word) VALUES (?, ?)", list(enumerate(todo, 1)))
            found: dict[int, list[str]] = {}
            for doc, token in self._db.execute("SELECT doc, term FROM tokens ORDER BY doc, offset"):
                found.setdefault(doc, []).append(token)
            self._db.execute("DELETE FROM words")
            for n, word in enumerate(todo, 1):
                self._known[word] = " ".join(found.get(n, []))
        return [self._known[w] for w in words]


class RecallIndex:
    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.epoch = 0  # moves when every word's postings are dropped
        self._prefill: Prefill | None = None
        self.tokens = Tokens()
        # Rowids of memories that changed after they were stored (status, purge): a feed for what
        # keeps things per memory elsewhere (the vector caches), read with changes_since.
        self.changed: list[int] = []
        self.changed_start = 0
        self._clear()

    def _clear(self) -> None:
        """Forget everything read from the database: the next refresh reads it whole."""
        import numpy as np

        self.loaded = False
        self.seq = 0  # the last memory_changes entry applied
        self.top = 0  # the highest rowid known
        self.memories = 0  # active memories
        self.active = np.zeros(0, dtype=bool)
        self.when = np.zeros(0, dtype=np.int64)  # occurred_at as YYYYMMDDHHMMSS (see _moments)
        self.kind = np.zeros(0, dtype=np.int16)
        self.context = np.zeros(0, dtype=np.int64)
        self.memory = np.zeros(0, dtype=np.int64)  # a hash of the memory's id
        self.kinds: dict[str, int] = {}
        self.words: OrderedDict[str, Postings] = OrderedDict()  # least recently used first
        self.kept = 0
        self.tags: dict[str, Postings] = {}  # tag -> its memories (scores unused)
        self.epoch += 1
        # Anything may have changed: followers of the feed start over.
        self.changed_start += len(self.changed) + 1
        self.changed = []

    # Keeping up with the database -----------------------------------------------------------

    async def refresh(self, fetch: Fetch) -> None:
        """Apply what was written since the last call, by this process or any other."""
        ((seq,),) = await fetch("SELECT coalesce(max(seq), 0) FROM memory_changes", ())
        if not self.loaded:
            rows = await fetch(
                "SELECT rowid, status = 'active', occurred_at, kind, author, session_id, id FROM memories", ()
            )
            self._grow(max((r[0] for r in rows), default=0))
            self._set(rows)
            self.seq, self.loaded = seq, True
            return
        self._take_prefilled()
        if seq == self.seq:
            return
        changed = [
            r
            for (r,) in await fetch(
                "SELECT DISTINCT memory_rowid FROM memory_changes WHERE seq > ? AND seq <= ?", (self.seq, seq)
            )
        ]
        if len(changed) > RELOAD_ABOVE:  # e.g. another process imported a workspace: read it all
            self._clear()
            await self.refresh(fetch)
            return
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(changed), ROWS_PER_QUERY):
            chunk = changed[start : start + ROWS_PER_QUERY]
            rows += await fetch(
                "SELECT rowid, status = 'active', occurred_at, kind, author, session_id, id FROM memories "
                f"WHERE rowid IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
        top_before = self.top
        present = {r[0] for r in rows}
        self._grow(max([*present, top_before]))
        # A memory active now that was not before (or another memory, at the rowid of a purged one),
        # at a rowid the postings may already have covered, may hold any word: the postings are
        # fetched again.
        back = [
            r[0]
            for r in rows
            if r[1] and r[0] <= top_before and (not self.active[r[0]] or self.memory[r[0]] != hash(r[6]))
        ]
        gone = [r for r in changed if r not in present and r <= self.top]
        self._set(rows)
        if gone:
            self.memories -= int(self.active[gone].sum())
            self.active[gone] = False
        if back:
            self.words.clear()
            self.tags.clear()
            self.kept = 0
            self.epoch += 1
        # Memories that were there before and changed (status, or purged): what else keeps things
        # per memory (the vector caches) looks at them again.
        self.changed += [r for r in changed if r <= top_before]
        if len(self.changed) > CHANGED_KEPT:
            self.changed_start += len(self.changed)
            self.changed = []
        self.seq = seq

    def changes_since(self, position: int) -> tuple[list[int] | None, int]:
        """The rowids of memories that changed since `position` of this feed (None when that is
        too far back: start over), and the position to ask from next time."""
        end = self.changed_start + len(self.changed)
        if position < self.changed_start:
            return None, end
        return self.changed[position - self.changed_start :], end

    def _grow(self, top: int) -> None:
        import numpy as np

        self.top = max(self.top, top)
        size = len(self.active)
        if self.top < size:
            return
        capacity = max(self.top + 1, 2 * size, 1024)
        for name in ("active", "when", "kind", "context", "memory"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[:size] = old
            setattr(self, name, new)

    def _set(self, rows: list[tuple[Any, ...]]) -> None:
        import numpy as np

        if not rows:
            return
        rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        active = np.fromiter((bool(r[1]) for r in rows), dtype=bool, count=len(rows))
        self.memories += int(active.sum()) - int(self.active[rowids].sum())
        self.active[rowids] = active
        self.when[rowids] = _moments([r[2] for r in rows])
        self.kind[rowids] = [self.kinds.setdefault(r[3], len(self.kinds)) for r in rows]
        # Same author, session and day: the same context (a 64-bit hash; a collision would at
        # worst let two unrelated memories lend each other a part of their score).
        self.context[rowids] = [hash((r[4], r[5], r[2][:10])) for r in rows]
        self.memory[rowids] = [hash(r[6]) for r in rows]

    # Words ------------------------------------------------------------------------------------

    async def postings(self, fetch: Fetch, terms: Sequence[str]) -> list[Postings]:
        """Each query word's postings, fetched or brought up to date as needed. Words are kept by
        the token FTS5 makes of them ("meetings" and "meeting" are both "meet"), so that the
        prefill's words serve every form of them."""
        keys = self.tokens.keys(terms)
        todo: dict[str, tuple[str, int]] = {}  # key -> (word to MATCH, fetch matches above this rowid)
        for term, key in zip(terms, keys, strict=True):
            have = self.words.get(key)
            if not key or key in todo or (have is not None and have.seq == self.seq):
                continue
            if have is None or abs(self.memories - have.memories) > STALE_SHARE * have.memories:
                todo[key] = (term, 0)
            elif have.upto < self.top:
                todo[key] = (term, have.upto)
            else:
                have.matches, have.seq = int(self.active[have.rowids].sum()), self.seq
        await self._fetch(fetch, todo)
        wanted = [self.words.get(key, NOTHING) for key in keys]
        for key in keys:
            if key in self.words:
                self.words.move_to_end(key)
        while self.kept > POSTINGS_KEPT and len(self.words) > len(set(keys)):
            _, dropped = self.words.popitem(last=False)
            self.kept -= len(dropped.rowids)
        return wanted

    async def _fetch(self, fetch: Fetch, todo: dict[str, tuple[str, int]]) -> None:
        """Fetch each word's matches above its rowid, into its postings."""
        import numpy as np

        items = list(todo.items())
        for start in range(0, len(items), WORDS_PER_QUERY):
            chunk = items[start : start + WORDS_PER_QUERY]
            # One statement for all the words: each MATCH scores one word, so each score is that word's
            # part. Matches above `top` are not kept (the next refresh will know those memories) but
            # counted: FTS5's idf counted them.
            select = (
                f"SELECT ?, memories_fts.rowid, -{BM25} FROM memories_fts "
                "WHERE memories_fts MATCH ? AND memories_fts.rowid > ?"
            )
            params: list[Any] = []
            for i, (_, (term, above)) in enumerate(chunk):
                # Quoted, so that nothing the caller typed is read as FTS5 syntax.
                params += [i, '"' + term.replace('"', '""') + '"', above]
            found: list[list[tuple[int, float]]] = [[] for _ in chunk]
            for i, rowid, score in await fetch(" UNION ALL ".join([select] * len(chunk)), params):
                found[i].append((rowid, score))
            for (key, (_, above)), rows in zip(chunk, found, strict=True):
                have = self.words.pop(key, None)
                if have is not None:
                    self.kept -= len(have.rowids)
                kept = sorted(r for r in rows if r[0] <= self.top)
                rowids = np.array([r[0] for r in kept], dtype=np.int64)
                scores = np.array([r[1] for r in kept], dtype=np.float64)
                if above and have is not None:
                    matches = int(self.active[have.rowids].sum()) + len(rows)
                    parts = scores / idf(self.memories, matches)
                    rowids = np.concatenate([have.rowids, rowids])
                    parts = np.concatenate([have.parts, parts])
                    memories = have.memories
                else:
                    parts = scores / idf(self.memories, len(rows))
                    memories = self.memories
                matches = int(self.active[rowids].sum())
                self.words[key] = Postings(rowids, parts, self.top, memories, matches, self.seq)
                self.kept += len(rowids)

    async def tagged(self, fetch: Fetch, tags: Sequence[str]) -> np.ndarray:
        """The rowids (ascending) of the memories carrying every one of `tags` (a memory's tags never
        change, so each tag's memories are fetched once, then those stored since)."""
        import numpy as np

        each = []
        for tag in dict.fromkeys(tags):
            have = self.tags.get(tag)
            above = have.upto if have is not None else 0
            if have is None or above < self.top:
                rows = await fetch(
                    "SELECT memory_rowid FROM memory_tags WHERE tag = ? AND memory_rowid > ? "
                    "AND memory_rowid <= ? ORDER BY memory_rowid",
                    (tag, above, self.top),
                )
                new = np.array([r for (r,) in rows], dtype=np.int64)
                rowids = new if have is None else np.concatenate([have.rowids, new])
                have = self.tags[tag] = Postings(rowids, np.zeros(0), self.top, self.memories)
            each.append(have.rowids)
        found = each[0]
        for rowids in each[1:]:
            found = np.intersect1d(found, rowids, assume_unique=True)
        return found

    # The prefill thread -----------------------------------------------------------------------

    def start_prefill(self, path: Path) -> None:
        """Fetch the commonest words' postings in a thread (see the module docstring)."""
        if self._prefill is None and str(path) != ":memory:":
            self._prefill = Prefill(path, self.top, self.memories, self.epoch)
            self._prefill.start()

    def stop_prefill(self) -> None:
        if self._prefill is not None:
            self._prefill.stop()

    def _take_prefilled(self) -> None:
        """Adopt what the prefill thread has fetched so far, unless it was overtaken: postings
        dropped since it started, or the word fetched by a recall meanwhile."""
        if self._prefill is None:
            return
        for term, postings in self._prefill.take():
            if self._prefill.epoch == self.epoch and term not in self.words:
                self.words[term] = postings  # its `seq` of -1: counted at its first use
                self.words.move_to_end(term, last=False)  # not asked for yet: first to go
                self.kept += len(postings.rowids)

    # Ranking ----------------------------------------------------------------------------------

    def keep(self, rowids: np.ndarray, **filters: Any) -> np.ndarray:
        """Those of `rowids` that are active and pass the filters (those of passing())."""
        return rowids[self.passing(rowids, **filters)]

    def passing(
        self,
        rowids: np.ndarray,
        since: str | None = None,
        until: str | None = None,
        kind: str | None = None,
        within: np.ndarray | None = None,
        without: np.ndarray | None = None,
    ) -> np.ndarray:
        """Which of `rowids` (in any order) are active and pass the filters, as a mask; `within` and
        `without` are ascending rowid arrays: a memory must be in the first and not in the second."""
        import numpy as np

        ok = (rowids > 0) & (rowids <= self.top)
        rowids = np.where(ok, rowids, 0)
        ok &= self.active[rowids]
        if since is not None:
            ok &= self.when[rowids] >= _moments([since])[0]
        if until is not None:
            ok &= self.when[rowids] < _moments([until])[0]
        if kind is not None:
            code = self.kinds.get(kind)
            ok &= self.kind[rowids] == (-1 if code is None else code)
        if within is not None:
            ok &= _among(rowids, within)
        if without is not None and len(without):
            ok &= ~_among(rowids, without)
        return ok

    def rank(self, words: list[Postings], limit: int, **filters: Any) -> tuple[np.ndarray, np.ndarray]:
        """The `limit` best memories holding any of the words and passing the filters (see keep), by
        the sum of their words' scores: (rowids, scores), best first, ties by rowid (as FTS5's
        ORDER BY bm25, rowid)."""
        import numpy as np

        words = [w for w in words if len(w.rowids)]
        if not words:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        total = np.zeros(self.top + 1, dtype=np.float64)
        for word in words:  # every part is above 0, and so is every idf
            total[word.rowids] += idf(self.memories, word.matches) * word.parts
        matches = self.keep(np.flatnonzero(total > 0), **filters)
        scores = total[matches]
        if len(matches) > limit:
            best = np.argpartition(-scores, limit - 1)[:limit]
            # Those tied with the last one taken: the lowest rowids win.
            cut = scores[best].min()
            best = np.concatenate([best[scores[best] > cut], np.flatnonzero(scores == cut)])
            matches, scores = matches[best], scores[best]
        order = np.lexsort((matches, -scores))[:limit]
        return matches[order], scores[order]

    def with_neighbours(
        self, rowids: np.ndarray, scores: np.ndarray, lenders: int, weight: float, **filters: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbour lending over a ranking (from `rank`): the best `lenders` lend to their
        neighbours that pass the filters, and any two matches side by side lend to each other.
        Returns every match and every neighbour lent to, best first (ties: the newest first): their
        rowids, totals, and the rowid of the neighbour that lent a neighbour the most (0 for a match)."""
        import numpy as np

        near = (rowids[:lenders, None] + np.array([-1, 1])).ravel()
        receivers = self.keep(np.union1d(rowids, near), **filters)
        at = np.searchsorted(receivers, rowids)
        own = np.zeros(len(receivers))
        own[at] = scores
        candidate = np.zeros(len(receivers), dtype=bool)
        candidate[at] = True
        total, lender = lend(receivers, own, self.context[receivers], candidate, weight)
        # A match keeps its place with nothing lent (a bm25 score may be 0); a neighbour needs a loan.
        kept = np.flatnonzero(candidate | (total > 0))
        order = kept[np.lexsort((-receivers[kept], -total[kept]))]
        return receivers[order], total[order], np.where(candidate[order], 0, lender[order])


def _moments(stored: list[str]) -> np.ndarray:
    """Stored moments ("2024-05-08T14:30:00Z", see core/dates.py) as numbers in the same order:
    20240508143000."""
    import numpy as np

    text = "".join(moment[:20].ljust(20, "0") for moment in stored)  # any other form: still 20 wide
    digits = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).reshape(-1, 20)
    digits = digits[:, [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]].astype(np.int64) - ord("0")
    return digits @ (10 ** np.arange(13, -1, -1, dtype=np.int64))


def _among(rowids: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `rowids` are in the ascending array `sorted_set`."""
    import numpy as np

    if not len(sorted_set):
        return np.zeros(len(rowids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, rowids), len(sorted_set) - 1)
    return sorted_set[at] == rowids


def lend(
    rowids: np.ndarray, own: np.ndarray, context: np.ndarray, candidate: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lending (see sqlite.NEIGHBOUR_WEIGHT), over memories given by ascending `rowids`
    with their `own` scores and `context` numbers; only `candidate` memories lend. Returns each
    memory's total, and the rowid of the neighbour that lent it the most (0 when none lent)."""
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


class Prefill:
    """A thread that fetches the postings of the words held by at least PREFILL_MIN memories, the
    commonest first, up to rowid `top`, over its own read-only connection."""

    def __init__(self, path: Path, top: int, memories: int, epoch: int) -> None:
        self.path, self.top, self.memories, self.epoch = path, top, memories, epoch
        self._done: list[tuple[str, Postings]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soul-mcp-recall-prefill", daemon=True)
        self.fetched = 0  # words (for tests and logs)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def take(self) -> list[tuple[str, Postings]]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def _run(self) -> None:
        import numpy as np

        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("recall prefill: cannot open %s: %s", self.path, exc)
            return
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            terms = [
                t
                for (t,) in db.execute(
                    "SELECT term FROM memories_vocab WHERE doc >= ? ORDER BY doc DESC", (PREFILL_MIN,)
                )
            ]
            tokens = Tokens()
            entries = 0
            for term in terms:
                if self._stop.is_set():
                    return
                if tokens.keys([term]) != [term]:  # a MATCH of it would find another token
                    continue
                quoted = '"' + term.replace('"', '""') + '"'
                rows = db.execute(
                    f"SELECT memories_fts.rowid, -{BM25} FROM memories_fts WHERE memories_fts MATCH ? "
                    "ORDER BY memories_fts.rowid",
                    (quoted,),
                ).fetchall()
                weight = idf(self.memories, len(rows))
                kept = [r for r in rows if r[0] <= self.top]
                rowids = np.array([r for r, _ in kept], dtype=np.int64)
                parts = np.array([s for _, s in kept], dtype=np.float64) / weight
                with self._lock:
                    self._done.append((term, Postings(rowids, parts, self.top, self.memories)))
                self.fetched += 1
                entries += len(rowids)
                if entries > PREFILL_SHARE * POSTINGS_KEPT:
                    return
        except sqlite3.Error as exc:  # e.g. the file was removed: recalls fetch words themselves
            log.warning("recall prefill stopped: %s", exc)
        finally:
            db.close()
