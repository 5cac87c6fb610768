"""The PostgreSQL schema, as plain SQL, and its migrations.

`soul_schema.version` holds the number of migrations applied; each entry of MIGRATIONS moves the
schema one version forward. The store runs them at open inside one transaction holding
`pg_advisory_xact_lock(MIGRATION_LOCK)`, so that servers starting together migrate once: the
others wait for the lock and find the work done. Never edit a released migration: add one.

The tables mirror the SQLite ones (storage/schema.py) in meaning, not in encoding: ids, kinds and
times are kept as the text the store is given (times in the stored form sort as text, under the "C"
collation, as they do as seconds in SQLite). The full-text index is made in Python with SQLite's
own tokenizer (storage/postgres_recall.py) and kept as one tsvector per memory: content words
weighted A, tag words B, `about` words C, each at its place (phrases match on places); `freqs`
holds each word's weighted frequency (1 per occurrence in the content, 0.5 in tags or about), read
by key: ~7x faster than unnesting the tsvector's positions for every match (0.66 ms against
4.85 ms for a word in 900 of 20k memories), at ~1.5x the tsvector's size. `tokens` is the memory's
token count over the three columns.
"""

from __future__ import annotations

# An arbitrary 64-bit key for pg_advisory_xact_lock: "soul-mcp" in ASCII.
MIGRATION_LOCK = 0x736F756C2D6D6370
# The LISTEN/NOTIFY channel of migration 2's ping.
CHANGE_CHANNEL = "soul_mcp_changed"

