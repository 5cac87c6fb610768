"""SQLiteStore on real files: migrations, connection settings, the full-text index and purging."""

from __future__ import annotations

import gc
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
from soul_mcp.storage.base import SearchQuery
from soul_mcp.storage.schema import SCHEMA_VERSION
from soul_mcp.storage.sqlite import BUSY_TIMEOUT_MS, SQLiteStore

pytestmark = pytest.mark.anyio

NOW = "2024-05-08T10:00:00Z"
TABLES = {"document_versions", "memories", "memory_tags", "memories_fts", "sessions"}


def new(content: str, tags: list[str] | None = None, kind: str = "fact") -> NewMemory:
    return NewMemory(
        content=content,
        content_key=content_key(content),
        kind=kind,  # type: ignore[arg-type]
        tags=tags or [],
        importance=3,
        occurred_at=NOW,
        author="tester",
        session_id="s1",
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
    try:
        assert await third.get_memory(memory.id) == memory
        assert (await third.get_version("soul")).content == "soul v1"  # type: ignore[union-attr]
        assert [h.memory.id for h in await third.search(SearchQuery(terms=("kept",)))] == [memory.id]
    finally:
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
        (make_not_a_database, "cannot open the database at .*soul.db: file is not a database"),
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
