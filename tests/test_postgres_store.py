"""The Store contract on PostgreSQL and on SQLite, with the same test bodies: every test that takes
`store` runs on both, so it proves the two backends behave alike. The PostgreSQL side runs on a
throwaway cluster (tests/postgres_cluster.py), skipped with a hint where PostgreSQL is missing."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from soul_mcp.config import Settings, SettingsError
from soul_mcp.core.text import content_key
from soul_mcp.errors import InvalidInput, NotFound, StorageError
from soul_mcp.models import NewMemory
from soul_mcp.recall import Recall, SearchQuery
from soul_mcp.recall.bm25 import idf
from soul_mcp.server import build_server
from soul_mcp.storage.base import EmbeddingStore, Store
from soul_mcp.storage.sqlite import SQLiteStore
from soul_mcp.storage.sqlite_recall import Tokens

pytestmark = pytest.mark.anyio

NOW = "2024-05-08T10:00:00Z"
Opener = Callable[[], Awaitable[Any]]


def new(
    content: str,
    tags: list[str] | None = None,
    kind: str = "fact",
    session: str | None = "s1",
    occurred_at: str = NOW,
    author: str = "tester",
    importance: int = 3,
) -> NewMemory:
    return NewMemory(
        content=content,
        content_key=content_key(content),
        kind=kind,  # type: ignore[arg-type]
        tags=tags or [],
        importance=importance,
        occurred_at=occurred_at,
        author=author,
        session_id=session,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens another store on the test's database (each with connections of its own)."""
    if request.param == "sqlite":
        path = tmp_path / "soul.db"
        return lambda: SQLiteStore.open(path)
    from soul_mcp.storage.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore.open(url)


@pytest.fixture
async def store(open_store: Opener) -> AsyncIterator[Any]:
    opened = await open_store()
    try:
        yield opened
    finally:
        await opened.close()


async def test_both_stores_implement_every_protocol(store: Any) -> None:
    assert isinstance(store, EmbeddingStore)
    missing = [name for name in dir(Store) if not name.startswith("_") and not hasattr(store, name)]
    assert missing == []


# Documents ---------------------------------------------------------------------------------------


async def test_versions_count_up_from_one_per_document(store: Store) -> None:
    assert await store.get_version("soul") is None
    for n in range(1, 4):
        written = await store.append_version("soul", f"soul {n}", "me", f"why {n}", NOW, "s1")
        assert written.version == n
    await store.append_version("intent", "go", "me", None, NOW, None, restored_from=None)
    restored = await store.append_version("soul", "soul 1", "me", "back", NOW, None, restored_from=1)
    assert restored.version == 4 and restored.restored_from == 1
    latest = await store.get_version("soul")
    assert latest is not None and (latest.version, latest.content, latest.restored_from) == (4, "soul 1", 1)
    second = await store.get_version("soul", 2)
    assert second is not None and (second.content, second.reason, second.author) == ("soul 2", "why 2", "me")
    assert await store.get_version("soul", 9) is None
    assert [v.version for v in await store.list_versions("soul", 2, None)] == [4, 3]
    assert [v.version for v in await store.list_versions("soul", 10, 3)] == [2, 1]
    assert await store.document_heads() == {"soul": 4, "intent": 1}


async def test_two_connections_appending_to_one_document_get_every_number_once(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    got: list[int] = []
    try:

        async def write(store: Store, who: str) -> None:
            for n in range(15):
                got.append((await store.append_version("soul", f"{who} {n}", who, None, NOW, None)).version)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, first, "a")
            tg.start_soon(write, second, "b")
        assert sorted(got) == list(range(1, 31))
        versions = await first.list_versions("soul", 100, None)
        assert [v.version for v in versions] == list(range(30, 0, -1))
        assert (await second.stats()).document_versions == {"soul": 30}
    finally:
        await first.close()
        await second.close()


# Memories ----------------------------------------------------------------------------------------


