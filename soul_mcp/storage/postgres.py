"""The PostgreSQL store: one self on a database that several servers share.

Open with `await PostgresStore.open("postgresql://user@host:5432/dbname")`. The driver is psycopg 3
with its connection pool (the `postgres` extra), imported only here, when such a store is opened.
libpq finds the password itself (the URL, PGPASSWORD, ~/.pgpass); no message of this module shows
it: the database is named by `shown`, the URL without its password.

Why it is safe with several servers writing at once:
- a document's next version number comes from its row in document_heads, incremented in the same
  transaction (the row lock orders two writers: no duplicate, no gap);
- dedup is the unique partial index on active contents (INSERT ... ON CONFLICT DO NOTHING);
- status changes lock the memory's row (SELECT ... FOR UPDATE) before checking its status;
- the change log, the text totals and the embeddings' invalidation are kept by a trigger
  (postgres_schema.py), in the writer's transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

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
from soul_mcp.storage.base import EmbeddingJob
from soul_mcp.storage.oauth_rows import PostgresOAuthRows
from soul_mcp.storage.postgres_link import LinkWatch
from soul_mcp.storage.postgres_notify import ChangeListener
from soul_mcp.storage.postgres_pool import IdleCheck
from soul_mcp.storage.postgres_recall import (
    MEMORY_COLUMNS,
    PostgresRecall,
    Tokens,
    memory_filters,
    memory_from_row,
    text_vector,
)
from soul_mcp.storage.postgres_schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from soul_mcp.storage.schema import content_digest
from soul_mcp.storage.sqlite import about_text, new_memory_id
from soul_mcp.storage.sqlite_embeddings import WINDOW_COLUMNS, embedding_jobs, text_hash, windows_of
from soul_mcp.storage.sqlite_rows import VERSION_COLUMNS, version_from_row

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 5  # a call while the database is away fails after this, never hangs
# Once a call found the database away, the next ones wait this long for a connection (the pool keeps
# trying meanwhile), so that an outage answers each call in about a second, not five.
OUTAGE_WAIT_S = 1.0
# The pool's reconnection attempts back off (1, 2, 4 s ...) until they give up after this; the next
# call then starts a new round at once, so a database back after a long outage is found within a
# second or two instead of at the end of a long pause.
RECONNECT_GIVE_UP_S = 5.0
POOL_SIZE = 8
# A link cut without a reset (a host gone, a network partition) would leave a call waiting for TCP
# to give up, many minutes: libpq notices within seconds with these (unsent data after 5 s; no answer
# to keepalives after 5 + 3 x 1 s), and the call fails as in any outage.
DEAD_LINK = {"tcp_user_timeout": 5000, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1,
             "keepalives_count": 3}  # fmt: skip
# Neither fires when something between here and the database still acknowledges bytes but passes
# none: postgres_link.py notices that. The pool's check, an empty query, is looked at sooner: one
# that fails only costs a new connection.
CHECK_LOOK_AFTER_S = 2.0
TOKEN_COLUMNS = "name, scopes, created_at, last_used_at, revoked_at"
# A remember in one statement: the active twin if there is one, else the new memory and its tags.
# The twin is looked up first because an INSERT that conflicts still takes a rowid, and a gap would
# part neighbours (recall's lending and the embedded windows pair rowid - 1 with rowid).
_NO_MEMORY = ", ".join(["NULL"] * len(MEMORY_COLUMNS.split(",")))
STORE_MEMORY = f"""
WITH twin AS (
    SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.content_key = %(key)s AND m.status = 'active'
), stored AS (
    INSERT INTO memories (id, content, content_key, kind, tags, importance, occurred_at, created_at,
                          author, session_id, supersedes, words, freqs, tokens)
    SELECT %(id)s, %(content)s, %(key)s, %(kind)s, %(tags)s, %(importance)s, %(occurred_at)s,
           %(created_at)s, %(author)s, %(session_id)s, %(supersedes)s, %(words)s::tsvector,
           %(freqs)s::jsonb, %(tokens)s
    WHERE NOT EXISTS (SELECT 1 FROM twin)
    ON CONFLICT (content_key) WHERE status = 'active' DO NOTHING
    RETURNING rowid
), tagged AS (
    INSERT INTO memory_tags (tag, memory_rowid) SELECT DISTINCT unnest(%(tag_list)s::text[]), rowid FROM stored
)
SELECT NULL::bigint, twin.* FROM twin
UNION ALL
SELECT rowid, {_NO_MEMORY} FROM stored
"""


def is_postgres_url(value: str) -> bool:
    return value.startswith(URL_SCHEMES)


def shown_url(url: str) -> str:
    """The URL without its password (and without any query, which may hold one)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def unavailable(exc: BaseException, shown: str) -> StorageError:
    """A connection failure as the caller should read it (libpq's text names no password)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageError(
        f"database unavailable at {shown} ({detail}); retrying: try again in a few seconds, and check "
        "that the server runs and accepts this user"
    )


def about_words(kind: str, occurred_at: str) -> str:
    """The `about` column's words (as SQLite computes them); none for a time it cannot read."""
    try:
        return about_text(kind, occurred_at)
    except ValueError:
        return ""


