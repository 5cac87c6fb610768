"""Schema migration 6 (dedup key as a digest, unused indexes dropped) on a file made by version 5."""

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
from soul_mcp.storage.schema import MIGRATIONS, SCHEMA_VERSION, content_digest, split_statements
from soul_mcp.storage.sqlite import SQLiteStore, about_text
from soul_mcp.storage.sqlite_rows import MEMORY_COLUMNS

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
