"""A minimal MCP client for soul-mcp: start the server over stdio and walk one session.

    python examples/client.py --db /tmp/soul-example.db
    python examples/client.py --command ".venv/bin/soul-mcp serve" --db ~/my-soul.db

It does what an agent would do: wake_up, remember something, recall it, and leave an intent for the
next session. Every call prints the readable text the server returns (the same text a model reads).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

import anyio
from mcp import Client, Implementation, StdioServerParameters

# Variables worth passing on. Stdio clients start the server with a cut-down environment, so
# anything the server needs (above all SOUL_MCP_DB and the limits) has to be passed explicitly.
PASS_ENV = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR", "SOUL_MCP_SYNCHRONOUS")


def server_params(command: str | None, db: str | None) -> StdioServerParameters:
    """How to start `soul-mcp serve`: this interpreter's module by default, or a given command."""
    if command:
        program, *args = shlex.split(command)
    else:
        program, args = sys.executable, ["-m", "soul_mcp", "serve"]
    env = {
        name: value for name, value in os.environ.items() if name in PASS_ENV or name.startswith("SOUL_MCP_")
    }
    db = db or os.environ.get("SOUL_MCP_DB")
    if db:
        env["SOUL_MCP_DB"] = db
    return StdioServerParameters(command=program, args=args, env=env)


def show(title: str, result: Any) -> None:
    print(f"\n=== {title} ===")
    if result.is_error:
        print(f"(error) {result.content[0].text}")
    else:
        print(result.content[0].text)


async def walk(params: StdioServerParameters) -> int:
    client_info = Implementation(name="soul-mcp example client", version="1.0")
    async with Client(params, client_info=client_info) as client:
        tools = await client.list_tools()
        names = ", ".join(tool.name for tool in tools.tools)
        print(f"Connected. The server offers {len(tools.tools)} tools: {names}")

        woke = await client.call_tool("wake_up", {"focus": "trying out soul-mcp", "budget_chars": 2000})
        show("wake_up", woke)

        remembered = await client.call_tool(
            "remember",
            {
                "content": "The example client ran against this database and found soul-mcp working.",
                "kind": "event",
                "tags": ["example"],
                "importance": 2,
            },
        )
        show("remember", remembered)

        recalled = await client.call_tool("recall", {"query": "did the example client work?", "limit": 3})
        show("recall", recalled)

        intent = await client.call_tool(
            "write_intent",
            {"content": "Tried soul-mcp with examples/client.py. Next: connect a real MCP client."},
        )
        show("write_intent", intent)

        failed = [r for r in (woke, remembered, recalled, intent) if r.is_error]
        if failed:
            return 1
        hits = (recalled.structured_content or {}).get("hits", [])
        stored = remembered.structured_content
        state = "stored" if stored["is_new"] else "was already stored"
        print(f"\nDone: memory {stored['memory']['id']} {state}; recall found {len(hits)}.")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="SQLite file (default: $SOUL_MCP_DB, else the user data folder)")
    parser.add_argument("--command", help="how to start the server (default: python -m soul_mcp serve)")
    args = parser.parse_args()
    return anyio.run(walk, server_params(args.command, args.db))


if __name__ == "__main__":
    sys.exit(main())
