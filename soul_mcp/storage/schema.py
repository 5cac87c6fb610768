"""The SQLite schema, as plain SQL, and its migrations.

`PRAGMA user_version` holds the number of migrations applied. Each entry of MIGRATIONS moves the
schema one version forward; a new database runs them all. Never edit a released migration: add one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

# The stored form of a time (core/dates.to_stored), as SQLite's strftime writes it.
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _unix(column: str) -> str:
    """SQL: a stored time as unix seconds, or the text itself when it is not in the stored form."""
    return (
        f"CASE WHEN strftime('{ISO_FORMAT}', {column}) = {column} "
        f"THEN CAST(strftime('%s', {column}) AS INTEGER) ELSE {column} END"
    )


def stored_time(column: str) -> str:
    """SQL: the stored text of a time kept as unix seconds (or kept as text)."""
    return (
        f"CASE WHEN typeof({column}) = 'integer' "
        f"THEN strftime('{ISO_FORMAT}', {column}, 'unixepoch') ELSE {column} END"
    )


def _names(value: str, names: list[str], first: int, width: int) -> str:
    """SQL: the name of a number that `value` gives as text ('05' -> 'May')."""
    whens = " ".join(f"WHEN '{n:0{width}d}' THEN '{name}'" for n, name in enumerate(names, first))
    return f"CASE {value} {whens} END"


# The words of storage/sqlite.about_text in SQL: 'event Monday 8 May 2023' (strftime's %w counts
# from Sunday, 0).
_WEEKDAY = _names(
    "strftime('%w', substr(occurred_at, 1, 10))",
    "Sunday Monday Tuesday Wednesday Thursday Friday Saturday".split(),
    0,
    1,
)
_MONTH = _names(
    "substr(occurred_at, 6, 2)",
    "January February March April May June July August September October November December".split(),
    1,
    2,
)
_ABOUT = (
    f"kind || ' ' || {_WEEKDAY} || ' ' || CAST(substr(occurred_at, 9, 2) AS INTEGER) || ' ' || "
    f"{_MONTH} || ' ' || CAST(substr(occurred_at, 1, 4) AS INTEGER)"
)

# A kind's number in kind_code (schema migration 7). Never reorder: a file's rows keep the numbers.
# A kind missing here is stored as its text.
KIND_CODES = ("fact", "event", "preference", "lesson", "reflection", "person", "other")
_KIND = (
    "CASE kind_code "
    + " ".join(f"WHEN {n} THEN '{k}'" for n, k in enumerate(KIND_CODES))
    + " ELSE kind_code END"
)
_KIND_CODE = (
    "CASE kind " + " ".join(f"WHEN '{k}' THEN {n}" for n, k in enumerate(KIND_CODES)) + " ELSE kind END"
)
_ID = "CASE WHEN typeof(id_key) = 'blob' THEN 'm_' || lower(hex(id_key)) ELSE id_key END"

MIGRATIONS: list[str] = [
    # 1: documents, memories with their full-text index, tags, sessions.
    """
    CREATE TABLE document_versions (
        document      TEXT    NOT NULL,
        version       INTEGER NOT NULL,
        content       TEXT    NOT NULL,
        author        TEXT    NOT NULL,
        reason        TEXT,
        created_at    TEXT    NOT NULL,
        session_id    TEXT,
        restored_from INTEGER,
        PRIMARY KEY (document, version)
    );

    CREATE TABLE memories (
        rowid             INTEGER PRIMARY KEY,
        id                TEXT    NOT NULL UNIQUE,
        content           TEXT    NOT NULL,
        content_key       TEXT    NOT NULL,
        kind              TEXT    NOT NULL,
        tags              TEXT    NOT NULL DEFAULT '[]',
        importance        INTEGER NOT NULL CHECK (importance BETWEEN 1 AND 5),
        occurred_at       TEXT    NOT NULL,
        -- Words for the index that the content may lack: the kind and the date in words
        -- ("event, Monday 8 May 2023"), so "what happened in May" can match.
        about             TEXT    NOT NULL DEFAULT '',
        created_at        TEXT    NOT NULL,
        author            TEXT    NOT NULL,
        session_id        TEXT,
        status            TEXT    NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'forgotten', 'superseded')),
        status_reason     TEXT,
        status_changed_at TEXT,
        supersedes        TEXT,
        superseded_by     TEXT
    );
    -- Deduplication: one active memory per normalised content.
    CREATE UNIQUE INDEX memories_active_content ON memories (content_key) WHERE status = 'active';
    CREATE INDEX memories_by_time ON memories (status, occurred_at);
    CREATE INDEX memories_by_importance ON memories (status, importance, occurred_at);

    -- Tags are kept as JSON on the memory (for reading) and here (for filtering).
    CREATE TABLE memory_tags (
        tag          TEXT    NOT NULL,
        memory_rowid INTEGER NOT NULL REFERENCES memories (rowid) ON DELETE CASCADE,
        PRIMARY KEY (tag, memory_rowid)
    ) WITHOUT ROWID;
    CREATE INDEX memory_tags_by_memory ON memory_tags (memory_rowid);

    -- The full-text index holds active memories only, so recall never has to skip forgotten or
    -- superseded ones. Porter stemming matches "running" to "run"; diacritics are folded.
    CREATE VIRTUAL TABLE memories_fts USING fts5 (
        content, tags, about,
        content = 'memories', content_rowid = 'rowid',
        tokenize = 'porter unicode61 remove_diacritics 2'
    );

    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories WHEN new.status = 'active' BEGIN
        INSERT INTO memories_fts (rowid, content, tags, about)
        VALUES (new.rowid, new.content, new.tags, new.about);
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories WHEN old.status = 'active' BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content, tags, about)
        VALUES ('delete', old.rowid, old.content, old.tags, old.about);
    END;
    CREATE TRIGGER memories_fts_status AFTER UPDATE OF status ON memories
    WHEN old.status <> new.status BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content, tags, about)
        SELECT 'delete', old.rowid, old.content, old.tags, old.about WHERE old.status = 'active';
        INSERT INTO memories_fts (rowid, content, tags, about)
        SELECT new.rowid, new.content, new.tags, new.about WHERE new.status = 'active';
    END;

    CREATE TABLE sessions (
        id         TEXT PRIMARY KEY,
        client     TEXT NOT NULL,
        started_at TEXT NOT NULL
    );
    """,
    # 2: bearer tokens for the HTTP server. Only a SHA-256 of each token is kept: the token is 32
    # random bytes, so the hash cannot be reversed by guessing (a slow password hash protects
    # guessable secrets and would cost every request), and it can be looked up by equality.
    # Names stay unique even after a revoke, so an author name in history means one token.
    """
    CREATE TABLE tokens (
        name         TEXT NOT NULL UNIQUE,
        token_hash   TEXT NOT NULL UNIQUE,
        scopes       TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at   TEXT
    );
    """,
    # 3: embeddings for hybrid recall (the optional `semantic` extra, or an embeddings endpoint).
    # Created whatever is installed, so one file moves between installs; without an embedder it
    # stays empty. Each row embeds a memory with its context (see storage/sqlite_embeddings.py); a row
    # is kept per model, so switching models never mixes vectors of different spaces.
    # `id` only grows (AUTOINCREMENT never reuses one), so a process holding the vectors in memory
    # loads just the rows above the last id it saw.
    """
    CREATE TABLE memory_embeddings (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        memory_rowid INTEGER NOT NULL REFERENCES memories (rowid) ON DELETE CASCADE,
        model        TEXT    NOT NULL,
        dims         INTEGER NOT NULL,
        text_hash    TEXT    NOT NULL,  -- of the text that was embedded: stale when it changes
        vector       BLOB    NOT NULL   -- dims float32, little-endian, unit length
    );
    CREATE UNIQUE INDEX memory_embeddings_by_memory ON memory_embeddings (memory_rowid, model);

    -- A memory's embedding holds its active neighbours' words; when one of them leaves recall (or
    -- comes back), the neighbours' embeddings are dropped so that none keeps a forgotten memory's
    -- words; the embedder computes them again.
    CREATE TRIGGER memory_embeddings_status AFTER UPDATE OF status ON memories
    WHEN old.status <> new.status BEGIN
        DELETE FROM memory_embeddings WHERE memory_rowid BETWEEN new.rowid - 1 AND new.rowid + 1;
    END;
    """,
    # 4: recall filtered by date or kind tests each full-text match's occurred_at and kind. Read from
    # the table, that is a seek into the memories' full rows, ~2 µs a match at 100k memories; this
    # index, keyed by rowid like the table but holding only those two columns, answers in ~0.3 µs.
    """
    CREATE INDEX memories_when_kind ON memories (rowid, occurred_at, kind);
    """,
    # 5: a log of the memories whose place in recall may have changed: stored, forgotten, restored,
    # superseded or purged. Each process keeps what recall ranks in memory (recall/index.py)
    # and reads only the entries above the last sequence number it applied. AUTOINCREMENT: a
    # sequence number is never given twice, even if the log is ever trimmed.
    """
    CREATE TABLE memory_changes (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        memory_rowid INTEGER NOT NULL
    );
    CREATE TRIGGER memory_changes_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memory_changes (memory_rowid) VALUES (new.rowid);
    END;
    CREATE TRIGGER memory_changes_status AFTER UPDATE OF status ON memories
    WHEN old.status <> new.status BEGIN
        INSERT INTO memory_changes (memory_rowid) VALUES (new.rowid);
    END;
    CREATE TRIGGER memory_changes_delete AFTER DELETE ON memories BEGIN
        INSERT INTO memory_changes (memory_rowid) VALUES (old.rowid);
    END;

    -- How many memories hold each word of the full-text index (a view of it, no storage of its
    -- own): recall fetches the commonest words ahead.
    CREATE VIRTUAL TABLE memories_vocab USING fts5vocab (memories_fts, row);
    """,
    # 6: a leaner file (bench/db_size.py measures it).
    # - The dedup key was a second full copy of each text, and its unique index a third: it becomes
    #   a digest of that text (content_digest, below), still under the partial unique index, so
    #   dedup stays a unique-index conflict. The column keeps its name; its values are now BLOBs.
    # - memories_when_kind served recall's date and kind filters, which now read the in-process
    #   columns (recall/index.py); no query plan uses it.
    # - memory_tags_by_memory served only the cascade when a memory is purged (rare, by hand); that
    #   delete now scans the tag table, a few ms at 100k memories.
    # No VACUUM here (it cannot run inside the migration's transaction): the freed pages are reused
    # by the next writes.
    """
    DROP INDEX memories_active_content;
    UPDATE memories SET content_key = soul_content_digest(content_key);
    CREATE UNIQUE INDEX memories_active_content ON memories (content_key) WHERE status = 'active';
    DROP INDEX memories_when_kind;
    DROP INDEX memory_tags_by_memory;
    """,
    # 7: a leaner memories table, rebuilt in place (bench/db_size.py measures it; bench/README.md).
    # - Ids and kinds are stored compactly: id_key holds an id's 6 bytes ('m_' and 12 hex digits),
    #   kind_code a kind's number in KIND_CODES; id and kind are VIRTUAL columns giving the same
    #   text as before. An id or kind of another form is kept as its text. The unique index on ids
    #   is on id_key: the store looks memories up by id_key.
    # - Times are stored as unix seconds: occurred_unix, and created_unix only when it differs from
    #   occurred_at (NULL otherwise, most often). occurred_at and created_at are VIRTUAL columns that
    #   give the same ISO text as before, so every reader, the sqlite3 shell included, sees the same
    #   values. A value that is not in the stored form (core/dates.to_stored) stays text as it was.
    # - about is a VIRTUAL column computed from kind and occurred_at in plain SQL, the same words
    #   as before (storage/sqlite.about_text), so the full-text index keeps every token.
    # - The listing indexes hold active memories only, without the status; a small one serves
    #   the listings of forgotten and superseded memories.
    # The rowids stay (the full-text index, tags, embeddings and the recall snapshot key on them).
    # The copy goes into a table without triggers, so memory_changes gets no entry; the triggers
    # go with the old table and are created again. The store turns foreign keys off around this
    # migration (they cannot change inside a transaction): with them on, dropping the old table
    # would delete every tag and embedding row by cascade.
    f"""
    CREATE TABLE memories_v7 (
        rowid             INTEGER PRIMARY KEY,
        id_key            BLOB    NOT NULL,
        content           TEXT    NOT NULL,
        content_key       BLOB    NOT NULL,
        kind_code         INTEGER NOT NULL,
        tags              TEXT    NOT NULL DEFAULT '[]',
        importance        INTEGER NOT NULL CHECK (importance BETWEEN 1 AND 5),
        occurred_unix     INTEGER NOT NULL,
        created_unix      INTEGER,
        author            TEXT    NOT NULL,
        session_id        TEXT,
        status            TEXT    NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'forgotten', 'superseded')),
        status_reason     TEXT,
        status_changed_at TEXT,
        supersedes        TEXT,
        superseded_by     TEXT,
        id                TEXT    GENERATED ALWAYS AS ({_ID}) VIRTUAL,
        kind              TEXT    GENERATED ALWAYS AS ({_KIND}) VIRTUAL,
        occurred_at       TEXT    GENERATED ALWAYS AS ({stored_time("occurred_unix")}) VIRTUAL,
        created_at        TEXT    GENERATED ALWAYS AS
                          (CASE WHEN created_unix IS NULL THEN occurred_at ELSE {stored_time("created_unix")} END) VIRTUAL,
        about             TEXT    GENERATED ALWAYS AS ({_ABOUT}) VIRTUAL
    );
    INSERT INTO memories_v7 (
        rowid, id_key, content, content_key, kind_code, tags, importance, occurred_unix, created_unix,
        author, session_id, status, status_reason, status_changed_at, supersedes, superseded_by
    )
    SELECT
        rowid, soul_memory_id_key(id), content, content_key, {_KIND_CODE}, tags, importance,
        {_unix("occurred_at")},
        CASE WHEN created_at = occurred_at THEN NULL ELSE {_unix("created_at")} END, author,
        session_id, status, status_reason, status_changed_at, supersedes, superseded_by
    FROM memories ORDER BY rowid;
    DROP TABLE memories;
    ALTER TABLE memories_v7 RENAME TO memories;

    CREATE UNIQUE INDEX memories_by_id ON memories (id_key);
    CREATE UNIQUE INDEX memories_active_content ON memories (content_key) WHERE status = 'active';
    CREATE INDEX memories_by_time ON memories (occurred_unix) WHERE status = 'active';
    CREATE INDEX memories_by_importance ON memories (importance, occurred_unix) WHERE status = 'active';
    CREATE INDEX memories_inactive_by_time ON memories (status, occurred_unix) WHERE status <> 'active';

    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories WHEN new.status = 'active' BEGIN
        INSERT INTO memories_fts (rowid, content, tags, about)
        VALUES (new.rowid, new.content, new.tags, new.about);
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories WHEN old.status = 'active' BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content, tags, about)
        VALUES ('delete', old.rowid, old.content, old.tags, old.about);
    END;
    CREATE TRIGGER memories_fts_status AFTER UPDATE OF status ON memories
    WHEN old.status <> new.status BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content, tags, about)
        SELECT 'delete', old.rowid, old.content, old.tags, old.about WHERE old.status = 'active';
        INSERT INTO memories_fts (rowid, content, tags, about)
        SELECT new.rowid, new.content, new.tags, new.about WHERE new.status = 'active';
    END;
    CREATE TRIGGER memory_embeddings_status AFTER UPDATE OF status ON memories
    WHEN old.status <> new.status BEGIN
        DELETE FROM memory_embeddings WHERE memory_rowid BETWEEN new.rowid - 1 AND new.rowid + 1;
    END;
    CREATE TRIGGER memory_changes_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memory_changes (memory_rowid) VALUES (new.rowid);
    END;
    CREATE TRIGGER memory_changes_status AFTER UPDATE OF status ON memories
    WHEN old.status <> new.status BEGIN
        INSERT INTO memory_changes (memory_rowid) VALUES (new.rowid);
    END;
    CREATE TRIGGER memory_changes_delete AFTER DELETE ON memories BEGIN
        INSERT INTO memory_changes (memory_rowid) VALUES (old.rowid);
    END;
    """,
    # 8: the OAuth authorization server of `serve --http --oauth` (storage/oauth_rows.py): the
    # clients that registered, the codes and grants the owner approved, their tokens (SHA-256
    # hashes only) and the owner's passphrase (a scrypt hash). Times to expire are unix seconds.
    """
    CREATE TABLE oauth_clients (
        client_id    TEXT PRIMARY KEY,
        client_name  TEXT NOT NULL,
        registration TEXT NOT NULL,
        created_at   TEXT NOT NULL
    );
    CREATE TABLE oauth_codes (
        code_hash             TEXT PRIMARY KEY,
        client_id             TEXT NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
        scopes                TEXT NOT NULL,
        redirect_uri          TEXT NOT NULL,
        redirect_uri_explicit INTEGER NOT NULL,
        code_challenge        TEXT NOT NULL,
        resource              TEXT,
        expires_at            INTEGER NOT NULL
    );
    CREATE TABLE oauth_grants (
        id           INTEGER PRIMARY KEY,
        client_id    TEXT NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
        client_name  TEXT NOT NULL,
        scopes       TEXT NOT NULL,
        resource     TEXT,
        created_at   TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at   TEXT
    );
    CREATE TABLE oauth_tokens (
        token_hash TEXT PRIMARY KEY,
        grant_id   INTEGER NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
        kind       TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        expires_at INTEGER NOT NULL,
        used_at    TEXT
    );
    CREATE INDEX oauth_tokens_by_grant ON oauth_tokens (grant_id);
    CREATE TABLE oauth_owner (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        secret_hash TEXT NOT NULL,
        set_at      TEXT NOT NULL
    );
    """,
    # 9: who forgot, restored or revised a memory (the owner's web page shows it as activity).
    """
    ALTER TABLE memories ADD COLUMN status_changed_by TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

