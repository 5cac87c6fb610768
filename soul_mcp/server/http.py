"""`soul-mcp serve --http`: one process, one database, many clients over Streamable HTTP.

What protects it, outermost first:
- `McpEndpointGuard` (here): POST /mcp must be JSON (415 otherwise), and a graceful stop (below).
- bearer tokens (server/access.py, the tokens table): 401 with WWW-Authenticate without a valid
  one, unless --insecure-no-auth, which is refused off loopback; with --oauth, also the access
  tokens of soul-mcp's own authorization server (server/oauth.py, its consent page
  server/consent.py), whose endpoints get the same Host checks (`HostGuard`);
- the SDK's Host/Origin checks against DNS rebinding (421 / 403): always on, for the loopback
  names plus every --allowed-host; binding any other address requires at least one;
- the SDK's body limit (413): `max_body_bytes`, 1 MiB unless the text limits are raised;
- then the SDK's JSON-RPC parsing (400 with a parse error) and the per-call scope checks.

A graceful stop (SIGTERM, SIGINT): uvicorn stops accepting connections and waits for open ones.
Calls in flight run to the end and get their answers; the long-lived streams that would otherwise
keep it waiting (the handshake era's GET stream, the 2026 era's subscriptions/listen) are told the
client left. Then the sessions end and the database closes. GRACE_SECONDS bounds the wait.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import MCP_METHOD_HEADER
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soul_mcp.config import Settings
from soul_mcp.models import SCOPES
from soul_mcp.server.app import build_server, freeze_startup_heap

if TYPE_CHECKING:
    from soul_mcp.server.oauth import OAuthOptions
    from soul_mcp.server.state import SelfHolder

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
GRACE_SECONDS = 30
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
LONG_LIVED_METHODS = frozenset({"subscriptions/listen"})


class ConfigError(ValueError):
    """The HTTP options do not make a safe server; the message says what to change."""


class BindError(Exception):
    """The address cannot be listened on (the port is taken, the address is not this machine's)."""


@dataclass(frozen=True)
class Tls:
    """--tls-cert and --tls-key: uvicorn's ssl_certfile and ssl_keyfile."""

    cert: Path
    key: Path

    def check(self) -> None:
        """A clear error now for a file that is missing, unreadable or not a certificate and key
        that belong together, rather than uvicorn's traceback after the database is open."""
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key)):
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"--tls-cert {self.cert} and --tls-key {self.key} are not a PEM certificate and its "
                f"private key ({getattr(exc, 'reason', None) or exc})"
            ) from None


