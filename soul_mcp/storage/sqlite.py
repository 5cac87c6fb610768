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
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from soul_mcp.errors import InvalidInput, NotFound, StorageError
from soul_mcp.models import DocumentVersion, Memory, NewMemory, Stats
from soul_mcp.storage.base import RANKED_MAX, SearchHit, SearchQuery
from soul_mcp.storage.schema import MIGRATIONS, SCHEMA_VERSION, split_statements

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

# Recall ranks the best CANDIDATES full-text matches, then lets each share NEIGHBOUR_WEIGHT of its
# score with the memories stored just before and after it by the same author, in the same session,
# about the same day: a question and its answer, a decision and its reason are stored side by side,
# and often only one of them holds the words of the query. Measured on LoCoMo (bench/locomo.py):
# recall@10 0.70 -> 0.79.
# The ranking is computed over the same CANDIDATES whatever page is asked for, so that pages never
# overlap; paging ends there (recall says so), and a narrower query or a filter reaches the rest.
CANDIDATES = RANKED_MAX
NEIGHBOUR_WEIGHT = 0.5
# Only the best matches can lift a neighbour into a page, so only theirs are looked up.
LENDERS = 50
# bm25 column weights: content, tags, about (kind and date words).
BM25 = "bm25(memories_fts, 1.0, 0.5, 0.5)"
MONTHS = ("January February March April May June July August September October November December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

MEMORY_COLUMNS = (
    "m.id, m.content, m.kind, m.tags, m.importance, m.occurred_at, m.created_at, m.author, m.status, "
    "m.status_reason, m.status_changed_at, m.supersedes, m.superseded_by"
)


def new_memory_id() -> str:
    return "m_" + secrets.token_hex(6)


def _memory(row: sqlite3.Row | tuple[Any, ...]) -> Memory:
    (id_, content, kind, tags, importance, occurred_at, created_at, author, status,
     status_reason, status_changed_at, supersedes, superseded_by) = tuple(row)[:13]  # fmt: skip
    return Memory(
        id=id_,
        content=content,
        kind=kind,
        tags=json.loads(tags),
        importance=importance,
        occurred_at=occurred_at,
        created_at=created_at,
        author=author,
        status=status,
        status_reason=status_reason,
        status_changed_at=status_changed_at,
        supersedes=supersedes,
        superseded_by=superseded_by,
    )


def about_text(kind: str, occurred_at: str) -> str:
    """Index words for what the content may not say: 'event Monday 8 May 2023'."""
    from datetime import date

    day = date.fromisoformat(occurred_at[:10])
    return f"{kind} {WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]} {day.year}"


def _version(row: tuple[Any, ...]) -> DocumentVersion:
    document, version, content, author, reason, created_at, restored_from = row
    return DocumentVersion(
        document=document,
        version=version,
        content=content,
        author=author,
        reason=reason,
        created_at=created_at,
        restored_from=restored_from,
    )


VERSION_COLUMNS = "document, version, content, author, reason, created_at, restored_from"


class SQLiteStore:
    """A `Store` over one SQLite file. Open with `await SQLiteStore.open(path)`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = anyio.Lock()
        self._read_lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str | Path, synchronous: str = "FULL") -> SQLiteStore:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        opened: list[aiosqlite.Connection] = []
        try:
            opened.append(writer := await _connect(path, synchronous))
            await _migrate(writer)
            opened.append(reader := await _connect(path, synchronous))
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            # aiosqlite runs each connection on its own thread: one left open keeps the process alive.
            for connection in opened:
                await connection.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StorageError(f"cannot open the database at {path}: {exc}") from exc
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, whole, with the write lock taken at BEGIN."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageError(
                    f"the database is busy: another process held the write lock for over "
                    f"{BUSY_TIMEOUT_MS // 1000} s ({exc}); try again"
                ) from exc
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            else:
                await self._writer.execute("COMMIT")

    async def _fetchall(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        async with self._read_lock:
            cursor = await self._reader.execute(sql, params)
            rows = await cursor.fetchall()
            await cursor.close()
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
        return DocumentVersion(
            document=document,  # type: ignore[arg-type]
            version=version,
            content=content,
            author=author,
            reason=reason,
            created_at=created_at,
            restored_from=restored_from,
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
        return _version(row) if row else None

    async def list_versions(self, document: str, limit: int, before: int | None) -> list[DocumentVersion]:
        rows = await self._fetchall(
            f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = ? AND version < ? "
            "ORDER BY version DESC LIMIT ?",
            (document, before if before is not None else 2**62, limit),
        )
        return [_version(r) for r in rows]

    # Memories ----------------------------------------------------------------------------------

    async def _insert_memory(self, db: aiosqlite.Connection, new: NewMemory, created_at: str,
                             supersedes: str | None = None) -> Memory:  # fmt: skip
        memory_id = new_memory_id()
        tags_json = json.dumps(new.tags, ensure_ascii=False)
        cursor = await db.execute(
            "INSERT INTO memories (id, content, content_key, kind, tags, importance, occurred_at, about, "
            "created_at, author, session_id, supersedes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (memory_id, new.content, new.content_key, new.kind, tags_json, new.importance,
             new.occurred_at, about_text(new.kind, new.occurred_at), created_at, new.author,
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
            (content_key,),
        )
        row = await cursor.fetchone()
        return _memory(row) if row else None

    async def add_memory(self, new: NewMemory, created_at: str) -> tuple[Memory, bool]:
        async with self._transaction() as db:
            existing = await self._active_duplicate(db, new.content_key)
            if existing is not None:
                return existing, False
            return await self._insert_memory(db, new, created_at), True

    async def get_memory(self, memory_id: str) -> Memory | None:
        row = await self._fetchone(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id = ?", (memory_id,))
        return _memory(row) if row else None

    async def _require(self, db: aiosqlite.Connection, memory_id: str) -> Memory:
        cursor = await db.execute(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id = ?", (memory_id,))
        row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"no memory has the id {memory_id!r}; ids look like 'm_1a2b3c4d5e6f' (see recall)")
        return _memory(row)

    async def set_memory_status(
        self, memory_id: str, status: str, reason: str | None, changed_at: str, expect: tuple[str, ...]
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
                    "WHERE m1.id = ? AND m2.status = 'active'",
                    (memory_id,),
                )
                twin = await cursor.fetchone()
                if twin is not None:
                    raise InvalidInput(
                        f"memory {memory_id} cannot be restored: {twin[0]} holds the same content and is active"
                    )
            await db.execute(
                "UPDATE memories SET status = ?, status_reason = ?, status_changed_at = ? WHERE id = ?",
                (status, reason, changed_at, memory_id),
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
                "UPDATE memories SET status = 'superseded', status_reason = ?, status_changed_at = ? "
                "WHERE id = ?",
                (reason, created_at, memory_id),
            )
            twin = await self._active_duplicate(db, new.content_key)
            if twin is not None:
                raise InvalidInput(
                    f"the revised content is already stored as memory {twin.id}; forget {memory_id} instead"
                )
            revised = await self._insert_memory(db, new, created_at, supersedes=memory_id)
            await db.execute("UPDATE memories SET superseded_by = ? WHERE id = ?", (revised.id, memory_id))
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
            await db.execute("DELETE FROM memories WHERE id = ?", (memory_id,))

    @staticmethod
    def _filters(query: SearchQuery) -> tuple[list[str], list[Any]]:
        """SQL conditions on `m` (the memories table) for the query's filters."""
        where = ["m.status = 'active'"]
        params: list[Any] = []
        if query.kind:
            where.append("m.kind = ?")
            params.append(query.kind)
        if query.since:
            where.append("m.occurred_at >= ?")
            params.append(query.since)
        if query.until:
            where.append("m.occurred_at < ?")
            params.append(query.until)
        if query.tags:
            marks = ", ".join("?" * len(query.tags))
            where.append(
                f"m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag IN ({marks}) "
                "GROUP BY memory_rowid HAVING count(*) = ?)"
            )
            params.extend(query.tags)
            params.append(len(query.tags))
        if query.exclude_ids:
            where.append(f"m.id NOT IN ({', '.join('?' * len(query.exclude_ids))})")
            params.extend(query.exclude_ids)
        return where, params

    async def search(self, query: SearchQuery) -> list[SearchHit]:
        if query.terms:
            return await self._search_text(query)
        where, params = self._filters(query)
        order = {
            "importance": "m.importance DESC, m.occurred_at DESC, m.rowid DESC",
        }.get(query.order, "m.occurred_at DESC, m.rowid DESC")
        rows = await self._fetchall(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {' AND '.join(where)} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return [SearchHit(_memory(row), 0.0) for row in rows]

    async def _search_text(self, query: SearchQuery) -> list[SearchHit]:
        where, params = self._filters(query)
        filters = " AND ".join(where)
        # Each term is quoted, so nothing the caller typed is read as FTS5 syntax.
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in query.terms)
        wanted = CANDIDATES
        # 1. The best full-text matches. bm25() is negative: lower is better.
        if len(where) == 1:  # no filters beyond status, and the index holds only active memories
            matched = await self._fetchall(
                "SELECT m.rowid, -f.score, m.author, m.session_id, substr(m.occurred_at, 1, 10) FROM "
                f"(SELECT rowid, {BM25} AS score FROM memories_fts WHERE memories_fts MATCH ? "
                "ORDER BY score, rowid LIMIT ?) f JOIN memories m ON m.rowid = f.rowid ORDER BY f.score",
                [match, wanted],
            )
        else:
            matched = await self._fetchall(
                f"SELECT m.rowid, -{BM25} AS score, m.author, m.session_id, substr(m.occurred_at, 1, 10) "
                "FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid "
                f"WHERE memories_fts MATCH ? AND {filters} ORDER BY score DESC, m.rowid LIMIT ?",
                [match, *params, wanted],
            )
        own = {rowid: score for rowid, score, *_ in matched}
        context = {rowid: (author, session, day) for rowid, _, author, session, day in matched}
        # 2. Their neighbours in storage order, when stored in the same context.
        lenders = [rowid for rowid, *_ in matched[:LENDERS]]
        near = {r + step for r in lenders for step in (-1, 1)} - own.keys()
        for chunk in _chunks(sorted(near), 500):
            rows = await self._fetchall(
                # NOT INDEXED: without ANALYZE statistics the planner takes "status = 'active'" for
                # selective and walks an index over every active memory instead of these few rowids.
                "SELECT m.rowid, m.author, m.session_id, substr(m.occurred_at, 1, 10) "
                f"FROM memories m NOT INDEXED WHERE m.rowid IN ({', '.join('?' * len(chunk))}) AND {filters}",
                [*chunk, *params],
            )
            context.update({rowid: (author, session, day) for rowid, author, session, day in rows})
        scores: dict[int, float] = {}
        lent_by: dict[int, int] = {}
        for rowid in context:
            total = own.get(rowid, 0.0)
            best_lender, best_lent = None, 0.0
            for other in (rowid - 1, rowid + 1):
                if other in own and context.get(other) == context[rowid]:
                    lent = NEIGHBOUR_WEIGHT * own[other]
                    total += lent
                    if lent > best_lent:
                        best_lender, best_lent = other, lent
            if total > 0:
                scores[rowid] = total
                if rowid not in own and best_lender is not None:
                    lent_by[rowid] = best_lender
        ranked = sorted(scores, key=lambda r: (-scores[r], -r))[query.offset : query.offset + query.limit]
        if not ranked:
            return []
        needed = ranked + [lent_by[r] for r in ranked if r in lent_by]
        rows = await self._fetchall(
            f"SELECT m.rowid, {MEMORY_COLUMNS} FROM memories m WHERE m.rowid IN ({', '.join('?' * len(needed))})",
            needed,
        )
        memories = {row[0]: _memory(row[1:]) for row in rows}
        return [
            SearchHit(memories[r], scores[r], memories[lent_by[r]].id if r in lent_by else None)
            for r in ranked
        ]

    # Sessions and counts -----------------------------------------------------------------------

    async def record_session(self, session_id: str, client: str, started_at: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO sessions (id, client, started_at) VALUES (?, ?, ?)",
                (session_id, client, started_at),
            )

    async def stats(self) -> Stats:
        counts = dict(await self._fetchall("SELECT status, count(*) FROM memories GROUP BY status"))
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

    async def integrity_check(self) -> str:
        row = await self._fetchone("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _connect(path: Path, synchronous: str) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of Python's implicit transactions.
    db = await aiosqlite.connect(str(path), isolation_level=None)
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
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await db.close()
        raise
    return db


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION. Safe when several processes open a new file at once."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        cursor = await db.execute("PRAGMA user_version")
        (current,) = await cursor.fetchone()  # type: ignore[misc]
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"the database has schema version {current}, newer than this soul-mcp understands "
                f"({SCHEMA_VERSION}); upgrade soul-mcp"
            )
        for number in range(current, SCHEMA_VERSION):
            log.info("migrating database schema to version %d", number + 1)
            for statement in split_statements(MIGRATIONS[number]):
                await db.execute(statement)
        if current != SCHEMA_VERSION:
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")
