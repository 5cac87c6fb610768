"""The recall index's snapshot beside the database (recall/snapshot.py): a fresh engine ranks from
it exactly as from the database, and a stale, short, garbled, foreign or older file is detected,
never trusted, and written anew."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import server_env
from test_stdio import call, raw_server

from soul_mcp.core.text import content_key
from soul_mcp.models import NewMemory
from soul_mcp.recall import Recall, SearchQuery
from soul_mcp.recall import index as recall_index
from soul_mcp.recall.prefill import Prefill
from soul_mcp.recall.snapshot import HEAD, read_early, read_snapshot, take_early
from soul_mcp.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

DAYS = [f"2024-0{1 + n // 28}-{1 + n % 28:02d}T09:00:00Z" for n in range(120)]
WORDS = ["garden", "budget", "travel", "piano", "harbor", "lantern", "copper", "walnut", "quartz", "ember"]
QUERIES = [
    ("garden", "budget"),
    ("travel", "piano", "harbor"),
    ("quartz", "zebra"),
    ("ember", "walnut", "copper", "lantern"),
    ("garden",),
]
LIMIT = 100
FILTERS: list[dict[str, Any]] = [{}, {"tags": ("home",)}, {"kind": "event"}, {"since": DAYS[40]}]


def memory(rng: random.Random, n: int, prefix: str = "") -> NewMemory:
    words = rng.sample(WORDS, rng.randint(1, 4)) + [f"{prefix}word{n}"] + (["zebra"] if n % 17 == 0 else [])
    content = " ".join([*words, "note", str(n)])
    return NewMemory(
        content=content,
        content_key=content_key(content),
        kind=rng.choice(["fact", "event"]),
        tags=rng.sample(["home", "work"], rng.randint(0, 2)),
        importance=3,
        occurred_at=DAYS[n % len(DAYS)],
        author="tester",
        session_id=f"s{n // 3}",
    )


async def filled(path: Path, count: int, seed: int = 1) -> SQLiteStore:
    store = await SQLiteStore.open(path, synchronous="OFF")
    rng = random.Random(seed)
    for n in range(count):
        await store.add_memory(memory(rng, n), DAYS[0])
    return store


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await filled(db_path, 240)
    try:
        yield opened
    finally:
        await opened.close()


def active_ids(db: Path) -> list[str]:
    """The active memories' ids by rowid, read as another process would."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id FROM memories WHERE status = 'active' ORDER BY rowid").fetchall()
    return [str(i) for (i,) in rows]


