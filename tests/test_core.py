"""The domain without MCP: text, dates, cursors, wake-up assembly, and AgentSelf over a real SQLite file."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.core import cursor as cursors
from soul_mcp.core.dates import parse_moment
from soul_mcp.core.text import content_key, query_terms
from soul_mcp.core.wakeup import assemble_wake_up
from soul_mcp.errors import InvalidInput, NotFound
from soul_mcp.models import Actor, Document, RecallHit

pytestmark = pytest.mark.anyio

ME = Actor(name="test-client", session_id="session-1")


@pytest.fixture
async def agent(settings_on_each_backend: Settings) -> AsyncIterator[AgentSelf]:
    # Every test that takes `agent` runs on SQLite and on PostgreSQL.
    self_ = await AgentSelf.open(settings_on_each_backend)
    try:
        yield self_
    finally:
        await self_.close()


# text.query_terms and text.content_key -----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("garden", ["garden"]),
        ("Garden garden GARDEN water", ["garden", "water"]),
        ("what did I say about the garden", ["say", "garden"]),
        ('NEAR("a" b*) -c:d', ["near", "b", "c", "d"]),
        ("Sam's garden", ["sam", "garden"]),
        ("ｇａｒｄｅｎ", ["garden"]),  # full-width letters fold under NFKC
        ("Straße", ["strasse"]),
        ("garden_party", ["garden", "party"]),
        ("café 2024", ["café", "2024"]),
        ("שלום עולם", ["שלום", "עולם"]),
        ("🌱 * \" ' ( ) ^ : -", []),
        ("", []),
    ],
)
def test_query_terms_keep_distinct_meaningful_words(query: str, terms: list[str]) -> None:
    assert query_terms(query) == terms


def test_query_made_only_of_stopwords_keeps_its_words() -> None:
    # The docstring promises: 'If every word is a stopword, the words are kept: "who am I" still searches.'
    assert query_terms("who am I") == ["who", "am", "i"]


def test_query_terms_are_capped() -> None:
    words = [f"word{n}" for n in range(40)]
    assert query_terms(" ".join(words)) == words[:32]
    assert query_terms(" ".join(words), max_terms=3) == words[:3]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Hello World", "  hello   world\n"),
        ("tab\tseparated", "TAB SEPARATED"),
        ("Straße", "STRASSE"),
        ("ﬁne", "fine"),  # the ligature folds under NFKC
    ],
)
def test_content_key_folds_case_and_whitespace(a: str, b: str) -> None:
    assert content_key(a) == content_key(b)


def test_content_key_keeps_words_and_punctuation_apart() -> None:
    assert content_key("meet at 9") != content_key("meet at 10")
    assert content_key("a-b") != content_key("a b")


# dates.parse_moment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("2024-05-08T14:30:00Z", "2024-05-08T14:30:00Z"),
        ("2024-05-08T14:30:00z", "2024-05-08T14:30:00Z"),
        ("2024-05-08T14:30:00+02:00", "2024-05-08T12:30:00Z"),
        ("2024-05-08T23:30:00-05:00", "2024-05-09T04:30:00Z"),
        ("2024-05-08T14:30", "2024-05-08T14:30:00Z"),  # no offset: UTC
        ("2024-05-08 14:30:00", "2024-05-08T14:30:00Z"),
        ("2024-05-08T14:30:00.999", "2024-05-08T14:30:00Z"),
        ("  2024-05-08  ", "2024-05-08T00:00:00Z"),
        ("2024-05-08", "2024-05-08T00:00:00Z"),
    ],
)
def test_parse_moment_stores_utc(value: str, stored: str) -> None:
    assert parse_moment(value, "occurred_at") == stored


@pytest.mark.parametrize(
    ("value", "since", "until"),
    [
        # A bare date is the whole day: until includes it, up to the next midnight.
        ("2024-05-08", "2024-05-08T00:00:00Z", "2024-05-09T00:00:00Z"),
        ("20240508", "2024-05-08T00:00:00Z", "2024-05-09T00:00:00Z"),
        ("2024-12-31", "2024-12-31T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2024-02-28", "2024-02-28T00:00:00Z", "2024-02-29T00:00:00Z"),
        ("2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        ("2024-12", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2024", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        # A date-time is a point, the same for both ends.
        ("2024-05-08T10:00:00Z", "2024-05-08T10:00:00Z", "2024-05-08T10:00:00Z"),
        ("2024-05-08T00:00", "2024-05-08T00:00:00Z", "2024-05-08T00:00:00Z"),
    ],
)
def test_a_period_gives_since_its_start_and_until_its_end(value: str, since: str, until: str) -> None:
    assert parse_moment(value, "since") == since
    assert parse_moment(value, "until", end_of_period=True) == until


# Wednesday 8 May 2024, in the afternoon.
NOW = datetime(2024, 5, 8, 15, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("words", "start", "end"),
    [
        ("today", "2024-05-08", "2024-05-09"),
        ("  Yesterday ", "2024-05-07", "2024-05-08"),
        ("this week", "2024-05-06", "2024-05-13"),
        ("last week", "2024-04-29", "2024-05-06"),
        ("this month", "2024-05-01", "2024-06-01"),
        ("last month", "2024-04-01", "2024-05-01"),
        ("this year", "2024-01-01", "2025-01-01"),
        ("last year", "2023-01-01", "2024-01-01"),
        ("3 days ago", "2024-05-05", "2024-05-06"),
        ("1 week ago", "2024-04-29", "2024-05-06"),
        ("5 months ago", "2023-12-01", "2024-01-01"),
        ("2 years ago", "2022-01-01", "2023-01-01"),
    ],
)
def test_period_words_are_calendar_spans_in_utc(words: str, start: str, end: str) -> None:
    assert parse_moment(words, "since", now=NOW) == f"{start}T00:00:00Z"
    assert parse_moment(words, "until", end_of_period=True, now=NOW) == f"{end}T00:00:00Z"


def test_occurred_at_is_a_point_and_takes_no_period_words() -> None:
    with pytest.raises(InvalidInput, match="is not a date"):
        parse_moment("yesterday", "occurred_at", now=NOW)
    with pytest.raises(InvalidInput) as info:
        parse_moment("2024-05", "occurred_at", now=NOW)
    assert "'N days ago'" not in str(info.value)  # the message lists only what occurred_at accepts


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "since is empty"),
        ("   ", "since is empty"),
        ("x" * 41, "too long to be a date"),
        ("yesterday-ish", "is not a date; give an ISO 8601 date"),
        ("2024-13-45", "is not a real date"),
        ("2024-02-30", "is not a real date"),
        ("2024-13", "is not a real date"),
        ("9999 years ago", "is not a real date"),
        ("9999-12-31T23:00:00-05:00", "out of range"),
        # Year 1 with a positive offset is year 0 in UTC: must be refused, not crash.
        ("0001-01-01T00:30:00+01:00", "out of range"),
    ],
)
def test_parse_moment_refuses_with_what_is_allowed(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_moment(value, "since")
    assert "'2024-05-08'" in str(info.value)


# cursor ------------------------------------------------------------------------------------------


def test_cursor_round_trip() -> None:
    print_ = cursors.fingerprint(["garden"], [], None, None, None)
    for offset in (0, 1, 10, 999_999):
        token = cursors.encode(offset, print_)
        assert "=" not in token and "/" not in token and "+" not in token
        assert cursors.decode(token, print_) == offset


def test_fingerprint_differs_for_different_queries_and_filters() -> None:
    base = cursors.fingerprint(["garden"], [], None, None, None)
    assert base == cursors.fingerprint(["garden"], [], None, None, None)
    assert base != cursors.fingerprint(["water"], [], None, None, None)
    assert base != cursors.fingerprint(["garden"], ["home"], None, None, None)
    assert base != cursors.fingerprint(["garden"], [], "fact", None, None)
    assert base != cursors.fingerprint(["garden"], [], None, "2024-01-01T00:00:00Z", None)


def _raw_cursor(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("!!!", "is not one this server issued"),
        ("", "is not one this server issued"),
        ("é", "is not one this server issued"),
        (_raw_cursor([1, 2]), "is not one this server issued"),
        (_raw_cursor("text"), "is not one this server issued"),
        (_raw_cursor({"o": 3}), "is not one this server issued"),
        (_raw_cursor({"o": -1, "f": "x"}), "cursor is damaged"),
        (_raw_cursor({"o": "3", "f": "x"}), "cursor is damaged"),
        (_raw_cursor({"o": 10**7, "f": "x"}), "cursor is damaged"),
        (cursors.encode(5, "another-print"), "belongs to a different query"),
    ],
)
def test_cursor_decode_refuses_what_it_did_not_issue(token: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        cursors.decode(token, cursors.fingerprint(["garden"]))
    assert "leave cursor out" in str(info.value)


# Wake-up assembly --------------------------------------------------------------------------------


def _doc(name: str, content: str, version: int | None = 1) -> Document:
    return Document(
        document=name,  # type: ignore[arg-type]
        version=version,
        content=content,
        adopted=version is not None,
        author="someone" if version else None,
        created_at="2024-05-08T10:00:00Z" if version else None,
    )


def _hits(prefix: str, count: int, importance: int = 3) -> list[RecallHit]:
    return [
        RecallHit(
            id=f"m_{prefix}{n:011x}"[:14],
            content=f"{prefix} memory {n} " + "x" * 180,
            kind="fact",
            tags=[],
            importance=importance,
            occurred_at="2024-05-08T10:00:00Z",
            author="someone",
            score=0.0,
        )
        for n in range(count)
    ]


def test_wake_up_cuts_a_huge_soul_to_half_the_budget() -> None:
    woken = assemble_wake_up(
        _doc("soul", "I am large. " * 2000), _doc("intent", "short intent"), _doc("north_star", "star"),
        None, [], [], [], budget=2000,
    )  # fmt: skip
    soul_part = woken.text.split("\n\n## Intent")[0]
    assert len(soul_part) <= 1000
    assert soul_part.endswith("[trimmed]")
    assert "short intent" in woken.text and "star" in woken.text
    assert woken.trimmed == ["soul (cut to 1000 chars; read it whole with read_soul)"]
    assert len(woken.text) <= 2000


def test_wake_up_drops_memories_lowest_priority_first() -> None:
    relevant, important, recent = _hits("a", 4), _hits("b", 4, importance=5), _hits("c", 4)
    soul, intent, star = _doc("soul", "I am me."), _doc("intent", "next"), _doc("north_star", "star")
    line = 250  # each rendered memory line is about this long
    results = [
        assemble_wake_up(soul, intent, star, "focus", relevant, important, recent, budget=budget)
        for budget in range(600, 4000, line // 2)
    ]
    counts = [(len(w.relevant), len(w.important), len(w.recent)) for w in results]
    for w, (n_rel, n_imp, n_rec) in zip(results, counts, strict=True):
        assert len(w.text) <= w.budget_chars
        # A lower-priority section only gets room once every higher-priority one is whole.
        if n_imp:
            assert n_rel == 4, counts
        if n_rec:
            assert n_imp == 4, counts
        if n_rel < 4:
            noun = "memory" if 4 - n_rel == 1 else "memories"
            assert f"{4 - n_rel} relevant {noun} (no room; use recall)" in w.trimmed
    # The sweep passes through every stage: nothing, some relevant, some important, everything.
    assert counts[0][0] < 4 and counts[0][1:] == (0, 0)
    assert any(0 < r < 4 for r, _, _ in counts)
    assert any(0 < i < 4 for _, i, _ in counts)
    assert counts[-1] == (4, 4, 4) and results[-1].trimmed == []


def test_wake_up_shows_the_starter_soul_and_hints_when_nothing_is_written() -> None:
    from soul_mcp.core.starter import INTENT_HINT, STARTER_SOUL

    woken = assemble_wake_up(
        Document(document="soul", version=None, content=STARTER_SOUL, adopted=False, hint="adopt it"),
        Document(document="intent", version=None, content="", adopted=False, hint=INTENT_HINT),
        Document(document="north_star", version=None, content="", adopted=False, hint="set one"),
        None, [], [], [], budget=8000,
    )  # fmt: skip
    assert "(starter, not yet adopted)" in woken.text
    assert INTENT_HINT in woken.text
    assert woken.intent_age is None and woken.soul.adopted is False


async def test_wake_up_through_agent_self_sorts_memories_into_sections(agent: AgentSelf) -> None:
    await agent.write("soul", "I am Wren. " * 500, ME, reason="long soul")
    # Different days: a memory stored beside a match on the same day would count as its context.
    focus = (await agent.remember("The billing service retries webhooks", ME, importance=2,
                                  occurred_at="2024-01-01")).memory  # fmt: skip
    vital = (
        await agent.remember("Never deploy on Fridays", ME, importance=5, occurred_at="2024-01-02")
    ).memory
    minor = (await agent.remember("Lunch was soup", ME, importance=1, occurred_at="2024-01-03")).memory
    woken = await agent.wake_up(ME, focus="billing webhooks", budget_chars=2000)
    assert [h.id for h in woken.relevant] == [focus.id]
    assert [h.id for h in woken.important] == [vital.id]
    assert [h.id for h in woken.recent] == [minor.id]
    assert len(woken.text) <= 2000
    assert woken.trimmed[0].startswith("soul (cut to 1000 chars")
    assert (await agent.stats()).sessions == 1


async def test_wake_up_without_a_session_id_records_no_session(agent: AgentSelf) -> None:
    await agent.wake_up(Actor(name="prompt"))
    assert (await agent.stats()).sessions == 0


# Recall paging -----------------------------------------------------------------------------------


async def test_recall_pages_cover_every_hit_once_past_the_first_candidates(tmp_path: Path) -> None:
    # More matches than the store ranks in one go (200 candidates), all from one session and day, so
    # that neighbours lend each other score: the pages must still never repeat or skip a memory.
    agent = await AgentSelf.open(Settings(db_path=tmp_path / "pages.db", synchronous="NORMAL"))
    try:
        stored = []
        for n in range(260):
            words = " ".join(["garden"] * (1 + n % 5) + ["note"] * (n % 7))
            stored.append((await agent.remember(f"{n}: {words}", ME, occurred_at="2024-01-01")).memory.id)
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            page = await agent.recall("garden", limit=50, cursor=cursor)
            seen += [h.id for h in page.hits]
            cursor = page.next_cursor
            if cursor is None:
                break
    finally:
        await agent.close()
    assert len(seen) == len(set(seen)), f"{len(seen) - len(set(seen))} memories came back twice"
    assert set(seen) == set(stored)


# Memories: forget, restore, purge ----------------------------------------------------------------


async def test_purge_deletes_only_forgotten_memories(agent: AgentSelf) -> None:
    active = (await agent.remember("keep me", ME)).memory
    old = (await agent.remember("old wording", ME)).memory
    _, revised = await agent.revise(old.id, "new wording", "clearer", ME)
    with pytest.raises(InvalidInput, match="only forgotten memories can be purged"):
        await agent.purge(active.id)
    with pytest.raises(InvalidInput, match="is superseded; only forgotten"):
        await agent.purge(old.id)
    with pytest.raises(NotFound):
        await agent.purge("m_000000000000")

    await agent.forget(revised.id, "not needed", ME)
    await agent.purge(revised.id)
    with pytest.raises(NotFound):
        await agent.get_memory(revised.id)
    # The memory it superseded stays readable and no longer points at a memory that is gone.
    survivor = await agent.get_memory(old.id)
    assert survivor.status == "superseded" and survivor.superseded_by is None
    assert (await agent.get_memory(active.id)).status == "active"
    stats = await agent.stats()
    assert (stats.memories_active, stats.memories_forgotten, stats.memories_superseded) == (1, 0, 1)


async def test_restore_memory_brings_a_forgotten_memory_back_into_recall(agent: AgentSelf) -> None:
    memory = (await agent.remember("The cat is called Miso", ME, tags=["home"])).memory
    await agent.forget(memory.id, "mistake", ME)
    assert (await agent.recall("cat")).hits == []
    restored = await agent.restore_memory(memory.id, ME)
    assert restored.status == "active" and restored.status_reason is None
    assert restored.status_changed_by == ME.name  # who brought it back
    assert [h.id for h in (await agent.recall("cat", tags=["home"])).hits] == [memory.id]
    with pytest.raises(InvalidInput, match="is active; this needs a memory that is forgotten"):
        await agent.restore_memory(memory.id, ME)


async def test_restore_is_refused_when_an_active_twin_holds_the_same_content(agent: AgentSelf) -> None:
    first = (await agent.remember("Standup is at nine", ME)).memory
    await agent.forget(first.id, "thought it was wrong", ME)
    twin = (await agent.remember("standup is at NINE", ME)).memory
    assert twin.id != first.id
    with pytest.raises(InvalidInput, match=f"cannot be restored: {twin.id} holds the same content"):
        await agent.restore_memory(first.id, ME)
    assert (await agent.get_memory(first.id)).status == "forgotten"
    assert [h.id for h in (await agent.recall("standup")).hits] == [twin.id]


async def test_revise_may_keep_the_same_normalised_content(agent: AgentSelf) -> None:
    memory = (await agent.remember("sam likes tea", ME)).memory
    old, new = await agent.revise(memory.id, "Sam likes tea", "capitalise the name", ME)
    assert old.status == "superseded" and new.content == "Sam likes tea"
    assert [h.id for h in (await agent.recall("tea")).hits] == [new.id]


async def test_documents_record_the_actor_and_its_reason(agent: AgentSelf) -> None:
    write = await agent.write("north_star", "Ship calmly", ME, reason="  the plan  ")
    assert write.version.author == "test-client" and write.version.reason == "the plan"
    with pytest.raises(InvalidInput, match="reason is required"):
        await agent.write("soul", "no reason given", ME)
    with pytest.raises(InvalidInput, match="unknown document 'diary'"):
        await agent.read("diary")
