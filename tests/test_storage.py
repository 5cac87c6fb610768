"""SQLiteStore on real files: migrations, connection settings, the full-text index and purging."""

from __future__ import annotations

import gc
import itertools
import math
import random
import sqlite3
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiosqlite
import pytest

from soul_mcp.core.text import content_key
from soul_mcp.errors import InvalidInput, StorageError
from soul_mcp.models import NewMemory
from soul_mcp.recall import Recall, SearchQuery
from soul_mcp.recall.bm25 import idf
from soul_mcp.storage.schema import SCHEMA_VERSION
from soul_mcp.storage.sqlite import BUSY_TIMEOUT_MS, SQLiteStore, about_text
from soul_mcp.storage.sqlite_rows import BY_IMPORTANCE, BY_TIME, memory_filters

pytestmark = pytest.mark.anyio

NOW = "2024-05-08T10:00:00Z"
TABLES = {"document_versions", "memories", "memory_tags", "memories_fts", "sessions"}


def new(content: str, tags: list[str] | None = None, kind: str = "fact", session: str = "s1") -> NewMemory:
    return NewMemory(
        content=content,
        content_key=content_key(content),
        kind=kind,  # type: ignore[arg-type]
        tags=tags or [],
        importance=3,
        occurred_at=NOW,
        author="tester",
        session_id=session,
    )


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(db_path)
    try:
        yield opened
    finally:
        await opened.close()


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the file from outside the store, as another process would."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def fts_ids(db: Path, word: str) -> set[str]:
    """Ids of the memories the full-text index itself holds for a word (no join filter on status)."""
    rows = query(
        db,
        "SELECT m.id FROM memories m WHERE m.rowid IN "
        "(SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?)",
        (f'"{word}"',),
    )
    return {str(r[0]) for r in rows}


def user_version(db: Path) -> int:
    return int(query(db, "PRAGMA user_version")[0][0])


# Schema and migrations ---------------------------------------------------------------------------