async def test_the_same_content_is_stored_once_while_active(store: Store) -> None:
    first, is_new = await store.add_memory(new("Maya likes tea", ["maya"]), NOW)
    again, again_new = await store.add_memory(new("  maya LIKES tea ", ["other"]), NOW)
    assert is_new and not again_new and again.id == first.id and again.tags == ["maya"]
    await store.set_memory_status(first.id, "forgotten", "wrong", NOW, ("active",))
    third, third_new = await store.add_memory(new("Maya likes tea"), NOW)
    assert third_new and third.id != first.id


async def test_concurrent_stores_of_one_content_make_one_memory(open_store: Opener) -> None:
    stores = [await open_store() for _ in range(3)]
    results: list[tuple[str, bool]] = []
    try:

        async def add(store: Store) -> None:
            for _ in range(4):
                memory, is_new = await store.add_memory(new("one shared fact"), NOW)
                results.append((memory.id, is_new))

        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(add, s)
        assert len({memory_id for memory_id, _ in results}) == 1
        assert sum(is_new for _, is_new in results) == 1
        assert (await stores[0].stats()).memories_active == 1
    finally:
        for s in stores:
            await s.close()


async def test_forget_restore_revise_and_purge(store: Store) -> None:
    a, _ = await store.add_memory(new("the sky is green", ["sky"]), NOW)
    forgotten = await store.set_memory_status(
        a.id, "forgotten", "wrong colour", "2024-05-09T00:00:00Z", ("active",)
    )
    assert (forgotten.status, forgotten.status_reason, forgotten.status_changed_at) == (
        "forgotten", "wrong colour", "2024-05-09T00:00:00Z")  # fmt: skip
    with pytest.raises(InvalidInput, match="is forgotten"):
        await store.set_memory_status(a.id, "forgotten", None, NOW, ("active",))
    twin, _ = await store.add_memory(new("The sky is green"), NOW)
    with pytest.raises(InvalidInput, match=f"{twin.id} holds the same content"):
        await store.set_memory_status(a.id, "active", None, NOW, ("forgotten",))
    await store.set_memory_status(twin.id, "forgotten", None, NOW, ("active",))
    assert (await store.set_memory_status(a.id, "active", None, NOW, ("forgotten",))).status == "active"

    old, revised = await store.revise_memory(a.id, new("the sky is blue", ["sky"]), "looked again", NOW)
    assert (old.status, old.superseded_by, revised.supersedes) == ("superseded", revised.id, a.id)
    with pytest.raises(InvalidInput, match="cannot be revised"):
        await store.revise_memory(a.id, new("the sky is grey"), "again", NOW)
    other, _ = await store.add_memory(new("grass is green"), NOW)
    with pytest.raises(InvalidInput, match="already stored as memory"):
        await store.revise_memory(revised.id, new("Grass is green"), "dup", NOW)
    # The failed revision left everything as it was.
    kept = await store.get_memory(revised.id)
    assert kept is not None and kept.status == "active" and kept.superseded_by is None

    with pytest.raises(InvalidInput, match="only forgotten memories can be purged"):
        await store.purge_memory(other.id)
    await store.set_memory_status(revised.id, "forgotten", None, NOW, ("active",))
    await store.purge_memory(revised.id)
    assert await store.get_memory(revised.id) is None
    after = await store.get_memory(a.id)
    assert after is not None and after.superseded_by is None
    with pytest.raises(NotFound):
        await store.purge_memory(revised.id)
    with pytest.raises(NotFound):
        await store.set_memory_status("m_000000000000", "forgotten", None, NOW, ("active",))
    stats = await store.stats()
    assert (stats.memories_active, stats.memories_forgotten, stats.memories_superseded) == (1, 1, 1)


async def test_the_change_log_names_every_stored_changed_and_purged_memory(store: Store) -> None:
    start = await store.change_seq()
    a, _ = await store.add_memory(new("alpha"), NOW)
    b, _ = await store.add_memory(new("beta"), NOW)
    middle = await store.change_seq()
    await store.set_memory_status(a.id, "forgotten", None, NOW, ("active",))
    await store.purge_memory(a.id)
    end = await store.change_seq()
    rowids = await store.rowids_of([a.id, b.id])
    assert len(rowids) == 1  # a is gone
    assert start < middle < end
    changed_first = await store.changed_between(start, middle)
    assert len(changed_first) == 2 and rowids[0] in changed_first
    assert rowids[0] not in await store.changed_between(middle, end)
    assert len(await store.changed_between(middle, end)) == 1
    marker = await store.change_marker()
    await store.append_version("soul", "x", "me", None, NOW, None)
    assert await store.change_marker() != marker


