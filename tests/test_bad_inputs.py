"""Bad inputs are refused with a message that says what is allowed, and leave the self intact.

Each row of BAD_INPUTS is (tool, arguments, expected text of the error). Every row runs against a
seeded self (a soul, active, forgotten and superseded memories); after the refusal, everything a
client can read must be exactly as before and the server must still answer.

SAFE_QUERIES are the opposite: hostile-looking text that is a valid query and must not be an error.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from soul_mcp.config import Settings
from soul_mcp.server import build_server

pytestmark = pytest.mark.anyio

# One era is enough here (test_tools covers both). The handshake era is what most hosts speak today,
# and its in-process client still frames every call as a JSON-RPC message (the 2026 era dispatches
# directly), so the arguments take the same path as from a real host.
ERA = "legacy"

ALLOWED_DATES = "give an ISO 8601 date or date-time"
ID_FORM = "ids look like 'm_1a2b3c4d5e6f'"
REASON = "reason is required and must not be empty"
DOCUMENTS = "Input should be 'soul', 'identity', 'user', 'intent' or 'north_star'"
MISSING = "Field required"

# Placeholders replaced by the seeded ids (ACTIVE ...) and a live cursor for recall(query="garden", limit=1).
ACTIVE, FORGOTTEN, SUPERSEDED, CURSOR = "<active>", "<forgotten>", "<superseded>", "<cursor>"
OTHER_ACTIVE_CONTENT = "The garden fence is broken"
DAMAGED_CURSOR = base64.urlsafe_b64encode(b'{"o":-5,"f":"abc"}').decode().rstrip("=")

BAD_INPUTS = [
    # remember: content
    ("remember", {"content": ""}, "content is empty; it needs at least one visible character"),
    ("remember", {"content": "  \n\t  "}, "content is empty"),
    ("remember", {"content": "x" * 8001}, "content is 8,001 characters; the limit is 8,000"),
    ("remember", {"content": "before\x00after"}, "control character (such as NUL)"),
    ("remember", {"content": "bell \x07"}, "Newlines and tabs are fine"),
    ("remember", {"content": "\x1b[31mred"}, "control character"),
    ("remember", {"content": "delete \x7f"}, "control character"),
    ("remember", {"content": 123}, "Input should be a valid string"),
    ("remember", {}, MISSING),
    # remember: kind, tags, importance, occurred_at
    ("remember", {"content": "ok", "kind": "mood"}, "kinds are: fact, event, preference, lesson"),
    ("remember", {"content": "ok", "tags": "notalist"}, "Input should be a valid list"),
    ("remember", {"content": "ok", "tags": ["x" * 65]}, "the limit is 64"),
    ("remember", {"content": "ok", "tags": [f"t{n}" for n in range(21)]}, "at most 20 are allowed"),
    ("remember", {"content": "ok", "tags": ["a,b"]}, "tags are short labels without commas"),
    ("remember", {"content": "ok", "tags": ["#hash"]}, "not starting with '#'"),
    ("remember", {"content": "ok", "tags": [" "]}, "a tag is empty"),
    ("remember", {"content": "ok", "importance": "high"}, "Input should be a valid integer"),
    ("remember", {"content": "ok", "importance": 0}, "use a whole number from 1 (minor) to 5 (vital)"),
    ("remember", {"content": "ok", "importance": 6}, "use a whole number from 1 (minor) to 5 (vital)"),
    ("remember", {"content": "ok", "importance": 2.5}, "Input should be a valid integer"),
    # Integers are strict: JSON true or "3" is not a number; reading them as 1 or 3 would hide a client bug.
    ("remember", {"content": "ok", "importance": True}, "Input should be a valid integer"),
    ("remember", {"content": "ok", "importance": "3"}, "Input should be a valid integer"),
    ("recall", {"limit": "5"}, "Input should be a valid integer"),
    ("read_soul", {"version": True}, "Input should be a valid integer"),
    ("wake_up", {"budget_chars": 2000.0}, "Input should be a valid integer"),
    ("remember", {"content": "ok", "occurred_at": "yesterday-ish"}, ALLOWED_DATES),
    ("remember", {"content": "ok", "occurred_at": "2024-13-45"}, ALLOWED_DATES),
    ("remember", {"content": "ok", "occurred_at": ""}, "occurred_at is empty"),
    ("remember", {"content": "ok", "occurred_at": "9999-12-31T23:00:00-05:00"}, "out of range"),
    # Year 1 at +01:00 is year 0 in UTC, which Python cannot represent: a refusal, not a crash.
    ("remember", {"content": "ok", "occurred_at": "0001-01-01T00:30:00+01:00"}, "out of range"),
    ("recall", {"since": "0001-01-01T00:30:00+01:00"}, "out of range"),
    # documents
    ("write_soul", {"content": "x" * 20_001}, MISSING),
    ("write_soul", {"content": "x" * 20_001, "reason": "long"}, "the limit is 20,000"),
    ("write_soul", {"content": "new soul"}, MISSING),
    ("write_soul", {"content": "new soul", "reason": ""}, REASON),
    ("write_soul", {"content": "new soul", "reason": "   "}, REASON),
    ("write_soul", {"content": "", "reason": "emptying"}, "content is empty"),
    ("write_soul", {"content": "nul\x00", "reason": "r"}, "control character"),
    ("write_north_star", {"content": "a star"}, MISSING),
    ("write_north_star", {"content": "a star", "reason": ""}, REASON),
    ("write_intent", {"content": " "}, "content is empty"),
    ("write_intent", {"content": "x" * 20_001}, "the limit is 20,000"),
    ("read_soul", {"version": 0}, "versions start at 1"),
    ("read_soul", {"version": -3}, "versions start at 1"),
    ("read_soul", {"version": 99}, "soul has no version 99; versions 1 to 1 exist"),
    ("restore", {"document": "soul", "version": 99, "reason": "back"}, "versions 1 to 1 exist"),
    ("restore", {"document": "soul", "version": 0, "reason": "back"}, "versions start at 1"),
    ("restore", {"document": "soul", "version": 1}, MISSING),
    ("restore", {"document": "soul", "version": 1, "reason": ""}, REASON),
    ("restore", {"document": "memories", "version": 1, "reason": "r"}, DOCUMENTS),
    ("restore", {"document": "intent", "version": 1, "reason": "r"}, "no versions exist yet"),
    ("diff", {"document": "soul", "from_version": 1, "to_version": 99}, "soul has no version 99"),
    (
        "diff",
        {"document": "soul", "from_version": 0, "to_version": 1},
        "from_version 0 is not a version number",
    ),
    ("history", {"document": "bogus"}, DOCUMENTS),
    ("history", {"document": "soul", "limit": 101}, "use a whole number from 1 to 100"),
    ("history", {"document": "soul", "before_version": 0}, "versions start at 1"),
    # forget and revise
    ("forget", {"memory_id": "m_000000000000", "reason": "r"}, "no memory has the id 'm_000000000000'"),
    ("forget", {"memory_id": "42", "reason": "r"}, ID_FORM),
    ("forget", {"memory_id": "M_ABCDEF123456", "reason": "r"}, ID_FORM),
    ("forget", {"memory_id": "m_" + "a" * 200, "reason": "r"}, ID_FORM),
    ("forget", {"memory_id": ACTIVE, "reason": ""}, REASON),
    ("forget", {"memory_id": ACTIVE}, MISSING),
    (
        "forget",
        {"memory_id": FORGOTTEN, "reason": "again"},
        "is forgotten; this needs a memory that is active",
    ),
    ("forget", {"memory_id": SUPERSEDED, "reason": "r"}, "is superseded (it was revised into m_"),
    ("revise_memory", {"memory_id": SUPERSEDED, "content": "c", "reason": "r"}, "only active memories can"),
    ("revise_memory", {"memory_id": FORGOTTEN, "content": "c", "reason": "r"}, "is forgotten and cannot be"),
    ("revise_memory", {"memory_id": "m_000000000000", "content": "c", "reason": "r"}, "no memory has the id"),
    ("revise_memory", {"memory_id": ACTIVE, "content": "", "reason": "r"}, "content is empty"),
    ("revise_memory", {"memory_id": ACTIVE, "content": "c", "reason": " "}, REASON),
    # Revising into another active memory's content must undo the half-done revision.
    (
        "revise_memory",
        {"memory_id": ACTIVE, "content": OTHER_ACTIVE_CONTENT, "reason": "r"},
        "already stored as",
    ),
    # recall
    ("recall", {"query": "x" * 1001}, "query is 1,001 characters; the limit is 1,000"),
    ("recall", {"query": "nul\x00"}, "control character"),
    ("recall", {"limit": 0}, "use a whole number from 1 to 50"),
    ("recall", {"limit": 51}, "use a whole number from 1 to 50"),
    ("recall", {"limit": 10**9}, "use a whole number from 1 to 50"),
    ("recall", {"limit": -1}, "use a whole number from 1 to 50"),
    ("recall", {"kind": "mood"}, "kinds are: fact, event"),
    ("recall", {"tags": ["a,b"]}, "without commas"),
    ("recall", {"since": "tomorrow"}, ALLOWED_DATES),
    ("recall", {"until": "2024-02-30"}, ALLOWED_DATES),
    ("recall", {"since": "2024-05-09", "until": "2024-05-08"}, "since (2024-05-09) must be before until"),
    ("recall", {"cursor": "!!!"}, "is not one this server issued"),
    ("recall", {"cursor": "é"}, "is not one this server issued"),
    ("recall", {"query": "garden", "cursor": DAMAGED_CURSOR}, "cursor is damaged"),
    ("recall", {"query": "fence", "limit": 1, "cursor": CURSOR}, "cursor belongs to a different query"),
    # wake_up
    (
        "wake_up",
        {"budget_chars": 10},
        "budget_chars 10 is out of range; use a whole number from 500 to 100000",
    ),
    ("wake_up", {"budget_chars": 499}, "from 500 to 100000"),
    # The range in the message must be the real one: 1 is not an allowed budget.
    ("wake_up", {"budget_chars": 10**9}, "500 to 100000"),
    ("wake_up", {"focus": "x" * 1001}, "focus is 1,001 characters; the limit is 1,000"),
]


def _row_id(row: tuple[str, dict[str, Any], str]) -> str:
    tool, args, _ = row
    shown = ",".join(f"{k}={str(v)[:16]!r}" for k, v in args.items())
    return f"{tool}({shown})"


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


async def _ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def _seed(server: Any) -> dict[str, str]:
    """Give the self a soul and memories in every status; return their ids and a live cursor."""
    async with Client(server) as c:
        await _ok(c, "write_soul", {"content": "I am the fixture soul.\n", "reason": "seed"})
        active = (await _ok(c, "remember", {"content": "The garden needs water twice a week",
                                            "tags": ["home"], "importance": 4}))["memory"]["id"]  # fmt: skip
        await _ok(c, "remember", {"content": OTHER_ACTIVE_CONTENT, "kind": "fact"})
        forgotten = (await _ok(c, "remember", {"content": "An old wrong fact"}))["memory"]["id"]
        await _ok(c, "forget", {"memory_id": forgotten, "reason": "wrong"})
        superseded = (await _ok(c, "remember", {"content": "The standup is at 9:00"}))["memory"]["id"]
        await _ok(
            c,
            "revise_memory",
            {"memory_id": superseded, "content": "The standup is at 9:30", "reason": "moved"},
        )
        cursor = (await _ok(c, "recall", {"query": "garden", "limit": 1}))["next_cursor"]
    assert cursor
    return {ACTIVE: active, FORGOTTEN: forgotten, SUPERSEDED: superseded, CURSOR: cursor}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One seeded database for the module; each test works on its own copy of the file.

    Seeding through MCP for each of ~120 cases was most of this file's runtime. The file is closed
    (WAL checkpointed) before it is copied, so a copy is a complete database.
    """
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    ids = anyio.run(_seed, build_server(Settings(db_path=path)))
    assert not path.with_name("seed.db-wal").exists()
    return path, ids


