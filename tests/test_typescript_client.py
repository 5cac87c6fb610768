"""The TypeScript MCP SDK client (what many hosts are built on) against `soul-mcp serve` on stdio.

tests/node/ts_client.mjs does the MCP work and prints what it saw as JSON. The TypeScript client
validates each tool's structuredContent against the outputSchema it listed, so a schema the Python
side declares but does not keep fails here even though the Python client accepts it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "node" / "ts_client.mjs"
SDK_VERSION = "1.32.2"  # pinned in .ci/package.json


def run_ts_client(node_tools: Path, home: Path, db: Path) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "node is needed for the TypeScript client test"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "MCP_NODE_MODULES": str(node_tools),
        # Reaches the server only because ts_client.mjs forwards SOUL_MCP_* on purpose.
        "SOUL_MCP_DB": str(db),
    }
    done = subprocess.run(
        [node, str(SCRIPT), sys.executable, "-m", "soul_mcp", "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return json.loads(done.stdout)


def test_typescript_sdk_client_remembers_recalls_and_reads_over_stdio(
    node_tools: Path, tmp_path: Path, db_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = run_ts_client(node_tools, home, db_path)

    assert out["sdkVersion"] == SDK_VERSION
    assert out["serverVersion"]["name"] == "soul-mcp"
    assert {"tools", "resources", "prompts"} <= out["capabilities"].keys()
    assert len(out["tools"]) == 16
    assert {"wake_up", "remember", "recall", "write_intent"} <= set(out["tools"])
    assert {"wake_up", "reflect"} <= set(out["prompts"])

    assert out["wakeUp"]["soul"]["adopted"] is False
    assert out["wakeUp"]["focus"] == "typescript"

    memory = out["remember"]["memory"]
    assert out["remember"]["is_new"] is True
    assert memory["author"] == "ts-sdk-test"  # the TypeScript client's name, from its clientInfo
    assert memory["tags"] == ["ts"]
    assert out["rememberAgain"]["is_new"] is False
    assert out["rememberAgain"]["memory"]["id"] == memory["id"]
    assert [hit["id"] for hit in out["recall"]["hits"]] == [memory["id"]]

    assert out["writeIntent"]["version"]["version"] == 1
    assert out["intentResource"][0]["text"] == "Check the TypeScript client"
    assert [v["version"] for v in out["history"]["versions"]] == [1]

    assert out["toolError"]["isError"] is True
    assert "no memory has the id 'm_000000000000'" in out["toolError"]["content"][0]["text"]

    # The server wrote to the file named in the forwarded environment, not to a default under HOME.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT id FROM memories").fetchall() == [(memory["id"],)]
    assert not any(home.rglob("*.db"))
