"""Who is looking at the page, and what they may do: sessions, the one-time key, CSRF, Host and
Origin, scopes.

A session lives in this process only (a restart logs everyone out); the cookie `soul_ui` carries
its random id and nothing else. Each session has its CSRF token, which every form sends back. A
session made from a token keeps the token in memory and checks it again on every request, so a
revoked token ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from soul_mcp.models import SCOPES

COOKIE = "soul_ui"
IDLE_SECONDS = 12 * 3600  # a session unused this long is gone
MAX_SESSIONS = 2000  # anonymous ones (the login form's) included
LOOPBACK_HOSTS = ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")


@dataclass
class WebSession:
    """One browser's session: anonymous (the login form's CSRF only) until someone logs in."""

    id: str
    csrf: str
    author: str | None = None  # `web:<token name>` or `web:<user>`; None: not logged in
    scopes: frozenset[str] = frozenset()
    token: str | None = None  # the token it logged in with, checked again on each request
    local: bool = False  # logged in with the one-time key of `soul-mcp ui`
    used: float = field(default_factory=time.monotonic)

    @property
    def logged_in(self) -> bool:
        return self.author is not None

    @property
    def session_id(self) -> str:
        """The session recorded with its changes: a digest, because authors and sessions are
        readable by every client and the id itself is the cookie."""
        return hashlib.sha256(("web\x1f" + self.id).encode()).hexdigest()[:16]

    def csrf_ok(self, sent: object) -> bool:
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    def __init__(self) -> None:
        self._by_id: dict[str, WebSession] = {}

    def new(self) -> WebSession:
        if len(self._by_id) >= MAX_SESSIONS:
            # Anonymous ones first: anyone can make those by loading the login page.
            oldest = min(self._by_id.values(), key=lambda s: (s.logged_in, s.used))
            del self._by_id[oldest.id]
        session = WebSession(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32))
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.used > IDLE_SECONDS:
            del self._by_id[session.id]
            return None
        session.used = now
        return session

    def log_in(self, anonymous: WebSession | None, author: str, scopes: frozenset[str],
               token: str | None = None, local: bool = False) -> WebSession:  # fmt: skip
        """A new session (a new id: the anonymous one may have been planted) for this person."""
        if anonymous is not None:
            self.end(anonymous)
        session = self.new()
        session.author, session.scopes, session.token, session.local = author, scopes, token, local
        return session

    def end(self, session: WebSession) -> None:
        self._by_id.pop(session.id, None)


class OneTimeKey:
    """The key in the link `soul-mcp ui` prints: good for one login, so that another local user
    or a page in the browser cannot drive the self with it afterwards."""

    def __init__(self) -> None:
        self.key: str | None = secrets.token_urlsafe(32)

    def use(self, sent: str) -> bool:
        if self.key is None or not hmac.compare_digest(sent.encode(), self.key.encode()):
            return False
        self.key = None
        return True


def host_allowed(host: str | None, patterns: tuple[str, ...]) -> bool:
    """A Host header (or an Origin) against patterns (`name` or `name:*`), as /mcp's check
    matches them."""
    if not host:
        return False
    return any(host == p or (p.endswith(":*") and host.startswith(p[:-1])) for p in patterns)


def missing_scope(session: WebSession, scope: str, what: str) -> str | None:
    """Why this session may not do `what`, or None when it may."""
    if scope in session.scopes:
        return None
    have = ", ".join(s for s in SCOPES if s in session.scopes) or "none"
    wanted = ",".join(s for s in SCOPES if s in session.scopes or s == scope)
    return (
        f"{what} needs the '{scope}' scope, and this login ({session.author}) has {have}. "
        f"Log in with a token that has it: soul-mcp token create NAME --scope {wanted}"
    )
