"""Latency of soul-mcp over a real stdio connection: remember, recall, cold start and memory use.

For each size (1k, 10k, 100k memories by default) the script
1. fills a database with synthetic memories through the project's own storage code (the same insert,
   tag rows and FTS triggers that `remember` runs, batched into large transactions so that 100k
   memories take seconds instead of an hour of one-fsync-per-call MCP traffic);
2. spawns `python -m soul_mcp serve --db FILE` and drives it with the SDK's stdio client
   (`mcp.Client(StdioServerParameters(...))`): recall and remember round trips, timed with
   `time.perf_counter()` around each call after a few warm-up calls;
3. replays the same recalls with the TypeScript SDK's stdio client (bench/ts_recalls.mjs: what
   Claude Desktop, Claude Code and Cursor are built on; needs node and .ci/node_modules, which
   .ci/run installs), with a raw JSON-RPC client over the pipes (no SDK on the client side), and
   in-process through `AgentSelf.recall` (no MCP at all), so the table shows where the time goes;
4. measures cold start, spawn to the first `tools/list` answer, with the SDK client and with the raw
   client (the raw one is the server's own cold start: spawn, write initialize +
   notifications/initialized + tools/list, wait for the tools/list line);
5. reads the server's resident memory from /proc/<pid>/status (VmRSS, VmHWM).

Once per run it also times the imports behind cold start (a bare interpreter, `import
mcp.server.mcpserver`, `import soul_mcp.server.app`, each ended with `os._exit` since cold start has
no teardown either; `python -m soul_mcp version`) and breaks down `python -X importtime` by
top-level package.

It measures and reports; it asserts nothing about the targets (recall p50 <= 5 ms and p95 <= 15 ms at
100k memories over stdio, cold start <= 0.6 s), it only marks them in the table.

    .venv/bin/python bench/latency.py                       # 1k, 10k, 100k
    .venv/bin/python bench/latency.py --sizes 1000 --queries 200 --json /tmp/latency.json
    .venv/bin/python bench/latency.py --workdir /tmp/soul-bench   # keep and reuse the filled databases

With --fresh it measures instead what a person meets: per size, fresh servers per protocol era
(--fresh-runs each), spawn to the first tools/list answer, the first recall, and recalls 1-50 and
151-200 after the spawn, with no warm-up or settle time, on NaturalCorpus (the issue's corpus):

    .venv/bin/python bench/latency.py --sizes 100000 --workdir /tmp/soul-bench --fresh [--semantic]

With --postgres (a throwaway cluster started here, as the tests start theirs) or --db-url URL (a
PostgreSQL server whose user may create databases), each size also runs the SDK, raw and in-process
legs on a PostgreSQL database holding the same fill, beside the SQLite legs, which stay as they are:

    .venv/bin/python bench/latency.py --sizes 100000 --postgres --skip-imports
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import glob
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for pg_server
from pg_server import PostgresServer

from soul_mcp import __version__
from soul_mcp.config import Semantic, Settings
from soul_mcp.core import AgentSelf
from soul_mcp.core.text import STOPWORDS, content_key
from soul_mcp.models import NewMemory
from soul_mcp.storage.sqlite import SQLiteStore

HANDSHAKE_VERSION = "2025-11-25"  # the newest protocol of the initialize-handshake era
FILL_BATCH = 2_000
# Bump when the generator changes, so that a --workdir does not reuse a database filled differently.
CORPUS_VERSION = 2
NATURAL_VERSION = 1  # the same for NaturalCorpus, the fresh-server corpus
TARGETS = {"recall_p50_ms": 5.0, "recall_p95_ms": 15.0, "cold_start_s": 0.6}
# --semantic: hybrid recall with the local model (the `semantic` extra); its p95 target is 30 ms.
SEMANTIC = "off"
HYBRID_P95_MS = 30.0


# Synthetic corpus --------------------------------------------------------------------------------
#
# Memories are sentences an agent would keep ("Maya prefers ...", "we decided to ... because ...")
# built from English function words and a generated vocabulary of ~5k content words. Content words,
# names and tags follow a Zipf-Mandelbrot law, p(rank) ~ 1 / (rank + q)^s: pure Zipf (q = 0) would put
# the most common content word in most memories, which no real notebook does; with q = 8 the head word
# is in roughly one memory in ten, so common-word queries still match thousands of rows at 100k (the
# expensive case for BM25), while the tail gives the rare words that make recall useful.

ZIPF_S = 1.05
ZIPF_Q = 8.0
VOCABULARY_SIZE = 5_000
NAMES = 400
TAGS = 300
KINDS = (
    ("fact", 30),
    ("event", 20),
    ("preference", 15),
    ("lesson", 10),
    ("reflection", 8),
    ("person", 7),
    ("other", 10),
)
IMPORTANCE = ((1, 5), (2, 15), (3, 55), (4, 18), (5, 7))
SPAN_DAYS = 730
CLIENTS = ("claude-code", "claude-desktop", "cursor", "codex-cli")

MEMORY_TEMPLATES = (
    "{N} prefers {w} {w} over {w} when working on the {w} {w}",
    "we decided to {w} the {w} {w} because the {w} {w} was too {w}",
    "lesson: always {w} the {w} before you {w} the {w} {w}",
    "met {N} at the {w} {w} and talked about {w}, {w} and {w}",
    "the {w} {w} broke after the {w} {w}; the fix was to {w} the {w}",
    "{N} said the {w} {w} should be {w} by {w}",
    "remember that {N} is allergic to {w} and does not like {w} {w}",
    "{N} asked for a {w} {w} of the {w} {w} with more {w}",
    "I felt {w} about the {w} {w} today; next time {w} the {w} earlier",
    "the {w} for the {w} {w} moved to {w} because of the {w}",
    "our {w} {w} uses {w} with {w} and a {w} {w} in front",
    "{N} and {N} will {w} the {w} {w} next {w}",
    "{N} works on {w} {w} at {w} and wants to {w} {w} this year",
    "the {w} {w} took {w} hours; {w} {w} would have been faster",
)
CLAUSES = (
    ", and the {w} {w} was {w}",
    "; {N} also mentioned {w} {w}",
    " (see the {w} {w} notes)",
    " after a long {w} about {w}",
    ", which matters for the {w} {w} {w}",
    " so we should {w} it before {w}",
)
QUESTION_TEMPLATES = (
    "what did {N} say about the {w} {w}",
    "what do we know about {w} {w}",
    "when did we {w} the {w}",
    "why did the {w} {w} {w}",
    "how does {N} feel about {w} and {w}",
    "what was decided about the {w} {w} {w}",
    "does {N} like {w}",
    "which {w} did we use for the {w} {w} {w}",
    "where is the {w} for {w} {w}",
    "tell me about {w} {w} and {w} {w} from the {w}",
    "what should I remember about {N} and the {w}",
)
# Recall calls of each kind, out of 100: natural questions (with stopwords), bare keywords, a
# question narrowed by a tag or by a date, and listings with an empty query (half with a tag).
QUERY_MIX = (("question", 40), ("keywords", 20), ("tag", 15), ("since", 15), ("empty", 10))

_ONSETS = "b c d f g h j k l m n p r s t v w z br cl dr fl gr pl pr sk sl sp st tr ch sh th".split()
_VOWELS = "a e i o u a e i o ai ea ou".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "t", "m", "nd", "st", "rk"]


def _zipf_weights(size: int) -> list[float]:
    return [1.0 / (rank + ZIPF_Q) ** ZIPF_S for rank in range(1, size + 1)]


def _pseudo_words(rng: random.Random, count: int, syllables: tuple[int, int]) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            for _ in range(rng.randint(*syllables))
        )
        if 3 <= len(word) <= 12 and word not in STOPWORDS:
            words.setdefault(word, None)
    return list(words)


class Corpus:
    """Deterministic generator of memories and recall calls (one seed, same corpus everywhere)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = _pseudo_words(self.rng, VOCABULARY_SIZE, (1, 3))
        self.names = [w.capitalize() for w in _pseudo_words(random.Random(seed + 1), NAMES, (2, 2))]
        tag_words = self.words[:: max(1, VOCABULARY_SIZE // TAGS)][:TAGS]
        self.tags = [f"project-{w}" if i % 3 == 0 else w for i, w in enumerate(tag_words)]
        # Cumulative weights make rng.choices fast enough for a million draws.
        self._word_cw = _cumulative(_zipf_weights(len(self.words)))
        self._name_cw = _cumulative(_zipf_weights(len(self.names)))
        self._tag_cw = _cumulative(_zipf_weights(len(self.tags)))
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def word(self) -> str:
        return self.rng.choices(self.words, cum_weights=self._word_cw)[0]

    def name(self) -> str:
        return self.rng.choices(self.names, cum_weights=self._name_cw)[0]

    def tag(self) -> str:
        return self.rng.choices(self.tags, cum_weights=self._tag_cw)[0]

    def _fill(self, template: str) -> str:
        return re.sub(r"\{(w|N)\}", lambda m: self.word() if m.group(1) == "w" else self.name(), template)

    def sentence(self) -> str:
        text = self._fill(self.rng.choice(MEMORY_TEMPLATES))
        for _ in range(self.rng.choices((0, 1, 2), weights=(45, 40, 15))[0]):
            text += self._fill(self.rng.choice(CLAUSES))
        return text[0].upper() + text[1:] + "."

    def moment(self, within_days: int = SPAN_DAYS) -> datetime:
        return self.now - timedelta(seconds=self.rng.randrange(within_days * 86_400))

    def memory_args(self) -> dict[str, Any]:
        """Arguments of one `remember` call."""
        tag_count = self.rng.choices((0, 1, 2, 3), weights=(25, 40, 25, 10))[0]
        return {
            "content": self.sentence(),
            "kind": self.rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0],
            "tags": list(dict.fromkeys(self.tag() for _ in range(tag_count))),
            "importance": self.rng.choices([i for i, _ in IMPORTANCE], weights=[w for _, w in IMPORTANCE])[0],
            "occurred_at": self.moment().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def fill_memories(self, count: int) -> Iterator[tuple[NewMemory, str]]:
        """`count` memories (with their created_at) in the order sessions would have stored them.

        Sessions are spread over two years, oldest first; each is one client storing 1 to 20 memories a
        few minutes apart, so neighbours in storage order share author, session and day (which recall's
        neighbour expansion looks at). One memory in ten is dated in the past ("met Maya last year").
        """
        lengths: list[int] = []
        while sum(lengths) < count:
            lengths.append(self.rng.randint(1, 20))
        starts = sorted(self.moment() for _ in lengths)
        produced = 0
        seen: set[str] = set()  # an active memory's content is unique: the store would refuse a twin
        for start, length in zip(starts, lengths, strict=True):
            author = self.rng.choice(CLIENTS)
            session_id = f"{self.rng.getrandbits(64):016x}"
            for i in range(length):
                if produced == count:
                    return
                args = self.memory_args()
                while content_key(args["content"]) in seen:
                    args = self.memory_args()
                seen.add(content_key(args["content"]))
                created = start + timedelta(minutes=3 * i, seconds=self.rng.randrange(180))
                if self.rng.random() < 0.9:
                    args["occurred_at"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
                new = NewMemory(
                    content_key=content_key(args["content"]), author=author, session_id=session_id, **args
                )
                produced += 1
                yield new, created.strftime("%Y-%m-%dT%H:%M:%SZ")

    def recall_args(self) -> tuple[str, dict[str, Any]]:
        """(category, arguments) of one `recall` call; queries are 3 to 10 words."""
        category = self.rng.choices([c for c, _ in QUERY_MIX], weights=[w for _, w in QUERY_MIX])[0]
        if category == "empty":
            return category, ({"tags": [self.tag()]} if self.rng.random() < 0.5 else {})
        if category == "keywords":
            query = " ".join(
                self.word() if self.rng.random() < 0.85 else self.name()
                for _ in range(self.rng.randint(3, 6))
            )
        else:
            query = self._fill(self.rng.choice(QUESTION_TEMPLATES))
        args: dict[str, Any] = {"query": query}
        if category == "tag":
            args["tags"] = [self.tag()]
        elif category == "since":
            args["since"] = self.moment(within_days=365).strftime("%Y-%m-%d")
        return category, args


def _cumulative(weights: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


# The fresh-server corpus (--fresh): what the issue measured a new user with. Memories of 15 to 25
# words about people, places, dates and topics, every content word in roughly 0.1 to 10 % of the
# memories: the agent corpus above has tail words far rarer than that (and no places or dates), so
# its common-word queries are fewer. Each pool's words get shares spread evenly in log scale between
# NATURAL_SHARES; a pool's size is what makes its slots per memory land its words in that range.

NATURAL_SHARES = (0.001, 0.1)
NATURAL_TOPICS = 300
NATURAL_NAMES = 65
NATURAL_PLACES = 45
NATURAL_YEARS = range(2002, 2026)
MONTHS = "January February March April May June July August September October November December".split()
NATURAL_TEMPLATES = (
    "{N} told me about the {t} {t} in {P} back in {Y}, and we agreed to {t} it",
    "met {N} in {P} in {M} {Y}; we talked about {t}, {t} and the {t} {t}",
    "{N} prefers {t} over {t} when working on the {t} {t} with {N}",
    "trip to {P} in {M} {Y}: the {t} was {t}, the {t} {t} even better",
    "we decided to {t} the {t} {t} because {N} found the {t} too {t}",
    "lesson from {P}: always {t} the {t} before you {t} the {t} {t}",
    "{N} moved to {P} in {Y} to work on {t} {t} at the {t}",
    "remember that {N} is allergic to {t} and does not like {t} {t} at all",
    "the {t} {t} in {P} broke in {M}; {N} fixed it with a {t} {t}",
    "{N} and {N} plan to {t} the {t} {t} in {P} next {M}",
    "I felt {t} about the {t} {t} today; then ask {N} about {t} earlier",
    "{N} recommended the {t} {t} near {P} for the {t} in {Y}",
)
NATURAL_CLAUSES = (
    ", after a long {t} about {t}",
    "; {N} also mentioned the {t} {t}",
    " (see the {t} notes from {P})",
    ", which matters for the {t} {t}",
    " ahead of the {t} in {M}",
    ", as {N} said in {P}",
    "; the {t} can wait until {M}",
    " and it cost more {t} than planned",
    ", so {N} will bring the {t}",
    " while the {t} was closed",
)
NATURAL_QUESTIONS = (
    "what do I know about {P} {Y}?",
    "{P} {N} {Y}",
    "when did {N} go to {P}?",
    "{N} {t} {P}",
    "who talked about {t} {t}?",
    "what happened in {P} in {Y}?",
    "what did {N} say about {t}?",
    "{t} {t} plans with {N}",
    "where did we {t} the {t}?",
    "tell me about {N} and {t}",
    "anything about {t} in {M} {Y}?",
    "{t} in {P}",
    "what does {N} think of {t}?",
)


def _log_spread(count: int) -> list[float]:
    low, high = NATURAL_SHARES
    return [low * (high / low) ** (i / max(1, count - 1)) for i in range(count)][::-1]


class NaturalCorpus(Corpus):
    """Memories and questions like the issue's ("what do I know about Kyoto Varga 1987?")."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        pools = random.Random(seed + 2)
        self.topics = _pseudo_words(pools, NATURAL_TOPICS, (1, 3))
        self.people = [w.capitalize() for w in _pseudo_words(pools, NATURAL_NAMES, (2, 2))]
        self.places = [w.capitalize() for w in _pseudo_words(pools, NATURAL_PLACES, (2, 3))]
        self.years = [str(y) for y in NATURAL_YEARS]
        self._pools = {
            "t": (self.topics, _cumulative(_log_spread(len(self.topics)))),
            "N": (self.people, _cumulative(_log_spread(len(self.people)))),
            "P": (self.places, _cumulative(_log_spread(len(self.places)))),
            "Y": (self.years, _cumulative(_log_spread(len(self.years)))),
            "M": (list(MONTHS), _cumulative([1.0] * len(MONTHS))),
        }

    def draw(self, pool: str) -> str:
        words, cw = self._pools[pool]
        return self.rng.choices(words, cum_weights=cw)[0]

    def _fill_natural(self, template: str) -> str:
        return re.sub(r"\{(t|N|P|Y|M)\}", lambda m: self.draw(m.group(1)), template)

    def sentence(self) -> str:
        while True:
            text = self._fill_natural(self.rng.choice(NATURAL_TEMPLATES))
            for _ in range(self.rng.choices((0, 1, 2), weights=(30, 45, 25))[0]):
                text += self._fill_natural(self.rng.choice(NATURAL_CLAUSES))
            if 15 <= len(text.split()) <= 25:
                return text[0].upper() + text[1:] + "."

    def question(self) -> str:
        """A question of 3 to 7 words, as a person types it."""
        return self._fill_natural(self.rng.choice(NATURAL_QUESTIONS))


# Filling a database ------------------------------------------------------------------------------


async def fill(path: Path, count: int, corpus: Corpus) -> dict[str, Any]:
    """Store `count` memories through SQLiteStore's own insert path, FILL_BATCH per transaction.

    `AgentSelf.remember` commits (and fsyncs) once per memory, a few hundred a second at best; here
    the same `_insert_memory` (memory row, tag rows, FTS trigger) runs inside one transaction per batch.
    """
    started = time.perf_counter()
    store = await SQLiteStore.open(path, synchronous="OFF")  # a fill that dies is simply redone
    done = 0
    try:
        memories = corpus.fill_memories(count)
        while done < count:
            batch = [next(memories) for _ in range(min(FILL_BATCH, count - done))]
            async with store._transaction() as db:
                for new, created_at in batch:
                    await store._insert_memory(db, new, created_at)
            done += len(batch)
    finally:
        await store.close()
    return {"seconds": round(time.perf_counter() - started, 2), "memories": done}


async def fill_postgres(url: str, count: int, corpus: Corpus) -> dict[str, Any]:
    """The same fill on PostgreSQL, through PostgresStore's own insert path (the memory row with its
    tsvector and term frequencies, the tag rows, the triggers that keep the change log and the text
    totals), FILL_BATCH per transaction."""
    from soul_mcp.storage.postgres import PostgresStore

    started = time.perf_counter()
    store = await PostgresStore.open(url)
    done = stored = 0
    try:
        memories = corpus.fill_memories(count)
        while done < count:
            batch = [next(memories) for _ in range(min(FILL_BATCH, count - done))]
            async with store._transaction() as db:
                for new, created_at in batch:
                    kept = await store._store_memory(db, new, created_at)
                    stored += kept is not None and kept[1]
            done += len(batch)
    finally:
        await store.close()
    seconds = round(time.perf_counter() - started, 2)
    # What autovacuum would otherwise do during the first leg: the visibility map and hint bits
    # set, statistics for the planner; then the dirty pages written out. The SQLite fill is likewise
    # a settled file.
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM (ANALYZE)")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):  # a --db-url user may not
            db.execute("CHECKPOINT")
    return {
        "seconds": seconds,
        "memories": stored,
        "vacuum_s": round(time.perf_counter() - started - seconds, 2),
    }


def corpus_stats(path: Path) -> dict[str, Any]:
    """Size on disk, and how common the head words are: the share of memories holding each one."""
    db = sqlite3.connect(path)
    try:
        total = db.execute("SELECT count(*) FROM memories").fetchone()[0]
        db.execute("CREATE VIRTUAL TABLE temp.bench_vocab USING fts5vocab(main, 'memories_fts', 'row')")
        head = db.execute("SELECT term, doc FROM temp.bench_vocab ORDER BY doc DESC LIMIT 100").fetchall()
    finally:
        db.close()
    # Stemmed index terms; the function words of the templates are left out, as recall drops them.
    top = [(t, d) for t, d in head if t not in STOPWORDS and len(t) > 2][:8]
    return {
        "memories": total,
        "db_mb": round(path.stat().st_size / 1e6, 1),
        "top_terms_doc_share": {t: round(d / total, 3) for t, d in top},
    }


# Server processes --------------------------------------------------------------------------------


# A SQLite file, or a PostgreSQL URL (the --postgres legs).
Db = Path | str


def server_command(db: Db) -> list[str]:
    return [sys.executable, "-m", "soul_mcp", "serve", "--db", str(db)]


def server_env(db: Db) -> dict[str, str]:
    """What a host passes to a stdio server: a cut-down environment plus the database.

    The log level only silences the two INFO lines per start, which would clutter the output.
    PYTHONPATH is passed on when set, so that a scratch copy of soul_mcp can be measured;
    SOUL_MCP_WARM_START=0 too, to measure a start without the warm-start cache (server/warmstart.py).
    """
    keep = {"PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR", "PYTHONPATH", "SOUL_MCP_WARM_START"}
    # libpq's own settings (PGPASSWORD, PGPASSFILE, PGSSLMODE, ...) for a --db-url that needs them.
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PG")}
    env["SOUL_MCP_DB"] = str(db)
    env["SOUL_MCP_LOG_LEVEL"] = "WARNING"
    env["SOUL_MCP_SEMANTIC"] = SEMANTIC  # explicit: with the extra installed, "auto" would be hybrid
    return env


def child_server_pid(db: Db) -> int:
    """The pid of the server the SDK client spawned: our child whose command line names the database."""
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"soul_mcp" in cmdline and str(db).encode() in cmdline:
                return int(pid)
    raise RuntimeError(f"no child server process serving {db} found")


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) from /proc/<pid>/status, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0])
    return out


class RawClient:
    """JSON-RPC over the server's pipes with nothing in between: one line out, one line back."""

    def __init__(self, db: Db) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close(), kept for error messages)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            server_command(db),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=server_env(db),
        )
        self._next_id = 0

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict[str, Any] | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self._next_id

    def response(self, request_id: int) -> tuple[float, dict[str, Any]]:
        """(perf_counter when the answer's line arrived, the answer); skips notifications."""
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            arrived = time.perf_counter()
            if not line:
                self.stderr.seek(0)
                raise RuntimeError(
                    f"the server closed stdout; stderr:\n{self.stderr.read().decode()[-2000:]}"
                )
            answer = json.loads(line)
            if answer.get("id") == request_id:
                if "error" in answer:
                    raise RuntimeError(f"request {request_id} failed: {answer['error']}")
                return arrived, answer

    def handshake(self) -> dict[str, float]:
        """Write initialize, initialized and tools/list at once; seconds from spawn to each answer."""
        init = self.request(
            "initialize",
            {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "bench-raw", "version": "0"},
            },
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = self.request("tools/list")
        init_at, _ = self.response(init)
        tools_at, answer = self.response(tools)
        if not answer["result"]["tools"]:
            raise RuntimeError("tools/list answered with no tools")
        return {"initialize": init_at - self.started, "tools_list": tools_at - self.started}

    def call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        sent = time.perf_counter()
        request_id = self.request("tools/call", {"name": name, "arguments": arguments})
        arrived, answer = self.response(request_id)
        if answer["result"].get("isError"):
            raise RuntimeError(f"{name}({arguments}) failed: {answer['result']['content'][0]['text']}")
        return (arrived - sent) * 1000, answer["result"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # end of input: the server exits on its own
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.stderr.close()


# Statistics --------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of the samples at or below it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50), digits),
        "p95": round(percentile(ordered, 95), digits),
        "p99": round(percentile(ordered, 99), digits),
        "mean": round(statistics.fmean(ordered), digits),
        "max": round(ordered[-1], digits),
    }


def by_category(samples: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[float]] = {}
    for category, ms in samples:
        groups.setdefault(category, []).append(ms)
    return {c: summary(v) for c, v in sorted(groups.items())}


# Measurements ------------------------------------------------------------------------------------


@dataclass
class Workload:
    recalls: list[tuple[str, dict[str, Any]]]
    remembers: list[dict[str, Any]]
    warmup_recalls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    first_recall: dict[str, Any] = field(default_factory=lambda: {"query": "what did we decide"})
    settle_s: float = 5.0
    warmup_remembers: list[dict[str, Any]] = field(default_factory=list)


async def measure_sdk(db: Db, work: Workload, mode: str) -> dict[str, Any]:
    """Recall and remember round trips through the SDK's stdio client."""
    from mcp import Client, StdioServerParameters

    command, *args = server_command(db)
    params = StdioServerParameters(command=command, args=args, env=server_env(db))
    async with Client(params, mode=mode) as client:
        await client.list_tools()
        pid = child_server_pid(db)
        rss_loaded = memory_kb(pid)

        async def call(name: str, arguments: dict[str, Any]) -> tuple[float, Any]:
            started = time.perf_counter()
            result = await client.call_tool(name, arguments)
            elapsed = (time.perf_counter() - started) * 1000
            if result.is_error:
                raise RuntimeError(f"{name}({arguments}) failed: {result.content[0].text}")
            return elapsed, result

        # The first text recall loads the server's recall index (recall/index.py) and starts
        # the thread that fetches the commonest words; timed apart, then given SETTLE_S to finish.
        first_ms, _ = await call("recall", work.first_recall)
        for _, arguments in work.warmup_recalls:
            await call("recall", arguments)
        for arguments in work.warmup_remembers:
            await call("remember", arguments)
        await asyncio.sleep(work.settle_s)

        recall_samples: list[tuple[str, float]] = []
        slowest: list[dict[str, Any]] = []
        for category, arguments in work.recalls:
            ms, result = await call("recall", arguments)
            recall_samples.append((category, ms))
            slowest.append(
                {
                    "ms": round(ms, 2),
                    "category": category,
                    "args": arguments,
                    "hits": len(result.structured_content["hits"]),
                }
            )

        # Each remember is followed by a recall: what a recall costs right after a write (the
        # index reads the change log; new memories reach the words it holds).
        remember_ms: list[float] = []
        after_write_ms: list[float] = []
        duplicates = 0
        for arguments, (_, recall_arguments) in zip(work.remembers, itertools.cycle(work.recalls)):
            ms, result = await call("remember", arguments)
            remember_ms.append(ms)
            duplicates += not result.structured_content["is_new"]
            after_write_ms.append((await call("recall", recall_arguments))[0])
        rss_after = memory_kb(pid)
        # The later legs time recall in the steady state: not while a new server embeds what this
        # leg stored (each holds back for requests, but embeds every MAX_DEFER_S even under a stream).
        catch_up_s = await wait_for_indexer(db)

    slowest.sort(key=lambda s: s["ms"], reverse=True)
    return {
        "recall": summary([ms for _, ms in recall_samples]),
        "recall_by_category": by_category(recall_samples),
        "recall_slowest": slowest[:10],
        "remember": summary(remember_ms),
        "remember_duplicates": duplicates,
        "first_recall_ms": round(first_ms, 1),
        "recall_after_write": summary(after_write_ms),
        "indexer_catch_up_s": catch_up_s,
        "rss_kb": {
            "after_load": rss_loaded["VmRSS"],
            "after_workload": rss_after["VmRSS"],
            "peak": rss_after["VmHWM"],
        },
    }


async def wait_for_indexer(db: Db, timeout_s: float = 600.0) -> float | None:
    """In a hybrid run, wait until the running server's indexer has embedded every active memory;
    returns the seconds waited (None when recall is BM25 alone, and on PostgreSQL: BM25 only)."""
    if SEMANTIC == "off" or isinstance(db, str):
        return None
    from soul_mcp.semantic.embedders import LocalE5

    started = time.perf_counter()
    store = await SQLiteStore.open(db)
    try:
        while time.perf_counter() - started < timeout_s:
            embedded, active = await store.embedding_counts(LocalE5.name)
            if embedded >= active:
                break
            await asyncio.sleep(0.5)
    finally:
        await store.close()
    return round(time.perf_counter() - started, 1)


def measure_raw(db: Db, work: Workload) -> dict[str, Any]:
    """The same recalls through the raw client: the server's latency plus the pipes, nothing else."""
    client = RawClient(db)
    try:
        client.handshake()
        client.call_tool("recall", work.first_recall)
        for _, arguments in work.warmup_recalls:
            client.call_tool("recall", arguments)
        time.sleep(work.settle_s)
        samples = [
            (category, client.call_tool("recall", arguments)[0]) for category, arguments in work.recalls
        ]
    finally:
        client.close()
    return {"recall": summary([ms for _, ms in samples]), "recall_by_category": by_category(samples)}


NODE_MODULES = Path(__file__).resolve().parent.parent / ".ci" / "node_modules"
TS_SCRIPT = Path(__file__).resolve().parent / "ts_recalls.mjs"


def measure_ts(db: Path, work: Workload) -> dict[str, Any] | None:
    """The same recalls through the TypeScript SDK's stdio client (bench/ts_recalls.mjs), which the
    common hosts are built on; None without node or the SDK in .ci/node_modules (.ci/run installs it)."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "@modelcontextprotocol" / "sdk").is_dir():
        return None
    with tempfile.TemporaryDirectory() as scratch:
        workload = Path(scratch) / "workload.json"
        workload.write_text(
            json.dumps(
                {
                    "first": work.first_recall,
                    "warmup": [arguments for _, arguments in work.warmup_recalls],
                    "settle_s": work.settle_s,
                    "recalls": [arguments for _, arguments in work.recalls],
                }
            )
        )
        env = {**server_env(db), "MCP_NODE_MODULES": str(NODE_MODULES)}
        done = subprocess.run(
            [node, str(TS_SCRIPT), str(workload), *server_command(db)],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the TypeScript client failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    samples = [(category, ms) for (category, _), ms in zip(work.recalls, out["ms"], strict=True)]
    return {
        "sdk_version": out["sdkVersion"],
        "first_recall_ms": round(out["first_ms"], 1),
        "recall": summary([ms for _, ms in samples]),
        "recall_by_category": by_category(samples),
    }


async def measure_in_process(db: Db, work: Workload) -> dict[str, Any]:
    """The same recalls through AgentSelf.recall in this process: the domain and SQL, no MCP."""
    if isinstance(db, str):
        settings = Settings(db_path=Settings.load(db).db_path, db_url=db, semantic=Semantic(mode="off"))
    else:
        settings = Settings(db_path=db, semantic=Semantic(mode=SEMANTIC))
    agent_self = await AgentSelf.open(settings)
    try:
        await agent_self.recall(**work.first_recall)
        for _, arguments in work.warmup_recalls:
            await agent_self.recall(**arguments)
        await asyncio.sleep(work.settle_s)
        samples: list[tuple[str, float]] = []
        for category, arguments in work.recalls:
            started = time.perf_counter()
            await agent_self.recall(**arguments)
            samples.append((category, (time.perf_counter() - started) * 1000))
    finally:
        await agent_self.close()
    return {"recall": summary([ms for _, ms in samples]), "recall_by_category": by_category(samples)}


async def cold_start_sdk(db: Path, runs: int, mode: str) -> dict[str, Any]:
    """Seconds from creating the SDK client (which spawns the server) to the first tools/list answer."""
    from mcp import Client, StdioServerParameters

    command, *args = server_command(db)
    params = StdioServerParameters(command=command, args=args, env=server_env(db))
    seconds: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        async with Client(params, mode=mode) as client:
            await client.list_tools()
            seconds.append(time.perf_counter() - started)
    return {
        "median_s": round(statistics.median(seconds), 3),
        "p95_s": round(percentile(sorted(seconds), 95), 3),
        "min_s": round(min(seconds), 3),
        "runs": [round(s, 3) for s in seconds],
    }


def cold_start_raw(db: Path, runs: int) -> dict[str, Any]:
    """Seconds from spawn to the initialize and tools/list answers, with the raw client."""
    to_init: list[float] = []
    to_tools: list[float] = []
    for _ in range(runs):
        client = RawClient(db)
        try:
            times = client.handshake()
        finally:
            client.close()
        to_init.append(times["initialize"])
        to_tools.append(times["tools_list"])
    return {
        "median_s": round(statistics.median(to_tools), 3),
        "p95_s": round(percentile(sorted(to_tools), 95), 3),
        "min_s": round(min(to_tools), 3),
        "initialize_median_s": round(statistics.median(to_init), 3),
        "runs": [round(s, 3) for s in to_tools],
    }


# Fresh servers (--fresh) ----------------------------------------------------------------------------
#
# What a person meets: every stdio host starts its own server for each session, so most answers come
# from a server that has just started. Each session spawns a server and asks its questions at once,
# with no warm-up and no settle time. The targets, at 100k memories:
FRESH_TARGETS = {
    "tools_list_s": 0.25,
    "first_recall_ms": 30.0,
    "early_p50_ms": 5.0,
    "early_p95_ms": 15.0,
    "late_p50_ms": 4.0,
    "late_p95_ms": 10.0,
}
ERAS = (("legacy", "handshake era"), ("auto", "2026-07-28 era"))
EARLIER_QUESTIONS = 3  # the untimed session before the measured ones
EARLY = slice(0, 50)  # recalls 1-50 after the spawn (the first one included)
LATE = slice(150, 200)  # recalls 151-200


async def fresh_session(
    db: Path, mode: str, questions: list[str], remembers: list[dict[str, Any]], gap_s: float = 0.0
) -> dict[str, Any]:
    """One fresh server: spawn to the first tools/list answer, the questions one after the other,
    then remember + recall pairs (a recall right after a write, in the same young server)."""
    from mcp import Client, StdioServerParameters

    command, *args = server_command(db)
    params = StdioServerParameters(command=command, args=args, env=server_env(db))
    started = time.perf_counter()
    async with Client(params, mode=mode) as client:
        tools = await client.list_tools()
        listed_s = time.perf_counter() - started
        # The server is up once the SDK answers a request the warm start cannot (prompts/list). A
        # host's model takes seconds before its first call; a call sent earlier waits about this
        # long more (spawn -> first recall answered shows both together).
        await client.list_prompts()
        ready_s = time.perf_counter() - started
        warm_client_validators(client, tools.tools)

        async def call(name: str, arguments: dict[str, Any]) -> float:
            began = time.perf_counter()
            result = await client.call_tool(name, arguments)
            if result.is_error:
                raise RuntimeError(f"{name}({arguments}) failed: {result.content}")
            return (time.perf_counter() - began) * 1000

        recall_ms = []
        for n, question in enumerate(questions):
            if n and gap_s:
                await asyncio.sleep(gap_s)
            recall_ms.append(await call("recall", {"query": question}))
        after_write_ms = []
        for arguments, question in zip(remembers, questions, strict=False):
            await call("remember", arguments)
            after_write_ms.append(await call("recall", {"query": question}))
    return {
        "tools_list_s": listed_s,
        "ready_s": ready_s,
        "recall_ms": recall_ms,
        "after_write_ms": after_write_ms,
    }


def warm_client_validators(client: Any, tools: list[Any]) -> None:
    """The Python client checks each result against its tool's output schema; at its first call it
    imports jsonschema (~0.1 s) and compiles the schema (~10 ms): the client's cost, not the
    server's, which would otherwise land on the first recall. Done ahead here, where the SDK allows."""
    import jsonschema  # noqa: F401

    compile_schema = getattr(client.session, "_output_schema_validator", None)
    for tool in tools:
        if compile_schema is not None and tool.output_schema is not None:
            compile_schema(tool.name, tool.output_schema)


async def measure_fresh(size: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`--fresh-runs` fresh servers per protocol era on the natural corpus (NaturalCorpus)."""
    print(f"\n== {size:,} memories, fresh servers", file=sys.stderr)
    db, fill_info = await prepare_db(size, args.seed, workdir, natural=args.corpus == "natural")
    print(f"   database ready: {fill_info}", file=sys.stderr)
    corpus = NaturalCorpus(args.seed)
    corpus.rng = random.Random(args.seed * 1_000 + 2)
    result: dict[str, Any] = {"memories": size, "fill": fill_info, "load_before": os.getloadavg()[0]}
    # A session before the measured ones, as a person's earlier session would have run: a few
    # questions seconds apart (a host's model takes that long between calls). Whatever the server
    # keeps between starts (the warm-start cache, the recall snapshot) is written then.
    for mode, _ in ERAS:
        questions = [corpus.question() for _ in range(EARLIER_QUESTIONS)]
        await fresh_session(db, mode, questions, [], gap_s=args.earlier_gap)
    sessions: dict[str, list[dict[str, Any]]] = {mode: [] for mode, _ in ERAS}
    for run in range(args.fresh_runs):
        # Alternate which era goes first, so that neither always follows the other's writes.
        for mode, _ in ERAS if run % 2 == 0 else ERAS[::-1]:
            print(f"   run {run + 1}/{args.fresh_runs}, mode={mode} ...", file=sys.stderr)
            questions = [corpus.question() for _ in range(args.fresh_questions)]
            remembers = [corpus.memory_args() for _ in range(args.fresh_remembers)]
            sessions[mode].append(await fresh_session(db, mode, questions, remembers))
    result["eras"] = {mode: fresh_summary(runs) for mode, runs in sessions.items()}
    result["after_short_session"] = await after_short_session(db, corpus, args)
    result["load_after"] = os.getloadavg()[0]
    return result


async def after_short_session(db: Path, corpus: NaturalCorpus, args: argparse.Namespace) -> dict[str, Any]:
    """The worst case of the first sessions: a copy of the database with no recall snapshot (the
    first start ever, or after an upgrade), a session that asks its questions within a second and
    ends (so the index it leaves is partial), then one measured session (handshake era)."""
    copy = db.with_name(db.stem + "-short.db")

    def remove_copy() -> None:  # the database and everything the server keeps beside it
        for path in copy.parent.glob(glob.escape(copy.name) + "*"):
            path.unlink(missing_ok=True)

    remove_copy()
    shutil.copyfile(db, copy)
    try:
        first = await fresh_session(copy, "legacy", [corpus.question() for _ in range(EARLIER_QUESTIONS)], [])
        questions = [corpus.question() for _ in range(args.fresh_questions)]
        after = await fresh_session(copy, "legacy", questions, [])
    finally:
        remove_copy()
    return {
        "first_recall_without_snapshot_ms": round(first["recall_ms"][0], 1),
        "early": summary(after["recall_ms"][EARLY]),
        "late": summary(after["recall_ms"][LATE]),
    }


def fresh_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per era: each run's figures, and the recalls of every run pooled by position."""
    listed = [r["tools_list_s"] for r in runs]
    first = [r["recall_ms"][0] for r in runs]
    # The first recall is asked once the server is up (fresh_session); the time from the spawn to
    # its answer is what a call sent at once would take at least.
    answered = [r["ready_s"] + r["recall_ms"][0] / 1000 for r in runs]
    ready = [r["ready_s"] for r in runs]
    return {
        "runs": len(runs),
        "tools_list_s": {"median": round(statistics.median(listed), 3), "max": round(max(listed), 3)},
        "ready_s": {"median": round(statistics.median(ready), 3), "max": round(max(ready), 3)},
        "first_recall_ms": {"median": round(statistics.median(first), 1), "max": round(max(first), 1)},
        "spawn_to_first_recall_s": {
            "median": round(statistics.median(answered), 3),
            "max": round(max(answered), 3),
        },
        "early": summary([ms for r in runs for ms in r["recall_ms"][EARLY]]),
        "late": summary([ms for r in runs for ms in r["recall_ms"][LATE]]),
        "after_write": summary([ms for r in runs for ms in r["after_write_ms"]])
        if runs[0]["after_write_ms"]
        else None,
        "per_run": [
            {
                "tools_list_s": round(r["tools_list_s"], 3),
                "first_recall_ms": round(r["recall_ms"][0], 1),
                "recalls_1_to_10_ms": [round(ms, 1) for ms in r["recall_ms"][:10]],
                "early": summary(r["recall_ms"][EARLY]),
                "late": summary(r["recall_ms"][LATE]),
            }
            for r in runs
        ],
    }


def model_load() -> dict[str, float]:
    """Hybrid's extra cost at a start: a fresh interpreter that loads the local model and embeds one
    question, minus one that only imports the module (median of 3)."""
    py = sys.executable
    imported = "from soul_mcp.semantic.embedders import LocalE5; import os; "
    loaded = timed_command(
        [py, "-c", imported + "LocalE5().embed_queries(['what about Kyoto']); os._exit(0)"], 3
    )
    bare = timed_command([py, "-c", imported + "os._exit(0)"], 3)
    return {"model_load_s": round(loaded["median_s"] - bare["median_s"], 3), "import_s": bare["median_s"]}


def print_fresh_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    recall = "hybrid (local model)" if SEMANTIC != "off" else "BM25"
    print(
        f"\nsoul-mcp {m['soul_mcp']} ({m['git']}), mcp {m['mcp']}, Python {m['python']}, SQLite {m['sqlite']}, "
        f"{m['cpus']} CPUs; fresh servers, recall {recall}, corpus {report['args']['corpus']}"
    )
    t = FRESH_TARGETS
    for row in report["sizes"]:
        eras = row["eras"]
        runs = eras["legacy"]["runs"]
        print(
            f"\n| fresh server, {row['memories']:,} memories ({runs} spawns per era, "
            f"load {row['load_before']:.1f}) | handshake era | 2026-07-28 era | target |"
        )
        print("|---|---|---|---|")
        # The targets are the issue's, at 100k memories: marked there only.
        marked = row["memories"] >= 100_000

        def line(label: str, cells: list[str], target: str) -> None:
            print(f"| {label} | {' | '.join(cells)} | {target} |")

        def mark(value: float, target: float, marked: bool = marked) -> str:
            return f" {_mark(value, target)}" if marked else ""

        line(
            "spawn -> first `tools/list`, median (max), s",
            [
                f"{e['tools_list_s']['median']:.3f} ({e['tools_list_s']['max']:.3f})"
                f"{mark(e['tools_list_s']['median'], t['tools_list_s'])}"
                for e in eras.values()
            ],
            f"<= {t['tools_list_s']}",
        )
        line(
            "spawn -> server up (`prompts/list` answered by the SDK), median (max), s",
            [f"{e['ready_s']['median']:.3f} ({e['ready_s']['max']:.3f})" for e in eras.values()],
            "-",
        )
        line(
            "first recall after the start, median (max), ms",
            [
                f"{e['first_recall_ms']['median']:.1f} ({e['first_recall_ms']['max']:.1f})"
                f"{mark(e['first_recall_ms']['median'], t['first_recall_ms'])}"
                for e in eras.values()
            ],
            f"<= {t['first_recall_ms']:g}",
        )
        line(
            "spawn -> first recall answered, median (max), s",
            [
                f"{e['spawn_to_first_recall_s']['median']:.3f} ({e['spawn_to_first_recall_s']['max']:.3f})"
                for e in eras.values()
            ],
            "-",
        )
        for label, key in (("recalls 1-50", "early"), ("recalls 151-200", "late")):
            line(
                f"{label} after the start, p50 / p95, ms",
                [
                    f"{e[key]['p50']:.2f} / {e[key]['p95']:.2f}"
                    f"{mark(e[key]['p50'], t[key + '_p50_ms'])}{mark(e[key]['p95'], t[key + '_p95_ms'])}"
                    for e in eras.values()
                ],
                f"<= {t[key + '_p50_ms']:g} / {t[key + '_p95_ms']:g}",
            )
        short = row.get("after_short_session")
        if short:
            line(
                "after a first-ever start whose session ended within a second: its first recall, ms; "
                "the next server's recalls 1-50 / 151-200, p50 / p95, ms",
                [
                    f"{short['first_recall_without_snapshot_ms']:.0f}; {short['early']['p50']:.1f} / "
                    f"{short['early']['p95']:.1f}; {short['late']['p50']:.1f} / {short['late']['p95']:.1f}",
                    "-",
                ],
                "-",
            )
        if eras["legacy"]["after_write"]:
            line(
                "recall right after a remember, p50 / p95, ms",
                [f"{e['after_write']['p50']:.2f} / {e['after_write']['p95']:.2f}" for e in eras.values()],
                "as fast",
            )
    if report.get("model"):
        model = report["model"]
        print(
            f"\nhybrid: loading the local model and embedding one question takes {model['model_load_s']:.2f} s "
            f"in a fresh interpreter (beyond importing its module, {model['import_s']:.2f} s)"
        )


def timed_command(argv: list[str], runs: int) -> dict[str, float]:
    """Wall-clock seconds of a command, median and fastest (after one untimed run that warms the
    .pyc cache). On a busy machine the fastest run is the better estimate of the cost itself."""
    subprocess.run(argv, check=True, capture_output=True)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3)}


