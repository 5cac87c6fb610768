"""PostgreSQL recall kept fast: the recall index's snapshot in the user's cache folder (a fresh
engine or server starts with the postings, never with another database's, and ranks as without
it), and the pool checking only connections that sat idle, still failing fast when the database
went away."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from test_postgres_store import NOW, new

from soul_mcp.config import Settings
from soul_mcp.recall import Recall, SearchQuery
from soul_mcp.server import build_server

pytestmark = pytest.mark.anyio

WORDS = ["tea", "maya", "garden", "river", "meeting", "lisbon", "piano", "winter", "letters", "bread"]
QUERIES = [("tea",), ("maya", "garden"), ("river", "winter", "bread"), ("piano",), ("lisbon", "letters")]
Ranking = list[list[tuple[str, float]]]


def contents(count: int, start: int = 0) -> list[str]:
    """Memories holding one to three of WORDS each: some words in many memories, some in few."""
    return [
        f"note {n}: " + " ".join(WORDS[(n * k) % len(WORDS)] for k in (1, 3, 7)[: 1 + n % 3])
        for n in range(start, start + count)
    ]


async def open_pg(url: str) -> Any:
    from soul_mcp.storage.postgres import PostgresStore

    return await PostgresStore.open(url)


async def filled(url: str, count: int = 60) -> Any:
    store = await open_pg(url)
    for content in contents(count):
        await store.add_memory(new(content), NOW)
    return store


async def ranking(store: Any, with_snapshot: bool = True) -> Ranking:
    """Every query's hits (content, score) from a new engine over `store` (a process started
    anew), from its snapshot or not."""
    kept = store._snapshot_file
    if not with_snapshot:
        store._snapshot_file = None
    engine = Recall(store)
    try:
        found = []
        for terms in QUERIES:
            hits = await engine.search(SearchQuery(terms=terms, limit=30))
            found.append([(h.memory.content, h.score) for h in hits])
        return found
    finally:
        await engine.close()
        store._snapshot_file = kept


async def starts_from_snapshot(store: Any) -> bool:
    """Whether a new engine over `store` starts from the snapshot (not from the tables)."""
    engine = Recall(store)
    try:
        await engine.search(SearchQuery(terms=("tea",)))
        return engine.index.snapshot_epoch == engine.index.epoch
    finally:
        await engine.close()


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Any]:
    store = await filled(postgres_url)
    try:
        yield store
    finally:
        await store.close()


async def test_the_snapshot_is_a_private_file_in_the_cache_folder_named_by_the_database(
    store: Any, postgres_cluster: Any
) -> None:
    path = store.snapshot_path()
    assert path is not None and path.parent == Path(os.environ["SOUL_MCP_CACHE_DIR"]) / "recall"
    assert not path.exists()
    await ranking(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "soul" not in path.name and str(postgres_cluster.port) not in path.name  # a hash
    other = await open_pg(postgres_cluster.url(postgres_cluster.new_database()))
    try:
        assert other.snapshot_path() not in (None, path)  # another database: a file of its own
    finally:
        await other.close()


async def test_a_fresh_engine_starts_from_the_snapshot_and_ranks_as_without_it(store: Any) -> None:
    without = await ranking(store, with_snapshot=False)
    assert sum(len(hits) for hits in without) > 40
    assert not store.snapshot_path().exists()
    assert not await starts_from_snapshot(store)  # none yet: this one writes it as it closes
    assert store.snapshot_path().exists()
    assert await starts_from_snapshot(store)
    assert await ranking(store) == without


async def test_writes_by_another_server_after_the_snapshot_reach_the_ranking(
    store: Any, postgres_url: str
) -> None:
    await ranking(store)
    writer = await open_pg(postgres_url)
    try:
        added = [(await writer.add_memory(new(c + " tea"), NOW))[0] for c in contents(15, start=500)]
        await writer.set_memory_status(added[0].id, "forgotten", None, NOW, ("active",))
        await writer.set_memory_status(added[1].id, "forgotten", None, NOW, ("active",))
        await writer.purge_memory(added[1].id)
    finally:
        await writer.close()
    assert await starts_from_snapshot(store)
    with_snapshot = await ranking(store)
    assert with_snapshot == await ranking(store, with_snapshot=False)
    teas = [content for content, _ in with_snapshot[0]]
    assert f"{contents(1, start=502)[0]} tea" in teas and f"{contents(1, start=500)[0]} tea" not in teas


async def test_another_databases_or_a_damaged_snapshot_is_ignored(
    store: Any, postgres_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    expected = await ranking(store, with_snapshot=False)
    other = await filled(postgres_cluster.url(postgres_cluster.new_database()), count=80)
    try:
        await ranking(other)
        # Another database's file where this one's goes (say, a database restored under the old
        # identity): its memories are not these.
        shutil.copyfile(other.snapshot_path(), store.snapshot_path())
    finally:
        await other.close()
    with caplog.at_level(logging.INFO, logger="soul_mcp.recall.index"):
        assert await ranking(store) == expected
    assert "ignored" in caplog.text
    # A damaged file: it fails its checksum.
    data = bytearray(store.snapshot_path().read_bytes())
    data[-9] ^= 0xFF
    store.snapshot_path().write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="soul_mcp.recall.snapshot"):
        assert await ranking(store) == expected
    assert "checksum" in caplog.text


async def test_a_fresh_server_on_postgresql_recalls_from_the_snapshot(postgres_url: str) -> None:
    store = await filled(postgres_url)
    path = store.snapshot_path()
    await store.close()
    settings = Settings(db_path=Settings.load(postgres_url).db_path, db_url=postgres_url)
    answers = []
    for _ in range(2):  # the first server writes the snapshot as it ends; the second starts from it
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("recall", {"query": "maya garden", "limit": 20})
            assert not result.is_error
            answers.append(result.structured_content)
        assert path.exists()
    assert answers[0] == answers[1] and len(answers[0]["hits"]) > 10  # type: ignore[index]


# The pool ---------------------------------------------------------------------------------------


async def test_the_pool_checks_only_connections_idle_for_a_while(postgres_url: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    from soul_mcp.storage.postgres_pool import IdleCheck

    checks = IdleCheck(idle_s=0.5)
    async with AsyncConnectionPool(
        postgres_url, min_size=1, max_size=1, check=checks.check, open=False
    ) as pool:
        await pool.wait()
        for _ in range(5):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        assert checks.checked == 1  # the new connection only
        await anyio.sleep(0.6)
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert checks.checked == 2
        checks.doubt = lambda: True  # a call found the database away: every one is checked
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert checks.checked == 3


async def test_a_connection_used_moments_before_a_restart_is_not_handed_out(
    postgres_cluster: Any, postgres_url: str
) -> None:
    store = await open_pg(postgres_url)
    try:
        kept, _ = await store.add_memory(new("written before the restart"), NOW)
        postgres_cluster.stop_server()
        postgres_cluster.start_server()
        # The pool's connection was handed out a moment ago, but the database closed it: the look
        # at its socket finds that, and a new connection serves the call.
        assert await store.get_memory(kept.id) == kept
        _, is_new = await store.add_memory(new("written after the restart"), NOW)
        assert is_new
    finally:
        await store.close()


async def test_a_connection_the_database_closed_is_seen_without_a_round_trip(postgres_url: str) -> None:
    import psycopg

    from soul_mcp.storage.postgres_pool import has_input

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("SELECT 1")
        assert not has_input(conn)
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with anyio.fail_after(5):
            while not has_input(conn):
                await anyio.sleep(0.01)
    assert has_input(conn)  # closed


# The prefill ------------------------------------------------------------------------------------


async def test_the_prefills_one_pass_gives_each_words_parts_to_the_bit(store: Any) -> None:
    from soul_mcp.recall.prefill import PREFILL_MIN, Prefill

    reader = store.blocking_reader()()
    try:
        every = list(reader.common_parts(3))
        assert [w for w, _, _ in every] == reader.common_words(3)  # the same words, in the same order
        assert len(every) >= len(WORDS)
        for word, rowids, parts in every:
            assert list(zip(rowids.tolist(), parts.tolist(), strict=True)) == reader.word_parts(word), word
        tokens = store.tokenizer()
        prefilled = [w for w in reader.common_words(PREFILL_MIN) if tokens.keys([w]) == [w]]
    finally:
        reader.close()
    # The prefill thread hands them over, and recall ranks with them as with words fetched one by one.
    engine = Recall(store)
    try:
        await engine.search(SearchQuery(terms=("tea",)))
        index = engine.index
        prefill = Prefill(store.blocking_reader(), store.tokenizer, index.top, index.memories, index.epoch)
        prefill.start()
        prefill.join(30)
        assert prefill.completed and prefill.fetched == len(prefilled) > 0
        assert [w for w, _ in prefill.take()] == prefilled
    finally:
        await engine.close()


def test_cached_snapshots_not_written_for_a_month_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soul_mcp.recall.snapshot import CACHE_KEPT_S, cache_file

    monkeypatch.setenv("SOUL_MCP_CACHE_DIR", str(tmp_path / "cache"))
    path = cache_file("postgresql-a")
    assert path == tmp_path / "cache" / "recall" / "postgresql-a"
    old, recent = path.parent / "postgresql-old", path.parent / "postgresql-recent"
    old.write_bytes(b"x")
    recent.write_bytes(b"x")
    month_ago = time.time() - CACHE_KEPT_S - 60
    os.utime(old, (month_ago, month_ago))
    cache_file("postgresql-b")
    assert not old.exists() and recent.exists()


async def test_a_user_refused_the_clusters_identity_gets_no_snapshot_and_recalls(
    postgres_cluster: Any,
) -> None:
    import secrets

    import psycopg

    name, role = postgres_cluster.new_database(), "plain_" + secrets.token_hex(4)
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"ALTER DATABASE {name} OWNER TO {role}")
    with psycopg.connect(postgres_cluster.url(name), autocommit=True) as admin:
        admin.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    store = await filled(postgres_cluster.url(name).replace(f"{postgres_cluster.user}@", f"{role}@"), 20)
    try:
        assert store.snapshot_path() is None
        assert (await ranking(store))[0]  # "tea" found
    finally:
        await store.close()


async def test_stopping_the_prefill_cuts_its_readers_statement_short(store: Any) -> None:
    import threading

    import psycopg

    reader = store.blocking_reader()()
    failed: list[BaseException] = []

    def long_statement() -> None:
        try:
            reader._db.execute("SELECT pg_sleep(30)")
        except psycopg.Error as exc:
            failed.append(exc)

    thread = threading.Thread(target=long_statement)
    thread.start()
    try:
        await anyio.sleep(0.3)
        reader.cancel()
        thread.join(5)
        assert not thread.is_alive()
        assert failed and isinstance(failed[0], psycopg.errors.QueryCanceled)
    finally:
        reader.cancel()
        thread.join(30)
        reader.close()
