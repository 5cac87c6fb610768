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

import itertools
import json
import logging
import math
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from soul_mcp.errors import InvalidInput, NotFound, StorageError
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
from soul_mcp.storage.base import RANKED_MAX, SearchHit, SearchQuery
from soul_mcp.storage.schema import MIGRATIONS, SCHEMA_VERSION, split_statements
from soul_mcp.storage.sqlite_vectors import SQLiteVectors

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
# Recall at 100k memories. bm25 costs ~1 µs for every memory a MATCH yields, and a word held by
# thousands of memories would make one MATCH of all the query's words score thousands, mostly to
# rank them low (a common word weighs little: low idf). So the words are taken rarest first, at
# least RARE_MIN memories' worth and then as many as fit in RARE_ROWS; the memories holding those
# are scored first (with the whole query's scores). The other words then only bring in the memories
# that could still reach the first EXACT_TOP: bm25 gives a word at most BM25_TF_MAX times its idf,
# so memories whose words add up to less than the EXACT_TOP-th score so far are never scored. The
# first EXACT_TOP by own score are thus exactly those of the single MATCH; past them, a memory
# holding only common words may be missing from the pool (and then lends nothing to its
# neighbours). Measured with bench/latency.py's queries at 100k: the first ten hits overlap 99.3 %
# with the single MATCH's, and recall in process is 2.7x faster at p50, 2.1x at p95
# (bench/README.md has the numbers).
RARE_MIN = 30
RARE_ROWS = 1_500
EXACT_TOP = 10
# bm25's term-frequency factor tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)) stays below
# k1 + 1 (FTS5: k1 = 1.2, b = 0.75): a word adds less than this many times its idf to a score.
BM25_TF_MAX = 2.2
# With more words left than this, their combinations are not listed: all their memories are scored.
MAX_COMBINED = 6
# A date range holding fewer memories than this is gathered first and matches are looked up in it;
# a longer one is tested match by match (through the index memories_when_kind).
DATE_SET_MAX = 5_000
# Word counts kept between recalls while nothing is written (see SQLiteStore._counts).
COUNTS_KEPT = 10_000
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


