"""Memories at the command line: wake, remember, recall, forget, restore-memory, purge, and
`memories list` / `memories show`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from soul_mcp.cli import terminal
from soul_mcp.cli.command import Subcommands, actor, run_on_self
from soul_mcp.cli.output import EXIT_REFUSED, clean_name, emit, error, style


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    for add in (add_wake, add_remember, add_recall, add_forget, add_restore_memory, add_purge, add_memories):
        add(sub, common)


def add_wake(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wake", parents=[common], help="print what a new session would see")
    p.add_argument("--focus", help="what the session is about")
    p.add_argument("--budget", type=int, help="character budget (default 8000)")
    p.set_defaults(func=wake)


def wake(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        woken = await s.wake_up(actor(), focus=args.focus, budget_chars=args.budget)
        emit(args, woken, woken.text)

    return run_on_self(args, work, must_exist=True)


def add_remember(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("remember", parents=[common], help="store a memory")
    p.add_argument("text")
    p.add_argument("--kind", help="fact, event, preference, lesson, reflection, person or other")
    p.add_argument("--tag", action="append", help="a tag (repeat for several)")
    p.add_argument("--importance", type=int, help="1 to 5 (default 3)")
    p.add_argument("--occurred-at", help="ISO date or date-time (default now)")
    p.set_defaults(func=remember)


def remember(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.remember(
            args.text, actor(), kind=args.kind, tags=args.tag, importance=args.importance,
            occurred_at=args.occurred_at,
        )  # fmt: skip
        emit(args, result, render.remember(result))

    return run_on_self(args, work)


def add_recall(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("recall", parents=[common], help="search memories (empty query: most recent)")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--limit", type=int)
    p.add_argument("--tag", action="append", help="only memories with this tag (repeatable: all of them)")
    p.add_argument("--kind")
    p.add_argument("--since", help="ISO date or date-time, inclusive")
    p.add_argument("--until", help="ISO date or date-time; a bare date includes that day")
    p.add_argument("--cursor", help="next_cursor from a previous page")
    p.set_defaults(func=recall)


def recall(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        result = await s.recall(
            args.query, limit=args.limit, tags=args.tag, kind=args.kind, since=args.since,
            until=args.until, cursor=args.cursor,
        )  # fmt: skip
        emit(args, result, render.recall(result))

    return run_on_self(args, work, must_exist=True)


def add_forget(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("forget", parents=[common], help="take a memory out of recall (restorable)")
    p.add_argument("memory_id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=forget)


def forget(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.forget(args.memory_id, args.reason, actor())
        emit(args, memory, "Forgotten (restore-memory brings it back):\n" + render.memory(memory))

    return run_on_self(args, work, must_exist=True)


def add_restore_memory(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("restore-memory", parents=[common], help="bring a forgotten memory back into recall")
    p.add_argument("memory_id")
    p.set_defaults(func=restore_memory)


def restore_memory(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.restore_memory(args.memory_id, actor())
        emit(args, memory, "Restored:\n" + render.memory(memory))

    return run_on_self(args, work, must_exist=True)


def add_purge(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("purge", parents=[common], help="delete a forgotten memory for good (asks first)")
    p.add_argument("memory_id")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=purge)


def purge(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            error("purge deletes for good; pass --yes to confirm when not at a terminal")
            return EXIT_REFUSED
        answer = input(f"Delete forgotten memory {args.memory_id} for good? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("Nothing deleted.")
            return EXIT_REFUSED

    async def work(s: Any) -> None:
        await s.purge(args.memory_id)
        emit(args, {"purged": args.memory_id}, f"Purged {args.memory_id}.")

    return run_on_self(args, work, must_exist=True)


def add_memories(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    mem = sub.add_parser("memories", help="list memories by status with filters and paging, or show one")
    mem_sub = mem.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = mem_sub.add_parser(
        "list",
        parents=[common],
        help="list memories, newest first (not a search: recall searches)",
        description="List memories by status, newest first, with filters; pages of --limit (default 20, "
        "at most 200). Continue with the --cursor (or --offset) printed under the page.",
    )
    p.add_argument("--status", choices=["active", "forgotten", "superseded", "all"], default="active",
                   help="which memories (default active)")  # fmt: skip
    p.add_argument(
        "--kind", help="only this kind (fact, event, preference, lesson, reflection, person, other)"
    )
    p.add_argument("--tag", action="append", help="only memories with this tag (repeatable: all of them)")
    p.add_argument("--since", help="occurred at or after: ISO date or date-time, '2024-05', 'last week', ...")
    p.add_argument("--until", help="occurred before the end of: same forms; a bare date includes that day")
    p.add_argument("--limit", type=int, help="memories per page, 1 to 200 (default 20)")
    paging = p.add_mutually_exclusive_group()
    paging.add_argument("--cursor", help="the cursor printed under the previous page")
    paging.add_argument("--offset", type=int, help="skip this many matching memories")
    p.set_defaults(func=memories_list)
    p = mem_sub.add_parser("show", parents=[common], help="one memory with its status and history links")
    p.add_argument("memory_id")
    p.set_defaults(func=memories_show)


def memories_list(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        page = await s.list_memories(
            args.status, kind=args.kind, tags=args.tag, since=args.since, until=args.until,
            limit=args.limit, cursor=args.cursor, offset=args.offset,
        )  # fmt: skip
        emit(args, page, memory_table(page))

    return run_on_self(args, work, must_exist=True)


def memory_table(page: Any) -> str:
    """A page of memories as a table whose last column, the content, fills the terminal's width."""
    paint = style()
    label = "memories" if page.status == "all" else f"{page.status} memories"
    if not page.memories:
        return f"No {label} on this page ({page.total} match)." if page.total else f"No {label} match."
    first, last = page.offset + 1, page.offset + len(page.memories)
    head = f"{label.capitalize()} {first}-{last} of {page.total}, newest first:"
    show_status = page.status == "all"
    headers = ["ID", "DATE", "KIND", "IMP", *(["STATUS"] if show_status else []), "TAGS", "AUTHOR"]
    rows = [
        [m.id, m.occurred_at[:10], m.kind, str(m.importance), *([m.status] if show_status else []),
         terminal.clip(" ".join(f"#{t}" for t in m.tags), 24), terminal.clip(clean_name(m.author), 20)]
        for m in page.memories
    ]  # fmt: skip
    used = sum(
        max(terminal.width(h), *(terminal.width(r[i]) for r in rows)) + 2 for i, h in enumerate(headers)
    )
    room = max(24, terminal.terminal_columns() - used)  # the content fills the rest of the line
    headers.append("CONTENT")
    for row, memory in zip(rows, page.memories, strict=True):
        row.append(terminal.clip(memory.content, room))
    lines = [head, terminal.table(headers, rows, paint, right=[3])]
    if page.next_cursor:
        lines.append(paint(f"More: --cursor {page.next_cursor} (or --offset {page.next_offset})", "dim"))
    return "\n".join(lines)


def memories_show(args: argparse.Namespace) -> int:
    from soul_mcp.core import render

    async def work(s: Any) -> None:
        memory = await s.get_memory(args.memory_id)
        emit(args, memory, render.memory(memory))

    return run_on_self(args, work, must_exist=True)