async def test_a_new_file_is_created_with_its_folder_and_migrated(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "folder" / "soul.db"
    store = await SQLiteStore.open(db)
    await store.close()
    assert user_version(db) == SCHEMA_VERSION >= 1
    names = {str(r[0]) for r in query(db, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert names >= TABLES


async def test_an_empty_existing_file_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    assert db.stat().st_size == 0
    store = await SQLiteStore.open(db)
    await store.close()
    assert user_version(db) == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("occurred_at", "created_at"),
    [
        ("2024-05-08T10:00:00Z", "2024-05-08T10:00:00Z"),
        ("2024-02-29T23:59:59Z", "2024-03-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", NOW),
        ("9998-12-31T23:59:59Z", NOW),
        ("1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z"),
    ],
)
async def test_times_are_kept_as_seconds_and_read_as_the_same_text(
    store: SQLiteStore, db_path: Path, occurred_at: str, created_at: str
) -> None:
    memory, _ = await store.add_memory(
        new("a memory with its times").model_copy(update={"occurred_at": occurred_at}), created_at
    )
    assert (memory.occurred_at, memory.created_at) == (occurred_at, created_at)
    assert await store.get_memory(memory.id) == memory
    # Read from outside the store, the columns hold the same text; the stored seconds are what
    # the sqlite3 shell's own date functions give.
    ((text, created, about, seconds, created_seconds),) = query(
        db_path,
        "SELECT occurred_at, created_at, about, occurred_unix, created_unix FROM memories WHERE id = ?",
        (memory.id,),
    )
    assert (text, created, about) == (occurred_at, created_at, about_text("fact", occurred_at))
    assert query(db_path, "SELECT CAST(strftime('%s', ?) AS INTEGER)", (occurred_at,)) == [(seconds,)]
    assert created_seconds is None if created_at == occurred_at else isinstance(created_seconds, int)
    listed, _ = await store.list_memories(("active",), None, (), occurred_at, None, 0, 5)
    assert [m.id for m in listed] == [memory.id]


@pytest.mark.parametrize(
    ("statuses", "order", "index", "sorts"),
    [
        (("active",), BY_TIME, "memories_by_time", False),
        (("active",), BY_IMPORTANCE, "memories_by_importance", False),
        (("forgotten",), BY_TIME, "memories_inactive_by_time", False),
        # Two states: the index finds the (few) rows of each, which are then sorted.
        (("forgotten", "superseded"), BY_TIME, "memories_inactive_by_time", True),
    ],
)
async def test_each_listing_index_serves_a_listing(
    store: SQLiteStore, db_path: Path, statuses: tuple[str, ...], order: str, index: str, sorts: bool
) -> None:
    where, params = memory_filters(statuses, None, (), None, None)
    plan = query(
        db_path,
        f"EXPLAIN QUERY PLAN SELECT m.id FROM memories m WHERE {' AND '.join(where)} ORDER BY {order} LIMIT 5",
        tuple(params),
    )
    assert any(index in str(step[3]) for step in plan), plan
    assert any("TEMP B-TREE" in str(step[3]) for step in plan) == sorts, plan


async def test_a_listing_of_every_state_merges_both_indexes_in_order(store: SQLiteStore) -> None:
    ids = []
    for n, (day, status) in enumerate(
        [(3, "active"), (1, "forgotten"), (2, "active"), (4, "superseded"), (2, "forgotten")]
    ):
        memory, _ = await store.add_memory(
            new(f"memory number {n}").model_copy(update={"occurred_at": f"2024-05-0{day}T10:00:00Z"}), NOW
        )
        if status != "active":
            await store.set_memory_status(memory.id, status, None, NOW, expect=("active",))
        ids.append(memory.id)
    listed, total = await store.list_memories(
        ("active", "forgotten", "superseded"), None, (), None, None, 1, 3
    )
    # Newest first; of two on one day, the later stored.
    assert ([m.id for m in listed], total) == ([ids[0], ids[4], ids[2]], 5)
    listed, total = await store.list_memories(("active", "forgotten"), None, (), "2024-05-02", None, 0, 9)
    assert ([m.id for m in listed], total) == ([ids[0], ids[4], ids[2]], 3)


async def test_opening_twice_is_idempotent_and_keeps_the_data(db_path: Path) -> None:
    first = await SQLiteStore.open(db_path)
    memory, _ = await first.add_memory(new("kept across opens", tags=["t"]), NOW)
    await first.append_version("soul", "soul v1", "tester", "r", NOW, None)
    schema_before = query(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    # A second store on the same file while the first is still open, then a third after both close.
    second = await SQLiteStore.open(db_path)
    assert await second.get_memory(memory.id) == memory
    await second.close()
    await first.close()
    third = await SQLiteStore.open(db_path)
    recall = Recall(third)
    try:
        assert await third.get_memory(memory.id) == memory
        assert (await third.get_version("soul")).content == "soul v1"  # type: ignore[union-attr]
        assert [h.memory.id for h in await recall.search(SearchQuery(terms=("kept",)))] == [memory.id]
    finally:
        await recall.close()
        await third.close()
    assert user_version(db_path) == SCHEMA_VERSION
    assert query(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before


def connection_threads() -> set[threading.Thread]:
    """aiosqlite's worker threads (one per open connection); Python names a thread after its target."""
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


def open_connections() -> list[aiosqlite.Connection]:
    return [obj for obj in gc.get_objects() if isinstance(obj, aiosqlite.Connection)]


@pytest.fixture
def release_leaked_connections() -> Iterator[None]:
    """Stop any connection a failing test leaks: its thread would keep the test run from exiting.

    pytest keeps a failed test's traceback, and with it the leaked connection, so garbage collection
    alone does not stop it.
    """
    before = {id(conn) for conn in open_connections()}
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stop() outside a running event loop warns
        for conn in open_connections():
            if id(conn) not in before:
                conn.stop()  # harmless on a connection that was closed properly


def make_newer(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


async def test_a_newer_database_keeps_its_schema_version(db_path: Path) -> None:
    make_newer(db_path)
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        store = await SQLiteStore.open(db_path)
        await store.close()  # only reached if the refusal is missing
    assert user_version(db_path) == SCHEMA_VERSION + 1
    assert query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("t",)]


def make_not_a_database(db: Path) -> None:
    db.write_text("these are my notes, not a database\n" * 100)


@pytest.mark.usefixtures("release_leaked_connections")
@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (make_newer, "newer than this soul-mcp understands"),
        (
            make_not_a_database,
            "cannot open the database at .*soul.db: it is damaged \\(file is not a database\\)",
        ),
    ],
    ids=["newer-schema", "not-a-database"],
)
async def test_a_file_that_cannot_be_used_is_refused_and_left_alone(
    db_path: Path, prepare: Callable[[Path], None], message: str
) -> None:
    prepare(db_path)
    before = connection_threads()
    with pytest.raises(StorageError, match=message):
        await SQLiteStore.open(db_path)
    # The refused open must close what it opened: a connection thread left running keeps the
    # process alive, so `soul-mcp serve` would print the error and then hang instead of exiting.
    left = connection_threads() - before
    for thread in left:
        thread.join(timeout=5)
    assert not [t for t in left if t.is_alive()], "SQLiteStore.open left a connection open after failing"


# Connection settings -----------------------------------------------------------------------------


async def pragma(conn: aiosqlite.Connection, name: str) -> object:
    cursor = await conn.execute(f"PRAGMA {name}")
    row = await cursor.fetchone()
    await cursor.close()
    assert row is not None
    return row[0]


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_both_connections_use_wal_foreign_keys_and_a_busy_timeout(
    db_path: Path, synchronous: str, level: int
) -> None:
    store = await SQLiteStore.open(db_path, synchronous)
    try:
        # These are per-connection settings, so they can only be read on the store's own connections.
        for conn in (store._writer, store._reader):
            assert await pragma(conn, "journal_mode") == "wal"
            assert await pragma(conn, "foreign_keys") == 1
            assert await pragma(conn, "busy_timeout") == BUSY_TIMEOUT_MS
            assert await pragma(conn, "synchronous") == level
        assert await pragma(store._reader, "query_only") == 1
        assert await pragma(store._writer, "query_only") == 0
    finally:
        await store.close()
    # WAL is a property of the file: another process opening it sees it too.
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


# The full-text index holds active memories only --------------------------------------------------


async def test_fts_index_holds_only_active_memories(store: SQLiteStore, db_path: Path) -> None:
    a, _ = await store.add_memory(new("garden alpha"), NOW)
    b, _ = await store.add_memory(new("garden beta"), NOW)
    c, _ = await store.add_memory(new("garden gamma"), NOW)
    assert fts_ids(db_path, "garden") == {a.id, b.id, c.id}

    await store.set_memory_status(a.id, "forgotten", "wrong", NOW, expect=("active",))
    assert fts_ids(db_path, "garden") == {b.id, c.id}
    assert fts_ids(db_path, "alpha") == set()

    await store.set_memory_status(a.id, "active", None, NOW, expect=("forgotten",))
    assert fts_ids(db_path, "alpha") == {a.id}

    old, revised = await store.revise_memory(b.id, new("garden delta"), "renamed", NOW)
    assert old.status == "superseded"
    assert fts_ids(db_path, "beta") == set()
    assert fts_ids(db_path, "delta") == {revised.id}

    await store.set_memory_status(c.id, "forgotten", "gone", NOW, expect=("active",))
    await store.purge_memory(c.id)
    assert fts_ids(db_path, "garden") == {a.id, revised.id}
    assert fts_ids(db_path, "gamma") == set()
    # The index is consistent in itself after all these deletes (a 'delete' with the wrong values
    # would corrupt it).
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")


async def test_failed_revision_rolls_back_and_keeps_the_index(store: SQLiteStore, db_path: Path) -> None:
    a, _ = await store.add_memory(new("garden alpha"), NOW)
    await store.add_memory(new("garden beta"), NOW)
    with pytest.raises(InvalidInput, match="already stored as memory"):
        await store.revise_memory(a.id, new("Garden  BETA"), "duplicate", NOW)
    assert (await store.get_memory(a.id)).status == "active"  # type: ignore[union-attr]
    assert a.id in fts_ids(db_path, "alpha")
    assert query(db_path, "SELECT count(*) FROM memories") == [(2,)]


async def test_one_active_memory_per_normalised_content(store: SQLiteStore) -> None:
    first, is_new = await store.add_memory(new("Sam likes tea"), NOW)
    again, again_new = await store.add_memory(new("  sam LIKES tea "), NOW)
    assert is_new and not again_new and again.id == first.id
    await store.set_memory_status(first.id, "forgotten", "r", NOW, expect=("active",))
    fresh, fresh_new = await store.add_memory(new("Sam likes tea"), NOW)
    assert fresh_new and fresh.id != first.id


# Purging -----------------------------------------------------------------------------------------


async def test_purge_deletes_the_memory_and_its_tag_rows(store: SQLiteStore, db_path: Path) -> None:
    doomed, _ = await store.add_memory(new("to be purged", tags=["home", "garden"]), NOW)
    kept, _ = await store.add_memory(new("to be kept", tags=["home"]), NOW)

    def tag_rows() -> list[tuple[object, ...]]:
        return query(
            db_path,
            "SELECT m.id, t.tag FROM memory_tags t JOIN memories m ON m.rowid = t.memory_rowid ORDER BY 1, 2",
        )

    assert sorted(tag_rows()) == sorted([(doomed.id, "garden"), (doomed.id, "home"), (kept.id, "home")])
    with pytest.raises(InvalidInput, match="only forgotten memories can be purged"):
        await store.purge_memory(doomed.id)
    await store.set_memory_status(doomed.id, "forgotten", "r", NOW, expect=("active",))
    await store.purge_memory(doomed.id)
    assert await store.get_memory(doomed.id) is None
    assert tag_rows() == [(kept.id, "home")]
    # No tag row is left pointing at a memory that no longer exists.
    assert query(
        db_path, "SELECT count(*) FROM memory_tags WHERE memory_rowid NOT IN (SELECT rowid FROM memories)"
    ) == [(0,)]


async def test_integrity_check_is_ok_after_every_kind_of_change(store: SQLiteStore) -> None:
    for n in range(5):
        await store.append_version("soul", f"soul {n}", "tester", "r", NOW, "s1")
    memories = [(await store.add_memory(new(f"memory {n}", tags=[f"t{n}"]), NOW))[0] for n in range(6)]
    await store.set_memory_status(memories[0].id, "forgotten", "r", NOW, expect=("active",))
    await store.purge_memory(memories[0].id)
    await store.revise_memory(memories[1].id, new("memory one, revised"), "r", NOW)
    await store.set_memory_status(memories[2].id, "forgotten", "r", NOW, expect=("active",))
    await store.set_memory_status(memories[2].id, "active", None, NOW, expect=("forgotten",))
    await store.record_session("s1", "tester", NOW)
    await store.record_session("s1", "tester", NOW)
    assert await store.integrity_check() == "ok"
    stats = await store.stats()
    assert (stats.memories_active, stats.memories_superseded, stats.memories_forgotten) == (5, 1, 0)
    assert stats.document_versions == {"soul": 5}
    assert stats.sessions == 1


# Recall's in-memory index ------------------------------------------------------------------------
#
# Recall ranks in memory (recall/index.py over storage/sqlite_recall.py): each word's part of the
# bm25 score is fetched from FTS5 once and kept, and the change log keeps it true while this store or another connection
# writes. The ranking must be that of one plain MATCH of all the words, computed here in SQL. Every
# memory has its own session, so that no neighbour lends it a score.

# How many memories hold each word: two in most, the others in fewer and fewer.
SHARES = {"project": 0.55, "meeting": 0.45, "garden": 0.12, "budget": 0.12, "travel": 0.12}
SHARES |= {"piano": 0.12, "harbor": 0.12, "lantern": 0.07, "copper": 0.07}
SHARES |= {"zebra": 0.05, "quartz": 0.05, "violet": 0.05, "ember": 0.05, "walnut": 0.05}
FILLER = [f"filler{n}" for n in range(40)]
DAYS = [f"2024-03-{day:02d}T09:00:00Z" for day in range(1, 29)]


def corpus(count: int, seed: int = 7) -> list[NewMemory]:
    rng = random.Random(seed)
    memories = []
    for n in range(count):
        words = [word for word, share in SHARES.items() if rng.random() < share]
        words += [w for w in words if rng.random() < 0.2]  # some words twice
        words += [*rng.sample(FILLER, rng.randint(1, 9)), f"note{n}"]
        rng.shuffle(words)
        content = " ".join(words)
        memories.append(
            NewMemory(
                content=content,
                content_key=content_key(content),
                kind=rng.choice(["fact", "event"]),  # type: ignore[arg-type]
                tags=rng.sample(["home", "work", "music"], rng.randint(0, 2)),
                importance=3,
                occurred_at=DAYS[n * len(DAYS) // count],
                author="tester",
                session_id=f"s{n}",
            )
        )
    return memories


@pytest.fixture
async def scale_store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    """400 memories; several words are held by more than PREFILL_MIN of them."""
    opened = await SQLiteStore.open(db_path, synchronous="OFF")
    try:
        for memory in corpus(400):
            await opened.add_memory(memory, NOW)
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def recall(scale_store: SQLiteStore) -> AsyncIterator[Recall]:
    """The recall engine over scale_store; it keeps what it ranks in memory. Its BM25 scores are
    what these tests compare with FTS5's: the learned ranker, which re-orders the candidates they
    make, is off (tests/test_ranker.py tests it)."""
    engine = Recall(scale_store)
    engine.ranker_file = None
    try:
        yield engine
    finally:
        await engine.close()


def plain_ranking(
    db: Path, terms: list[str], where: str = "", params: tuple[object, ...] = ()
) -> list[tuple[str, float]]:
    """Every match of one MATCH of all the words, best first, as recall ranked them before."""
    rows = query(
        db,
        "SELECT m.id, -bm25(memories_fts, 1.0, 0.5, 0.5) AS score FROM memories_fts "
        "JOIN memories m ON m.rowid = memories_fts.rowid "
        f"WHERE memories_fts MATCH ? {where} ORDER BY score DESC, m.rowid DESC",
        (" OR ".join(f'"{t}"' for t in terms), *params),
    )
    return [(str(i), float(s)) for i, s in rows]


def top(ranking: list[tuple[str, float]], k: int) -> list[tuple[float, str]]:
    """The first k (fewer if the k-th ties with the next), in an order that ignores ties."""
    while 0 < k < len(ranking) and round(ranking[k - 1][1], 9) == round(ranking[k][1], 9):
        k -= 1
    return sorted((round(score, 9), memory_id) for memory_id, score in ranking[:k])


async def recalled(
    recall: Recall, terms: list[str], limit: int, **filters: object
) -> list[tuple[str, float]]:
    hits = await recall.search(SearchQuery(terms=tuple(terms), limit=limit, **filters))  # type: ignore[arg-type]
    return [(hit.memory.id, hit.score) for hit in hits]


# Rare words and common ones, pairs and longer queries.
QUERIES = [
    ["zebra", "project"],
    ["quartz", "lantern", "meeting"],
    ["zebra", "garden", "budget"],
    ["ember", "garden", "harbor"],
    ["walnut", "budget", "travel"],
    ["ember", "garden", "budget", "travel", "piano"],
    ["walnut", "copper", "harbor", "piano", "project"],
    ["zebra", "quartz", "garden", "travel", "lantern", "meeting"],
    ["project", "meeting", "piano"],
    ["garden", "budget"],
]


def same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]], near: float = 1e-9) -> None:
    """The same memories with the same scores (within `near` times the best score), in an order
    that agrees wherever the scores differ by more than that."""
    assert expected, "the query matches nothing: the test would prove nothing"
    assert sorted(i for i, _ in got) == sorted(i for i, _ in expected)
    want = dict(expected)
    margin = near * expected[0][1]
    for memory_id, score in got:
        assert score == pytest.approx(want[memory_id], abs=margin), memory_id
    for (_, first), (_, second) in itertools.pairwise(got):
        assert first >= second - 2 * margin