async def test_columns_tags_and_memories_by_rowid(store: Store) -> None:
    a, _ = await store.add_memory(new("one", ["x", "y"], kind="event", author="ann"), NOW)
    b, _ = await store.add_memory(new("two", ["y"], session=None), "2024-05-09T00:00:00Z")
    await store.set_memory_status(a.id, "forgotten", None, NOW, ("active",))
    ra, rb = await store.rowids_of([b.id, a.id, "m_ffffffffffff"])
    assert ra < rb
    columns = {c[0]: c for c in await store.memory_columns()}
    assert columns[ra] == (ra, 0, NOW, "event", "ann", "s1", a.id)
    assert columns[rb] == (rb, 1, NOW, "fact", "tester", None, b.id)
    assert await store.memory_columns([rb, 999]) == [columns[rb]]
    assert await store.tagged_rowids("y", 0, rb) == [ra, rb]
    assert await store.tagged_rowids("y", ra, rb) == [rb]
    at = await store.memories_at([ra, rb, 999])
    assert at[rb].created_at == "2024-05-09T00:00:00Z" and at[ra].status == "forgotten"


# Tokens, sessions, stats, listings -----------------------------------------------------------------


async def test_tokens_are_added_found_revoked_and_touched(store: Store) -> None:
    await store.add_token("alice", "h1", ("read", "write"), "2024-01-01T00:00:00Z")
    await store.add_token("bob", "h2", ("read",), "2024-01-02T00:00:00Z")
    with pytest.raises(InvalidInput, match="a token named 'alice' already exists"):
        await store.add_token("alice", "h3", ("read",), NOW)
    found = await store.find_token("h1")
    assert found is not None and found.name == "alice" and found.scopes == ["read", "write"]
    assert await store.find_token("nope") is None
    revoked = await store.revoke_token("alice", NOW)
    assert revoked.revoked_at == NOW
    assert (await store.revoke_token("alice", "2025-01-01T00:00:00Z")).revoked_at == NOW
    with pytest.raises(InvalidInput, match="a revoked token named 'alice'"):
        await store.add_token("alice", "h4", ("read",), NOW)
    with pytest.raises(NotFound):
        await store.revoke_token("carol", NOW)
    await store.touch_token("bob", "2024-06-01T10:00Z")
    assert [(t.name, t.last_used_at) for t in await store.list_tokens()] == [
        ("alice", None), ("bob", "2024-06-01T10:00Z")]  # fmt: skip


async def test_sessions_stats_and_client_activity(store: Store) -> None:
    await store.record_session("s1", "claude", "2024-05-01T00:00:00Z")
    await store.record_session("s1", "other", "2024-05-02T00:00:00Z")  # known: kept as it was
    await store.record_session("s2", "cursor", "2024-05-03T00:00:00Z")
    await store.add_memory(new("m1", author="claude"), "2024-05-04T00:00:00Z")
    await store.add_memory(
        new("m2", author="claude", occurred_at="2024-05-01T00:00:00Z"), "2024-05-01T00:00:00Z"
    )
    await store.append_version("soul", "v", "cursor", None, "2024-05-05T00:00:00Z", "s2")
    stats = await store.stats()
    assert (stats.sessions, stats.memories_active, stats.document_versions) == (2, 2, {"soul": 1})
    activity = [a.model_dump() for a in await store.client_activity()]
    assert activity == [
        {"client": "cursor", "sessions": 1, "memories": 0, "versions": 1,
         "last_session_at": "2024-05-03T00:00:00Z", "last_memory_at": None,
         "last_version_at": "2024-05-05T00:00:00Z", "last_active_at": "2024-05-05T00:00:00Z"},
        {"client": "claude", "sessions": 1, "memories": 2, "versions": 0,
         "last_session_at": "2024-05-01T00:00:00Z", "last_memory_at": "2024-05-04T00:00:00Z",
         "last_version_at": None, "last_active_at": "2024-05-04T00:00:00Z"},
    ]  # fmt: skip


