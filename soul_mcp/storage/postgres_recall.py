"""PostgresStore as a `RecallSource` (recall/source.py): BM25 score parts from the memories'
tsvectors, the change log, columns, tags and embeddings. Rows and SQL only; the engine ranks.

Words are made by SQLite's own tokenizer (sqlite_recall.Tokens: FTS5's porter unicode61
remove_diacritics 2), so a word has the same tokens on both stores. A word's score part is what
FTS5's bm25(memories_fts, 1.0, 0.5, 0.5) gives a memory for that word alone, computed here with
FTS5's own formula and operation order (fts5_aux.c), in float8:

    idf * (f * (k1 + 1)) / (f + k1 * (1 - b + b * D / avgdl)),  k1 = 1.2, b = 0.75

with f = 1.0 * tf(content) + 0.5 * tf(tags) + 0.5 * tf(about) (kept per memory in `freqs`; for a
phrase, counted from the tsvector's A, B and C positions), D the memory's tokens, avgdl the active memories' tokens over their count,
idf = ln((N - n + 0.5) / (n + 0.5)), or 1e-6 when that is not above 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soul_mcp.errors import StorageError
from soul_mcp.models import Memory
from soul_mcp.recall.query import SearchQuery
from soul_mcp.recall.snapshot import cache_file
from soul_mcp.recall.source import BlockingReader, EmbeddingRow, MemoryColumns, WordScore
from soul_mcp.storage.sqlite_recall import Tokens

# The memories' columns are read, and made a Memory, as the SQLite store does (the same names).
from soul_mcp.storage.sqlite_rows import MEMORY_COLUMNS, memory_from_row

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# tsvector refuses a lexeme of 2 KB or more, and keeps at most 256 positions of one lexeme.
LONG_LEXEME_BYTES = 1000
MAX_POSITIONS = 256
MAX_POSITION = 16383
COLUMN_WEIGHTS = ("A", "B", "C")  # content, tags, about
COLUMN_FREQ = {"A": 1.0, "B": 0.5, "C": 0.5}  # bm25(memories_fts, 1.0, 0.5, 0.5)

BY_TIME = "m.occurred_at DESC, m.rowid DESC"
BY_IMPORTANCE = "m.importance DESC, m.occurred_at DESC, m.rowid DESC"

# The active memories' count and tokens (the view text_totals) read through the slots' key: every
# remember leaves a dead row version in text_total_slots until vacuum, and the view's sequential
# scan read them all, up to 600 pages and 6 ms at 100k memories, at each word fetched.
TOTALS = (
    "(SELECT sum(memories)::bigint AS memories, sum(tokens)::bigint AS tokens FROM text_total_slots "
    "WHERE slot = ANY('{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}'::integer[]))"
)

# One word's matches among the active memories with their score parts: %(q)s is the word as a
# tsquery, %(lexeme)s the word, %(above)s the rowid to start above. n counts every match.
WORD_SCORES = f"""
WITH hits AS (
    SELECT m.rowid, m.tokens::float8 AS d,
           (m.freqs ->> %(lexeme)s)::float8 AS f
    FROM memories m WHERE m.status = 'active' AND m.words @@ %(q)s::tsquery
), parts AS (
    SELECT t.memories::float8 AS n_rows, nullif(t.tokens::float8 / nullif(t.memories, 0)::float8, 0) AS avgdl,
           (SELECT count(*) FROM hits)::float8 AS n_hits
    FROM {TOTALS} t
), weights AS (
    SELECT avgdl, CASE WHEN ratio <= 0 THEN 1e-6::float8 WHEN ln(ratio) <= 0 THEN 1e-6::float8
                       ELSE ln(ratio) END AS idf
    FROM (SELECT avgdl, (n_rows - n_hits + 0.5::float8) / (n_hits + 0.5::float8) AS ratio FROM parts) r
)
SELECT h.rowid, w.idf * (h.f * (1.2::float8 + 1.0::float8))
       / (h.f + 1.2::float8 * (1::float8 - 0.75::float8 + 0.75::float8 * h.d / w.avgdl))