@pytest.mark.parametrize("terms", QUERIES, ids=["-".join(q) for q in QUERIES])
async def test_the_ranking_is_that_of_one_plain_match(
    recall: Recall, db_path: Path, terms: list[str]
) -> None:
    same_ranking(await recalled(recall, terms, limit=500), plain_ranking(db_path, terms))


FILTERS: list[tuple[dict[str, object], str, tuple[object, ...]]] = [
    ({"tags": ("home",)}, "AND m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag = 'home')", ()),
    (
        {"tags": ("home", "work")},
        "AND m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag = 'home') "
        "AND m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag = 'work')",
        (),
    ),
    ({"since": DAYS[20]}, "AND m.occurred_at >= ?", (DAYS[20],)),
    (
        {"since": DAYS[3], "until": DAYS[25]},
        "AND m.occurred_at >= ? AND m.occurred_at < ?",
        (DAYS[3], DAYS[25]),
    ),
    ({"kind": "event"}, "AND m.kind = 'event'", ()),
    ({"kind": "lesson"}, "AND m.kind = 'lesson'", ()),
]


@pytest.mark.parametrize(
    "filters,where,params", FILTERS, ids=["tag", "two-tags", "since", "range", "kind", "absent-kind"]
)
async def test_filtered_rankings_are_those_of_one_plain_match(
    recall: Recall, db_path: Path,
    filters: dict[str, object], where: str, params: tuple[object, ...],
) -> None:  # fmt: skip
    for terms in QUERIES:
        expected = plain_ranking(db_path, terms, where, params)
        got = await recalled(recall, terms, limit=500, **filters)
        if filters.get("kind") == "lesson":
            assert got == expected == []
        else:
            same_ranking(got, expected)