DIGEST_BYTES = 16


def content_digest(key: str) -> bytes:
    """The stored dedup key: the first 16 bytes of the SHA-256 of a normalised text
    (core/text.content_key). 128 bits: two different texts sharing one is beyond reach."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:DIGEST_BYTES]


_MEMORY_ID = re.compile(r"m_[0-9a-f]{12}")


def memory_id_key(memory_id: str) -> bytes | str:
    """What the memories table keeps of an id (schema migration 7): the 6 bytes of 'm_' and 12
    lowercase hex digits (storage/sqlite.new_memory_id), or any other text as it is."""
    return bytes.fromhex(memory_id[2:]) if _MEMORY_ID.fullmatch(memory_id) else memory_id


def kind_code(kind: str) -> int | str:
    """What the memories table keeps of a kind: its number in KIND_CODES, or its text."""
    return KIND_CODES.index(kind) if kind in KIND_CODES else kind


# Functions the migrations call from SQL, registered on the connection that migrates.
SQL_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "soul_content_digest": content_digest,
    "soul_memory_id_key": memory_id_key,
}


def split_statements(script: str) -> list[str]:
    """Split a script into complete statements (triggers contain ';', so a plain split is wrong)."""
    import sqlite3

    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        statements.append(current.strip())
    return statements