def importtime(argv: list[str]) -> dict[str, Any]:
    """`python -X importtime`: self time summed per top-level package, and soul_mcp's modules."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], check=True, capture_output=True, text=True
    )
    per_package: Counter[str] = Counter()
    own: dict[str, float] = {}
    for line in run.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if not match:
            continue
        self_us, module = int(match.group(1)), match.group(4)
        per_package[module.split(".")[0]] += self_us
        if module.split(".")[0] == "soul_mcp":
            own[module] = own.get(module, 0) + self_us / 1000
    return {
        "total_ms": round(sum(per_package.values()) / 1000, 1),
        "soul_mcp_ms": round(sum(own.values()), 1),
        "soul_mcp_modules_ms": {m: round(ms, 1) for m, ms in sorted(own.items(), key=lambda kv: -kv[1])[:6]},
        "top_packages_ms": {p: round(us / 1000, 1) for p, us in per_package.most_common(10)},
    }


def measure_imports(runs: int) -> dict[str, Any]:
    """Spawn-to-imported wall times. `os._exit` skips the interpreter's teardown (~0.15 s of freeing
    the SDK's models), which cold start does not include either: it ends at the tools/list answer."""
    py = sys.executable

    def imported(module: str) -> list[str]:
        return [py, "-c", f"import {module}; import os; os._exit(0)"]

    return {
        "python_startup_s": timed_command(imported("os"), runs),
        "import_mcp_server_s": timed_command(imported("mcp.server.mcpserver"), runs),
        "import_soul_mcp_server_s": timed_command(imported("soul_mcp.server.app"), runs),
        "soul_mcp_version_s": timed_command([py, "-m", "soul_mcp", "version"], runs),
        "importtime_version": importtime(["-m", "soul_mcp", "version"]),
        "importtime_server": importtime(["-c", "import soul_mcp.server.app"]),
    }


