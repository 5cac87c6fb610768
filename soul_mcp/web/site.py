"""What every view shares: the page's state (the open self, sessions, live changes, templates) and
the steps of a request (who is asking, may they, the form, the answer)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from soul_mcp.config import Settings
from soul_mcp.errors import InvalidInput, NotFound, SoulError, StorageError
from soul_mcp.models import Actor
from soul_mcp.web.access import COOKIE, OneTimeKey, Sessions, WebSession, missing_scope
from soul_mcp.web.live import Changes
from soul_mcp.web.templating import PREFIX, SECURITY_HEADERS, render

if TYPE_CHECKING:
    import jinja2

    from soul_mcp.core import AgentSelf

log = logging.getLogger(__name__)

FORM_BYTES = 4 * 1024 * 1024  # a form larger than this is refused before it is read


@dataclass
class Site:
    """One page server's state. `key`: `soul-mcp ui`'s one-time key (local mode, author
    `local_author`); None under `serve --http`, where people log in with a token."""

    settings: Settings
    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    stopping: anyio.Event
    env: jinja2.Environment
    key: OneTimeKey | None = None
    local_author: str | None = None
    sessions: Sessions = field(default_factory=Sessions)
    changes: Changes = field(default_factory=Changes)
    agent_self: AgentSelf | None = None

    @property
    def local(self) -> bool:
        return self.key is not None

    def self_(self) -> AgentSelf:
        if self.agent_self is None:
            raise StorageError("the page is not connected to its database yet; try again in a moment")
        return self.agent_self


class Refused(Exception):
    """Ends a request with a ready answer (a redirect to the login, a 403 page)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def site_of(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


def session_of(request: Request) -> WebSession | None:
    return site_of(request).sessions.get(request.cookies.get(COOKIE))


def set_cookie(request: Request, response: Response, session: WebSession) -> None:
    response.set_cookie(
        COOKIE,
        session.id,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def person(request: Request, scope: str = "read", what: str = "reading the self") -> WebSession:
    """The logged-in session, with `scope`; otherwise Refused (to the login, or 403)."""
    site = site_of(request)
    session = session_of(request)
    # A revoked token ends its sessions at once.
    if (
        session is not None
        and session.token is not None
        and await site.self_().check_token(session.token) is None
    ):
        site.sessions.end(session)
        session = None
    if session is None or not session.logged_in:
        raise Refused(RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS))
    if why := missing_scope(session, scope, what):
        raise Refused(render(site.env, "problem.html", session, status=403, title="Not allowed", problem=why))
    return session


def actor(session: WebSession) -> Actor:
    return Actor(name=session.author or "web:unknown", session_id=session.session_id)


async def form(request: Request, session: WebSession | None) -> dict[str, str]:
    """The POSTed form, its CSRF field checked: without the session's token, 403 and nothing done."""
    site = site_of(request)
    length = request.headers.get("content-length", "")
    # Without a length (chunked) the body could be any size: browsers always send one for forms.
    if not length.isdigit() or int(length) > FORM_BYTES:
        raise Refused(render(site.env, "problem.html", session, status=413, title="Too large",
                             problem="the form is too large to be read, or its length is not given"))  # fmt: skip
    data = await request.form(max_fields=50, max_part_size=FORM_BYTES)
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    if session is None or not session.csrf_ok(fields.get("csrf")):
        log.info("refused a form without its CSRF token: %s", request.url.path)
        raise Refused(render(site.env, "problem.html", session, status=403, title="Refused",
                             problem="this form is not from this page (its CSRF token is missing or "
                             "wrong); reload the page and send it again"))  # fmt: skip
    return fields


def failure(request: Request, session: WebSession | None, exc: SoulError) -> Response:
    """A SoulError as a page: 400 bad input, 404 not found, 503 the database."""
    status = 400 if isinstance(exc, InvalidInput) else 404 if isinstance(exc, NotFound) else 503
    if status == 503:
        log.warning("the page could not use the database: %s", exc)
    titles = {400: "Not accepted", 404: "Not found", 503: "Database unavailable"}
    return render(
        site_of(request).env, "problem.html", session, status=status, title=titles[status], problem=str(exc)
    )


def see_other(path: str, **query: str | int) -> RedirectResponse:
    """After a change: to the page that shows it (303: the browser GETs it)."""
    text = "&".join(f"{k}={quote(str(v))}" for k, v in query.items())
    return RedirectResponse(
        f"{PREFIX}{path}{'?' + text if text else ''}", status_code=303, headers=SECURITY_HEADERS
    )


def optional(value: Any) -> str | None:
    """A query or form field: None when absent or blank."""
    if not isinstance(value, str):
        return None
    return value.strip() or None