class SQLiteStore(SQLiteVectors):
    """A `Store` over one SQLite file. Open with `await SQLiteStore.open(path)`."""

    # How many matches a text search ranks, and the thresholds of the rare-word path (see RARE_MIN);
    # per store, so that a test can make each path run on a small database.
    candidates: int = CANDIDATES
    rare_min: int = RARE_MIN
    rare_rows: int = RARE_ROWS
    exact_top: int = EXACT_TOP
    date_set_max: int = DATE_SET_MAX

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        # The schema version the file had when this process migrated it (None: already current).
        self.migrated_from: int | None = None
        # Recall's word counts, kept while the database is unchanged (see _counts).
        self._word_counts: dict[str, int] = {}
        self._counted_at: int | None = None

    @classmethod
    async def open(cls, path: str | Path, synchronous: str = "FULL") -> SQLiteStore:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        opened: list[aiosqlite.Connection] = []
        try:
            opened.append(writer := await _connect(path, synchronous))
            schema_before = await _migrate(writer)
            opened.append(reader := await _connect(path, synchronous))
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            # aiosqlite runs each connection on its own thread: one left open keeps the process alive.
            for connection in opened:
                await connection.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StorageError(f"cannot open the database at {path}: {exc}") from exc
            raise
        store = cls(path, writer, reader)
        store.migrated_from = schema_before if schema_before != SCHEMA_VERSION else None
        return store

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
            # One trip to aiosqlite's thread instead of three (execute, fetch, close): ~60 µs.
            rows = await self._reader.execute_fetchall(sql, params)
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
        """SQL conditions on `m` (the memories table): active, and the query's filters."""
        where, params = SQLiteStore._row_filters(query)
        tags, tag_params = SQLiteStore._tag_filter(query, "m.rowid")
        return ["m.status = 'active'", *where, *tags], [*params, *tag_params]

    @staticmethod
    def _row_filters(query: SearchQuery, dates: bool = True) -> tuple[list[str], list[Any]]:
        """The filters that need the memory's row: kind, dates (unless `dates` is False), excluded ids."""
        where, params = SQLiteStore._date_filter(query) if dates else ([], [])
        if query.kind:
            where.append("m.kind = ?")
            params.append(query.kind)
        if query.exclude_ids:
            where.append(f"m.id NOT IN ({', '.join('?' * len(query.exclude_ids))})")
            params.extend(query.exclude_ids)
        return where, params

    @staticmethod
    def _date_filter(query: SearchQuery) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if query.since:
            where.append("m.occurred_at >= ?")
            params.append(query.since)
        if query.until:
            where.append("m.occurred_at < ?")
            params.append(query.until)
        return where, params

    @staticmethod
    def _tag_filter(query: SearchQuery, rowid: str, each: bool = False) -> tuple[list[str], list[Any]]:
        """The tag filter on the memory whose rowid is `rowid`; it reads memory_tags only.

        By default the memories carrying every tag are gathered once and each row is looked up in
        that set: right when many rows are tested. `each` tests a row at a time through the
        (tag, memory) key instead: right for a few rows, since a common tag's set costs ~1 ms.
        """
        if not query.tags:
            return [], []
        marks = ", ".join("?" * len(query.tags))
        if each:
            condition = (
                f"(SELECT count(*) FROM memory_tags WHERE tag IN ({marks}) AND memory_rowid = {rowid}) = ?"
            )
        else:
            condition = (
                f"{rowid} IN (SELECT memory_rowid FROM memory_tags WHERE tag IN ({marks}) "
                "GROUP BY memory_rowid HAVING count(*) = ?)"
            )
        return [condition], [*query.tags, len(query.tags)]

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
        # 1. The best full-text matches (bm25 is negative: lower is better), the same pool of
        # `candidates` whatever page is asked for.
        pool = await self._ranked(query)
        if query.vector is not None:  # hybrid recall (sqlite_vectors.py), when there are embeddings
            hybrid = await self._search_hybrid(query, pool)
            if hybrid is not None:
                return hybrid
        own = {rowid: -score for rowid, score in pool}
        # 2. Their neighbours in storage order, when stored in the same context. Only the best
        # matches lend to a neighbour outside the pool, but any two matches side by side lend to
        # each other; a context is read only where one of these can happen.
        lenders = [rowid for rowid, _ in pool[:LENDERS]]
        near = {r + step for r in lenders for step in (-1, 1)} - own.keys()
        receivers = own.keys() | near
        needed = near | {r for r in own if r - 1 in receivers or r + 1 in receivers}
        where, params = self._row_filters(query)
        tags, tag_params = self._tag_filter(query, "m.rowid", each=True)
        filters = " AND ".join(["m.status = 'active'", *where, *tags])
        context: dict[int, tuple[str, str | None, str]] = {}
        for chunk in _chunks(sorted(needed), 500):
            rows = await self._fetchall(
                # NOT INDEXED: without ANALYZE statistics the planner takes "status = 'active'" for
                # selective and walks an index over every active memory instead of these few rowids.
                "SELECT m.rowid, m.author, m.session_id, substr(m.occurred_at, 1, 10) "
                f"FROM memories m NOT INDEXED WHERE m.rowid IN ({', '.join('?' * len(chunk))}) AND {filters}",
                [*chunk, *params, *tag_params],
            )
            context.update({rowid: (author, session, day) for rowid, author, session, day in rows})
        scores = dict(own)  # a match with no match or lender beside it keeps its own score
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
        needed_rows = ranked + [lent_by[r] for r in ranked if r in lent_by]
        rows = await self._fetchall(
            f"SELECT m.rowid, {MEMORY_COLUMNS} FROM memories m "
            f"WHERE m.rowid IN ({', '.join('?' * len(needed_rows))})",
            needed_rows,
        )
        memories = {row[0]: _memory(row[1:]) for row in rows}
        return [
            SearchHit(memories[r], scores[r], memories[lent_by[r]].id if r in lent_by else None)
            for r in ranked
        ]

    async def _counts(
        self, quoted: list[str], in_range: str, params: list[Any]
    ) -> tuple[int, int, dict[str, int]]:
        """max(rowid), the `in_range` count, and how many memories hold each of the `quoted` words.

        Counting a word's memories costs ~1/30 of scoring them, but for a common word that is still
        ~0.3 ms, so counts are kept while nothing is written (PRAGMA data_version moves with every
        commit, from this process or another). max(rowid) stands for the number of memories: never
        fewer, which keeps the bounds in `_ranked` on the safe side.
        """
        count = "(SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?)"
        kept = self._word_counts
        # A copy taken before the await: a concurrent recall may clear `kept` meanwhile.
        known = {term: kept[term] for term in quoted if term in kept}
        todo = [term for term in quoted if term not in known]
        version, size, dated, *fresh = await self._fetchone(
            "SELECT (SELECT data_version FROM pragma_data_version()), (SELECT max(rowid) FROM memories), "
            + ", ".join([in_range, *[count] * len(todo)]),
            [*params, *todo],
        ) or (None, 0, 0)
        counts = dict(zip(todo, fresh, strict=True))
        stale = [term for term in quoted if term not in counts]
        if version != self._counted_at:  # something was written: what was kept may be off
            kept.clear()
            self._counted_at = version
            if stale:
                recounted = await self._fetchone("SELECT " + ", ".join([count] * len(stale)), stale) or ()
                counts.update(zip(stale, recounted, strict=True))
        else:
            counts.update((term, known[term]) for term in stale)
        if len(kept) > COUNTS_KEPT:
            kept.clear()
        kept.update(counts)
        return size or 0, dated, {term: counts[term] for term in quoted}

    async def _ranked(self, query: SearchQuery) -> list[tuple[int, float]]:
        """The best `candidates` full-text matches that pass the filters: (rowid, bm25), best first.

        The first `exact_top` are exactly those of one MATCH of all the words; past them, a query
        mixing rare and common words may leave out memories holding only common words (see
        RARE_MIN).
        """
        # Each term is quoted, so nothing the caller typed is read as FTS5 syntax.
        quoted = ['"' + term.replace('"', '""') + '"' for term in query.terms]
        dates, date_params = self._date_filter(query)
        date_range = " AND ".join(["m.status = 'active'", *dates])
        in_range = f"(SELECT count(*) FROM (SELECT 1 FROM memories m WHERE {date_range} LIMIT {int(self.date_set_max)}))"
        size, dated, counts = await self._counts(quoted, in_range if dates else "0", date_params)
        # A word no memory holds adds nothing to any score: it is left out of the MATCH.
        found = sorted((count, term) for term, count in counts.items() if count)
        if not found:
            return []

        # The filters. Those on the index's rowid are tested before the memory is read: the tag
        # set, and the date range when short ("+" keeps SQLite from handing such a set to FTS5 as
        # one full-text query per rowid). The others are answered by the index memories_when_kind
        # (a seek by rowid into just those columns); CROSS JOIN keeps the full-text index the
        # outer loop.
        where = ["memories_fts MATCH ?"]
        params: list[Any] = []
        tag_where, tag_params = self._tag_filter(query, "+memories_fts.rowid")
        where += tag_where
        params += tag_params
        date_set = bool(dates) and dated < self.date_set_max
        if date_set:
            where.append(f"+memories_fts.rowid IN (SELECT m.rowid FROM memories m WHERE {date_range})")
            params += date_params
        row_where, row_params = self._row_filters(query, dates=not date_set)
        where += row_where
        params += row_params
        covering = "" if query.exclude_ids else " INDEXED BY memories_when_kind"
        join = f" CROSS JOIN memories m{covering} ON m.rowid = memories_fts.rowid" if row_where else ""
        hits = f"SELECT memories_fts.rowid AS rowid, {BM25} AS score FROM memories_fts{join} WHERE {' AND '.join(where)}"
        best = f"ORDER BY score, rowid LIMIT {int(self.candidates)}"

        rare: list[str] = []
        covered = 0
        for count, term in found:  # rarest first: enough memories, then as many as the budget allows
            if covered >= self.rare_min and covered + count > self.rare_rows:
                break
            rare.append(term)
            covered += count
        rest = found[len(rare) :]
        if not rest or query.tags or date_set:
            # A tag or a short date range leaves few memories to score: one MATCH of all the words.
            return await self._fetchall(f"{hits} {best}", [" OR ".join(term for _, term in found), *params])

        async def holding(words: list[str], others: list[str], scored: list[str]) -> list[tuple[int, float]]:
            """The memories holding one of `words` and none of `scored`, with the whole query's scores.

            bm25 sums over the words in the MATCH, and a word a memory lacks adds nothing: so those
            that also hold one of the `others` are matched with every word, and the rest with fewer,
            which costs FTS5 less (it walks each word's memories once per MATCH to weigh it).
            """
            without = f" NOT ({' OR '.join(scored)})" if scored else ""
            some = f"({' OR '.join(words)})"
            if not others:
                return await self._fetchall(f"{hits} {best}", [some + without, *params])
            return await self._fetchall(
                f"WITH both_kinds AS MATERIALIZED ({hits}) SELECT rowid, score FROM both_kinds UNION ALL "
                f"{hits} AND +memories_fts.rowid NOT IN (SELECT rowid FROM both_kinds) {best}",
                [f"({some} AND ({' OR '.join(others)})){without}", *params, some + without, *params],
            )

        # 1. The memories holding a rare word.
        pool = await holding(rare, [term for _, term in rest], [])
        scored = rare
        # 2. The others, as far as they could reach the first `exact_top`. bm25 gives a word at most
        # idf * (k1 + 1): a word that alone could reach the score to beat has all its memories
        # scored (then the score to beat rises); words that only could together are looked for
        # together; the memories of the rest never get there.
        while rest:
            enough = min(self.exact_top, self.candidates)
            to_beat = -pool[enough - 1][1] if len(pool) >= enough else 0.0
            bounds = [(term, BM25_TF_MAX * _idf(size, count)) for count, term in rest]
            reaching = _combinations_reaching(bounds, to_beat)
            if not reaching:
                break
            alone = [term for _, term in rest if () in reaching or (term,) in reaching]
            if alone:
                rest = [(count, term) for count, term in rest if term not in alone]
                found_now = await holding(alone, [term for _, term in rest], scored)
                scored = [*scored, *alone]
            else:
                without = f" NOT ({' OR '.join(scored)})"
                together = [f"({' AND '.join(terms)})" for terms in reaching]
                if len(reaching) == 1 and len(reaching[0]) == len(rest):
                    # One combination of all the words left: matched as such, each word once (so
                    # that bm25 counts it once).
                    found_now = await self._fetchall(f"{hits} {best}", [together[0] + without, *params])
                else:
                    # Several: the memories holding any word left are walked, and only those holding
                    # a combination are scored.
                    found_now = await self._fetchall(
                        f"{hits} AND +memories_fts.rowid IN "
                        f"(SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?) {best}",
                        [
                            f"({' OR '.join(term for _, term in rest)}){without}",
                            *params,
                            f"({' OR '.join(together)}){without}",
                        ],
                    )
                rest = []
            pool = sorted(pool + found_now, key=lambda hit: (hit[1], hit[0]))[: self.candidates]
        return pool

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
        for suffix in ("-wal", "-shm"):
            if Path(f"{target}{suffix}").exists():
                raise InvalidInput(
                    f"{target}{suffix} exists: {target} looks like a database in use; stop what uses it "
                    "or choose another file for the backup"
                )
        # Written beside the target under another name, checked, then renamed: a failed or
        # interrupted backup never leaves a half-written file under the name asked for.
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        try:
            await anyio.to_thread.run_sync(_copy_database, self.path, partial)
            copy = await SQLiteStore.open(partial)
            try:
                integrity = await copy.integrity_check()
                stats = await copy.stats()
            finally:
                await copy.close()
            if integrity != "ok":
                raise StorageError(
                    f"the backup failed its integrity check ({integrity}); nothing was written"
                )
            os.replace(partial, target)
            _sync_folder(target.parent)
        finally:
            for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
                leftover.unlink(missing_ok=True)
        return Backup(path=str(target), bytes=target.stat().st_size, integrity=integrity, stats=stats)

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

    async def client_activity(self) -> list[ClientActivity]:
        found: dict[str, ClientActivity] = {}
        for sql, count_field, time_field in (
            ("SELECT client, count(*), max(started_at) FROM sessions GROUP BY client", "sessions",
             "last_session_at"),
            ("SELECT author, count(*), max(created_at) FROM memories GROUP BY author", "memories",
             "last_memory_at"),
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
        where = [f"m.status IN ({', '.join('?' * len(statuses))})"]
        params: list[Any] = list(statuses)
        if kind:
            where.append("m.kind = ?")
            params.append(kind)
        if since:
            where.append("m.occurred_at >= ?")
            params.append(since)
        if until:
            where.append("m.occurred_at < ?")
            params.append(until)
        if tags:
            where.append(
                f"m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag IN ({', '.join('?' * len(tags))}) "
                "GROUP BY memory_rowid HAVING count(*) = ?)"
            )
            params.extend([*tags, len(tags)])
        condition = " AND ".join(where)
        rows = await self._fetchall(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {condition} "
            "ORDER BY m.occurred_at DESC, m.rowid DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        (total,) = await self._fetchone(f"SELECT count(*) FROM memories m WHERE {condition}", params) or (0,)
        return [_memory(row) for row in rows], total

    async def diagnose(self) -> StoreDiagnosis:
        integrity = [str(row[0]) for row in await self._fetchall("PRAGMA integrity_check")]
        (version,) = await self._fetchone("PRAGMA user_version") or (0,)
        (journal,) = await self._fetchone("PRAGMA journal_mode") or ("?",)
        (sync,) = await self._fetchone("PRAGMA synchronous") or (-1,)
        # The index's own structural check. It is a write statement to SQLite (though it changes
        # nothing), so it runs on the writer. Its 'rank = 1' form would also compare the index with
        # the content table, but that table holds forgotten memories the index leaves out on purpose,
        # so that comparison is done below, row by row.
        try:
            async with self._transaction() as db:
                await db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")
            index_check = "ok"
        except sqlite3.DatabaseError as exc:
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


def _copy_database(source: Path, target: Path) -> None:
    """SQLite's online backup, all pages in one step: the copy is one read snapshot of the source,
    so it is consistent while other processes commit (in WAL mode they are not held up meanwhile)."""
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); Windows has no directory handles to sync."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _idf(rows: int, holding: int) -> float:
    """bm25's weight for a word that `holding` of `rows` memories hold, as FTS5 computes it."""
    return max(math.log((rows - holding + 0.5) / (holding + 0.5)), 1e-6)


def _combinations_reaching(bounds: list[tuple[str, float]], score: float) -> list[tuple[str, ...]]:
    """The smallest combinations of words whose `bounds` add up to `score` or more.

    [] when even all of them fall short; [()] when any memory may reach it (a score of 0, or too
    many words to list the combinations). A memory holding a larger combination holds one of these.
    """
    if score <= 0 or len(bounds) > MAX_COMBINED:
        return [()]
    reaching: list[tuple[str, ...]] = []
    for size in range(1, len(bounds) + 1):
        for chosen in itertools.combinations(bounds, size):
            terms = tuple(term for term, _ in chosen)
            if sum(bound for _, bound in chosen) >= score and not any(
                set(smaller) <= set(terms) for smaller in reaching
            ):
                reaching.append(terms)
    return reaching


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


async def _migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found. Safe when several processes
    open a new file at once."""
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
    return current