async def test_listings_filter_and_page_by_time(store: Store) -> None:
    ids = []
    for day in range(1, 9):
        memory, _ = await store.add_memory(
            new(f"note {day}", ["even"] if day % 2 == 0 else ["odd", "x"], kind="event" if day > 4 else "fact",
                occurred_at=f"2024-05-0{day}T10:00:00Z", importance=1 + day % 5), NOW)  # fmt: skip
        ids.append(memory.id)
    await store.set_memory_status(ids[0], "forgotten", None, NOW, ("active",))
    await store.revise_memory(
        ids[1], new("note 2 again", ["even"], occurred_at="2024-05-02T10:00:00Z"), "r", NOW
    )

    async def listed(*statuses: str, **kw: Any) -> tuple[list[str], int]:
        args = {"kind": None, "tags": (), "since": None, "until": None, "offset": 0, "limit": 100, **kw}
        found, total = await store.list_memories(statuses, **args)
        return [m.content for m in found], total

    assert await listed("active", limit=3) == (["note 8", "note 7", "note 6"], 7)
    assert await listed("active", offset=5, limit=3) == (["note 3", "note 2 again"], 7)
    assert await listed("forgotten", "superseded") == (["note 2", "note 1"], 2)
    assert await listed("active", "forgotten", "superseded", tags=("odd", "x"), kind="fact") == (
        ["note 3", "note 1"], 2)  # fmt: skip
    assert await listed("active", since="2024-05-03T10:00:00Z", until="2024-05-05T10:00:00Z") == (
        ["note 4", "note 3"], 2)  # fmt: skip
    assert await listed("active", offset=50) == ([], 7)
    by_importance = await store.ordered_memories(
        SearchQuery(order="importance", limit=4, exclude_ids=(ids[3],))
    )
    assert [m.content for m in by_importance] == ["note 8", "note 3", "note 7", "note 2 again"]
    recent = await store.ordered_memories(SearchQuery(order="recent", tags=("even",), offset=1, limit=2))
    assert [m.content for m in recent] == ["note 6", "note 4"]


async def test_embeddings_are_kept_per_model_and_dropped_with_a_neighbour(store: Any) -> None:
    import numpy as np

    for n in range(4):
        await store.add_memory(new(f"fact number {n}"), NOW)
    jobs, newest = await store.pending_embeddings("m", 10)
    assert [j.position for j in jobs] == [4, 3, 2, 1] and newest == 4
    assert jobs[0].text == "fact number 2\nfact number 3"
    vectors = np.eye(4, dtype=np.float32)
    assert await store.save_embeddings("m", jobs, vectors) == 4
    assert await store.embedding_counts("m") == (4, 4)
    assert await store.embedding_count("m") == 4 and await store.embedding_count("other") == 0
    rows = await store.embeddings_after("m", 0, 10)
    assert [r[1] for r in rows] == [4, 3, 2, 1] and rows[0][3] == vectors[0].tobytes()
    assert await store.embedding_ids("m", [1, 2]) == {rows[3][1]: rows[3][0], rows[2][1]: rows[2][0]}
    memory = (await store.memories_at([2]))[2]
    await store.set_memory_status(memory.id, "forgotten", None, NOW, ("active",))
    assert sorted((await store.embedding_ids("m", [1, 2, 3, 4])).keys()) == [4]
    assert await store.stale_embeddings("m", 0, 10) == (
        [j for j in (await store.pending_embeddings("m", 10))[0][::-1]], None)  # fmt: skip
    assert await store.rebuild_text_index() == 3


# Ranking parity ----------------------------------------------------------------------------------