def public_url(given: str | None, host: str, port: int, tls: Tls | None) -> str:
    """The URL clients reach this server at (scheme, host, port; no path): --public-url, or on
    loopback this server's own address. OAuth wants https except on loopback (RFC 8414)."""
    scheme = "https" if tls else "http"
    if given is None:
        if not is_loopback(host):
            raise ConfigError(
                f"--oauth on {host} needs --public-url, the https address clients use to reach this server "
                "(e.g. --public-url https://soul.example.com); it names the issuer and the resource in tokens"
            )
        shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
        return f"{scheme}://{shown}:{port}"
    parts = urlsplit(given.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ConfigError(f"--public-url takes an address like https://soul.example.com, got {given!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"--public-url is the server's root (/mcp is added), without a path: got {given!r}")
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"--public-url {given} is plain http off loopback: OAuth sends tokens and the owner passphrase, so it "
            "needs https (--tls-cert and --tls-key, or a TLS reverse proxy in front)"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def max_body_bytes(settings: Settings) -> int:
    """1 MiB, or more when the text limits are raised: a JSON string may take up to 12 bytes per
    character (a \\uXXXX surrogate pair), plus room for the envelope."""
    largest = max(settings.limits.document_chars, settings.limits.memory_chars)
    return max(1024 * 1024, 12 * largest + 64 * 1024)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_security(host: str, allowed_hosts: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection on: the loopback names, plus each --allowed-host (any port unless
    it names one). Refuses a non-loopback bind without allowed hosts, where the SDK would switch
    the protection off."""
    if not is_loopback(host) and not allowed_hosts:
        raise ConfigError(
            f"binding {host} serves other machines, so name the host names clients use to reach "
            "this server (e.g. --allowed-host soul.home.lan or --allowed-host 192.168.1.20); requests "
            "with any other Host header are refused, which keeps DNS-rebinding protection on"
        )
    hosts: list[str] = []
    origins: list[str] = []
    for name in [*LOOPBACK_NAMES, *allowed_hosts]:
        name = name.strip()
        if not name or "/" in name:
            raise ConfigError(
                f"--allowed-host takes a host name or address with an optional port, got {name!r}"
            )
        has_port = name.rsplit(":", 1)[-1].isdigit() and not name.endswith("]")
        patterns = [name] if has_port else [name, f"{name}:*"]
        hosts += patterns
        origins += [f"{scheme}://{p}" for scheme in ("http", "https") for p in patterns]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class McpEndpointGuard:
    """The outermost layer, guarding /mcp: 415 for a POST that is not JSON, and long-lived streams
    ended cleanly on a graceful stop."""

    def __init__(self, app: ASGIApp, stopping: anyio.Event) -> None:
        self.app = app
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == MCP_PATH:
            headers = Headers(scope=scope)
            if scope["method"] == "POST":
                media_type = headers.get("content-type", "").split(";")[0].strip().lower()
                if media_type != "application/json":
                    body = {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {
                            "code": -32600,
                            "message": f"Content-Type must be application/json, got {media_type or 'none'!r}",
                        },
                    }
                    await JSONResponse(body, status_code=415)(scope, receive, send)
                    return
            if scope["method"] == "GET" or headers.get(MCP_METHOD_HEADER) in LONG_LIVED_METHODS:
                await self._stream(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A long-lived stream: ended, cleanly, when the server stops."""
        state = {"started": False, "done": False}

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        await self.app(scope, self._until_stopping(receive), watched)
        if state["started"] and not state["done"] and self.stopping.is_set():
            # The stream ended because of the stop, not because the client left: close the body
            # so the client sees the end of a response rather than a broken connection.
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _until_stopping(self, receive: Receive) -> Receive:
        """A stream's `receive` that reports the client gone once the server is stopping."""

        async def wrapped() -> Message:
            message: Message = {"type": "http.disconnect"}
            if self.stopping.is_set():
                return message
            async with anyio.create_task_group() as tg:

                async def pass_on() -> None:
                    nonlocal message
                    message = await receive()
                    tg.cancel_scope.cancel()

                async def stop() -> None:
                    await self.stopping.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(pass_on)
                tg.start_soon(stop)
            return message

        return wrapped


def host_allowed(host: str | None, patterns: list[str]) -> bool:
    """A Host header against transport_security's patterns (`name` or `name:*`), as the SDK
    matches them for /mcp."""
    if not host:
        return False
    return any(host == p or (p.endswith(":*") and host.startswith(p[:-1])) for p in patterns)


class HostGuard:
    """The DNS-rebinding Host check of /mcp for the OAuth endpoints too (not their Origin: /token
    and /register answer browser-based clients of any origin, as the SDK's CORS headers allow)."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and scope["path"] not in (MCP_PATH, "/healthz")
        if guarded and not host_allowed(Headers(scope=scope).get("host"), self.security.allowed_hosts):
            await Response("Invalid Host header", status_code=421)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn's server, telling `McpEndpointGuard` when a stop begins."""

    def __init__(self, config: uvicorn.Config, stopping: anyio.Event) -> None:
        super().__init__(config)
        self._stopping = stopping
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # called from a signal handler: hand it to the loop
            self._loop.call_soon_threadsafe(self._stopping.set)


def build_app(
    settings: Settings,
    host: str,
    allowed_hosts: list[str],
    insecure_no_auth: bool,
    stopping: anyio.Event,
    oauth: OAuthOptions | None = None,
) -> ASGIApp:
    if insecure_no_auth and not is_loopback(host):
        raise ConfigError(
            f"--insecure-no-auth serves without tokens, so it is allowed on loopback only, not on {host}; "
            "create a token instead: soul-mcp token create NAME --scope read,write"
        )
    if oauth is not None:
        if insecure_no_auth:
            raise ConfigError(
                "--oauth and --insecure-no-auth do not go together: OAuth is about who may connect"
            )
        allowed_hosts = [*allowed_hosts, urlsplit(oauth.public_url).netloc]
    security = transport_security(host, allowed_hosts)
    if oauth is None:
        server = build_server(settings, bearer_auth=not insecure_no_auth)
    else:
        server = _oauth_server(settings, oauth, security)

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> Response:
        # Served only between startup (the database is open) and shutdown; needs no token.
        return JSONResponse({"status": "ok"})

    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        max_request_body_size=max_body_bytes(settings),
        transport_security=security,
        host=host,
    )
    from soul_mcp.web.app import mount  # the web page under /ui (issue 17)

    mount(app, settings, security.allowed_hosts or [], security.allowed_origins or [], stopping)
    if oauth is None:
        return McpEndpointGuard(app, stopping)
    app.router.routes[:0] = [_authorization_server_metadata(oauth), *_resource_metadata(oauth)]
    return McpEndpointGuard(HostGuard(app, security), stopping)


def _resource_metadata(oauth: OAuthOptions) -> list[Route]:
    """The SDK's protected resource metadata (RFC 9728), with the scopes this resource knows, at
    /.well-known/oauth-protected-resource/mcp (where the 401 points) and at the root, where a
    client that was not told looks last."""
    from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
    from mcp.server.auth.routes import cors_middleware
    from mcp.shared.auth import ProtectedResourceMetadata

    metadata = ProtectedResourceMetadata.model_validate(
        {
            "resource": oauth.resource,
            "authorization_servers": [oauth.public_url],
            "scopes_supported": list(SCOPES),
            "resource_name": "soul-mcp",
        }
    )
    handler = cors_middleware(ProtectedResourceMetadataHandler(metadata).handle, ["GET", "OPTIONS"])
    paths = ("/.well-known/oauth-protected-resource" + MCP_PATH, "/.well-known/oauth-protected-resource")
    return [Route(path, endpoint=handler, methods=["GET", "OPTIONS"]) for path in paths]


def _authorization_server_metadata(oauth: OAuthOptions) -> Route:
    """The SDK's metadata, plus what it does not say: that a client may be known by its client ID
    metadata document (server/client_documents.py), which makes it a public client ("none")."""
    from mcp.server.auth.handlers.metadata import MetadataHandler
    from mcp.server.auth.routes import build_metadata, cors_middleware
    from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
    from mcp.shared.auth import OAuthMetadata
    from pydantic import AnyHttpUrl

    metadata = build_metadata(
        AnyHttpUrl(oauth.public_url),
        None,
        ClientRegistrationOptions(enabled=True, valid_scopes=list(SCOPES)),
        RevocationOptions(enabled=True),
    )
    metadata = OAuthMetadata.model_validate(
        {
            **metadata.model_dump(mode="json", exclude_none=True),
            "issuer": oauth.public_url,  # as text: a path-less issuer keeps no slash (RFC 8414 compares strings)
            "client_id_metadata_document_supported": True,
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        }
    )
    handler = cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"])
    return Route("/.well-known/oauth-authorization-server", endpoint=handler, methods=["GET", "OPTIONS"])


def _oauth_server(settings: Settings, oauth: OAuthOptions, security: TransportSecuritySettings) -> Any:
    """The MCP server with soul-mcp's authorization server: the SDK's routes over SoulAuthProvider,
    and the owner's consent page."""
    from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions

    from soul_mcp.server.access import StoreTokenVerifier
    from soul_mcp.server.consent import ConsentPage
    from soul_mcp.server.oauth import CONSENT_PATH, SoulAuthProvider

    made: list[SoulAuthProvider] = []

    def auth_for(holder: SelfHolder) -> dict[str, Any]:
        made.append(SoulAuthProvider(holder, oauth, StoreTokenVerifier(holder)))
        scopes = list(SCOPES)
        return {
            "auth_server_provider": made[0],
            # As text: AuthSettings keeps a path-less issuer without a slash (RFC 8414 compares
            # issuers as strings, and the consent page's `iss` must match it).
            "auth": AuthSettings.model_validate(
                {
                    "issuer_url": oauth.public_url,
                    "resource_server_url": oauth.resource,
                    "client_registration_options": ClientRegistrationOptions(
                        enabled=True, valid_scopes=scopes, default_scopes=scopes
                    ),
                    "revocation_options": RevocationOptions(enabled=True),
                    # Static tokens carry no resource; the provider issues tokens for this one only.
                    "validate_token_resource": False,
                }
            ),
        }

    server = build_server(settings, auth_for=auth_for)
    page = ConsentPage(made[0], TransportSecurityMiddleware(security), oauth.public_url.startswith("https:"))
    server.custom_route(CONSENT_PATH, methods=["GET", "POST"])(page.handle)
    return server


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names (both families for localhost), bound
    before the server starts: uvicorn would open the database first, then log a failed bind and
    exit 3, which means a database problem."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(
            f"cannot listen on {host}: {exc.strerror} (--host takes an address of this machine)"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sockets.append(sock := socket.socket(family, kind, proto))
            if os.name == "posix":  # as asyncio does: restart at once after a stop (TIME_WAIT)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = f"port {port} on {host} is already in use: stop the other server or pass --port"
        else:
            message = f"cannot listen on {host} port {port}: {exc.strerror or exc}"
        raise BindError(message) from None
    return sockets


async def _open_once(settings: Settings, need_owner: bool = False) -> None:
    """A database that cannot be opened stops an HTTP server at its start, where its operator
    sees why (StorageError), instead of a server that answers every request with it. With
    `need_owner` (--oauth), so does a missing owner passphrase: nobody could approve a client."""
    from soul_mcp.core import AgentSelf
    from soul_mcp.storage.oauth_rows import OAuthStore

    agent_self = await AgentSelf.open(settings)
    try:
        store = agent_self.store
        if need_owner and (not isinstance(store, OAuthStore) or await store.owner_secret() is None):
            raise ConfigError(
                "--oauth needs the owner passphrase that approves each client: set it first with "
                "`soul-mcp owner set` (on this machine, with the same --db)"
            )
    finally:
        await agent_self.close()


def serve_http(
    settings: Settings,
    host: str,
    port: int,
    allowed_hosts: list[str],
    insecure_no_auth: bool,
    oauth: OAuthOptions | None = None,
    tls: Tls | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; raises ConfigError before binding anything if unsafe,
    BindError before opening the database if the address cannot be listened on, and StorageError
    if the database cannot be opened."""
    # sse_starlette (under the SDK) ends every SSE stream on shutdown, answers in flight included;
    # McpEndpointGuard ends only the long-lived ones, so the answers still go out.
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()

    async def main() -> None:
        stopping = anyio.Event()
        if tls is not None:
            tls.check()
        app = build_app(settings, host, allowed_hosts, insecure_no_auth, stopping, oauth)
        sockets = bind(host.strip("[]"), port)
        await _open_once(settings, need_owner=oauth is not None)
        freeze_startup_heap()
        config = uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=port,
            log_config=None,  # our logging: stderr, one format; access lines carry no headers
            timeout_graceful_shutdown=GRACE_SECONDS,
            server_header=False,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        auth = "WITHOUT tokens (--insecure-no-auth)" if insecure_no_auth else "bearer tokens required"
        if oauth is not None:
            auth = f"bearer tokens or OAuth, issuer {oauth.public_url}"
        shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
        log.info("serving Streamable HTTP at %s://%s:%d%s (%s), database %s", "https" if tls else "http", shown,
                 port, MCP_PATH, auth, settings.shown_db)  # fmt: skip
        await _Server(config, stopping).serve(sockets)

    anyio.run(main)
