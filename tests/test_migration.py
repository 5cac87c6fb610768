"""Schema migrations on files made by older versions: 6 (dedup key as a digest, unused indexes
dropped) on a version 5 file, 7 (times as seconds, computed columns, partial listing indexes) on a
version 6 file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from soul_mcp.core.text import content_key
from soul_mcp.errors import InvalidInput, StorageError
from soul_mcp.models import NewMemory
from soul_mcp.recall import Recall, SearchQuery
from soul_mcp.storage import schema
from soul_mcp.storage import sqlite as sqlite_store
from soul_mcp.storage.schema import MIGRATIONS, SCHEMA_VERSION, content_digest, split_statements
from soul_mcp.storage.sqlite import SQLiteStore, about_text
from soul_mcp.storage.sqlite_embeddings import text_hash
from soul_mcp.storage.sqlite_rows import MEMORY_COLUMNS as ALL_MEMORY_COLUMNS
from soul_mcp.storage.sqlite_rows import stored_seconds

pytestmark = pytest.mark.anyio

WHEN = "2024-05-08T10:00:00Z"
# (id, content, tags, status, superseded_by)
ROWS = [
    ("m_000000000001", "Maya moved to Kyoto in 1987", ["family", "places"], "active", None),
    ("m_000000000002", "The garden needs water every Tuesday", ["home"], "forgotten", None),
    ("m_000000000003", "Tomas prefers tea over coffee", ["people"], "superseded", "m_000000000004"),
    ("m_000000000004", "Tomas prefers green tea over coffee", ["people"], "active", None),
    ("m_000000000005", "Meet at nine in Kyoto station", [], "forgotten", None),
    ("m_000000000006", "MEET at nine   in Kyoto station", ["plans"], "active", None),
    ("m_000000000007", "Varga wrote about Kyoto trains", ["people", "places"], "active", None),
]
QUERIES = [("kyoto",), ("tea",), ("tomas", "coffee"), ("garden",), ("varga", "kyoto", "1987")]


def version_5_database(path: Path) -> None:
    """A file as soul-mcp wrote it at schema version 5, with memories in every state, tags and
    document versions, through the old statements and the old insert (the key as full text)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    for migration in MIGRATIONS[:5]:
        for statement in split_statements(migration):
            db.execute(statement)
    db.execute("PRAGMA user_version = 5")
    for memory_id, content, tags, status, superseded_by in ROWS:
        cursor = db.execute(
            "INSERT INTO memories (id, content, content_key, kind, tags, importance, occurred_at, about, "
            "created_at, author, session_id) VALUES (?, ?, ?, 'fact', ?, 3, ?, ?, ?, 'tester', 's1')",
            (
                memory_id,
                content,
                content_key(content),
                json.dumps(tags),
                WHEN,
                about_text("fact", WHEN),
                WHEN,
            ),
        )
        db.executemany(
            "INSERT INTO memory_tags (tag, memory_rowid) VALUES (?, ?)", [(t, cursor.lastrowid) for t in tags]
        )
        if status != "active":
            db.execute(
                "UPDATE memories SET status = ?, status_reason = 'test', status_changed_at = ?, "
                "superseded_by = ? WHERE id = ?",
                (status, WHEN, superseded_by, memory_id),
            )
    db.execute("UPDATE memories SET supersedes = 'm_000000000003' WHERE id = 'm_000000000004'")
    for version in (1, 2):
        db.execute(
            "INSERT INTO document_versions (document, version, content, author, created_at) "
            "VALUES ('soul', ?, ?, 'tester', ?)",
            (version, f"soul v{version}", WHEN),
        )
    db.close()


# The columns every schema has held (status_changed_by came with migration 9).
MEMORY_COLUMNS = ALL_MEMORY_COLUMNS.replace(", m.status_changed_by", "")