FROM hits h, weights w WHERE h.rowid > %(above)s ORDER BY h.rowid
"""

# The same without the idf: a word's score parts (RecallSource.word_parts), for the memories above a
# rowid only. No count of every match is needed, so fetching the few memories stored since a word
# was fetched reads those few.
PART = (
    "{f} * (1.2::float8 + 1.0::float8) "
    "/ ({f} + 1.2::float8 * (1::float8 - 0.75::float8 + 0.75::float8 * m.tokens::float8 / t.avgdl))"
)
AVGDL = f"(SELECT nullif(tokens::float8 / nullif(memories, 0)::float8, 0) AS avgdl FROM {TOTALS} t0) t"
WORD_PARTS = f"""
SELECT m.rowid, {PART.format(f="x.f")}
FROM memories m
CROSS JOIN {AVGDL}
CROSS JOIN LATERAL (SELECT (m.freqs ->> %(lexeme)s)::float8 AS f) x
WHERE m.status = 'active' AND m.words @@ %(q)s::tsquery AND m.rowid > %(above)s
ORDER BY m.rowid
"""


def words_parts(count: int) -> str:
    """WORD_PARTS for `count` words in one statement, each its own branch (planned for its word:
    the text index for a rare one, the key's range for a common one above a high rowid), tagged
    with its place; the parameters are each word's lexeme, tsquery and rowid to start above."""
    branch = (
        "SELECT {n}, m.rowid, " + PART.format(f="x.f") + " FROM memories m CROSS JOIN t "
        "CROSS JOIN LATERAL (SELECT (m.freqs ->> %s)::float8 AS f) x "
        "WHERE m.status = 'active' AND m.words @@ %s::tsquery AND m.rowid > %s"
    )
    return f"WITH t AS MATERIALIZED (SELECT * FROM {AVGDL}) " + " UNION ALL ".join(
        branch.format(n=n) for n in range(count)
    )


# Every word held by at least %s active memories with its parts, the commonest first, in one pass
# over the memories' `freqs` (the prefill, recall/prefill.py): the parts as WORD_PARTS gives them,
# to the bit, for a fifth of the time the words take one statement each (2,500 words at 100k).
COMMON_PARTS = f"""
SELECT e.key, array_agg(m.rowid), array_agg({PART.format(f="e.value::float8")})
FROM memories m
CROSS JOIN {AVGDL}
CROSS JOIN LATERAL jsonb_each_text(m.freqs) e
WHERE m.status = 'active'
GROUP BY e.key HAVING count(*) >= %s ORDER BY count(*) DESC, e.key
"""

# A word of several tokens ("it's": it, s) is a phrase to FTS5: its frequency is the number of
# places where its tokens follow each other in one column. Its matches (tsquery's <->) come with the
# positions of its tokens, and the count and score are made in Python (same formula, same doubles).
PHRASE_ROWS = f"""
SELECT m.rowid, m.tokens, u.lexeme, u.positions, u.weights, t.memories, t.tokens
FROM memories m CROSS JOIN LATERAL unnest(m.words) u CROSS JOIN {TOTALS} t
WHERE m.status = 'active' AND m.words @@ %(q)s::tsquery AND u.lexeme = ANY(%(lexemes)s)
"""

# What names this database wherever it is reached from: the cluster's id (initdb makes it, a restore
# from a dump into another cluster has another) and the database's oid (a database dropped and made
# again has another).
IDENTITY = (
    "SELECT (SELECT system_identifier FROM pg_control_system()), oid FROM pg_database "
    "WHERE datname = current_database()"
)

COMMON_WORDS = (
    "SELECT word FROM ts_stat('SELECT words FROM memories WHERE status = ''active''') "
    "WHERE ndoc >= %s ORDER BY ndoc DESC, word"
)


def snapshot_file(system: str, oid: int, shown: str) -> Path | None:
    """Where the recall index of the database (`system` identifier, `oid`, its URL without the
    password) keeps its snapshot: in the user's cache folder, named by a hash of the three, so that
    another database's file is never taken for this one's (the index checks it before use anyway,
    recall/snapshot.py). None when the folder cannot be made."""
    name = hashlib.sha256(f"{system}\x1f{oid}\x1f{shown}".encode()).hexdigest()[:24]
    return cache_file(f"postgresql-{name}")


def lexeme(token: str) -> str:
    """A token as the tsvector keeps it: a token too long for tsvector by its digest."""
    if len(token.encode("utf-8", "surrogatepass")) < LONG_LEXEME_BYTES:
        return token
    return "#" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _quoted(lexeme: str) -> str:
    """A lexeme as tsvector and tsquery input read it: quoted, quotes and backslashes doubled."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def word_query(tokens: Sequence[str]) -> dict[str, Any]:
    """The parameters of WORD_SCORES (one token) or PHRASE_ROWS (several) for a word's tokens."""
    words = [lexeme(t) for t in tokens]
    return {"lexeme": words[0], "lexemes": words, "q": " <-> ".join(_quoted(w) for w in words)}


def phrase_scores(
    tokens: Sequence[str], rows: Sequence[Sequence[Any]], above: int, with_idf: bool = True
) -> list[WordScore]:
    """The score parts of a phrase from PHRASE_ROWS' rows (FTS5's bm25, as WORD_SCORES computes);
    without the idf as WORD_PARTS gives them."""
    words = [lexeme(t) for t in tokens]
    per_memory: dict[int, dict[str, dict[int, str]]] = {}
    sizes: dict[int, int] = {}
    totals = (0, 0)
    for rowid, size, word, positions, weights, memories, all_tokens in rows:
        per_memory.setdefault(rowid, {})[word] = dict(zip(positions, weights, strict=True))
        sizes[rowid] = size
        totals = (memories, all_tokens)
    found: list[tuple[int, float]] = []
    for rowid, held in per_memory.items():
        f = 0.0
        for start, weight in held.get(words[0], {}).items():
            if all(held.get(w, {}).get(start + i) == weight for i, w in enumerate(words[1:], 1)):
                f += 1.0 if weight == "A" else 0.5
        if f > 0:
            found.append((rowid, f))
    if not found:
        return []
    n_rows, n_hits = float(totals[0]), float(len(found))
    ratio = (n_rows - n_hits + 0.5) / (n_hits + 0.5)
    idf = math.log(ratio) if ratio > 0 else 0.0
    if idf <= 0.0:
        idf = 1e-6
    if not with_idf:
        idf = 1.0
    avgdl = float(totals[1]) / n_rows
    k1, b = 1.2, 0.75
    return sorted(
        (rowid, idf * (f * (k1 + 1.0)) / (f + k1 * (1 - b + b * float(sizes[rowid]) / avgdl)))
        for rowid, f in found
        if rowid > above
    )


def text_vector(tokens: Tokens, content: str, tags: str, about: str) -> tuple[str, str, int]:
    """The memory's tsvector (as tsvector input), its words' weighted frequencies (as JSON) and its
    token count over the three columns. Each token at its place, a column's places after the
    previous column's and one apart from them, so that a phrase never spans two columns."""
    columns = tokens.keys([content, tags, about])
    positions: dict[str, list[str]] = {}
    freqs: dict[str, float] = {}
    count = 0
    for weight, joined in zip(COLUMN_WEIGHTS, columns, strict=True):
        for token in joined.split():
            count += 1
            word = lexeme(token)
            found = positions.setdefault(word, [])
            if len(found) < MAX_POSITIONS:
                found.append(f"{min(count + COLUMN_WEIGHTS.index(weight), MAX_POSITION)}{weight}")
            freqs[word] = freqs.get(word, 0.0) + COLUMN_FREQ[weight]
    vector = " ".join(f"{_quoted(word)}:{','.join(p)}" for word, p in positions.items())
    return vector, json.dumps(freqs, ensure_ascii=False), count


class PostgresBlockingReader:
    """A connection of its own, with blocking calls, for the recall prefill thread."""

    def __init__(self, conninfo: str, shown: str) -> None:
        import psycopg

        from soul_mcp.storage.postgres import unavailable

        try:
            self._db = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise unavailable(exc, shown) from exc
        self._tokens = Tokens()

    def common_words(self, min_memories: int) -> list[str]:
        import psycopg

        try:
            return [w for (w,) in self._db.execute(COMMON_WORDS, (min_memories,)).fetchall()]
        except psycopg.Error as exc:
            raise StorageError(f"reading the text index failed: {exc}") from exc

    def common_parts(self, min_memories: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Each word held by at least `min_memories` memories, the commonest first, with the rowids
        of its memories (ascending) and its parts (as word_parts): one statement for them all, read
        a word at a time (a server-side cursor), so that a few words' arrays are held at once."""
        import numpy as np
        import psycopg

        try:
            with self._db.transaction(), self._db.cursor("soul_prefill", binary=True) as cursor:
                cursor.itersize = 16
                cursor.execute(COMMON_PARTS, (min_memories,))
                for word, rowids, parts in cursor:
                    ids = np.array(rowids, dtype=np.int64)
                    order = np.argsort(ids, kind="stable")
                    yield word, ids[order], np.array(parts, dtype=np.float64)[order]
        except psycopg.Error as exc:
            raise StorageError(f"reading the text index failed: {exc}") from exc

    def word_scores(self, word: str) -> list[WordScore]:
        return self._scores(word, with_idf=True)

    def word_parts(self, word: str) -> list[WordScore]:
        return self._scores(word, with_idf=False)

    def _scores(self, word: str, with_idf: bool) -> list[WordScore]:
        import psycopg

        tokens = self._tokens.keys([word])[0].split()
        if not tokens:
            return []
        try:
            if len(tokens) > 1:
                rows = self._db.execute(PHRASE_ROWS, word_query(tokens)).fetchall()
                return phrase_scores(tokens, rows, 0, with_idf)
            sql = WORD_SCORES if with_idf else WORD_PARTS
            found = self._db.execute(sql, {**word_query(tokens), "above": 0}).fetchall()
        except psycopg.Error as exc:
            raise StorageError(f"reading the text index failed: {exc}") from exc
        return [(int(r), float(s)) for r, s in found]

    def cancel(self) -> None:
        """Cut short the statement running on this reader (from another thread)."""
        import psycopg

        try:
            self._db.cancel_safe(timeout=2.0)
        except psycopg.Error as exc:
            log.debug("recall prefill not cancelled: %s", exc)

    def close(self) -> None:
        self._db.close()


def memory_filters(
    statuses: tuple[str, ...],
    kind: str | None,
    tags: tuple[str, ...],
    since: str | None,
    until: str | None,
    exclude_ids: tuple[str, ...] = (),
) -> tuple[list[str], list[Any]]:
    """SQL conditions on `m` for listings by time (as sqlite_rows.memory_filters)."""
    where: list[str] = []
    params: list[Any] = []
    if statuses == ("active",):
        where.append("m.status = 'active'")
    else:
        if "active" not in statuses:
            where.append("m.status <> 'active'")
        where.append("m.status = ANY(%s)")
        params.append(list(statuses))
    if kind:
        where.append("m.kind = %s")
        params.append(kind)
    if since:
        where.append("m.occurred_at >= %s")
        params.append(since)
    if until:
        where.append("m.occurred_at < %s")
        params.append(until)
    if tags:
        where.append(
            "m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag = ANY(%s) "
            "GROUP BY memory_rowid HAVING count(*) = %s)"
        )
        params += [list(tags), len(tags)]
    if exclude_ids:
        where.append("m.id <> ALL(%s)")
        params.append(list(exclude_ids))
    return where, params


class PostgresRecall:
    """The RecallSource half of PostgresStore (mixed into it)."""

    _snapshot_file: Path | None = None  # set by identify()

    if TYPE_CHECKING:
        _conninfo: str
        _tokens: Tokens
        shown: str
        _fetchall: Callable[..., Awaitable[list[tuple[Any, ...]]]]

    def tokenizer(self) -> Tokens:
        return Tokens()

    def blocking_reader(self) -> Callable[[], BlockingReader] | None:
        conninfo, shown = self._conninfo, self.shown
        return lambda: PostgresBlockingReader(conninfo, shown)

    def snapshot_path(self) -> Path | None:
        return self._snapshot_file

    async def identify(self) -> None:
        """Find where this database's recall snapshot goes (snapshot_file): called once as the
        store opens. No snapshot when the identity cannot be read or the cache folder made."""
        import psycopg

        try:
            ((system, oid),) = await self._fetchall(IDENTITY)
        except StorageError as exc:
            # Refused (a managed service may withhold pg_control_system) or unknown: no snapshot.
            # The database away is the caller's error.
            cause = exc.__cause__
            if not isinstance(cause, psycopg.Error) or isinstance(cause, psycopg.OperationalError):
                raise
            log.info("no recall snapshot for %s: %s", self.shown, exc)
            return
        self._snapshot_file = snapshot_file(str(system), int(oid), self.shown)

    async def change_seq(self) -> int:
        ((seq,),) = await self._fetchall("SELECT coalesce(max(seq), 0) FROM memory_changes")
        return int(seq)

    async def changed_between(self, after: int, upto: int) -> list[int]:
        rows = await self._fetchall(
            "SELECT DISTINCT memory_rowid FROM memory_changes WHERE seq > %s AND seq <= %s", (after, upto)
        )
        return [int(r) for (r,) in rows]

    async def memory_columns(self, rowids: Sequence[int] | None = None) -> list[MemoryColumns]:
        select = (
            "SELECT rowid, (status = 'active')::int, occurred_at, kind, author, session_id, id FROM memories"
        )
        if rowids is None:
            rows = await self._fetchall(select)
        else:
            rows = await self._fetchall(f"{select} WHERE rowid = ANY(%s)", (list(rowids),))
        return [tuple(r) for r in rows]

    async def word_scores(self, words: Sequence[tuple[str, int]]) -> list[list[WordScore]]:
        return await self._scores(words, with_idf=True)

    async def word_parts(self, words: Sequence[tuple[str, int]]) -> list[list[WordScore]]:
        return await self._scores(words, with_idf=False)

    async def _scores(self, words: Sequence[tuple[str, int]], with_idf: bool) -> list[list[WordScore]]:
        found: list[list[WordScore]] = [[] for _ in words]
        single: list[tuple[int, list[str], int]] = []
        # Each word as FTS5 reads a MATCH of it: its tokens, several making a phrase.
        for i, (word, above) in enumerate(words):
            tokens = self._tokens.keys([word])[0].split()
            if len(tokens) > 1:
                rows = await self._fetchall(PHRASE_ROWS, word_query(tokens))
                found[i] = phrase_scores(tokens, rows, above, with_idf)
            elif tokens and with_idf:
                rows = await self._fetchall(WORD_SCORES, {**word_query(tokens), "above": above})
                found[i] = [(int(r), float(s)) for r, s in rows]
            elif tokens:
                single.append((i, tokens, above))
        if len(single) == 1:
            i, tokens, above = single[0]
            rows = await self._fetchall(WORD_PARTS, {**word_query(tokens), "above": above})
            found[i] = [(int(r), float(s)) for r, s in rows]
        elif single:
            # The words a recall misses, in one statement: a round trip each is what they cost.
            params: list[Any] = []
            for _, tokens, above in single:
                query = word_query(tokens)
                params += [query["lexeme"], query["q"], above]
            rows = await self._fetchall(words_parts(len(single)), params)
            for n, rowid, part in rows:
                found[single[n][0]].append((int(rowid), float(part)))
        return found

    async def tagged_rowids(self, tag: str, above: int, upto: int) -> list[int]:
        rows = await self._fetchall(
            "SELECT memory_rowid FROM memory_tags WHERE tag = %s AND memory_rowid > %s "
            "AND memory_rowid <= %s ORDER BY memory_rowid",
            (tag, above, upto),
        )
        return [int(r) for (r,) in rows]

    async def rowids_of(self, memory_ids: Sequence[str]) -> list[int]:
        rows = await self._fetchall(
            "SELECT rowid FROM memories WHERE id = ANY(%s) ORDER BY rowid", (list(memory_ids),)
        )
        return [int(r) for (r,) in rows]

    async def memories_at(self, rowids: Sequence[int]) -> dict[int, Memory]:
        rows = await self._fetchall(
            f"SELECT m.rowid, {MEMORY_COLUMNS} FROM memories m WHERE m.rowid = ANY(%s)", (list(rowids),)
        )
        return {int(row[0]): memory_from_row(row[1:]) for row in rows}

    async def ordered_memories(self, query: SearchQuery) -> list[Memory]:
        where, params = memory_filters(
            ("active",), query.kind, query.tags, query.since, query.until, query.exclude_ids
        )
        order = BY_IMPORTANCE if query.order == "importance" else BY_TIME
        rows = await self._fetchall(
            f"SELECT {MEMORY_COLUMNS} FROM memories m WHERE {' AND '.join(where)} "
            f"ORDER BY {order} LIMIT %s OFFSET %s",
            (*params, query.limit, query.offset),
        )
        return [memory_from_row(row) for row in rows]

    async def embedding_count(self, model: str) -> int:
        ((count,),) = await self._fetchall(
            "SELECT count(*) FROM memory_embeddings WHERE model = %s", (model,)
        )
        return int(count)

    async def embeddings_after(self, model: str, after_id: int, limit: int) -> list[EmbeddingRow]:
        rows = await self._fetchall(
            "SELECT id, memory_rowid, dims, vector FROM memory_embeddings WHERE model = %s AND id > %s "
            "ORDER BY id LIMIT %s",
            (model, after_id, limit),
        )
        return [(int(i), int(r), int(d), bytes(v)) for i, r, d, v in rows]

    async def embedding_ids(self, model: str, rowids: Sequence[int]) -> dict[int, int]:
        rows = await self._fetchall(
            "SELECT memory_rowid, id FROM memory_embeddings WHERE model = %s AND memory_rowid = ANY(%s)",
            (model, list(rowids)),
        )
        return {int(r): int(i) for r, i in rows}
