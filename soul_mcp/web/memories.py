"""Memories: search with the tools' recall, list with filters, one memory's history, and the
changes a person may make to it (forget, restore, revise, purge)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from soul_mcp.errors import InvalidInput, NotFound, SoulError
from soul_mcp.models import MEMORY_KINDS, Memory
from soul_mcp.web.access import WebSession
from soul_mcp.web.site import actor, failure, form, optional, person, see_other, site_of
from soul_mcp.web.templating import render

PAGE_SIZE = 20
STATUSES = ("active", "forgotten", "superseded", "all")
HISTORY_MAX = 20  # revisions shown each way from a memory
DOING = {"forget": "forgetting", "restore": "restoring", "revise": "revising", "purge": "purging"}


def filters_of(request: Request) -> dict[str, str]:
    wanted = ("q", "kind", "tag", "since", "until", "status", "page", "cursor")
    return {name: request.query_params.get(name, "") for name in wanted}


def page_number(text: str) -> int:
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1 or int(text) > 100_000:
        raise InvalidInput(f"page must be a whole number from 1, got {text!r}")
    return int(text)


async def search(request: Request) -> Response:
    session = await person(request)
    site = site_of(request)
    agent_self = site.self_()
    shown = filters_of(request)
    status = shown["status"] or "active"
    context: dict[str, Any] = {"hits": [], "memories": [], "total": None, "next": None, "note": None}
    try:
        if status not in STATUSES:
            raise InvalidInput(f"unknown status {status!r}; use one of: {', '.join(STATUSES)}")
        tags = [shown["tag"].strip()] if shown["tag"].strip() else None
        common: dict[str, Any] = {"kind": optional(shown["kind"]), "tags": tags,
                  "since": optional(shown["since"]), "until": optional(shown["until"])}  # fmt: skip
        if optional(shown["q"]):
            result = await agent_self.recall(
                shown["q"], PAGE_SIZE, cursor=optional(shown["cursor"]), **common
            )
            context.update(
                hits=result.hits,
                note=result.note,
                next={"cursor": result.next_cursor} if result.next_cursor else None,
            )
            if status != "active":
                context["note"] = (
                    "Search finds active memories, as the agent's recall does; the status filter applies to listing."
                )
        else:
            page = page_number(shown["page"])
            listed = await agent_self.list_memories(
                status, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, **common
            )
            context.update(memories=listed.memories, total=listed.total,
                           next={"page": page + 1} if listed.next_offset is not None else None,
                           previous=page - 1 if page > 1 else None)  # fmt: skip
    except InvalidInput as exc:
        return render(site.env, "memories.html", session, status=400, title="Memories", shown=shown,
                      kinds=MEMORY_KINDS, statuses=STATUSES, problem=str(exc), **context)  # fmt: skip
    except SoulError as exc:
        return failure(request, session, exc)
    context.setdefault("previous", None)
    return render(site.env, "memories.html", session, title="Memories", shown=shown, kinds=MEMORY_KINDS,
                  statuses=STATUSES, **context)  # fmt: skip


async def _chain(agent_self: Any, memory: Memory, link: str) -> list[Memory]:
    """The memories before (`supersedes`) or after (`superseded_by`) this one, nearest first."""
    found: list[Memory] = []
    next_id = getattr(memory, link)
    while next_id and len(found) < HISTORY_MAX:
        try:
            other = await agent_self.get_memory(next_id)
        except NotFound:
            break  # purged
        found.append(other)
        next_id = getattr(other, link)
    return found


async def _page(request: Request, session: WebSession, status: int = 200, problem: str | None = None,
                kept: dict[str, str] | None = None, action: str | None = None) -> Response:  # fmt: skip
    site = site_of(request)
    agent_self = site.self_()
    memory = await agent_self.get_memory(request.path_params["id"])
    return render(
        site.env,
        "memory.html",
        session,
        status=status,
        title=f"Memory {memory.id}",
        memory=memory,
        earlier=await _chain(agent_self, memory, "supersedes"),
        later=await _chain(agent_self, memory, "superseded_by"),
        problem=problem,
        kept=kept or {},
        purging=action == "purge" or request.query_params.get("purge") == "1",
        action=action,
        done=request.query_params.get("done"),
    )


async def show(request: Request) -> Response:
    session = await person(request)
    try:
        return await _page(request, session)
    except SoulError as exc:
        return failure(request, session, exc)


async def change(request: Request) -> Response:
    """POST /ui/memories/{id}/{forget|restore|revise|purge}."""
    action = request.path_params["action"]
    session = await person(request)
    if action not in DOING:
        return failure(
            request,
            session,
            NotFound(f"no such change to a memory: {action!r}; the forms are {', '.join(DOING)}"),
        )
    await person(request, "write", f"{DOING[action]} a memory")
    site = site_of(request)
    fields = await form(request, session)
    agent_self = site.self_()
    memory_id = request.path_params["id"]
    kept = {name: fields.get(name, "") for name in ("reason", "content", "confirm")}
    try:
        if action == "forget":
            await agent_self.forget(memory_id, kept["reason"], actor(session))
            target = see_other(f"/memories/{memory_id}", done="forgotten")
        elif action == "restore":
            await agent_self.restore_memory(memory_id, actor(session))
            target = see_other(f"/memories/{memory_id}", done="restored")
        elif action == "revise":
            _, new = await agent_self.revise(memory_id, kept["content"], kept["reason"], actor(session))
            target = see_other(f"/memories/{new.id}", done="revised")
        else:  # purge: the second time of asking, the id typed again
            if kept["confirm"].strip() != memory_id:
                raise InvalidInput(
                    f"purging deletes this memory for good: type its id ({memory_id}) in the box to confirm"
                )
            await agent_self.purge(memory_id)
            target = see_other("/memories", status="forgotten")
    except (InvalidInput, NotFound) as exc:
        try:
            return await _page(request, session, 400, str(exc), kept, action)
        except SoulError as again:
            return failure(request, session, again)
    except SoulError as exc:
        return failure(request, session, exc)
    site.changes.poke()
    return target
