"""Workspaces in and out: an OpenClaw-style folder imported into the self and exported back.

Everything runs against real SQLite files in tmp_path through AgentSelf (the same calls the CLI
makes); the CLI itself is driven as a subprocess at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_cli import invoke

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.errors import InvalidInput, NotFound
from soul_mcp.models import Actor
from soul_mcp.workspace import export_workspace, import_workspace, parse_memory_file

pytestmark = pytest.mark.anyio

ME = Actor(name="cli:maya")

SOUL = """\
---
summary: "Who Ada is"
read_when:
  - every session
---
# SOUL.md — who I am

Ich bin Ada: careful, warm, direct. 日本語も少し話せる。 ✨

## Boundaries
- No secrets in memory.
  - Not even "temporary" ones.
"""
IDENTITY = "# IDENTITY.md\n\n- Name: Ada\n- Creature: a careful familiar 🦉\n- Vibe: calm\n"
USER = "# USER.md\n\n- Name: Maya Schröder\n- Pronouns: she/her\n- Timezone: Europe/Berlin\n"
NORTH_STAR = "Ship billing v2 without waking anyone at night.\n"
MEMORY_MD = """\
# MEMORY.md - Long-Term Memory

## People
- Maya leads the billing team.
- Sam owns the **invoice** renderer.

## Lessons
- Never deploy on Fridays.
  1. It breaks the weekend.
  2. Rollbacks need two people.
"""
DAY_1 = """\
---
mood: good
---
# 2024-05-08

## Billing
- Moved the billing service to PostgreSQL 16:
  ```sql
  ALTER TABLE invoices ADD COLUMN due date;

  -- a blank line above, and this is not a list:
  - 1
  ```
- Nested plans
  - step one
    - step one point five
  - step two

Had coffee with Zoë in Kraków; she ordered 抹茶.

```python
def hello() -> str:
    return "# not a heading"
```

