"""The command line under bad input, broken paths and closed pipes: one `error: ...` line on stderr,
the documented exit code (1 refused, 2 usage, 3 database problem), never a traceback, and nothing
created where nothing was asked for.

In process (`main([...])` with capsys) wherever the process boundary is not the point; subprocesses
for a closed pipe, a port already taken, logging (configured once per process) and the terminal.
"""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from soul_mcp import __version__
from soul_mcp.cli import main
from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.models import Actor

MISSING_DB_HINT = "create it with `soul-mcp init` (or check --db / $SOUL_MCP_DB)"


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`main(args)`, with argparse's own exits (usage, --version) turned into exit codes."""
    try:
        code = main(list(args))
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without any SOUL_MCP_ setting; the warm-start cache in the test's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUL_MCP_")}
    return {**env, "SOUL_MCP_CACHE_DIR": str(tmp_path / "cache"), **extra}


def soul(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m soul_mcp ARGS` as a real process, for what main() cannot show in-process."""
    return subprocess.run(
        [sys.executable, "-m", "soul_mcp", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def seed(db: Path, memories: int = 0, memory_chars: int = 40, soul_versions: int = 0) -> None:
    """Fill a database through the core, in one open (faster than a CLI call per memory)."""

    async def fill() -> None:
        agent_self = await AgentSelf.open(Settings(db_path=db))
        try:
            for i in range(memories):
                await agent_self.remember(f"memory {i} " + "x" * memory_chars, Actor(name="test"))
            for i in range(soul_versions):
                await agent_self.write("soul", f"# Soul\nVersion {i + 1}.", Actor(name="test"), f"v{i + 1}")
        finally:
            await agent_self.close()

    anyio.run(fill)


# A missing database: reading commands refuse it, writing commands create it ------------------------

READING = [
    ["stats"],
    ["recall", "anything"],
    ["wake"],
    ["memories", "list"],
    ["memories", "show", "m_000000000000"],
    ["soul", "show"],
    ["north-star", "history"],
    ["intent", "diff", "1", "2"],
    ["token", "list"],
    ["backup", "{out}"],
    ["export", "{out}"],
    # These change only what is already stored, so on a database that does not exist they can only fail.
    ["forget", "m_000000000000", "--reason", "typo"],
    ["restore-memory", "m_000000000000"],
    ["purge", "m_000000000000", "--yes"],
    ["token", "revoke", "laptop"],
    ["soul", "restore", "1", "--reason", "back"],
]


@pytest.mark.parametrize("command", READING, ids=lambda c: " ".join(c))
def test_a_reading_command_refuses_a_missing_database_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "typo" / "soul.db"
    out_path = tmp_path / "out"
    argv = [part.replace("{out}", str(out_path)) for part in command]
    code, out, err = run_main(capsys, *argv, "--db", str(db))
    assert code == 3
    assert one_error_line(err) == f"error: no database at {db}; {MISSING_DB_HINT}"
    assert out == ""
    assert not db.parent.exists() and not out_path.exists()


def test_the_missing_database_named_by_the_environment_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "soul.db"
    monkeypatch.setenv("SOUL_MCP_DB", str(db))
    code, _, err = run_main(capsys, "recall", "x")
    assert code == 3 and one_error_line(err) == f"error: no database at {db}; {MISSING_DB_HINT}"
    assert list(tmp_path.iterdir()) == []


def test_doctor_reports_a_missing_database_without_creating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "typo" / "soul.db"
    code, out, _ = run_main(capsys, "doctor", "--db", str(db))
    assert code == 3 and "no database at" in out
    assert not db.parent.exists()


@pytest.mark.parametrize(
    "command", [["init"], ["remember", "First words"], ["token", "create", "laptop"]], ids=lambda c: c[0]
)
def test_writing_commands_still_create_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    db = tmp_path / "new" / "deeper" / "soul.db"
    old_umask = os.umask(0o022)  # the usual default: 0755 folders, 0644 files
    try:
        code, _, err = run_main(capsys, *command, "--db", str(db))
    finally:
        os.umask(old_umask)
    assert code == 0, err
    assert db.is_file()
    # Private to their owner, every folder created on the way included.
    assert [p.stat().st_mode & 0o777 for p in (db, db.parent, db.parent.parent)] == [0o600, 0o700, 0o700]


# Database paths that cannot work --------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["init"], ["remember", "hello"], ["token", "create", "laptop"], ["serve", "--http"]],
    ids=lambda c: " ".join(c),
)
def test_a_database_path_below_a_regular_file_is_a_database_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    blocking = tmp_path / "notes.txt"
    blocking.write_text("a file, not a folder")
    db = blocking / "soul" / "soul.db"
    code, out, err = run_main(capsys, *command, "--db", str(db))
    assert code == 3
    assert one_error_line(err) == (
        f"error: cannot create the database folder {db.parent}: {blocking} is a file, not a folder "
        "(check --db / $SOUL_MCP_DB)"
    )
    assert out == ""  # also for serve: stdout belongs to the protocol
    assert blocking.read_text() == "a file, not a folder"


@pytest.mark.anyio
async def test_a_stdio_server_below_a_regular_file_answers_every_call_with_the_reason(
    tmp_path: Path,
) -> None:
    """A stdio server is started by a client, not watched by a person: it stays up, and the
    agent reads why nothing can be stored."""
    blocking = tmp_path / "notes.txt"
    blocking.write_text("a file, not a folder")
    db = blocking / "soul" / "soul.db"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "soul_mcp", "serve", "--db", str(db)],
        env=subprocess_env(tmp_path),
    )
    async with Client(params, mode="legacy") as client:
        for tool, arguments in (("remember", {"content": "Worth keeping"}), ("recall", {"query": "x"})):
            result = await client.call_tool(tool, arguments)
            assert result.is_error
            assert f"cannot create the database at {db}: a file stands where a folder should be" in (
                result.content[0].text  # type: ignore[union-attr]
            )
    assert blocking.read_text() == "a file, not a folder"


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user cannot create anything in: a read-only folder, or for root (whom modes
    do not stop) sysfs, where nobody may create folders."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        (folder / "probe").mkdir()
    except PermissionError:
        return folder
    (folder / "probe").rmdir()
    if Path("/sys/fs").is_dir():
        return Path("/sys/fs")
    pytest.skip("no folder here refuses this user")


def test_an_unwritable_database_folder_is_a_database_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = unwritable_folder(tmp_path) / "soul-mcp-test" / "soul.db"
    code, _, err = run_main(capsys, "remember", "hello", "--db", str(db))
    assert code == 3
    line = one_error_line(err)
    assert line.startswith(f"error: cannot create the database folder {db.parent}: ")
    assert line.endswith("(check --db / $SOUL_MCP_DB)")


# Settings from the environment ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "SOUL_MCP_LOG_LEVEL",
            "verbose",
            "error: SOUL_MCP_LOG_LEVEL must be one of debug, info, warning, error, critical; got 'verbose'",
        ),
        (
            "SOUL_MCP_SYNCHRONOUS",
            "off",
            "error: SOUL_MCP_SYNCHRONOUS must be FULL, NORMAL or EXTRA, got 'OFF'",
        ),
        (
            "SOUL_MCP_MAX_MEMORY_CHARS",
            "lots",
            "error: SOUL_MCP_MAX_MEMORY_CHARS must be a whole number, got 'lots'",
        ),
    ],
    ids=["log-level", "synchronous", "memory-chars"],
)
def test_a_bad_setting_in_the_environment_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run_main(capsys, "stats", "--db", str(tmp_path / "soul.db"))
    assert code == 2
    assert one_error_line(err) == message
    assert out == ""


def test_serve_with_a_bad_log_level_stops_with_one_line_on_stderr(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, SOUL_MCP_LOG_LEVEL="verbose")
    done = soul("serve", "--db", str(tmp_path / "soul.db"), env=env)
    assert done.returncode == 2
    assert done.stdout == ""  # the protocol's channel stays clean
    assert one_error_line(done.stderr).startswith("error: SOUL_MCP_LOG_LEVEL must be one of debug, info")


# The HTTP server's port -----------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_outside_1_to_65535_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    db = tmp_path / "soul.db"
    code, out, err = run_main(
        capsys, "serve", "--http", "--insecure-no-auth", "--port", port, "--db", str(db)
    )
    assert code == 2
    assert f"argument --port: a port is a whole number from 1 to 65535, got '{port}'" in err
    assert "Traceback" not in err and out == ""
    assert not db.exists()


def test_a_port_already_in_use_exits_1_and_opens_nothing(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = subprocess_env(tmp_path)
        # subprocess.run kills the server if it lingers past the timeout, and the test fails.
        done = soul("serve", "--http", "--insecure-no-auth", "--port", str(port), "--db", str(db), env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"error: port {port} on 127.0.0.1 is already in use: stop the other server or pass --port\n"
    )
    assert not db.exists()  # refused before the database was opened


def test_an_http_server_on_a_damaged_database_stops_at_the_start_saying_why(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    db.write_bytes(b"these are my notes, not a database\n" * 200)
    with socket.socket() as probe:  # a free port: the database is the only problem
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = soul("serve", "--http", "--insecure-no-auth", "--port", str(port), "--db", str(db),
                env=subprocess_env(tmp_path))  # fmt: skip
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: cannot open the database at {db}: it is damaged")
    assert f"soul-mcp doctor --db {db}" in line


@pytest.mark.anyio
async def test_a_token_that_cannot_be_checked_is_not_called_invalid(tmp_path: Path) -> None:
    """A database that breaks under a running HTTP server: the caller is told the server cannot
    check tokens (not 401, which would send them to check theirs), without the database's path."""
    from starlette.authentication import AuthenticationError

    from soul_mcp.server.access import StoreTokenVerifier
    from soul_mcp.server.state import SelfHolder

    holder = SelfHolder(Settings(db_path=tmp_path))  # a folder: it cannot be opened
    async with holder.session():
        with pytest.raises(AuthenticationError) as refused:
            await StoreTokenVerifier(holder).verify_token("any-token")
    assert "cannot use its database" in str(refused.value) and str(tmp_path) not in str(refused.value)


# Output into a closed pipe --------------------------------------------------------------------


def test_output_into_a_pipe_closed_after_the_first_line_ends_quietly(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("needs a pipe whose size can be set (Linux)")
    db = tmp_path / "soul.db"
    seed(db, memories=12, memory_chars=800)  # ten hits of 800 characters: far more than the pipe holds
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", "recall", "memory", "--db", str(db)],
        stdout=writer,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=subprocess_env(tmp_path),
    )
    os.close(writer)
    first = os.read(reader, 64)  # like `| head -1`: read a line's worth, then go away
    os.close(reader)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert first.startswith(b"10 memories for 'memory':")
    assert err == b""  # no traceback, no "Exception ignored"
    assert process.returncode == 0


# Logs carry no memories unless asked ----------------------------------------------------------


def test_debug_logs_leave_out_memories_unless_log_sql_asks(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    secret = "Maya's diary entry 7f3c"
    env = subprocess_env(tmp_path)
    verbose = soul("-v", "remember", secret, "--db", str(db), env=env)
    assert verbose.returncode == 0 and secret in verbose.stdout
    assert secret not in verbose.stderr
    by_env = soul("remember", "Again: " + secret, "--db", str(db), env={**env, "SOUL_MCP_LOG_LEVEL": "debug"})
    assert by_env.returncode == 0 and secret in by_env.stdout
    assert secret not in by_env.stderr
    asked = soul("--log-sql", "remember", "Asked for: " + secret, "--db", str(db), env=env)
    assert asked.returncode == 0
    assert "DEBUG aiosqlite" in asked.stderr and secret in asked.stderr  # the flag is what lets it through


# Small things ---------------------------------------------------------------------------------


def test_dash_dash_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "--version")
    assert (code, out, err) == (0, f"soul-mcp {__version__}\n", "")


def test_counts_of_one_are_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "soul.db"
    seed(db, memories=1, soul_versions=1)
    code, out, _ = run_main(capsys, "backup", str(tmp_path / "copy.db"), "--db", str(db))
    assert code == 0 and "soul: 1 version\n" in out
    code, out, _ = run_main(capsys, "init", "--db", str(db))
    assert code == 0 and "(1 active memory, 1 document version); nothing changed." in out
    code, out, _ = run_main(capsys, "doctor", "--db", str(db))
    assert "1 active memory, 1 indexed" in out


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_serve_at_a_terminal_names_the_absolute_command_and_the_database(tmp_path: Path) -> None:
    script = Path(sys.executable).absolute().parent / "soul-mcp"
    if not script.is_file():
        pytest.skip("this installation has no soul-mcp script beside its python")
    db = tmp_path / "soul.db"
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", "serve", "--db", str(db)],
        stdin=follower,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subprocess_env(tmp_path),
    )
    os.close(follower)
    watchdog = threading.Timer(30, process.kill)  # a hint that never comes fails the test, not hangs it
    watchdog.start()
    hint = b""
    try:
        assert process.stderr is not None
        while b"Waiting for a client" not in hint and (line := process.stderr.readline()):
            hint += line
    finally:
        watchdog.cancel()
        os.close(leader)
        process.kill()
        process.wait(timeout=30)
    text = hint.decode()
    assert f"claude mcp add soul -- {script} serve --db {db}\n" in text
    assert f'{{"command": "{script}", "args": ["serve", "--db", "{db}"]}}' in text
