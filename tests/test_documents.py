"""The identity and user documents beside the soul: MCP tools in both protocol eras, resources,
wake-up, and the budget shares that make room for them.
"""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.types import Implementation

from soul_mcp.config import Settings
from soul_mcp.core.wakeup import assemble_wake_up
from soul_mcp.models import Document

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(settings_on_each_backend: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL."""
    return settings_on_each_backend


IDENTITY = "# IDENTITY.md\n\n- Name: Ada\n- Creature: owl-ish familiar 🦉\n- Vibe: calm, exact\n"
USER = "# USER.md\n\n- Name: Maya Schröder\n- Timezone: Europe/Berlin\n- Likes: code first\n"


async def ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result
    return result.content[0].text


@pytest.mark.parametrize("document", ["identity", "user"])
async def test_identity_and_user_are_versioned_like_the_soul(server: Any, mode: str, document: str) -> None:
    async with Client(server, mode=mode, client_info=Implementation(name="cursor", version="1")) as c:
        empty = await ok(c, "read_document", {"document": document})
        assert (empty["version"], empty["adopted"], empty["content"]) == (None, False, "")
        assert f"write_document(document='{document}'" in empty["hint"]

        first = await ok(c, "write_document", {"document": document, "content": "v1", "reason": "first"})
        second = await ok(c, "write_document", {"document": document, "content": "v2\n", "reason": "more"})
        same = await ok(c, "write_document", {"document": document, "content": "v2\n", "reason": "again"})
        assert (first["version"]["version"], second["version"]["version"]) == (1, 2)
        assert same["changed"] is False and same["version"]["version"] == 2

        current = await ok(c, "read_document", {"document": document})
        assert (current["content"], current["author"], current["reason"]) == ("v2\n", "cursor", "more")
        assert (await ok(c, "read_document", {"document": document, "version": 1}))["content"] == "v1"
        history = await ok(c, "history", {"document": document})
        assert [v["version"] for v in history["versions"]] == [2, 1]
        diff = await ok(c, "diff", {"document": document, "from_version": 1, "to_version": 2})
        assert "-v1\n+v2\n" in diff["diff"]
        restored = await ok(c, "restore", {"document": document, "version": 1, "reason": "back"})
        assert restored["version"]["restored_from"] == 1
        resource = await c.read_resource(f"self://{document}")
        assert resource.contents[0].text == "v1"


async def test_write_document_covers_the_original_three(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        await ok(c, "write_document", {"document": "soul", "content": "I am Ada.", "reason": "mine"})
        await ok(c, "write_document", {"document": "intent", "content": "next: tests"})  # no reason needed
        await ok(c, "write_document", {"document": "north_star", "content": "ship", "reason": "focus"})
        assert (await ok(c, "read_soul", {}))["content"] == "I am Ada."
        assert (await ok(c, "read_intent", {}))["content"] == "next: tests"
        assert (await ok(c, "read_document", {"document": "north_star"}))["content"] == "ship"


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("write_document", {"document": "identity", "content": "Ada"}, "reason is required"),
        ("write_document", {"document": "user", "content": "Maya", "reason": "  "}, "reason is required"),
        ("write_document", {"document": "user", "content": "   ", "reason": "r"}, "content is empty"),
        (
            "read_document",
            {"document": "memories"},
            "Input should be 'soul', 'identity', 'user', 'intent' or 'north_star'",
        ),
        ("write_document", {"document": "SOUL", "content": "x", "reason": "r"}, "Input should be 'soul'"),
        ("read_document", {"document": "user", "version": 3}, "user has no version 3; no versions exist yet"),
        ("restore", {"document": "identity", "version": 1, "reason": "r"}, "no versions exist yet"),
    ],
)
async def test_bad_document_calls_say_what_is_allowed(
    server: Any, mode: str, tool: str, args: dict[str, Any], message: str
) -> None:
    async with Client(server, mode=mode) as c:
        assert message in await refused(c, tool, args)


async def test_wake_up_includes_identity_and_user_once_written(server: Any, mode: str) -> None:
    async with Client(server, mode=mode) as c:
        before = await ok(c, "wake_up", {})
        assert "## Identity" not in before["text"] and "## User" not in before["text"]
        assert before["identity"]["version"] is None and before["user"]["version"] is None
        await ok(c, "write_soul", {"content": "I am Ada.", "reason": "mine"})
        await ok(c, "write_document", {"document": "identity", "content": IDENTITY, "reason": "named"})
        await ok(c, "write_document", {"document": "user", "content": USER, "reason": "met Maya"})
        await ok(c, "write_intent", {"content": "next: billing"})
        woken = await ok(c, "wake_up", {})
    text = woken["text"]
    assert woken["identity"]["version"] == 1 and woken["user"]["version"] == 1
    assert "Creature: owl-ish familiar 🦉" in text and "Maya Schröder" in text
    # Priority order: soul, identity, user, intent, north star.
    positions = [text.index(h) for h in ("## Soul", "## Identity", "## User", "## Intent", "## North star")]
    assert positions == sorted(positions)


def _doc(name: str, content: str, version: int | None = 1) -> Document:
    return Document(document=name, version=version, content=content, adopted=version is not None,  # type: ignore[arg-type]
                    author="someone" if version else None, hint=None if version else "write one")  # fmt: skip


def test_long_identity_and_user_are_cut_to_a_tenth_of_the_budget() -> None:
    woken = assemble_wake_up(
        _doc("soul", "I am me."), _doc("intent", "next"), _doc("north_star", "star"), None, [], [], [],
        budget=4000, identity=_doc("identity", "Ada. " * 500), user=_doc("user", "Maya. " * 500),
    )  # fmt: skip
    assert woken.trimmed == [
        "identity (cut to 400 chars; read it whole with read_document(document='identity'))",
        "user (cut to 400 chars; read it whole with read_document(document='user'))",
    ]
    assert "next" in woken.text and "star" in woken.text and len(woken.text) <= 4000


def test_when_every_document_is_long_the_lowest_give_way_and_the_budget_holds() -> None:
    long = "word " * 4000
    docs = {name: _doc(name, long) for name in ("soul", "identity", "user", "intent", "north_star")}
    for budget in (500, 1000, 2000, 8000):
        woken = assemble_wake_up(
            docs["soul"], docs["intent"], docs["north_star"], None, [], [], [], budget=budget,
            identity=docs["identity"], user=docs["user"],
        )  # fmt: skip
        assert len(woken.text) <= budget
        # The closing line survives: the documents were held to what was left, not clipped at the end.
        assert woken.text.endswith("before the session ends.")
        assert woken.trimmed[0].startswith("soul (cut to")
        # Every document is either cut or left out, and said so.
        named = {t.split(" ")[0] for t in woken.trimmed}
        assert named == {"soul", "identity", "user", "intent", "north_star"}
    small = assemble_wake_up(
        docs["soul"], docs["intent"], docs["north_star"], None, [], [], [], budget=500,
        identity=docs["identity"], user=docs["user"],
    )  # fmt: skip
    assert "north_star (no room; read it with read_north_star)" in small.trimmed
