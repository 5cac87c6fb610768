"""The soul-mcp command line: a thin layer over AgentSelf, the same core the MCP server calls.

Each command opens the database, makes one call, prints the result (text, or JSON with --json) and
closes. At a terminal the text has aligned tables and colour (none when NO_COLOR is set or stdout is
not a terminal); --json prints the same data with stable keys for scripts. Errors go to stderr as
`error: ...`.

One module per group of commands, each command's options beside its handler:

    admin.py      init, stats, backup, reindex, version
    documents.py  soul, identity, user, intent, north-star: show, history, diff, edit, restore
    doctor.py     doctor (its checks are soul_mcp/doctor.py)
    hosts.py      config HOST: a ready configuration for Claude Desktop, Claude Code, Cursor, VS Code
    hook.py       hook HOST: the wake-up in every new session, through the host's SessionStart hook
    memories.py   wake, remember, recall, forget, restore-memory, purge, memories list|show
    migrate.py    migrate: a whole self copied between databases (SQLite, PostgreSQL)
    serve.py      serve, on stdio or with --http
    tokens.py     token create|list|revoke
    owner.py      owner set: the passphrase that approves OAuth clients
    ui.py         ui: the web page on loopback, behind a one-time link (soul_mcp/web/)
    workspace.py  import, export
and what they share:
    command.py    the database a command names, who it writes as, the self opened around its work
    output.py     text or JSON on stdout, errors on stderr, progress bars, exit codes
    terminal.py   colour, aligned tables, text that fits the terminal
    editor.py     $VISUAL / $EDITOR on a temporary file

Exit codes scripts can rely on:
    0  success; also when the reader of stdout went away early (`soul-mcp recall x | head -1`)
    1  refused or not found: the message on stderr says why (bad value, unknown id, no reason, ...);
       also `serve --http` that cannot listen (the port is taken, the address is not this machine's)
    2  usage error: unknown command or option, missing argument, an option's value out of range
       (`--port 99999`), an invalid setting in the environment (`SOUL_MCP_LOG_LEVEL=verbose`)
    3  database problem: it does not exist (for a command that reads or changes what is stored; only
       init, remember, import, edit, token create and serve create one), its folder cannot be
       created, it cannot be opened or is damaged, or `doctor` found a problem
  130  interrupted (Ctrl-C)

Nothing heavy is imported here or in the command modules: handlers import the core, the SDK and
pydantic when they run, so that `serve` starts fast (see server/warmstart.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from soul_mcp import __version__
from soul_mcp.cli import (
    admin,
    doctor,
    documents,
    hook,
    hosts,
    memories,
    migrate,
    owner,
    serve,
    tokens,
    ui,
    workspace,
)
from soul_mcp.cli.documents import doc_commands
from soul_mcp.cli.output import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error
from soul_mcp.config import DB_ENV, SettingsError, log_level_from_env

__all__ = ["build_parser", "doc_commands", "main"]

# In the order `soul-mcp --help` lists them: starting out, the self's memories and documents,
# then looking after the database, its clients and its files.
REGISTRARS = (
    admin.add_init,
    serve.register,
    ui.register,
    memories.register,
    documents.register,
    admin.add_stats,
    doctor.register,
    hosts.register,
    hook.register,
    admin.add_backup,
    migrate.register,
    tokens.register,
    owner.register,
    admin.add_reindex,
    workspace.register,
    admin.add_version,
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help=f"SQLite file (default: ${DB_ENV}, else the platform's user data folder)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="soul-mcp",
        description="One persistent self (soul, memories, intent, north star) for every MCP client.",
        epilog="Every command takes --db PATH and --json; `soul-mcp COMMAND --help` explains it.\n"
        "Exit codes: 0 ok, 1 refused or not found, 2 usage error, 3 database problem.\n"
        "Only init, remember, import, edit, token create and serve create a missing database.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"soul-mcp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log soul-mcp's debug detail to stderr (no memory contents)")  # fmt: skip
    parser.add_argument("--log-sql", action="store_true",
                        help="also log every SQL statement with its values, memories included")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(sub, common)
    _explain(parser)
    return parser


def _explain(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without its own description its one-line help, so `--help` says
    what it does and not only how to call it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                text = helps.get(name)
                if sub.description is None and text:
                    sub.description = text[0].upper() + text[1:] + "."
                _explain(sub)


def _configure_logging(args: argparse.Namespace) -> None:
    """Logs go to stderr (stdout belongs to the protocol when serving). -v or $SOUL_MCP_LOG_LEVEL
    set soul-mcp's own level; other libraries stay at INFO or above, because their debug lines
    can carry what is stored (aiosqlite logs each statement with its values) unless --log-sql."""
    default = "DEBUG" if args.verbose else "INFO" if args.command == "serve" else "WARNING"
    level = logging.getLevelName(log_level_from_env() or default)
    logging.basicConfig(
        level=max(level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level < logging.INFO:
        logging.getLogger("soul_mcp").setLevel(level)
    if args.log_sql:
        logging.getLogger("aiosqlite").setLevel(logging.DEBUG)


def _quiet_stdout() -> None:
    """The reader of our output went away (`soul-mcp recall x | head -1`): send what is left to
    devnull, so the flush at exit does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _configure_logging(args)
        code: int = args.func(args)
        sys.stdout.flush()
    except SettingsError as exc:
        error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        # Not a failure: the reader had what it wanted, as with `head`.
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