MIGRATIONS: list[str] = [
    # 1: documents, memories with their text index, tags, change log, sessions, tokens, embeddings.
    """
    CREATE TABLE document_heads (
        document text PRIMARY KEY,
        head     integer NOT NULL
    );
    CREATE TABLE document_versions (
        document      text    NOT NULL,
        version       integer NOT NULL,
        content       text    NOT NULL,
        author        text    NOT NULL,
        reason        text,
        created_at    text    COLLATE "C" NOT NULL,
        session_id    text,
        restored_from integer,
        PRIMARY KEY (document, version)
    );

    CREATE TABLE memories (
        rowid             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id                text    NOT NULL UNIQUE,
        content           text    NOT NULL,
        content_key       bytea   NOT NULL,
        kind              text    NOT NULL,
        tags              text    NOT NULL DEFAULT '[]',
        importance        integer NOT NULL CHECK (importance BETWEEN 1 AND 5),
        occurred_at       text    COLLATE "C" NOT NULL,
        created_at        text    COLLATE "C" NOT NULL,
        author            text    NOT NULL,
        session_id        text,
        status            text    NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'forgotten', 'superseded')),
        status_reason     text,
        status_changed_at text,
        supersedes        text,
        superseded_by     text,
        words             tsvector NOT NULL,
        freqs             jsonb   NOT NULL,
        tokens            integer NOT NULL
    );
    -- Deduplication: one active memory per normalised content (INSERT ... ON CONFLICT).
    CREATE UNIQUE INDEX memories_active_content ON memories (content_key) WHERE status = 'active';
    CREATE INDEX memories_by_time ON memories (occurred_at, rowid) WHERE status = 'active';
    CREATE INDEX memories_by_importance ON memories (importance, occurred_at, rowid) WHERE status = 'active';
    CREATE INDEX memories_inactive_by_time ON memories (status, occurred_at) WHERE status <> 'active';
    -- fastupdate off: new entries would otherwise wait in a pending list that every lookup reads
    -- through until a vacuum merges it (a lookup of a rare word read ~270 pages at 20k memories).
    CREATE INDEX memories_words ON memories USING gin (words) WITH (fastupdate = off)
        WHERE status = 'active';

    CREATE TABLE memory_tags (
        tag          text   COLLATE "C" NOT NULL,
        memory_rowid bigint NOT NULL REFERENCES memories (rowid) ON DELETE CASCADE,
        PRIMARY KEY (tag, memory_rowid)
    );
    CREATE INDEX memory_tags_by_memory ON memory_tags (memory_rowid);

    -- The active memories and their tokens, which BM25 needs (N and the average length) at every
    -- word lookup: one row kept by the trigger below rather than counted each time.
    CREATE TABLE text_totals (
        one      boolean PRIMARY KEY DEFAULT true CHECK (one),
        memories bigint  NOT NULL,
        tokens   bigint  NOT NULL
    );
    INSERT INTO text_totals VALUES (true, 0, 0);

    -- The memories whose place in recall may have changed (as SQLite's memory_changes).
    CREATE TABLE memory_changes (
        seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        memory_rowid bigint NOT NULL
    );

    CREATE TABLE memory_embeddings (
        id           bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        memory_rowid bigint  NOT NULL REFERENCES memories (rowid) ON DELETE CASCADE,
        model        text    NOT NULL,
        dims         integer NOT NULL,
        text_hash    text    NOT NULL,
        vector       bytea   NOT NULL,
        UNIQUE (memory_rowid, model)
    );
    CREATE INDEX memory_embeddings_by_model ON memory_embeddings (model, id);

    CREATE FUNCTION soul_memories_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO memory_changes (memory_rowid) VALUES (NEW.rowid);
            IF NEW.status = 'active' THEN
                UPDATE text_totals SET memories = memories + 1, tokens = tokens + NEW.tokens;
            END IF;
            RETURN NEW;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO memory_changes (memory_rowid) VALUES (OLD.rowid);
            IF OLD.status = 'active' THEN
                UPDATE text_totals SET memories = memories - 1, tokens = tokens - OLD.tokens;
            END IF;
            RETURN OLD;
        END IF;
        -- An update.
        IF OLD.status <> NEW.status THEN
            INSERT INTO memory_changes (memory_rowid) VALUES (NEW.rowid);
            -- A memory's embedding holds its neighbours' words (storage/sqlite_embeddings.py).
            DELETE FROM memory_embeddings WHERE memory_rowid BETWEEN NEW.rowid - 1 AND NEW.rowid + 1;
        END IF;
        IF OLD.status <> NEW.status OR OLD.tokens <> NEW.tokens THEN
            UPDATE text_totals SET
                memories = memories - (OLD.status = 'active')::int + (NEW.status = 'active')::int,
                tokens = tokens - CASE WHEN OLD.status = 'active' THEN OLD.tokens ELSE 0 END
                                + CASE WHEN NEW.status = 'active' THEN NEW.tokens ELSE 0 END;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER memories_changed AFTER INSERT OR DELETE OR UPDATE OF status, tokens ON memories
    FOR EACH ROW EXECUTE FUNCTION soul_memories_changed();

    CREATE TABLE sessions (
        id         text PRIMARY KEY,
        client     text NOT NULL,
        started_at text COLLATE "C" NOT NULL
    );

    CREATE TABLE tokens (
        rowid        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name         text NOT NULL UNIQUE,
        token_hash   text NOT NULL UNIQUE,
        scopes       text NOT NULL,
        created_at   text COLLATE "C" NOT NULL,
        last_used_at text,
        revoked_at   text
    );
    """,
    # 2: a "changed" ping for the other servers (storage/postgres_notify.py), sent at commit by any
    # transaction that made a document version or changed a memory. The ping carries nothing: the
    # listeners read the facts from the tables. One per statement, and PostgreSQL folds identical
    # pings of one transaction into one.
    f"""
    CREATE FUNCTION soul_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANGE_CHANNEL}', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER document_heads_notify AFTER INSERT OR UPDATE ON document_heads
    FOR EACH STATEMENT EXECUTE FUNCTION soul_notify_changed();
    CREATE TRIGGER memory_changes_notify AFTER INSERT ON memory_changes
    FOR EACH STATEMENT EXECUTE FUNCTION soul_notify_changed();
    """,
    # 3: the totals in 16 slots, each connection adding to its own (pg_backend_pid() % 16) and the
    # view text_totals summing them on read. With one row, every transaction that stored a memory
    # held that row's lock until its commit, so concurrent remembers through several servers waited
    # for each other.
    """
    CREATE TABLE text_total_slots (
        slot     integer PRIMARY KEY CHECK (slot BETWEEN 0 AND 15),
        memories bigint  NOT NULL,
        tokens   bigint  NOT NULL
    );
    INSERT INTO text_total_slots SELECT 0, memories, tokens FROM text_totals;
    INSERT INTO text_total_slots SELECT s, 0, 0 FROM generate_series(1, 15) AS s;
    DROP TABLE text_totals;
    CREATE VIEW text_totals AS
        SELECT sum(memories)::bigint AS memories, sum(tokens)::bigint AS tokens FROM text_total_slots;

    CREATE OR REPLACE FUNCTION soul_memories_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO memory_changes (memory_rowid) VALUES (NEW.rowid);
            IF NEW.status = 'active' THEN
                UPDATE text_total_slots SET memories = memories + 1, tokens = tokens + NEW.tokens
                WHERE slot = pg_backend_pid() % 16;
            END IF;
            RETURN NEW;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO memory_changes (memory_rowid) VALUES (OLD.rowid);
            IF OLD.status = 'active' THEN
                UPDATE text_total_slots SET memories = memories - 1, tokens = tokens - OLD.tokens
                WHERE slot = pg_backend_pid() % 16;
            END IF;
            RETURN OLD;
        END IF;
        -- An update.
        IF OLD.status <> NEW.status THEN
            INSERT INTO memory_changes (memory_rowid) VALUES (NEW.rowid);
            -- A memory's embedding holds its neighbours' words (storage/sqlite_embeddings.py).
            DELETE FROM memory_embeddings WHERE memory_rowid BETWEEN NEW.rowid - 1 AND NEW.rowid + 1;
        END IF;
        IF OLD.status <> NEW.status OR OLD.tokens <> NEW.tokens THEN
            UPDATE text_total_slots SET
                memories = memories - (OLD.status = 'active')::int + (NEW.status = 'active')::int,
                tokens = tokens - CASE WHEN OLD.status = 'active' THEN OLD.tokens ELSE 0 END
                                + CASE WHEN NEW.status = 'active' THEN NEW.tokens ELSE 0 END
            WHERE slot = pg_backend_pid() % 16;
        END IF;
        RETURN NEW;
    END $$;
    """,
    # 4: the OAuth authorization server of `serve --http --oauth`, as SQLite's migration 8.
    """
    CREATE TABLE oauth_clients (
        client_id    text PRIMARY KEY,
        client_name  text NOT NULL,
        registration text NOT NULL,
        created_at   text COLLATE "C" NOT NULL
    );
    CREATE TABLE oauth_codes (
        code_hash             text PRIMARY KEY,
        client_id             text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
        scopes                text NOT NULL,
        redirect_uri          text NOT NULL,
        redirect_uri_explicit integer NOT NULL,
        code_challenge        text NOT NULL,
        resource              text,
        expires_at            bigint NOT NULL
    );
    CREATE TABLE oauth_grants (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        client_id    text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
        client_name  text NOT NULL,
        scopes       text NOT NULL,
        resource     text,
        created_at   text COLLATE "C" NOT NULL,
        last_used_at text,
        revoked_at   text
    );
    CREATE TABLE oauth_tokens (
        token_hash text PRIMARY KEY,
        grant_id   bigint NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
        kind       text NOT NULL CHECK (kind IN ('access', 'refresh')),
        expires_at bigint NOT NULL,
        used_at    text
    );
    CREATE INDEX oauth_tokens_by_grant ON oauth_tokens (grant_id);
    CREATE TABLE oauth_owner (
        id          integer PRIMARY KEY CHECK (id = 1),
        secret_hash text NOT NULL,
        set_at      text NOT NULL
    );
    """,
    # 5: who forgot, restored or revised a memory, as SQLite's migration 9.
    """
    ALTER TABLE memories ADD COLUMN IF NOT EXISTS status_changed_by text;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