CORPUS = [
    ("Maya prefers short answers and green tea", ["maya", "style"], "preference"),
    ("The meeting with Maya ran late; meetings often do", ["work"], "event"),
    ("Deploys happen on Fridays, never on Mondays", ["work", "deploy"], "fact"),
    ("Tea, tea and more tea: the team runs on tea", ["team"], "fact"),
    ("Caf\u00e9 r\u00e9sum\u00e9: na\u00efve diacritics fold away", [], "lesson"),
    ("It's Maya's birthday in May", ["maya", "birthday"], "event"),
    ("A long note " + " ".join(f"word{n}" for n in range(60)) + " about running", ["long"], "other"),
    ("running runners ran; the run was good", [], "reflection"),
    ("short", ["x"], "fact"),
    ("Meetings on Monday 8 May were cancelled", ["work"], "event"),
    ('quotes \' and back\\slashes and "double" quotes', ["odd'tag"], "fact"),
    ("ha " * 300 + "a laugh longer than a tsvector keeps positions of one word", ["ha"], "other"),
]
QUERIES = [
    ["maya"], ["tea"], ["meetings"], ["running"], ["may"], ["work"], ["cafe"], ["event"], ["monday"],
    ["maya", "tea"], ["short", "answers"], ["quotes"], ["slashes"], ["odd"], ["nothing-here"], ["deploy", "fridays"],
    ["it's"], ["maya's"], ["back\\slashes"], ["odd'tag"], ["tea,tea"], ["may-2024"], ["8-may"], ["ha"], ["laugh"],
]  # fmt: skip


async def fill(store: Store) -> None:
    for n, (content, tags, kind) in enumerate(CORPUS):
        day = f"2024-05-{1 + n % 9:02d}T10:00:00Z"
        await store.add_memory(new(content, tags, kind=kind, occurred_at=day, session=f"s{n % 3}"), NOW)
    forgotten = (await store.memories_at([3]))[3]
    await store.set_memory_status(forgotten.id, "forgotten", None, NOW, ("active",))


@pytest.fixture
async def both(tmp_path: Path, postgres_url: str) -> AsyncIterator[tuple[Any, Any]]:
    from soul_mcp.storage.postgres import PostgresStore

    sqlite, postgres = await SQLiteStore.open(tmp_path / "soul.db"), await PostgresStore.open(postgres_url)
    try:
        await fill(sqlite)
        await fill(postgres)
        yield sqlite, postgres
    finally:
        await sqlite.close()
        await postgres.close()


async def test_word_scores_are_those_of_sqlite_to_1e9(both: tuple[Any, Any]) -> None:
    sqlite, postgres = both
    tokens = Tokens()
    words = sorted({t for content, tags, _ in CORPUS for t in " ".join(tokens.keys(
        [content, json.dumps(tags, ensure_ascii=False)])).split()} | {"mai", "event", "fact", "2024", "8"})  # fmt: skip
    phrases = ["it's", "maya's", "tea-tea", "tea,tea,tea", "odd'tag", "back\\slashes", "8 may", "may-2024",
               "fact-may", "words-that-never-meet", "word1-word2", "meetings-often"]  # fmt: skip
    asked = [(w, 0) for w in words + phrases] + [("tea", 2), ("maya", 5), ("it's", 3)]
    expected, got = await sqlite.word_scores(asked), await postgres.word_scores(asked)
    assert sum(len(e) for e in expected) > 100
    matched = {word for (word, _), found in zip(asked, got, strict=True) if found}
    assert {"it's", "maya's", "tea-tea", "odd'tag", "back\\slashes", "8 may", "may-2024"} <= matched
    assert len(got[asked.index(("tea-tea", 0))]) == 1 and got[asked.index(("tea,tea,tea", 0))] == []
    for (word, _), want, have in zip(asked, expected, got, strict=True):
        assert [r for r, _ in sorted(have)] == [r for r, _ in sorted(want)], word
        for (_, a), (_, b) in zip(sorted(have), sorted(want), strict=True):
            assert abs(a - b) <= 1e-9, (word, a, b)
    reader = postgres.blocking_reader()()
    try:
        assert sorted(reader.word_scores("tea")) == sorted(got[words.index("tea")])
        common = reader.common_words(3)
        assert "maya" in common and "tea" not in common
    finally:
        reader.close()


