"""The SQLite schema, as plain SQL, and its migrations.

`PRAGMA user_version` holds the number of migrations applied. Each entry of MIGRATIONS moves the
schema one version forward; a new database runs them all. Never edit a released migration: add one.
"""

from __future__ import annotations

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
]

SCHEMA_VERSION = len(MIGRATIONS)


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
