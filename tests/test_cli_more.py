"""The rest of the command line: init, memories list, edit and restore for every document, stats per
client, doctor, host configuration, --json everywhere and colour only where it belongs.

Like test_cli.py, commands run in this process through main() on a real database file, and as a
subprocess only for a pseudo-terminal; MCP clients (in-process and over stdio) play the hosts whose
traces the CLI reports.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import Implementation
from test_cli import as_json, invoke, ok, refused, remember

from soul_mcp.cli import doc_commands, main
from soul_mcp.config import Settings
from soul_mcp.server import build_server

DOCS = list(doc_commands().items())  # ("north-star", "north_star"), ... whatever the self keeps


def run(
    *args: str, db: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`soul-mcp ARGS [--db DB]` in this process with extra environment, never at a terminal."""
    argv = [*args, "--db", str(db)] if db is not None else list(args)
    return invoke(*argv, env=env)


def exit_code(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"


def editor(tmp_path: Path, code: str) -> dict[str, str]:
    """EDITOR set to a small Python script; `code` sees the file as `path` and its text as `text`."""
    script = tmp_path / "editor.py"
    script.write_text(
        "import pathlib, sys\n"
        "path = pathlib.Path(sys.argv[1])\n"
        "text = path.read_text(encoding='utf-8')\n"
        f"{code}\n",
        encoding="utf-8",
    )
    return {"EDITOR": f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"}


def test_every_command_explains_itself_in_its_help() -> None:
    from test_cli import COMMANDS

    from soul_mcp.cli import build_parser

    def find(path: tuple[str, ...]) -> Any:
        parser: Any = build_parser()
        for name in path:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[name]
        return parser

    vague = [" ".join(path) for path in COMMANDS if len((find(path).description or "").split()) < 3]
    assert vague == []


# init ------------------------------------------------------------------------------------------


def test_init_creates_the_database_and_prints_where_and_what_next(tmp_path: Path) -> None:
    db = tmp_path / "new" / "soul.db"
    out = ok(run("init", db=db))
    assert db.exists()
    assert f"Created the database at {db}" in out
    assert "soul-mcp config claude-desktop --db" in out  # next steps name the same database
    assert "soul-mcp doctor" in out

    again = as_json(run("init", "--json", db=db))
    assert again == {"db_path": str(db), "created": False, "source": "--db"}
    assert "already exists" in ok(run("init", db=db))


def test_init_uses_the_environment_variable(tmp_path: Path) -> None:
    db = tmp_path / "from-env.db"
    done = as_json(run("init", "--json", env={"SOUL_MCP_DB": str(db)}))
    assert done == {"db_path": str(db), "created": True, "source": "$SOUL_MCP_DB"}
    assert db.exists()


# memories list ---------------------------------------------------------------------------------


class Stock(NamedTuple):
    db: Path
    ids: dict[str, str]


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Stock:
    """Seven memories stored by an MCP client: five active (kinds, tags and dates vary), one
    forgotten, one superseded. Shared by the listing tests below, which only read."""
    db = tmp_path_factory.mktemp("stock") / "soul.db"
    seeds = {
        "jan": ("Skiing in January", "event", ["trip"], "2024-01-10"),
        "feb": ("Pancakes on the first of February", "event", [], "2024-02-01"),
        "mar": ("Maya likes green tea", "preference", ["maya"], "2024-03-05"),
        "apr": ("Tokyo trip booked", "event", ["trip", "maya"], "2024-04-20"),
        "may": ("The old office was on Elm Street", "fact", [], "2024-05-02"),
        "jun": ("Ana likes coffee", "person", [], "2024-06-15"),
    }

    async def seed() -> dict[str, str]:
        ids: dict[str, str] = {}
        async with Client(build_server(Settings(db_path=db))) as client:

            async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
                result = await client.call_tool(tool, arguments)
                assert not result.is_error, result.content
                return result.structured_content

            for key, (content, kind, tags, day) in seeds.items():
                stored = await call(
                    "remember", {"content": content, "kind": kind, "tags": tags, "occurred_at": day}
                )
                ids[key] = stored["memory"]["id"]
            await call("forget", {"memory_id": ids["may"], "reason": "we moved"})
            revised = await call(
                "revise_memory",
                {"memory_id": ids["jun"], "content": "Ana likes espresso", "reason": "precise"},
            )
            ids["jun-revised"] = revised["id"]
        return ids

    return Stock(db, anyio.run(seed))


def listed(db: Path, *options: str) -> list[str]:
    return [m["id"] for m in as_json(run("memories", "list", "--json", *options, db=db))["memories"]]


def test_memories_list_filters_by_status(stock: Stock) -> None:
    db_path, s = stock
    assert listed(db_path) == [s["jun-revised"], s["apr"], s["mar"], s["feb"], s["jan"]]  # newest first
    assert listed(db_path, "--status", "forgotten") == [s["may"]]
    assert listed(db_path, "--status", "superseded") == [s["jun"]]
    assert len(listed(db_path, "--status", "all")) == 7
    page = as_json(run("memories", "list", "--json", "--status", "forgotten", db=db_path))
    assert page["memories"][0]["status_reason"] == "we moved"
    assert page["total"] == 1 and page["next_cursor"] is None


def test_memories_list_filters_by_kind_tag_and_date(stock: Stock) -> None:
    db_path, s = stock
    assert listed(db_path, "--kind", "event") == [s["apr"], s["feb"], s["jan"]]
    assert listed(db_path, "--tag", "trip") == [s["apr"], s["jan"]]
    assert listed(db_path, "--tag", "trip", "--tag", "maya") == [s["apr"]]  # every tag given
    assert listed(db_path, "--since", "2024-02-01", "--until", "2024-03") == [s["mar"], s["feb"]]
    assert listed(db_path, "--status", "all", "--kind", "fact") == [s["may"]]


def test_memories_list_pages_with_cursor_or_offset(stock: Stock) -> None:
    db_path = stock.db
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = as_json(
            run("memories", "list", "--json", "--status", "all", "--limit", "3",
                *(["--cursor", cursor] if cursor else []), db=db_path)
        )  # fmt: skip
        assert page["total"] == 7
        seen += [m["id"] for m in page["memories"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and len(set(seen)) == 7  # every memory once, no overlap
    assert listed(db_path, "--status", "all", "--limit", "3", "--offset", "3") == seen[3:6]

    text = ok(run("memories", "list", "--limit", "2", db=db_path))
    assert text.splitlines()[0] == "Active memories 1-2 of 5, newest first:"
    assert "--offset 2" in text  # how to get the next page


def test_memories_list_refuses_bad_paging(stock: Stock) -> None:
    db_path = stock.db
    page = as_json(run("memories", "list", "--json", "--limit", "2", db=db_path))
    # A cursor belongs to its filters: reused with others it is refused, not misread.
    refused(run("memories", "list", "--kind", "event", "--cursor", page["next_cursor"], db=db_path), "cursor")
    refused(run("memories", "list", "--limit", "0", db=db_path), "limit")
    exit_code(run("memories", "list", "--cursor", "x", "--offset", "1", db=db_path), 2)
    exit_code(run("memories", "list", "--status", "deleted", db=db_path), 2)


def test_memories_show_reads_a_forgotten_memory(stock: Stock) -> None:
    db_path, s = stock
    shown = as_json(run("memories", "show", s["may"], "--json", db=db_path))
    assert shown["status"] == "forgotten" and shown["content"] == "The old office was on Elm Street"
    refused(run("memories", "show", "m_000000000000", db=db_path), "no memory has the id")


# Documents: edit and restore, for every document -----------------------------------------------


@pytest.mark.parametrize(("command", "document"), DOCS, ids=[c for c, _ in DOCS])
def test_edit_stores_what_the_editor_saved_as_a_new_version(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, document: str
) -> None:
    env = editor(
        tmp_path, "path.write_text('# Edited\\n\\nWritten in the editor: ü, 日本\\n', encoding='utf-8')"
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the editor's file is made
    written = as_json(run(command, "edit", "--reason", "my own words", "--json", db=db_path, env=env))
    assert written["changed"] is True
    version = written["version"]
    assert version["document"] == document and version["version"] == 1
    assert version["content"] == "# Edited\n\nWritten in the editor: ü, 日本\n"
    assert version["author"].startswith("cli:") and version["reason"] == "my own words"
    assert ok(run(command, "show", "--raw", db=db_path)) == version["content"] + "\n"
    assert list(scratch.iterdir()) == []  # the editor's file is gone once the text is stored


def test_text_that_cannot_be_stored_is_kept_in_a_file(tmp_path: Path, db_path: Path) -> None:
    env = editor(tmp_path, "path.write_text('# Soul\\nWords worth keeping')")
    done = run("soul", "edit", "--reason", " ", db=db_path, env=env)  # a blank reason is refused
    refused(done, "reason is required")
    kept = Path(done.stderr.strip().splitlines()[-1].removeprefix("Your text is kept in "))
    assert kept.read_text() == "# Soul\nWords worth keeping"
    kept.unlink()


def test_edit_without_a_change_stores_nothing(tmp_path: Path, db_path: Path) -> None:
    env = editor(tmp_path, "path.write_text(text + '\\nMore.', encoding='utf-8')")
    ok(run("soul", "edit", "--reason", "first", db=db_path, env=env))
    untouched = editor(tmp_path, "pass")  # opens and quits without saving a change
    done = run("soul", "edit", "--reason", "nothing", db=db_path, env=untouched)
    assert ok(done) == "No changes to the soul; nothing saved.\n"
    assert [v["version"] for v in as_json(run("soul", "history", "--json", db=db_path))["versions"]] == [1]


def test_the_editor_sees_the_current_text_and_its_trailing_newline_is_not_a_change(
    tmp_path: Path, db_path: Path, server: Any
) -> None:
    async def write() -> None:
        async with Client(server) as client:
            result = await client.call_tool("write_intent", {"content": "Stopped at invoices (no newline)"})
            assert not result.is_error

    anyio.run(write)
    # The editor appends a line to what it was given: the stored text gains exactly that line.
    env = editor(tmp_path, "path.write_text(text + 'Next: credit notes\\n', encoding='utf-8')")
    written = as_json(run("intent", "edit", "--json", db=db_path, env=env))  # the intent needs no reason
    assert written["version"]["content"] == "Stopped at invoices (no newline)\nNext: credit notes"


def test_edit_of_the_soul_needs_a_reason_before_the_editor_opens(tmp_path: Path, db_path: Path) -> None:
    marker = tmp_path / "editor-ran"
    env = editor(tmp_path, f"pathlib.Path({str(marker)!r}).touch()\npath.write_text('changed')")
    refused(run("soul", "edit", db=db_path, env=env), "--reason")
    assert not marker.exists()  # refused up front: nothing typed is thrown away
    assert not db_path.exists()  # nothing written, not even an empty database


def test_a_failing_editor_stores_nothing(tmp_path: Path, db_path: Path) -> None:
    env = editor(tmp_path, "path.write_text('half written')\nsys.exit(3)")
    refused(run("soul", "edit", "--reason", "x", db=db_path, env=env), "exited with status 3")
    refused(run("soul", "edit", "--reason", "x", db=db_path, env={"EDITOR": str(tmp_path / "no-editor")}),
            "set $EDITOR")  # fmt: skip
    assert as_json(run("soul", "history", "--json", db=db_path))["versions"] == []


def test_restore_makes_an_old_version_current_as_a_new_one(tmp_path: Path, db_path: Path) -> None:
    for n in (1, 2):
        env = editor(tmp_path, f"path.write_text('# North star\\nDraft {n}\\n')")
        ok(run("north-star", "edit", "--reason", f"draft {n}", db=db_path, env=env))
    assert ok(run("north-star", "restore", "1", "--reason", "draft 2 went too far", db=db_path)) == (
        "North star restored: version 1 is now current as version 3.\n"
    )
    current = as_json(run("north-star", "show", "--json", db=db_path))
    assert current["version"] == 3 and current["restored_from"] == 1
    assert current["content"] == "# North star\nDraft 1\n"

    refused(run("north-star", "restore", "9", "--reason", "x", db=db_path), "no version 9")
    exit_code(run("north-star", "restore", "1", db=db_path), 2)  # --reason is required


# stats -----------------------------------------------------------------------------------------


def test_stats_shows_activity_per_client(db_path: Path, server: Any) -> None:
    async def use_from_two_hosts() -> None:
        for name in ("claude-desktop", "cursor"):
            async with Client(server, client_info=Implementation(name=name, version="1")) as client:
                assert not (await client.call_tool("wake_up", {})).is_error
                assert not (await client.call_tool("remember", {"content": f"Noted in {name}"})).is_error
                if name == "cursor":
                    done = await client.call_tool(
                        "write_soul", {"content": "# Soul\nFrom Cursor.", "reason": "r"}
                    )
                    assert not done.is_error

    anyio.run(use_from_two_hosts)
    remember(db_path, "Noted at the terminal")

    stats = as_json(run("stats", "--json", db=db_path))
    clients = {c["client"]: c for c in stats["clients"]}
    assert clients["claude-desktop"]["sessions"] == 1 and clients["claude-desktop"]["memories"] == 1
    assert clients["cursor"]["versions"] == 1 and clients["cursor"]["last_version_at"]
    cli_user = next(name for name in clients if name.startswith("cli:"))
    assert clients[cli_user] | {"last_memory_at": None, "last_active_at": None} == {
        "client": cli_user, "sessions": 0, "memories": 1, "versions": 0, "last_session_at": None,
        "last_memory_at": None, "last_version_at": None, "last_active_at": None,
    }  # fmt: skip
    latest = [c["last_active_at"] for c in stats["clients"]]
    assert latest == sorted(latest, reverse=True)  # the most recently active first
    assert stats["files"]["database"] > 0 and stats["db_path"] == str(db_path)
    assert stats["memories_active"] == 3 and stats["sessions"] == 2

    text = ok(run("stats", db=db_path))
    assert text.startswith("Memories: 3 active, 0 forgotten, 0 superseded\n")
    assert "CLIENT" in text and "claude-desktop" in text and "cursor" in text


# doctor ----------------------------------------------------------------------------------------


def test_doctor_passes_on_a_healthy_database_and_leaves_no_trace(db_path: Path) -> None:
    remember(db_path, "Something to index")
    done = run("doctor", db=db_path)
    out = ok(done)
    assert out.rstrip().endswith("All checks passed.")
    report = as_json(run("doctor", "--json", db=db_path))
    assert report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= {
        "database opens", "integrity", "schema version", "full-text index", "index matches memories",
        "a client connects",
    }  # fmt: skip
    assert report["config"]["db_source"] == "--db" and report["config"]["synchronous"] == "FULL"
    assert "wake_up" in report["client_view"]["tools"] and "reflect" in report["client_view"]["prompts"]
    assert report["wake_up"]["used_chars"] > 0
    stats = as_json(run("stats", "--json", db=db_path))
    assert stats["sessions"] == 0  # doctor's look at wake_up recorded no session


def test_doctor_finds_an_index_out_of_step_with_the_memories(db_path: Path) -> None:
    remember(db_path, "Kept in the table")
    remember(db_path, "Dropped from the index")
    with sqlite3.connect(db_path) as conn:  # damage the index the way a bad manual edit would
        row = conn.execute(
            "SELECT rowid, content, tags, about FROM memories WHERE content LIKE 'Dropped%'"
        ).fetchone()
        conn.execute(
            "INSERT INTO memories_fts (memories_fts, rowid, content, tags, about) VALUES ('delete', ?, ?, ?, ?)",
            row,
        )
    done = run("doctor", db=db_path)
    exit_code(done, 3)
    assert "1 problem found." in done.stdout
    report = json.loads(run("doctor", "--json", db=db_path).stdout)
    failing = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in failing] == ["index matches memories"]
    assert "1 missing from the index" in failing[0]["detail"]


def test_doctor_and_commands_exit_3_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database file " * 200)
    done = run("doctor", db=junk)
    exit_code(done, 3)
    assert "file is not a database" in done.stdout
    recall = run("recall", "anything", db=junk)
    exit_code(recall, 3)
    assert recall.stderr.startswith("error: cannot open the database")


def test_doctor_on_a_missing_database_says_so_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    done = run("doctor", db=db)
    exit_code(done, 3)
    assert "soul-mcp init" in done.stdout
    assert not db.exists()


# config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["claude-desktop", "cursor", "vscode"])
def test_config_snippets_are_json_with_absolute_paths_that_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.chdir(tmp_path)
    ok(run("init", "--db", "rel.db"))
    done = run("config", host, "--db", "rel.db")  # a relative --db becomes absolute
    snippet = json.loads(ok(done))
    servers = snippet["servers" if host == "vscode" else "mcpServers"]
    entry = servers["soul"]
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).is_file()
    assert entry["args"][-3:] == ["serve", "--db", str(tmp_path / "rel.db")]
    if host == "vscode":
        assert entry["type"] == "stdio"
    assert done.stderr.startswith("# ")  # where to put it, kept off stdout


def test_config_claude_code_is_a_command_line(db_path: Path) -> None:
    line = ok(run("config", "claude-code", "--name", "me", "--scope", "local", db=db_path)).strip()
    argv = shlex.split(line)
    assert argv[:6] == ["claude", "mcp", "add", "--scope", "local", "me"]
    assert argv[6] == "--"
    assert Path(argv[7]).is_absolute() and Path(argv[7]).is_file()
    assert argv[8:] == ["serve", "--db", str(db_path)]
    data = as_json(run("config", "claude-code", "--json", db=db_path))
    assert data["shell"].startswith("claude mcp add --scope user soul -- ") and data["snippet"] is None


def test_the_config_command_starts_a_server_with_a_minimal_path(db_path: Path) -> None:
    entry = json.loads(ok(run("config", "claude-desktop", db=db_path)))["mcpServers"]["soul"]
    # What a desktop host gives its servers: no venv, no user PATH.
    params = StdioServerParameters(
        command=entry["command"], args=entry["args"], env={"PATH": "/usr/bin:/bin"}
    )

    async def connect() -> tuple[set[str], bool]:
        async with Client(params) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("remember", {"content": "Stored through the configured command"})
        return tools, result.is_error

    tools, failed = anyio.run(connect)
    assert {"wake_up", "remember", "recall"} <= tools
    assert not failed
    assert ok(run("recall", "configured command", db=db_path)).startswith("1 memory")


# --json everywhere, colour only at a terminal --------------------------------------------------


def test_json_parses_for_every_command_that_prints(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tests above cover the same commands' text.
    memory_id = remember(db_path, "A memory to carry through every command")
    for name, value in editor(tmp_path, "path.write_text(text + '\\nEdited.')").items():
        monkeypatch.setenv(name, value)
    commands: list[list[str]] = [
        ["init"], ["wake"], ["recall", "memory"], ["remember", "Another one"],
        ["forget", memory_id, "--reason", "test"], ["memories", "list", "--status", "all"],
        ["memories", "show", memory_id], ["restore-memory", memory_id], ["stats"], ["doctor"],
        ["soul", "edit", "--reason", "one"], ["soul", "edit", "--reason", "two"], ["soul", "show"],
        ["soul", "history"], ["soul", "diff", "1", "2"], ["soul", "restore", "1", "--reason", "back"],
        ["config", "claude-desktop"], ["config", "claude-code"], ["config", "cursor"], ["config", "vscode"],
    ]  # fmt: skip
    for command in commands:
        assert main([*command, "--json", "--db", str(db_path)]) == 0, command
        out, _ = capsys.readouterr()
        assert isinstance(json.loads(out), dict), command
    assert main(["version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": __import__("soul_mcp").__version__}


def at_a_terminal(*args: str, env: dict[str, str]) -> str:
    """Run the CLI with stdout on a pseudo-terminal, as a person at a shell would; return stdout."""
    leader, follower = pty.openpty()
    base = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "TERM"}}
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**base, "TERM": "xterm", **env},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
    return b"".join(chunks).decode()


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_colour_only_at_a_terminal_and_never_with_no_color(db_path: Path) -> None:
    remember(db_path, "Colourful")
    coloured = at_a_terminal("doctor", "--db", str(db_path), env={})
    assert "\033[" in coloured and "All checks passed." in coloured
    plain = at_a_terminal("doctor", "--db", str(db_path), env={"NO_COLOR": "1"})
    assert "\033[" not in plain and "All checks passed." in plain
    piped = ok(run("doctor", db=db_path))
    assert "\033[" not in piped
