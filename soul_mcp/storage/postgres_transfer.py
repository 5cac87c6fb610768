"""A PostgreSQL database's self as rows, for `soul-mcp migrate` (soul_mcp/transfer.py).

As a source: a connection of its own, read-only (`default_transaction_read_only`, and a REPEATABLE
READ READ ONLY transaction: one snapshot of every table), through server-side cursors. Not a
PostgresStore: opening one runs the schema migrations, which write. As a target: a PostgresStore
(migrated at open), written in one of its transactions.

Rows keep their keys: the identity columns take the copied values (OVERRIDING SYSTEM VALUE) and
their sequences are set past the highest afterwards. What the store derives is made as it makes it:
each memory's words, frequencies and token count (postgres_recall.text_vector), and, in `finish`, the
text totals and the change log (the memories' trigger is off while copying), tag rows and document
heads.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from soul_mcp.errors import StorageError
from soul_mcp.storage.postgres import CONNECT_TIMEOUT_S, PostgresStore, about_words, shown_url, unavailable
from soul_mcp.storage.postgres_recall import text_vector
from soul_mcp.storage.postgres_schema import SCHEMA_VERSION
from soul_mcp.storage.sqlite_recall import Tokens

if TYPE_CHECKING:
    import psycopg

Row = tuple[Any, ...]

READ: dict[str, str] = {
    "document_versions": "SELECT document, version, content, author, reason, created_at, session_id, "
    "restored_from FROM document_versions ORDER BY document, version",
    "sessions": 'SELECT id, client, started_at FROM sessions ORDER BY started_at, id COLLATE "C"',
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
    "created_at, session_id, restored_from) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
    "sessions": "INSERT INTO sessions (id, client, started_at) VALUES (%s, %s, %s)",
    "tokens": "INSERT INTO tokens (rowid, name, token_hash, scopes, created_at, last_used_at, revoked_at) "
    "OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s, %s)",
    "memories": "INSERT INTO memories (rowid, id, content, content_key, kind, tags, importance, occurred_at, "
    "created_at, author, session_id, status, status_reason, status_changed_at, supersedes, superseded_by, "
    "status_changed_by, words, freqs, tokens) OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s, %s, "
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::tsvector, %s::jsonb, %s)",
    "memory_embeddings": "INSERT INTO memory_embeddings (id, memory_rowid, model, dims, text_hash, vector) "
    "OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s)",
}

COUNTS = (
    "SELECT (SELECT count(*) FROM document_versions), (SELECT count(*) FROM sessions), "
    "(SELECT count(*) FROM tokens), (SELECT count(*) FROM memories), "
    "(SELECT count(*) FROM memory_embeddings), (SELECT count(*) FROM memory_tags), "
    "(SELECT count(*) FROM memories WHERE status = 'active'), "
    # What BM25 counts as the indexed memories (N): kept by the memories' trigger.
    "(SELECT memories FROM text_totals)"
)
COUNTED = ("document_versions", "sessions", "tokens", "memories", "memory_embeddings", "memory_tags",
           "active_memories", "indexed_memories")  # fmt: skip

# Identity columns whose sequences must continue past the copied values.
IDENTITIES = (("memories", "rowid"), ("tokens", "rowid"), ("memory_embeddings", "id"))


def _counted(row: Row | None) -> dict[str, int]:
    return {kind: int(n) for kind, n in zip(COUNTED, row or (), strict=True)}


class _Reading:
    def __init__(self, db: psycopg.AsyncConnection[Any], shown: str) -> None:
        self._db = db
        self._shown = shown

    async def counts(self) -> dict[str, int]:
        return _counted(await (await self._db.execute(COUNTS)).fetchone())

    async def rows(self, kind: str, batch: int) -> AsyncGenerator[list[Row], None]:
        import psycopg

        try:
            # A server-side cursor: the table comes `batch` rows at a time, not whole.
            async with self._db.cursor(name=f"soul_copy_{secrets.token_hex(4)}") as cursor:
                await cursor.execute(READ[kind])
                while rows := await cursor.fetchmany(batch):
                    yield [tuple(r) for r in rows]
        except psycopg.Error as exc:
            raise _error(exc, self._shown) from exc


class _Writing:
    def __init__(self, db: psycopg.AsyncConnection[Any]) -> None:
        self._db = db
        self._tokens = Tokens()

    async def counts(self) -> dict[str, int]:
        return _counted(await (await self._db.execute(COUNTS)).fetchone())

    async def start(self) -> None:
        # The memories' trigger updates a row of text_total_slots per memory: in one transaction
        # each update leaves a dead version that the next one reads past, so a copy would slow
        # with the square of its size. Off for this transaction only (ALTER TABLE is transactional;
        # it waits for, then holds off, other writers); `finish` makes the totals and the log whole.
        await self._db.execute("ALTER TABLE memories DISABLE TRIGGER memories_changed")

    async def clear(self) -> None:
        # The log names the memories deleted, as the trigger would, for a server that reads it.
        await self._db.execute("INSERT INTO memory_changes (memory_rowid) SELECT rowid FROM memories")
        for table in ("memory_embeddings", "memory_tags", "memories", "document_versions",
                      "document_heads", "sessions", "tokens"):  # fmt: skip
            await self._db.execute(f"DELETE FROM {table}")

    async def write(self, kind: str, rows: list[Row]) -> None:
        if kind == "memories":
            abouts = [about_words(r[4], r[7]) for r in rows]
            # The batch's texts tokenized in one call (then read from the cache): one per memory
            # costs twice the copy's time.
            self._tokens.keys(
                [text for r, about in zip(rows, abouts, strict=True) for text in (r[2], r[5], about)]
            )
            rows = [
                (*r, *text_vector(self._tokens, r[2], r[5], about))
                for r, about in zip(rows, abouts, strict=True)
            ]
        async with self._db.cursor() as cursor:
            await cursor.executemany(WRITE[kind], rows)

    async def finish(self) -> None:
        db = self._db
        # What the trigger does for each memory inserted: a change logged, the active ones counted.
        await db.execute(
            "INSERT INTO memory_changes (memory_rowid) SELECT rowid FROM memories ORDER BY rowid"
        )
        await db.execute(
            "UPDATE text_total_slots SET memories = CASE WHEN slot = 0 THEN a.n ELSE 0 END, "
            "tokens = CASE WHEN slot = 0 THEN a.tokens ELSE 0 END FROM (SELECT count(*) AS n, "
            "coalesce(sum(tokens), 0) AS tokens FROM memories WHERE status = 'active') AS a"
        )
        await db.execute("ALTER TABLE memories ENABLE TRIGGER memories_changed")
        await db.execute(
            "INSERT INTO memory_tags (tag, memory_rowid) SELECT DISTINCT t.tag, m.rowid FROM memories m "
            "CROSS JOIN LATERAL jsonb_array_elements_text(m.tags::jsonb) AS t(tag)"
        )
        # Each document's next version is numbered from its head (PostgresStore.append_version).
        await db.execute(
            "INSERT INTO document_heads (document, head) "
            "SELECT document, max(version) FROM document_versions GROUP BY document"
        )
        for table, column in IDENTITIES:
            await db.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
            )


def _error(exc: BaseException, shown: str) -> StorageError:
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        return unavailable(exc, shown)
    return StorageError(f"reading the database {shown} failed: {exc}")


class PostgresSelfRows:
    """SelfRows (transfer.py) over a PostgreSQL database: a read-only connection as a source, a
    PostgresStore as a target."""

    def __init__(self, shown: str, source: psycopg.AsyncConnection[Any] | None = None,
                 store: PostgresStore | None = None) -> None:  # fmt: skip
        self.shown = shown
        self._source = source
        self._store = store

    @classmethod
    async def open_source(cls, url: str) -> PostgresSelfRows:
        try:
            import psycopg
        except ImportError as exc:
            raise StorageError(
                "a PostgreSQL database needs the driver: pip install 'soul-mcp[postgres]'"
            ) from exc
        shown = shown_url(url)
        try:
            db = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                options="-c default_transaction_read_only=on",
            )  # fmt: skip
        except psycopg.Error as exc:
            raise unavailable(exc, shown) from None
        try:
            row = await (await db.execute("SELECT to_regclass('soul_schema') IS NOT NULL")).fetchone()
            version = None
            if row and row[0]:
                found = await (await db.execute("SELECT version FROM soul_schema")).fetchone()
                version = found[0] if found else None
        except psycopg.Error as exc:
            await db.close()
            raise _error(exc, shown) from None
        if version != SCHEMA_VERSION:
            await db.close()
            what = "holds no soul-mcp self" if version is None else f"has schema version {version}"
            raise StorageError(
                f"the database {shown} {what}; a source must have schema version {SCHEMA_VERSION} "
                "(start `soul-mcp serve` on it once with this version to upgrade it)"
            )
        # The transactions `reading()` opens: one snapshot of every table, writing nothing.
        await db.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await db.set_read_only(True)
        return cls(shown, source=db)

    @classmethod
    async def open_target(cls, url: str) -> PostgresSelfRows:
        store = await PostgresStore.open(url, pool_size=2)
        return cls(store.shown, store=store)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[_Reading]:
        import psycopg

        assert self._source is not None, "opened as a target"
        try:
            async with self._source.transaction():
                yield _Reading(self._source, self.shown)
        except psycopg.Error as exc:
            raise _error(exc, self.shown) from exc

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[_Writing]:
        assert self._store is not None, "opened as a source"
        async with self._store._transaction() as db:
            writing = _Writing(db)
            await writing.start()
            yield writing

    async def close(self, failed: bool = False) -> None:
        if self._source is not None:
            await self._source.close()
        if self._store is not None:
            await self._store.close()