# Driver ------------------------------------------------------------------------------------------


async def prepare_db(
    size: int, seed: int, workdir: Path, natural: bool = False
) -> tuple[Path, dict[str, Any]]:
    """A filled database for `size`, reused from the workdir when an identical fill is there."""
    if natural:
        filled = workdir / f"fill-{size}-s{seed}-natural-v{NATURAL_VERSION}.db"
        corpus: Corpus = NaturalCorpus(seed)
    else:
        filled = workdir / f"fill-{size}-s{seed}-v{CORPUS_VERSION}.db"
        corpus = Corpus(seed)
    if filled.exists():
        info: dict[str, Any] = {"seconds": None, "memories": size, "reused": True}
    else:
        partial = filled.with_suffix(".partial")
        for leftover in workdir.glob(partial.name + "*"):
            leftover.unlink()
        info = await fill(partial, size, corpus)
        partial.rename(filled)
    info.update(corpus_stats(filled))
    # Measure on a copy: remember adds memories, and the fill stays reusable.
    run_db = workdir / (f"run-{size}-natural.db" if natural else f"run-{size}.db")
    for old in workdir.glob(run_db.name + "*"):
        old.unlink()
    shutil.copyfile(filled, run_db)
    if SEMANTIC != "off":
        info["vectors"] = add_random_vectors(run_db, seed)
    return run_db, info


