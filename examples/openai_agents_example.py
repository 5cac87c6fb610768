"""An OpenAI Agents SDK agent with a persistent self: soul-mcp over stdio as its MCP server.

    # a real model (needs OPENAI_API_KEY)
    python examples/openai_agents_example.py gpt-5 "What do you remember about me?"

    # no model, no network: a scripted stand-in calls wake_up, remember, recall, then answers
    python examples/openai_agents_example.py test --db /tmp/soul-example.db

The agent prints every tool call it made, then its answer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
from agents import Agent, RunConfig, Runner, Usage
from agents.items import ToolCallItem
from agents.mcp import MCPServerStdio
from agents.models.interface import Model, ModelResponse
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

INSTRUCTIONS = (
    "You have a persistent self kept by soul-mcp. Start by calling wake_up with the task as focus. "
    "Recall before answering from memory, remember anything worth keeping, and answer briefly."
)
DEFAULT_PROMPT = "I prefer short answers with the code first. Please keep that in mind."
# Stdio clients start the server with a cut-down environment: pass on what it needs explicitly.
PASS_ENV = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR", "SOUL_MCP_SYNCHRONOUS")


def soul_server(command: str | None, db: str | None) -> MCPServerStdio:
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
    # The first call opens the database (and creates it): allow more than the default 5 s.
    return MCPServerStdio(
        {"command": program, "args": args, "env": env}, name="soul", client_session_timeout_seconds=30
    )


# The scripted stand-in for a model ---------------------------------------------------------------


def _text(output: Any) -> str:
    """A tool's output as the model receives it: a string or a list of input_text items."""
    if isinstance(output, str):
        return output
    return "\n".join(item.get("text", "") for item in output if isinstance(item, dict))


class ScriptedModel(Model):
    """Behaves like a well-mannered model: wake up, remember the user's words, recall, answer.

    Each turn it reads the conversation so far (OpenAI Responses items) and picks the next step
    from the tool outputs in it, as a real model would. The tools' text is what it reads.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def _call(self, name: str, args: dict[str, Any]) -> ModelResponse:
        call_id = f"call_{next(self._ids)}"
        call = ResponseFunctionToolCall(
            type="function_call", id=call_id, call_id=call_id, name=name, arguments=json.dumps(args)
        )
        return ModelResponse(output=[call], usage=Usage(), response_id=None)

    def _say(self, text: str) -> ModelResponse:
        content = [ResponseOutputText(type="output_text", text=text, annotations=[])]
        message = ResponseOutputMessage(
            id="msg_1", type="message", role="assistant", status="completed", content=content
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        items = [item if isinstance(item, dict) else item.model_dump() for item in items]
        prompt = next(str(item["content"]) for item in items if item.get("role") == "user")
        names = {item["call_id"]: item["name"] for item in items if item.get("type") == "function_call"}
        results = {
            names[item["call_id"]]: _text(item["output"])
            for item in items
            if item.get("type") == "function_call_output"
        }

        if "wake_up" not in results:
            return self._call("wake_up", {"focus": prompt, "budget_chars": 2000})
        if "remember" not in results:
            return self._call("remember", {"content": f"The user said: {prompt}", "kind": "preference"})
        if "recall" not in results:
            return self._call("recall", {"query": prompt, "limit": 3})
        stored = re.search(r"\[(m_[0-9a-f]{12})\]", results["remember"])  # the id in the tool's text
        memory_id = stored.group(1) if stored else "(none)"
        return self._say(f"I stored memory {memory_id}. Recalling it gives:\n{results['recall']}")

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the scripted model does not stream; use Runner.run")


# Running it -----------------------------------------------------------------------------------


async def run(model: str, prompt: str, command: str | None, db: str | None) -> None:
    scripted = model == "test"
    async with soul_server(command, db) as server:  # starts soul-mcp for the whole run
        agent = Agent(
            name="soul-mcp example",
            instructions=INSTRUCTIONS,
            model=ScriptedModel() if scripted else model,
            mcp_servers=[server],
        )
        # Tracing uploads to OpenAI; the offline stand-in must not try.
        result = await Runner.run(agent, prompt, run_config=RunConfig(tracing_disabled=scripted))
    for item in result.new_items:
        if isinstance(item, ToolCallItem):
            print(f"-> {item.raw_item.name}({item.raw_item.arguments})")  # type: ignore[union-attr]
    print(f"\n{result.final_output}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an OpenAI model name, e.g. gpt-5, or 'test' for the scripted stand-in")
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="what to tell the agent")
    parser.add_argument("--db", help="SQLite file (default: $SOUL_MCP_DB, else the user data folder)")
    parser.add_argument("--command", help="how to start the server (default: python -m soul_mcp serve)")
    args = parser.parse_args()
    anyio.run(run, args.model, args.prompt, args.command, args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
