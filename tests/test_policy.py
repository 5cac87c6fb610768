"""The soul policy: open, confirm (the person is asked through MCP elicitation) and locked.

Driven through the in-process client in both protocol eras: the handshake era elicits with a
server-to-client request in the middle of the call, the 2026-07-28 era with an InputRequiredResult
that the client answers and retries. The same policy over HTTP, with tokens, is in test_http.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import server_command, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import ElicitRequestParams, ElicitResult

from soul_mcp.config import Settings
from soul_mcp.server import build_server

pytestmark = pytest.mark.anyio

SOUL = "# Soul\n\nI am Ada, a careful coding partner."


@dataclass
class Person:
    """The human behind a client that supports elicitation: answers every form the same way."""

    action: str = "accept"
    approve: bool = True
    asked: list[str] = field(default_factory=list)

    async def __call__(self, context: Any, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params.message)
        if self.action != "accept":
            return ElicitResult(action=self.action)  # type: ignore[arg-type]
        return ElicitResult(action="accept", content={"approve": self.approve})


def policy_server(db: Path, policy: str) -> Any:
    return build_server(Settings(db_path=db, soul_policy=policy))


async def call(client: Client, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(tool, args)
    return bool(result.is_error), result.content[0].text


async def soul_versions(client: Client) -> int:
    result = await client.call_tool("history", {"document": "soul"})
    return len(result.structured_content["versions"])  # type: ignore[index]


async def test_open_policy_lets_identity_writes_through_without_asking(db_path: Path, mode: str) -> None:
    person = Person()
    async with Client(policy_server(db_path, "open"), mode=mode, elicitation_callback=person) as client:
        failed, text = await call(client, "write_soul", {"content": SOUL, "reason": "first words"})
    assert not failed, text
    assert person.asked == []


async def test_locked_policy_refuses_identity_and_points_at_the_cli(db_path: Path, mode: str) -> None:
    person = Person()
    async with Client(policy_server(db_path, "locked"), mode=mode, elicitation_callback=person) as client:
        failed, text = await call(client, "write_soul", {"content": SOUL, "reason": "try"})
        assert failed and "locked" in text and "soul-mcp soul edit" in text
        failed, text = await call(client, "write_north_star", {"content": "Ship it", "reason": "try"})
        assert failed and "soul-mcp north-star edit" in text
        failed, text = await call(client, "restore", {"document": "soul", "version": 1, "reason": "try"})
        assert failed and "locked" in text
        failed, text = await call(
            client, "write_document", {"document": "soul", "content": SOUL, "reason": "around the lock"}
        )
        assert failed and "locked" in text
        failed, text = await call(
            client, "write_document", {"document": "identity", "content": "# Identity\nAda", "reason": "try"}
        )
        assert failed and "locked" in text and "soul-mcp identity edit" in text
        assert await soul_versions(client) == 0
        failed, text = await call(
            client, "write_document", {"document": "user", "content": "# User\nMaya", "reason": "met her"}
        )
        assert not failed, text  # what it knows about its person is not identity
        # The intent and memories are not identity: they stay writable.
        failed, text = await call(client, "write_intent", {"content": "Next: tests"})
        assert not failed, text
        failed, text = await call(client, "restore", {"document": "intent", "version": 1, "reason": "same"})
        assert not failed, text
        failed, text = await call(client, "remember", {"content": "Locked souls still remember"})
        assert not failed, text
    assert person.asked == []


async def test_confirm_policy_writes_when_the_person_approves(db_path: Path, mode: str) -> None:
    person = Person()
    async with Client(policy_server(db_path, "confirm"), mode=mode, elicitation_callback=person) as client:
        failed, text = await call(client, "write_soul", {"content": SOUL, "reason": "my first soul"})
        assert not failed, text
        failed, text = await call(client, "write_soul", {"content": SOUL + "\nKind.", "reason": "kinder"})
        assert not failed, text
        failed, text = await call(client, "restore", {"document": "soul", "version": 1, "reason": "undo"})
        assert not failed, text
        assert await soul_versions(client) == 3
    assert len(person.asked) == 3
    # The person sees who asks, why, and what would be written.
    assert "my first soul" in person.asked[0] and "I am Ada" in person.asked[0]
    assert "restore version 1 of its soul" in person.asked[2]


@pytest.mark.parametrize(("action", "approve"), [("decline", True), ("cancel", True), ("accept", False)],
                         ids=["declined", "cancelled", "unticked"])  # fmt: skip
async def test_confirm_policy_refuses_when_the_person_says_no(
    db_path: Path, mode: str, action: str, approve: bool
) -> None:
    answer = Person(action=action, approve=approve)
    async with Client(policy_server(db_path, "confirm"), mode=mode, elicitation_callback=answer) as client:
        failed, text = await call(client, "write_soul", {"content": SOUL, "reason": "please"})
        assert failed
        assert "did not approve" in text and "soul-mcp soul edit" in text
        assert await soul_versions(client) == 0
    assert len(answer.asked) == 1


async def test_confirm_policy_without_elicitation_refuses_with_the_cli_pointer(
    db_path: Path, mode: str
) -> None:
    async with Client(policy_server(db_path, "confirm"), mode=mode) as client:
        failed, text = await call(client, "write_soul", {"content": SOUL, "reason": "please"})
        assert failed
        assert "cannot ask" in text and "elicitation" in text and "soul-mcp soul edit" in text
        assert await soul_versions(client) == 0
        # Writing what is not identity needs nobody's confirmation.
        failed, text = await call(client, "write_intent", {"content": "Next: ask Maya about the soul"})
        assert not failed, text


async def test_soul_policy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    monkeypatch.setenv("SOUL_MCP_SOUL_POLICY", "locked")
    assert Settings.load(db_path).soul_policy == "locked"
    assert Settings.load(db_path, soul_policy="confirm").soul_policy == "confirm"  # the flag wins
    monkeypatch.setenv("SOUL_MCP_SOUL_POLICY", "sometimes")
    with pytest.raises(SystemExit, match="open, confirm or locked"):
        Settings.load(db_path)


async def test_serve_takes_the_policy_as_a_flag(db_path: Path) -> None:
    """The stdio server a host starts: `soul-mcp serve --soul-policy locked`."""
    command, args = server_command(db_path)
    params = StdioServerParameters(
        command=command, args=[*args, "--soul-policy", "locked"], env=server_env(db_path)
    )
    async with Client(params, mode="legacy") as client:
        failed, text = await call(client, "write_soul", {"content": SOUL, "reason": "try"})
        assert failed and "locked" in text
        written = await client.call_tool("write_intent", {"content": "Next: ask for the soul edit"})
        assert not written.is_error
        assert written.structured_content["version"]["author"] == "mcp"  # the client's name over stdio