async def test_word_parts_are_the_scores_without_their_idf(both: tuple[Any, Any]) -> None:
    # What the recall engine fetches from PostgreSQL (word_parts, recall/source.py): the score
    # divided by the word's idf, also for the memories above a rowid only, with no count of the rest.
    sqlite, postgres = both
    words = ["tea", "maya", "it's", "8 may", "meetings-often", "nothing-here"]
    asked = [(w, 0) for w in words] + [("tea", 2), ("maya", 5), ("it's", 3)]
    scores, parts = await sqlite.word_scores(asked), await postgres.word_parts(asked)
    (active,) = (await postgres._fetchone("SELECT memories FROM text_totals")) or (0,)
    everything = dict(
        zip([w for w, _ in asked], await sqlite.word_scores([(w, 0) for w, _ in asked]), strict=True)
    )
    checked = 0
    for (word, _), want, have in zip(asked, scores, parts, strict=True):
        assert [r for r, _ in sorted(have)] == [r for r, _ in sorted(want)], word
        weight = idf(active, len(everything[word]))
        for (_, part), (_, score) in zip(sorted(have), sorted(want), strict=True):
            assert part == pytest.approx(score / weight, rel=1e-12), word
            checked += 1
    assert checked > 10
    reader = postgres.blocking_reader()()
    try:
        assert sorted(reader.word_parts("tea")) == sorted(parts[0])
        assert sorted(reader.word_parts("it's")) == sorted(parts[2])
    finally:
        reader.close()


async def test_recall_ranks_identically_on_both(both: tuple[Any, Any]) -> None:
    sqlite, postgres = both
    engines = Recall(sqlite), Recall(postgres)
    try:
        for terms in QUERIES:
            for extra in ({}, {"kind": "event"}, {"tags": ("work",)}, {"since": "2024-05-03T00:00:00Z"}):
                query = SearchQuery(terms=tuple(terms), limit=20, **extra)  # type: ignore[arg-type]
                a, b = [await e.search(query) for e in engines]
                assert [(h.memory.id != "", h.memory.content, h.context_of is None) for h in a] == [
                    (h.memory.id != "", h.memory.content, h.context_of is None) for h in b], (terms, extra)  # fmt: skip
                assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-9)
        # A write after the first searches reaches the ranking on both.
        for s in both:
            await s.add_memory(new("Maya maya MAYA", occurred_at="2024-06-01T00:00:00Z"), NOW)
        a, b = [await e.search(SearchQuery(terms=("maya",))) for e in engines]
        assert a[0].memory.content == b[0].memory.content == "Maya maya MAYA"
    finally:
        for e in engines:
            await e.close()


# PostgreSQL only ---------------------------------------------------------------------------------


async def test_an_unreachable_database_is_a_clear_error_without_the_password(postgres_cluster: Any) -> None:
    from soul_mcp.storage.postgres import PostgresStore

    port = postgres_cluster.port
    # Port 1 on loopback: nothing listens there.
    with pytest.raises(
        StorageError, match=re.escape("database unavailable at postgresql://soul@127.0.0.1:1/x")
    ) as caught:
        await PostgresStore.open("postgresql://soul:s3cret-pw@127.0.0.1:1/x")
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(StorageError) as wrong_db:
        await PostgresStore.open(f"postgresql://soul:s3cret-pw@127.0.0.1:{port}/no_such_db")
    assert 'database "no_such_db" does not exist' in str(wrong_db.value)
    assert "s3cret-pw" not in str(wrong_db.value)


async def test_a_database_restart_fails_calls_fast_and_the_store_reconnects(
    postgres_cluster: Any, postgres_url: str
) -> None:
    from soul_mcp.storage.postgres import PostgresStore

    store = await PostgresStore.open(postgres_url)
    try:
        kept, _ = await store.add_memory(new("written before the outage"), NOW)
        postgres_cluster.stop_server()
        try:
            started = time.monotonic()
            with pytest.raises(StorageError, match="database unavailable") as down:
                await store.add_memory(new("written during the outage"), NOW)
            assert time.monotonic() - started < 10
            assert "try again" in str(down.value)
        finally:
            postgres_cluster.start_server()
        assert await store.get_memory(kept.id) == kept
        _, is_new = await store.add_memory(new("written during the outage"), NOW)
        assert is_new and (await store.stats()).memories_active == 2
    finally:
        await store.close()


