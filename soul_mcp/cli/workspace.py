"""`soul-mcp import` and `soul-mcp export`: the self to and from a workspace folder of Markdown
files (soul_mcp/workspace/ does the work)."""

from __future__ import annotations

import argparse
from typing import Any

from soul_mcp.cli.command import Subcommands, actor, run_on_self
from soul_mcp.cli.output import emit, terminal_progress

LAYOUT = (
    "Layout: SOUL.md, IDENTITY.md, USER.md, intent.md and north-star.md are the documents; "
    "MEMORY.md (long-term) and memory/YYYY-MM-DD.md (daily notes) hold memories, one per list item "
    "or paragraph."
)


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    add_import(sub, common)
    add_export(sub, common)


def add_import(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="read a workspace folder (SOUL.md, MEMORY.md, memory/YYYY-MM-DD.md, ...) into the self",
        description="Read a workspace folder (the OpenClaw layout) into the self. " + LAYOUT + " A document "
        "gets a new version only when its file differs; memories already stored, or forgotten before, "
        "are skipped, so importing the same folder again adds nothing. Everything is checked before "
        "anything is written. Only regular files are read: symbolic links, FIFOs and devices are "
        "listed as not imported.",
    )
    p.add_argument("directory", metavar="DIR", help="the workspace folder")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="read symbolic links that lead to a file inside the workspace (links out are never read)",
    )
    p.set_defaults(func=import_)


def import_(args: argparse.Namespace) -> int:
    from soul_mcp.workspace import import_workspace, render_import

    async def work(s: Any) -> None:
        summary = await import_workspace(
            s,
            args.directory,
            actor(),
            dry_run=args.dry_run,
            progress=terminal_progress("Importing memories"),
            follow_links=args.follow_links,
        )
        emit(args, summary, render_import(summary))

    return run_on_self(args, work)


def add_export(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write the self as a workspace folder that import reads back losslessly",
        description="Write the self as a workspace folder. " + LAYOUT + " Each memory keeps its date, "
        "kind, importance, tags and author in a comment under it, so export, import into a fresh "
        "database and export again gives identical files. Only active memories and current "
        "document versions are written; forgotten memories and history stay in the database. "
        "New files are private (0600, folders 0700); export never writes through a symbolic link.",
    )
    p.add_argument("directory", metavar="DIR", help="a new or empty folder (created when missing)")
    p.add_argument("--dry-run", action="store_true", help="show which files would change; write nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="export into a folder that is not empty: replace the files export writes, leave the rest",
    )
    p.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    from soul_mcp.workspace import export_workspace, render_export

    async def work(s: Any) -> None:
        summary = await export_workspace(s, args.directory, dry_run=args.dry_run, force=args.force)
        emit(args, summary, render_export(summary))

    return run_on_self(args, work, must_exist=True)