async def test_pages_split_one_ranking(recall: Recall) -> None:
    terms = ["violet", "budget", "travel", "project"]
    whole = await recalled(recall, terms, limit=60)
    pages = []
    for offset in range(0, 60, 6):
        hits = await recall.search(SearchQuery(terms=tuple(terms), offset=offset, limit=6))
        pages += [(hit.memory.id, hit.score) for hit in hits]
    assert pages == whole and len(whole) == 60


async def test_the_commonest_words_are_fetched_ahead_in_a_thread(recall: Recall, db_path: Path) -> None:
    from soul_mcp.recall.prefill import PREFILL_MIN

    common = [w for w, share in SHARES.items() if share * 400 > 2 * PREFILL_MIN]
    assert common, "no word is common enough for the test to prove anything"
    await recalled(recall, ["zebra"], limit=5)  # loads the index, which starts the thread
    index = recall.index
    assert index._prefill is not None
    index._prefill.join(30)
    await recalled(recall, ["zebra"], limit=5)  # adopts what the thread fetched
    assert set(index.tokens.keys(common)) <= index.words.keys()
    assert "meet" in index.tokens.keys(common)  # kept by token: "meeting" and "meetings" are one
    # What the thread fetched ranks as a plain MATCH does.
    for terms in QUERIES:
        same_ranking(await recalled(recall, terms, limit=500), plain_ranking(db_path, terms))


