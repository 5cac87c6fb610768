"""The page's routes, its guard (Host, Origin) and its lifespan; served alone by `soul-mcp ui`
(`local_app`) or mounted under /ui by `serve --http` (`mount`).

The page opens its own AgentSelf on the same database as the MCP server beside it, as another
process would: each store already sees the others' writes (and the watcher hears them).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.errors import SoulError
from soul_mcp.web import activity, documents, memories, overview
from soul_mcp.web.access import LOOPBACK_HOSTS, OneTimeKey, host_allowed
from soul_mcp.web.live import event_stream
from soul_mcp.web.site import Refused, Site, failure, form, person, session_of, set_cookie, site_of
from soul_mcp.web.templating import HERE, PREFIX, SECURITY_HEADERS, environment, render

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(endpoint: Endpoint) -> Endpoint:
    """A view whose refusals and database failures become pages."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Refused as refused:
            return refused.response
        except SoulError as exc:
            return failure(request, session_of(request), exc)

    run.__name__ = endpoint.__name__
    return run


class Guard:
    """Host checked as for /mcp (421) on every request; a POST whose Origin is another site's is
    refused (403) before its form is read."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...], origins: tuple[str, ...]) -> None:
        self.app, self.hosts, self.origins = app, hosts, origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if not host_allowed(headers.get("host"), self.hosts):
                await Response("Invalid Host header", status_code=421)(scope, receive, send)
                return
            origin = headers.get("origin")
            if scope["method"] == "POST" and origin is not None and not host_allowed(origin, self.origins):
                await Response("Invalid Origin header", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Login --------------------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    site = site_of(request)
    session = session_of(request)
    key = request.query_params.get("key")
    if site.key is not None and key is not None:
        if site.key.use(key):
            fresh = site.sessions.log_in(session, site.local_author or "web:user", frozenset(
                ("read", "write", "identity")), local=True)  # fmt: skip
            done = RedirectResponse(f"{PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
            set_cookie(request, done, fresh)
            return done
        return render(site.env, "login.html", session, status=403, title="Log in", local=True,
                      problem="this link was used already (it works once) or is not this server's: "
                      "start `soul-mcp ui` again for a new one")  # fmt: skip
    if session is not None and session.logged_in:
        return RedirectResponse(f"{PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
    if session is None:
        session = site.sessions.new()  # anonymous: the login form's CSRF token
    response = render(site.env, "login.html", session, title="Log in", local=site.local)
    set_cookie(request, response, session)
    return response


async def login_with_token(request: Request) -> Response:
    site = site_of(request)
    session = session_of(request)
    fields = await form(request, session)
    token = fields.get("token", "").strip()
    info = None if site.local else await site.self_().check_token(token)
    if info is None:
        problem = ("this page was opened with `soul-mcp ui`: log in with the link it prints" if site.local
                   else "that token is not known or was revoked; create one with: soul-mcp token create NAME --scope read")  # fmt: skip
        return render(
            site.env, "login.html", session, status=403, title="Log in", local=site.local, problem=problem
        )
    await site.self_().token_used(info.name)
    fresh = site.sessions.log_in(session, f"web:{info.name}", frozenset(info.scopes), token=token)
    log.info("the page: %s logged in", fresh.author)
    response = RedirectResponse(f"{PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
    set_cookie(request, response, fresh)
    return response


async def logout(request: Request) -> Response:
    site = site_of(request)
    session = session_of(request)
    await form(request, session)
    if session is not None:
        site.sessions.end(session)
    return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)


async def events(request: Request) -> Response:
    await person(request)
    site = site_of(request)
    headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
    return StreamingResponse(
        event_stream(site.changes, site.stopping), media_type="text/event-stream", headers=headers
    )


# The app ------------------------------------------------------------------------------------------


def routes() -> list[Any]:
    get, post = ["GET"], ["POST"]
    return [
        Route("/", guarded(overview.overview), methods=get),
        Route("/login", guarded(login), methods=get),
        Route("/login", guarded(login_with_token), methods=post),
        Route("/logout", guarded(logout), methods=post),
        Route("/documents/{doc}", guarded(documents.timeline), methods=get),
        Route("/documents/{doc}/diff", guarded(documents.diff), methods=get),
        Route("/documents/{doc}/restore", guarded(documents.restore), methods=post),
        Route("/memories", guarded(memories.search), methods=get),
        Route("/memories/{id}", guarded(memories.show), methods=get),
        Route("/memories/{id}/{action:str}", guarded(memories.change), methods=post),
        Route("/activity", guarded(activity.activity), methods=get),
        Route("/events", guarded(events), methods=get),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def pages(site: Site) -> Starlette:
    """The pages without a lifespan of their own (`lifespan` runs them)."""
    app = Starlette(routes=routes())
    app.state.site = site
    return app


@asynccontextmanager
async def lifespan(site: Site) -> AsyncIterator[None]:
    """The page's self open, and its watcher running, while the server runs."""
    site.agent_self = await AgentSelf.open(site.settings)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(site.changes.watch, site.agent_self)
            try:
                yield
            finally:
                site.stopping.set()
                tg.cancel_scope.cancel()
    finally:
        await site.agent_self.close()
        site.agent_self = None


def local_app(settings: Settings, author: str, stopping: anyio.Event) -> tuple[Starlette, OneTimeKey]:
    """`soul-mcp ui`: the pages under /ui on loopback, behind a one-time key."""
    key = OneTimeKey()
    origins = tuple(f"{scheme}://{host}" for scheme in ("http", "https") for host in LOOPBACK_HOSTS)
    site = Site(settings, LOOPBACK_HOSTS, origins, stopping, environment(), key=key, local_author=author)
    inner = pages(site)

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=303)

    @asynccontextmanager
    async def run(_: Starlette) -> AsyncIterator[None]:
        async with lifespan(site):
            yield

    app = Starlette(
        routes=[Route("/", home), Mount(PREFIX, Guard(inner, site.hosts, site.origins))], lifespan=run
    )
    return app, key


def mount(
    app: Starlette, settings: Settings, hosts: list[str], origins: list[str], stopping: anyio.Event
) -> None:
    """`serve --http`: the pages under /ui of the MCP app, logged into with a token; they open
    and close with it."""
    site = Site(settings, tuple(hosts), tuple(origins), stopping, environment())
    app.router.routes.append(Mount(PREFIX, Guard(pages(site), site.hosts, site.origins)))
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def both(running: Starlette) -> AsyncIterator[Any]:
        async with outer(running) as state, lifespan(site):
            yield state

    app.router.lifespan_context = both
