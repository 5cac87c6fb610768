"""The examples and the docs work as documented, run as a user would run them on a real database file.

The scripts run as subprocesses (they start soul-mcp over stdio themselves); afterwards the test
reads the database back (with the CLI, or AgentSelf on a connection of its own), so a script that
printed the right thing but stored nothing fails.
The client configs are checked by starting the server exactly as they describe it, and the README and
docs/ by comparing them with what the server and the CLI really offer and following their links.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import ROOT, server_env
from mcp import Client, StdioServerParameters

from soul_mcp.cli import build_parser
from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.models import Document, RecallHit, Stats

EXAMPLES = ROOT / "examples"
TIMEOUT = 120


def run_example(script: str, *args: str) -> str:
    """Run an example with this interpreter; its own --db decides the database, not the caller's env."""
    env = {k: v for k, v in os.environ.items() if k != "SOUL_MCP_DB"}
    # These tests check the frameworks' wiring and read exact recall output; hybrid recall (on when
    # the semantic extra is installed) would add hits as its background indexer catches up.
    env["SOUL_MCP_SEMANTIC"] = "off"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def cli(db: Path, *args: str) -> Any:
    """What the database holds, read with the soul-mcp CLI (a process of its own)."""
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", *args, "--json", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Stored:
    hits: list[RecallHit]
    intent: Document
    stats: Stats


async def read_back(db: Path, query: str) -> Stored:
    """What the database holds, read back through the domain on a connection of its own."""
    agent_self = await AgentSelf.open(Settings(db_path=db))
    try:
        found = await agent_self.recall(query)
        return Stored(found.hits, await agent_self.read("intent"), await agent_self.stats())
    finally:
        await agent_self.close()


def stored(db: Path, query: str) -> Stored:
    return anyio.run(read_back, db, query)


# examples/client.py -----------------------------------------------------------------------------


def test_client_example_wakes_remembers_recalls_and_leaves_an_intent(db_path: Path) -> None:
    out = run_example("client.py", "--db", str(db_path))

    assert "The server offers 16 tools" in out
    sections = re.findall(r"^=== (\w+) ===$", out, flags=re.MULTILINE)
    assert sections == ["wake_up", "remember", "recall", "write_intent"]
    assert "(error)" not in out
    assert "## Soul\n(starter, not yet adopted)" in out
    assert "Intent saved as version 1." in out

    recalled = cli(db_path, "recall", "example client")  # the CLI sees what the MCP client stored
    assert [hit["content"] for hit in recalled["hits"]] == [
        "The example client ran against this database and found soul-mcp working."
    ]
    hit = recalled["hits"][0]
    assert (hit["kind"], hit["tags"], hit["importance"]) == ("event", ["example"], 2)
    assert hit["author"] == "soul-mcp example client"
    assert f"Done: memory {hit['id']} stored; recall found 1." in out

    db = stored(db_path, "example client")
    assert (db.intent.version, db.intent.author) == (1, "soul-mcp example client")
    assert db.intent.content.startswith("Tried soul-mcp with examples/client.py.")
    assert db.stats.sessions == 1  # wake_up recorded the session


def test_client_example_run_again_adds_no_duplicates(db_path: Path) -> None:
    run_example("client.py", "--db", str(db_path))
    out = run_example("client.py", "--db", str(db_path))

    assert "Already remembered" in out
    assert "Intent unchanged: the content is identical to version 1." in out
    assert "was already stored; recall found 1." in out
    db = stored(db_path, "example client")
    assert db.stats.memories_active == 1
    assert db.stats.document_versions == {"intent": 1}
    assert db.stats.sessions == 2


# examples/pydantic_ai_agent.py --------------------------------------------------------------------


def tool_calls(out: str) -> list[str]:
    return re.findall(r"^-> (\w+)\(", out, flags=re.MULTILINE)


