"""`soul-mcp migrate --from SRC --to DST`: a whole self copied between two databases, SQLite or
PostgreSQL (soul_mcp/transfer.py does the work)."""

from __future__ import annotations

import argparse

from soul_mcp.cli.command import Subcommands
from soul_mcp.cli.output import EXIT_DATABASE, EXIT_OK, emit, error, logged_progress, refuse
from soul_mcp.config import Settings


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    # Not the common options: --db would name a third database.
    p = sub.add_parser(
        "migrate",
        help="copy a whole self from one database to another (SQLite or PostgreSQL)",
        description="Copy a whole self from SRC to DST, each a SQLite file or a postgresql:// URL: every "
        "document version, every memory whatever its status (ids, times, authors, sessions kept), "
        "sessions, tokens (their hashes) and embeddings. SRC is only read. DST is written in one "
        "transaction and must be empty (a missing SQLite file is created); the counts of both are "
        "compared before it commits, so a failure leaves DST as it was. Stop the servers that use "
        "DST first.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="SRC", help="the database to copy")
    p.add_argument("--to", dest="target", required=True, metavar="DST", help="the database to fill")
    p.add_argument(
        "--replace",
        action="store_true",
        help="DST may hold a self: delete it, in the same transaction as the copy",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=migrate)


def _location(value: str) -> str:
    """A SQLite path as an absolute path, a URL as it was given (its password stays in it: it is
    only passed to the driver, never printed)."""
    settings = Settings.load(value)
    return settings.db_url or str(settings.db_path.expanduser().absolute())


def migrate(args: argparse.Namespace) -> int:
    import anyio

    from soul_mcp.errors import SoulError, StorageError
    from soul_mcp.transfer import NAMES, migrate

    progress = None if args.json else logged_progress("Copying")
    source, target = _location(args.source), _location(args.target)
    try:
        done = anyio.run(lambda: migrate(source, target, replace=args.replace, progress=progress))
    except StorageError as exc:
        error(str(exc))
        return EXIT_DATABASE
    except SoulError as exc:
        return refuse(str(exc))
    width = max(len(NAMES[kind]) for kind in (*done.copied, *done.derived))
    lines = [f"Copied {done.source} to {done.target} in {done.seconds:.1f} s:"]
    if done.replaced:
        held = ", ".join(f"{n} {NAMES[kind]}" for kind, n in done.replaced.items())
        lines.append(f"  (replacing what it held: {held})")
    lines += [f"  {NAMES[kind]:<{width}}  {n}" for kind, n in done.copied.items()]
    lines.append("Made by the target:")
    lines += [f"  {NAMES[kind]:<{width}}  {n}" for kind, n in done.derived.items()]
    lines.append("Counts checked: the target holds what the source holds.")
    emit(args, done.as_json(), "\n".join(lines))
    return EXIT_OK
