"""`soul-mcp hook HOST`: wake up without being asked. The host runs it when a session starts; it
reads the host's event on stdin and answers with the wake-up text (what the `wake_up` tool returns)
as the new session's context. `--install` / `--uninstall` put it into / take it out of the host's
settings, `--print` shows the entry.

Never in the way of a session: whatever happens (no database, a damaged or locked one, bad input
on stdin) the host gets one short line of context saying so, and exit code 0. A deadline
(`--timeout`) bounds the whole run, since SQLite waits up to 10 s for another process's lock.
Nothing is written to the database: the wake-up carries no session id, so none is recorded.

The self is opened without the semantic indexer: loading an embedding model would cost seconds at
every session start, and without `--focus` the wake-up ranks nothing by meaning anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from soul_mcp.cli.command import Subcommands
from soul_mcp.cli.hook_settings import (
    HOSTS,
    HookHost,
    HookSettingsError,
    merge_hook,
    read_settings,
    remove_hook,
    write_settings,
)
from soul_mcp.cli.hosts import launcher, shell_join
from soul_mcp.cli.output import EXIT_OK, emit, refuse

DEFAULT_TIMEOUT_S = 4.0
# The wake_up tool's default: Claude Code hands Claude a file path instead of a context longer than
# 10,000 characters, and this with the line above it stays under that.
DEFAULT_BUDGET = 8000
BUDGET_RANGE = (500, 100_000)  # the wake_up tool's
EVENT_MAX_BYTES = 1 << 20  # the host's event is a few hundred bytes; more is not an event
REASON_CHARS = 300


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    hook = sub.add_parser(
        "hook",
        help="wake up without being asked: the self in every new session (Claude Code, Gemini CLI, Codex)",
        description="Run by the host when a session starts: prints the wake-up as the session's "
        "context, in the host's format. --install adds the hook to the host's settings.",
    )
    host_sub = hook.add_subparsers(dest="host", metavar="HOST", required=True)
    for host in HOSTS.values():
        p = host_sub.add_parser(host.name, parents=[common], help=f"{host.title}'s SessionStart hook")
        action = p.add_mutually_exclusive_group()
        action.add_argument("--install", action="store_true",
                            help=f"add the hook to {host.title}'s settings (other settings and hooks kept)")  # fmt: skip
        action.add_argument("--uninstall", action="store_true", help="take our hook out of those settings")
        action.add_argument("--print", dest="show", action="store_true", help="print the settings entry")
        p.add_argument("--scope", choices=list(host.files), default="user",
                       help="user: every project (default); " + ", ".join(
                           f"{scope}: {file} in this folder" for scope, file in host.files.items() if scope != "user"
                       ))  # fmt: skip
        p.add_argument("--budget", type=_budget, help=f"characters of the wake-up (default {DEFAULT_BUDGET})")
        p.add_argument("--focus", help="what every session is about: memories relevant to it come first")
        p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S,
                       help=f"seconds before giving up on the database (default {DEFAULT_TIMEOUT_S:g})")  # fmt: skip
        p.set_defaults(func=hook_command)


def _budget(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    low, high = BUDGET_RANGE
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(f"must be {low} to {high}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {value!r}") from None
    if not 0 < number <= 60:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 60")
    return number


def hook_command(args: argparse.Namespace) -> int:
    host = HOSTS[args.host]
    if args.install or args.uninstall or args.show:
        return _configure(args, host)
    return run_hook(args, host)


# Running the hook -------------------------------------------------------------------------------


class Reply:
    """The one answer the host reads: the wake-up, or the notice when the deadline comes first."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._sent = False

    def send(self, context: str) -> None:
        with self._lock:
            if not self._sent:
                self._sent = True
                self._out.write(host_output(context))
                self._out.flush()

    def give_up(self, notice: str) -> None:
        """On the timer's thread: answer if nothing was sent, then end the process, whose main
        thread may be waiting inside SQLite; it holds nothing that needs closing."""
        self.send(notice)
        os._exit(EXIT_OK)


def host_output(context: str) -> bytes:
    """The answer all three hosts document. ASCII JSON, whatever the text holds: the host's
    parser never meets a character the console's encoding mangled, and a lone surrogate (not
    valid in a Rust or Go JSON string) becomes U+FFFD first."""
    safe = context.encode("utf-8", "replace").decode("utf-8")
    answer = {"hookSpecificOutput": {"hookEventName": "SessionStart", "additionalContext": safe}}
    return (json.dumps(answer, ensure_ascii=True) + "\n").encode("ascii")