def add_random_vectors(db: Path, seed: int) -> dict[str, Any]:
    """Give every active memory an embedding, as the background indexer would, but random.

    Embedding 100k memories for real takes the local model ~20 min on two cores; the cost of a
    hybrid recall does not depend on the vectors' values (an exact product with all of them, then
    the same SQL for a fixed number of candidates), so random unit vectors measure it as well. The
    query is embedded for real, by the model, in the server. Rows carry the local model's name.
    """
    import numpy as np

    from soul_mcp.semantic.embedders import LocalE5

    started = time.perf_counter()
    conn = sqlite3.connect(db)
    try:
        rowids = [r for (r,) in conn.execute("SELECT rowid FROM memories WHERE status = 'active'")]
        vectors = np.random.default_rng(seed).standard_normal((len(rowids), 384), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO memory_embeddings (memory_rowid, model, dims, text_hash, vector) "
                "VALUES (?, ?, 384, 'bench-random', ?)",
                [
                    (rowid, LocalE5.name, v.astype("<f4").tobytes())
                    for rowid, v in zip(rowids, vectors, strict=True)
                ],
            )
    finally:
        conn.close()
    return {"random_vectors": len(rowids), "seconds": round(time.perf_counter() - started, 2)}


async def measure_postgres(
    size: int, args: argparse.Namespace, work: Workload, postgres: PostgresServer
) -> dict[str, Any]:
    """The SDK, raw and in-process legs on a PostgreSQL database filled like the SQLite one."""
    corpus: Corpus = NaturalCorpus(args.seed) if args.corpus == "natural" else Corpus(args.seed)
    # The SDK leg's server is the first on this database: no recall snapshot yet (it is kept in the
    # user's cache folder), so its prefill reads the common words at its start; its legs settle longer.
    work = dataclasses.replace(work, settle_s=args.settle_postgres)
    with postgres.database(f"soul_bench_{size}", keep=args.keep_db) as url:
        print("   PostgreSQL: filling ...", file=sys.stderr)
        result: dict[str, Any] = {"fill": await fill_postgres(url, size, corpus)}
        print(f"   PostgreSQL: database ready: {result['fill']}", file=sys.stderr)
        result["load_before"] = os.getloadavg()[0]
        print("   PostgreSQL: SDK stdio client: recall, remember ...", file=sys.stderr)
        result["sdk"] = await measure_sdk(url, work, args.mode)
        print("   PostgreSQL: raw stdio client: recall ...", file=sys.stderr)
        result["raw"] = await asyncio.to_thread(measure_raw, url, work)
        print("   PostgreSQL: in-process AgentSelf.recall ...", file=sys.stderr)
        result["in_process"] = await measure_in_process(url, work)
    return result


