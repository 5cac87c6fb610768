"""The SQLite store: one file, many processes.

Why it is safe for several MCP clients at once (each client starts its own stdio server, so several
processes share the file):
- WAL lets readers run while one writer writes;
- every write is a `BEGIN IMMEDIATE` transaction, which takes the write lock up front, so two
  processes never both read-then-write and fail half way with "database is locked";
- busy_timeout makes a writer wait (up to 10 s) for another process's transaction instead of failing;
- inside one process, aiosqlite runs calls one at a time but does not keep a transaction's statements
  together, so a lock keeps each write transaction whole. Reads use a second connection.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from soul_mcp.errors import InvalidInput, NotFound, StorageError
from soul_mcp.files import create_private_file, make_private_dirs
from soul_mcp.models import (
    DOCUMENTS,
    Backup,
    ClientActivity,
    DocumentVersion,
    Memory,
    NewMemory,
    Stats,
    StoreDiagnosis,
    TokenInfo,
)
from soul_mcp.storage.oauth_rows import OAuthRows
from soul_mcp.storage.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQL_FUNCTIONS,
    content_digest,
    kind_code,
    memory_id_key,
    split_statements,
    stored_time,
)
from soul_mcp.storage.sqlite_embeddings import SQLiteEmbeddings
from soul_mcp.storage.sqlite_recall import SQLiteRecall
from soul_mcp.storage.sqlite_rows import (
    BY_TIME,
    MEMORY_COLUMNS,
    VERSION_COLUMNS,
    memory_filters,
    memory_from_row,
    stored_seconds,
    version_from_row,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

MONTHS = ("January February March April May June July August September October November December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def new_memory_id() -> str:
    return "m_" + secrets.token_hex(6)


def about_text(kind: str, occurred_at: str) -> str:
    """Index words for what the content may not say: 'event Monday 8 May 2023'. The memories
    table computes them in SQL (its `about` column, schema migration 7); this is their reference."""
    from datetime import date

    day = date.fromisoformat(occurred_at[:10])
    return f"{kind} {WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]} {day.year}"


TOKEN_COLUMNS = "name, scopes, created_at, last_used_at, revoked_at"


def _token(row: tuple[Any, ...]) -> TokenInfo:
    name, scopes, created_at, last_used_at, revoked_at = row
    return TokenInfo(
        name=name,
        scopes=[s for s in scopes.split(",") if s],
        created_at=created_at,
        last_used_at=last_used_at,
        revoked_at=revoked_at,
    )


class SQLiteStore(SQLiteRecall, SQLiteEmbeddings, OAuthRows):
    """A `Store` over one SQLite file. Open with `await SQLiteStore.open(path)`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        # The schema version the file had when this process migrated it (None: already current).
        self.migrated_from: int | None = None
        # Why this process cannot write to the file (None: it can), as read_only_reason says.
        self.read_only: str | None = None
        # What the connections opened: the path, or a read-only URI.
        self._source = str(path)

    @classmethod
    async def open(cls, path: str | Path, synchronous: str = "FULL") -> SQLiteStore:
        path = Path(path)
        if str(path) != ":memory:":
            _create_private(path)
        try:
            return await cls._open(path, synchronous, read_only=None)
        except sqlite3.Error as exc:
            reason = read_only_reason(path)
            if reason is None or not _is_read_only_failure(exc):
                raise storage_error(exc, path, opening=True) from exc
        # The folder or the file cannot be written: what can be read is still readable.
        try:
            return await cls._open(path, synchronous, read_only=reason)
        except sqlite3.Error as exc:
            raise storage_error(exc, path, opening=True, read_only=reason) from exc

    @classmethod
    async def _open(cls, path: Path, synchronous: str, read_only: str | None) -> SQLiteStore:
        target = str(path) if read_only is None else _read_only_uri(path)
        opened: list[aiosqlite.Connection] = []
        try:
            opened.append(writer := await _connect(target, path, synchronous, read_only is not None))
            schema_before = await (_check_schema(writer, path) if read_only else _migrate(writer))
            if read_only is None and 0 < schema_before < REBUILT_IN <= SCHEMA_VERSION:
                await _compact(writer)
            opened.append(reader := await _connect(target, path, synchronous, read_only is not None))
            await reader.execute("PRAGMA query_only = ON")
        except BaseException:
            # aiosqlite runs each connection on its own thread: one left open keeps the process alive.
            for connection in opened:
                await connection.close()
            raise
        store = cls(path, writer, reader)
        store.migrated_from = schema_before if schema_before != SCHEMA_VERSION else None
        # A writable folder with a read-only file opens normally (SQLite falls back to reading).
        store.read_only = read_only or read_only_reason(path)
        store._source = target
        return store

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    def _error(self, exc: sqlite3.Error, wrote_nothing: bool = False) -> StorageError:
        return storage_error(exc, self.path, wrote_nothing=wrote_nothing, read_only=self.read_only)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, whole, with the write lock taken at BEGIN."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc, wrote_nothing=True) from exc
            try:
                yield self._writer
                await self._writer.execute("COMMIT")
            except BaseException as exc:
                await self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc, wrote_nothing=True) from exc
                raise

    async def _rollback(self) -> None:
        # Shielded: a cancelled call must still leave the shared connection outside a transaction.
        # SQLite has already rolled back after some errors (a full disk, an I/O error).
        with anyio.CancelScope(shield=True):
            try:
                if self._writer.in_transaction:
                    await self._writer.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("rolling back failed: %s", exc)

    async def _fetchall(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        try:
            async with self._read_lock:
                # One trip to aiosqlite's thread instead of three (execute, fetch, close): ~60 µs.
                rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return [tuple(r) for r in rows]

    async def _fetchone(self, sql: str, params: Any = ()) -> tuple[Any, ...] | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # Documents ---------------------------------------------------------------------------------

    async def append_version(
        self,
        document: str,
        content: str,
        author: str,
        reason: str | None,
        created_at: str,
        session_id: str | None,
        restored_from: int | None = None,
    ) -> DocumentVersion:
        async with self._transaction() as db:
            cursor = await db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM document_versions WHERE document = ?", (document,)
            )
            (version,) = await cursor.fetchone()  # type: ignore[misc]
            await db.execute(
                "INSERT INTO document_versions "
                "(document, version, content, author, reason, created_at, session_id, restored_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (document, version, content, author, reason, created_at, session_id, restored_from),
            )
        return version_from_row(
            (document, version, content, author, reason, created_at, restored_from, session_id)
        )

    async def get_version(self, document: str, version: int | None = None) -> DocumentVersion | None:
        if version is None:
            row = await self._fetchone(
                f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = ? "
                "ORDER BY version DESC LIMIT 1",
                (document,),
            )
        else:
            row = await self._fetchone(
                f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = ? AND version = ?",
                (document, version),
            )
        return version_from_row(row) if row else None

    async def list_versions(self, document: str, limit: int, before: int | None) -> list[DocumentVersion]:
        rows = await self._fetchall(
            f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = ? AND version < ? "
            "ORDER BY version DESC LIMIT ?",
            (document, before if before is not None else 2**62, limit),
        )
        return [version_from_row(r) for r in rows]

    # Memories ----------------------------------------------------------------------------------

    async def _insert_memory(self, db: aiosqlite.Connection, new: NewMemory, created_at: str,
                             supersedes: str | None = None) -> Memory:  # fmt: skip
        memory_id = new_memory_id()
        tags_json = json.dumps(new.tags, ensure_ascii=False)
        # id, kind, occurred_at, created_at and about are computed from these (schema migration 7).
        cursor = await db.execute(
            "INSERT INTO memories (id_key, content, content_key, kind_code, tags, importance, occurred_unix, "
            "created_unix, author, session_id, supersedes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (memory_id_key(memory_id), new.content, content_digest(new.content_key), kind_code(new.kind),
             tags_json, new.importance,
             stored_seconds(new.occurred_at),
             None if created_at == new.occurred_at else stored_seconds(created_at), new.author,
             new.session_id, supersedes),
        )  # fmt: skip
        rowid = cursor.lastrowid
        await db.executemany(
            "INSERT OR IGNORE INTO memory_tags (tag, memory_rowid) VALUES (?, ?)",
            [(tag, rowid) for tag in new.tags],
        )
        return Memory(
            id=memory_id,
            content=new.content,
            kind=new.kind,
            tags=new.tags,
            importance=new.importance,
            occurred_at=new.occurred_at,
            created_at=created_at,
            author=new.author,
            supersedes=supersedes,
        )

    async def _active_duplicate(self, db: aiosqlite.Connection, content_key: str) -> Memory | None:
        cursor = await db.execute(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE content_key = ? AND status = 'active'",
            (content_digest(content_key),),
        )
        row = await cursor.fetchone()
        return memory_from_row(row) if row else None

    async def add_memory(self, new: NewMemory, created_at: str) -> tuple[Memory, bool]:
        async with self._transaction() as db:
            existing = await self._active_duplicate(db, new.content_key)
            if existing is not None:
                return existing, False
            return await self._insert_memory(db, new, created_at), True

    async def get_memory(self, memory_id: str) -> Memory | None:
        row = await self._fetchone(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id_key = ?", (memory_id_key(memory_id),)
        )
        return memory_from_row(row) if row else None

    async def _require(self, db: aiosqlite.Connection, memory_id: str) -> Memory:
        cursor = await db.execute(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id_key = ?", (memory_id_key(memory_id),)
        )
        row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"no memory has the id {memory_id!r}; ids look like 'm_1a2b3c4d5e6f' (see recall)")
        return memory_from_row(row)

    async def set_memory_status(
        self,
        memory_id: str,
        status: str,
        reason: str | None,
        changed_at: str,
        expect: tuple[str, ...],
        by: str | None = None,
    ) -> Memory:
        async with self._transaction() as db:
            memory = await self._require(db, memory_id)
            if memory.status not in expect:
                revised = f" (it was revised into {memory.superseded_by})" if memory.superseded_by else ""
                raise InvalidInput(
                    f"memory {memory_id} is {memory.status}{revised}; this needs a memory that is "
                    + " or ".join(expect)
                )
            if status == "active":
                cursor = await db.execute(
                    "SELECT m2.id FROM memories m1 JOIN memories m2 ON m2.content_key = m1.content_key "
                    "WHERE m1.id_key = ? AND m2.status = 'active'",
                    (memory_id_key(memory_id),),
                )
                twin = await cursor.fetchone()
                if twin is not None:
                    raise InvalidInput(
                        f"memory {memory_id} cannot be restored: {twin[0]} holds the same content and is active"
                    )
            await db.execute(
                "UPDATE memories SET status = ?, status_reason = ?, status_changed_at = ?, status_changed_by = ? "
                "WHERE id_key = ?",
                (status, reason, changed_at, by, memory_id_key(memory_id)),
            )
            return await self._require(db, memory_id)

    async def revise_memory(
        self, memory_id: str, new: NewMemory, reason: str, created_at: str
    ) -> tuple[Memory, Memory]:
        async with self._transaction() as db:
            old = await self._require(db, memory_id)
            if old.status != "active":
                raise InvalidInput(
                    f"memory {memory_id} is {old.status} and cannot be revised; only active memories can"
                    + (f" (revise {old.superseded_by}, which replaced it)" if old.superseded_by else "")
                )
            # Leave recall first, so the revision may keep the same normalised content.
            await db.execute(
                "UPDATE memories SET status = 'superseded', status_reason = ?, status_changed_at = ?, "
                "status_changed_by = ? WHERE id_key = ?",
                (reason, created_at, new.author, memory_id_key(memory_id)),
            )
            twin = await self._active_duplicate(db, new.content_key)
            if twin is not None:
                raise InvalidInput(
                    f"the revised content is already stored as memory {twin.id}; forget {memory_id} instead"
                )
            revised = await self._insert_memory(db, new, created_at, supersedes=memory_id)
            await db.execute(
                "UPDATE memories SET superseded_by = ? WHERE id_key = ?",
                (revised.id, memory_id_key(memory_id)),
            )
            return await self._require(db, memory_id), revised

    async def purge_memory(self, memory_id: str) -> None:
        async with self._transaction() as db:
            memory = await self._require(db, memory_id)
            if memory.status != "forgotten":
                raise InvalidInput(
                    f"memory {memory_id} is {memory.status}; only forgotten memories can be purged "
                    "(forget it first)"
                )
            await db.execute("UPDATE memories SET superseded_by = NULL WHERE superseded_by = ?", (memory_id,))
            await db.execute("DELETE FROM memories WHERE id_key = ?", (memory_id_key(memory_id),))

    # Sessions and counts -----------------------------------------------------------------------

    async def record_session(self, session_id: str, client: str, started_at: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO sessions (id, client, started_at) VALUES (?, ?, ?)",
                (session_id, client, started_at),
            )

    async def stats(self) -> Stats:
        # Two parts, so that each counts along one of the partial indexes instead of the whole table.
        counts = dict(
            await self._fetchall(
                "SELECT 'active', count(*) FROM memories WHERE status = 'active' UNION ALL "
                "SELECT status, count(*) FROM memories WHERE status <> 'active' GROUP BY status"
            )
        )
        versions = dict(
            await self._fetchall("SELECT document, count(*) FROM document_versions GROUP BY document")
        )
        (sessions,) = await self._fetchone("SELECT count(*) FROM sessions") or (0,)
        return Stats(
            memories_active=counts.get("active", 0),
            memories_forgotten=counts.get("forgotten", 0),
            memories_superseded=counts.get("superseded", 0),
            document_versions=versions,
            sessions=sessions,
        )

    # Change detection and backup ---------------------------------------------------------------

    async def change_marker(self) -> int:
        # PRAGMA data_version on the reader moves whenever another connection commits: other
        # processes and this process's own writer alike. It reads only the WAL index: no I/O.
        row = await self._fetchone("PRAGMA data_version")
        return int(row[0]) if row else 0

    async def document_heads(self) -> dict[str, int]:
        # One max() per document walks the (document, version) key to its end: cheap at any size.
        heads = " UNION ALL ".join(
            "SELECT ?, (SELECT max(version) FROM document_versions WHERE document = ?)" for _ in DOCUMENTS
        )
        rows = await self._fetchall(heads, [name for name in DOCUMENTS for _ in range(2)])
        return {name: version for name, version in rows if version is not None}

    async def backup(self, target: Path) -> Backup:
        if str(self.path) == ":memory:":
            raise StorageError("an in-memory database has no file to back up")
        if target.exists() and os.path.samefile(target, self.path):
            raise InvalidInput(f"{target} is the database itself; choose another file for the backup")

        async def copy_into(partial: Path) -> None:
            # Created private before SQLite writes to it: a backup holds every memory.
            create_private_file(partial)
            await anyio.to_thread.run_sync(_copy_database, self._source, partial)

        return await write_checked_backup(target, copy_into, source=self.path)

    # Tokens ------------------------------------------------------------------------------------

    async def add_token(
        self, name: str, token_hash: str, scopes: tuple[str, ...], created_at: str
    ) -> TokenInfo:
        async with self._transaction() as db:
            cursor = await db.execute("SELECT revoked_at FROM tokens WHERE name = ?", (name,))
            taken = await cursor.fetchone()
            if taken is not None:
                state = "a revoked token" if taken[0] else "a token"
                raise InvalidInput(
                    f"{state} named {name!r} already exists; names stay unique so that every author name "
                    "means one token: choose another name (token list shows them all)"
                )
            await db.execute(
                "INSERT INTO tokens (name, token_hash, scopes, created_at) VALUES (?, ?, ?, ?)",
                (name, token_hash, ",".join(scopes), created_at),
            )
        return TokenInfo(name=name, scopes=list(scopes), created_at=created_at)  # type: ignore[arg-type]

    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._fetchall(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, rowid")
        return [_token(row) for row in rows]

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        row = await self._fetchone(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(row) if row else None

    async def revoke_token(self, name: str, revoked_at: str) -> TokenInfo:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (revoked_at, name)
            )
            cursor = await db.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = ?", (name,))
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"no token is named {name!r}; token list shows the names")
        return _token(tuple(row))

    async def touch_token(self, name: str, used_at: str) -> None:
        async with self._transaction() as db:
            await db.execute("UPDATE tokens SET last_used_at = ? WHERE name = ?", (used_at, name))

    async def integrity_check(self) -> str:
        row = await self._fetchone("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    async def check_intact(self) -> None:
        found = [str(row[0]) for row in await self._fetchall("PRAGMA integrity_check")]
        if found != ["ok"]:
            raise StorageError(
                f"the database {self.path} is damaged ({'; '.join(found[:3])}): run `soul-mcp doctor "
                f"--db {self.path}`; restore from a backup if it fails"
            )

    async def client_activity(self) -> list[ClientActivity]:
        found: dict[str, ClientActivity] = {}
        for sql, count_field, time_field in (
            ("SELECT client, count(*), max(started_at) FROM sessions GROUP BY client", "sessions",
             "last_session_at"),
            # The latest time as seconds, made text once per author rather than once per memory.
            (f"SELECT author, count(*), {stored_time('max(coalesce(created_unix, occurred_unix))')} "
             "FROM memories GROUP BY author", "memories", "last_memory_at"),
            ("SELECT author, count(*), max(created_at) FROM document_versions GROUP BY author", "versions",
             "last_version_at"),
        ):  # fmt: skip
            for client, count, last in await self._fetchall(sql):
                activity = found.setdefault(client, ClientActivity(client=client))
                setattr(activity, count_field, count)
                setattr(activity, time_field, last)
                if activity.last_active_at is None or last > activity.last_active_at:
                    activity.last_active_at = last
        return sorted(found.values(), key=lambda a: a.last_active_at or "", reverse=True)

    # Listing and checking ----------------------------------------------------------------------

    async def list_memories(
        self,
        statuses: tuple[str, ...],
        kind: str | None,
        tags: tuple[str, ...],
        since: str | None,
        until: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[Memory], int]:
        # Active memories and the others each have their own (partial) index by time: a listing of
        # both reads the two and merges them, rather than every row of the table.
        parts = [part for part in (tuple(s for s in statuses if s == "active"),
                                   tuple(s for s in statuses if s != "active")) if part]  # fmt: skip
        if not parts:
            return [], 0
        selects, counts, params = [], [], []
        for part in parts:
            where, part_params = memory_filters(part, kind, tags, since, until)
            condition = " AND ".join(where)
            selects.append(f"SELECT m.rowid AS r, m.occurred_unix AS t FROM memories m WHERE {condition}")
            counts.append(f"(SELECT count(*) FROM memories m WHERE {condition})")
            params += part_params
        # The page's rowids first, then its rows: SQLite would otherwise compute the time text of
        # every row it sorts.
        rows = await self._fetchall(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.rowid IN (SELECT r FROM "
            f"({' UNION ALL '.join(selects)}) ORDER BY t DESC, r DESC LIMIT ? OFFSET ?) ORDER BY {BY_TIME}",
            [*params, limit, offset],
        )
        (total,) = await self._fetchone(f"SELECT {' + '.join(counts)}", params) or (0,)
        return [memory_from_row(row) for row in rows], total

    async def diagnose(self) -> StoreDiagnosis:
        integrity = [str(row[0]) for row in await self._fetchall("PRAGMA integrity_check")]
        (version,) = await self._fetchone("PRAGMA user_version") or (0,)
        (journal,) = await self._fetchone("PRAGMA journal_mode") or ("?",)
        (sync,) = await self._fetchone("PRAGMA synchronous") or (-1,)
        # The index's own structural check. It is a write statement to SQLite (though it changes
        # nothing), so it runs on the writer. Its 'rank = 1' form would also compare the index with
        # the content table, but that table holds forgotten memories the index leaves out on purpose,
        # so that comparison is done below, row by row.
        if self.read_only:
            index_check = f"not checked: it needs write access, and {self.read_only}"
        else:
            try:
                async with self._transaction() as db:
                    await db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")
                index_check = "ok"
            except StorageError as exc:
                index_check = str(exc)
        # memories_fts_docsize holds one row per indexed memory (FTS5's own shadow table).
        (active, indexed, missing, stale) = await self._fetchone(
            "SELECT (SELECT count(*) FROM memories WHERE status = 'active'), "
            "(SELECT count(*) FROM memories_fts_docsize), "
            "(SELECT count(*) FROM memories m WHERE m.status = 'active' "
            " AND m.rowid NOT IN (SELECT id FROM memories_fts_docsize)), "
            "(SELECT count(*) FROM memories_fts_docsize d WHERE d.id NOT IN "
            " (SELECT rowid FROM memories WHERE status = 'active'))"
        ) or (0, 0, 0, 0)
        return StoreDiagnosis(
            integrity=integrity,
            schema_version=version,
            expected_schema_version=SCHEMA_VERSION,
            migrated_from=self.migrated_from,
            index_check=index_check,
            active_memories=active,
            indexed_memories=indexed,
            missing_from_index=missing,
            stale_in_index=stale,
            journal_mode=str(journal),
            synchronous={0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, str(sync)),
        )


def _copy_database(source: str, target: Path) -> None:
    """SQLite's online backup, all pages in one step: the copy is one read snapshot of the source,
    so it is consistent while other processes commit (in WAL mode they are not held up meanwhile).
    `source` is a path, or a file: URI when the store was opened read-only."""
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000, uri=source.startswith("file:"))
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


async def write_checked_backup(
    target: Path, write: Callable[[Path], Awaitable[None]], source: Path | None = None
) -> Backup:
    """A backup of either store: `write` makes a SQLite file at the path it is given, beside
    `target` under another name; it is checked, then renamed to `target` and the rename synced, so
    a failed or interrupted backup never leaves a half-written file under the name asked for.
    `source`: the database copied, named in the error when SQLite finds damage while copying."""
    for suffix in ("-wal", "-shm"):
        if Path(f"{target}{suffix}").exists():
            raise InvalidInput(
                f"{target}{suffix} exists: {target} looks like a database in use; stop what uses it "
                "or choose another file for the backup"
            )
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        await write(partial)
        copy = await SQLiteStore.open(partial)
        try:
            integrity = await copy.integrity_check()
            stats = await copy.stats()
        finally:
            await copy.close()
        if integrity != "ok":
            raise StorageError(f"the backup failed its integrity check ({integrity}); nothing was written")
        os.replace(partial, target)
        _sync_folder(target.parent)
    except sqlite3.Error as exc:
        # Damage is the source's; a full disk or a refusal to write is the target's.
        about = source if source is not None and _code(exc) in _DAMAGED else target
        raise storage_error(exc, about, wrote_nothing=True, read_only=read_only_reason(target)) from exc
    except OSError as exc:
        raise StorageError(
            f"cannot write the backup {target}: {exc.strerror or exc}; nothing was written"
        ) from exc
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
    return Backup(path=str(target), bytes=target.stat().st_size, integrity=integrity, stats=stats)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); Windows has no directory handles to sync."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _connect(target: str, path: Path, synchronous: str, read_only: bool) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of Python's implicit transactions.
    db = await aiosqlite.connect(target, isolation_level=None, uri=read_only)
    try:
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Refuse a newer schema before changing anything in the file (journal_mode is persistent).
        cursor = await db.execute("PRAGMA user_version")
        (version,) = await cursor.fetchone()  # type: ignore[misc]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the database at {path} has schema version {version}, newer than this soul-mcp "
                f"understands ({SCHEMA_VERSION}); upgrade soul-mcp"
            )
        if not read_only:
            await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await db.close()
        raise
    return db


