"""`soul-mcp config HOST`: ready configuration for the MCP hosts people use, with paths that work
outside a shell.

Desktop apps start servers with a minimal PATH and without the user's venv, so every snippet names
the server by absolute path: the `soul-mcp` script of the installation that is running now (never
a `soul-mcp` found elsewhere on PATH, which may be another version), or this interpreter with
`-m soul_mcp` when no script exists. The database is given as an absolute `--db`, so every host
opens the same file whatever its working directory or environment.

Formats (checked against each host's documentation):
- Claude Desktop and Cursor: `{"mcpServers": {NAME: {"command": ..., "args": [...]}}}`;
- VS Code: `.vscode/mcp.json` with `{"servers": {NAME: {"type": "stdio", "command": ..., "args": [...]}}}`;
- Claude Code: `claude mcp add --scope SCOPE NAME -- COMMAND ARGS...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from soul_mcp.cli.command import Subcommands
from soul_mcp.cli.output import EXIT_OK, emit
from soul_mcp.config import Settings

HOSTS = {
    "claude-desktop": "JSON for claude_desktop_config.json (mcpServers)",
    "claude-code": "the `claude mcp add` command line",
    "cursor": "JSON for ~/.cursor/mcp.json or .cursor/mcp.json (mcpServers)",
    "vscode": "JSON for .vscode/mcp.json (servers, type stdio)",
}
SCRIPT = "soul-mcp.exe" if os.name == "nt" else "soul-mcp"


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    hosts = sub.add_parser(
        "config",
        help="print a ready configuration for an MCP host, with absolute paths",
        description="Print what to add to an MCP host so it starts this soul-mcp on this database. "
        "The paths are absolute, so the host needs neither your PATH nor your venv; where the "
        "snippet goes is printed on stderr.",
    )
    host_sub = hosts.add_subparsers(dest="host", metavar="HOST", required=True)
    for host, text in HOSTS.items():
        p = host_sub.add_parser(host, parents=[common], help=text)
        p.add_argument("--name", default="soul", help="the server's name in the host (default soul)")
        if host == "claude-code":
            p.add_argument("--scope", choices=["local", "project", "user"], default="user",
                           help="user: every project (default); local: this project, for you; "
                           "project: .mcp.json, shared")  # fmt: skip
        p.set_defaults(func=config)


def config(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db)
    found = host_config(args.host, settings.db_path, name=args.name, scope=getattr(args, "scope", "user"))
    if args.json:
        emit(args, found, "")
    else:
        print(json.dumps(found["snippet"], indent=2) if found["snippet"] else found["shell"])
        print(f"# {found['where']}", file=sys.stderr)
    return EXIT_OK


def launcher() -> list[str]:
    """The absolute command that runs this installation: its script, else `python -m soul_mcp`."""
    launched = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    # Not resolved: a venv's python is a symlink, and following it would leave the venv behind.
    candidates = [
        launched.absolute() if launched and launched.name in {"soul-mcp", SCRIPT} else None,
        Path(sys.executable).absolute().parent / SCRIPT,
    ]
    for script in candidates:
        if script is not None and script.is_file():
            return [str(script)]
    return [str(Path(sys.executable).absolute()), "-m", "soul_mcp"]


def server_argv(db_path: Path) -> list[str]:
    """The absolute command line that starts this installation's server on `db_path`."""
    return [*launcher(), "serve", "--db", str(Path(db_path).expanduser().resolve())]


def _where(host: str) -> str:
    if host == "claude-desktop":
        if sys.platform == "darwin":
            return "~/Library/Application Support/Claude/claude_desktop_config.json"
        if os.name == "nt":
            return r"%APPDATA%\Claude\claude_desktop_config.json"
        return (
            "claude_desktop_config.json (macOS: ~/Library/Application Support/Claude/, "
            r"Windows: %APPDATA%\Claude\)"
        )
    return {
        "cursor": "~/.cursor/mcp.json (all projects) or .cursor/mcp.json (one project)",
        "vscode": ".vscode/mcp.json in a workspace, or the profile's mcp.json (MCP: Open User Configuration)",
        "claude-code": "run it in a terminal; `claude mcp list` shows the result",
    }[host]


def shell_join(argv: list[str]) -> str:
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def host_config(host: str, db_path: Path, name: str = "soul", scope: str = "user") -> dict[str, Any]:
    """What to give `host`: `snippet` (JSON to merge into its config file) or `shell` (a command)."""
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}; known: {', '.join(HOSTS)}")
    command, *args = server_argv(db_path)
    snippet: dict[str, Any] | None = None
    shell: str | None = None
    if host in {"claude-desktop", "cursor"}:
        snippet = {"mcpServers": {name: {"command": command, "args": args}}}
    elif host == "vscode":
        snippet = {"servers": {name: {"type": "stdio", "command": command, "args": args}}}
    else:
        shell = shell_join(["claude", "mcp", "add", "--scope", scope, name, "--", command, *args])
    return {
        "host": host,
        "name": name,
        "where": _where(host),
        "command": command,
        "args": args,
        "snippet": snippet,
        "shell": shell,
    }
