"""`soul-mcp hook HOST`: the host's SessionStart event fed on stdin to a real subprocess (the process
boundary is the point: the host spawns it) against a real SQLite file, its stdout checked against
the schema each host documents; `--install` / `--uninstall` in process against settings files in a
temporary HOME.

The schemas below are written from the hosts' documentation (2026-12): Claude Code's hooks reference
(JSON output, SessionStart decision control), Gemini CLI's hooks reference (SessionStart), and the
output schema Codex publishes for session-start commands (additionalProperties false).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import sqlite3
import stat
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from soul_mcp.cli import main
from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.models import Actor

SOURCES = {
    "claude-code": ["startup", "resume", "clear", "compact"],
    "gemini": ["startup", "resume", "clear"],
    "codex": ["startup", "resume", "clear"],
}
_CONTEXT: dict[str, Any] = {
    "type": "object",
    "required": ["hookEventName", "additionalContext"],
    "properties": {"hookEventName": {"const": "SessionStart"}, "additionalContext": {"type": "string"}},
}
OUTPUT_SCHEMA: dict[str, dict[str, Any]] = {
    "claude-code": {
        "type": "object",
        "required": ["hookSpecificOutput"],
        "properties": {
            "continue": {"type": "boolean"},
            "stopReason": {"type": "string"},
            "suppressOutput": {"type": "boolean"},
            "systemMessage": {"type": "string"},
            "hookSpecificOutput": {
                **_CONTEXT,
                "properties": {
                    **_CONTEXT["properties"],
                    "initialUserMessage": {"type": "string"},
                    "sessionTitle": {"type": "string"},
                    "watchPaths": {"type": "array", "items": {"type": "string"}},
                    "reloadSkills": {"type": "boolean"},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "gemini": {
        "type": "object",
        "required": ["hookSpecificOutput"],
        "properties": {
            "systemMessage": {"type": "string"},
            "suppressOutput": {"type": "boolean"},
            "continue": {"type": "boolean"},
            "stopReason": {"type": "string"},
            "decision": {"type": "string"},
            "reason": {"type": "string"},
            "hookSpecificOutput": {**_CONTEXT, "additionalProperties": False},
        },
        "additionalProperties": False,
    },
    "codex": {
        "type": "object",
        "required": ["hookSpecificOutput"],
        "properties": {
            "continue": {"type": "boolean"},
            "stopReason": {"type": "string"},
            "suppressOutput": {"type": "boolean"},
            "systemMessage": {"type": "string"},
            "hookSpecificOutput": {**_CONTEXT, "additionalProperties": False},
        },
        "additionalProperties": False,
    },
}
HOSTILE = 'Quotes " and \\ backslashes,\nnew lines, </hook_context> tags, {"json": [1]}, caf\u00e9 \u2603 \U0001f600'


def event(source: str, tmp_path: Path) -> bytes:
    """What the host sends on stdin (Claude Code's documented SessionStart input)."""
    return json.dumps(
        {
            "session_id": "abc123",
            "transcript_path": str(tmp_path / "transcript.jsonl"),
            "cwd": str(tmp_path),
            "hook_event_name": "SessionStart",
            "source": source,
            "model": "claude-sonnet-5",
        }
    ).encode()


def run_hook(host: str, db: Path | str, stdin: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUL_MCP_")}
    command = [sys.executable, "-m", "soul_mcp", "hook", host, "--db", str(db), *extra]
    return subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=60)


def context_of(result: subprocess.CompletedProcess[bytes], host: str) -> str:
    """The context the host would add, after checking the exit code and the documented schema."""
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
    answer = json.loads(result.stdout)  # the whole of stdout is one JSON object (Gemini requires it)
    jsonschema.validate(answer, OUTPUT_SCHEMA[host])
    context: str = answer["hookSpecificOutput"]["additionalContext"]
    return context


def invoke(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def soul_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self with a soul, an intent and memories, one of them full of characters JSON escapes."""
    db = tmp_path_factory.mktemp("hook") / "soul.db"

    async def fill() -> None:
        agent_self = await AgentSelf.open(Settings.load(db))
        try:
            me = Actor(name="test")
            await agent_self.write("soul", "I am Wren. I keep notes for Maya.", me, reason="first")
            await agent_self.write("intent", "Finish the billing refactor.", me)
            await agent_self.remember("Maya prefers tea to coffee.", me, importance=5)
            await agent_self.remember("The billing module lives in src/billing.", me, kind="fact")
            await agent_self.remember(HOSTILE, me, importance=4)
        finally:
            await agent_self.close()

    anyio.run(fill)
    return db


def wake_text(db: Path | str, *extra: str) -> str:
    code, out, err = invoke("wake", "--db", str(db), *extra)
    assert code == 0, err
    return out[:-1]  # print's newline


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Running the hook -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "source"), [(host, source) for host, sources in SOURCES.items() for source in sources]
)
def test_hook_answers_every_source_with_the_wake_up_text(
    host: str, source: str, soul_db: Path, tmp_path: Path
) -> None:
    before = digest(soul_db)
    context = context_of(run_hook(host, soul_db, event(source, tmp_path)), host)
    assert context.endswith("\n\n" + wake_text(soul_db))  # the wake_up tool's text, whole
    assert f"SessionStart hook ({source})" in context.splitlines()[0]
    assert "I am Wren" in context and "Maya prefers tea" in context and HOSTILE.splitlines()[0] in context
    assert digest(soul_db) == before  # nothing written
    assert not Path(f"{soul_db}-wal").exists() or Path(f"{soul_db}-wal").stat().st_size == 0


@pytest.mark.parametrize(
    "stdin", [b"", b"not json at all", b"[1, 2]", b'{"source": 5}', b"\xff\xfe\x00garbage"]
)
def test_hook_tolerates_empty_or_garbage_input(stdin: bytes, soul_db: Path) -> None:
    context = context_of(run_hook("claude-code", soul_db, stdin), "claude-code")
    assert context.endswith(wake_text(soul_db))


def test_hook_budget_and_focus_reach_the_wake_up(soul_db: Path, tmp_path: Path) -> None:
    result = run_hook(
        "claude-code", soul_db, event("startup", tmp_path), "--budget", "1500", "--focus", "billing"
    )
    context = context_of(result, "claude-code")
    assert context.endswith(wake_text(soul_db, "--budget", "1500", "--focus", "billing"))
    assert (
        "## Memories relevant to: billing\n- " in context
        and len(wake_text(soul_db, "--budget", "1500")) <= 1500
    )


@pytest.mark.parametrize("kind", ["missing", "garbage", "folder"])
def test_hook_with_a_broken_database_says_so_in_one_line_and_exits_0(kind: str, tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    if kind == "garbage":
        db.write_bytes(b"this is not a SQLite database" * 200)
    elif kind == "folder":
        db.mkdir()
    context = context_of(run_hook("claude-code", db, event("startup", tmp_path)), "claude-code")
    assert context.startswith("soul-mcp could not wake the self") and "\n" not in context
    assert "soul-mcp doctor" in context
    if kind == "missing":
        assert not db.exists()  # a hook creates nothing
    if kind == "garbage":
        assert db.read_bytes() == b"this is not a SQLite database" * 200


def test_hook_does_not_wait_for_a_locked_database(soul_db: Path, tmp_path: Path) -> None:
    """Another process holds the write lock that opening takes: SQLite would wait 10 s for it; the
    hook's own deadline answers first, and the process ends (the run's timeout would catch a hang)."""
    db = tmp_path / "locked.db"
    db.write_bytes(soul_db.read_bytes())
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        result = run_hook("codex", db, event("startup", tmp_path), "--timeout", "0.5")
    finally:
        holder.close()
    context = context_of(result, "codex")
    assert context.startswith("soul-mcp could not wake the self") and "did not answer within 0.5 s" in context


def test_hook_wakes_a_postgresql_self(postgres_url: str, tmp_path: Path) -> None:
    async def fill() -> None:
        agent_self = await AgentSelf.open(Settings.load(postgres_url))
        try:
            await agent_self.remember("Maya prefers tea to coffee.", Actor(name="test"), importance=5)
        finally:
            await agent_self.close()

    anyio.run(fill)
    result = run_hook("gemini", postgres_url, event("startup", tmp_path))
    context = context_of(result, "gemini")
    assert "Maya prefers tea" in context and context.endswith(wake_text(postgres_url))


# Installing it ----------------------------------------------------------------------------------

OTHER_HOOKS = {
    "SessionStart": [
        {"matcher": "startup", "hooks": [{"type": "command", "command": "~/bin/greet.sh"}]},
    ],
    "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "~/bin/check.sh"}]}],
}
OTHER_SETTINGS = {"model": "opus", "permissions": {"allow": ["Bash(npm test)"]}, "hooks": OTHER_HOOKS}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    for name in [k for k in os.environ if k.startswith("SOUL_MCP_")]:
        monkeypatch.delenv(name)
    return home


def ours(settings: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        handler
        for group in settings.get("hooks", {}).get("SessionStart", [])
        for handler in group["hooks"]
        if " hook " in handler["command"]
    ]


def test_install_merges_once_keeps_everything_else_and_uninstall_leaves_the_rest(
    home: Path, soul_db: Path, tmp_path: Path
) -> None:
    settings_file = home / ".claude" / "settings.json"
    settings_file.parent.mkdir()
    settings_file.write_text(json.dumps(OTHER_SETTINGS, indent=4))
    settings_file.chmod(0o640)

    code, out, err = invoke("hook", "claude-code", "--install", "--db", str(soul_db))
    assert code == 0, err
    assert f"Installed in {settings_file}" in out
    merged = json.loads(settings_file.read_text())
    assert {k: v for k, v in merged.items() if k != "hooks"} == {
        k: v for k, v in OTHER_SETTINGS.items() if k != "hooks"
    }
    assert merged["hooks"]["PreToolUse"] == OTHER_HOOKS["PreToolUse"]
    assert merged["hooks"]["SessionStart"][0] == OTHER_HOOKS["SessionStart"][0]
    (handler,) = ours(merged)
    assert merged["hooks"]["SessionStart"][1]["matcher"] == "startup|resume|clear|compact"
    argv = shlex.split(handler["command"])
    assert Path(argv[0]).is_absolute() and argv[1:] == ["hook", "claude-code", "--db", str(soul_db.resolve())]
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o640

    written = settings_file.read_bytes()
    code, out, _ = invoke("hook", "claude-code", "--install", "--db", str(soul_db))
    assert code == 0 and "Already installed" in out
    assert settings_file.read_bytes() == written  # idempotent: one entry, the file untouched

    # The command written is one the host can run: the wake-up comes back.
    ran = subprocess.run(argv, input=event("startup", tmp_path), capture_output=True, timeout=60)
    assert context_of(ran, "claude-code").endswith(wake_text(soul_db))

    code, out, _ = invoke("hook", "claude-code", "--uninstall")
    assert code == 0 and "Removed from" in out
    assert json.loads(settings_file.read_text()) == OTHER_SETTINGS
    code, out, _ = invoke("hook", "claude-code", "--uninstall")
    assert code == 0 and "Not installed" in out


def test_install_into_a_missing_file_creates_it_privately_and_uninstall_empties_it(
    home: Path, soul_db: Path
) -> None:
    assert invoke("hook", "claude-code", "--install", "--db", str(soul_db))[0] == 0
    settings_file = home / ".claude" / "settings.json"
    assert len(ours(json.loads(settings_file.read_text()))) == 1
    if os.name == "posix":
        assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    assert invoke("hook", "claude-code", "--uninstall")[0] == 0
    assert json.loads(settings_file.read_text()) == {}


def test_reinstall_with_other_options_replaces_our_entry(home: Path, soul_db: Path) -> None:
    invoke("hook", "claude-code", "--install", "--db", str(soul_db))
    invoke("hook", "claude-code", "--install", "--db", str(soul_db), "--budget", "4000")
    (handler,) = ours(json.loads((home / ".claude" / "settings.json").read_text()))
    assert handler["command"].endswith("--budget 4000")


@pytest.mark.parametrize(
    "content",
    [
        '{"model": "opus",}',
        "// my settings\n{}",
        '{"hooks": []}',
        '["a list"]',
        '{"hooks": {"SessionStart": {}}}',
    ],
)
def test_settings_that_are_not_as_documented_are_refused_and_left_untouched(
    content: str, home: Path, soul_db: Path
) -> None:
    settings_file = home / ".claude" / "settings.json"
    settings_file.parent.mkdir()
    settings_file.write_text(content)
    for action in ("--install", "--uninstall"):
        code, out, err = invoke("hook", "claude-code", action, "--db", str(soul_db))
        assert code == 1 and out == ""
        assert err.startswith(f"error: {settings_file}") and "nothing was changed" in err
        assert "Traceback" not in err
        assert settings_file.read_text() == content


@pytest.mark.skipif(os.name != "posix", reason="symbolic links need privileges on Windows")
def test_a_linked_settings_file_stays_a_link(home: Path, soul_db: Path, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "claude-settings.json"
    real.parent.mkdir()
    real.write_text('{"model": "opus"}')
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").symlink_to(real)
    assert invoke("hook", "claude-code", "--install", "--db", str(soul_db))[0] == 0
    assert (home / ".claude" / "settings.json").is_symlink()
    assert json.loads(real.read_text())["model"] == "opus" and len(ours(json.loads(real.read_text()))) == 1


@pytest.mark.parametrize(
    ("host", "scope", "file", "timeout"),
    [
        ("claude-code", "project", ".claude/settings.json", 10),
        ("claude-code", "local", ".claude/settings.local.json", 10),
        ("gemini", "user", "~/.gemini/settings.json", 10_000),
        ("codex", "user", "~/.codex/hooks.json", 10),
        ("codex", "project", ".codex/hooks.json", 10),
    ],
)
def test_each_host_and_scope_gets_its_own_file_and_units(
    host: str, scope: str, file: str, timeout: int, home: Path, soul_db: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    code, _, err = invoke("hook", host, "--install", "--scope", scope, "--db", str(soul_db))
    assert code == 0, err
    path = home / file[2:] if file.startswith("~/") else project / file
    (handler,) = ours(json.loads(path.read_text()))
    assert handler["timeout"] == timeout and f" hook {host} " in handler["command"]


def test_print_shows_the_entry_without_writing(home: Path, soul_db: Path) -> None:
    code, out, err = invoke("hook", "gemini", "--print", "--db", str(soul_db))
    assert code == 0
    entry = json.loads(out)
    (group,) = entry["hooks"]["SessionStart"]
    assert group["matcher"] == "*" and group["hooks"][0]["name"] == "soul-mcp-wake"
    assert "settings.json" in err and not (home / ".gemini").exists()


def test_a_password_in_the_database_url_is_never_written(home: Path) -> None:
    code, _, err = invoke("hook", "claude-code", "--install", "--db", "postgresql://me:secret@localhost/soul")
    assert code == 1 and "password" in err and "secret" not in err
    assert not (home / ".claude").exists()