class WithoutSnapshot:
    """The same store, seen by an engine that keeps no snapshot: what every ranking must equal."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def snapshot_path(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def rankings(recall: Recall) -> list[list[tuple[str, float]]]:
    found = []
    for terms in QUERIES:
        for filters in FILTERS:
            hits = await recall.search(SearchQuery(terms=terms, limit=LIMIT, **filters))
            found.append([(hit.memory.id, hit.score) for hit in hits])
    return found


def same(
    got: list[list[tuple[str, float]]], expected: list[list[tuple[str, float]]], near: float = 0.0
) -> None:
    """The same rankings; with `near`, scores within `near` times the best one and the order
    agreeing wherever scores differ by more (a kept word's score parts move a little with writes)."""
    assert any(expected), "nothing matched: the test would prove nothing"
    for one, other in zip(got, expected, strict=True):
        if not near:
            assert [i for i, _ in one] == [i for i, _ in other]
            assert [s for _, s in one] == pytest.approx([s for _, s in other], rel=1e-12)
            continue
        margin = near * other[0][1] if other else 0.0
        # At the page's end, memories within the margin of the last one may trade places.
        cut = other[-1][1] + 2 * margin if len(other) == LIMIT else -1.0
        want, have = dict(other), dict(one)
        assert {i for i, score in other if score > cut} <= have.keys()
        for memory_id, score in one:
            if memory_id in want:
                assert score == pytest.approx(want[memory_id], abs=margin)
            else:
                assert score <= cut
        assert all(a >= b - 2 * margin for (_, a), (_, b) in itertools.pairwise(one))


async def write_snapshot(store: SQLiteStore) -> Path:
    """An engine that ranks, then closes: closing writes the snapshot."""
    engine = Recall(store)
    await rankings(engine)
    await engine.close()
    path = store.snapshot_path()
    assert path is not None and read_snapshot(path) is not None
    return path


async def fresh(store: Any) -> tuple[list[list[tuple[str, float]]], bool]:
    """A fresh engine's rankings, and whether it started from the snapshot."""
    engine = Recall(store)
    try:
        got = await rankings(engine)
        return got, engine.index.snapshot_epoch != -1
    finally:
        await engine.close()


async def test_a_fresh_engine_ranks_from_the_snapshot_as_from_the_database(store: SQLiteStore) -> None:
    path = await write_snapshot(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it names the words of a person's memories
    got, from_snapshot = await fresh(store)
    assert from_snapshot
    same(got, (await fresh(WithoutSnapshot(store)))[0])


async def test_a_snapshot_behind_the_change_log_is_brought_up_to_date(
    store: SQLiteStore, db_path: Path
) -> None:
    await write_snapshot(store)
    # Another process writes after it: new memories, one forgotten, one restored, one purged and
    # its rowid given to a new memory.
    other = await SQLiteStore.open(db_path, synchronous="OFF")
    try:
        rng = random.Random(5)
        for n in range(30):
            await other.add_memory(memory(rng, 1000 + n, "late"), DAYS[1])
        ids = active_ids(db_path)[-40:][::-1]  # the newest first
        await other.set_memory_status(ids[3], "forgotten", "gone", DAYS[2], expect=("active",))
        got, from_snapshot = await fresh(store)
        assert from_snapshot
        same(got, (await fresh(WithoutSnapshot(store)))[0])

        await other.set_memory_status(ids[3], "active", None, DAYS[2], expect=("forgotten",))
        await other.set_memory_status(ids[0], "forgotten", "gone", DAYS[2], expect=("active",))
        await other.purge_memory(ids[0])
        await other.add_memory(memory(rng, 2000, "reused"), DAYS[3])
        got, _ = await fresh(store)
        same(got, (await fresh(WithoutSnapshot(store)))[0])
    finally:
        await other.close()


def truncated(path: Path, _: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path, _: Path) -> None:
    path.write_bytes(random.Random(3).randbytes(path.stat().st_size))


def one_byte_changed(path: Path, _: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x40
    path.write_bytes(bytes(data))


def older_format(path: Path, _: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = (0).to_bytes(4, "little")  # the format version, after the magic
    path.write_bytes(bytes(data))


def empty(path: Path, _: Path) -> None:
    path.write_bytes(b"")


def of_another_database(path: Path, foreign: Path) -> None:
    shutil.copyfile(foreign, path)


@pytest.mark.parametrize(
    "spoil", [truncated, garbage, one_byte_changed, older_format, empty, of_another_database]
)
async def test_a_bad_snapshot_is_ignored_and_written_anew(
    store: SQLiteStore, tmp_path: Path, spoil: Any
) -> None:
    # A snapshot of another database with the same number of memories and changes.
    other_db = tmp_path / "other" / "soul.db"
    other = await filled(other_db, 240, seed=2)
    try:
        foreign = await write_snapshot(other)
    finally:
        await other.close()
    path = await write_snapshot(store)
    spoil(path, foreign)
    got, from_snapshot = await fresh(store)
    assert not from_snapshot
    same(got, (await fresh(WithoutSnapshot(store)))[0])
    # The engine that ignored it wrote it anew, as of the database's last change.
    rewritten = read_snapshot(path)
    assert rewritten is not None and rewritten.seq == await store.change_seq()
    assert (await fresh(store))[1]


async def test_a_snapshot_ahead_of_the_change_log_is_ignored(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # E.g. the database was put back from a backup made before the snapshot.
    monkeypatch.setattr(recall_index, "SAVE_AFTER", 1)
    path = await write_snapshot(store)
    backup = tmp_path / "backup.db"
    await store.backup(backup)
    other = await SQLiteStore.open(store.path, synchronous="OFF")
    try:
        rng = random.Random(9)
        for n in range(5):
            await other.add_memory(memory(rng, 3000 + n, "ahead"), DAYS[4])
        await write_snapshot(other)
    finally:
        await other.close()
    ahead = read_snapshot(path)
    assert ahead is not None and ahead.seq == 245
    shutil.copyfile(path, tmp_path / "ahead")
    restored = await SQLiteStore.open(backup)
    try:
        shutil.copyfile(tmp_path / "ahead", Path(f"{backup}-recall"))
        got, from_snapshot = await fresh(restored)
        assert not from_snapshot
        same(got, (await fresh(WithoutSnapshot(restored)))[0])
    finally:
        await restored.close()


async def test_snapshots_written_while_another_process_writes_stay_true(
    store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recall_index, "SAVE_AFTER", 1)  # a snapshot after every change seen
    # The fused scores, what the index feeds: the model's rank features would magnify the drift
    # allowed below into jumps wherever two near-tied memories trade places.
    monkeypatch.setattr(Recall, "ranker_file", None)
    engine = Recall(store)
    other = await SQLiteStore.open(db_path, synchronous="OFF")
    rng = random.Random(11)
    try:
        await rankings(engine)
        # No snapshot is written while the prefill fetches (its words go in it), and each search
        # below pauses it: on a loaded machine it would still be fetching when the loop ends.
        if engine.index._prefill is not None:
            engine.index._prefill.join(60)
        for n in range(12):
            # Written between the engine's refresh and its snapshot, and while the thread writes.
            await other.add_memory(memory(rng, 4000 + n, "busy"), DAYS[5])
            await engine.search(SearchQuery(terms=QUERIES[n % len(QUERIES)], limit=10))
            if n % 3 == 0:
                await other.set_memory_status(
                    active_ids(db_path)[n], "forgotten", "gone", DAYS[5], expect=("active",)
                )
        engine.index.join_saving()
        snap = read_snapshot(Path(f"{db_path}-recall"))
        assert snap is not None and snap.seq > 240
        got, from_snapshot = await fresh(store)
        assert from_snapshot
        # Written after the last snapshot: kept words keep their score parts while the memory count
        # moves less than STALE_SHARE, as in the engine that saw those writes.
        same(got, (await fresh(WithoutSnapshot(store)))[0], near=0.005)
        # Closing, the engine writes the snapshot as of everything it saw: a fresh engine then ranks
        # exactly as it did.
        before_closing = await rankings(engine)
        await engine.close()
        got, from_snapshot = await fresh(store)
        assert from_snapshot
        same(got, before_closing)
    finally:
        await engine.close()
        await other.close()


def test_the_format_version_follows_the_magic() -> None:
    # older_format above writes it there.
    head = bytearray(HEAD.pack(b"SOULRCL\x00", 7, 1, 8, 0, 0))
    head[8:12] = (0).to_bytes(4, "little")
    assert HEAD.unpack(bytes(head))[:2] == (b"SOULRCL\x00", 0)


async def test_a_purged_memorys_words_leave_the_snapshot(store: SQLiteStore, db_path: Path) -> None:
    engine = Recall(store)
    only = "word0"  # held by the first memory alone (memory(..., 0))
    try:
        await rankings(engine)
        await engine.search(SearchQuery(terms=(only,), limit=5))
        assert only in engine.index.words
        first = active_ids(db_path)[0]
        await store.set_memory_status(first, "forgotten", "private", DAYS[2], expect=("active",))
        await store.purge_memory(first)
        assert await engine.search(SearchQuery(terms=(only,), limit=5)) == []
    finally:
        await engine.close()
    snap = read_snapshot(Path(f"{db_path}-recall"))
    assert snap is not None and snap.seq == await store.change_seq()
    assert only not in snap.words.keys


async def test_a_snapshot_read_early_is_checked_and_used_by_the_first_search(
    store: SQLiteStore, db_path: Path
) -> None:
    path = await write_snapshot(store)
    read_early(path)  # as a server does while the SDK imports
    # Written after the early read: the snapshot is behind, and the first search must catch up.
    rng = random.Random(5)
    for n in range(240, 260):
        await store.add_memory(memory(rng, n, prefix="late"), DAYS[0])
    expected, _ = await fresh(WithoutSnapshot(store))
    engine = Recall(store)
    try:
        got = await rankings(engine)
        assert engine.index.snapshot_epoch != -1, "the early read was not used"
    finally:
        await engine.close()
    same(got, expected, near=0.02)
    assert take_early(path) == (False, None), "an early read is used once"


async def test_a_foreign_snapshot_read_early_is_ignored(store: SQLiteStore, tmp_path: Path) -> None:
    path = await write_snapshot(store)
    other = await filled(tmp_path / "other.db", 240, seed=9)
    try:
        shutil.copyfile(path, tmp_path / "other.db-recall")
        read_early(tmp_path / "other.db-recall")
        expected, _ = await fresh(WithoutSnapshot(other))
        got, from_snapshot = await fresh(other)
    finally:
        await other.close()
    assert not from_snapshot
    same(got, expected)


def test_the_prefill_fetches_only_while_no_recall_runs(db_path: Path) -> None:
    async def fill() -> SQLiteStore:
        return await filled(db_path, 240)

    store = anyio.run(fill)
    anyio.run(store.close)
    opened = anyio.run(SQLiteStore.open, db_path)
    try:
        open_reader = opened.blocking_reader()
        assert open_reader is not None
        prefill = Prefill(open_reader, opened.tokenizer, 240, 240, 1)
        prefill.pause()  # a recall is running
        prefill.pause()  # and another (HTTP serves several at once)
        prefill.start()
        time.sleep(0.3)
        assert prefill.fetched == 0 and not prefill.completed
        prefill.resume()
        time.sleep(0.2)
        assert prefill.fetched == 0, "one recall still runs"
        prefill.resume()
        prefill.join(10)
        assert prefill.completed and prefill.fetched > 0
    finally:
        anyio.run(opened.close)


@pytest.mark.parametrize("warm_start", ["1", "0"])
async def test_a_stdio_server_reads_the_snapshot_while_it_starts(
    store: SQLiteStore, db_path: Path, tmp_path: Path, warm_start: str
) -> None:
    path = await write_snapshot(store)
    env = server_env(db_path) | {"SOUL_MCP_LOG_LEVEL": "DEBUG", "SOUL_MCP_WARM_START": warm_start}
    stderr_path = tmp_path / "server.err"
    async with raw_server(db_path, stderr_path, env) as raw:
        await raw.handshake()
        await raw.send(call(1, "recall", {"query": "garden budget"}))
        answer = (await raw.answers({1}))[1]
        assert answer["result"]["isError"] is False
        assert answer["result"]["structuredContent"]["hits"]
        assert raw.process.stdin is not None
        await raw.process.stdin.aclose()
        await raw.read_rest()
        with anyio.fail_after(20):
            assert await raw.process.wait() == 0
    assert f"recall snapshot {path}: read while the server started" in stderr_path.read_text()


async def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_write(
    store: SQLiteStore, db_path: Path
) -> None:
    path = await write_snapshot(store)
    abandoned = path.with_name(path.name + ".abc123.tmp")
    writing = path.with_name(path.name + ".def456.tmp")  # another process writing right now
    unrelated = path.with_name("notes.abc123.tmp")
    for leftover in (abandoned, writing, unrelated):
        leftover.write_bytes(b"half a snapshot")
    old = time.time() - 3600
    for leftover in (abandoned, unrelated):
        os.utime(leftover, (old, old))
    path.unlink()
    await write_snapshot(store)
    assert not abandoned.exists()
    assert writing.exists() and unrelated.exists()
