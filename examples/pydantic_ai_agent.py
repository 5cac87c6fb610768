"""A Pydantic AI agent with a persistent self: soul-mcp over stdio as its toolset.

    # a real model: needs its provider package and API key, e.g. pip install 'pydantic-ai-slim[anthropic]'
    # and ANTHROPIC_API_KEY
    python examples/pydantic_ai_agent.py anthropic:claude-sonnet-4-5 "What do you remember about me?"

    # no model, no network: a scripted stand-in calls wake_up, remember, recall, then answers
    python examples/pydantic_ai_agent.py test --db /tmp/soul-example.db

The agent prints every tool call it made, then its answer. Run it twice with a real model: the
second run wakes up knowing what the first one stored.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

import anyio
from fastmcp.client.transports import StdioTransport
from mcp.types import Implementation
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

INSTRUCTIONS = (
    "You have a persistent self kept by soul-mcp. Start by calling wake_up with the task as focus. "
    "Recall before answering from memory, remember anything worth keeping, and answer briefly."
)
DEFAULT_PROMPT = "I prefer short answers with the code first. Please keep that in mind."
# Stdio clients start the server with a cut-down environment: pass on what it needs explicitly.
PASS_ENV = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR", "SOUL_MCP_SYNCHRONOUS")


def soul_toolset(command: str | None, db: str | None) -> MCPToolset[Any]:
    """soul-mcp started over stdio, with its own instructions passed on to the model."""
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
    return MCPToolset(
        StdioTransport(program, args, env=env),
        include_instructions=True,
        # The name the server records as the author of memories and intents.
        client_info=Implementation(name="pydantic-ai example agent", version="1.0"),
    )


# The scripted stand-in for a model ---------------------------------------------------------------


def _request_parts(messages: list[ModelMessage]) -> list[Any]:
    return [part for m in messages if isinstance(m, ModelRequest) for part in m.parts]


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Behave like a well-mannered model: wake up, remember the user's words, recall, answer.

    Each call sees the whole conversation so far and decides the next step from the tool results in
    it, exactly as a real model would; the results are the tools' structured output.
    """
    parts = _request_parts(messages)
    prompt = next(str(p.content) for p in parts if isinstance(p, UserPromptPart))
    failed = [p for p in parts if isinstance(p, RetryPromptPart)]
    if failed:  # a tool refused the call: say so instead of looping
        return ModelResponse(parts=[TextPart(f"A tool call failed: {failed[-1].model_response()}")])
    results = {p.tool_name: p.content for p in parts if isinstance(p, ToolReturnPart)}

    if "wake_up" not in results:
        return ModelResponse(parts=[ToolCallPart("wake_up", {"focus": prompt, "budget_chars": 2000})])
    if "remember" not in results:
        memory = {"content": f"The user said: {prompt}", "kind": "preference", "tags": ["example"]}
        return ModelResponse(parts=[ToolCallPart("remember", memory)])
    if "recall" not in results:
        return ModelResponse(parts=[ToolCallPart("recall", {"query": prompt, "limit": 3})])

    woke, stored, found = results["wake_up"], results["remember"], results["recall"]
    soul = "my own soul" if woke["soul"]["adopted"] else "the starter soul (not yet adopted)"
    in_view = sum(len(woke[key]) for key in ("relevant", "important", "recent"))
    lines = [
        f"I woke up with {soul} and {in_view} earlier memories in view.",
        f"I stored memory {stored['memory']['id']}" + ("." if stored["is_new"] else ", which I already had."),
        "Recalling it now gives:",
        *(f"- {hit['content']} [{hit['id']}]" for hit in found["hits"]),
    ]
    return ModelResponse(parts=[TextPart("\n".join(lines))])


def build_model(name: str) -> Model | str:
    """`test` is the scripted stand-in; any other name goes to Pydantic AI (e.g. 'openai:gpt-5')."""
    return FunctionModel(scripted_model, model_name="scripted") if name == "test" else name


# Running it -----------------------------------------------------------------------------------


def print_tool_calls(messages: list[ModelMessage]) -> None:
    for message in messages:
        if isinstance(message, ModelResponse):
            for part in message.parts:
                if isinstance(part, ToolCallPart):
                    print(f"-> {part.tool_name}({json.dumps(part.args_as_dict(), ensure_ascii=False)})")


async def run(model: str, prompt: str, command: str | None, db: str | None) -> None:
    agent = Agent(build_model(model), toolsets=[soul_toolset(command, db)], instructions=INSTRUCTIONS)
    async with agent:  # starts the soul-mcp server once for the whole run
        result = await agent.run(prompt)
    print_tool_calls(result.all_messages())
    print(f"\n{result.output}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Pydantic AI model name, e.g. anthropic:claude-sonnet-4-5, or 'test'")
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="what to tell the agent")
    parser.add_argument("--db", help="SQLite file (default: $SOUL_MCP_DB, else the user data folder)")
    parser.add_argument("--command", help="how to start the server (default: python -m soul_mcp serve)")
    args = parser.parse_args()
    anyio.run(run, args.model, args.prompt, args.command, args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
