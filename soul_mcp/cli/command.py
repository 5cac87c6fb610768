"""What every command shares: which database it names, who the CLI writes as, and the self opened
around one piece of work with its errors turned into exit codes."""

from __future__ import annotations

import argparse
import getpass
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from soul_mcp.cli.output import EXIT_DATABASE, EXIT_OK, error, refuse
from soul_mcp.config import DB_ENV, Settings
from soul_mcp.errors import SoulError, StorageError
from soul_mcp.files import make_private_dirs

# What `add_subparsers()` returns; each command module adds its commands to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def db_source(args: argparse.Namespace) -> str:
    """Where the database path came from: "--db", "$SOUL_MCP_DB" or "default" (stable, for --json)."""
    if args.db:
        return "--db"
    return f"${DB_ENV}" if os.environ.get(DB_ENV) else "default"


def actor() -> Any:
    """Who the CLI writes as: `cli:<user name>`."""
    from soul_mcp.models import Actor

    try:
        user = getpass.getuser()
    except Exception:  # no user name on some containers
        user = "user"
    return Actor(name=f"cli:{user}")


def database_problem(settings: Settings, must_exist: bool) -> str | None:
    """Why the database cannot be used, found before opening it: it is missing (for a command that
    only reads or changes what is stored), or its folder cannot be created. None: go ahead."""
    if settings.db_url:  # a PostgreSQL database: no file or folder here; opening it tells
        return None
    path = settings.db_path.expanduser().absolute()
    check = f"check --db / ${DB_ENV}"
    if must_exist and not path.exists():
        return f"no database at {path}; create it with `soul-mcp init` (or {check})"
    try:
        make_private_dirs(path.parent)
    except OSError as exc:
        why = exc.strerror or str(exc)
        blocking = next(parent for parent in path.parents if parent.exists())
        if isinstance(exc, (FileExistsError, NotADirectoryError)) and not blocking.is_dir():
            why = f"{blocking} is a file, not a folder"
        return f"cannot create the database folder {path.parent}: {why} ({check})"
    return None


def run_on_self(
    args: argparse.Namespace, work: Callable[[Any], Awaitable[None]], must_exist: bool = False
) -> int:
    """Open the self, run one piece of work, close. A database problem exits 3, any other
    SoulError (refused, not found) exits 1. With `must_exist` (commands that read or change what is
    stored) a missing database is refused rather than created empty."""
    import anyio

    from soul_mcp.core import AgentSelf

    settings = Settings.load(args.db)
    if problem := database_problem(settings, must_exist):
        error(problem)
        return EXIT_DATABASE

    async def main() -> None:
        agent_self = await AgentSelf.open(settings)
        try:
            await work(agent_self)
        finally:
            await agent_self.close()

    try:
        anyio.run(main)
    except (StorageError, sqlite3.DatabaseError) as exc:
        error(str(exc))
        return EXIT_DATABASE
    except SoulError as exc:
        return refuse(str(exc))
    return EXIT_OK
