"""The MCP Inspector CLI (the reference debugging client, in Node) against `soul-mcp serve`.

A second, independent client implementation: if the server only worked with the Python SDK's own
client, these would catch it. Each call starts a fresh server process on the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

TOOLS = {
    "wake_up", "remember", "recall", "forget", "revise_memory", "read_soul", "write_soul", "read_intent",
    "write_intent", "read_north_star", "write_north_star", "read_document", "write_document", "history",
    "restore", "diff",
}  # fmt: skip


class Inspector:
    def __init__(self, node_tools: Path, home: Path, db: Path) -> None:
        self.binary = node_tools / ".bin" / "mcp-inspector"
        # The Inspector keeps a catalog under $HOME/.mcp-inspector: keep it out of the real home.
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home)}
        self.db = db

    def run(self, *options: str, server_args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """`mcp-inspector --cli <server command> <options> --format json -q` (--cli must come first)."""
        if server_args is None:
            server_args = ["--db", str(self.db)]
        command = [str(self.binary), "--cli", sys.executable, "-m", "soul_mcp", "serve", *server_args]
        return subprocess.run(
            [*command, *options, "--format", "json", "-q"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=90,
        )

    def result(self, *options: str, server_args: list[str] | None = None) -> dict[str, Any]:
        done = self.run(*options, server_args=server_args)
        assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        return json.loads(done.stdout)["result"]


@pytest.fixture
def inspector(node_tools: Path, tmp_path: Path, db_path: Path) -> Inspector:
    home = tmp_path / "home"
    home.mkdir()
    return Inspector(node_tools, home, db_path)


def test_inspector_lists_every_tool_with_portable_schemas(inspector: Inspector) -> None:
    # --strict makes the Inspector exit 6 when a tool schema has an error-severity portability problem.
    listed = inspector.result("--method", "tools/list", "--strict")
    assert {tool["name"] for tool in listed["tools"]} == TOOLS
    for tool in listed["tools"]:
        assert tool["description"], tool["name"]
        assert tool["outputSchema"]["type"] == "object", tool["name"]


def test_inspector_remembers_and_recalls_through_separate_processes(inspector: Inspector) -> None:
    # --tool-args-json, because --tool-arg content=42 would send the number 42, not the text.
    stored = inspector.result(
        "--method", "tools/call", "--tool-name", "remember",
        "--tool-args-json", json.dumps({"content": "42 is the inspector's favourite number", "tags": ["cli"]}),
    )  # fmt: skip
    assert stored["isError"] is False
    memory = stored["structuredContent"]["memory"]
    assert memory["content"] == "42 is the inspector's favourite number"
    assert memory["author"] == "inspector-cli"  # the client's own name becomes the author

    # The second server gets its database from the environment (-e) instead of --db.
    found = inspector.result(
        "-e", f"SOUL_MCP_DB={inspector.db}",
        "--method", "tools/call", "--tool-name", "recall", "--tool-arg", "query=favourite inspector",
        server_args=[],
    )  # fmt: skip
    assert found["isError"] is False
    assert [hit["id"] for hit in found["structuredContent"]["hits"]] == [memory["id"]]
    assert memory["id"] in found["content"][0]["text"]


def test_inspector_reads_the_soul_resource_after_a_write(inspector: Inspector) -> None:
    written = inspector.result(
        "--method", "tools/call", "--tool-name", "write_soul",
        "--tool-args-json", json.dumps({"content": "# Soul\nInspected and still me.", "reason": "testing"}),
    )  # fmt: skip
    assert written["structuredContent"]["version"]["version"] == 1

    current = inspector.result("--method", "resources/read", "--uri", "self://soul")
    (content,) = current["contents"]
    assert content["uri"] == "self://soul"
    assert content["mimeType"] == "text/markdown"
    assert content["text"] == "# Soul\nInspected and still me."


def test_inspector_sees_a_tool_error_with_the_servers_message(inspector: Inspector) -> None:
    done = inspector.run(
        "--method", "tools/call", "--tool-name", "forget",
        "--tool-args-json", json.dumps({"memory_id": "m_000000000000", "reason": "never existed"}),
    )  # fmt: skip
    assert done.returncode == 5, done.stderr  # the Inspector's exit code for a result with isError
    result = json.loads(done.stdout)["result"]
    assert result["isError"] is True
    assert "no memory has the id 'm_000000000000'" in result["content"][0]["text"]
    assert json.loads(done.stderr)["error"]["code"] == "tool_is_error"
