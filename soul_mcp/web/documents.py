"""A document's timeline (/ui/documents/{doc}), a diff between two versions, and restoring one."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from soul_mcp.core import validate
from soul_mcp.errors import InvalidInput, NotFound, SoulError
from soul_mcp.names import IDENTITY_DOCUMENTS
from soul_mcp.web.access import WebSession
from soul_mcp.web.site import actor, failure, form, person, see_other, site_of
from soul_mcp.web.templating import SLUG_OF, SLUGS, render

TIMELINE_ROWS = 50


def document_of(request: Request) -> str:
    slug = request.path_params["doc"]
    if slug not in SLUGS:
        raise NotFound(f"no document is called {slug!r}; the documents are: {', '.join(SLUGS)}")
    return SLUGS[slug]


def version_field(text: str | None, name: str) -> int:
    """A version typed or sent in a URL: a whole number from 1, said so otherwise."""
    if text is None or not text.strip().isdigit():
        raise InvalidInput(
            f"{name} must be a version number (a whole number from 1), got {text or 'nothing'!r}"
        )
    return validate.version(int(text.strip()), name)


async def _timeline(request: Request, session: WebSession, document: str, status: int = 200,
                    problem: str | None = None, restore: dict[str, str] | None = None) -> Response:  # fmt: skip
    site = site_of(request)
    agent_self = site.self_()
    before = request.query_params.get("before")
    history = await agent_self.history(
        document, TIMELINE_ROWS, version_field(before, "before") if before else None
    )
    return render(
        site.env,
        "document.html",
        session,
        status=status,
        title=f"{document.replace('_', ' ').capitalize()}: timeline",
        document=document,
        slug=SLUG_OF[document],
        current=await agent_self.read(document),
        history=history,
        problem=problem,
        restore=restore or {},
        needs=scope_for(document),
        restored=request.query_params.get("restored"),
        unchanged=request.query_params.get("unchanged"),
    )


def scope_for(document: str) -> str:
    return "identity" if document in IDENTITY_DOCUMENTS else "write"


async def timeline(request: Request) -> Response:
    session = await person(request)
    try:
        return await _timeline(request, session, document_of(request))
    except SoulError as exc:
        return failure(request, session, exc)


async def diff(request: Request) -> Response:
    session = await person(request)
    site = site_of(request)
    try:
        document = document_of(request)
        a = version_field(request.query_params.get("a"), "a")
        b = version_field(request.query_params.get("b"), "b")
        found = await site.self_().diff(document, a, b)
    except SoulError as exc:
        return failure(request, session, exc)
    return render(
        site.env,
        "diff.html",
        session,
        title=f"{document.replace('_', ' ').capitalize()}: version {a} to {b}",
        document=document,
        slug=SLUG_OF[document],
        a=a,
        b=b,
        lines=diff_lines(found.diff),
    )


def diff_lines(unified: str) -> list[tuple[str, str]]:
    """A unified diff as (kind, text) per line: ins, del, same, or hunk (a break between parts)."""
    lines: list[tuple[str, str]] = []
    for line in unified.splitlines():
        if line.startswith(("--- ", "+++ ")):
            continue
        if line.startswith("@@"):
            lines.append(("hunk", hunk_title(line)))
        elif line.startswith("+"):
            lines.append(("ins", line[1:]))
        elif line.startswith("-"):
            lines.append(("del", line[1:]))
        else:
            lines.append(("same", line[1:]))
    return lines


HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def hunk_title(line: str) -> str:
    """'@@ -1,4 +1,6 @@' as a person reads it: 'lines 1-4 → lines 1-6'."""
    found = HUNK.match(line)
    if found is None:
        return line
    a, a_count, b, b_count = found.groups()

    def span(start: str, count: str | None) -> str:
        n = 1 if count is None else int(count)
        first = int(start)
        return "nothing" if n == 0 else f"line {first}" if n == 1 else f"lines {first}-{first + n - 1}"

    return f"{span(a, a_count)} → {span(b, b_count)}"


async def restore(request: Request) -> Response:
    session = await person(request)
    site = site_of(request)
    fields = await form(request, session)
    kept: dict[str, Any] = {"version": fields.get("version", ""), "reason": fields.get("reason", "")}
    try:
        document = document_of(request)
    except SoulError as exc:
        return failure(request, session, exc)
    await person(request, scope_for(document), f"restoring the {document.replace('_', ' ')}")
    if document in IDENTITY_DOCUMENTS and not site.local and site.settings.soul_policy == "locked":
        problem = (f"the {document.replace('_', ' ')} is locked (soul policy 'locked'): identity changes "
                   f"only from the command line, by a person: soul-mcp {SLUG_OF[document]} restore")  # fmt: skip
        return render(site.env, "problem.html", session, status=403, title="Not allowed", problem=problem)
    try:
        version = version_field(kept["version"], "version")
        written = await site.self_().restore(document, version, kept["reason"], actor(session))
    except (InvalidInput, NotFound) as exc:
        # The page again, with what the person typed, and why it was not accepted.
        return await _timeline(request, session, document, 400, str(exc), kept)
    except SoulError as exc:
        return failure(request, session, exc)
    if not written.changed:  # as for the tools: the same text again stores nothing
        return see_other(f"/documents/{SLUG_OF[document]}", unchanged=version)
    site.changes.poke()
    return see_other(f"/documents/{SLUG_OF[document]}", restored=written.version.version)
