"""The documents' table (soul_mcp/names.py) and the tools' table (server/tools.py) are complete, and
what the server lists, access control and live updates use is what they say."""

from __future__ import annotations

import inspect
from typing import Any, get_args

import pytest
from mcp import Client

from soul_mcp import names
from soul_mcp.models import SCOPES
from soul_mcp.server import access, live
from soul_mcp.server.tools import TOOL_ACCESS, TOOL_SCOPES, TOOLS

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("spec", names.DOCUMENT_TABLE, ids=lambda spec: spec.name)
def test_every_document_has_a_uri_a_file_a_command_and_a_hint(spec: names.DocumentSpec) -> None:
    assert spec.uri == f"self://{spec.command}" and spec.command.replace("-", "_") == spec.name
    assert spec.file.endswith(".md")
    assert spec.resource_description and spec.hint


def test_the_documents_table_is_the_document_vocabulary() -> None:
    assert get_args(names.DocumentName) == names.DOCUMENTS
    assert len({spec.file.lower() for spec in names.DOCUMENT_TABLE}) == len(names.DOCUMENT_TABLE)
    assert tuple(spec.uri for spec in names.DOCUMENT_TABLE) == live.SUBSCRIBABLE
    # Only the soul has a starter text; the others start empty, with a hint.
    assert [spec.name for spec in names.DOCUMENT_TABLE if spec.starter] == ["soul"]


def test_the_workspace_files_are_the_tables() -> None:
    from soul_mcp.workspace import DOCUMENT_FILES

    assert DOCUMENT_FILES == names.DOCUMENT_FILES


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.name)
def test_every_tool_has_a_scope_and_its_identity_changes_are_confirmed(tool: Any) -> None:
    assert tool.access.scope in SCOPES
    parameters = inspect.signature(tool.fn).parameters
    changes = tool.access.changes
    if changes == access.DOCUMENT_ARGUMENT:
        assert "document" in parameters
    else:
        assert changes is None or changes in names.DOCUMENTS
    # A tool that may change who the agent is carries the confirm resolver, and only such a tool.
    may_change_identity = changes == access.DOCUMENT_ARGUMENT or changes in names.IDENTITY_DOCUMENTS
    assert tool.access.confirms == may_change_identity == ("approval" in parameters)


async def test_the_server_lists_the_tables(server: Any) -> None:
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
        resources = (await client.list_resources()).resources
    assert [tool.name for tool in tools] == [tool.name for tool in TOOLS]
    for listed, tool in zip(tools, TOOLS, strict=True):
        assert listed.annotations == tool.annotations
    assert set(TOOL_SCOPES) == set(TOOL_ACCESS) == {tool.name for tool in tools}
    by_uri = {str(resource.uri): resource for resource in resources}
    for spec in names.DOCUMENT_TABLE:
        assert by_uri[spec.uri].description == spec.resource_description


@pytest.mark.parametrize(
    ("tool", "arguments", "scope"),
    [
        ("write_document", {"document": "user"}, "write"),
        ("write_document", {"document": "identity"}, "identity"),
        ("restore", {"document": "intent"}, "write"),
        ("restore", {}, "identity"),  # names no document: fail closed
        ("write_intent", {"document": "soul"}, "write"),  # its document is fixed
        ("read_document", {"document": "soul"}, "read"),
        ("read_something_new", {}, "read"),
        ("something_new", {"document": "user"}, "write"),
        ("something_new", {}, "identity"),
    ],
)
def test_a_calls_scope_follows_the_table(tool: str, arguments: dict[str, Any], scope: str) -> None:
    assert access.tool_scope(access.access_rule(TOOL_ACCESS, tool), arguments) == scope