def read_event(stdin: Any) -> dict[str, Any]:
    """The host's event (session_id, cwd, source, ...); {} for none, empty or garbage input."""
    if stdin is None or stdin.isatty():  # run by hand at a terminal: nothing to wait for
        return {}
    try:
        raw = stdin.buffer.read(EVENT_MAX_BYTES)
        event = json.loads(raw.decode("utf-8", "replace")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return event if isinstance(event, dict) else {}


def notice(reason: str) -> str:
    """One line of context: what went wrong, and what still works."""
    reason = " ".join(reason.split())[:REASON_CHARS] or "an unexpected error"
    return (
        f"soul-mcp could not wake the self at this session's start: {reason}. If its MCP server is "
        "connected, wake_up may still work; `soul-mcp doctor` says what is wrong."
    )


def header(event: dict[str, Any], host: HookHost) -> str:
    source = event.get("source")
    when = f" ({source})" if isinstance(source, str) and source.isalnum() and len(source) < 20 else ""
    return (
        f"The soul-mcp wake-up, given by a {host.title} SessionStart hook{when}: the same text its "
        "wake_up tool returns, so wake_up need not be called again unless a focus is wanted.\n\n"
    )


def wake_text(args: argparse.Namespace, host: HookHost) -> str:
    """The wake_up tool's text for this database; raises on any problem."""
    import anyio

    from soul_mcp.config import Settings

    settings = Settings.load(args.db)
    if not settings.db_url and not settings.db_path.expanduser().exists():
        # Not opened: opening would create an empty database, and a hook should write nothing.
        raise FileNotFoundError(f"there is no database at {settings.db_path.expanduser().absolute()}")

    async def wake() -> str:
        from soul_mcp.core import AgentSelf
        from soul_mcp.models import Actor
        from soul_mcp.opening import open_store

        agent_self = AgentSelf(await open_store(settings), settings.limits)
        try:
            woken = await agent_self.wake_up(
                Actor(name=f"hook:{host.name}"), focus=args.focus, budget_chars=args.budget
            )
        finally:
            await agent_self.close()
        return woken.text

    return anyio.run(wake)


def run_hook(args: argparse.Namespace, host: HookHost) -> int:
    reply = Reply(sys.stdout.buffer)
    late = notice(f"the database did not answer within {args.timeout:g} s (is another process holding it?)")
    deadline = threading.Timer(args.timeout, reply.give_up, args=(late,))
    deadline.daemon = True
    deadline.start()
    event = read_event(sys.stdin)
    try:
        context = header(event, host) + wake_text(args, host)
    except Exception as exc:  # never a traceback, never a failed session start
        context = notice(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    reply.send(context)
    deadline.cancel()
    return EXIT_OK


# Installing it ----------------------------------------------------------------------------------


def hook_argv(args: argparse.Namespace) -> list[str]:
    """The command the host runs: this installation by absolute path, on this database."""
    from soul_mcp.config import Settings

    settings = Settings.load(args.db)
    if settings.db_url:
        from urllib.parse import urlsplit

        if urlsplit(settings.db_url).password:
            raise HookSettingsError(
                "the database URL holds a password, which does not belong in a settings file: "
                "put it in ~/.pgpass (or a service file) and give the URL without it"
            )
        db = settings.db_url
    else:
        db = str(settings.db_path.expanduser().resolve())
    argv = [*launcher(), "hook", args.host, "--db", db]
    if args.budget:
        argv += ["--budget", str(args.budget)]
    if args.focus:
        argv += ["--focus", args.focus]
    if args.timeout != DEFAULT_TIMEOUT_S:
        argv += ["--timeout", f"{args.timeout:g}"]
    return argv


def _configure(args: argparse.Namespace, host: HookHost) -> int:
    path = host.settings_file(args.scope, Path.cwd())
    try:
        command = "" if args.uninstall else shell_join(hook_argv(args))
        if args.show:
            entry = {"hooks": {"SessionStart": [host.group(command)]}}
            emit(args, entry, json.dumps(entry, indent=2))
            if not args.json:
                print(f"# merge into {path} (or run with --install)", file=sys.stderr)
            return EXIT_OK
        settings = read_settings(path)
        changed = merge_hook(settings, host, command) if args.install else remove_hook(settings, host)
        written = write_settings(path, settings) if changed else path
    except HookSettingsError as exc:
        return refuse(str(exc) if str(path) in str(exc) else f"{path}: {exc}; nothing was changed")
    except OSError as exc:
        return refuse(f"cannot write {path}: {exc.strerror or exc}")
    if args.install:
        done = f"Installed in {written}" if changed else f"Already installed in {written}; nothing changed"
        text = (
            f"{done}:\n  {command}\nEvery new {host.title} session now starts with the self in its "
            f"context. `soul-mcp hook {host.name} --uninstall` takes it out."
        )
    else:
        text = f"Removed from {written}." if changed else f"Not installed in {path}; nothing changed."
    result = {"host": host.name, "file": str(written), "changed": changed, "command": command or None}
    emit(args, result, text)
    return EXIT_OK