async def test_servers_opening_a_new_database_at_once_migrate_it_once(postgres_url: str) -> None:
    from soul_mcp.storage.postgres import PostgresStore
    from soul_mcp.storage.postgres_schema import SCHEMA_VERSION

    opened: list[Any] = []

    async def open_one() -> None:
        opened.append(await PostgresStore.open(postgres_url))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    try:
        assert sorted(s.migrated_from is None for s in opened) == [False, True, True, True]
        diagnosis = await opened[0].diagnose()
        assert diagnosis.schema_version == SCHEMA_VERSION and diagnosis.index_check == "ok"
        await opened[0].check_intact()
    finally:
        for s in opened:
            await s.close()


def test_a_postgres_url_passes_through_the_settings_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://soul:pw@db.example:5433/self?sslmode=require"
    settings = Settings.load(url)
    assert settings.db_url == url
    assert "pw" not in str(settings.db_path) and "pw" not in repr(settings)
    monkeypatch.setenv("SOUL_MCP_DB", url)
    assert Settings.load().db_url == url
    assert Settings.load("/tmp/x.db").db_url is None
    with pytest.raises(SettingsError, match="port is not a number"):
        Settings.load("postgresql://soul:pw@db.example:pw/self")


async def test_the_mcp_server_works_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "unused.db", db_url=postgres_url)
    async with Client(build_server(settings)) as client:

        async def call(tool: str, args: dict[str, Any]) -> dict[str, Any]:
            result = await client.call_tool(tool, args)
            assert not result.is_error, result.content[0].text
            assert result.structured_content is not None
            return result.structured_content

        stored = await call("remember", {"content": "Maya prefers short answers", "tags": ["maya"]})
        again = await call("remember", {"content": "maya prefers short answers"})
        assert stored["is_new"] and not again["is_new"]
        await call("remember", {"content": "The deploy is on Friday"})
        hits = (await call("recall", {"query": "short answers"}))["hits"]
        assert hits[0]["id"] == stored["memory"]["id"]
        written = await call("write_soul", {"content": "# Me\nI am calm.\n", "reason": "first words"})
        assert written["version"]["version"] == 1
        woken = await call("wake_up", {"focus": "Maya"})
        assert "I am calm." in woken["text"] and "Maya prefers short answers" in woken["text"]
    assert not (tmp_path / "unused.db").exists()


