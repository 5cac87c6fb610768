"""soul-mcp as its own OAuth 2.1 authorization server, for `serve --http --oauth`.

Built on the SDK's auth support: the SDK serves the metadata (RFC 8414 for the authorization
server, RFC 9728 for the resource), dynamic client registration (RFC 7591), /authorize, /token and
/revoke, and checks PKCE (S256 only), redirect URIs, client secrets and the scopes a refresh may ask
for. This provider keeps the rows (storage/oauth_rows.py), sends every authorization to the owner's
consent page (server/consent.py), and recognises both kinds of bearer token: the static ones of
`soul-mcp token create` (server/access.py) and the access tokens it issued.

Lifetimes: an access token lasts `access_seconds` (an hour unless SOUL_MCP_OAUTH_ACCESS_SECONDS
says otherwise), a refresh token 30 days and is replaced at each use; a refresh token presented a
second time means two parties hold it, so its grant is revoked. A code lasts 5 minutes, once.
Pending consents live in this process's memory (at most MAX_PENDING, 10 minutes each).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl, ValidationError
from starlette.authentication import AuthenticationError

from soul_mcp.core import tokens
from soul_mcp.core.dates import now_stored, now_utc, to_stored
from soul_mcp.core.text import clean_name
from soul_mcp.errors import SoulError, StorageError
from soul_mcp.models import SCOPES
from soul_mcp.server.access import OAUTH_AUTHOR_CLAIM
from soul_mcp.server.client_documents import (
    CACHE_SECONDS,
    ClientDocumentError,
    fetch_client_document,
    is_document_id,
)
from soul_mcp.storage.oauth_rows import IssuedTokens, OAuthCode, OAuthGrant, OAuthStore

if TYPE_CHECKING:
    from soul_mcp.server.access import StoreTokenVerifier
    from soul_mcp.server.state import SelfHolder

log = logging.getLogger(__name__)

CONSENT_PATH = "/consent"
MCP_PATH = "/mcp"
ACCESS_SECONDS_ENV = "SOUL_MCP_OAUTH_ACCESS_SECONDS"
REFRESH_SECONDS = 30 * 86400
CODE_SECONDS = 300
PENDING_SECONDS = 600
MAX_PENDING = 100
# Registration is open to anyone: registrations the owner has not approved are dropped after a day,
# and past this many a new one waits.
UNAPPROVED_CLIENTS_MAX = 1000
TOUCH_SECONDS = 60.0
# The claim that carries a grant's author name through the SDK's AccessToken to server/access.py.
AUTHOR_CLAIM = OAUTH_AUTHOR_CLAIM


@dataclass(frozen=True)
class OAuthOptions:
    """`public_url`: how clients reach this server, scheme and host (and port), no path; the
    issuer, and with /mcp the resource that tokens are for."""

    public_url: str
    access_seconds: int = 3600

    @property
    def resource(self) -> str:
        return self.public_url + MCP_PATH

    @property
    def local(self) -> bool:
        """Reached on loopback only: its clients run on this machine."""
        host = (urlsplit(self.public_url).hostname or "").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


@dataclass
class PendingConsent:
    """An authorization request waiting for the owner, known by its random id."""

    id: str
    client_id: str
    client_name: str
    redirect_uri: str
    redirect_uri_explicit: bool
    state: str | None
    scopes: tuple[str, ...]
    code_challenge: str
    resource: str | None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.monotonic() + PENDING_SECONDS)

    @property
    def redirect_host(self) -> str:
        return AnyUrl(self.redirect_uri).host or self.redirect_uri

    def answer(self, **params: str | None) -> str:
        """The client's redirect URI carrying `params` and the request's state."""
        return construct_redirect_uri(self.redirect_uri, **params, state=self.state)


def _hash(secret: str) -> str:
    return tokens.token_hash(secret)


def _same_resource(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class SoulAuthProvider:
    """The SDK's OAuthAuthorizationServerProvider over the store's OAuth rows."""

    def __init__(self, holder: SelfHolder, options: OAuthOptions, static: StoreTokenVerifier) -> None:
        self.holder = holder
        self.options = options
        self.static = static
        self.pending: dict[str, PendingConsent] = {}
        self._touched: dict[int, float] = {}
        self._documents: dict[str, tuple[OAuthClientInformationFull, float]] = {}

    async def store(self) -> OAuthStore:
        agent_self = await self.holder.ready()
        store = agent_self.store
        if not isinstance(store, OAuthStore):  # every store implements it; a new one must too
            raise StorageError(f"{type(store).__name__} keeps no OAuth grants")
        return store

    # Clients -----------------------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if is_document_id(client_id):
            return await self._document_client(client_id)
        registration = await (await self.store()).oauth_client(client_id)
        if registration is None:
            return None
        try:
            return OAuthClientInformationFull.model_validate_json(registration)
        except ValidationError:
            log.warning("the stored registration of an OAuth client is not valid; ignoring it")
            return None

    async def _document_client(self, client_id: str) -> OAuthClientInformationFull | None:
        """A client known by its client ID metadata document (server/client_documents.py), kept
        for CACHE_SECONDS; stored as a registered client so that its grants refer to it."""
        cached = self._documents.get(client_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            info = await fetch_client_document(client_id, allow_private=self.options.local)
        except ClientDocumentError as exc:
            log.warning("refused a client ID metadata document: %s", exc)
            return None
        if info.scope is None:  # what the SDK checks requests against; the owner narrows it
            info.scope = " ".join(SCOPES)
        await self.register_client(info)
        if len(self._documents) >= MAX_PENDING:
            self._documents.clear()
        self._documents[client_id] = (info, time.monotonic() + CACHE_SECONDS)
        return info

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        if client_info.client_id is None:
            raise RegistrationError("invalid_client_metadata", "no client_id")
        name = clean_name(client_info.client_name or "")
        if name == "unknown":
            name = f"client {client_info.client_id[:8]}"
        store = await self.store()
        a_day_ago = to_stored(now_utc() - timedelta(days=1))
        if await store.unapproved_oauth_clients(a_day_ago) >= UNAPPROVED_CLIENTS_MAX:
            log.warning(
                "refused an OAuth registration: %d registrations wait for approval", UNAPPROVED_CLIENTS_MAX
            )
            raise RegistrationError(
                "invalid_client_metadata",
                f"{UNAPPROVED_CLIENTS_MAX} registrations made in the last day wait for the owner's "
                "approval; try again later",
            )
        await store.save_oauth_client(
            client_info.client_id, name, client_info.model_dump_json(), now_stored()
        )
        log.info("registered OAuth client %r", name)

    # Authorization: to the owner's consent page -------------------------------------------------

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.resource is not None and not _same_resource(params.resource, self.options.resource):
            raise AuthorizeError(
                "invalid_target", f"this server issues tokens for {self.options.resource} only"
            )
        wanted = params.scopes or list(SCOPES)
        unknown = sorted(set(wanted) - set(SCOPES))
        if unknown:
            raise AuthorizeError(
                "invalid_scope", f"unknown scope {', '.join(unknown)}; scopes are {' '.join(SCOPES)}"
            )
        self._forget_stale()
        pending = PendingConsent(
            id=secrets.token_urlsafe(32),
            client_id=client.client_id or "",
            client_name=clean_name(client.client_name or "")
            if client.client_name
            else f"client {(client.client_id or '')[:8]}",
            redirect_uri=str(params.redirect_uri),
            redirect_uri_explicit=params.redirect_uri_provided_explicitly,
            state=params.state,
            scopes=tuple(s for s in SCOPES if s in wanted),
            code_challenge=params.code_challenge,
            resource=params.resource,
        )
        self.pending[pending.id] = pending
        return construct_redirect_uri(self.options.public_url + CONSENT_PATH, request=pending.id)

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self.pending.items() if p.expires < now]:
            del self.pending[key]
        while len(self.pending) >= MAX_PENDING:  # the oldest first: dicts keep insertion order
            del self.pending[next(iter(self.pending))]

    def consent(self, request_id: str) -> PendingConsent | None:
        pending = self.pending.get(request_id)
        if pending is None or pending.expires < time.monotonic():
            return None
        return pending

    async def approve(self, pending: PendingConsent, scopes: tuple[str, ...]) -> str:
        """The owner approved `scopes` (a part of those asked): a code, sent back to the client."""
        self.pending.pop(pending.id, None)  # one answer per request
        code = tokens.new_oauth_secret(tokens.CODE_PREFIX)
        row = OAuthCode(
            client_id=pending.client_id,
            scopes=scopes,
            redirect_uri=pending.redirect_uri,
            redirect_uri_explicit=pending.redirect_uri_explicit,
            code_challenge=pending.code_challenge,
            resource=pending.resource,
            expires_at=int(time.time()) + CODE_SECONDS,
        )
        await (await self.store()).add_oauth_code(_hash(code), row)
        log.info("the owner approved %r with scopes %s", pending.client_name, ",".join(scopes))
        return pending.answer(code=code, iss=self.options.public_url)

    def deny(self, pending: PendingConsent) -> str:
        self.pending.pop(pending.id, None)
        return pending.answer(error="access_denied", error_description="the owner did not approve")

    # Codes and tokens --------------------------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        if not authorization_code.startswith(tokens.CODE_PREFIX):
            return None
        row = await (await self.store()).find_oauth_code(_hash(authorization_code))
        if row is None or row.client_id != client.client_id:
            return None
        return AuthorizationCode(
            code=authorization_code,
            scopes=list(row.scopes),
            expires_at=row.expires_at,
            client_id=row.client_id,
            code_challenge=row.code_challenge,
            redirect_uri=AnyUrl(row.redirect_uri),
            redirect_uri_provided_explicitly=row.redirect_uri_explicit,
            resource=row.resource,
        )

    def _new_pair(self) -> tuple[str, str, IssuedTokens]:
        access = tokens.new_oauth_secret(tokens.ACCESS_PREFIX)
        refresh = tokens.new_oauth_secret(tokens.REFRESH_PREFIX)
        now = int(time.time())
        issued = IssuedTokens(
            now, _hash(access), now + self.options.access_seconds, _hash(refresh), now + REFRESH_SECONDS
        )
        return access, refresh, issued

    def _answer(self, access: str, refresh: str, scopes: list[str] | tuple[str, ...]) -> OAuthToken:
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=self.options.access_seconds,
            scope=" ".join(scopes),
            refresh_token=refresh,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        access, refresh, issued = self._new_pair()
        name = await self._client_name(client)
        grant = await (await self.store()).redeem_oauth_code(
            _hash(authorization_code.code), name, tuple(authorization_code.scopes), issued, now_stored()
        )
        if grant is None:
            raise TokenError("invalid_grant", "this authorization code was already used")
        log.info("issued tokens for %s (%r)", grant.name, grant.client_name)
        return self._answer(access, refresh, grant.scopes)

    async def _client_name(self, client: OAuthClientInformationFull) -> str:
        name = clean_name(client.client_name or "")
        return name if name != "unknown" else f"client {(client.client_id or '')[:8]}"

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        if not refresh_token.startswith(tokens.REFRESH_PREFIX):
            return None
        store = await self.store()
        row = await store.find_oauth_token(_hash(refresh_token))
        if (
            row is None
            or row.kind != "refresh"
            or row.grant.revoked_at
            or row.grant.client_id != client.client_id
        ):
            return None
        if row.used_at is not None:
            await store.revoke_oauth_grant(row.grant.id, now_stored())
            log.warning("a used refresh token of %s came back: the grant is revoked", row.grant.name)
            return None
        if row.expires_at < time.time():
            return None
        return RefreshToken(
            token=refresh_token,
            client_id=row.grant.client_id,
            scopes=list(row.grant.scopes),
            expires_at=row.expires_at,
            resource=row.grant.resource,
            subject=row.grant.name,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        access, refresh, issued = self._new_pair()
        if not await (await self.store()).rotate_oauth_refresh(
            _hash(refresh_token.token), issued, now_stored()
        ):
            raise TokenError("invalid_grant", "this refresh token was already used")
        # Tokens carry their grant's scopes: a refresh that asks for fewer is told what it has.
        return self._answer(access, refresh, refresh_token.scopes)

    async def load_access_token(self, token: str) -> AccessToken | None:
        """Both kinds of bearer token: the static ones and this server's access tokens."""
        if not token.startswith(tokens.ACCESS_PREFIX):
            return await self.static.verify_token(token)
        try:
            store = await self.store()
            row = await store.find_oauth_token(_hash(token))
        except StorageError as exc:
            log.error("cannot check a token: %s", exc)
            raise AuthenticationError(
                "the server cannot use its database; its operator can run `soul-mcp doctor`"
            ) from None
        if row is None or row.kind != "access" or row.grant.revoked_at or row.expires_at < time.time():
            return None
        await self._touch(store, row.grant)
        return AccessToken(
            token="",  # the secret is not kept past this check
            client_id=row.grant.client_id,
            scopes=list(row.grant.scopes),
            expires_at=row.expires_at,
            resource=row.grant.resource,
            subject=row.grant.name,
            claims={AUTHOR_CLAIM: row.grant.client_name},
        )

    async def _touch(self, store: OAuthStore, grant: OAuthGrant) -> None:
        now = time.monotonic()
        if now - self._touched.get(grant.id, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        self._touched[grant.id] = now
        try:
            await store.touch_oauth_grant(grant.id, now_stored())
        except SoulError as exc:  # bookkeeping only
            log.warning("could not record the use of %s: %s", grant.name, exc)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        """The revocation endpoint: either token ends its whole grant."""
        subject = token.subject or ""
        if subject.startswith("oauth:") and subject[6:].isdigit():
            grant = await (await self.store()).revoke_oauth_grant(int(subject[6:]), now_stored())
            if grant is not None:
                log.info("the client revoked %s (%r)", grant.name, grant.client_name)

    async def exchange_identity_assertion(
        self, client: OAuthClientInformationFull, params: Any
    ) -> OAuthToken:
        raise TokenError("unsupported_grant_type", "the JWT bearer grant is not supported")