async def _check_schema(db: aiosqlite.Connection, path: Path) -> int:
    """The schema version of a file opened read-only, which cannot be migrated."""
    cursor = await db.execute("PRAGMA user_version")
    (current,) = await cursor.fetchone()  # type: ignore[misc]
    if current < SCHEMA_VERSION:
        raise StorageError(
            f"the database at {path} has schema version {current} and needs upgrading to "
            f"{SCHEMA_VERSION}, which needs write access ({read_only_reason(path)}): open it once as "
            "a user who can write to the file and its folder"
        )
    return current


async def _migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found. Safe when several processes
    open a new file at once: the first takes the write lock, the others wait and find it done."""
    for name, function in SQL_FUNCTIONS.items():
        await db.create_function(name, 1, function, deterministic=True)
    # Off while migrating: a migration that rebuilds a table drops the old one, which with foreign
    # keys on would delete the rows that reference it by cascade. The references are checked before
    # the commit instead. (The pragma does nothing inside a transaction, so it is set around it.)
    await db.execute("PRAGMA foreign_keys = OFF")
    try:
        return await _migrate_in_transaction(db)
    finally:
        await db.execute("PRAGMA foreign_keys = ON")


async def _migrate_in_transaction(db: aiosqlite.Connection) -> int:
    await db.execute("BEGIN IMMEDIATE")
    try:
        cursor = await db.execute("PRAGMA user_version")
        (current,) = await cursor.fetchone()  # type: ignore[misc]
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"the database has schema version {current}, newer than this soul-mcp understands "
                f"({SCHEMA_VERSION}); upgrade soul-mcp"
            )
        # References already broken before (a file written by other tools) are not the migration's.
        broken_before = await _broken_references(db) if current != SCHEMA_VERSION else set()
        for number in range(current, SCHEMA_VERSION):
            log.info("migrating database schema to version %d", number + 1)
            for statement in split_statements(MIGRATIONS[number]):
                await db.execute(statement)
        if current != SCHEMA_VERSION:
            if broken := sorted((await _broken_references(db)) - broken_before):
                raise StorageError(f"migrating would break {len(broken)} references, e.g. {broken[0]}")
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")
    return current


# Schema migration 7 rebuilds the memories table: the old table's pages are then free but still in
# the file, which would stay larger than before the upgrade until later writes reuse them.
REBUILT_IN = 7


async def _compact(db: aiosqlite.Connection) -> None:
    """VACUUM once after a migration that rebuilt a table (a few seconds at most at 100k memories;
    it cannot run inside the migration's transaction). Not done is not an error: the file is whole
    and the free pages get reused."""
    try:
        await db.execute("VACUUM")
        # The copy went through the write-ahead log: give that space back as well.
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        log.warning(
            "compacting the database after migrating it failed: %s; its free pages will be reused", exc
        )


async def _broken_references(db: aiosqlite.Connection) -> set[tuple[Any, ...]]:
    """Rows whose foreign key names no row: (table, rowid, parent table, key number)."""
    cursor = await db.execute("PRAGMA foreign_key_check")
    return {tuple(row) for row in await cursor.fetchall()}


# SQLite's primary result codes (the low byte of an extended code; https://sqlite.org/rescode.html).
# Spelled out: Python's sqlite3 names them only from 3.11, and errors carry them only from 3.11
# (on 3.10 every failure gets the general message).
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 3, 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_AUTH, SQLITE_NOTADB = 11, 13, 14, 23, 26
_BUSY = (SQLITE_BUSY, SQLITE_LOCKED)
_DAMAGED = (SQLITE_CORRUPT, SQLITE_NOTADB)
_NO_ACCESS = (SQLITE_CANTOPEN, SQLITE_PERM, SQLITE_AUTH)


def storage_error(
    exc: sqlite3.Error,
    path: Path,
    *,
    opening: bool = False,
    wrote_nothing: bool = False,
    read_only: str | None = None,
) -> StorageError:
    """What a failed SQLite call means for the person or model that made it, and what to do.
    Keyed on SQLite's result code, never on the message text."""
    code = _code(exc)
    path = path.absolute()
    doctor = f"run `soul-mcp doctor --db {path}`"
    # Opening, the message starts "cannot open the database at <path>:" and need not repeat it.
    it, file = ("it", "it") if opening else (f"the database {path}", f"the database file {path}")
    if code in _BUSY:
        text = (
            f"the database is busy: another process held its lock for over {BUSY_TIMEOUT_MS // 1000} s "
            f"({exc}); try again"
        )
    elif code == SQLITE_FULL:
        text = f"the disk holding {path} is full: free some space, then try again"
    elif code == SQLITE_READONLY:
        reason = read_only or read_only_reason(path) or f"the database file {path} is read-only"
        text = (
            f"the database is read-only here ({reason}): soul-mcp can read it but not change it; "
            "run it as a user who may write the file and its folder, or fix their permissions"
        )
    elif code in _DAMAGED:
        text = f"{it} is damaged ({exc}): {doctor}; restore from a backup if it fails"
    elif code == SQLITE_IOERR:
        name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR")
        text = f"reading or writing {path} failed ({exc}, {name}): check the disk, then {doctor}"
    elif code in _NO_ACCESS:
        text = (
            f"{file} cannot be opened ({exc}): check that its folder exists and that this user may "
            "read and write the file and the folder"
        )
    else:
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        text = f"{it} failed ({exc}, {name}): {doctor}"
    if opening:
        text = f"cannot open the database at {path}: {text}"
    if wrote_nothing:
        text += "; nothing was written"
    return StorageError(text)


def read_only_reason(path: Path) -> str | None:
    """Why this process cannot write the database, or None. (os.access: root may write anything.)"""
    if str(path) == ":memory:":
        return None
    path = path.absolute()
    if not os.access(path.parent, os.W_OK):
        return f"the folder {path.parent} is not writable"
    if path.exists() and not os.access(path, os.W_OK):
        return f"the database file {path} is read-only"
    return None


def exposed_files(path: Path) -> list[tuple[Path, int]]:
    """The database's folder and files (-wal, -shm included) that other users may read or
    change, with their permission bits. Empty on systems without POSIX permissions."""
    if os.name != "posix" or str(path) == ":memory:":
        return []
    found = []
    for candidate in (path.parent, path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append((candidate, mode))
    return found


def _code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code (0 for errors raised by Python's module itself)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def _is_read_only_failure(exc: sqlite3.Error) -> bool:
    return _code(exc) in (SQLITE_READONLY, SQLITE_CANTOPEN)


def _read_only_uri(path: Path) -> str:
    """A URI that reads the file without writing anything beside it.

    SQLite reads a WAL database in a folder it cannot write only when the -wal and -shm files
    already exist, or with immutable=1, which ignores them: that is only right when no -wal
    holds changes the main file lacks (https://sqlite.org/wal.html#readonly)."""
    path = path.absolute()
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if os.access(path.parent, os.W_OK):
        return uri
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if wal.exists() and shm.exists():
        return uri
    if wal.exists() and wal.stat().st_size > 0:
        raise StorageError(
            f"cannot read the database at {path}: its folder {path.parent} is not writable and its "
            f"write-ahead log {wal} holds changes not yet in the main file; open it once as a user who "
            "can write to the folder"
        )
    return uri + "&immutable=1"


def _create_private(path: Path) -> None:
    """Create the missing folders (0700) and the database file (0600), so that no other user
    can read the memories; existing ones are left as they are. SQLite gives the -wal and -shm
    files the database file's permissions."""
    if path.is_dir():
        raise StorageError(
            f"cannot open the database at {path}: it is a folder; name a file, e.g. {path / 'soul.db'}"
        )
    try:
        make_private_dirs(path.parent)
        create_private_file(path)  # False: it exists, or another process created it meanwhile
    except OSError as exc:
        why = (
            "a file stands where a folder should be" if isinstance(exc, NotADirectoryError) else exc.strerror
        )
        raise StorageError(
            f"cannot create the database at {path}: {why or exc}; choose another path (--db or "
            "$SOUL_MCP_DB) or fix the folder"
        ) from exc
