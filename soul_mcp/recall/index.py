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

A new process starts from the snapshot (beside the data, or cached: snapshot.py) when there is a valid one: it
is the index as of a position of the change log, checked against the log and a sample of memories
before use, then brought up to date by the changes logged since, like any other process's writes.
Once the prefill is done, again after SAVE_AFTER changes, and when the engine closes (recall
right after the start, in the next process), a thread writes it anew; never on a recall's path.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from soul_mcp.recall.bm25 import NOTHING, POSTINGS_KEPT, Postings, idf, rank
from soul_mcp.recall.filters import among, moments
from soul_mcp.recall.lending import with_neighbours
from soul_mcp.recall.prefill import Prefill
from soul_mcp.recall.snapshot import Snapshot, SnapshotWords, read_snapshot, take_early, write_snapshot
from soul_mcp.recall.source import MemoryColumns, RecallSource

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

STALE_SHARE = 0.05
# More changed memories than this at once: the columns are read again whole.
RELOAD_ABOVE = 20_000
CHANGED_KEPT = 100_000  # the change feed for the vector caches (changes_since)
SAVE_AFTER = 200  # change log entries applied since the snapshot was read or written: write it anew
SAVE_WORDS = 100  # words fetched since (a prefill that went on from a snapshot): write it anew
SNAPSHOT_SAMPLE = 16  # memories whose ids are checked against a snapshot's (a file of another database)


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (hash() of a str is not): the columns that
    hold one are kept in the snapshot."""
    data = text.encode("utf-8", "surrogatepass")
    return (zlib.crc32(data) << 31) ^ zlib.adler32(data)


def _read(path: Path) -> Snapshot | None:
    """The snapshot at `path`: the one this process began reading early, or read now."""
    began, snap = take_early(path)
    if not began:
        return read_snapshot(path)
    log.debug("recall snapshot %s: read while the server started", path)
    return snap


def _context(row: MemoryColumns) -> int:
    # Same author, session and day: the same context.
    session = "\x00" if row[5] is None else row[5]
    return stable_hash(f"{row[4]}\x1f{session}\x1f{row[2][:10]}")


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
        # The snapshot: the log position and epoch of the last one read or written (-1: none), the
        # epoch of one read (prefill is not needed while its words are held), the thread writing one.
        self.saved_seq = -1
        self.saved_epoch = -1
        self.saved_words = 0
        self.snapshot_epoch = -1
        self.snapshot_complete = False  # the snapshot read held every word the prefill fetches
        self._saving: threading.Thread | None = None
        self._read_ahead: Snapshot | None = None  # read by read_ahead, for the first refresh
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
        if not self.loaded and not await self._load_snapshot(seq):
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
            if r[1]
            and r[0] <= top_before
            and (not self.active[r[0]] or self.memory[r[0]] != stable_hash(r[6]))
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
        # A 63-bit hash of the context: a collision would at worst let two unrelated memories lend
        # each other a part of their score.
        self.context[rowids] = [_context(r) for r in rows]
        self.memory[rowids] = [stable_hash(r[6]) for r in rows]

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
        # A source that gives score parts (word_parts, source.py) need not count every match.
        word_parts = getattr(self.source, "word_parts", None)
        asked = [wanted for _, wanted in items]
        found = await (word_parts(asked) if word_parts is not None else self.source.word_scores(asked))
        for (key, (_, above)), rows in zip(items, found, strict=True):
            have = self.words.pop(key, None)
            if have is not None:
                self.kept -= len(have.rowids)
            kept = sorted(r for r in rows if r[0] <= self.top)
            rowids = np.array([r[0] for r in kept], dtype=np.int64)
            scores = np.array([r[1] for r in kept], dtype=np.float64)
            if above and have is not None:
                matches = int(self.active[have.rowids].sum()) + len(rows)
                parts = scores if word_parts else scores / idf(self.memories, matches)
                rowids = np.concatenate([have.rowids, rowids])
                parts = np.concatenate([have.parts, parts])
                memories = have.memories
            else:
                parts = scores if word_parts else scores / idf(self.memories, len(rows))
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
        give that thread a reader of its own; not when a snapshot read gave it every such word."""
        if self._prefill is None and not (self.snapshot_complete and self.epoch == self.snapshot_epoch):
            open_reader = self.source.blocking_reader()
            if open_reader is not None:
                held = frozenset(self.words) if self.epoch == self.snapshot_epoch else frozenset()
                self._prefill = Prefill(
                    open_reader, self.source.tokenizer, self.top, self.memories, self.epoch, held
                )
                self._prefill.start()

    @contextmanager
    def recalling(self) -> Iterator[None]:
        """Around a recall: the prefill waits meanwhile (Prefill.pause)."""
        prefill = self._prefill
        if prefill is None:
            yield
            return
        prefill.pause()
        try:
            yield
        finally:
            prefill.resume()

    def stop_prefill(self) -> None:
        if self._prefill is not None:
            self._prefill.stop()

    def join_saving(self) -> None:
        if self._saving is not None:
            self._saving.join(60)

    async def _load_snapshot(self, seq: int) -> bool:
        """Start from the snapshot beside the data, if there is one and it holds for this database
        up to `seq`; False otherwise (the columns are then read whole)."""
        path = self.source.snapshot_path()
        if path is None:
            return False
        snap, self._read_ahead = self._read_ahead, None
        if snap is None:
            snap = await anyio.to_thread.run_sync(_read, path)
        if snap is None:
            return False
        why = await self._mismatch(snap, seq)
        if why:
            log.info("recall snapshot %s ignored: %s", path, why)
            return False
        self.top, self.memories, self.kinds = snap.top, snap.memories, dict(snap.kinds)
        for name, column in snap.columns.items():
            setattr(self, name, column)
        words = snap.words
        ends = words.ends.tolist()
        for key, start, end, upto, memories in zip(
            words.keys, [0, *ends][:-1], ends, words.upto.tolist(), words.memories.tolist(), strict=True
        ):
            self.words[key] = Postings(words.rowids[start:end], words.parts[start:end], upto, memories)
        self.kept = len(words.rowids)
        self.seq, self.loaded = snap.seq, True
        self.saved_seq = snap.seq
        self.saved_epoch = self.snapshot_epoch = self.epoch
        self.saved_words = len(self.words)
        self.snapshot_complete = bool(snap.extra.get("complete"))
        return True

    def read_ahead(self) -> None:
        """Read the snapshot (blocking, in a thread) for the first refresh to check and use."""
        path = self.source.snapshot_path()
        if path is not None and not self.loaded:
            self._read_ahead = _read(path)

    async def _mismatch(self, snap: Snapshot, seq: int) -> str:
        """Why `snap` does not hold for the source ("" when it does): the log must still hold the
        entry it was written at, and a sample of its memories must be the source's."""
        import numpy as np

        if snap.seq > seq:
            return f"written at change {snap.seq}, past the log's last ({seq})"
        if snap.seq and await self.source.changed_between(snap.seq - 1, snap.seq) != [snap.seq_rowid]:
            return f"the change log no longer holds its entry {snap.seq} as it was"
        changed = set(await self.source.changed_between(snap.seq, seq)) if seq > snap.seq else set()
        if len(changed) > RELOAD_ABOVE:
            return f"{len(changed)} memories changed since"
        held = np.flatnonzero(snap.columns["memory"])
        sample = {int(r) for r in held[-(SNAPSHOT_SAMPLE // 2) :]}
        if len(held):
            spread = np.linspace(0, len(held) - 1, SNAPSHOT_SAMPLE // 2).astype(np.int64)
            sample |= {int(r) for r in held[spread]}
        sample -= changed
        found = {r[0]: stable_hash(r[6]) for r in await self.source.memory_columns(sorted(sample))}
        if any(found.get(r) != int(snap.columns["memory"][r]) for r in sample):
            return "its memories are not this database's"
        return ""

    async def save_if_due(self, closing: bool = False) -> None:
        """Have a thread write the snapshot, when the prefill is done and none was read or written
        at this epoch, or SAVE_AFTER changes ago; `closing` (the prefill stopped), whatever it
        fetched. Takes the lock for a copy of the columns."""
        if not closing and not self._save_due():
            return
        path = self.source.snapshot_path()
        if path is None:
            return
        async with self.lock:
            self._take_prefilled()
            if not self._save_due(closing):
                return
            seq = self.seq
            logged = await self.source.changed_between(seq - 1, seq) if seq else [0]
            if self.seq != seq or len(logged) != 1:
                return
            top = self.top
            columns = {name: getattr(self, name)[: top + 1].copy() for name in COLUMN_NAMES}
            # Postings arrays are never changed in place: the thread may read them as they are.
            words = [
                (k, p.rowids, p.parts, p.upto, p.memories) for k, p in self.words.items() if len(p.rowids)
            ]
            complete = (self._prefill is not None and self._prefill.completed) or (
                self.snapshot_complete and self.epoch == self.snapshot_epoch
            )
            snap = Snapshot(
                seq,
                logged[0],
                top,
                self.memories,
                dict(self.kinds),
                columns,
                _no_words(),
                {"complete": complete},
            )
            self.saved_seq, self.saved_epoch, self.saved_words = seq, self.epoch, len(self.words)
        self._saving = threading.Thread(
            target=_write, args=(path, snap, words), name="soul-mcp-recall-snapshot", daemon=True
        )
        self._saving.start()

    def _save_due(self, closing: bool = False) -> bool:
        if not self.loaded or (self._saving is not None and self._saving.is_alive()):
            return False
        if not closing and self._prefill is not None and self._prefill.busy():
            return False
        if not closing and self._prefill is None and self.epoch != self.snapshot_epoch:
            return False  # the prefill has not started: the words are not there yet
        # Closing, any change since is written: the next process then starts from exactly this
        # index (one that starts from an older snapshot keeps its words' score parts while the
        # memory count stays within STALE_SHARE, as this process does).
        return (
            self.epoch != self.saved_epoch
            or self.seq - self.saved_seq >= (1 if closing else SAVE_AFTER)
            or len(self.words) - self.saved_words >= SAVE_WORDS
        )

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


COLUMN_NAMES = ("active", "when", "kind", "context", "memory")


def _no_words() -> SnapshotWords:
    import numpy as np

    empty = np.zeros(0, dtype=np.int64)
    return SnapshotWords([], empty, empty, empty, empty, np.zeros(0))


def _write(path: Path, snap: Snapshot, words: list[tuple[str, np.ndarray, np.ndarray, int, int]]) -> None:
    """The snapshot thread: the words end to end, then the file (snapshot.write_snapshot)."""
    import numpy as np

    try:
        # A word none of whose memories is in recall is left out: a purged memory's words leave
        # the file with the next snapshot.
        active = snap.columns["active"]
        words = [w for w in words if active[w[1]].any()]
        lengths = np.array([len(w[1]) for w in words], dtype=np.int64)
        snap.words = SnapshotWords(
            [w[0] for w in words],
            np.cumsum(lengths),
            np.array([w[3] for w in words], dtype=np.int64),
            np.array([w[4] for w in words], dtype=np.int64),
            np.concatenate([w[1] for w in words]) if words else np.zeros(0, dtype=np.int64),
            np.concatenate([w[2] for w in words]) if words else np.zeros(0),
        )
        size = write_snapshot(path, snap)
        log.info("recall snapshot written: %s, %d bytes, change %d", path, size, snap.seq)
    except (OSError, ValueError) as exc:  # e.g. a full disk: the next process reads the columns whole
        log.warning("recall snapshot not written: %s", exc)