async def measure_size(
    size: int, args: argparse.Namespace, workdir: Path, postgres: PostgresServer | None = None
) -> dict[str, Any]:
    print(f"\n== {size:,} memories", file=sys.stderr)
    db, fill_info = await prepare_db(size, args.seed, workdir, natural=args.corpus == "natural")
    print(f"   database ready: {fill_info}", file=sys.stderr)

    # The workload's own seed, distinct from the fill's, so queries are not the fill's sentences.
    corpus = Corpus(args.seed)
    corpus.rng = random.Random(args.seed * 1_000 + 1)
    work = Workload(
        recalls=[corpus.recall_args() for _ in range(args.queries)],
        remembers=[corpus.memory_args() for _ in range(args.remembers)],
        warmup_recalls=[corpus.recall_args() for _ in range(args.warmup)],
        warmup_remembers=[corpus.memory_args() for _ in range(3)],
        settle_s=args.settle,
    )
    # The machine may be shared: the load average says how quiet it was while this size ran.
    result: dict[str, Any] = {"memories": size, "fill": fill_info, "load_before": os.getloadavg()[0]}
    print("   SDK stdio client: recall, remember ...", file=sys.stderr)
    result["sdk"] = await measure_sdk(db, work, args.mode)
    print("   raw stdio client: recall ...", file=sys.stderr)
    result["raw"] = await asyncio.to_thread(measure_raw, db, work)
    print("   TypeScript SDK stdio client: recall ...", file=sys.stderr)
    result["ts"] = await asyncio.to_thread(measure_ts, db, work)
    print("   in-process AgentSelf.recall ...", file=sys.stderr)
    result["in_process"] = await measure_in_process(db, work)
    if postgres is not None:
        result["postgres"] = await measure_postgres(size, args, work, postgres)
    print(f"   cold start x{args.cold_runs} (SDK, raw) ...", file=sys.stderr)
    result["cold_start_sdk"] = await cold_start_sdk(db, args.cold_runs, args.mode)
    result["cold_start_raw"] = await asyncio.to_thread(cold_start_raw, db, args.cold_runs)
    result["load_after"] = os.getloadavg()[0]
    return result


