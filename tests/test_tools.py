"""Every MCP tool, resource and prompt, driven through the in-process client in both protocol eras.

Each test opens `mcp.Client(server, mode=mode)` on a real SQLite file in tmp_path and on a
PostgreSQL database of a throwaway cluster, and asserts on what a model would see: the structured
content and the text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import Implementation

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.core.starter import STARTER_SOUL
from soul_mcp.server import build_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(settings_on_each_backend: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL."""
    return settings_on_each_backend


TOOL_NAMES = {
    "wake_up",
    "remember",
    "recall",
    "forget",
    "revise_memory",
    "read_soul",
    "write_soul",
    "read_intent",
    "write_intent",
    "read_north_star",
    "write_north_star",
    "read_document",
    "write_document",
    "history",
    "restore",
    "diff",
}


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured content."""
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def text_of(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content[0].text
    return result.content[0].text


async def remember(client: Client, content: str, **extra: Any) -> str:
    return (await ok(client, "remember", {"content": content, **extra}))["memory"]["id"]


async def recall_ids(client: Client, **args: Any) -> list[str]:
    return [hit["id"] for hit in (await ok(client, "recall", args))["hits"]]


async def matched(client: Client, **args: Any) -> list[str]:
    """Ids of the hits that hold the query's words, best first.

    Recall also returns a memory stored right beside a match (same author, session and day) as
    context, marked with context_of; each such hit must point at a match on the same page.
    """
    hits = (await ok(client, "recall", args))["hits"]
    direct = [h["id"] for h in hits if h.get("context_of") is None]
    assert {h["context_of"] for h in hits if h.get("context_of")} <= set(direct), hits
    return direct


async def read_text(client: Client, uri: str) -> str:
    result = await client.read_resource(uri)
    return result.contents[0].text


# The surface -------------------------------------------------------------------------------------


async def test_tools_list_has_all_fourteen_tools_with_flat_schemas_and_output_schemas(
    server: Any, mode: str
) -> None:
    async with Client(server, mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    for name, tool in tools.items():
        assert tool.description and len(tool.description) > 30, name
        props = tool.input_schema.get("properties", {})
        # A single pydantic-model parameter would nest everything under one 'args' object.
        assert "args" not in props, name
        for prop, schema in props.items():
            assert schema.get("description"), f"{name}.{prop} has no description"
        assert tool.output_schema is not None and tool.output_schema.get("type") == "object", name
    assert tools["remember"].input_schema["required"] == ["content"]
    assert set(tools["write_soul"].input_schema["required"]) == {"content", "reason"}
    assert tools["write_intent"].input_schema["required"] == ["content"]
    assert set(tools["restore"].input_schema["required"]) == {"document", "version", "reason"}
    assert "memory" in tools["remember"].output_schema["properties"]
    assert tools["recall"].annotations.read_only_hint is True
    assert tools["forget"].annotations.read_only_hint is False


async def test_server_instructions_tell_the_client_to_call_wake_up(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        assert c.instructions is not None
        assert "wake_up" in c.instructions


# Memories ----------------------------------------------------------------------------------------


async def test_remember_returns_an_id_and_is_new(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        out = await ok(c, "remember", {"content": "  Maya prefers short answers  ", "kind": "Preference",
                                       "tags": ["Maya", "style", "maya"], "importance": 4,
                                       "occurred_at": "2024-05-08T14:30:00+02:00"})  # fmt: skip
        text = await text_of(c, "recall", {"query": "Maya"})
    memory = out["memory"]
    assert out["is_new"] is True
    assert memory["id"].startswith("m_") and len(memory["id"]) == 14
    assert memory["content"] == "Maya prefers short answers"
    assert memory["kind"] == "preference"
    assert memory["tags"] == ["maya", "style"]
    assert memory["importance"] == 4
    assert memory["occurred_at"] == "2024-05-08T12:30:00Z"
    assert memory["status"] == "active"
    assert memory["id"] in text and "Maya prefers short answers" in text


async def test_remember_the_same_content_again_returns_the_existing_memory(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        first = await ok(c, "remember", {"content": "The deploy key lives in the vault"})
        again = await ok(c, "remember", {"content": "the  DEPLOY key\nlives in the vault  "})
        text = await text_of(c, "remember", {"content": "THE DEPLOY KEY LIVES IN THE VAULT"})
        listed = await recall_ids(c)
    assert again["is_new"] is False
    assert again["memory"]["id"] == first["memory"]["id"]
    assert again["memory"]["content"] == "The deploy key lives in the vault"
    assert text.startswith("Already remembered")
    assert listed == [first["memory"]["id"]]


async def test_author_is_the_client_name_from_client_info(server: Any, mode: str) -> None:
    async with Client(
        server, mode=mode, client_info=Implementation(name="claude-desktop", version="1.0")
    ) as c:
        memory = (await ok(c, "remember", {"content": "written by a named client"}))["memory"]
        version = (await ok(c, "write_intent", {"content": "next: tests"}))["version"]
    # Without client_info the in-process client introduces itself as "mcp".
    async with Client(server, mode=mode) as c:
        default = (await ok(c, "remember", {"content": "written by the default client"}))["memory"]
        hits = (await ok(c, "recall", {"query": "written client"}))["hits"]
    assert memory["author"] == "claude-desktop"
    assert version["author"] == "claude-desktop"
    assert default["author"] == "mcp"
    assert {h["author"] for h in hits} == {"claude-desktop", "mcp"}


async def test_recall_matches_stemmed_forms_of_a_word(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        gardening = await remember(c, "Spent the weekend gardening with Sam")
        invoice = await remember(c, "The invoice is due on Friday")
        assert await matched(c, query="garden") == [gardening]
        assert await matched(c, query="gardens") == [gardening]
        assert await matched(c, query="GARDENED") == [gardening]
        assert set(await matched(c, query="invoices gardener")) == {gardening, invoice}


async def test_recall_combines_words_with_or_and_ranks_both_words_first(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        # Different days, so that no memory lends score to its neighbour: this is about BM25 alone.
        tea = await remember(c, "Maya drinks green tea every morning", occurred_at="2024-01-01")
        coffee = await remember(c, "Sam only drinks black coffee", occurred_at="2024-01-02")
        both = await remember(c, "At the office there is tea and coffee", occurred_at="2024-01-03")
        await remember(c, "The build takes four minutes", occurred_at="2024-01-04")
        ids = await matched(c, query="tea coffee")
    assert set(ids) == {tea, coffee, both}
    assert ids[0] == both


async def test_recall_drops_stopwords_from_the_query(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        garden = await remember(c, "The garden needs watering twice a week")
        # Would match "what", "did", "about" and "the" if stopwords were searched for.
        await remember(c, "What did you think about the movie")
        ids = await matched(c, query="what did I say about the garden")
    assert ids == [garden]


async def test_recall_of_a_query_made_only_of_stopwords_still_searches(server: Any, mode: str) -> None:
    # text.query_terms promises: if every word is a stopword, the words are kept ("who am I").
    async with Client(server, mode=mode) as c:
        who = await remember(c, "Who am I when nobody is watching", occurred_at="2024-01-01")
        await remember(c, "The build takes four minutes", occurred_at="2024-02-01")
        result = await ok(c, "recall", {"query": "who am I"})
    assert [h["id"] for h in result["hits"]] == [who], result


async def test_recall_returns_a_match_neighbour_as_context(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        question = await remember(c, "Which database should back the cache?")
        answer = await remember(c, "We picked Redis because the team knows it")
        elsewhere = await remember(c, "Redis was slow on the old laptop", occurred_at="2020-01-01")
        hits = (await ok(c, "recall", {"query": "cache database"}))["hits"]
        text = await text_of(c, "recall", {"query": "cache database"})
    by_id = {h["id"]: h for h in hits}
    assert hits[0]["id"] == question and hits[0]["context_of"] is None
    # Stored right after the question, in the same session and on the same day: the answer.
    assert by_id[answer]["context_of"] == question
    assert 0 < by_id[answer]["score"] < hits[0]["score"]
    assert elsewhere not in by_id
    assert f"stored right beside {question}" in text


async def test_recall_tag_filter_requires_every_tag(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        both = await remember(c, "Release plan for project x", tags=["project-x", "planning"])
        only_x = await remember(c, "Project x standup notes", tags=["project-x"])
        await remember(c, "Planning the holiday", tags=["planning"])
        assert set(await recall_ids(c, tags=["project-x"])) == {both, only_x}
        assert await recall_ids(c, tags=["project-x", "planning"]) == [both]
        assert await recall_ids(c, tags=["PLANNING", "Project-X"]) == [both]
        assert await recall_ids(c, query="project", tags=["planning"]) == [both]
        assert await recall_ids(c, tags=["project-x", "planning", "nowhere"]) == []


async def test_recall_kind_filter(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        lesson = await remember(c, "Always run the migrations before deploying", kind="lesson")
        fact = await remember(c, "The migrations live in schema.py", kind="fact")
        assert await recall_ids(c, query="migrations", kind="lesson") == [lesson]
        assert await recall_ids(c, kind="fact") == [fact]
        assert await recall_ids(c, kind="person") == []


async def test_recall_since_and_until_filter_by_when_it_happened(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        may7 = await remember(c, "meeting on the seventh", occurred_at="2024-05-07T23:59:59Z")
        may8_early = await remember(c, "meeting early on the eighth", occurred_at="2024-05-08T00:00:00Z")
        may8_late = await remember(c, "meeting late on the eighth", occurred_at="2024-05-08T23:59:59Z")
        may9 = await remember(c, "meeting on the ninth", occurred_at="2024-05-09")
        # A bare `until` date includes the whole of that day.
        assert set(await recall_ids(c, query="meeting", until="2024-05-08")) == {may7, may8_early, may8_late}
        assert set(await recall_ids(c, query="meeting", since="2024-05-08")) == {may8_early, may8_late, may9}
        assert set(await recall_ids(c, since="2024-05-08", until="2024-05-08")) == {may8_early, may8_late}
        # A date-time `until` is exact and exclusive; offsets are honoured.
        assert await recall_ids(c, until="2024-05-08T00:00:00Z") == [may7]
        assert await recall_ids(c, since="2024-05-09T01:00:00+01:00") == [may9]


async def test_recall_without_a_query_lists_most_recent_first(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        old = await remember(c, "oldest", occurred_at="2020-01-01")
        new = await remember(c, "newest", occurred_at="2024-01-01")
        mid = await remember(c, "middle", occurred_at="2022-01-01")
        result = await ok(c, "recall", {})
        text = await text_of(c, "recall", {"query": "   "})
    assert [h["id"] for h in result["hits"]] == [new, mid, old]
    assert all(h["score"] == 0 for h in result["hits"])
    assert "most recent first" in text
    assert text.index(new) < text.index(mid) < text.index(old)


@pytest.mark.parametrize("query", ["", "garden"], ids=["listing", "search"])
async def test_recall_pages_cover_every_memory_once(server: Any, mode: str, query: str) -> None:
    async with Client(server, mode=mode) as c:
        # Equal-length contents give equal BM25 scores: paging must still not repeat or skip.
        stored = {
            await remember(c, f"garden note number {n:02d}", occurred_at="2024-03-01") for n in range(23)
        }
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            args: dict[str, Any] = {"query": query, "limit": 5}
            if cursor:
                args["cursor"] = cursor
            page = await ok(c, "recall", args)
            assert len(page["hits"]) <= 5
            seen += [h["id"] for h in page["hits"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == stored


async def test_recall_cursor_reused_with_another_query_is_refused(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        for n in range(3):
            await remember(c, f"garden fact {n}", tags=["home"])
        cursor = (await ok(c, "recall", {"query": "garden", "limit": 1}))["next_cursor"]
        assert cursor
        assert "cursor=" in await text_of(c, "recall", {"query": "garden", "limit": 1})
        for other in (
            {"query": "fact"},
            {"query": "garden", "tags": ["home"]},
            {"query": "garden", "kind": "fact"},
        ):
            refused = await c.call_tool("recall", {**other, "limit": 1, "cursor": cursor})
            assert refused.is_error
            assert "cursor belongs to a different query or filters" in refused.content[0].text
        # The same query with the same filters accepts it.
        assert len(await recall_ids(c, query="garden", limit=1, cursor=cursor)) == 1


async def test_forget_takes_a_memory_out_of_recall_but_keeps_it_readable(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        wrong = await remember(c, "Sam's birthday is in March")
        kept = await remember(c, "Sam likes birthday cake")
        out = await ok(c, "forget", {"memory_id": wrong, "reason": "it is in April"})
        text = await text_of(c, "recall", {"query": "birthday"})
        listing = await recall_ids(c)
        stored = json.loads(await read_text(c, f"self://memories/{wrong}"))
        # The same content can be remembered again as a new, active memory.
        again = await ok(c, "remember", {"content": "Sam's birthday is in March"})
    assert out["status"] == "forgotten" and out["status_reason"] == "it is in April"
    assert wrong not in text and kept in text
    assert listing == [kept]
    assert stored["status"] == "forgotten"
    assert stored["content"] == "Sam's birthday is in March"
    assert again["is_new"] is True and again["memory"]["id"] != wrong


async def test_revise_memory_supersedes_the_old_one(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        old = await remember(c, "The standup is at 9:00", kind="event", tags=["team"], importance=4,
                             occurred_at="2024-02-01")  # fmt: skip
        new = await ok(c, "revise_memory", {"memory_id": old, "content": "The standup is at 9:30",
                                            "reason": "moved by half an hour"})  # fmt: skip
        hits = (await ok(c, "recall", {"query": "standup"}))["hits"]
        old_stored = json.loads(await read_text(c, f"self://memories/{old}"))
        new_stored = json.loads(await read_text(c, f"self://memories/{new['id']}"))
    assert new["id"] != old
    assert new["content"] == "The standup is at 9:30"
    assert new["supersedes"] == old
    # The revision keeps what the old memory said about itself.
    assert (new["kind"], new["tags"], new["importance"], new["occurred_at"]) == (
        "event", ["team"], 4, "2024-02-01T00:00:00Z")  # fmt: skip
    assert [h["id"] for h in hits] == [new["id"]]
    assert old_stored["status"] == "superseded"
    assert old_stored["superseded_by"] == new["id"]
    assert old_stored["status_reason"] == "moved by half an hour"
    assert new_stored["status"] == "active" and new_stored["supersedes"] == old


async def test_who_forgot_or_revised_a_memory_is_kept(server: Any, mode: str) -> None:
    """Provenance of status changes: the client that forgot a memory, the one that revised it."""
    async with Client(server, mode=mode, client_info=Implementation(name="cursor", version="1.0")) as c:
        memory_id = await remember(c, "The office moves to Lisbon")
        forgotten = await ok(c, "forget", {"memory_id": memory_id, "reason": "not decided yet"})
    assert forgotten["status_changed_by"] == "cursor"
    async with Client(server, mode=mode) as c:
        revised_id = await remember(c, "The office opens at 8")
        await ok(c, "revise_memory", {"memory_id": revised_id, "content": "The office opens at 9",
                                      "reason": "summer hours"})  # fmt: skip
        old = json.loads(await read_text(c, f"self://memories/{revised_id}"))
    assert old["status"] == "superseded" and old["status_changed_by"] == "mcp"


# Documents ---------------------------------------------------------------------------------------


async def test_read_soul_before_any_write_is_the_starter_and_stores_nothing(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        soul = await ok(c, "read_soul")
        text = await text_of(c, "read_soul")
        resource = await read_text(c, "self://soul")
        history = await ok(c, "history", {"document": "soul"})
        intent = await ok(c, "read_intent")
        north = await ok(c, "read_north_star")
    assert soul["adopted"] is False and soul["version"] is None
    assert soul["content"] == STARTER_SOUL == resource
    assert "write_soul" in soul["hint"]
    assert "not yet adopted" in text
    assert history["versions"] == []
    assert intent["adopted"] is False and intent["content"] == "" and "write_intent" in intent["hint"]
    assert north["adopted"] is False and "write_north_star" in north["hint"]


async def test_soul_write_history_diff_and_restore(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        v1 = await ok(c, "write_soul", {"content": "# Me\nI am calm.\n", "reason": "first words"})
        v2 = await ok(c, "write_soul", {"content": "# Me\nI am calm and curious.\n", "reason": "curiosity"})
        current = await ok(c, "read_soul")
        old = await ok(c, "read_soul", {"version": 1})
        history = await ok(c, "history", {"document": "soul"})
        history_text = await text_of(c, "history", {"document": "soul"})
        diff = await ok(c, "diff", {"document": "soul", "from_version": 1, "to_version": 2})
        restored = await ok(
            c, "restore", {"document": "soul", "version": 1, "reason": "curiosity was too much"}
        )
        restored_text = await text_of(c, "read_soul")
        after = await ok(c, "history", {"document": "soul"})
        older_page = await ok(c, "history", {"document": "soul", "limit": 1, "before_version": 3})
        same = await ok(c, "diff", {"document": "soul", "from_version": 1, "to_version": 3})
        versioned = await read_text(c, "self://soul/versions/2")
    assert (v1["changed"], v1["version"]["version"]) == (True, 1)
    assert (v2["changed"], v2["version"]["version"]) == (True, 2)
    assert current["adopted"] is True and current["version"] == 2
    assert current["content"] == "# Me\nI am calm and curious.\n" and current["reason"] == "curiosity"
    assert old["version"] == 1 and old["content"] == "# Me\nI am calm.\n"
    assert [v["version"] for v in history["versions"]] == [2, 1]
    assert history["versions"][1]["reason"] == "first words"
    assert history_text.index("version 2") < history_text.index("version 1")
    assert "-I am calm.\n" in diff["diff"] and "+I am calm and curious.\n" in diff["diff"]
    assert restored["changed"] is True
    assert restored["version"]["version"] == 3 and restored["version"]["restored_from"] == 1
    assert restored["version"]["content"] == "# Me\nI am calm.\n"
    assert "restored from version 1" in restored_text
    assert [(v["version"], v["restored_from"]) for v in after["versions"]] == [(3, 1), (2, None), (1, None)]
    assert [v["version"] for v in older_page["versions"]] == [2]
    assert older_page["next_before_version"] == 2
    assert same["diff"] == ""
    assert versioned == "# Me\nI am calm and curious.\n"


async def test_writing_identical_content_stores_no_new_version(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        await ok(c, "write_soul", {"content": "I am steady.", "reason": "start"})
        again = await ok(c, "write_soul", {"content": "I am steady.", "reason": "again"})
        text = await text_of(c, "write_soul", {"content": "I am steady.", "reason": "once more"})
        restore_current = await ok(c, "restore", {"document": "soul", "version": 1, "reason": "no-op"})
        history = await ok(c, "history", {"document": "soul"})
    assert again["changed"] is False and again["version"]["version"] == 1
    assert "unchanged" in text
    assert restore_current["changed"] is False
    assert len(history["versions"]) == 1


async def test_intent_needs_no_reason_and_north_star_keeps_its_reason(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        first = await ok(c, "write_intent", {"content": "Refactoring billing; next: the tests"})
        await ok(c, "write_intent", {"content": "Billing done; next: release notes"})
        intent = await ok(c, "read_intent")
        north = await ok(c, "write_north_star", {"content": "Ship a calm, reliable product", "reason": "Q3"})
        north_read = await ok(c, "read_north_star")
        north_resource = await read_text(c, "self://north-star")
        intent_resource = await read_text(c, "self://intent")
        intent_history = await ok(c, "history", {"document": "intent"})
    assert first["changed"] is True and first["version"]["reason"] is None
    assert intent["version"] == 2 and intent["content"] == "Billing done; next: release notes"
    assert intent_resource == "Billing done; next: release notes"
    assert north["version"]["reason"] == "Q3"
    assert north_read["adopted"] is True and north_read["reason"] == "Q3"
    assert north_resource == "Ship a calm, reliable product"
    assert [v["version"] for v in intent_history["versions"]] == [2, 1]


# Wake-up -----------------------------------------------------------------------------------------


async def test_wake_up_assembles_soul_intent_north_star_and_memories(server: Any, mode: str) -> None:
    async with Client(server, mode=mode, client_info=Implementation(name="cursor", version="1")) as c:
        await ok(c, "write_soul", {"content": "I am Wren, a careful helper.", "reason": "adopting"})
        await ok(c, "write_intent", {"content": "Halfway through the billing refactor."})
        await ok(c, "write_north_star", {"content": "Make billing boring.", "reason": "focus"})
        relevant = await remember(c, "Billing uses Stripe webhooks", importance=2, occurred_at="2023-01-01")
        important = await remember(c, "Never deploy on Fridays", importance=5, occurred_at="2023-01-02")
        recent = await remember(c, "Had lunch with Sam", importance=2)
        woken = await ok(c, "wake_up", {"focus": "billing webhooks"})
        text = await text_of(c, "wake_up", {"focus": "billing webhooks"})
    assert woken["text"] == text
    assert "I am Wren, a careful helper." in text
    assert "Halfway through the billing refactor." in text
    assert "by cursor" in text and woken["intent_age"] == "just now"
    assert "Make billing boring." in text
    assert woken["soul"]["adopted"] is True and woken["soul"]["version"] == 1
    assert woken["focus"] == "billing webhooks"
    assert [h["id"] for h in woken["relevant"]] == [relevant]
    assert [h["id"] for h in woken["important"]] == [important]
    assert [h["id"] for h in woken["recent"]] == [recent]
    assert text.index("Billing uses Stripe") < text.index("Never deploy") < text.index("lunch with Sam")
    assert woken["trimmed"] == []
    assert woken["used_chars"] == len(text) <= woken["budget_chars"] == 8000


async def test_wake_up_before_anything_is_written_shows_the_starter(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        woken = await ok(c, "wake_up")
    assert woken["soul"]["adopted"] is False
    assert "starter, not yet adopted" in woken["text"]
    assert "write_intent" in woken["text"]
    assert woken["intent_age"] is None
    assert (woken["relevant"], woken["important"], woken["recent"]) == ([], [], [])


@pytest.mark.parametrize("budget", [500, 1200, 4000])
async def test_wake_up_stays_within_budget_and_lists_what_it_trimmed(
    server: Any, mode: str, budget: int
) -> None:
    async with Client(server, mode=mode) as c:
        await ok(c, "write_soul", {"content": "I value care. " * 400, "reason": "long soul"})
        await ok(c, "write_intent", {"content": "next step " * 200})
        for n in range(12):
            await remember(c, f"memory {n}: " + "detail " * 50, importance=5 if n % 2 else 2)
        woken = await ok(c, "wake_up", {"budget_chars": budget})
    assert len(woken["text"]) <= budget
    assert woken["used_chars"] == len(woken["text"])
    assert any(t.startswith("soul (cut to") for t in woken["trimmed"])
    assert any(t.startswith("intent (cut to") for t in woken["trimmed"])
    assert any("memories (no room; use recall)" in t for t in woken["trimmed"])
    kept = len(woken["important"]) + len(woken["recent"])
    assert kept < 12


async def test_wake_up_records_a_session(server: Any, mode: str, settings: Settings) -> None:
    async with Client(server, mode=mode) as c:
        await ok(c, "wake_up")
        await ok(c, "wake_up")  # the same connection is one session
    async with Client(server, mode=mode) as c:
        await ok(c, "wake_up")
        await ok(c, "recall")  # a connection that never wakes up records nothing extra
    self_ = await AgentSelf.open(settings)
    try:
        stats = await self_.stats()
    finally:
        await self_.close()
    assert stats.sessions == 2


# Resources and prompts ---------------------------------------------------------------------------


async def test_resources_and_templates_are_listed_and_readable(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        resources = {str(r.uri) for r in (await c.list_resources()).resources}
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        await ok(c, "write_soul", {"content": "soul one", "reason": "r"})
        await ok(c, "write_soul", {"content": "soul two", "reason": "r"})
        memory_id = await remember(c, "a readable memory", tags=["t"])
        soul = await read_text(c, "self://soul")
        v1 = await read_text(c, "self://soul/versions/1")
        memory = json.loads(await read_text(c, f"self://memories/{memory_id}"))
        with pytest.raises(MCPError, match="no version 9"):
            await c.read_resource("self://soul/versions/9")
        with pytest.raises(MCPError, match="no memory has the id"):
            await c.read_resource("self://memories/m_000000000000")
        with pytest.raises(MCPError, match="not a memory id"):
            await c.read_resource("self://memories/nonsense")
    assert resources == {
        "self://soul",
        "self://identity",
        "self://user",
        "self://intent",
        "self://north-star",
    }
    assert templates == {"self://soul/versions/{version}", "self://memories/{memory_id}"}
    assert soul == "soul two" and v1 == "soul one"
    assert (
        memory["content"] == "a readable memory" and memory["tags"] == ["t"] and memory["status"] == "active"
    )


async def test_prompts_carry_the_soul_and_the_intent(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        names = {p.name for p in (await c.list_prompts()).prompts}
        empty_reflect = (await c.get_prompt("reflect", {})).messages[0].content.text
        await ok(c, "write_soul", {"content": "I am Wren, patient and exact.", "reason": "adopt"})
        await ok(c, "write_intent", {"content": "Was writing the release notes."})
        await remember(c, "Release notes go in CHANGELOG.md", importance=2)
        woken = (await c.get_prompt("wake_up", {"focus": "release notes"})).messages[0].content.text
        reflect = (await c.get_prompt("reflect", {})).messages[0].content.text
    assert names == {"wake_up", "reflect"}
    assert "I am Wren, patient and exact." in woken
    assert "Was writing the release notes." in woken
    assert "CHANGELOG.md" in woken
    assert "Was writing the release notes." in reflect and "write_intent" in reflect
    assert "(none yet)" in empty_reflect


# Persistence -------------------------------------------------------------------------------------


async def test_everything_survives_a_server_restart(settings: Settings, mode: str) -> None:
    async with Client(build_server(settings), mode=mode) as c:
        await ok(c, "write_soul", {"content": "persistent soul", "reason": "r"})
        await ok(c, "write_intent", {"content": "persistent intent"})
        await ok(c, "write_north_star", {"content": "persistent star", "reason": "r"})
        memory_id = await remember(c, "persistent memory about gardening", tags=["home"])
        forgotten = await remember(c, "a memory to forget")
        await ok(c, "forget", {"memory_id": forgotten, "reason": "test"})
    # A new server on the same file: nothing of the first one is shared but the database.
    async with Client(build_server(settings), mode=mode) as c:
        soul = await ok(c, "read_soul")
        intent = await ok(c, "read_intent")
        north = await ok(c, "read_north_star")
        hits = await recall_ids(c, query="garden", tags=["home"])
        listing = await recall_ids(c)
        gone = json.loads(await read_text(c, f"self://memories/{forgotten}"))
    assert (soul["content"], soul["version"]) == ("persistent soul", 1)
    assert intent["content"] == "persistent intent"
    assert north["content"] == "persistent star"
    assert hits == [memory_id] and listing == [memory_id]
    assert gone["status"] == "forgotten"
