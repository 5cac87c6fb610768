"""Looking after the database: init, stats, backup, reindex, and the version.

Each `add_*` sits beside its command; soul_mcp/cli/__init__.py calls them in the order `--help`
lists the commands (`doctor` has a module of its own: soul_mcp/cli/doctor.py).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from soul_mcp import __version__
from soul_mcp.cli import terminal
from soul_mcp.cli.command import Subcommands, db_source, run_on_self
from soul_mcp.cli.output import EXIT_OK, clean_name, emit, logged_progress, style
from soul_mcp.config import Settings
from soul_mcp.wording import count, human_bytes


def add_init(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "init",
        parents=[common],
        help="create the database and print where it is and what to do next",
        description="Create the database (an existing one is left as it is), then print its path and "
        "the next steps: configure a client, import a workspace, check with doctor.",
    )
    p.set_defaults(func=init)


def init(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db)
    # A PostgreSQL database is named by its URL without the password (libpq finds that itself).
    path: Path | str = settings.shown_db if settings.db_url else settings.db_path.expanduser().resolve()
    existed = Path(path).exists() if isinstance(path, Path) else None

    async def work(s: Any) -> None:
        stats = await s.stats()
        db = f" --db {shlex.quote(str(path))}" if args.db else ""
        # On PostgreSQL, whether it was new shows in what it holds.
        existed_now = bool(stats.memories_active or stats.document_versions) if existed is None else existed
        if existed_now:
            head = (
                f"The database at {path} already exists "
                f"({count(stats.memories_active, 'active memory', 'active memories')}, "
                f"{count(sum(stats.document_versions.values()), 'document version')}); nothing changed."
            )
        else:
            head = f"Created the database at {path}."
        steps = [
            (f"soul-mcp config claude-desktop{db}", "a ready client configuration (also: claude-code, cursor, vscode)"),
            (f"soul-mcp import WORKSPACE{db}", "bring in SOUL.md, MEMORY.md and memory/*.md"),
            (f"soul-mcp doctor{db}", "check the database and what a client will see"),
        ]  # fmt: skip
        pad = max(len(command) for command, _ in steps) + 3
        text = "\n".join([head, "Next steps:", *(f"  {c:<{pad}}{what}" for c, what in steps)])
        emit(args, {"db_path": str(path), "created": not existed_now, "source": db_source(args)}, text)

    return run_on_self(args, work)


def add_stats(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "stats", parents=[common], help="counts, file sizes and the last activity of each client"
    )
    p.set_defaults(func=stats)


def stats(args: argparse.Namespace) -> int:
    from soul_mcp.doctor import database_file_sizes

    settings = Settings.load(args.db)

    async def work(s: Any) -> None:
        stats = await s.stats()
        clients = await s.client_activity()
        # A PostgreSQL database has no files here: its size is the server's to tell (\l+ in psql).
        files = {} if settings.db_url else database_file_sizes(settings.db_path)
        if args.json:
            data = {**stats.model_dump(mode="json"), "db_path": settings.shown_db, "files": files,
                    "clients": [c.model_dump(mode="json") for c in clients]}  # fmt: skip
            emit(args, data, "")
            return
        paint = style()
        docs = ", ".join(
            f"{doc.replace('_', '-')} {n} version{'s' if n != 1 else ''}"
            for doc, n in sorted(stats.document_versions.items())
        )
        lines = [
            f"Memories: {stats.memories_active} active, {stats.memories_forgotten} forgotten, "
            f"{stats.memories_superseded} superseded",
            f"Documents: {docs or 'none written yet'}",
            f"Sessions: {stats.sessions}",
            f"Database: {settings.shown_db} ({human_bytes(files['database'])}, "
            f"WAL {human_bytes(files['wal'])})"
            if files
            else f"Database: {settings.shown_db} (PostgreSQL)",
        ]
        if clients:
            rows = [
                [
                    clean_name(c.client),
                    str(c.sessions),
                    str(c.memories),
                    str(c.versions),
                    c.last_active_at or "-",
                ]
                for c in clients
            ]
            headers = ["CLIENT", "SESSIONS", "MEMORIES", "VERSIONS", "LAST ACTIVE"]
            lines += ["", "Activity per client, most recent first:",
                      terminal.table(headers, rows, paint, right=[1, 2, 3])]  # fmt: skip
        emit(args, None, "\n".join(lines))

    return run_on_self(args, work, must_exist=True)


def add_backup(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backup", parents=[common], help="write a consistent copy of the database (safe while serving)"
    )
    p.add_argument("path", help="the new file (an existing one only with --force)")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.set_defaults(func=backup)


def backup(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        done = await s.backup(args.path, overwrite=args.force)
        stats = done.stats
        lines = [
            f"Backed up to {done.path}: {done.bytes:,} bytes, integrity {done.integrity}",
            f"Memories: {stats.memories_active} active, {stats.memories_forgotten} forgotten, "
            f"{stats.memories_superseded} superseded",
            *(f"{doc}: {count(n, 'version')}" for doc, n in sorted(stats.document_versions.items())),
            f"Sessions: {stats.sessions}",
        ]
        emit(args, done, "\n".join(lines))

    return run_on_self(args, work, must_exist=True)


def add_reindex(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "reindex",
        parents=[common],
        help="rebuild the full-text index and compute missing or stale embeddings",
        description="Rebuild the full-text index from the active memories, then, when semantic search "
        "is on, embed every active memory that has no embedding or was embedded from a text that has "
        "changed (a progress bar on stderr). Safe while servers run; a server also embeds new and "
        "older memories in the background by itself.",
    )
    p.set_defaults(func=reindex)


def reindex(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        done = await s.reindex(progress=None if args.json else logged_progress("Embedding memories"))
        lines = [f"Rebuilt the full-text index: {done.text_indexed} active memories."]
        if done.embedding_model is None:
            lines.append(
                "Semantic search is off (pip install 'soul-mcp[semantic]', or set "
                "SOUL_MCP_EMBEDDINGS_URL and SOUL_MCP_EMBEDDINGS_MODEL): no embeddings to compute."
            )
        else:
            lines.append(
                f"Embeddings by {done.embedding_model}: computed {done.embedded}; "
                f"{done.with_embeddings} of {done.active} active memories have one."
            )
        emit(args, done, "\n".join(lines))

    return run_on_self(args, work, must_exist=True)


def add_version(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    # Without the common options: the version does not depend on any database.
    p = sub.add_parser("version", help="print the version")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=version)


def version(args: argparse.Namespace) -> int:
    emit(args, {"version": __version__}, f"soul-mcp {__version__}")
    return EXIT_OK