def _mark(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"\nsoul-mcp {m['soul_mcp']} ({m['git']}), mcp {m['mcp']}, Python {m['python']}, SQLite {m['sqlite']}, "
        f"{m['cpus']} CPUs; SDK client mode={report['args']['mode']}"
    )
    print("\nround trips in ms (targets at 100k: recall p50 <= 5, p95 <= 15 over stdio)")
    if SEMANTIC != "off":
        print(f"hybrid recall ({SEMANTIC} model): p95 target {HYBRID_P95_MS:g} ms; p50 marked against 5")
    header = f"{'memories':>9}  {'call':<22} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  {'load':>4}"
    print(header + "\n" + "-" * len(header))
    for row in report["sizes"]:
        lines = (
            ("remember, Python SDK", row["sdk"]["remember"]),
            ("recall, Python SDK", row["sdk"]["recall"]),
            ("recall after remember", row["sdk"]["recall_after_write"]),
            *([("recall, TS SDK", row["ts"]["recall"])] if row.get("ts") else []),
            ("recall, raw stdio", row["raw"]["recall"]),
            ("recall, in-process", row["in_process"]["recall"]),
        )
        for i, (what, s) in enumerate(lines):
            size, load = (f"{row['memories']:,}", f"{row['load_before']:.1f}") if i == 0 else ("", "")
            mark = ""
            if what in ("recall, Python SDK", "recall, TS SDK") and row["memories"] >= 100_000:
                p50, p95 = (
                    _mark(s["p50"], TARGETS["recall_p50_ms"]),
                    _mark(s["p95"], TARGETS["recall_p95_ms"]),
                )
                mark = f"  p50 {p50}, p95 {p95}"
            print(
                f"{size:>9}  {what:<22} {s['p50']:>7.2f} {s['p95']:>7.2f} {s['p99']:>7.2f} {s['max']:>7.2f}"
                f"  {load:>4}{mark}"
            )

    if any("postgres" in row for row in report["sizes"]):
        print_postgres_report(report)

    categories = [c for c, _ in QUERY_MIX]
    print("\nrecall p50 / p95 by kind of query (SDK stdio, ms)")
    print(f"{'memories':>9}  " + "".join(f"{c:>16}" for c in categories))
    for row in report["sizes"]:
        found = row["sdk"]["recall_by_category"]
        cells = [f"{found[c]['p50']:.2f} / {found[c]['p95']:.2f}" if c in found else "-" for c in categories]
        print(f"{row['memories']:>9,}  " + "".join(f"{c:>16}" for c in cells))

    print(
        f"\ncold start: spawn to the first tools/list answer, s (target <= {TARGETS['cold_start_s']}); server RSS"
    )
    header = (
        f"{'memories':>9}  {'SDK med':>7} {'SDK p95':>7} {'raw med':>7} {'raw p95':>7} {'raw min':>8}"
        f"  {'RSS loaded':>10} {'RSS end':>8} {'RSS peak':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for row in report["sizes"]:
        sdk, raw, rss = row["cold_start_sdk"], row["cold_start_raw"], row["sdk"]["rss_kb"]
        print(
            f"{row['memories']:>9,}  {sdk['median_s']:>7.3f} {sdk['p95_s']:>7.3f} {raw['median_s']:>7.3f} "
            f"{raw['p95_s']:>7.3f} {raw['min_s']:>8.3f}  {rss['after_load'] / 1024:>8.1f}MB "
            f"{rss['after_workload'] / 1024:>6.1f}MB {rss['peak'] / 1024:>6.1f}MB  "
            f"{_mark(raw['median_s'], TARGETS['cold_start_s'])}"
        )
    print("\nfirst text recall after start (loads the recall index; SDK stdio), ms")
    for row in report["sizes"]:
        print(f"{row['memories']:>9,}  {row['sdk']['first_recall_ms']:>8.1f}")
    if any(row["sdk"].get("indexer_catch_up_s") is not None for row in report["sizes"]):
        print("\nthe SDK leg's remembers embedded by its server before the next legs, s")
        for row in report["sizes"]:
            print(f"{row['memories']:>9,}  {row['sdk']['indexer_catch_up_s']:>8.1f}")

    imports = report.get("imports")
    if imports:
        print("\nwhere cold start goes: wall time of a fresh interpreter, s")
        for label, key in (
            ("python startup (no teardown)", "python_startup_s"),
            ("+ import mcp.server.mcpserver", "import_mcp_server_s"),
            ("+ import soul_mcp.server.app", "import_soul_mcp_server_s"),
            ("python -m soul_mcp version", "soul_mcp_version_s"),
        ):
            print(f"  {label:<42} median {imports[key]['median_s']:.3f}  fastest {imports[key]['min_s']:.3f}")
        server, version = imports["importtime_server"], imports["importtime_version"]
        print(
            f"  python -X importtime -c 'import soul_mcp.server.app': {server['total_ms']} ms of imports "
            f"(importtime inflates this), soul_mcp's own modules {server['soul_mcp_ms']} ms"
        )
        print(
            "    self time by package, ms: "
            + ", ".join(f"{p} {ms}" for p, ms in server["top_packages_ms"].items())
        )
        print(
            "    soul_mcp modules, ms: "
            + ", ".join(f"{m} {ms}" for m, ms in server["soul_mcp_modules_ms"].items())
        )
        print(
            f"  python -X importtime -m soul_mcp version: {version['total_ms']} ms of imports, "
            f"soul_mcp's own {version['soul_mcp_ms']} ms"
        )


def print_postgres_report(report: dict[str, Any]) -> None:
    """SQLite and PostgreSQL side by side: the same fill and workload, in this run."""
    print("\nSQLite beside PostgreSQL (database on loopback), the same fill and calls, ms")
    print("targets at 100k: recall p50 <= 5, p95 <= 15 (SDK stdio); remember p50 <= 5")
    header = (
        f"{'memories':>9}  {'call':<22} {'SQLite p50 / p95':>18} {'PostgreSQL p50 / p95':>22}  {'load':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for row in report["sizes"]:
        pg = row.get("postgres")
        if pg is None:
            continue
        lines = (
            ("remember, Python SDK", row["sdk"]["remember"], pg["sdk"]["remember"]),
            ("recall, Python SDK", row["sdk"]["recall"], pg["sdk"]["recall"]),
            ("recall after remember", row["sdk"]["recall_after_write"], pg["sdk"]["recall_after_write"]),
            ("recall, raw stdio", row["raw"]["recall"], pg["raw"]["recall"]),
            ("recall, in-process", row["in_process"]["recall"], pg["in_process"]["recall"]),
        )
        for i, (what, lite, post) in enumerate(lines):
            size = f"{row['memories']:,}" if i == 0 else ""
            load = f"{row['load_before']:.1f} / {pg['load_before']:.1f}" if i == 0 else ""
            mark = ""
            if row["memories"] >= 100_000 and what in ("recall, Python SDK", "remember, Python SDK"):
                mark = f"  p50 {_mark(post['p50'], TARGETS['recall_p50_ms'])}"
                if what.startswith("recall"):
                    mark += f", p95 {_mark(post['p95'], TARGETS['recall_p95_ms'])}"
            print(
                f"{size:>9}  {what:<22} {lite['p50']:>8.2f} / {lite['p95']:<7.2f} "
                f"{pg_cell(post):>22}  {load:>9}{mark}"
            )
        print(
            f"{'':>9}  first recall: SQLite {row['sdk']['first_recall_ms']:.1f} ms, PostgreSQL "
            f"{pg['sdk']['first_recall_ms']:.1f} ms; PostgreSQL fill {pg['fill']['seconds']} s"
        )


def pg_cell(s: dict[str, Any]) -> str:
    return f"{s['p50']:.2f} / {s['p95']:.2f}"


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    root = Path(__file__).resolve().parent.parent
    git = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return {
        "soul_mcp": __version__,
        "git": git.stdout.strip() or None,
        "mcp": version("mcp"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated memory counts")
    parser.add_argument("--queries", type=int, default=500, help="timed recall calls per size")
    parser.add_argument("--remembers", type=int, default=200, help="timed remember calls per size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed recall calls first")
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds to wait after the warm-up, while the server fetches the commonest words",
    )
    parser.add_argument("--cold-runs", type=int, default=10, help="cold starts per client kind and size")
    parser.add_argument(
        "--mode",
        default="legacy",
        choices=["legacy", "auto"],
        help="SDK client era: legacy = initialize handshake (what hosts speak today), "
        "auto = 2026 era (default: legacy)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workdir", type=Path, help="keep filled databases here and reuse them on later runs"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the temporary databases (path printed)")
    parser.add_argument("--skip-imports", action="store_true", help="do not time the imports")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--semantic",
        action="store_true",
        help="hybrid recall with the local model (needs the semantic extra; random vectors for the fill)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="fresh servers: cold start per protocol era, the first recall and recalls 1-50 and "
        "151-200 after each spawn, with no settle time (instead of the steady-state legs)",
    )
    parser.add_argument("--fresh-runs", type=int, default=3, help="--fresh: spawns per era and size")
    parser.add_argument("--fresh-questions", type=int, default=200, help="--fresh: recalls per spawn")
    parser.add_argument(
        "--earlier-gap",
        type=float,
        default=2.0,
        help="--fresh: seconds between the questions of the untimed session before the measured ones",
    )
    parser.add_argument(
        "--fresh-remembers", type=int, default=20, help="--fresh: remember + recall pairs per spawn, last"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--postgres",
        action="store_true",
        help="also run the SDK, raw and in-process legs on PostgreSQL, on a throwaway cluster started "
        "here (needs initdb and pg_ctl); BM25 only, not with --fresh",
    )
    where.add_argument(
        "--db-url",
        metavar="URL",
        help="the same on this PostgreSQL server (its user must be allowed to CREATE DATABASE; the "
        "database soul_bench_SIZE is replaced, and dropped at the end unless --keep-db)",
    )
    parser.add_argument(
        "--settle-postgres",
        type=float,
        default=20.0,
        help="--settle for the PostgreSQL legs, whose servers fetch the commonest words at each start",
    )
    parser.add_argument(
        "--corpus",
        choices=["agent", "natural"],
        help="the fill: agent (the steady-state legs' default) or natural (names, places, dates and "
        "topics; the --fresh default)",
    )
    args = parser.parse_args(argv)
    if args.corpus is None:
        args.corpus = "natural" if args.fresh else "agent"
    if (args.postgres or args.db_url) and (args.fresh or args.semantic):
        parser.error(
            "the PostgreSQL legs run in the steady-state mode with BM25: not with --fresh or --semantic"
        )
    if args.fresh and args.fresh_questions < LATE.stop:
        parser.error(f"--fresh-questions must be at least {LATE.stop}")
    args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    return args


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.semantic:
        global SEMANTIC
        SEMANTIC = "local"
        TARGETS["recall_p95_ms"] = HYBRID_P95_MS
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soul-latency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "sizes": [],
    }
    postgres = PostgresServer(args.db_url, durable=True) if args.postgres or args.db_url else None
    try:
        if postgres is not None:
            postgres.__enter__()
        if args.fresh:
            if SEMANTIC != "off":
                print("timing the model's load ...", file=sys.stderr)
                report["model"] = await asyncio.to_thread(model_load)
            for size in args.sizes:
                report["sizes"].append(await measure_fresh(size, args, workdir))
        else:
            if not args.skip_imports:
                print("timing imports ...", file=sys.stderr)
                report["imports"] = await asyncio.to_thread(measure_imports, 5)
            for size in args.sizes:
                report["sizes"].append(await measure_size(size, args, workdir, postgres))
    finally:
        if postgres is not None:
            postgres.__exit__(None, None, None)
        if args.workdir is None and not args.keep_db:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"databases kept in {workdir}", file=sys.stderr)
    if args.fresh:
        print_fresh_report(report)
    else:
        print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
