"""The owner's consent page of `serve --http --oauth`: /authorize sends the owner's browser here.

It shows who asks (the client's name, where the answer goes, the scopes asked for, each a checkbox
to narrow them) and issues a code only when the form carries the owner passphrase (`soul-mcp owner
set`, kept as a scrypt hash). What keeps anyone else from approving:
- the passphrase, checked against its hash; failures are counted for the whole server, not per
  address (an attacker has many): after FREE_FAILURES, each attempt waits twice as long as the one
  before (up to 15 minutes), whatever its address;
- a CSRF token per request, in a hidden field and in an HttpOnly, SameSite=Strict cookie (Secure
  over https), both compared with the one the server keeps for that request;
- the Host (and Origin) checks of /mcp; no framing (CSP frame-ancestors 'none').
"""

from __future__ import annotations

import hmac
import html
import logging
import time
from typing import TYPE_CHECKING

import anyio
from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from soul_mcp.core import tokens
from soul_mcp.errors import SoulError
from soul_mcp.models import SCOPES

if TYPE_CHECKING:
    from soul_mcp.server.oauth import PendingConsent, SoulAuthProvider

log = logging.getLogger(__name__)

COOKIE = "soul_consent"
FREE_FAILURES = 5
LONGEST_WAIT = 900.0
SCOPE_HELP = {
    "read": "read the self: wake_up, recall, documents, history",
    "write": "remember, forget and revise memories; write the intent and the user document",
    "identity": "change the soul, the north star and the identity document",
}
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class Attempts:
    """Failed passphrases, counted for the whole server."""

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0

    def wait(self) -> float:
        """Seconds before the next attempt is heard (0: now)."""
        if self.failures < FREE_FAILURES:
            return 0.0
        pause = min(LONGEST_WAIT, 2.0 ** (self.failures - FREE_FAILURES + 1))
        return max(0.0, self.last + pause - time.monotonic())

    def failed(self) -> None:
        self.failures += 1
        self.last = time.monotonic()

    def succeeded(self) -> None:
        self.failures = 0


class ConsentPage:
    """GET shows the form, POST answers it."""

    def __init__(
        self, provider: SoulAuthProvider, security: TransportSecurityMiddleware, secure_cookie: bool
    ) -> None:
        self.provider = provider
        self.security = security
        self.secure_cookie = secure_cookie
        self.attempts = Attempts()

    async def handle(self, request: Request) -> Response:
        refused = await self.security.validate_request(request, is_post=False)
        if refused is not None:
            return refused
        if request.method == "GET":
            pending = self.provider.consent(request.query_params.get("request", ""))
            if pending is None:
                return _gone()
            return self._form(pending, list(pending.scopes))
        return await self._answer(request)

    async def _answer(self, request: Request) -> Response:
        form = await request.form()
        pending = self.provider.consent(str(form.get("request", "")))
        if pending is None:
            return _gone()
        sent, cookie = str(form.get("csrf", "")), request.cookies.get(COOKIE, "")
        if not (hmac.compare_digest(sent, pending.csrf) and hmac.compare_digest(cookie, pending.csrf)):
            log.warning("refused a consent answer without this request's CSRF token")
            return _page("Refused", "<p>This answer did not come from the form this server showed. "
                         "Start again from the client.</p>", 403)  # fmt: skip
        chosen = [s for s in SCOPES if s in form.getlist("scope") and s in pending.scopes]
        if form.get("action") == "deny":
            return RedirectResponse(self.provider.deny(pending), 302, headers=HEADERS)
        wait = self.attempts.wait()
        if wait > 0:
            return self._form(
                pending, chosen, f"Too many wrong passphrases: try again in {int(wait) + 1} seconds.", 429
            )
        try:
            stored = await (await self.provider.store()).owner_secret()
        except SoulError as exc:
            log.error("cannot read the owner passphrase: %s", exc)
            return _page("Unavailable", "<p>The server cannot use its database; its operator can run "
                         "<code>soul-mcp doctor</code>.</p>", 503)  # fmt: skip
        passphrase = str(form.get("passphrase", ""))
        matches = stored is not None and await anyio.to_thread.run_sync(
            tokens.passphrase_matches, passphrase, stored
        )
        if not matches:
            self.attempts.failed()
            log.warning("refused an approval for %r: wrong owner passphrase", pending.client_name)
            return self._form(pending, chosen, "That is not the owner passphrase.", 403)
        self.attempts.succeeded()
        if not chosen:
            return self._form(pending, chosen, "Choose at least one scope, or deny.", 400)
        return RedirectResponse(await self.provider.approve(pending, tuple(chosen)), 302, headers=HEADERS)

    def _form(
        self, pending: PendingConsent, checked: list[str], problem: str = "", status: int = 200
    ) -> Response:
        e = html.escape
        boxes = "".join(
            f'<label><input type="checkbox" name="scope" value="{s}"{" checked" if s in checked else ""}> '
            f"<b>{s}</b>: {e(SCOPE_HELP[s])}</label><br>"
            for s in pending.scopes
        )
        body = (
            f"<p><b>{e(pending.client_name)}</b> asks to use this soul-mcp self. Its answer goes to "
            f"<b>{e(pending.redirect_host)}</b>.</p>"
            + (f'<p class="problem">{e(problem)}</p>' if problem else "")
            + f'<form method="post" action="consent">{boxes}'
            f'<input type="hidden" name="request" value="{e(pending.id)}">'
            f'<input type="hidden" name="csrf" value="{e(pending.csrf)}">'
            "<p><label>Owner passphrase (<code>soul-mcp owner set</code>): "
            '<input type="password" name="passphrase" autocomplete="current-password" autofocus></label></p>'
            '<button name="action" value="approve">Approve</button> '
            '<button name="action" value="deny">Deny</button></form>'
        )
        response = _page("Allow access to your self?", body, status)
        response.set_cookie(COOKIE, pending.csrf, max_age=600, path="/consent", secure=self.secure_cookie,
                            httponly=True, samesite="strict")  # fmt: skip
        return response


def _gone() -> Response:
    return _page(
        "Expired", "<p>This approval request is unknown or has expired. Start again from the client.</p>", 400
    )


def _page(title: str, body: str, status: int) -> HTMLResponse:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>soul-mcp: {html.escape(title)}</title>'
        '<meta name="viewport" content="width=device-width">'
        "<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}"
        ".problem{color:#b00020}label{line-height:2}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(text, status, headers=HEADERS)