### Open questions
1. Should credit notes be versioned?
"""
DAY_2 = "# Vendor pitch\n\nAcme pitched their queue. Too expensive.\n"


def write_workspace(root: Path) -> Path:
    files = {
        "SOUL.md": SOUL,
        "IDENTITY.md": IDENTITY,
        "USER.md": USER,
        "intent.md": "",  # empty: a document cannot be empty, so it is skipped
        "north-star.md": NORTH_STAR,
        "AGENTS.md": "# AGENTS.md\nOpenClaw's operating instructions.\n",
        "MEMORY.md": MEMORY_MD,
        "memory/2024-05-08.md": DAY_1,
        "memory/2024-05-09-vendor-pitch.md": DAY_2,
        "memory/2024-05-10.md": "",
        "memory/notes.md": "- undated\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def open_self(db: Path) -> AgentSelf:
    return await AgentSelf.open(Settings(db_path=db))


async def snapshot(agent: AgentSelf) -> dict[str, Any]:
    """Everything an export should carry: documents and active memories, in order."""
    docs = {d: (await agent.read(d)).content for d in ("soul", "identity", "user", "intent", "north_star")}
    memories = [
        (m.content, m.kind, m.tags, m.importance, m.occurred_at, m.author)
        for m in await agent.active_memories()
    ]
    return {"documents": docs, "memories": memories}


@pytest.fixture
async def agent(tmp_path: Path):
    agent = await open_self(tmp_path / "soul.db")
    try:
        yield agent
    finally:
        await agent.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "openclaw"
    root.mkdir()
    return write_workspace(root)


# Reading memory files ----------------------------------------------------------------------------


def test_memory_file_gives_one_memory_per_item_or_paragraph_with_heading_tags() -> None:
    memories, front_matter = parse_memory_file(DAY_1)
    assert front_matter is True
    assert [(m.content.split("\n")[0], m.heading_tags) for m in memories] == [
        ("Moved the billing service to PostgreSQL 16:", ["billing"]),
        ("Nested plans", ["billing"]),
        ("Had coffee with Zoë in Kraków; she ordered 抹茶.", ["billing"]),
        ("Should credit notes be versioned?", ["billing", "open-questions"]),
    ]
    sql, nested, coffee, _ = (m.content for m in memories)
    # The item's indented code block keeps its blank line and its '- 1' line; both are code.
    assert sql.endswith(
        "```sql\nALTER TABLE invoices ADD COLUMN due date;\n\n-- a blank line above, and this is not a list:\n- 1\n```"
    )
    assert nested == "Nested plans\n- step one\n  - step one point five\n- step two"
    # A top-level fence joins the paragraph before it; '#' inside it is code, not a heading.
    assert coffee.endswith('```python\ndef hello() -> str:\n    return "# not a heading"\n```')
    assert memories[0].line == 7  # counted in the file, front matter included


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("# Title only\n", []),
        ("one paragraph\nstill it\n\nanother", ["one paragraph\nstill it", "another"]),
        ("- a\nlazy line\n- b", ["a\nlazy line", "b"]),
        ("* star\n+ plus\n3. three\n4) four", ["star", "plus", "three", "four"]),
        ("- a\n\n  more of a\n\n- b", ["a\n\nmore of a", "b"]),
        ("- a\n---\n- b", ["a", "b"]),
        ("Setext title\n---\n- item", ["item"]),
        ("```\n- not an item\n# nor a heading\n```", ["```\n- not an item\n# nor a heading\n```"]),
    ],
)
def test_memory_file_edge_cases(text: str, expected: list[str]) -> None:
    assert [m.content for m in parse_memory_file(text)[0]] == expected


def test_setext_and_nested_headings_give_the_heading_path_as_tags() -> None:
    text = "# 2024-05-08\n\n## Work\n\n### Open Questions:\n- q\n\n## Home\n- h\n\nGarden, Notes\n---\n- g\n"
    assert [m.heading_tags for m in parse_memory_file(text)[0]] == [
        ["work", "open-questions"],
        ["home"],
        ["garden-notes"],
    ]


# Import ------------------------------------------------------------------------------------------


async def test_import_reads_an_openclaw_workspace(agent: AgentSelf, workspace: Path) -> None:
    summary = await import_workspace(agent, workspace, ME)
    assert {d.document: d.action for d in summary.documents} == {
        "soul": "updated", "identity": "updated", "user": "updated", "intent": "skipped", "north_star": "updated",
    }  # fmt: skip
    assert "empty" in next(d.note for d in summary.documents if d.document == "intent")
    # Documents are stored verbatim, front matter and all.
    assert (await agent.read("soul")).content == SOUL
    assert (await agent.read("user")).content == USER
    assert (await agent.read("soul")).reason == f"imported from {workspace}"
    assert (await agent.read("intent")).version is None
    assert (summary.documents_updated, summary.memories_added, summary.memories_duplicate) == (4, 8, 0)
    assert [(f.file, f.memories) for f in summary.files] == [
        ("MEMORY.md", 3), ("memory/2024-05-08.md", 4), ("memory/2024-05-09-vendor-pitch.md", 1),
        ("memory/2024-05-10.md", 0),
    ]  # fmt: skip
    assert any(n.startswith("AGENTS.md") for n in summary.not_imported)
    assert any(n.startswith("memory/notes.md (no date") for n in summary.not_imported)
    assert any("front matter" in n for n in summary.not_imported)

    memories = {m.content.split("\n")[0]: m for m in await agent.active_memories()}
    lesson = memories["Never deploy on Fridays."]
    assert (lesson.tags, lesson.importance) == (["long-term", "lessons"], 4)
    pitch = memories["Acme pitched their queue. Too expensive."]
    assert (pitch.tags, pitch.occurred_at, pitch.importance) == (["vendor-pitch"], "2024-05-09T00:00:00Z", 3)
    assert memories["Should credit notes be versioned?"].tags == ["billing", "open-questions"]
    assert {m.author for m in memories.values()} == {"cli:maya"}
    # What was imported is what wake-up and recall see.
    woken = await agent.wake_up(ME)
    assert "Maya Schröder" in woken.text and "Never deploy on Fridays." in woken.text
    assert (await agent.recall("抹茶")).hits[0].content.startswith("Had coffee with Zoë")


async def test_daily_file_names_may_carry_a_time_or_a_topic(agent: AgentSelf, tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "2024-05-08-2107.md").write_text("- late session\n", encoding="utf-8")
    (tmp_path / "memory" / "2024-05-08-vendor-pitch.md").write_text("- pitch\n", encoding="utf-8")
    (tmp_path / "memory" / "2024-02-30.md").write_text("- impossible\n", encoding="utf-8")
    summary = await import_workspace(agent, tmp_path, ME)
    assert [(m.content, m.occurred_at, m.tags) for m in await agent.active_memories()] == [
        ("pitch", "2024-05-08T00:00:00Z", ["vendor-pitch"]),
        ("late session", "2024-05-08T21:07:00Z", []),
    ]
    assert "memory/2024-02-30.md (2024-02-30 is not a real date)" in summary.not_imported


async def test_importing_the_same_workspace_again_adds_nothing(agent: AgentSelf, workspace: Path) -> None:
    await import_workspace(agent, workspace, ME)
    before = await agent.stats()
    again = await import_workspace(agent, workspace, ME)
    assert {d.action for d in again.documents} == {"unchanged", "skipped"}
    assert (again.documents_updated, again.memories_added, again.memories_duplicate) == (0, 0, 8)
    assert await agent.stats() == before


async def test_import_does_not_revive_forgotten_or_revised_memories(
    agent: AgentSelf, workspace: Path
) -> None:
    await import_workspace(agent, workspace, ME)
    memories = {m.content: m for m in await agent.active_memories()}
    await agent.forget(memories["Maya leads the billing team."].id, "she moved teams", ME)
    await agent.revise(memories["Sam owns the **invoice** renderer."].id, "Sam owns billing.", "promoted", ME)
    again = await import_workspace(agent, workspace, ME)
    assert (again.memories_added, again.memories_forgotten) == (0, 2)
    assert "Maya leads the billing team." not in {m.content for m in await agent.active_memories()}


async def test_import_does_not_bring_back_an_older_document_version(
    agent: AgentSelf, workspace: Path
) -> None:
    await import_workspace(agent, workspace, ME)
    await agent.write("soul", "I grew since the import.", ME, reason="a session taught me")
    again = await import_workspace(agent, workspace, ME)
    soul = next(d for d in again.documents if d.document == "soul")
    assert soul.action == "skipped" and "same as version 1" in str(soul.note)
    assert (await agent.read("soul")).content == "I grew since the import."
    # A changed file is a new version.
    (workspace / "SOUL.md").write_text("A third soul.\n", encoding="utf-8")
    third = await import_workspace(agent, workspace, ME)
    assert next(d for d in third.documents if d.document == "soul").version == 3


async def test_dry_run_import_writes_nothing_and_predicts_the_real_one(
    agent: AgentSelf, workspace: Path
) -> None:
    dry = await import_workspace(agent, workspace, ME, dry_run=True)
    stats = await agent.stats()
    assert (stats.memories_active, stats.document_versions) == (0, {})
    real = await import_workspace(agent, workspace, ME)
    assert dry.dry_run and not real.dry_run
    assert [(d.document, d.action) for d in dry.documents] == [(d.document, d.action) for d in real.documents]
    assert dry.files == real.files
    assert (dry.memories_added, dry.documents_updated) == (real.memories_added, real.documents_updated)


# Export and the round trip -----------------------------------------------------------------------

TRICKY = [
    # (content, kind, tags, importance, occurred_at, author)
    ("Odd tags and an odd author", "fact", ["open questions", "a>b", "50%", "ünïcode"], 2,
     "2024-05-08T14:30:00Z", "Claude Desktop <v1>"),
    ("first\n   \n\tindented by a tab\n\nlast", "event", [], 3, "2024-05-08T23:59:59Z", "cli:maya"),
    ("- a list as content\n- second\n  - nested", "fact", ["lists"], 1, "2024-05-09T00:00:00Z", "cursor"),
    ("# Not a heading here\ntext after\n---\n* * *", "reflection", [], 3, "2024-05-09T00:00:00Z", "cursor"),
    ("```\nan unclosed fence", "other", [], 3, "2024-05-09T08:00:00+02:00", "cursor"),
    ("a note\n<!-- soul: at=1999-01-01T00:00:00Z kind=fact -->", "fact", [], 3, "2024-05-10", "x"),
    ("line\u2028separator and \x85 next-line stay content", "fact", [], 3, "2024-05-10", "x"),
    ("Apollo 11 landed", "event", ["history"], 5, "1969-07-20T20:17:40Z", "cli:maya"),
    ("Curated: always write tests first", "lesson", ["long-term"], 5, "2025-01-01T09:00:00Z", "claude-code"),
]  # fmt: skip


async def test_export_import_export_is_byte_identical(
    agent: AgentSelf, workspace: Path, tmp_path: Path
) -> None:
    await import_workspace(agent, workspace, ME)
    for content, kind, tags, importance, occurred_at, author in TRICKY:
        stored = await agent.remember(content, Actor(name=author), kind=kind, tags=tags,
                                      importance=importance, occurred_at=occurred_at)  # fmt: skip
        assert stored.is_new
    await agent.write("intent", "Next: credit notes.", ME)
    gone = await agent.remember("A wrong fact", ME)
    await agent.forget(gone.memory.id, "wrong", ME)
    old = await agent.remember("Sam owns invoices", ME)
    await agent.revise(old.memory.id, "Sam owns the invoice PDFs", "more precise", ME)

    first = await export_workspace(agent, tmp_path / "e1")
    assert {f.action for f in first.files} == {"created"}
    assert any("1 forgotten and 1 revised memories stay in the database" in n for n in first.notes)
    e1 = tree(tmp_path / "e1")
    # Documents come out byte for byte as they went in (front matter, Unicode, no reformatting).
    for name, text in {
        "SOUL.md": SOUL,
        "IDENTITY.md": IDENTITY,
        "USER.md": USER,
        "north-star.md": NORTH_STAR,
    }.items():
        assert e1[name] == text.encode("utf-8")
    assert e1["intent.md"] == b"Next: credit notes."
    exported = b"".join(e1.values()).decode("utf-8")
    assert "A wrong fact" not in exported and "Sam owns invoices" not in exported
    assert "Sam owns the invoice PDFs" in exported
    assert "Curated: always write tests first" in e1["MEMORY.md"].decode()
    assert "memory/1969-07-20.md" in e1 and "memory/2024-05-10.md" in e1

    fresh = await open_self(tmp_path / "fresh.db")
    try:
        back = await import_workspace(fresh, tmp_path / "e1", ME)
        assert back.memories_added == len(await agent.active_memories())
        # Authors come back marked as imported; export leaves the mark out again.
        expected = await snapshot(agent)
        expected["memories"] = [(*m[:5], f"imported:{m[5]}") for m in expected["memories"]]
        assert await snapshot(fresh) == expected
        await export_workspace(fresh, tmp_path / "e2")
    finally:
        await fresh.close()
    assert tree(tmp_path / "e2") == e1


async def test_export_marks_each_memory_readably(agent: AgentSelf, tmp_path: Path) -> None:
    await agent.remember("Maya prefers short answers", Actor(name="cli:maya"), kind="preference",
                         tags=["maya"], importance=4, occurred_at="2024-05-08T14:30:00Z")  # fmt: skip
    await export_workspace(agent, tmp_path / "out")
    assert (tmp_path / "out" / "memory" / "2024-05-08.md").read_text(encoding="utf-8") == (
        "# 2024-05-08\n\n- Maya prefers short answers\n"
        "  <!-- soul: at=2024-05-08T14:30:00Z kind=preference importance=4 tags=maya by=cli:maya -->\n"
    )


async def test_notes_added_by_hand_to_an_exported_file_come_in_with_the_file_defaults(
    agent: AgentSelf, tmp_path: Path
) -> None:
    await agent.remember("Exported before", ME, kind="fact", occurred_at="2024-05-08T09:00:00Z")
    await export_workspace(agent, tmp_path / "out")
    day = tmp_path / "out" / "memory" / "2024-05-08.md"
    day.write_text(
        day.read_text(encoding="utf-8") + "\n## Billing\n- Written by hand later\n", encoding="utf-8"
    )
    summary = await import_workspace(agent, tmp_path / "out", Actor(name="cli:sam"))
    assert (summary.memories_added, summary.memories_duplicate) == (1, 1)
    added = (await agent.recall("written by hand")).hits[0]
    assert (added.tags, added.occurred_at, added.author, added.kind) == (
        ["billing"],
        "2024-05-08T00:00:00Z",
        "cli:sam",
        "other",
    )
    # The marked item under no heading kept exactly its marker's (empty) tags.
    assert (await agent.recall("exported before")).hits[0].tags == []


async def test_export_refuses_a_folder_that_is_not_empty_unless_forced(
    agent: AgentSelf, workspace: Path
) -> None:
    await import_workspace(agent, workspace, ME)
    before = tree(workspace)
    with pytest.raises(
        InvalidInput, match="is not empty; export into a new or empty folder, or pass --force"
    ):
        await export_workspace(agent, workspace)
    assert tree(workspace) == before
    dry = await export_workspace(agent, workspace, dry_run=True)
    assert tree(workspace) == before
    assert any("needs --force" in n for n in dry.notes)
    forced = await export_workspace(agent, workspace, force=True)
    assert [(f.file, f.action) for f in forced.files] == [(f.file, f.action) for f in dry.files]
    actions = {f.file: f.action for f in forced.files}
    assert actions["SOUL.md"] == "unchanged" and actions["memory/2024-05-08.md"] == "replaced"
    after = tree(workspace)
    assert after["AGENTS.md"] == before["AGENTS.md"]  # not soul-mcp's file: left alone
    assert after["intent.md"] == b""  # the intent was never written, so its file is not touched
    assert set(forced.left_alone) >= {"intent.md", "memory/2024-05-09-vendor-pitch.md", "memory/notes.md"}


async def test_export_keeps_the_folder_s_file_names_and_permissions(agent: AgentSelf, tmp_path: Path) -> None:
    root = tmp_path / "lower"
    (root / "memory").mkdir(parents=True)
    (root / "soul.md").write_text("I am lower-case.\n", encoding="utf-8")
    (root / "memory.md").write_text("- a long-term note\n", encoding="utf-8")
    (root / "soul.md").chmod(0o640)
    await import_workspace(agent, root, ME)
    await agent.write("soul", "I changed.\n", ME, reason="grew")
    await agent.remember("A new day", ME, occurred_at="2024-05-08")
    summary = await export_workspace(agent, root, force=True)
    assert {f.file: f.action for f in summary.files} == {
        "soul.md": "replaced", "memory.md": "replaced", "memory/2024-05-08.md": "created",
    }  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["memory", "memory.md", "soul.md"]
    assert (root / "soul.md").read_text(encoding="utf-8") == "I changed.\n"
    assert (root / "soul.md").stat().st_mode & 0o777 == 0o640  # replaced: its permissions stay
    assert (root / "memory" / "2024-05-08.md").stat().st_mode & 0o777 == 0o600  # new: private
    assert (await import_workspace(agent, root, ME)).memories_added == 0


async def test_export_says_which_file_it_could_not_write(agent: AgentSelf, tmp_path: Path) -> None:
    await agent.write("soul", "I am.", ME, reason="first")
    await agent.remember("A day", ME, occurred_at="2024-05-08")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "memory").write_text("a file where the folder should be", encoding="utf-8")
    with pytest.raises(
        InvalidInput, match=r"cannot write .*memory/2024-05-08.md: .*; already written: SOUL.md"
    ):
        await export_workspace(agent, tmp_path / "out", force=True)


async def test_dry_run_export_creates_nothing(agent: AgentSelf, workspace: Path, tmp_path: Path) -> None:
    await import_workspace(agent, workspace, ME)
    summary = await export_workspace(agent, tmp_path / "not-yet", dry_run=True)
    assert not (tmp_path / "not-yet").exists()
    assert summary.dry_run and {f.action for f in summary.files} == {"created"}
    assert (summary.documents, summary.memories) == (4, 8)


# Bad input -----------------------------------------------------------------------------------------


async def test_import_of_a_missing_folder_or_a_file_says_what_to_give(
    agent: AgentSelf, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="does not exist; give the workspace folder"):
        await import_workspace(agent, tmp_path / "nowhere", ME)
    (tmp_path / "SOUL.md").write_text("x", encoding="utf-8")
    with pytest.raises(InvalidInput, match="is a file, not a folder"):
        await import_workspace(agent, tmp_path / "SOUL.md", ME)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="holds none of the workspace files"):
        await import_workspace(agent, tmp_path / "empty", ME)
    with pytest.raises(InvalidInput, match="is a file; export needs a folder"):
        await export_workspace(agent, tmp_path / "SOUL.md")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("memory/2024-05-08.md", b"- fine\n- caf\xe9\n", "memory/2024-05-08.md is not UTF-8 text"),
        ("memory/2024-05-08.md", b"- fine\n- bad\n  <!-- soul: at=2024-05-08 importance=9 -->\n",
         "memory/2024-05-08.md:3: importance=9 in the marker; use 1 to 5"),
        ("memory/2024-05-08.md", b"- a\n  <!-- soul: when=today -->\n",
         "memory/2024-05-08.md:2: the soul marker has 'when=today'"),
        ("MEMORY.md", b"- " + b"x" * 9000 + b"\n", "MEMORY.md:1: the memory is 9,000 characters; the limit is 8,000"),
        ("memory/2024-05-08.md", b"- a\n  <!-- soul: at=tomorrowish -->\n", "memory/2024-05-08.md:2: at= 'tomorrowish' is not a date"),
        ("memory/2024-05-08.md", b"- nul \x00 inside\n", "contains a control character"),
    ],
)  # fmt: skip
async def test_a_bad_file_stops_the_import_before_anything_is_written(
    agent: AgentSelf, workspace: Path, name: str, data: bytes, message: str
) -> None:
    (workspace / name).write_bytes(data)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        await import_workspace(agent, workspace, ME)
    stats = await agent.stats()
    assert (stats.memories_active, stats.document_versions) == (0, {})


async def test_two_files_naming_the_same_thing_are_refused(agent: AgentSelf, workspace: Path) -> None:
    (workspace / "memory.md").write_text("- lower-case twin\n", encoding="utf-8")
    with pytest.raises(
        InvalidInput, match=re.escape("holds MEMORY.md and memory.md, which name the same thing")
    ):
        await import_workspace(agent, workspace, ME)


# The command line ----------------------------------------------------------------------------------


def cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return invoke(*args, "--db", str(db), env={"SOUL_MCP_DB": None})


def test_cli_import_and_export_round_trip(workspace: Path, tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    dry = cli("import", str(workspace), "--dry-run", db=db)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"Dry run: nothing was written. Importing {workspace} would do this:")
    assert "Would update 4 documents, would add 8 memories" in dry.stdout
    assert dry.stderr == ""  # no progress bar when stderr is not a terminal

    done = cli("import", str(workspace), "--json", db=db)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["memories_added"], summary["documents_updated"], summary["dry_run"]) == (8, 4, False)
    again = cli("import", str(workspace), db=db)
    assert "Updated 0 documents, added 0 memories; skipped 8 as duplicates" in again.stdout

    refused = cli("export", str(workspace), db=db)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "--force" in refused.stderr
    out = tmp_path / "exported"
    exported = cli("export", str(out), "--json", db=db)
    assert exported.returncode == 0, exported.stderr
    assert {f["file"] for f in json.loads(exported.stdout)["files"]} == set(tree(out))
    assert cli("export", str(out), "--dry-run", db=db).stdout.count("unchanged") == len(tree(out))

    missing = cli("import", str(tmp_path / "nowhere"), db=db)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
