"""`soul-mcp serve`: the MCP server on stdio (started by a client) or over Streamable HTTP.

Imports stay inside the handlers: the warm start answers a client before the SDK has loaded, so
`serve` must not pull in more than it needs (see server/warmstart.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from soul_mcp.cli.command import Subcommands, database_problem, db_source
from soul_mcp.cli.output import EXIT_DATABASE, EXIT_OK, EXIT_USAGE, error, refuse
from soul_mcp.config import Settings
from soul_mcp.errors import StorageError

log = logging.getLogger("soul_mcp")


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the MCP server: on stdio (started by an MCP client), or over HTTP with --http",
        description="Run the MCP server. Without --http it speaks MCP on stdin/stdout and is started by "
        "an MCP client. With --http it serves Streamable HTTP at http://HOST:PORT/mcp for many clients "
        "at once; each request needs a bearer token (soul-mcp token create), and /healthz answers "
        "without one. SIGTERM or Ctrl-C stops it after the calls in flight.",
    )
    p.add_argument("--http", action="store_true", help="serve Streamable HTTP instead of stdio")
    p.add_argument("--host", help="address to bind with --http (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port, help="port with --http, 1 to 65535 (default 8765)")
    p.add_argument("--allowed-host", action="append", metavar="HOST[:PORT]",
                   help="a host name clients use to reach the server (repeatable); needed to bind "
                   "an address other than loopback; other Host headers are refused")  # fmt: skip
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="with --http on loopback only: serve without tokens")  # fmt: skip
    p.add_argument("--soul-policy", choices=["open", "confirm", "locked"],
                   help="identity changes over MCP: open (default), confirm (ask through the client's "
                   "elicitation form; the client answers it, which proves no person did) or locked "
                   "(only the CLI: the one way to be sure a person made the change); also "
                   "$SOUL_MCP_SOUL_POLICY")  # fmt: skip
    p.set_defaults(func=serve)


def port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, got {text!r}")
    return number


def serve(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db, soul_policy=args.soul_policy)
    http_only = [flag for flag, value in (("--host", args.host), ("--port", args.port),
                 ("--allowed-host", args.allowed_host), ("--insecure-no-auth", args.insecure_no_auth)) if value]  # fmt: skip
    if http_only and not args.http:
        error(f"{', '.join(http_only)} only apply with --http")
        return EXIT_USAGE
    if args.http:
        # Over HTTP an operator is watching the start: a database that cannot be used stops it
        # there. Over stdio the server stays up and every call answers why (server/state.py).
        if problem := database_problem(settings, must_exist=False):
            error(problem)
            return EXIT_DATABASE
        return serve_over_http(args, settings)
    if sys.stdin.isatty():
        print(hint(args, settings), file=sys.stderr)
    from soul_mcp.server.warmstart import serve_stdio

    log.info("serving over stdio, database %s", settings.shown_db)
    # Answers initialize and tools/list from a cache while the SDK loads: see server/warmstart.py.
    return serve_stdio(settings)


def hint(args: argparse.Namespace, settings: Settings) -> str:
    """What `serve` says at a terminal: how a client starts this very installation (by absolute
    path, as `soul-mcp config` prints it: a client has neither your PATH nor your venv)."""
    from soul_mcp.cli.hosts import launcher, shell_join

    command, *rest = launcher()
    # A client does not see $SOUL_MCP_DB either: name any database that is not the default.
    # A URL is shown without its password: libpq also reads it from PGPASSWORD or ~/.pgpass.
    shown = settings.shown_db if settings.db_url else str(settings.db_path.expanduser().absolute())
    db = ["--db", shown] if db_source(args) != "default" else []
    serve_args = [*rest, "serve", *db]
    config = {"mcpServers": {"soul": {"command": command, "args": serve_args}}}
    return (
        "soul-mcp speaks MCP over stdin/stdout; it is meant to be started by an MCP client.\n"
        f"Database: {shown}\n"
        "Add it to a client, e.g. Claude Code:  "
        f"{shell_join(['claude', 'mcp', 'add', 'soul', '--', command, *serve_args])}\n"
        "or Claude Desktop's claude_desktop_config.json:\n"
        f"  {json.dumps(config)}\n"
        "(`soul-mcp config HOST` prints these for claude-desktop, claude-code, cursor and vscode.)\n"
        "Waiting for a client on stdin (Ctrl-C to stop)."
    )


def serve_over_http(args: argparse.Namespace, settings: Settings) -> int:
    from soul_mcp.server.http import BindError, ConfigError, serve_http

    try:
        serve_http(
            settings,
            host=args.host or "127.0.0.1",
            port=args.port if args.port is not None else 8765,
            allowed_hosts=args.allowed_host or [],
            insecure_no_auth=args.insecure_no_auth,
        )
    except ConfigError as exc:
        error(str(exc))
        return EXIT_USAGE
    except BindError as exc:
        return refuse(str(exc))
    except StorageError as exc:
        error(str(exc))
        return EXIT_DATABASE
    return EXIT_OK
