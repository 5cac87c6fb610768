"""The `soul-mcp` command line on a real database file, run in this process through main(), the
installed script's entry point, as sqlite-utils tests its CLI: a subprocess only where the process
boundary is the point (here: `python -m soul_mcp --help` itself).

Exit codes are part of the interface: 0 success, 1 refused (with `error: ...` on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from soul_mcp import __version__
from soul_mcp.cli import build_parser, main
from soul_mcp.core.starter import STARTER_SOUL

# Settings a command could pick up from the environment running the tests.
UNSET = ("SOUL_MCP_DB", "EDITOR", "VISUAL", "NO_COLOR")


def invoke(*argv: str, env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """`soul-mcp ARGV` in this process: stdout and stderr captured, stdin empty (never a terminal,
    so a command that would ask refuses instead), `env` set for the call (None unsets) on top of an
    environment without UNSET. argparse's own exits (usage errors, --help) become the exit code."""
    changes = {**dict.fromkeys(UNSET), **(env or {})}
    saved = {name: os.environ.get(name) for name in changes}
    out, err, stdin = io.StringIO(), io.StringIO(), sys.stdin
    try:
        _set_environment(changes)
        sys.stdin = io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exited:
                code = exited.code if isinstance(exited.code, int) else 1
    finally:
        sys.stdin = stdin
        _set_environment(saved)
    return subprocess.CompletedProcess(["soul-mcp", *argv], code, out.getvalue(), err.getvalue())


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def cli(*args: str, db: Path | None = None, env_db: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`soul-mcp ARGS`; the database comes from --db, or from $SOUL_MCP_DB."""
    argv = [*args, "--db", str(db)] if db is not None else list(args)
    return invoke(*argv, env={"SOUL_MCP_DB": str(env_db) if env_db is not None else None})


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(done))


def refused(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 1, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert done.stderr.startswith("error: "), done.stderr
    for phrase in phrases:
        assert phrase in done.stderr


def remember(db: Path, text: str, *options: str) -> str:
    """Store a memory through the CLI and return its id."""
    return as_json(cli("remember", text, "--json", *options, db=db))["memory"]["id"]


def stored_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM memories")}


# Basics -----------------------------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    assert ok(cli("version")) == f"soul-mcp {__version__}\n"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_remember_then_recall_round_trip(db_path: Path, how: str) -> None:
    where: dict[str, Path] = {"db": db_path} if how == "flag" else {"env_db": db_path}
    out = ok(
        cli("remember", "Coffee after noon keeps me awake", "--kind", "lesson", "--tag", "sleep", **where)
    )
    assert out.startswith("Remembered:")
    assert "Coffee after noon keeps me awake" in out
    assert "lesson" in out and "#sleep" in out

    found = ok(cli("recall", "coffee awake", **where))
    assert found.startswith("1 memory for 'coffee awake':")
    assert "Coffee after noon keeps me awake" in found
    assert db_path.exists()  # the file named by --db or $SOUL_MCP_DB, not a default elsewhere


def test_the_db_flag_wins_over_the_environment(tmp_path: Path) -> None:
    flag_db, env_db = tmp_path / "flag.db", tmp_path / "env.db"
    ok(cli("remember", "Stored where the flag says", "--db", str(flag_db), env_db=env_db))
    assert flag_db.exists()
    assert not env_db.exists()


def test_json_output_parses_for_remember_recall_and_stats(db_path: Path) -> None:
    first = as_json(cli("remember", "Rivers run to the sea", "--json", "--importance", "4", db=db_path))
    assert first["is_new"] is True
    assert first["memory"]["importance"] == 4
    again = as_json(cli("remember", "rivers  RUN to the sea", "--json", db=db_path))
    assert again["is_new"] is False  # same content, ignoring case and spacing
    assert again["memory"]["id"] == first["memory"]["id"]

    recalled = as_json(cli("recall", "running river", "--json", db=db_path))
    assert [hit["id"] for hit in recalled["hits"]] == [first["memory"]["id"]]

    stats = as_json(cli("stats", "--json", db=db_path))
    assert stats["memories_active"] == 1
    assert stats["memories_forgotten"] == 0


# Forget, restore, purge -------------------------------------------------------------------------


def test_forget_takes_a_memory_out_of_recall_and_restore_memory_brings_it_back(db_path: Path) -> None:
    memory_id = remember(db_path, "The old office was on Elm Street")
    forgotten = as_json(cli("forget", memory_id, "--reason", "we moved", "--json", db=db_path))
    assert forgotten["status"] == "forgotten"
    assert forgotten["status_reason"] == "we moved"
    assert as_json(cli("recall", "office", "--json", db=db_path))["hits"] == []

    assert forgotten["status_changed_by"].startswith("cli:")
    restored = ok(cli("restore-memory", memory_id, db=db_path))
    assert restored.startswith("Restored:")
    assert "  restored by cli:" in restored  # who brought it back
    hits = as_json(cli("recall", "office", "--json", db=db_path))["hits"]
    assert [hit["id"] for hit in hits] == [memory_id]


def test_forget_of_an_unknown_id_is_refused_with_a_message(db_path: Path) -> None:
    ok(cli("init", db=db_path))
    refused(cli("forget", "m_000000000000", "--reason", "typo", db=db_path), "no memory has the id")


def test_purge_refuses_without_yes_when_not_at_a_terminal(db_path: Path) -> None:
    memory_id = remember(db_path, "Purge me only when asked twice")
    ok(cli("forget", memory_id, "--reason", "test", db=db_path))
    refused(cli("purge", memory_id, db=db_path), "--yes")
    assert memory_id in stored_ids(db_path)


def test_purge_yes_deletes_only_the_forgotten_memory(db_path: Path) -> None:
    gone = remember(db_path, "This one will be purged")
    kept = remember(db_path, "This one stays")
    ok(cli("forget", gone, "--reason", "no longer true", db=db_path))

    refused(cli("purge", kept, "--yes", db=db_path), "only forgotten memories can be purged")
    assert as_json(cli("purge", gone, "--yes", "--json", db=db_path)) == {"purged": gone}
    assert stored_ids(db_path) == {kept}
    refused(cli("restore-memory", gone, db=db_path), "no memory has the id")


def test_a_value_the_core_rejects_exits_1_not_2(db_path: Path) -> None:
    refused(cli("remember", "Too important", "--importance", "9", db=db_path), "importance")
    assert not stored_ids(db_path)


# Documents, wake, stats -------------------------------------------------------------------------


def test_soul_show_prints_the_starter_before_any_soul_is_written(db_path: Path) -> None:
    ok(cli("init", db=db_path))
    shown = ok(cli("soul", "show", db=db_path))
    assert shown.startswith("Soul (starter, not yet adopted):")
    assert ok(cli("soul", "show", "--raw", db=db_path)) == STARTER_SOUL + "\n"
    assert ok(cli("intent", "history", db=db_path)).startswith("Intent has no stored versions yet.")


def test_history_and_diff_show_what_an_mcp_client_wrote(server: Any, db_path: Path) -> None:
    async def write() -> None:
        async with Client(server) as client:
            for content, reason in [("# Soul\nCurious.", "first"), ("# Soul\nCurious and kind.", "grew")]:
                result = await client.call_tool("write_soul", {"content": content, "reason": reason})
                assert not result.is_error, result.content

    anyio.run(write)

    history = ok(cli("soul", "history", db=db_path))
    assert history.splitlines()[0] == "Soul history, newest first:"
    assert "version 2:" in history and "— grew" in history
    assert history.index("version 2:") < history.index("version 1:")
    versions = as_json(cli("soul", "history", "--json", db=db_path))["versions"]
    assert [v["version"] for v in versions] == [2, 1]

    diff = ok(cli("soul", "diff", "1", "2", db=db_path))
    assert "-Curious." in diff and "+Curious and kind." in diff
    assert ok(cli("soul", "show", "--version", "1", "--raw", db=db_path)) == "# Soul\nCurious.\n"


@pytest.mark.parametrize(
    "args",
    [["soul", "diff", "1", "7"], ["soul", "diff", "0", "1"], ["soul", "show", "--version", "3"]],
    ids=["missing-version", "version-zero", "show-missing"],
)
def test_bad_versions_are_refused_with_an_error_on_stderr(db_path: Path, args: list[str]) -> None:
    ok(cli("init", db=db_path))
    done = cli(*args, db=db_path)
    refused(done)
    assert done.stdout == ""


def test_wake_prints_the_soul_and_what_was_remembered(db_path: Path) -> None:
    remember(db_path, "The garden needs water on Fridays", "--importance", "5")
    woken = ok(cli("wake", "--focus", "garden", db=db_path))
    assert "# Soul" in woken  # the starter soul, as a new session would see it
    assert "The garden needs water on Fridays" in woken
    assert as_json(cli("wake", "--json", db=db_path))["soul"]["adopted"] is False


def test_stats_counts_memories_by_status(db_path: Path) -> None:
    remember(db_path, "Alpha")
    beta = remember(db_path, "Beta")
    ok(cli("forget", beta, "--reason", "wrong", db=db_path))
    out = ok(cli("stats", db=db_path))
    assert out.startswith("Memories: 1 active, 1 forgotten, 0 superseded")
    assert "Sessions: 0" in out


# Help and usage ---------------------------------------------------------------------------------


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand the parser knows, e.g. ("soul",), ("soul", "diff")."""
    paths: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths += command_paths(sub, (*prefix, name))
    return paths


COMMANDS = command_paths(build_parser())


def test_the_command_list_is_what_the_docs_promise() -> None:
    # Guards the help loop below against walking an empty or partial parser.
    tops = {path[0] for path in COMMANDS}
    assert {"serve", "wake", "remember", "recall", "forget", "restore-memory", "purge", "stats"} <= tops
    assert {("soul", "show"), ("intent", "history"), ("north-star", "diff")} <= set(COMMANDS)
    assert {"init", "memories", "doctor", "config"} <= tops
    mine = {("soul", "edit"), ("user", "restore"), ("memories", "list"), ("config", "vscode")}
    assert mine <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the parser the installed script builds): a subprocess per command would cost a
    # minute on a loaded machine; the entry point itself is checked by the test below.
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: soul-mcp " + " ".join(path))
    assert err == ""


def test_help_from_the_command_line_lists_the_commands_and_exit_codes() -> None:
    # A real process: `python -m soul_mcp` is what the installed script and clients run.
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", "--help"], capture_output=True, text=True, timeout=60
    )
    out = ok(done)
    assert out.startswith("usage: soul-mcp")
    assert "doctor" in out and "memories" in out
    assert "Exit codes: 0 ok, 1 refused or not found, 2 usage error, 3 database problem." in out


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["no-such-command"],
        ["remember"],
        ["recall", "--limit", "many"],
        ["forget", "m_000000000000"],
        ["soul"],
        ["soul", "diff", "1"],
        ["purge"],
    ],
    ids=["nothing", "unknown", "no-text", "limit-not-int", "no-reason", "no-action", "one-version", "no-id"],
)
def test_usage_errors_exit_2_with_usage_on_stderr(args: list[str], tmp_path: Path) -> None:
    done = cli(*args, env_db=tmp_path / "never.db")
    assert done.returncode == 2, done
    assert "usage: soul-mcp" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "never.db").exists()  # nothing was opened
