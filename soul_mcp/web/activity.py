"""/ui/activity: who changed what and when, across clients and sessions, newest first.

Made from what the self records: each document version (author, time, reason), each memory stored
(author, time), and each memory forgotten or revised (time, reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from soul_mcp.names import DOCUMENT_SPECS
from soul_mcp.web.site import person, site_of
from soul_mcp.web.templating import SLUG_OF, render

ROWS = 100


@dataclass(frozen=True)
class Change:
    at: str
    who: str | None  # None: not recorded (a memory's forget or revision keeps no author)
    what: str
    link: str
    reason: str | None = None


async def activity(request: Request) -> Response:
    session = await person(request)
    site = site_of(request)
    agent_self = site.self_()
    changes: list[Change] = []
    for name in DOCUMENT_SPECS:
        for v in (await agent_self.history(name, ROWS)).versions:
            what = f"{name.replace('_', ' ')} version {v.version}"
            if v.restored_from:
                what += f" (restored from {v.restored_from})"
            changes.append(Change(v.created_at, v.author, what, f"/documents/{SLUG_OF[name]}", v.reason))
    for memory in (await agent_self.list_memories("all", limit=ROWS)).memories:
        link = f"/memories/{memory.id}"
        changes.append(Change(memory.created_at, memory.author, f"memory {memory.id} stored", link))
        if memory.status_changed_at:  # its last change only: forgotten, restored or revised
            done = "restored" if memory.status == "active" else memory.status
            changes.append(Change(memory.status_changed_at, memory.status_changed_by,
                                  f"memory {memory.id} {done}", link, memory.status_reason))  # fmt: skip
    changes.sort(key=lambda c: c.at, reverse=True)
    return render(site.env, "activity.html", session, title="Activity", changes=changes[:ROWS],
                  clients=await agent_self.client_activity())  # fmt: skip