@pytest.fixture
def seeded_server(template: tuple[Path, dict[str, str]], db_path: Path) -> tuple[Any, dict[str, str]]:
    path, ids = template
    shutil.copyfile(path, db_path)
    return build_server(Settings(db_path=db_path)), ids


async def snapshot(c: Client, ids: dict[str, str]) -> dict[str, Any]:
    """Everything a client can read about the seeded self."""
    memories = {}
    for key in (ACTIVE, FORGOTTEN, SUPERSEDED):
        memories[key] = json.loads((await c.read_resource(f"self://memories/{ids[key]}")).contents[0].text)
    return {
        "recent": await _ok(c, "recall", {"limit": 50}),
        "search": await _ok(c, "recall", {"query": "garden standup fact"}),
        "soul": await _ok(c, "read_soul"),
        "soul_history": await _ok(c, "history", {"document": "soul"}),
        "intent": await _ok(c, "read_intent"),
        "north_star": await _ok(c, "read_north_star"),
        "memories": memories,
    }


@pytest.mark.parametrize(("tool", "args", "expected"), BAD_INPUTS, ids=[_row_id(r) for r in BAD_INPUTS])
async def test_bad_input_is_refused_with_what_is_allowed_and_changes_nothing(
    seeded_server: tuple[Any, dict[str, str]], tool: str, args: dict[str, Any], expected: str
) -> None:
    server, ids = seeded_server
    async with Client(server, mode=ERA) as c:
        before = await snapshot(c, ids)
        result = await c.call_tool(tool, _fill(args, ids))
        message = result.content[0].text
        assert result.is_error, f"accepted: {message}"
        assert message.startswith(f"Error executing tool {tool}: ")
        assert expected in message
        # Nothing changed, and the server still answers the same questions the same way.
        assert await snapshot(c, ids) == before


