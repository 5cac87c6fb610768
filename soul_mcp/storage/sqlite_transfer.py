"""A SQLite file's self as rows, for `soul-mcp migrate` (soul_mcp/transfer.py): read in one read
transaction of a read-only store, written in one write transaction of a store.

Rows travel in the neutral form of transfer.ROW_COLUMNS; the memories table keeps ids, kinds and
times compactly (schema migration 7), so they are read through its generated columns and written
in their stored form. The full-text index and the change log are made by the table's triggers as
the memories are inserted; tag rows are made from each memory's tags afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from soul_mcp.errors import StorageError
from soul_mcp.storage.schema import kind_code, memory_id_key
from soul_mcp.storage.sqlite import SQLiteStore
from soul_mcp.storage.sqlite_rows import stored_seconds

Row = tuple[Any, ...]

READ: dict[str, str] = {
    "document_versions": "SELECT document, version, content, author, reason, created_at, session_id, "
    "restored_from FROM document_versions ORDER BY document, version",
    "sessions": "SELECT id, client, started_at FROM sessions ORDER BY rowid",
    "tokens": "SELECT rowid, name, token_hash, scopes, created_at, last_used_at, revoked_at FROM tokens "
    "ORDER BY rowid",
    "memories": "SELECT rowid, id, content, content_key, kind, tags, importance, occurred_at, created_at, "
    "author, session_id, status, status_reason, status_changed_at, supersedes, superseded_by, "
    "status_changed_by FROM memories ORDER BY rowid",
    "memory_embeddings": "SELECT id, memory_rowid, model, dims, text_hash, vector FROM memory_embeddings "
    "ORDER BY id",
}

WRITE: dict[str, str] = {
    "document_versions": "INSERT INTO document_versions (document, version, content, author, reason, "
    "created_at, session_id, restored_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "sessions": "INSERT INTO sessions (id, client, started_at) VALUES (?, ?, ?)",
    "tokens": "INSERT INTO tokens (rowid, name, token_hash, scopes, created_at, last_used_at, revoked_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)",
    # id, kind, occurred_at, created_at and about are generated from these (schema migration 7).
    "memories": "INSERT INTO memories (rowid, id_key, content, content_key, kind_code, tags, importance, "
    "occurred_unix, created_unix, author, session_id, status, status_reason, status_changed_at, "
    "supersedes, superseded_by, status_changed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "memory_embeddings": "INSERT INTO memory_embeddings (id, memory_rowid, model, dims, text_hash, vector) "
    "VALUES (?, ?, ?, ?, ?, ?)",
}

COUNTS = (
    "SELECT (SELECT count(*) FROM document_versions), (SELECT count(*) FROM sessions), "
    "(SELECT count(*) FROM tokens), (SELECT count(*) FROM memories), "
    "(SELECT count(*) FROM memory_embeddings), (SELECT count(*) FROM memory_tags), "
    "(SELECT count(*) FROM memories WHERE status = 'active'), "
    # FTS5's own table of the documents it indexed: one row per memory in the index.
    "(SELECT count(*) FROM memories_fts_docsize)"
)
COUNTED = ("document_versions", "sessions", "tokens", "memories", "memory_embeddings", "memory_tags",
           "active_memories", "indexed_memories")  # fmt: skip


def _stored_memory(row: Row) -> Row:
    (rowid, memory_id, content, content_key, kind, tags, importance, occurred_at, created_at, author,
     session_id, status, status_reason, status_changed_at, supersedes, superseded_by, status_changed_by) = row  # fmt: skip
    # created_unix is NULL when the memory was stored when it happened (as the store writes it).
    created = None if created_at == occurred_at else stored_seconds(created_at)
    return (rowid, memory_id_key(memory_id), content, bytes(content_key), kind_code(kind), tags, importance,
            stored_seconds(occurred_at), created, author, session_id, status, status_reason,
            status_changed_at, supersedes, superseded_by, status_changed_by)  # fmt: skip


class _Reading:
    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    async def counts(self) -> dict[str, int]:
        row = await self._store._fetchone(COUNTS)
        return dict(zip(COUNTED, row or (), strict=True))

    async def rows(self, kind: str, batch: int) -> AsyncGenerator[list[Row], None]:
        store = self._store
        # The reader connection, inside the read transaction `reading()` opened: one snapshot.
        async with store._read_lock:
            cursor = await store._reader.execute(READ[kind])
            try:
                while rows := await cursor.fetchmany(batch):
                    yield [tuple(r) for r in rows]
            finally:
                await cursor.close()


class _Writing:
    def __init__(self, db: Any) -> None:
        self._db = db

    async def counts(self) -> dict[str, int]:
        cursor = await self._db.execute(COUNTS)
        row = await cursor.fetchone()
        return dict(zip(COUNTED, row or (), strict=True))

    async def clear(self) -> None:
        # Memories last but one: their triggers take them out of the text index and log the change;
        # tag rows and embeddings would go by cascade, deleted first all the same.
        for table in ("memory_embeddings", "memory_tags", "memories", "document_versions", "sessions",
                      "tokens"):  # fmt: skip
            await self._db.execute(f"DELETE FROM {table}")

    async def write(self, kind: str, rows: list[Row]) -> None:
        if kind == "memories":
            rows = [_stored_memory(r) for r in rows]
        elif kind == "memory_embeddings":
            rows = [(*r[:5], bytes(r[5])) for r in rows]
        await self._db.executemany(WRITE[kind], rows)

    async def finish(self) -> None:
        # Tag rows, as the store writes them: one per distinct tag of each memory, whatever its status.
        await self._db.execute(
            "INSERT OR IGNORE INTO memory_tags (tag, memory_rowid) "
            "SELECT t.value, m.rowid FROM memories m, json_each(m.tags) t"
        )


class SQLiteSelfRows:
    """SelfRows (transfer.py) over a SQLiteStore."""

    def __init__(self, store: SQLiteStore, created: bool) -> None:
        self.store = store
        self.shown = str(store.path)
        self._created = created

    @classmethod
    async def open_source(cls, location: str) -> SQLiteSelfRows:
        path = Path(location).expanduser().absolute()
        if not path.is_file():
            raise StorageError(f"no database at {path} to copy from; check the path given to --from")
        # Opened as a read-only store would be: nothing is created beside it, nothing migrated.
        store = await SQLiteStore._open(path, "FULL", read_only="it is the source of a copy")
        return cls(store, created=False)

    @classmethod
    async def open_target(cls, location: str) -> SQLiteSelfRows:
        path = Path(location).expanduser().absolute()
        created = not path.exists()
        store = await SQLiteStore.open(path)
        if store.read_only:
            await store.close()
            raise StorageError(f"cannot write the target {path}: {store.read_only}")
        return cls(store, created)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[_Reading]:
        # One read transaction over every table: a consistent snapshot while others write (WAL).
        await self.store._fetchall("BEGIN")
        try:
            await self.store._fetchall("SELECT count(*) FROM sqlite_master")  # the snapshot starts here
            yield _Reading(self.store)
        finally:
            await self.store._fetchall("COMMIT")

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[_Writing]:
        async with self.store._transaction() as db:
            yield _Writing(db)

    async def close(self, failed: bool = False) -> None:
        await self.store.close()
        if failed and self._created:
            # The file was made for this copy, which wrote nothing to it: as it was is not there.
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.store.path}{suffix}").unlink(missing_ok=True)