def test_pydantic_ai_agent_stores_through_soul_mcp_and_wakes_up_with_it_next_run(db_path: Path) -> None:
    prompt = "Maya drinks green tea in the afternoon, never coffee."
    out = run_example("pydantic_ai_agent.py", "test", prompt, "--db", str(db_path))

    assert tool_calls(out) == ["wake_up", "remember", "recall"]
    assert "I woke up with the starter soul (not yet adopted) and 0 earlier memories in view." in out
    db = stored(db_path, "green tea")
    assert len(db.hits) == 1
    hit = db.hits[0]
    assert hit.content == f"The user said: {prompt}"
    assert (hit.kind, hit.tags) == ("preference", ["example"])
    assert hit.author == "pydantic-ai example agent"
    # The answer is built from what the tools returned: the stored id and the recalled content.
    assert f"I stored memory {hit.id}." in out
    assert f"- The user said: {prompt} [{hit.id}]" in out
    assert db.stats.sessions == 1

    # A new process, a new session: it wakes up with what the first one stored.
    again = run_example("pydantic_ai_agent.py", "test", prompt, "--db", str(db_path))
    assert "and 1 earlier memories in view." in again
    assert f"I stored memory {hit.id}, which I already had." in again
    db = stored(db_path, "green tea")
    assert (db.stats.memories_active, db.stats.sessions) == (1, 2)


# examples/openai_agents_example.py ----------------------------------------------------------------


def test_openai_agents_example_stores_and_recalls_through_soul_mcp(db_path: Path) -> None:
    prompt = "The office plants are watered on Fridays."
    out = run_example("openai_agents_example.py", "test", prompt, "--db", str(db_path))

    assert tool_calls(out) == ["wake_up", "remember", "recall"]
    db = stored(db_path, "plants watered")
    assert [hit.content for hit in db.hits] == [f"The user said: {prompt}"]
    assert db.hits[0].kind == "preference"
    # The answer quotes what the recall tool returned, so the memory went through the server and back.
    assert f"I stored memory {db.hits[0].id}. Recalling it gives:\n1 memory for {prompt!r}:" in out
    assert db.stats.sessions == 1


# Client configuration files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claude_desktop_config.json", "cursor_mcp.json"])
@pytest.mark.anyio
async def test_client_config_starts_a_working_soul_mcp_server(name: str, db_path: Path) -> None:
    config = json.loads((EXAMPLES / name).read_text())
    entry = config["mcpServers"]["soul"]
    command = Path(entry["command"])
    # GUI clients start servers without a shell or the user's PATH: the path must be absolute.
    assert command.is_absolute()
    assert command.name == "soul-mcp"
    assert command.parent.parts[-2:] == (".venv", "bin")

    # Start the server as the config says, with this venv's soul-mcp in place of the placeholder path.
    installed = Path(sys.executable).parent / "soul-mcp"
    assert installed.exists(), f"{installed} is missing: pip install -e . creates it"
    params = StdioServerParameters(command=str(installed), args=entry["args"], env=server_env(db_path))
    async with Client(params) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"wake_up", "remember", "recall", "write_intent"} <= tools
        result = await client.call_tool("remember", {"content": f"Configured through {name}"})
        assert not result.is_error
    assert [hit.content for hit in (await read_back(db_path, "configured")).hits] == [
        f"Configured through {name}"
    ]


# README.md and docs/ -------------------------------------------------------------------------------


