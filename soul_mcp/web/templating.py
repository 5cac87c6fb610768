"""Jinja2 templates (imported only when the page runs) and what every page is rendered with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse

from soul_mcp.core.render import TITLES
from soul_mcp.names import DOCUMENT_SPECS

if TYPE_CHECKING:
    import jinja2

    from soul_mcp.web.access import WebSession

PREFIX = "/ui"
HERE = Path(__file__).parent
# The pages load nothing from elsewhere and run only our own script; no page may frame them.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    # Not no-referrer: Chromium then sends `Origin: null` with the forms, which the guard refuses.
    # The one-time link is never a page (it redirects), and other sites get no Referer at all.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
# The documents by the name in their URL (the CLI's command: north-star) and back.
SLUGS = {spec.command: name for name, spec in DOCUMENT_SPECS.items()}
SLUG_OF = {name: spec.command for name, spec in DOCUMENT_SPECS.items()}


def environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(prefix=PREFIX, titles=TITLES, slug_of=SLUG_OF, documents=list(SLUG_OF))
    env.filters["when"] = when
    return env


def when(stored: str | None) -> str:
    """A stored UTC time as people read it: 2026-12-07 00:41 UTC."""
    if not stored:
        return ""
    return stored[:16].replace("T", " ") + " UTC"


def render(
    env: jinja2.Environment,
    template: str,
    session: WebSession | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    context.setdefault("problem", None)
    text = env.get_template(template).render(session=session, **context)
    return HTMLResponse(text, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
