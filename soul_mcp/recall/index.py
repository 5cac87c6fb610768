"""What full-text recall ranks, held in memory per process and kept true through the change log.

Why: scoring in the store costs per memory a query word is in (FTS5's bm25(), about a microsecond
each, and a common word is in thousands of memories at 100k). Here each query word's score parts
are fetched from the source once and kept; ranking is then a few numpy operations over arrays
indexed by rowid (bm25.py).

What is held:
- per memory, by rowid: whether it is active (in recall), occurred_at, kind, and its context
  (author, session and day: the neighbourhood recall lends scores within, lending.py);
- per word seen lately, keyed by its token: the rowids of the memories holding it and its score
  parts, up to POSTINGS_KEPT entries (bm25.Postings).

How it stays true while other connections and processes write: the source logs every inserted,
status-changed and deleted memory. Each recall first reads the log's last sequence number; when it
moved, the logged memories' columns are read again. New memories reach a word's postings by
fetching its matches above the rowid it was fetched up to. A memory that comes back (restored, or a
purged rowid given to a new memory) may hold any word, so all postings are dropped and fetched
again as recalls ask for them. A memory that leaves recall stays in the postings, masked inactive.
What is left of bm25 that moves with writes, the average memory length, moves slowly: a word is
fetched again once the number of memories has moved by more than STALE_SHARE since.

Once loaded, the index has the commonest words fetched by a thread of its own (prefill.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from soul_mcp.recall.bm25 import NOTHING, POSTINGS_KEPT, Postings, idf, rank
from soul_mcp.recall.filters import among, moments
from soul_mcp.recall.lending import with_neighbours
from soul_mcp.recall.prefill import Prefill
from soul_mcp.recall.source import MemoryColumns, RecallSource

if TYPE_CHECKING:
    import numpy as np

STALE_SHARE = 0.05
# More changed memories than this at once: the columns are read again whole.
RELOAD_ABOVE = 20_000
CHANGED_KEPT = 100_000  # the change feed for the vector caches (changes_since)


class RecallIndex:
    def __init__(self, source: RecallSource) -> None:
        self.source = source
        self.lock = anyio.Lock()
        self.epoch = 0  # moves when every word's postings are dropped
        self._prefill: Prefill | None = None
        self.tokens = source.tokenizer()
        # Rowids of memories that changed after they were stored (status, purge): a feed for what
        # keeps things per memory elsewhere (the vector caches), read with changes_since.
        self.changed: list[int] = []
        self.changed_start = 0
        self._clear()

    def _clear(self) -> None:
        """Forget everything read from the source: the next refresh reads it whole."""
        import numpy as np

        self.loaded = False
        self.seq = 0  # the last change log entry applied
        self.top = 0  # the highest rowid known
        self.memories = 0  # active memories
        self.active = np.zeros(0, dtype=bool)
        self.when = np.zeros(0, dtype=np.int64)  # occurred_at as YYYYMMDDHHMMSS (filters.moments)
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

    async def refresh(self) -> None:
        """Apply what was written since the last call, by this process or any other."""
        seq = await self.source.change_seq()
        if not self.loaded:
            rows = await self.source.memory_columns()
            self._grow(max((r[0] for r in rows), default=0))
            self._set(rows)
            self.seq, self.loaded = seq, True
            return
        self._take_prefilled()
        if seq == self.seq:
            return
        changed = await self.source.changed_between(self.seq, seq)
        if len(changed) > RELOAD_ABOVE:  # e.g. another process imported a workspace: read it all
            self._clear()
            await self.refresh()
            return
        rows = await self.source.memory_columns(changed) if changed else []
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

    def _set(self, rows: list[MemoryColumns]) -> None:
        import numpy as np

        if not rows:
            return
        rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        active = np.fromiter((bool(r[1]) for r in rows), dtype=bool, count=len(rows))
        self.memories += int(active.sum()) - int(self.active[rowids].sum())
        self.active[rowids] = active
        self.when[rowids] = moments([r[2] for r in rows])
        self.kind[rowids] = [self.kinds.setdefault(r[3], len(self.kinds)) for r in rows]
        # Same author, session and day: the same context (a 64-bit hash; a collision would at
        # worst let two unrelated memories lend each other a part of their score).
        self.context[rowids] = [hash((r[4], r[5], r[2][:10])) for r in rows]
        self.memory[rowids] = [hash(r[6]) for r in rows]

    async def postings(self, terms: Sequence[str]) -> list[Postings]:
        """Each query word's postings, fetched or brought up to date as needed. Words are kept by
        their token ("meetings" and "meeting" are both "meet"), so that the prefill's words serve
        every form of them."""
        keys = self.tokens.keys(terms)
        todo: dict[str, tuple[str, int]] = {}  # key -> (word to match, fetch matches above this rowid)
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
        await self._fetch(todo)
        wanted = [self.words.get(key, NOTHING) for key in keys]
        for key in keys:
            if key in self.words:
                self.words.move_to_end(key)
        while self.kept > POSTINGS_KEPT and len(self.words) > len(set(keys)):
            _, dropped = self.words.popitem(last=False)
            self.kept -= len(dropped.rowids)
        return wanted

    async def _fetch(self, todo: dict[str, tuple[str, int]]) -> None:
        """Fetch each word's matches above its rowid, into its postings."""
        import numpy as np

        if not todo:
            return
        items = list(todo.items())
        # Matches above `top` are not kept (the next refresh will know those memories) but counted:
        # the store's idf counted them.
        found = await self.source.word_scores([wanted for _, wanted in items])
        for (key, (_, above)), rows in zip(items, found, strict=True):
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

    async def tagged(self, tags: Sequence[str]) -> np.ndarray:
        """The rowids (ascending) of the memories carrying every one of `tags` (a memory's tags never
        change, so each tag's memories are fetched once, then those stored since)."""
        import numpy as np

        each = []
        for tag in dict.fromkeys(tags):
            have = self.tags.get(tag)
            above = have.upto if have is not None else 0
            if have is None or above < self.top:
                new = np.array(await self.source.tagged_rowids(tag, above, self.top), dtype=np.int64)
                rowids = new if have is None else np.concatenate([have.rowids, new])
                have = self.tags[tag] = Postings(rowids, np.zeros(0), self.top, self.memories)
            each.append(have.rowids)
        found = each[0]
        for rowids in each[1:]:
            found = np.intersect1d(found, rowids, assume_unique=True)
        return found

    def start_prefill(self) -> None:
        """Have the commonest words' postings fetched by a thread (prefill.py), when the source can
        give that thread a reader of its own."""
        if self._prefill is None:
            open_reader = self.source.blocking_reader()
            if open_reader is not None:
                self._prefill = Prefill(
                    open_reader, self.source.tokenizer, self.top, self.memories, self.epoch
                )
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
            ok &= self.when[rowids] >= moments([since])[0]
        if until is not None:
            ok &= self.when[rowids] < moments([until])[0]
        if kind is not None:
            code = self.kinds.get(kind)
            ok &= self.kind[rowids] == (-1 if code is None else code)
        if within is not None:
            ok &= among(rowids, within)
        if without is not None and len(without):
            ok &= ~among(rowids, without)
        return ok

    def rank(self, words: list[Postings], limit: int, **filters: Any) -> tuple[np.ndarray, np.ndarray]:
        """The `limit` best memories holding any of the words and passing the filters (bm25.rank)."""
        return rank(words, self.memories, self.top, partial(self.keep, **filters), limit)

    def with_neighbours(
        self, rowids: np.ndarray, scores: np.ndarray, lenders: int, weight: float, **filters: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbour lending over a ranking from `rank` (lending.with_neighbours)."""
        return with_neighbours(rowids, scores, lenders, weight, partial(self.keep, **filters), self.context)
