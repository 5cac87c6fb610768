"""`soul-mcp migrate`: a whole self copied between stores, through the real CLI on real stores.

SQLite -> SQLite runs everywhere; SQLite -> PostgreSQL -> SQLite runs on the throwaway cluster of
tests/postgres_cluster.py (skipped with a hint where PostgreSQL is missing, a failure under CI).
The round trip must give back the same rows through the store API, the same ranking, and an
`export` folder byte-identical to the original's."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_cli import invoke

from soul_mcp.core.text import content_key
from soul_mcp.models import NewMemory
from soul_mcp.recall import Recall, SearchQuery
from soul_mcp.storage.sqlite import SQLiteStore
from soul_mcp.transfer import CountMismatch, count_mismatches, open_rows, transfer

NOW = "2024-05-08T10:00:00Z"
MODEL = "test-model"
QUERIES = ("tea", "maya garden", "berlin", "what happened in May", "meeting")


def new(content: str, tags: list[str], kind: str = "fact", day: int = 1, session: str = "s1") -> NewMemory:
    return NewMemory(
        content=content,
        content_key=content_key(content),
        kind=kind,  # type: ignore[arg-type]
        tags=tags,
        importance=1 + day % 5,
        occurred_at=f"2024-05-{day:02d}T09:00:00Z",
        author="claude-desktop" if day % 2 else "cli:ana",
        session_id=session,
    )


async def make_self(path: Path) -> None:
    """A self with something of every kind: versions (one restored), memories active, forgotten,
    superseded and one purged (a rowid gap), tags, sessions, tokens (one revoked, one used) and
    embeddings."""
    import numpy as np

    store = await SQLiteStore.open(path)
    try:
        for document in ("soul", "intent", "north_star"):
            for n in range(3):
                await store.append_version(
                    document, f"# {document}\nversion {n + 1}", "cli:ana", f"edit {n + 1}", NOW, "s1"
                )
        await store.append_version("soul", "# soul\nversion 1", "cli:ana", "back to 1", NOW, "s2", 1)
        await store.record_session("s1", "claude-desktop", "2024-05-01T08:00:00Z")
        await store.record_session("s2", "cursor", "2024-05-02T08:00:00Z")
        texts = [
            ("Maya likes green tea in the morning", ["tea", "maya"], "preference"),
            ("Maya's garden has tomatoes", ["maya", "garden"], "fact"),
            ("Meeting with Jonas in Berlin about the roadmap", ["work", "berlin"], "event"),
            ("Tea with Jonas after the meeting", ["tea", "work"], "event"),
            ("A password was written on a sticky note", ["oops"], "fact"),
            ("Berlin office moves to Kreuzberg", ["work", "berlin"], "fact"),
            ("Lesson: ask before booking the room", ["work"], "lesson"),
            ("Maya plants basil in the garden in May", ["maya", "garden"], "event"),
        ]
        ids = []
        for day, (text, tags, kind) in enumerate(texts, 1):
            memory, _ = await store.add_memory(new(text, tags, kind, day, f"s{1 + day % 2}"), NOW)
            ids.append(memory.id)
        await store.set_memory_status(ids[4], "forgotten", "a secret", NOW, ("active",))
        await store.purge_memory(ids[4])  # rowid 5 is gone: a gap
        await store.set_memory_status(ids[6], "forgotten", "not true", NOW, ("active",))
        await store.revise_memory(
            ids[5], new("Berlin office moved to Kreuzberg in June", ["work", "berlin"], "fact", 9), "moved",
            "2024-06-01T00:00:00Z",
        )  # fmt: skip
        await store.add_token("laptop", "a" * 64, ("read", "write"), NOW)
        await store.add_token("old-phone", "b" * 64, ("read",), NOW)
        await store.revoke_token("old-phone", "2024-05-09T00:00:00Z")
        await store.touch_token("laptop", "2024-05-10T00:00:00Z")
        jobs, _ = await store.pending_embeddings(MODEL, 100)
        vectors = np.random.default_rng(7).standard_normal((len(jobs), 8)).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        assert await store.save_embeddings(MODEL, jobs, vectors) == len(jobs) > 3
    finally:
        await store.close()


async def everything(store: Any) -> dict[str, Any]:
    """What the store API gives of a self: every version, memory, token, count and embedding."""
    memories, total = await store.list_memories(
        ("active", "forgotten", "superseded"), None, (), None, None, 0, 100
    )
    return {
        "versions": {
            doc: [v.model_dump() for v in await store.list_versions(doc, 100, None)]
            for doc in ("soul", "identity", "user", "intent", "north_star")
        },
        "heads": await store.document_heads(),
        "memories": [m.model_dump() for m in memories],
        "total": total,
        "tagged": {tag: await store.tagged_rowids(tag, 0, 100) for tag in ("tea", "maya", "work", "oops")},
        "rowids": await store.rowids_of([m.id for m in memories]),
        "tokens": [t.model_dump() for t in await store.list_tokens()],
        "found_token": getattr(await store.find_token("a" * 64), "name", None),
        "stats": (await store.stats()).model_dump(),
        "clients": [c.model_dump() for c in await store.client_activity()],
        "embeddings": await store.embeddings_after(MODEL, 0, 100),
        "embedding_counts": await store.embedding_counts(MODEL),
    }


async def rankings(store: Any) -> list[list[tuple[str, float, str | None]]]:
    engine = Recall(store)
    try:
        found = []
        for terms in QUERIES:
            for extra in ({}, {"tags": ("work",)}, {"kind": "event"}):
                hits = await engine.search(SearchQuery(terms=tuple(terms.split()), limit=20, **extra))  # type: ignore[arg-type]
                found.append([(h.memory.id, round(h.score, 9), h.context_of) for h in hits])
        return found
    finally:
        await engine.close()


async def inspect(location: str) -> tuple[dict[str, Any], list[Any]]:
    from soul_mcp.config import Settings
    from soul_mcp.opening import open_store

    store = await open_store(Settings.load(location))
    try:
        return await everything(store), await rankings(store)
    finally:
        await store.close()


def run(function: Callable[..., Any], *args: Any) -> Any:
    return anyio.run(function, *args)


def migrated(source: str | Path, target: str | Path, *extra: str) -> dict[str, Any]:
    done = invoke("migrate", "--from", str(source), "--to", str(target), "--json", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def exported(db: Path, folder: Path) -> dict[str, bytes]:
    done = invoke("export", str(folder), "--db", str(db))
    assert done.returncode == 0, done.stderr
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def original(tmp_path: Path) -> Path:
    path = tmp_path / "original.db"
    run(make_self, path)
    return path


EXPECTED_COPIED = {"document_versions": 10, "sessions": 2, "tokens": 2, "memories": 8}


def test_sqlite_to_sqlite_copies_the_whole_self(original: Path, tmp_path: Path) -> None:
    copy = tmp_path / "deeper" / "copy.db"
    before = original.read_bytes()
    result = migrated(original, copy)
    assert {k: result["copied"][k] for k in EXPECTED_COPIED} == EXPECTED_COPIED
    assert result["copied"]["memory_embeddings"] > 3
    assert result["derived"] == {"memory_tags": 15, "active_memories": 6, "indexed_memories": 6}
    assert original.read_bytes() == before  # the source is only read
    assert run(inspect, str(copy)) == run(inspect, str(original))
    assert exported(copy, tmp_path / "a") == exported(original, tmp_path / "b")
    # The copy goes on as a store of its own: the purged rowid stays a gap, the next follows the last.
    db = sqlite3.connect(copy)
    assert [r for (r,) in db.execute("SELECT rowid FROM memories ORDER BY rowid")] == [1, 2, 3, 4, 6, 7, 8, 9]
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert invoke("remember", "a new memory after the copy", "--db", str(copy)).returncode == 0
    assert invoke("doctor", "--db", str(copy), "--json").returncode == 0


def test_the_text_summary_names_every_kind_and_the_progress_goes_to_stderr(
    original: Path, tmp_path: Path
) -> None:
    done = invoke("migrate", "--from", str(original), "--to", str(tmp_path / "copy.db"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Copied {original} to {tmp_path / 'copy.db'} in ")
    for words in ("document versions", "memories", "tokens", "sessions", "embeddings", "tag rows",
                  "memories in the text index", "Counts checked"):  # fmt: skip
        assert words in done.stdout
    total = sum(migrated(original, tmp_path / "again.db")["copied"].values())
    assert "Copying: 0/" in done.stderr and done.stderr.rstrip().endswith(f"Copying: {total}/{total}")


def test_a_non_empty_target_is_refused_and_left_as_it_was(original: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy.db"
    assert invoke("remember", "something already here", "--db", str(target)).returncode == 0
    state = run(inspect, str(target))
    done = invoke("migrate", "--from", str(original), "--to", str(target))
    assert done.returncode == 1
    assert "is not empty (1 memories" in done.stderr and "--replace" in done.stderr
    assert run(inspect, str(target)) == state
    # Told to, it replaces what was there.
    result = migrated(original, target, "--replace")
    assert result["replaced"] == {"memories": 1}
    assert run(inspect, str(target))[0]["memories"] == run(inspect, str(original))[0]["memories"]


def test_a_missing_source_exits_3_and_creates_nothing(tmp_path: Path) -> None:
    done = invoke("migrate", "--from", str(tmp_path / "nope.db"), "--to", str(tmp_path / "t.db"))
    assert done.returncode == 3 and "no database at" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_same_database_twice_is_refused(original: Path) -> None:
    done = invoke("migrate", "--from", str(original), "--to", str(original))
    assert done.returncode == 1 and "both the source and the target" in done.stderr


def test_count_mismatches_name_what_differs() -> None:
    same = {"document_versions": 2, "sessions": 1, "tokens": 0, "memories": 3, "memory_embeddings": 0,
            "memory_tags": 4, "active_memories": 2, "indexed_memories": 2}  # fmt: skip
    read = {k: same[k] for k in ("document_versions", "sessions", "tokens", "memories", "memory_embeddings")}
    assert count_mismatches(same, read, same) == []
    assert count_mismatches(same, {**read, "memories": 2}, same) == [
        "memories: 3 in the source, 2 read from it"
    ]
    assert count_mismatches(same, read, {**same, "memory_tags": 5, "indexed_memories": 1}) == [
        "tag rows: 4 in the source, 5 in the target",
        "memories in the text index: 1 in the target, for 2 active memories",
    ]


@pytest.mark.anyio
async def test_a_count_mismatch_rolls_the_whole_copy_back(original: Path, tmp_path: Path) -> None:
    """A target that loses a row on the way (as another writer deleting one would): the check
    fails loudly and the target keeps nothing of the copy."""
    source = await open_rows(str(original), as_source=True)
    target_path = tmp_path / "target.db"
    target = await open_rows(str(target_path), as_source=False)

    class Lossy:
        shown = target.shown

        def reading(self) -> Any:
            return target.reading()

        def writing(self) -> Any:
            inner = target.writing()

            class Wrapped:
                async def __aenter__(self) -> Any:
                    writing = await inner.__aenter__()
                    real_write = writing.write

                    async def write(kind: str, rows: list[Any]) -> None:
                        await real_write(kind, rows[1:] if kind == "sessions" else rows)

                    writing.write = write
                    return writing

                async def __aexit__(self, *exc: Any) -> Any:
                    return await inner.__aexit__(*exc)

            return Wrapped()

    try:
        with pytest.raises(
            CountMismatch, match="sessions: 2 in the source, 1 in the target; nothing was written"
        ):
            await transfer(source, Lossy())  # type: ignore[arg-type]
    finally:
        await source.close()
        await target.close()
    db = sqlite3.connect(target_path)
    assert db.execute(
        "SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM memories)"
    ).fetchone() == (0,)
    db.close()


def test_a_copy_that_fails_part_way_leaves_the_target_as_it_was(original: Path, tmp_path: Path) -> None:
    # An embedding of no memory (a file written by other tools, foreign keys off): the target
    # refuses it, after the versions, sessions, tokens and memories were written.
    db = sqlite3.connect(original)
    db.execute("INSERT INTO memory_embeddings (memory_rowid, model, dims, text_hash, vector) "
               "VALUES (999, 'm', 1, 'h', x'0000803f')")  # fmt: skip
    db.commit()
    db.close()
    new_file = tmp_path / "new.db"
    done = invoke("migrate", "--from", str(original), "--to", str(new_file))
    assert done.returncode == 3 and "FOREIGN KEY" in done.stderr and "nothing was written" in done.stderr
    assert not new_file.exists()  # made for the copy, gone with it
    empty = tmp_path / "empty.db"
    assert invoke("init", "--db", str(empty)).returncode == 0
    assert invoke("migrate", "--from", str(original), "--to", str(empty)).returncode == 3
    state, _ = run(inspect, str(empty))
    assert state["total"] == 0 and state["heads"] == {} and state["tokens"] == []


# Through PostgreSQL ------------------------------------------------------------------------------


def test_sqlite_to_postgres_and_back_gives_the_same_self(
    original: Path, tmp_path: Path, postgres_url: str
) -> None:
    original_state = run(inspect, str(original))
    there = migrated(original, postgres_url)
    assert {k: there["copied"][k] for k in EXPECTED_COPIED} == EXPECTED_COPIED
    assert there["derived"] == {"memory_tags": 15, "active_memories": 6, "indexed_memories": 6}
    assert run(inspect, postgres_url) == original_state
    back = tmp_path / "back.db"
    assert migrated(postgres_url, back)["copied"] == there["copied"]
    assert run(inspect, str(back)) == original_state
    assert exported(back, tmp_path / "a") == exported(original, tmp_path / "b")
    # The PostgreSQL copy goes on numbering: the next version and memory follow the copied ones.
    out = invoke("remember", "after the move", "--db", postgres_url, "--json")
    assert out.returncode == 0, out.stderr
    state = run(inspect, postgres_url)[0]
    assert state["rowids"][-1] == 10 and state["heads"]["soul"] == 4


def test_a_non_empty_postgres_target_is_refused_and_left_as_it_was(original: Path, postgres_url: str) -> None:
    assert invoke("remember", "already here", "--db", postgres_url).returncode == 0
    state = run(inspect, postgres_url)
    done = invoke("migrate", "--from", str(original), "--to", postgres_url)
    assert done.returncode == 1 and "is not empty" in done.stderr
    assert run(inspect, postgres_url) == state
    assert migrated(original, postgres_url, "--replace")["replaced"] == {"memories": 1}
    assert run(inspect, postgres_url) == run(inspect, str(original))


def test_a_postgres_source_without_a_self_is_refused_and_not_written(
    postgres_url: str, tmp_path: Path
) -> None:
    import psycopg

    done = invoke("migrate", "--from", postgres_url, "--to", str(tmp_path / "t.db"))
    assert done.returncode == 3 and "holds no soul-mcp self" in done.stderr
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT to_regclass('soul_schema')").fetchone() == (None,)
    assert not (tmp_path / "t.db").exists()


def test_the_password_is_never_printed(original: Path, postgres_cluster: Any) -> None:
    url = f"postgresql://soul:s3cret-pw@127.0.0.1:{postgres_cluster.port}/no_such_db"
    done = invoke("migrate", "--from", str(original), "--to", url)
    assert done.returncode == 3
    assert "s3cret-pw" not in done.stderr + done.stdout and "127.0.0.1" in done.stderr
