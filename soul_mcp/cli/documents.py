"""The documents at the command line: `soul-mcp DOCUMENT show|history|diff|edit|restore` for each
document the self keeps (soul, identity, user, intent, north-star)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from soul_mcp.cli.command import Subcommands, actor, run_on_self
from soul_mcp.cli.output import EXIT_OK, clean_name, emit, refuse


def doc_commands() -> dict[str, str]:
    """CLI name -> document, for every document the self keeps ('north-star' -> 'north_star')."""
    from soul_mcp.names import DOCUMENT_COMMANDS

    return dict(DOCUMENT_COMMANDS)


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    for command, document in doc_commands().items():
        title = command.replace("-", " ")
        doc = sub.add_parser(command, help=f"the {title}: show, edit, history, diff, restore")
        doc_sub = doc.add_subparsers(dest="action", metavar="ACTION", required=True)

        p = doc_sub.add_parser("show", parents=[common], help=f"print the current (or a given) {command}")
        p.add_argument("--version", type=int)
        p.add_argument("--raw", action="store_true", help="only the content")
        p.set_defaults(func=show, document=document)

        p = doc_sub.add_parser("history", parents=[common], help="list versions, newest first")
        p.add_argument("--limit", type=int)
        p.add_argument("--before", type=int, help="only versions older than this")
        p.set_defaults(func=history, document=document)

        p = doc_sub.add_parser("diff", parents=[common], help="unified diff between versions A and B")
        p.add_argument("a", type=int)
        p.add_argument("b", type=int)
        p.set_defaults(func=diff, document=document)

        p = doc_sub.add_parser(
            "edit",
            parents=[common],
            help=f"edit the {title} in your editor; a change is stored as a new version",
            description=f"Open $VISUAL or $EDITOR (else vi, or notepad on Windows) on the current {title}. "
            "Save and quit: a changed text is stored as a new version by cli:<your user name>; an "
            "unchanged one stores nothing. The soul and the north star need a reason: --reason, or "
            "you are asked at the terminal.",
        )
        p.add_argument("--reason", help="why this change (asked at a terminal when needed)")
        p.set_defaults(func=edit, document=document)

        p = doc_sub.add_parser(
            "restore",
            parents=[common],
            help="make an old version current again, stored as a new version",
            description=f"Store version VERSION of the {title} again as its newest version. History is "
            "never rewritten, so a restore can itself be undone.",
        )
        p.add_argument("version", type=int, help="the version to bring back (see history)")
        p.add_argument("--reason", required=True, help="why, stored with the new version")
        p.set_defaults(func=restore, document=document)


def show(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        doc = await s.read(args.document, args.version)
        emit(args, doc, doc.content if args.raw else render.document(doc))

    return run_on_self(args, work, must_exist=True)


def history(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.history(args.document, limit=args.limit, before_version=args.before)
        emit(args, result, render.history(result))

    return run_on_self(args, work, must_exist=True)


def diff(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.diff(args.document, args.a, args.b)
        emit(args, result, render.diff(result).rstrip("\n"))

    return run_on_self(args, work, must_exist=True)


def edit(args: argparse.Namespace) -> int:
    """Read the document, open the editor, store a new version only if the text changed."""
    from soul_mcp.cli.editor import EditorError, edit_text
    from soul_mcp.core import render
    from soul_mcp.errors import InvalidInput
    from soul_mcp.names import REASON_REQUIRED

    name = args.command
    needs_reason = args.document in REASON_REQUIRED
    if needs_reason and args.reason is None and not sys.stdin.isatty():
        return refuse(f"a change to the {name} needs a reason: pass --reason when not at a terminal")
    before: dict[str, Any] = {}

    async def read(s: Any) -> None:
        before["doc"] = await s.read(args.document)

    if code := run_on_self(args, read):
        return code
    doc = before["doc"]
    try:
        edited, path = edit_text(doc.content, args.document)
    except EditorError as exc:
        return refuse(str(exc))
    if edited.replace("\r\n", "\n") == doc.content:
        path.unlink(missing_ok=True)
        unchanged = None if doc.version is None else doc.model_dump(exclude={"adopted", "hint"})
        emit(args, {"version": unchanged, "changed": False}, f"No changes to the {name}; nothing saved.")
        return EXIT_OK
    reason = args.reason
    if needs_reason and reason is None:
        try:
            reason = input(f"Why this change to the {name}? ")
        except EOFError:
            reason = ""

    async def write(s: Any) -> None:
        latest = await s.read(args.document)
        if latest.version != doc.version:
            raise InvalidInput(
                f"the {name} changed while you were editing (now version {latest.version} by "
                f"{clean_name(latest.author)}); edit again to start from it"
            )
        result = await s.write(args.document, edited, actor(), reason)
        emit(args, result, render.write(result))

    code = run_on_self(args, write)
    if code == EXIT_OK:
        path.unlink(missing_ok=True)
    else:
        print(f"Your text is kept in {path}", file=sys.stderr)
    return code


def restore(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.restore(args.document, args.version, args.reason, actor())
        emit(args, result, render.write(result))

    return run_on_self(args, work, must_exist=True)
