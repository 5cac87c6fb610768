"""Hybrid recall in a process that has just started: the file of vectors beside the database
(recall/vectors.py) saves reading every vector from SQLite, and must never change a ranking.

Real SQLite files, real stores and the real recall engine; the vectors are made here (seeded),
saved as the indexer saves them, so that nothing embeds behind the tests' backs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from soul_mcp.core.text import content_key
from soul_mcp.models import NewMemory
from soul_mcp.recall import QueryVector, Recall, SearchQuery
from soul_mcp.recall.vectors import VectorCaches, vectors_file
from soul_mcp.storage.sqlite import SQLiteStore
from soul_mcp.storage.sqlite_recall import snapshot_file

MODEL = "stub-random"
DIMS = 24
WORDS = ["garden", "budget", "lisbon", "puppy", "report", "hiking", "oslo", "piano", "dentist", "kyoto"]
QUERIES = [("garden",), ("budget", "report"), ("lisbon", "oslo"), ("piano",), ("nothing", "matches")]


def vector(rng: random.Random) -> Any:
    import numpy as np

    v = np.array([rng.gauss(0, 1) for _ in range(DIMS)], dtype=np.float32)
    return v / np.linalg.norm(v)


async def fill(db: Path, count: int, seed: int, vectors_seed: int | None = None) -> list[str]:
    """`count` memories over a few sessions, each with a seeded random vector; their ids."""
    rng = random.Random(seed)
    store = await SQLiteStore.open(db)
    try:
        ids = []
        for n in range(count):
            content = f"note {n} about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}"
            memory, _ = await store.add_memory(
                NewMemory(
                    content=content, content_key=content_key(content), kind="fact", tags=[], importance=3,
                    occurred_at=f"2024-05-{1 + n % 20:02d}T10:00:00Z", author="tester", session_id=f"s{n % 4}",
                ),
                "2024-05-08T10:00:00Z",
            )  # fmt: skip
            ids.append(memory.id)
        await embed_pending(store, random.Random(seed if vectors_seed is None else vectors_seed))
        return ids
    finally:
        await store.close()


async def embed_pending(store: SQLiteStore, rng: random.Random) -> int:
    import numpy as np

    jobs, _ = await store.pending_embeddings(MODEL, 10_000)
    if not jobs:
        return 0
    return await store.save_embeddings(MODEL, jobs, np.array([vector(rng) for _ in jobs]))


class Counting:
    """Counts the vectors a store hands the engine from SQLite (embeddings_after) to load them; not
    those of the file's check, which reads a few one at a time."""

    def __init__(self, store: SQLiteStore) -> None:
        self.rows = 0
        original = store.embeddings_after

        async def embeddings_after(model: str, after_id: int, limit: int) -> Any:
            rows = await original(model, after_id, limit)
            if limit > 1:
                self.rows += len(rows)
            return rows

        store.embeddings_after = embeddings_after  # type: ignore[method-assign]


async def rankings(db: Path, seed: int = 99) -> tuple[list[list[tuple[str, float]]], int]:
    """Every query's hybrid ranking from a new engine (as a process that has just started), and how
    many vectors it read from SQLite. The engine is closed after, which may write the file."""
    rng = random.Random(seed)
    store = await SQLiteStore.open(db)
    counting = Counting(store)
    recall = Recall(store)
    try:
        found = []
        for terms in QUERIES:
            query = SearchQuery(terms=terms, vector=QueryVector(MODEL, vector=vector(rng)), limit=20)
            found.append([(hit.memory.id, hit.score) for hit in await recall.search(query)])
        return found, counting.rows
    finally:
        await recall.close()
        await store.close()


