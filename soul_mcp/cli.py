"""The soul-mcp command line: a thin layer over AgentSelf, the same core the MCP server calls.

Each command opens the database, makes one call, prints the result (text, or JSON with --json) and
closes. Exit codes: 0 success, 1 the request was refused (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from soul_mcp import __version__
from soul_mcp.config import DB_ENV, Settings
from soul_mcp.errors import SoulError

log = logging.getLogger("soul_mcp")

DOC_COMMANDS = {"soul": "soul", "intent": "intent", "north-star": "north_star"}


def _actor() -> Any:
    from soul_mcp.models import Actor

    try:
        user = getpass.getuser()
    except Exception:  # no user name on some containers
        user = "user"
    return Actor(name=f"cli:{user}")


def _print(args: argparse.Namespace, model: Any, text: str) -> None:
    if args.json:
        data = model.model_dump(mode="json") if hasattr(model, "model_dump") else model
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(text)


def _run(args: argparse.Namespace, work: Callable[[Any], Awaitable[None]]) -> int:
    """Open the self, run one piece of work, close; SoulError becomes exit code 1."""
    import anyio

    from soul_mcp.core import AgentSelf

    async def main() -> None:
        agent_self = await AgentSelf.open(Settings.load(args.db))
        try:
            await work(agent_self)
        finally:
            await agent_self.close()

    try:
        anyio.run(main)
    except SoulError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# Commands ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.load(args.db)
    if sys.stdin.isatty():
        print(
            "soul-mcp speaks MCP over stdin/stdout; it is meant to be started by an MCP client.\n"
            f"Database: {settings.db_path}\n"
            "Add it to a client, e.g. Claude Code:  claude mcp add soul -- soul-mcp serve\n"
            "or Claude Desktop's claude_desktop_config.json:\n"
            '  {"mcpServers": {"soul": {"command": "soul-mcp", "args": ["serve"]}}}\n'
            "Waiting for a client on stdin (Ctrl-C to stop).",
            file=sys.stderr,
        )
    from soul_mcp.server import build_server

    log.info("serving over stdio, database %s", settings.db_path)
    build_server(settings).run()
    return 0


def cmd_wake(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        woken = await s.wake_up(_actor(), focus=args.focus, budget_chars=args.budget)
        _print(args, woken, woken.text)

    return _run(args, work)


def cmd_remember(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.remember(
            args.text, _actor(), kind=args.kind, tags=args.tag, importance=args.importance,
            occurred_at=args.occurred_at,
        )  # fmt: skip
        _print(args, result, render.remember(result))

    return _run(args, work)


def cmd_recall(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.recall(
            args.query, limit=args.limit, tags=args.tag, kind=args.kind, since=args.since,
            until=args.until, cursor=args.cursor,
        )  # fmt: skip
        _print(args, result, render.recall(result))

    return _run(args, work)


def cmd_forget(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.forget(args.memory_id, args.reason)
        _print(args, memory, "Forgotten (restore-memory brings it back):\n" + render.memory(memory))

    return _run(args, work)


def cmd_restore_memory(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.restore_memory(args.memory_id)
        _print(args, memory, "Restored:\n" + render.memory(memory))

    return _run(args, work)


def cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "error: purge deletes for good; pass --yes to confirm when not at a terminal", file=sys.stderr
            )
            return 1
        answer = input(f"Delete forgotten memory {args.memory_id} for good? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("Nothing deleted.")
            return 1

    async def work(s: Any) -> None:
        await s.purge(args.memory_id)
        _print(args, {"purged": args.memory_id}, f"Purged {args.memory_id}.")

    return _run(args, work)


def cmd_doc_show(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        doc = await s.read(args.document, args.version)
        _print(args, doc, doc.content if args.raw else render.document(doc))

    return _run(args, work)


def cmd_doc_history(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.history(args.document, limit=args.limit, before_version=args.before)
        _print(args, result, render.history(result))

    return _run(args, work)


def cmd_doc_diff(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.diff(args.document, args.a, args.b)
        _print(args, result, render.diff(result))

    return _run(args, work)


def cmd_stats(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        stats = await s.stats()
        lines = [
            f"Memories: {stats.memories_active} active, {stats.memories_forgotten} forgotten, "
            f"{stats.memories_superseded} superseded",
            *(f"{doc}: {n} versions" for doc, n in sorted(stats.document_versions.items())),
            f"Sessions: {stats.sessions}",
        ]
        _print(args, stats, "\n".join(lines))

    return _run(args, work)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"soul-mcp {__version__}")
    return 0


# Parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help=f"SQLite file (default: ${DB_ENV}, else the platform's user data folder)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="soul-mcp",
        description="One persistent self (soul, memories, intent, north star) for every MCP client.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve", parents=[common], help="run the MCP server on stdio (started by an MCP client)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("wake", parents=[common], help="print what a new session would see")
    p.add_argument("--focus", help="what the session is about")
    p.add_argument("--budget", type=int, help="character budget (default 8000)")
    p.set_defaults(func=cmd_wake)

    p = sub.add_parser("remember", parents=[common], help="store a memory")
    p.add_argument("text")
    p.add_argument("--kind", help="fact, event, preference, lesson, reflection, person or other")
    p.add_argument("--tag", action="append", help="a tag (repeat for several)")
    p.add_argument("--importance", type=int, help="1 to 5 (default 3)")
    p.add_argument("--occurred-at", help="ISO date or date-time (default now)")
    p.set_defaults(func=cmd_remember)

    p = sub.add_parser("recall", parents=[common], help="search memories (empty query: most recent)")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--limit", type=int)
    p.add_argument("--tag", action="append", help="only memories with this tag (repeatable: all of them)")
    p.add_argument("--kind")
    p.add_argument("--since", help="ISO date or date-time, inclusive")
    p.add_argument("--until", help="ISO date or date-time; a bare date includes that day")
    p.add_argument("--cursor", help="next_cursor from a previous page")
    p.set_defaults(func=cmd_recall)

    p = sub.add_parser("forget", parents=[common], help="take a memory out of recall (restorable)")
    p.add_argument("memory_id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("restore-memory", parents=[common], help="bring a forgotten memory back into recall")
    p.add_argument("memory_id")
    p.set_defaults(func=cmd_restore_memory)

    p = sub.add_parser("purge", parents=[common], help="delete a forgotten memory for good (asks first)")
    p.add_argument("memory_id")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_purge)

    for command, document in DOC_COMMANDS.items():
        doc = sub.add_parser(command, help=f"show the {command}, its history, or a diff of two versions")
        doc_sub = doc.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = doc_sub.add_parser("show", parents=[common], help=f"print the current (or a given) {command}")
        p.add_argument("--version", type=int)
        p.add_argument("--raw", action="store_true", help="only the content")
        p.set_defaults(func=cmd_doc_show, document=document)
        p = doc_sub.add_parser("history", parents=[common], help="list versions, newest first")
        p.add_argument("--limit", type=int)
        p.add_argument("--before", type=int, help="only versions older than this")
        p.set_defaults(func=cmd_doc_history, document=document)
        p = doc_sub.add_parser("diff", parents=[common], help="unified diff between versions A and B")
        p.add_argument("a", type=int)
        p.add_argument("b", type=int)
        p.set_defaults(func=cmd_doc_diff, document=document)

    p = sub.add_parser("stats", parents=[common], help="counts of memories, versions and sessions")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, json=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stdout belongs to the protocol when serving: all logging goes to stderr.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.command != "serve" else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get("SOUL_MCP_LOG_LEVEL"):
        logging.getLogger().setLevel(os.environ["SOUL_MCP_LOG_LEVEL"].upper())
    return args.func(args)