def test_the_bad_input_table_is_big_enough_to_mean_something() -> None:
    assert len(BAD_INPUTS) >= 30
    assert {row[0] for row in BAD_INPUTS} >= {
        "remember", "recall", "forget", "revise_memory", "write_soul", "write_north_star",
        "write_intent", "read_soul", "history", "restore", "diff", "wake_up",
    }  # fmt: skip


# Hostile-looking but valid: these are queries, not errors -------------------------------------------

SAFE_QUERIES = [
    '"',
    '"garden',
    "garden*",
    "*",
    "-garden",
    "garden:water",
    "content:garden",
    "NEAR(garden water)",
    "NEAR(",
    "AND OR NOT",
    "garden AND OR NOT water",
    "(garden",
    "garden)",
    "^garden",
    "{garden}",
    "garden + water",
    "🌱🌻",
    "🌱 garden 🌻",
    "'; DROP TABLE memories; --",
    "garden' OR '1'='1",
    'garden"; DELETE FROM memories_fts; --',
    "x" * 1000,
    "مرحبا garden שלום",
    "e\u0301te\u0301",
    "\u202egarden\u202c",
    "👩\u200d👩\u200d👧 family",
    "garden\u200bwater",
    "Straße STRASSE",
    "%_%",
]


def _memory_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM memories").fetchone()[0]


