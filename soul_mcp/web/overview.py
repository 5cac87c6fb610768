"""The overview, /ui/: the self as it is now and what `wake_up` would give a new session."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from soul_mcp.models import Actor
from soul_mcp.names import DOCUMENT_SPECS
from soul_mcp.web.site import person, site_of
from soul_mcp.web.templating import render


async def overview(request: Request) -> Response:
    session = await person(request)
    site = site_of(request)
    agent_self = site.self_()
    documents = [await agent_self.read(name) for name in DOCUMENT_SPECS]
    # Without a session id: looking at the page is not a session of the agent's.
    wake = await agent_self.wake_up(Actor(name=session.author or "web"))
    return render(
        site.env,
        "overview.html",
        session,
        title="Overview",
        documents=documents,
        intent_age=wake.intent_age,
        stats=await agent_self.stats(),
        clients=(await agent_self.client_activity())[:20],
        wake=wake,
    )