def _token(row: Sequence[Any]) -> TokenInfo:
    name, scopes, created_at, last_used_at, revoked_at = row
    return TokenInfo(
        name=name,
        scopes=[s for s in scopes.split(",") if s],
        created_at=created_at,
        last_used_at=last_used_at,
        revoked_at=revoked_at,
    )


class PostgresStore(PostgresRecall, PostgresOAuthRows):
    """A `Store` (and `EmbeddingStore`) over one PostgreSQL database."""

    def __init__(self, conninfo: str, pool: AsyncConnectionPool, links: LinkWatch) -> None:
        self._conninfo = conninfo
        self._pool = pool
        self._links = links
        self.shown = shown_url(conninfo)
        self.read_only: str | None = None
        self.migrated_from: int | None = None
        self._tokens = Tokens()
        self._tokenized = 0
        self._listener: ChangeListener | None = None
        self._unavailable = False  # the last call found the database away

    @classmethod
    async def open(cls, url: str, pool_size: int = POOL_SIZE) -> PostgresStore:
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:
            raise StorageError(
                "a PostgreSQL database needs the driver: pip install 'soul-mcp[postgres]'"
            ) from exc
        shown = shown_url(url)
        # One connection first, for libpq's own reason when it fails (no such database, a refused
        # password): the pool would only time out.
        try:
            first = await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise unavailable(exc, shown) from None
        await first.close()
        checks, links = IdleCheck(), LinkWatch(url, DEAD_LINK)

        async def check(conn: psycopg.AsyncConnection[Any]) -> None:
            with links.watching(conn, CHECK_LOOK_AFTER_S):
                await checks.check(conn)

        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, **DEAD_LINK},
            # A connection the database dropped is replaced before it is handed out (postgres_pool.py).
            check=check,
            timeout=CONNECT_TIMEOUT_S,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            open=False,
            name="soul-mcp",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except Exception as exc:
            await pool.close()
            raise unavailable(_cause(exc), shown) from None
        store = cls(url, pool, links)
        checks.doubt = lambda: store._unavailable
        try:
            before = await store._migrate()
            await store.identify()
        except psycopg.Error as exc:
            await pool.close()
            raise store._error(exc) from None
        except BaseException:
            await pool.close()
            raise
        store.migrated_from = before if before != SCHEMA_VERSION else None
        return store

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self._pool.close()

    def _connection_lost(self) -> None:
        self._unavailable = True  # until a call gets a connection again

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for another writer's "changed" ping (postgres_notify.py);
        True when one came. A hint only: the watcher reads the facts from the tables."""
        if self._listener is None:
            self._listener = ChangeListener(
                self._conninfo, self.shown, CONNECT_TIMEOUT_S, self._links, self._connection_lost
            )
        return await self._listener.wait(timeout)

    async def _migrate(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS soul_schema (version integer NOT NULL)")
            row = await (await conn.execute("SELECT version FROM soul_schema")).fetchone()
            if row is None:
                await conn.execute("INSERT INTO soul_schema VALUES (0)")
            current = row[0] if row else 0
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"the database {self.shown} has schema version {current}, newer than this soul-mcp "
                    f"understands ({SCHEMA_VERSION}); upgrade soul-mcp"
                )
            for number in range(current, SCHEMA_VERSION):
                log.info("migrating the PostgreSQL schema to version %d", number + 1)
                await conn.execute(MIGRATIONS[number])
            await conn.execute("UPDATE soul_schema SET version = %s", (SCHEMA_VERSION,))
        return int(current)

    def _text_tokens(self) -> Tokens:
        # Tokens remembers every text it was given (up to 100k): kept for query words, but a
        # memory's whole text is rarely seen twice, so the cache is dropped now and then.
        self._tokenized += 1
        if self._tokenized % 1000 == 0:
            self._tokens = Tokens()
        return self._tokens

    def _error(self, exc: BaseException) -> StorageError:
        import psycopg
        from psycopg_pool import PoolTimeout

        if isinstance(exc, PoolTimeout | psycopg.OperationalError):
            self._unavailable = True
            return unavailable(exc, self.shown)
        return StorageError(f"the database {self.shown} failed: {exc}")

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection, waited for briefly while the database is known to be away."""
        wait = OUTAGE_WAIT_S if self._unavailable else CONNECT_TIMEOUT_S
        async with self._pool.connection(timeout=wait) as conn:
            if self._unavailable:
                log.info("the database %s is available again", self.shown)
                self._unavailable = False
            with self._links.watching(conn):
                yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self._connection() as conn, conn.transaction():
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error(exc) from exc

    async def _fetchall(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self._connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error(exc) from exc

    async def _fetchone(self, sql: str, params: Any = None) -> tuple[Any, ...] | None:
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
            # The head row's lock orders concurrent writers of one document until they commit.
            cursor = await db.execute(
                "INSERT INTO document_heads (document, head) VALUES (%s, 1) ON CONFLICT (document) "
                "DO UPDATE SET head = document_heads.head + 1 RETURNING head",
                (document,),
            )
            (version,) = await cursor.fetchone()  # type: ignore[misc]
            await db.execute(
                "INSERT INTO document_versions "
                "(document, version, content, author, reason, created_at, session_id, restored_from) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (document, version, content, author, reason, created_at, session_id, restored_from),
            )
        return version_from_row(
            (document, version, content, author, reason, created_at, restored_from, session_id)
        )

    async def get_version(self, document: str, version: int | None = None) -> DocumentVersion | None:
        if version is None:
            row = await self._fetchone(
                f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = %s "
                "ORDER BY version DESC LIMIT 1",
                (document,),
            )
        else:
            if not -(2**31) <= version < 2**31:
                return None
            row = await self._fetchone(
                f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = %s AND version = %s",
                (document, version),
            )
        return version_from_row(row) if row else None

    async def list_versions(self, document: str, limit: int, before: int | None) -> list[DocumentVersion]:
        rows = await self._fetchall(
            f"SELECT {VERSION_COLUMNS} FROM document_versions WHERE document = %s AND version < %s "
            "ORDER BY version DESC LIMIT %s",
            (document, min(before, 2**31) if before is not None else 2**31, limit),
        )
        return [version_from_row(r) for r in rows]

    # Memories ----------------------------------------------------------------------------------

    async def _store_memory(
        self, db: psycopg.AsyncConnection[Any], new: NewMemory, created_at: str, supersedes: str | None = None
    ) -> tuple[Memory, bool] | None:
        """Insert `new` with its tags unless an active memory holds its content, in one statement
        (one round trip: a remember waits for nothing else). Returns the memory and whether it is
        new; None when a concurrent insert of the same content took it first (look again)."""
        memory_id = new_memory_id()
        tags = json.dumps(new.tags, ensure_ascii=False)
        words, freqs, count = text_vector(
            self._text_tokens(), new.content, tags, about_words(new.kind, new.occurred_at)
        )
        cursor = await db.execute(STORE_MEMORY, {
            "id": memory_id, "content": new.content, "key": content_digest(new.content_key), "kind": new.kind,
            "tags": tags, "tag_list": new.tags, "importance": new.importance, "occurred_at": new.occurred_at,
            "created_at": created_at, "author": new.author, "session_id": new.session_id,
            "supersedes": supersedes, "words": words, "freqs": freqs, "tokens": count,
        })  # fmt: skip
        row = await cursor.fetchone()
        if row is None:
            return None
        if row[0] is None:  # the active twin
            return memory_from_row(row[1:]), False
        stored = Memory(
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
        return stored, True

    async def add_memory(self, new: NewMemory, created_at: str) -> tuple[Memory, bool]:
        import psycopg
        from psycopg_pool import PoolTimeout

        # One statement, atomic on its own (the pool's connections autocommit). ON CONFLICT covers
        # a concurrent insert of the same content: it waits for that one to commit, and the twin may
        # have left recall by then: so look again (rarely twice).
        try:
            async with self._connection() as db:
                for _ in range(5):
                    stored = await self._store_memory(db, new, created_at)
                    if stored is not None:
                        return stored
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error(exc) from exc
        raise StorageError("storing the memory kept conflicting with concurrent changes; try again")

    async def get_memory(self, memory_id: str) -> Memory | None:
        row = await self._fetchone(f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id = %s", (memory_id,))
        return memory_from_row(row) if row else None

    async def _require(self, db: psycopg.AsyncConnection[Any], memory_id: str, lock: bool = True) -> Memory:
        cursor = await db.execute(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.id = %s" + (" FOR UPDATE" if lock else ""),
            (memory_id,),
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
        import psycopg

        try:
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
                        "WHERE m1.id = %s AND m2.status = 'active'",
                        (memory_id,),
                    )
                    twin = await cursor.fetchone()
                    if twin is not None:
                        raise _twin_error(memory_id, twin[0])
                await db.execute(
                    "UPDATE memories SET status = %s, status_reason = %s, status_changed_at = %s, "
                    "status_changed_by = %s WHERE id = %s",
                    (status, reason, changed_at, by, memory_id),
                )
                return await self._require(db, memory_id, lock=False)
        except StorageError as exc:
            # A twin restored or stored by another server since the check above.
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise _twin_error(memory_id, "another memory") from None
            raise

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
                "UPDATE memories SET status = 'superseded', status_reason = %s, status_changed_at = %s, "
                "status_changed_by = %s WHERE id = %s",
                (reason, created_at, new.author, memory_id),
            )
            stored = await self._store_memory(db, new, created_at, supersedes=memory_id)
            if stored is None or not stored[1]:
                twin = stored[0].id if stored else "?"
                raise InvalidInput(
                    f"the revised content is already stored as memory {twin}; forget {memory_id} instead"
                )
            revised = stored[0]
            await db.execute("UPDATE memories SET superseded_by = %s WHERE id = %s", (revised.id, memory_id))
            return await self._require(db, memory_id, lock=False), revised

    async def purge_memory(self, memory_id: str) -> None:
        async with self._transaction() as db:
            memory = await self._require(db, memory_id)
            if memory.status != "forgotten":
                raise InvalidInput(
                    f"memory {memory_id} is {memory.status}; only forgotten memories can be purged "
                    "(forget it first)"
                )
            await db.execute(
                "UPDATE memories SET superseded_by = NULL WHERE superseded_by = %s", (memory_id,)
            )
            await db.execute("DELETE FROM memories WHERE id = %s", (memory_id,))

    # Sessions and counts -----------------------------------------------------------------------

    async def record_session(self, session_id: str, client: str, started_at: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO sessions (id, client, started_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
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
        # Both only grow: any new version or memory change moves the sum, whichever server wrote it.
        row = await self._fetchone(
            "SELECT (SELECT coalesce(sum(head), 0) FROM document_heads) "
            "+ (SELECT coalesce(max(seq), 0) FROM memory_changes)"
        )
        return int(row[0]) if row else 0

    async def document_heads(self) -> dict[str, int]:
        rows = await self._fetchall(
            "SELECT document, head FROM document_heads WHERE document = ANY(%s)", (list(DOCUMENTS),)
        )
        return {name: int(head) for name, head in rows}

    async def backup(self, target: Path) -> Backup:
        """A portable copy: the whole self as a SQLite file (what `migrate` writes), from one
        consistent snapshot of the database, checked before it takes the name asked for. The
        database's own backups (pg_dump, base backups) are the server operator's, beside this."""
        from soul_mcp.storage.sqlite import write_checked_backup
        from soul_mcp.transfer import migrate

        async def copy_into(partial: Path) -> None:
            await migrate(self._conninfo, str(partial))

        return await write_checked_backup(target, copy_into)

    # Tokens ------------------------------------------------------------------------------------

    async def add_token(
        self, name: str, token_hash: str, scopes: tuple[str, ...], created_at: str
    ) -> TokenInfo:
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO tokens (name, token_hash, scopes, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, token_hash, ",".join(scopes), created_at),
            )
            if await cursor.fetchone() is None:
                cursor = await db.execute("SELECT revoked_at FROM tokens WHERE name = %s", (name,))
                taken = await cursor.fetchone()
                state = "a revoked token" if taken and taken[0] else "a token"
                raise InvalidInput(
                    f"{state} named {name!r} already exists; names stay unique so that every author name "
                    "means one token: choose another name (token list shows them all)"
                )
        return TokenInfo(name=name, scopes=list(scopes), created_at=created_at)  # type: ignore[arg-type]

    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._fetchall(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, rowid")
        return [_token(row) for row in rows]

    async def find_token(self, token_hash: str) -> TokenInfo | None:
        row = await self._fetchone(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = %s", (token_hash,))
        return _token(row) if row else None

    async def revoke_token(self, name: str, revoked_at: str) -> TokenInfo:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE tokens SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL", (revoked_at, name)
            )
            cursor = await db.execute(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = %s", (name,))
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"no token is named {name!r}; token list shows the names")
        return _token(row)

    async def touch_token(self, name: str, used_at: str) -> None:
        async with self._transaction() as db:
            await db.execute("UPDATE tokens SET last_used_at = %s WHERE name = %s", (used_at, name))

    async def check_intact(self) -> None:
        # PostgreSQL checks its own pages; that the database answers and holds our schema is ours.
        row = await self._fetchone("SELECT version FROM soul_schema")
        if row is None or row[0] != SCHEMA_VERSION:
            raise StorageError(
                f"the database {self.shown} has no soul-mcp schema of version {SCHEMA_VERSION}"
            )

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
            # Grouped rows in SQLite's order (by the name, bytewise): ties of last_active_at keep it.
            key = sql.split()[1].rstrip(",")
            for client, count, last in await self._fetchall(f'{sql} ORDER BY {key} COLLATE "C"'):
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
        if not statuses:
            return [], 0
        where, params = memory_filters(statuses, kind, tags, since, until)
        condition = " AND ".join(where)
        rows = await self._fetchall(
            f"SELECT {MEMORY_COLUMNS}, count(*) OVER () FROM memories m WHERE {condition} "
            "ORDER BY m.occurred_at DESC, m.rowid DESC LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        if rows:
            total = int(rows[0][-1])
        else:
            (total,) = await self._fetchone(f"SELECT count(*) FROM memories m WHERE {condition}", params) or (
                0,
            )
        return [memory_from_row(row) for row in rows], int(total)

    async def diagnose(self) -> StoreDiagnosis:
        (version,) = await self._fetchone("SELECT version FROM soul_schema") or (0,)
        (sync,) = await self._fetchone("SHOW synchronous_commit") or ("?",)
        (active, indexed, totals) = await self._fetchone(
            "SELECT count(*), count(*) FILTER (WHERE tokens = 0 OR words <> ''::tsvector), "
            "(SELECT memories FROM text_totals) FROM memories WHERE status = 'active'"
        ) or (0, 0, 0)
        index_check = "ok" if totals == active else f"the text totals count {totals} memories, not {active}"
        return StoreDiagnosis(
            integrity=["ok"],
            schema_version=int(version),
            expected_schema_version=SCHEMA_VERSION,
            migrated_from=self.migrated_from,
            index_check=index_check,
            active_memories=int(active),
            indexed_memories=int(indexed),
            missing_from_index=int(active) - int(indexed),
            stale_in_index=0,  # the text index is partial: only active memories are in it
            journal_mode="postgresql",
            synchronous=f"synchronous_commit={sync}",
        )

    # Embeddings (EmbeddingStore) ---------------------------------------------------------------

    async def _windows(self, db: Any, rowids: list[int]) -> dict[int, tuple[str, str]]:
        """{rowid: (memory id, text to embed)} for those of `rowids` that are active (as
        SQLiteEmbeddings._windows: the previous memory joins when it shares the context)."""
        wanted = sorted({r + step for r in rowids for step in (-1, 0)})
        sql = f"SELECT {WINDOW_COLUMNS} FROM memories WHERE rowid = ANY(%s)"
        if db is None:
            found = await self._fetchall(sql, (wanted,))
        else:
            found = await (await db.execute(sql, (wanted,))).fetchall()
        return windows_of({int(row[0]): tuple(row) for row in found}, rowids)

    async def pending_embeddings(
        self, model: str, limit: int, above: int = 0
    ) -> tuple[list[EmbeddingJob], int]:
        rows = await self._fetchall(
            "SELECT (SELECT coalesce(max(rowid), 0) FROM memories), "
            "ARRAY(SELECT m.rowid FROM memories m WHERE m.rowid > %s AND m.status = 'active' "
            "AND NOT EXISTS (SELECT 1 FROM memory_embeddings e WHERE e.memory_rowid = m.rowid "
            "AND e.model = %s) ORDER BY m.rowid DESC LIMIT %s)",
            (above, model, limit),
        )
        newest, found = rows[0]
        order = [int(r) for r in found]
        return embedding_jobs(await self._windows(None, order), order), int(newest)

    async def stale_embeddings(
        self, model: str, after: int, limit: int
    ) -> tuple[list[EmbeddingJob], int | None]:
        rows = await self._fetchall(
            "SELECT rowid FROM memories WHERE status = 'active' AND rowid > %s ORDER BY rowid LIMIT %s",
            (after, limit),
        )
        order = [int(r) for (r,) in rows]
        if not order:
            return [], None
        stored = dict(
            await self._fetchall(
                "SELECT memory_rowid, text_hash FROM memory_embeddings WHERE model = %s "
                "AND memory_rowid = ANY(%s)",
                (model, order),
            )
        )
        jobs = [
            j
            for j in embedding_jobs(await self._windows(None, order), order)
            if stored.get(j.position) != j.text_hash
        ]
        return jobs, (order[-1] if len(order) == limit else None)

    async def save_embeddings(self, model: str, jobs: list[EmbeddingJob], vectors: Any) -> int:
        import numpy as np

        matrix = np.asarray(vectors, dtype="<f4")
        if matrix.ndim != 2 or matrix.shape[0] != len(jobs):
            raise ValueError(f"expected {len(jobs)} vectors, got an array of shape {matrix.shape}")
        async with self._transaction() as db:
            # Checked again inside the transaction, with the memories locked: a neighbour forgotten
            # meanwhile would otherwise leave its words in this memory's vector.
            positions = sorted({p + step for p in (j.position for j in jobs) for step in (-1, 0)})
            await db.execute("SELECT 1 FROM memories WHERE rowid = ANY(%s) FOR SHARE", (positions,))
            current = await self._windows(db, [job.position for job in jobs])
            rows = []
            for job, vector in zip(jobs, matrix, strict=True):
                now = current.get(job.position)
                if now is None or now[0] != job.memory_id or text_hash(now[1]) != job.text_hash:
                    continue
                rows.append((job.position, model, matrix.shape[1], job.text_hash, vector.tobytes()))
            async with db.cursor() as cursor:
                # Deleted and inserted, so the row gets a new id and caches see the change.
                await cursor.executemany(
                    "DELETE FROM memory_embeddings WHERE memory_rowid = %s AND model = %s",
                    [(r[0], r[1]) for r in rows],
                )
                await cursor.executemany(
                    "INSERT INTO memory_embeddings (memory_rowid, model, dims, text_hash, vector) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    rows,
                )
        return len(rows)

    async def embedding_counts(self, model: str) -> tuple[int, int]:
        rows = await self._fetchall(
            "SELECT (SELECT count(*) FROM memory_embeddings e JOIN memories m ON m.rowid = e.memory_rowid "
            "WHERE e.model = %s AND m.status = 'active'), (SELECT count(*) FROM memories WHERE status = 'active')",
            (model,),
        )
        return int(rows[0][0]), int(rows[0][1])

    async def rebuild_text_index(self) -> int:
        # Every memory's words made again by this tokenizer (inactive ones too: they may come back).
        count = 0
        async with self._transaction() as db:
            cursor = await db.execute("SELECT rowid, content, tags, kind, occurred_at, status FROM memories")
            rows = await cursor.fetchall()
            updates = []
            for rowid, content, tags, kind, occurred_at, status in rows:
                words, freqs, tokens = text_vector(
                    self._text_tokens(), content, tags, about_words(kind, occurred_at)
                )
                updates.append((words, freqs, tokens, rowid))
                count += status == "active"
            async with db.cursor() as cur:
                await cur.executemany(
                    "UPDATE memories SET words = %s::tsvector, freqs = %s::jsonb, tokens = %s WHERE rowid = %s",
                    updates,
                )
        return count


def _twin_error(memory_id: str, twin: str) -> InvalidInput:
    return InvalidInput(f"memory {memory_id} cannot be restored: {twin} holds the same content and is active")


def _cause(exc: BaseException) -> BaseException:
    """The connection error behind a pool's timeout, when it kept one."""
    return exc.__cause__ or exc.__context__ or exc