@pytest.mark.parametrize("query", SAFE_QUERIES)
async def test_hostile_looking_query_is_answered_safely(
    seeded_server: tuple[Any, dict[str, str]], db_path: Path, query: str
) -> None:
    server, ids = seeded_server
    async with Client(server, mode=ERA) as c:
        rows = _memory_rows(db_path)
        result = await c.call_tool("recall", {"query": query})
        assert not result.is_error, result.content[0].text
        hits = result.structured_content["hits"]
        after = await _ok(c, "recall", {"query": "garden"})
    assert _memory_rows(db_path) == rows == 5
    # The FTS index is untouched: the plain query still finds both garden memories.
    assert len([h for h in after["hits"] if h.get("context_of") is None]) == 2
    # Syntax characters are dropped, not obeyed: a query with the word 'garden' still finds it.
    if "garden" in query.lower():
        assert ids[ACTIVE] in [h["id"] for h in hits], query


@pytest.mark.parametrize(
    "content",
    [
        "'; DROP TABLE memories; --",
        'NEAR("a" "b") AND -x*',
        "👩\u200d👩\u200d👧 מִשְׁפָּחָה",
        "tab\tand\r\nnewline",
    ],
)
async def test_hostile_looking_content_is_stored_verbatim(
    seeded_server: tuple[Any, dict[str, str]], content: str
) -> None:
    server, _ = seeded_server
    async with Client(server, mode=ERA) as c:
        stored = (await _ok(c, "remember", {"content": content}))["memory"]
        read = json.loads((await c.read_resource(f"self://memories/{stored['id']}")).contents[0].text)
        listed = (await _ok(c, "recall", {"limit": 1}))["hits"]
    expected = content.replace("\r\n", "\n")
    assert stored["content"] == read["content"] == expected
    assert listed[0]["id"] == stored["id"]