async def test_writes_of_another_connection_reach_the_ranking(recall: Recall, db_path: Path) -> None:
    # Another store on the same file stands for another server process.
    other = await SQLiteStore.open(db_path, synchronous="OFF")
    terms = ["project", "meeting", "zebra"]
    # bm25 weighs a word by how many memories hold it (and by the average length of a memory), and
    # a kept word is fetched again only once these have moved by more than STALE_SHARE: so after a
    # few writes its scores may be off by a little.
    near = 0.005

    async def check(where: str = "") -> None:
        expected = plain_ranking(db_path, terms, where)
        same_ranking(await recalled(recall, terms, limit=500), expected, near)
        for filters, condition in [({"tags": ("home",)}, FILTERS[0][1]), ({"kind": "event"}, FILTERS[4][1])]:
            expected = plain_ranking(db_path, terms, f"{where} {condition}")
            same_ranking(await recalled(recall, terms, limit=500, **filters), expected, near)

    try:
        await check()  # the words are now kept
        # Memories stored by the other process: new matches, at rowids past those kept.
        for n in range(3):
            await other.add_memory(
                new(f"project zebra meeting new{n}", tags=["home"], kind="event", session=f"new{n}"), NOW
            )
        await check()
        # Forgotten there: out of the ranking here.
        zebra = [str(i) for (i,) in query(db_path, "SELECT id FROM memories WHERE content LIKE '%zebra%'")]
        for memory_id in zebra[:5]:
            await other.set_memory_status(memory_id, "forgotten", "gone", NOW, expect=("active",))
        await check()
        assert not {i for i, _ in await recalled(recall, terms, limit=500)} & set(zebra[:5])
        # Restored there: back in the ranking, with every word it holds.
        await other.set_memory_status(zebra[0], "active", None, NOW, expect=("forgotten",))
        await check()
        assert zebra[0] in {i for i, _ in await recalled(recall, ["meeting", "project", "zebra"], limit=500)}
        # The newest memory purged and its rowid given to a new memory with other words.
        (newest,) = query(db_path, "SELECT id FROM memories ORDER BY rowid DESC LIMIT 1")[0]
        await other.set_memory_status(str(newest), "forgotten", "gone", NOW, expect=("active",))
        await other.purge_memory(str(newest))
        reused, _ = await other.add_memory(new("zebra alone here", session="reused"), NOW)
        assert query(db_path, "SELECT rowid FROM memories WHERE id = ?", (reused.id,)) == query(
            db_path, "SELECT max(rowid) FROM memories"
        )
        await check()
        found = dict(await recalled(recall, ["zebra"], limit=500))
        assert reused.id in found and newest not in found
        assert reused.id not in {i for i, _ in await recalled(recall, ["meeting"], limit=500)}
        # Enough new memories that the kept scores are fetched again: exact once more.
        for n in range(20):
            await other.add_memory(new(f"filler{n} garden travel{n}", session=f"filler{n}"), NOW)
        near = 1e-9
        await check()
    finally:
        await other.close()