def read(path: Path, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def snapshot(path: Path) -> dict[str, Any]:
    """What the migration must keep: every memory row as read, tags, versions, and the ranking of
    each query by the full-text index."""
    return {
        "memories": read(path, f"SELECT m.rowid, {MEMORY_COLUMNS} FROM memories m ORDER BY m.rowid"),
        "tags": read(path, "SELECT tag, memory_rowid FROM memory_tags ORDER BY 1, 2"),
        "versions": read(path, "SELECT * FROM document_versions ORDER BY 1, 2"),
        "rankings": [
            read(
                path,
                "SELECT m.id, round(bm25(memories_fts, 1.0, 0.5, 0.5), 9) FROM memories_fts "
                "JOIN memories m ON m.rowid = memories_fts.rowid WHERE memories_fts MATCH ? ORDER BY 2, 1",
                (" ".join(words),),
            )
            for words in QUERIES
        ],
    }


def new(content: str) -> NewMemory:
    return NewMemory(
        content=content, content_key=content_key(content), kind="fact", tags=[], importance=3,
        occurred_at=WHEN, author="tester", session_id="s2",
    )  # fmt: skip


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    version_5_database(path)
    return path


async def test_a_version_5_file_migrates_and_keeps_its_memories(old_file: Path) -> None:
    before = snapshot(old_file)
    store = await SQLiteStore.open(old_file)
    recall = Recall(store)
    try:
        assert store.migrated_from == 5
        assert snapshot(old_file) == before
        # The keys are digests now, and the indexes no query plan used are gone.
        keys = read(old_file, "SELECT content, content_key FROM memories ORDER BY rowid")
        assert all(key == content_digest(content_key(content)) for content, key in keys)
        names = {n for (n,) in read(old_file, "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "memories_active_content" in names
        assert not names & {"memories_when_kind", "memory_tags_by_memory"}

        # Dedup: the active twin answers, the forgotten one does not count.
        same, is_new = await store.add_memory(new("maya MOVED to kyoto in 1987"), WHEN)
        assert (same.id, is_new) == ("m_000000000001", False)
        garden, is_new = await store.add_memory(new("The garden needs water every Tuesday"), WHEN)
        assert is_new and garden.id not in {r[0] for r in ROWS}
        # Restore refuses a memory whose content is active under another id, allows the others.
        with pytest.raises(InvalidInput, match="m_000000000006"):
            await store.set_memory_status("m_000000000005", "active", None, WHEN, expect=("forgotten",))
        await store.set_memory_status(garden.id, "forgotten", "again", WHEN, expect=("active",))
        restored = await store.set_memory_status(
            "m_000000000002", "active", None, WHEN, expect=("forgotten",)
        )
        assert restored.status == "active"
        # Revising into the content of another active memory is refused, as before.
        with pytest.raises(InvalidInput, match="m_000000000004"):
            await store.revise_memory("m_000000000007", new("tomas prefers green tea over coffee"), "x", WHEN)

        # Tag filters and recall.
        listed, total = await store.list_memories(("active",), None, ("people", "places"), None, None, 0, 10)
        assert ([m.id for m in listed], total) == (["m_000000000007"], 1)
        hits = await recall.search(SearchQuery(terms=("kyoto",), limit=10))
        assert {h.memory.id for h in hits if h.context_of is None} == {
            "m_000000000001", "m_000000000006", "m_000000000007"
        }  # fmt: skip
        tagged = await recall.search(SearchQuery(terms=("kyoto",), tags=("places",), limit=10))
        assert {h.memory.id for h in tagged if h.context_of is None} == {"m_000000000001", "m_000000000007"}
        # Purge still cascades to the tag rows (without their index, by a scan).
        await store.set_memory_status("m_000000000007", "forgotten", "x", WHEN, expect=("active",))
        await store.purge_memory("m_000000000007")
        assert read(old_file, "SELECT count(*) FROM memory_tags WHERE memory_rowid = 7") == [(0,)]
        await store.check_intact()
    finally:
        await recall.close()
        await store.close()


async def test_a_new_file_and_a_migrated_one_have_the_same_schema(old_file: Path, tmp_path: Path) -> None:
    await (await SQLiteStore.open(old_file)).close()
    fresh = tmp_path / "fresh.db"
    await (await SQLiteStore.open(fresh)).close()
    schema_sql = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert read(old_file, schema_sql) == read(fresh, schema_sql)
    assert read(fresh, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_failure_mid_migration_leaves_the_file_as_it_was(
    old_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump_before = list(sqlite3.connect(old_file).iterdump())
    calls: list[str] = []

    def failing_digest(key: str) -> bytes:
        calls.append(key)
        if len(calls) == 4:
            raise RuntimeError("disk gone")
        return content_digest(key)

    monkeypatch.setitem(schema.SQL_FUNCTIONS, "soul_content_digest", failing_digest)
    with pytest.raises(StorageError):
        await SQLiteStore.open(old_file)
    assert len(calls) == 4
    assert read(old_file, "PRAGMA user_version") == [(5,)]
    assert list(sqlite3.connect(old_file).iterdump()) == dump_before
    # And it migrates once the cause is gone.
    monkeypatch.undo()
    store = await SQLiteStore.open(old_file)
    try:
        assert store.migrated_from == 5
    finally:
        await store.close()


OPEN_AND_SAY = """
import anyio, sys
from soul_mcp.storage.sqlite import SQLiteStore
async def main():
    store = await SQLiteStore.open(sys.argv[1])
    print(store.migrated_from)
    await store.close()
anyio.run(main)
"""


def test_two_processes_opening_an_old_file_migrate_it_once(old_file: Path) -> None:
    before = snapshot(old_file)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_SAY, str(old_file)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    said = sorted(run.communicate(timeout=60)[0].strip() for run in runs)
    assert [run.returncode for run in runs] == [0, 0]
    assert said == ["5", "None"]
    assert snapshot(old_file) == before
    keys = read(old_file, "SELECT content, content_key FROM memories ORDER BY rowid")
    assert all(key == content_digest(content_key(content)) for content, key in keys)


# Times of the version 6 rows: a stored form, one created later, one in the first year and one in
# a form no version wrote (kept as text).
TIMES_6 = {
    "m_000000000001": ("2023-05-08T23:59:59Z", "2023-05-08T23:59:59Z"),
    "m_000000000002": ("2024-02-29T00:00:00Z", "2024-03-01T08:30:00Z"),
    "m_000000000003": ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    "m_000000000004": ("9998-12-31T23:59:59Z", "2024-05-08T10:00:00Z"),
    "m_000000000005": ("2024-05-08T10:00:00.5Z", "2024-05-08T10:00:00Z"),
}


def version_6_database(path: Path) -> None:
    """A file as soul-mcp wrote it at schema version 6: the version 5 file migrated by version 6's
    statements, with varied times, embeddings rows and a longer change log."""
    version_5_database(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.create_function("soul_content_digest", 1, content_digest, deterministic=True)
    db.execute("BEGIN")
    for statement in split_statements(MIGRATIONS[5]):
        db.execute(statement)
    db.execute("PRAGMA user_version = 6")
    for memory_id, (occurred_at, created_at) in TIMES_6.items():
        db.execute(
            "UPDATE memories SET occurred_at = ?, created_at = ?, about = ? WHERE id = ?",
            (occurred_at, created_at, about_text("fact", occurred_at), memory_id),
        )
    # The full-text index as the triggers would have made it with these `about` words.
    db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('delete-all')")
    db.execute(
        "INSERT INTO memories_fts (rowid, content, tags, about) "
        "SELECT rowid, content, tags, about FROM memories WHERE status = 'active'"
    )
    db.executemany(
        "INSERT INTO memory_embeddings (memory_rowid, model, dims, text_hash, vector) VALUES (?, 'm', 2, ?, ?)",
        [(rowid, text_hash(str(rowid)), bytes(8)) for rowid in (1, 4, 6, 7)],
    )
    db.execute("COMMIT")
    db.close()


def fts_tokens(path: Path) -> list[tuple[Any, ...]]:
    """Every token of the full-text index, with its memory, column and position."""
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE VIRTUAL TABLE temp.tokens USING fts5vocab (main, memories_fts, instance)")
        return db.execute("SELECT * FROM temp.tokens ORDER BY 1, 2, 3, 4").fetchall()
    finally:
        db.close()


def kept_rows(path: Path) -> dict[str, Any]:
    return {
        **snapshot(path),
        "about": read(path, "SELECT rowid, about FROM memories ORDER BY rowid"),
        "tokens": fts_tokens(path),
        "embeddings": read(path, "SELECT * FROM memory_embeddings ORDER BY id"),
        "changes": read(path, "SELECT * FROM memory_changes ORDER BY seq"),
    }


@pytest.fixture
def file_6(tmp_path: Path) -> Path:
    path = tmp_path / "six.db"
    version_6_database(path)
    return path


async def test_a_version_6_file_migrates_with_the_same_rows_tokens_and_rankings(file_6: Path) -> None:
    before = kept_rows(file_6)
    assert before["tokens"] and before["embeddings"] and before["tags"]
    store = await SQLiteStore.open(file_6)
    recall = Recall(store)
    try:
        assert store.migrated_from == 6
        # Compacted after the rebuild: no free page left behind.
        assert read(file_6, "PRAGMA freelist_count") == [(0,)]
        # Same rows through every column read (times as the same text), the same `about` words,
        # the same tokens in the index, rankings, tag and embedding rows, and no entry in the log.
        assert kept_rows(file_6) == before
        stored = read(file_6, "SELECT id, occurred_unix, created_unix FROM memories ORDER BY rowid")
        assert stored[0] == ("m_000000000001", 1683590399, None)
        assert stored[1] == ("m_000000000002", 1709164800, 1709281800)
        assert stored[4] == ("m_000000000005", "2024-05-08T10:00:00.5Z", 1715162400)
        assert [r[1] for r in stored] == [stored_seconds(TIMES_6.get(r[0], (WHEN,))[0]) for r in stored]

        for memory_id, (occurred_at, created_at) in TIMES_6.items():
            memory = await store.get_memory(memory_id)
            assert memory is not None
            assert (memory.occurred_at, memory.created_at) == (occurred_at, created_at)
        # Listings: the same order (by time, newest first) and filters, in each state.
        everything, total = await store.list_memories(
            ("active", "forgotten", "superseded"), None, (), None, None, 0, 10
        )
        by_time = sorted(ROWS, key=lambda r: (TIMES_6.get(r[0], (WHEN,))[0], r[0]), reverse=True)
        # Except the time no version wrote, kept as text: it sorts after (newer than) every time
        # kept as seconds, as SQLite orders text after numbers.
        odd = "m_000000000005"
        expected = [odd] + [r[0] for r in by_time if r[0] != odd]
        assert ([m.id for m in everything], total) == (expected, 7)
        forgotten, _ = await store.list_memories(("forgotten",), None, (), None, None, 0, 10)
        assert [m.id for m in forgotten] == ["m_000000000005", "m_000000000002"]
        window, total = await store.list_memories(
            ("active", "forgotten"), None, (), "2023-05-08T23:59:59Z", "2024-05-08T10:00:00Z", 0, 10
        )
        assert ([m.id for m in window], total) == (["m_000000000002", "m_000000000001"], 2)
        ordered = await recall.search(SearchQuery(terms=(), order="importance", until="2024-01-01", limit=10))
        assert [h.memory.id for h in ordered] == ["m_000000000001"]

        # Writes after the migration: the log, the index and the embeddings' trigger work again.
        added, is_new = await store.add_memory(new("Kyoto in the rain"), "2024-05-09T08:00:00Z")
        assert is_new and added.created_at == "2024-05-09T08:00:00Z" and added.occurred_at == WHEN
        assert (await store.get_memory(added.id)) == added
        await store.set_memory_status("m_000000000006", "forgotten", "x", WHEN, expect=("active",))
        assert len(read(file_6, "SELECT * FROM memory_changes")) == len(before["changes"]) + 2
        assert read(file_6, "SELECT memory_rowid FROM memory_embeddings ORDER BY 1") == [(1,), (4,)]
        hits = await recall.search(SearchQuery(terms=("kyoto",), limit=10))
        assert {h.memory.id for h in hits if h.context_of is None} == {
            "m_000000000001", "m_000000000007", added.id
        }  # fmt: skip
        # Purging still cascades to the tag rows: foreign keys are on again after the migration.
        await store.set_memory_status("m_000000000007", "forgotten", "x", WHEN, expect=("active",))
        await store.purge_memory("m_000000000007")
        assert read(file_6, "SELECT count(*) FROM memory_tags WHERE memory_rowid = 7") == [(0,)]
        await store.check_intact()
        assert (await store.diagnose()).index_check == "ok"
    finally:
        await recall.close()
        await store.close()


async def test_the_full_text_index_rebuilt_after_migration_has_the_same_tokens(file_6: Path) -> None:
    before = fts_tokens(file_6)
    store = await SQLiteStore.open(file_6)
    try:
        assert await store.rebuild_text_index() == 4
    finally:
        await store.close()
    assert fts_tokens(file_6) == before


async def test_a_failure_late_in_migration_7_leaves_the_version_6_file_as_it_was(
    file_6: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump_before = list(sqlite3.connect(file_6).iterdump())
    # After the rebuild, the indexes and the triggers: the last statement fails.
    failing = [*MIGRATIONS[:6], MIGRATIONS[6] + "\nINSERT INTO no_such_table VALUES (1);"]
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", failing)
    with pytest.raises(StorageError, match="no_such_table"):
        await SQLiteStore.open(file_6)
    assert read(file_6, "PRAGMA user_version") == [(6,)]
    assert list(sqlite3.connect(file_6).iterdump()) == dump_before
    monkeypatch.undo()
    store = await SQLiteStore.open(file_6)
    try:
        assert store.migrated_from == 6
        assert (await store.stats()).memories_active == 4
    finally:
        await store.close()


async def test_references_broken_before_the_migration_do_not_stop_it(file_6: Path) -> None:
    db = sqlite3.connect(file_6)
    db.execute("INSERT INTO memory_tags (tag, memory_rowid) VALUES ('orphan', 99)")  # foreign keys off
    db.commit()
    db.close()
    store = await SQLiteStore.open(file_6)
    try:
        assert store.migrated_from == 6
    finally:
        await store.close()
    assert read(file_6, "SELECT memory_rowid FROM memory_tags WHERE tag = 'orphan'") == [(99,)]


async def test_an_id_or_kind_of_another_form_is_kept_as_its_text(file_6: Path) -> None:
    db = sqlite3.connect(file_6)
    for memory_id, content, kind in (
        ("M_Legacy-1", "an odd id", "fact"),
        ("m_00000000000a", "an odd kind", "dream"),
    ):
        db.execute(
            "INSERT INTO memories (id, content, content_key, kind, tags, importance, occurred_at, about, "
            "created_at, author) VALUES (?, ?, ?, ?, '[]', 2, ?, ?, ?, 'tester')",
            (
                memory_id,
                content,
                content_digest(content_key(content)),
                kind,
                WHEN,
                about_text(kind, WHEN),
                WHEN,
            ),
        )
    db.commit()
    db.close()
    before = kept_rows(file_6)
    store = await SQLiteStore.open(file_6)
    try:
        assert kept_rows(file_6) == before
        odd = await store.get_memory("M_Legacy-1")
        assert odd is not None and odd.content == "an odd id"
        assert await store.rowids_of(["M_Legacy-1", "m_000000000001"]) == [1, 8]
        assert read(
            file_6, "SELECT rowid, id_key, kind_code, id, kind FROM memories WHERE rowid IN (1, 8, 9)"
        ) == [
            (1, bytes.fromhex("000000000001"), 0, "m_000000000001", "fact"),
            (8, "M_Legacy-1", 0, "M_Legacy-1", "fact"),
            (9, bytes.fromhex("00000000000a"), "dream", "m_00000000000a", "dream"),
        ]
    finally:
        await store.close()