def page(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.mark.anyio
async def test_docs_document_every_tool_resource_and_prompt(server: Any) -> None:
    tools_page, readme = page("docs/tools.md"), page("README.md")
    async with Client(server) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
    assert len(tools) == 16
    assert [name for name in tools if f"- `{name}(" not in tools_page] == []
    assert [uri for uri in uris + templates if f"`{uri}`" not in tools_page] == []
    assert [name for name in prompts if f"`{name}`" not in tools_page] == []
    # The README's table of tools at a glance names every one as well.
    assert [name for name in tools if f"`{name}`" not in readme] == []


def test_docs_document_every_cli_command() -> None:
    cli_page = page("docs/cli.md")
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert [name for name in commands if f"`{name}`" not in cli_page] == []


@pytest.mark.parametrize("name", ["README.md", "docs/clients.md"])
def test_config_snippet_in_the_docs_is_the_example_file(name: str) -> None:
    blocks = re.findall(r"```json\n(.*?)```", page(name), flags=re.DOTALL)
    assert json.loads(blocks[0]) == json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    assert json.loads((EXAMPLES / "cursor_mcp.json").read_text()) == json.loads(blocks[0])


@pytest.mark.anyio
async def test_stemming_examples_in_the_docs_hold(server: Any) -> None:
    """Every 'X' finds 'Y' example in the docs and the recall tool's description is true."""
    async with Client(server) as client:
        recall_tool = next(t for t in (await client.list_tools()).tools if t.name == "recall")
        docs = "\n".join(page(name) for name in DOC_PAGES) + "\n" + (recall_tool.description or "")
        examples = re.findall(r'"(\w+)"\s+finds\s+"(\w+)"', docs)
        assert len(examples) >= 2  # one in docs/recall.md, one in the tool description
        failing = []
        for query, word in examples:
            kept = await client.call_tool("remember", {"content": f"We talked about {word} today"})
            memory_id = kept.structured_content["memory"]["id"]
            found = await client.call_tool("recall", {"query": query})
            if memory_id not in [hit["id"] for hit in found.structured_content["hits"]]:
                failing.append(f"{query!r} does not find {word!r}")
    assert failing == []


DOC_PAGES = sorted(
    ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "examples/README.md"]
    + [f"docs/{doc.name}" for doc in (ROOT / "docs").glob("*.md")]
)
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def outside_code(text: str) -> list[str]:
    """The page's lines that Markdown renders as text: fenced code blocks left out, as CommonMark
    closes them (a fence of the same character, at least as long, with nothing after it)."""
    lines, fence = [], ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if not fence and match:
            fence = match.group(1)
        elif fence and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = "" if not match.group(2).strip() else fence
        elif not fence:
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Where the page's links lead, as written (inline code holds no links)."""
    return [target for line in outside_code(text) for target in LINK.findall(re.sub(r"`[^`]*`", "", line))]


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... after a repeat."""
    seen: dict[str, int] = {}
    for line in outside_code(text):
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_every_relative_link_in_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    broken = []
    for name in DOC_PAGES:
        source = ROOT / name
        for target in links(page(name)):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:: not ours to check
            path, _, anchor = target.partition("#")
            linked = (source.parent / path).resolve() if path else source
            if not linked.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text("utf-8")):
                broken.append(f"{name}: {target} (no such heading)")
    assert broken == []


def test_the_readme_links_every_page_of_the_docs() -> None:
    linked = {target.partition("#")[0] for target in links(page("README.md"))}
    pages = {f"docs/{doc.name}" for doc in (ROOT / "docs").glob("*.md")}
    assert len(pages) >= 9
    assert sorted(pages - linked) == []


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md draws the tree of soul_mcp/, one line per module; it names no module that
    is gone and leaves none out (a package's __init__.py only when it holds more than re-exports)."""
    text = page("docs/architecture.md")
    tree = text[text.index("```text\nsoul_mcp/\n") + len("```text\n") :].split("```", 1)[0]
    drawn, folders = set(), []
    for line in tree.splitlines():
        depth, name = (len(line) - len(line.lstrip())) // 2, line.split()[0]
        folders[depth:] = [name.rstrip("/")]
        if name.endswith(".py"):
            drawn.add("/".join(folders))
    files = {path.relative_to(ROOT).as_posix() for path in (ROOT / "soul_mcp").rglob("*.py")}
    assert sorted(drawn - files) == []
    assert sorted(path for path in files - drawn if not path.endswith("/__init__.py")) == []