async def test_many_changes_at_once_are_read_whole(
    recall: Recall, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soul_mcp.recall import index

    terms = ["zebra", "garden", "imported"]
    same_ranking(await recalled(recall, terms, limit=500), plain_ranking(db_path, terms))
    # Another process imports a batch larger than RELOAD_ABOVE: the columns are read again whole.
    monkeypatch.setattr(index, "RELOAD_ABOVE", 5)
    other = await SQLiteStore.open(db_path, synchronous="OFF")
    try:
        for n in range(12):
            await other.add_memory(new(f"imported zebra note {n}", session=f"import{n}"), NOW)
    finally:
        await other.close()
    epoch = recall.index.epoch
    same_ranking(await recalled(recall, terms, limit=500), plain_ranking(db_path, terms))
    assert recall.index.epoch > epoch


async def test_the_recall_index_tokenizes_words_as_the_full_text_index_does(
    store: SQLiteStore, db_path: Path
) -> None:
    # Kept words are keyed by the token FTS5 makes of them (sqlite_recall.Tokens): the two tokenizers
    # must be the same, or a kept word would never be found again.
    from soul_mcp.storage.sqlite_recall import TOKENIZE, Tokens

    (definition,) = query(db_path, "SELECT sql FROM sqlite_master WHERE name = 'memories_fts'")[0]
    assert f"tokenize = '{TOKENIZE}'" in str(definition)
    assert Tokens().keys(["Meetings", "café", "running", "?!"]) == ["meet", "cafe", "run", ""]


def test_a_word_counted_in_more_memories_than_the_count_read_gets_the_floor_weight() -> None:
    # The memory count and a word's postings are read at different moments: a burst of writes in
    # between can make the word look more common than the whole (the prefill thread crashed on it).
    assert idf(100, 1) == pytest.approx(math.log(99.5 / 1.5))
    assert idf(3, 2) == 1e-6  # FTS5's floor for a word in more than half the memories
    assert idf(3, 5) == 1e-6 and idf(0, 1) == 1e-6


def test_the_tokenizer_keeps_answering_when_its_cache_is_emptied() -> None:
    from soul_mcp.storage.sqlite_recall import Tokens

    tokens = Tokens()
    tokens.keys(["meetings"])
    tokens._known.update((f"w{n}", f"w{n}") for n in range(100_001))  # full: the next call empties it
    assert tokens.keys(["meetings", "gardens"]) == ["meet", "garden"]