def test_the_cli_remembers_and_recalls_on_postgresql(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from soul_mcp.cli import main

    monkeypatch.chdir(tmp_path)  # a URL taken for a path would leave folders here
    monkeypatch.setenv("SOUL_MCP_DB", postgres_url)
    assert main(["remember", "Maya likes green tea"]) in (0, None)
    assert main(["recall", "tea"]) in (0, None)
    out = capsys.readouterr().out
    assert out.count("Maya likes green tea") == 2
    assert list(tmp_path.iterdir()) == []


def test_stats_and_doctor_describe_a_postgresql_database(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from soul_mcp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUL_MCP_DB", postgres_url)
    assert main(["remember", "Maya likes green tea"]) in (0, None)
    capsys.readouterr()
    assert main(["stats"]) in (0, None)
    out = capsys.readouterr().out
    assert "Memories: 1 active" in out
    assert f"Database: {postgres_url} (PostgreSQL)" in out
    assert main(["doctor"]) in (0, None)
    report = capsys.readouterr().out
    assert "PostgreSQL, synchronous_commit=on" in report
    assert "no database at" not in report and "file permissions" not in report
    assert list(tmp_path.iterdir()) == []


def test_backup_of_a_postgresql_self_is_a_checked_sqlite_copy(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from soul_mcp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUL_MCP_DB", postgres_url)
    assert main(["remember", "Maya likes green tea"]) in (0, None)
    assert main(["remember", "The garden needs water"]) in (0, None)
    capsys.readouterr()
    assert main(["backup", str(tmp_path / "copy.db")]) in (0, None)
    out = capsys.readouterr().out
    assert "integrity ok" in out and "Memories: 2 active" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db"]  # no partial file left
    monkeypatch.setenv("SOUL_MCP_DB", str(tmp_path / "copy.db"))
    assert main(["recall", "tea"]) in (0, None)
    assert "Maya likes green tea" in capsys.readouterr().out
    monkeypatch.setenv("SOUL_MCP_DB", postgres_url)
    assert main(["backup", str(tmp_path / "copy.db")]) == 1  # exists: only with --force
    assert main(["backup", "--force", str(tmp_path / "copy.db")]) in (0, None)
    # A -wal beside the target: a database in use, never replaced (the same rule as SQLite's).
    before = (tmp_path / "copy.db").read_bytes()
    (tmp_path / "copy.db-wal").touch()
    capsys.readouterr()
    assert main(["backup", "--force", str(tmp_path / "copy.db")]) == 1
    assert "copy.db-wal exists" in capsys.readouterr().err
    assert (tmp_path / "copy.db").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # nothing was written


def test_init_names_a_postgresql_database_by_its_url(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from soul_mcp.cli import main

    monkeypatch.chdir(tmp_path)
    password_url = postgres_url.replace("soul@", "soul:not-the-password@")
    assert main(["init", "--db", password_url]) in (0, None)
    out = capsys.readouterr().out
    assert f"Created the database at {postgres_url}." in out
    assert f"soul-mcp doctor --db {postgres_url}" in out and "not-the-password" not in out
    assert main(["remember", "--db", postgres_url, "Maya likes green tea"]) in (0, None)
    capsys.readouterr()
    assert main(["init", "--db", postgres_url]) in (0, None)
    assert "already exists (1 active memory" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_url_of_several_hosts_with_ports_is_shown_as_given_without_its_password() -> None:
    settings = Settings.load(
        "postgresql://soul:secret@db1:5432,db2:5433/self?target_session_attrs=read-write"
    )
    assert settings.shown_db == "postgresql://soul@db1:5432,db2:5433/self"


async def test_the_totals_move_to_slots_and_stay_true(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schema 3 spreads the active memories' totals over 16 rows, one per connection's slot, so that
    # concurrent writers do not queue on one row; a database made at schema 2 keeps its counts.
    from soul_mcp.storage import postgres
    from soul_mcp.storage.postgres_schema import MIGRATIONS

    with monkeypatch.context() as old:
        old.setattr(postgres, "MIGRATIONS", MIGRATIONS[:2])
        old.setattr(postgres, "SCHEMA_VERSION", 2)
        store = await postgres.PostgresStore.open(postgres_url)
        try:
            # The one column of a later schema that today's code reads and writes (migration 5 adds
            # it when it is missing), so that this code can stand in for a schema-2 server.
            async with store._transaction() as db:
                await db.execute("ALTER TABLE memories ADD COLUMN status_changed_by text")
            for n in range(5):
                await store.add_memory(new(f"memory number {n} about tea"), NOW)
            forgotten, _ = await store.add_memory(new("soon forgotten"), NOW)
            await store.set_memory_status(forgotten.id, "forgotten", "test", NOW, ("active",))
        finally:
            await store.close()

    stores = [await postgres.PostgresStore.open(postgres_url) for _ in range(3)]
    try:
        assert stores[0].migrated_from == 2
        # Writers on several connections, at once: each adds to its own slot.
        async with anyio.create_task_group() as tg:
            for i, s in enumerate(stores):
                for n in range(4):
                    tg.start_soon(s.add_memory, new(f"concurrent {i} {n} tea"), NOW)
        (totals,) = await stores[0]._fetchall("SELECT memories, tokens FROM text_totals")
        (counted,) = await stores[0]._fetchall(
            "SELECT count(*), sum(tokens) FROM memories WHERE status = 'active'"
        )
        assert tuple(totals) == tuple(counted) and totals[0] == 5 + 12
        assert (await stores[0].diagnose()).index_check == "ok"
        (slots,) = await stores[0]._fetchall("SELECT count(*) FROM text_total_slots")
        assert slots == (16,)
    finally:
        for s in stores:
            await s.close()