def same(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> bool:
    """The same memories in the same order, with the same scores (to float rounding)."""
    return [[i for i, _ in q] for q in a] == [[i for i, _ in q] for q in b] and all(
        abs(x - y) < 1e-9 for qa, qb in zip(a, b, strict=True) for (_, x), (_, y) in zip(qa, qb, strict=True)
    )


def vectors_path(db: Path) -> Path:
    snapshot = snapshot_file(db)
    assert snapshot is not None
    return vectors_file(snapshot)


@pytest.mark.anyio
async def test_a_new_engine_takes_the_vectors_from_the_file_and_ranks_the_same(db_path: Path) -> None:
    await fill(db_path, 80, seed=1)
    first, read = await rankings(db_path)
    assert read == 80  # no file yet: every vector from SQLite, and the file written for the next
    assert vectors_path(db_path).exists()
    assert any(first), "some query finds something"

    again, read = await rankings(db_path)
    assert read == 0
    assert same(again, first)

    # Vectors stored since the file was written are read from SQLite, and found.
    store = await SQLiteStore.open(db_path)
    try:
        await fill_more(store, 5)
    finally:
        await store.close()
    vectors_path(db_path).rename(db_path.with_name("kept"))
    without, read = await rankings(db_path)  # no file: everything from SQLite (and writes one)
    assert read == 85
    db_path.with_name("kept").replace(vectors_path(db_path))
    with_file, read = await rankings(db_path)
    assert read == 5
    assert same(with_file, without)


async def fill_more(store: SQLiteStore, count: int) -> None:
    for n in range(count):
        content = f"later note {n} about the garden and the piano"
        await store.add_memory(
            NewMemory(
                content=content, content_key=content_key(content), kind="fact", tags=[], importance=3,
                occurred_at="2024-06-01T10:00:00Z", author="tester", session_id="later",
            ),
            "2024-06-01T10:00:00Z",
        )  # fmt: skip
    assert await embed_pending(store, random.Random(5)) == count


@pytest.mark.anyio
async def test_a_file_that_holds_a_dropped_vector_is_not_used(db_path: Path) -> None:
    # Forgetting a memory drops its neighbours' embeddings; a process that did not hold the vectors
    # then (here: none ran) leaves the file as it was, and it holds vectors the database no longer has.
    ids = await fill(db_path, 60, seed=2)
    await rankings(db_path)
    assert vectors_path(db_path).exists()
    store = await SQLiteStore.open(db_path)
    try:
        await store.set_memory_status(
            ids[30], "forgotten", "wrong", "2024-05-09T10:00:00Z", expect=("active",)
        )
    finally:
        await store.close()
    stale, read = await rankings(db_path)
    assert read > 50  # the file was not trusted: the vectors came from SQLite
    assert all(ids[30] != memory for ranking in stale for memory, _ in ranking)
    vectors_path(db_path).unlink()
    fresh, _ = await rankings(db_path)
    assert same(stale, fresh)


@pytest.mark.anyio
async def test_a_file_of_another_database_is_not_used_even_with_the_same_ids(tmp_path: Path) -> None:
    # Two databases filled the same way have the same memories' rowids and embedding ids; only the
    # vectors tell them apart (as a database deleted and made anew beside an old file would).
    mine, other = tmp_path / "mine.db", tmp_path / "other.db"
    await fill(mine, 50, seed=3)
    await fill(other, 50, seed=3, vectors_seed=77)
    expected, _ = await rankings(mine)
    vectors_path(mine).unlink()
    await rankings(other)
    vectors_path(other).replace(vectors_path(mine))
    found, read = await rankings(mine)
    assert read == 50
    assert same(found, expected)


@pytest.mark.anyio
@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
async def test_a_damaged_file_is_ignored(db_path: Path, damage: str) -> None:
    await fill(db_path, 40, seed=4)
    expected, _ = await rankings(db_path)
    path = vectors_path(db_path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[len(data) // 2] ^= 0x40
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    found, read = await rankings(db_path)
    assert read == 40
    assert same(found, expected)
    _, read = await rankings(db_path)  # the damaged file was replaced by a good one
    assert read == 0


@pytest.mark.anyio
async def test_an_engine_writes_the_file_anew_once_it_has_dropped_a_vector(db_path: Path) -> None:
    # A forget while the engine holds the vectors: the file it leaves at close holds for the
    # database, so the next process uses it.
    ids = await fill(db_path, 60, seed=6)
    await rankings(db_path)
    store = await SQLiteStore.open(db_path)
    recall = Recall(store)
    try:
        query = SearchQuery(terms=("garden",), vector=QueryVector(MODEL, vector=vector(random.Random(1))))
        await recall.search(query)
        await store.set_memory_status(
            ids[10], "forgotten", "wrong", "2024-05-09T10:00:00Z", expect=("active",)
        )
        await recall.search(query)  # sees the change, drops the neighbours' vectors
    finally:
        await recall.close()
        await store.close()
    after, read = await rankings(db_path)
    assert read == 0
    vectors_path(db_path).unlink()
    fresh, _ = await rankings(db_path)
    assert same(after, fresh)


def test_no_file_is_kept_for_a_store_in_memory() -> None:
    class InMemory:
        def snapshot_path(self) -> None:
            return None

    assert VectorCaches(InMemory()).path is None  # type: ignore[arg-type]


def test_vectors_lent_to_the_writer_do_not_change_under_it() -> None:
    # The file is written from the arrays a recall uses, on a thread; a vector embedded again or
    # dropped meanwhile must change the recall's arrays, not the ones being written.
    import numpy as np

    from soul_mcp.recall.vectors import VectorCache

    def row(embedding_id: int, rowid: int, value: float) -> tuple[int, int, int, bytes]:
        return (embedding_id, rowid, 4, np.full(4, value, dtype="<f4").tobytes())

    cache = VectorCache(MODEL)
    cache.add([row(1, 1, 0.5), row(2, 2, 0.25)])
    lent = cache.stored()
    cache.add([row(3, 1, -0.5)])  # memory 1 embedded again: its row is overwritten
    cache.drop([2])
    assert lent.ids.tolist() == [1, 2] and lent.rowids.tolist() == [1, 2]
    assert lent.matrix[0].tolist() == [0.5] * 4
    assert cache.ids[:2].tolist() == [3, 2] and cache.rowids[:2].tolist() == [1, 0]
    assert cache.matrix[0].tolist() == [-0.5] * 4
    cache.returned(lent)
    before = cache.matrix
    cache.add([row(4, 3, 1.0)])
    assert cache.matrix is before  # nothing lent any more: changed in place, not copied
