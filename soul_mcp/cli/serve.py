"""`soul-mcp serve`: the MCP server on stdio (started by a client) or over Streamable HTTP.

Imports stay inside the handlers: the warm start answers a client before the SDK has loaded, so
`serve` must not pull in more than it needs (see server/warmstart.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

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
    p.add_argument("--oauth", action="store_true",
                   help="with --http: also be an OAuth authorization server, so that clients that "
                   "speak OAuth (custom connectors) connect by URL; the owner approves each one with "
                   "the passphrase of `soul-mcp owner set`. Static tokens keep working")  # fmt: skip
    p.add_argument("--public-url", metavar="URL",
                   help="with --oauth: the address clients reach this server at, e.g. "
                   "https://soul.example.com (default: this server's own loopback address)")  # fmt: skip
    p.add_argument("--tls-cert", metavar="PEM", help="with --http: serve https with this certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="with --http: the private key of --tls-cert")
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
                 ("--allowed-host", args.allowed_host), ("--insecure-no-auth", args.insecure_no_auth),
                 ("--oauth", args.oauth), ("--public-url", args.public_url), ("--tls-cert", args.tls_cert),
                 ("--tls-key", args.tls_key)) if value]  # fmt: skip
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

    host = args.host or "127.0.0.1"
    port = args.port if args.port is not None else 8765
    try:
        tls = tls_files(args)
        oauth = oauth_options(args, host, port, tls)
        serve_http(
            settings,
            host=host,
            port=port,
            allowed_hosts=args.allowed_host or [],
            insecure_no_auth=args.insecure_no_auth,
            oauth=oauth,
            tls=tls,
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


def tls_files(args: argparse.Namespace) -> Any:
    from soul_mcp.server.http import ConfigError, Tls

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: the certificate and its private key")
    return Tls(Path(args.tls_cert).expanduser(), Path(args.tls_key).expanduser()) if args.tls_cert else None


def oauth_options(args: argparse.Namespace, host: str, port: int, tls: Any) -> Any:
    """--oauth's settings; the access tokens' lifetime from $SOUL_MCP_OAUTH_ACCESS_SECONDS (tests
    shorten it)."""
    from soul_mcp.server.http import ConfigError, public_url
    from soul_mcp.server.oauth import ACCESS_SECONDS_ENV, OAuthOptions

    if not args.oauth:
        if args.public_url:
            raise ConfigError("--public-url only applies with --oauth")
        return None
    text = os.environ.get(ACCESS_SECONDS_ENV, "3600")
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 86400):
        raise ConfigError(
            f"${ACCESS_SECONDS_ENV} is the access tokens' lifetime, 1 to 86400 seconds, got {text!r}"
        )
    return OAuthOptions(public_url(args.public_url, host, port, tls), access_seconds=int(text))
