"""`serve --http --oauth`: soul-mcp as its own OAuth authorization server, driven by the SDK's own
OAuth client (`mcp.client.auth.OAuthClientProvider`) against real server processes, with a
redirect handler that plays the owner: it opens the authorize URL, types the owner passphrase on
the consent page, chooses the scopes and hands the code back. What a client would never send
(a wrong PKCE verifier, a forged consent form, a reused refresh token) is sent by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from conftest import server_env
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from test_http import (
    INITIALIZE,
    JSON_HEADERS,
    TIMEOUT,
    HttpServer,
    connect,
    free_port,
    make_tokens,
    refused,
    rows,
    start_server,
    tool,
)

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf, tokens

pytestmark = pytest.mark.anyio

PASSPHRASE = "correct horse battery staple"
CALLBACK = "http://127.0.0.1:9/callback"  # never opened: the owner hands the code back directly
ALL = ["read", "write", "identity"]


async def set_owner(database: str) -> None:
    agent_self = await AgentSelf.open(Settings.load(database))
    try:
        await agent_self.store.set_owner_secret(tokens.passphrase_hash(PASSPHRASE), "2026-12-07T00:00:00Z")  # type: ignore[attr-defined]
    finally:
        await agent_self.close()


def base(server: HttpServer) -> str:
    return f"http://127.0.0.1:{server.port}"


# The owner, and the SDK's client ----------------------------------------------------------------


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} field in the consent page:\n{page}"
    return found.group(1)


@dataclass
class Owner:
    """Plays the owner in the browser: approves `scopes` with `passphrase` on the consent page."""

    passphrase: str = PASSPHRASE
    scopes: list[str] = field(default_factory=lambda: list(ALL))
    result: AuthorizationCodeResult | None = None
    page: str = ""

    async def redirect(self, authorize_url: str) -> None:
        async with httpx2.AsyncClient(timeout=TIMEOUT) as browser:
            sent = await browser.get(authorize_url)
            assert sent.status_code == 302, sent.text
            consent_url = sent.headers["location"]
            assert "/consent?" in consent_url, consent_url
            page = await browser.get(consent_url)
            assert page.status_code == 200, page.text
            self.page = page.text
            form = {"request": hidden(page.text, "request"), "csrf": hidden(page.text, "csrf"),
                    "passphrase": self.passphrase, "scope": self.scopes, "action": "approve"}  # fmt: skip
            answer = await browser.post(consent_url.split("?")[0], data=form)
            assert answer.status_code == 302, answer.text
            query = parse_qs(urlsplit(answer.headers["location"]).query)
            self.result = AuthorizationCodeResult(
                code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
            )

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


@dataclass
class Memory:
    """The SDK's TokenStorage, in memory."""

    tokens: OAuthToken | None = None
    client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def metadata(name: str = "Test Connector") -> OAuthClientMetadata:
    return OAuthClientMetadata(
        client_name=name,
        redirect_uris=[CALLBACK],  # type: ignore[list-item]
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )


@asynccontextmanager
async def oauth_client(
    server: HttpServer, owner: Owner, storage: Memory | None = None, name: str = "Test Connector"
) -> AsyncIterator[Client]:
    auth = OAuthClientProvider(
        server.url,
        metadata(name),
        storage or Memory(),
        redirect_handler=owner.redirect,
        callback_handler=owner.callback,
    )
    async with (
        httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(TIMEOUT)) as http,
        Client(streamable_http_client(server.url, http_client=http)) as client,
    ):
        yield client


# Hand-made requests: what a real client would not send ------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def register(http: httpx2.AsyncClient, server: HttpServer, name: str = "Raw Client") -> dict[str, Any]:
    answer = await http.post(
        f"{base(server)}/register",
        json={
            "client_name": name,
            "redirect_uris": [CALLBACK],
            "grant_types": ["authorization_code", "refresh_token"],
        },
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def authorize_url(server: HttpServer, client: dict[str, Any], challenge: str, **extra: str) -> str:
    params = {"response_type": "code", "client_id": client["client_id"], "redirect_uri": CALLBACK,
              "code_challenge": challenge, "code_challenge_method": "S256", "state": "s1",
              "scope": "read write identity", "resource": server.url, **extra}  # fmt: skip
    return str(httpx2.URL(f"{base(server)}/authorize", params=params))


async def token_request(
    http: httpx2.AsyncClient, server: HttpServer, client: dict[str, Any], **form: str
) -> httpx2.Response:
    data = {"client_id": client["client_id"], "client_secret": client["client_secret"], **form}
    return await http.post(f"{base(server)}/token", data=data)


async def raw_grant(
    server: HttpServer, scopes: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register, approve and exchange by hand: (the client's registration, the token answer)."""
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = await register(http, server)
        verifier, challenge = pkce()
        owner = Owner(scopes=scopes or ["read", "write"])
        await owner.redirect(authorize_url(server, client, challenge))
        assert owner.result is not None
        answer = await token_request(http, server, client, grant_type="authorization_code", code=owner.result.code,
                                     redirect_uri=CALLBACK, code_verifier=verifier)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return client, dict(answer.json())


async def mcp_status(server: HttpServer, token: str) -> int:
    """The HTTP status of an MCP request with this bearer token."""
    headers = {**JSON_HEADERS, "authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        return (await http.post(server.url, json=INITIALIZE, headers=headers)).status_code


def cli(db: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = server_env(Path(db) if not db.startswith("postgres") else Path("/nonexistent/unused.db"))
    env["SOUL_MCP_DB"] = db
    return subprocess.run([sys.executable, "-m", "soul_mcp", *args, "--db", db], env=env, input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip


# The shared server ------------------------------------------------------------------------------


@dataclass
class Shared:
    server: HttpServer
    static: str


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    db = tmp_path_factory.mktemp("oauth") / "soul.db"
    static = anyio.run(make_tokens, db, {"laptop": "read,write"})["laptop"]
    anyio.run(set_owner, str(db))
    server = start_server(db, "--oauth")
    try:
        yield Shared(server, static)
    finally:
        server.stop()
        assert server.stopped_gracefully(), server.stderr()


async def test_discovery_leads_from_a_401_to_the_authorization_server(shared: Shared) -> None:
    server = shared.server
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        refused_call = await http.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused_call.status_code == 401
        challenge = refused_call.headers["www-authenticate"]
        prm_url = re.search(r'resource_metadata="([^"]+)"', challenge)
        assert prm_url and prm_url.group(1) == f"{base(server)}/.well-known/oauth-protected-resource/mcp"
        prm = (await http.get(prm_url.group(1))).json()
        assert prm["resource"] == server.url and prm["authorization_servers"] == [base(server)]
        assert prm["scopes_supported"] == ALL
        assert (await http.get(f"{base(server)}/.well-known/oauth-protected-resource")).json() == prm
        meta = (await http.get(f"{base(server)}/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == base(server)
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["scopes_supported"] == ALL
    assert meta["registration_endpoint"] == f"{base(server)}/register"
    assert meta["revocation_endpoint"] == f"{base(server)}/revoke"


async def test_the_sdk_client_registers_gets_consent_and_writes_as_its_name(shared: Shared) -> None:
    owner = Owner(scopes=["read", "write"])  # the owner leaves `identity` out
    async with oauth_client(shared.server, owner, name="Claude Test") as client:
        stored = await tool(client, "remember", {"content": "Ada prefers green tea in the afternoon"})
        hits = (await tool(client, "recall", {"query": "green tea"}))["hits"]
        assert [h["id"] for h in hits] == [stored["memory"]["id"]]
        refusal = await refused(client, "write_soul", {"content": "# Me\nSomeone else.\n", "reason": "test"})
    # The consent page showed who asked, where the answer goes and what it asked for.
    assert "Claude Test" in owner.page and "127.0.0.1" in owner.page
    assert all(f'value="{s}"' in owner.page for s in ALL)
    assert "'identity' scope" in refusal and "approve" in refusal
    db = str(shared.server.db)
    assert rows(shared.server.db, "SELECT author FROM memories WHERE content LIKE 'Ada prefers green%'") == [
        ("Claude Test",)
    ]
    listed = json.loads(cli(db, "token", "list", "--json").stdout)
    grants = [g for g in listed if g["kind"] == "oauth" and g["client"] == "Claude Test"]
    assert (
        len(grants) == 1
        and grants[0]["scopes"] == ["read", "write"]
        and grants[0]["name"].startswith("oauth:")
    )
    assert "Claude Test" in cli(db, "token", "list").stdout


async def test_static_tokens_keep_working_beside_oauth(shared: Shared) -> None:
    async with connect(shared.server.url, shared.static) as client:
        stored = await tool(client, "remember", {"content": "the static laptop token still works"})
    assert stored["memory"]["author"] == "laptop"


async def test_only_hashes_of_tokens_and_codes_are_stored(shared: Shared) -> None:
    _, answer = await raw_grant(shared.server)
    dump = "\n".join(map(str, rows(shared.server.db, "SELECT * FROM oauth_tokens")))
    assert answer["access_token"] not in dump and answer["refresh_token"] not in dump
    assert tokens.token_hash(answer["access_token"]) in dump
    owner_hash = rows(shared.server.db, "SELECT secret_hash FROM oauth_owner")[0][0]
    assert owner_hash.startswith("scrypt$") and PASSPHRASE not in owner_hash


async def test_refresh_rotates_and_a_reused_refresh_token_ends_the_grant(shared: Shared) -> None:
    client, first = await raw_grant(shared.server)
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        second = await token_request(http, shared.server, client, grant_type="refresh_token",
                                     refresh_token=first["refresh_token"])  # fmt: skip
        assert second.status_code == 200, second.text
        renewed = second.json()
        assert renewed["refresh_token"] != first["refresh_token"] and renewed["scope"] == "read write"
        assert await mcp_status(shared.server, renewed["access_token"]) == 200
        again = await token_request(http, shared.server, client, grant_type="refresh_token",
                                    refresh_token=first["refresh_token"])  # fmt: skip
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # Two parties held that refresh token: the whole grant ends, the new tokens too.
    assert await mcp_status(shared.server, renewed["access_token"]) == 401


async def test_token_revoke_on_the_command_line_ends_a_grant_at_once(shared: Shared) -> None:
    _, answer = await raw_grant(shared.server)
    assert await mcp_status(shared.server, answer["access_token"]) == 200
    db = str(shared.server.db)
    grant = [g for g in json.loads(cli(db, "token", "list", "--json").stdout) if g["kind"] == "oauth"][-1]
    done = cli(db, "token", "revoke", grant["name"])
    assert done.returncode == 0 and "Revoked" in done.stdout, done.stderr
    assert await mcp_status(shared.server, answer["access_token"]) == 401
    assert cli(db, "token", "revoke", "oauth:999999").returncode == 1


async def test_the_revocation_endpoint_ends_a_grant(shared: Shared) -> None:
    client, answer = await raw_grant(shared.server)
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        done = await http.post(f"{base(shared.server)}/revoke", data={
            "token": answer["access_token"], "client_id": client["client_id"], "client_secret": client["client_secret"]})  # fmt: skip
        assert done.status_code == 200, done.text
        assert await mcp_status(shared.server, answer["access_token"]) == 401
        refreshed = await token_request(http, shared.server, client, grant_type="refresh_token",
                                        refresh_token=answer["refresh_token"])  # fmt: skip
        assert refreshed.status_code == 400


async def test_a_tampered_token_is_refused(shared: Shared) -> None:
    _, answer = await raw_grant(shared.server)
    token = answer["access_token"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert await mcp_status(shared.server, tampered) == 401
    assert (
        await mcp_status(shared.server, answer["refresh_token"]) == 401
    )  # a refresh token is no access token
    assert await mcp_status(shared.server, token) == 200


async def test_a_redirect_uri_not_registered_is_refused_without_a_redirect(shared: Shared) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = await register(http, shared.server)
        _, challenge = pkce()
        answer = await http.get(
            authorize_url(shared.server, client, challenge, redirect_uri="https://evil.example/cb")
        )
    assert answer.status_code == 400 and "location" not in answer.headers
    assert (
        answer.json()["error"] == "invalid_request" and "not registered" in answer.json()["error_description"]
    )


async def test_pkce_missing_or_wrong_is_refused(shared: Shared) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = await register(http, shared.server)
        url = authorize_url(shared.server, client, "x")
        missing = await http.get(re.sub(r"&code_challenge=x", "", url))
        assert missing.status_code == 302 and "error=invalid_request" in missing.headers["location"]
        plain = await http.get(url.replace("code_challenge_method=S256", "code_challenge_method=plain"))
        assert plain.status_code == 302 and "error=invalid_request" in plain.headers["location"]
        verifier, challenge = pkce()
        owner = Owner()
        await owner.redirect(authorize_url(shared.server, client, challenge))
        assert owner.result is not None
        code = owner.result.code
        wrong = await token_request(http, shared.server, client, grant_type="authorization_code", code=code,
                                    redirect_uri=CALLBACK, code_verifier=pkce()[0])  # fmt: skip
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        assert "code_verifier" in wrong.json()["error_description"]
        right = await token_request(http, shared.server, client, grant_type="authorization_code", code=code,
                                    redirect_uri=CALLBACK, code_verifier=verifier)  # fmt: skip
        assert right.status_code == 200, right.text
        twice = await token_request(http, shared.server, client, grant_type="authorization_code", code=code,
                                    redirect_uri=CALLBACK, code_verifier=verifier)  # fmt: skip
        assert twice.status_code == 400 and twice.json()["error"] == "invalid_grant"  # a code works once


async def test_an_unknown_resource_is_refused(shared: Shared) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = await register(http, shared.server)
        answer = await http.get(
            authorize_url(shared.server, client, pkce()[1], resource="https://other.example/mcp")
        )
    assert answer.status_code == 302 and "error=invalid_target" in answer.headers["location"]


@asynccontextmanager
async def consent_form(server: HttpServer) -> AsyncIterator[tuple[httpx2.AsyncClient, str, dict[str, Any]]]:
    """A browser on a fresh consent page: (the browser, the page's URL, its form filled in)."""
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        client = await register(http, server)
        sent = await http.get(authorize_url(server, client, pkce()[1]))
        url = sent.headers["location"]
        page = (await http.get(url)).text
        form = {"request": hidden(page, "request"), "csrf": hidden(page, "csrf"), "passphrase": PASSPHRASE,
                "scope": ["read"], "action": "approve"}  # fmt: skip
        yield http, url.split("?")[0], form


async def test_an_approval_without_the_owner_passphrase_is_refused(shared: Shared) -> None:
    async with consent_form(shared.server) as (http, url, form):
        for passphrase in ("", "a guess at the passphrase"):
            answer = await http.post(url, data={**form, "passphrase": passphrase})
            assert answer.status_code == 403 and "location" not in answer.headers
            assert "not the owner passphrase" in answer.text
        approved = await http.post(url, data=form)  # the real owner, still in time
        assert approved.status_code == 302 and "code=" in approved.headers["location"]
        again = await http.post(url, data=form)  # one answer per request
        assert again.status_code == 400


async def test_a_consent_post_without_the_csrf_token_is_refused(shared: Shared) -> None:
    async with consent_form(shared.server) as (http, url, form):
        without = await http.post(url, data={k: v for k, v in form.items() if k != "csrf"})
        assert without.status_code == 403
        http.cookies.clear()  # the field, but not the cookie: a post from another site
        no_cookie = await http.post(url, data=form)
        assert no_cookie.status_code == 403 and "location" not in no_cookie.headers
        page = await http.get(f"{url}?request={form['request']}")
        cookie = page.headers["set-cookie"].lower()
        assert (
            "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
        )  # plain http here
        assert (await http.post(url, data=form)).status_code == 302


async def test_oauth_endpoints_check_the_host_header(shared: Shared) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        for path in ("/consent", "/.well-known/oauth-authorization-server", "/authorize"):
            answer = await http.get(f"{base(shared.server)}{path}", headers={"host": "evil.example"})
            assert answer.status_code == 421, path


@contextmanager
def client_documents(folder: Path, documents: dict[str, dict[str, Any]]) -> Iterator[tuple[str, Path]]:
    """An https server on loopback answering each path with its JSON document: (its origin, its
    self-signed certificate). `{origin}` in a document becomes the server's origin."""
    cert, key = self_signed(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    origin = ""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document = documents.get(self.path)
            body = json.dumps(document).replace("{origin}", origin).encode() if document else b"{}"
            self.send_response(200 if document else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    origin = f"https://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield origin, cert
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_client_known_by_its_metadata_document_needs_no_registration(tmp_path: Path) -> None:
    document = {"client_id": "{origin}/client.json", "client_name": "Doc Client", "redirect_uris": [CALLBACK],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "none"}  # fmt: skip
    forged = {**document, "client_id": "https://someone.else.example/client.json"}
    db = tmp_path / "soul.db"
    await set_owner(str(db))
    with client_documents(tmp_path, {"/client.json": document, "/forged.json": forged}) as (origin, cert):
        # The server trusts the documents' self-signed certificate as it would a system CA.
        server = start_server(db, "--oauth", env={**server_env(db), "SSL_CERT_FILE": str(cert)})
        try:
            async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
                meta = (await http.get(f"{base(server)}/.well-known/oauth-authorization-server")).json()
                assert meta["client_id_metadata_document_supported"] is True and meta["issuer"] == base(
                    server
                )
                forged_url = authorize_url(server, {"client_id": f"{origin}/forged.json"}, pkce()[1])
                refused_answer = await http.get(forged_url)
                assert (
                    refused_answer.status_code == 400
                    and "not found" in refused_answer.json()["error_description"]
                )
            owner = Owner(scopes=["read", "write"])
            auth = OAuthClientProvider(server.url, metadata("ignored"), Memory(), redirect_handler=owner.redirect,
                                       callback_handler=owner.callback, client_metadata_url=f"{origin}/client.json")  # fmt: skip
            async with (
                httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(TIMEOUT)) as http,
                Client(streamable_http_client(server.url, http_client=http)) as client,
            ):
                stored = await tool(client, "remember", {"content": "a client known by its document"})
            assert stored["memory"]["author"] == "Doc Client" and "Doc Client" in owner.page
            assert rows(db, "SELECT count(*) FROM oauth_clients") == [
                (1,)
            ]  # nothing registered through /register
        finally:
            server.stop()


@pytest.mark.slow
def test_the_typescript_sdk_oauth_client_connects_with_consent(
    shared: Shared, node_tools: Path, tmp_path: Path
) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the TypeScript client test"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MCP_NODE_MODULES": str(node_tools),
           "OWNER_PASSPHRASE": PASSPHRASE}  # fmt: skip
    script = Path(__file__).parent / "node" / "ts_oauth_client.mjs"
    done = subprocess.run([node, str(script), shared.server.url], capture_output=True, text=True, env=env,
                          timeout=90)  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    out = json.loads(done.stdout)
    assert out["unauthorized"] is True  # discovery started from the 401
    assert out["remember"]["memory"]["author"] == "TS Connector"
    assert out["writeSoul"]["isError"] is True and "'identity' scope" in out["writeSoul"]["text"]
    assert out["scope"] == "read write" and out["hasRefreshToken"] is True


# Servers of their own ---------------------------------------------------------------------------


async def test_an_expired_access_token_is_refused_and_failures_slow_down(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    await set_owner(str(db))
    env = {**server_env(db), "SOUL_MCP_OAUTH_ACCESS_SECONDS": "1"}
    server = start_server(db, "--oauth", env=env)
    try:
        client, answer = await raw_grant(server)
        assert answer["expires_in"] == 1
        await anyio.sleep(2.1)
        assert await mcp_status(server, answer["access_token"]) == 401
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            refreshed = await token_request(http, server, client, grant_type="refresh_token",
                                            refresh_token=answer["refresh_token"])  # fmt: skip
        assert await mcp_status(server, refreshed.json()["access_token"]) == 200
        # Wrong passphrases, whoever sends them: after five, even the right one waits.
        async with consent_form(server) as (http, url, form):
            for _ in range(5):
                assert (
                    await http.post(url, data={**form, "passphrase": "wrong wrong wrong"})
                ).status_code == 403
            waited = await http.post(url, data=form)
            assert waited.status_code == 429 and "Too many wrong passphrases" in waited.text
    finally:
        server.stop()


def test_oauth_refuses_to_start_without_an_owner_or_with_bad_options(tmp_path: Path) -> None:
    db = str(tmp_path / "soul.db")
    port = str(free_port())
    no_owner = cli(db, "serve", "--http", "--port", port, "--oauth")
    assert no_owner.returncode == 2 and "soul-mcp owner set" in no_owner.stderr, no_owner.stderr
    plain = cli(db, "serve", "--http", "--port", port, "--oauth", "--public-url", "http://soul.example.com")
    assert plain.returncode == 2 and "needs https" in plain.stderr
    missing = cli(
        db, "serve", "--http", "--port", port, "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", "k.pem"
    )
    assert (
        missing.returncode == 2
        and "cannot read --tls-cert" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    alone = cli(db, "serve", "--http", "--port", port, "--tls-cert", str(tmp_path / "no.pem"))
    assert alone.returncode == 2 and "go together" in alone.stderr
    short = cli(db, "owner", "set", stdin="short\n")
    assert short.returncode == 1 and "at least 12 characters" in short.stderr
    done = cli(db, "owner", "set", stdin=PASSPHRASE + "\n")
    assert done.returncode == 0, done.stderr
    assert rows(Path(db), "SELECT count(*) FROM oauth_owner") == [(1,)]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography` (a dependency of the SDK)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


async def test_tls_serves_https_and_oauth_over_it(tmp_path: Path) -> None:
    db = tmp_path / "soul.db"
    await set_owner(str(db))
    cert, key = self_signed(tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", "serve", "--http", "--port", str(port), "--db", str(db), "--oauth",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        env=server_env(db), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    server = HttpServer(process, port, db, log)
    try:
        origin = f"https://127.0.0.1:{port}"
        async with httpx2.AsyncClient(
            verify=ssl.create_default_context(cafile=cert), timeout=TIMEOUT
        ) as https:
            deadline = time.monotonic() + TIMEOUT
            while True:
                assert process.poll() is None, server.stderr()
                try:
                    health = await https.get(f"{origin}/healthz")
                    break
                except httpx2.TransportError:
                    assert time.monotonic() < deadline, server.stderr()
                    await anyio.sleep(0.1)
            assert health.json() == {"status": "ok"}
            meta = (await https.get(f"{origin}/.well-known/oauth-authorization-server")).json()
            assert meta["issuer"] == origin and meta["token_endpoint"] == f"{origin}/token"
            client = await https.post(
                f"{origin}/register", json={"client_name": "tls", "redirect_uris": [CALLBACK]}
            )
            sent = await https.get(str(httpx2.URL(f"{origin}/authorize", params={
                "response_type": "code", "client_id": client.json()["client_id"], "redirect_uri": CALLBACK,
                "code_challenge": pkce()[1], "code_challenge_method": "S256"})))  # fmt: skip
            page = await https.get(sent.headers["location"])
            assert "secure" in page.headers["set-cookie"].lower()  # the consent cookie, over https
        async with httpx2.AsyncClient(timeout=TIMEOUT) as plain:
            with pytest.raises(httpx2.TransportError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        server.stop()


async def test_the_oauth_flow_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    await set_owner(postgres_url)
    env = server_env(tmp_path / "unused.db")
    env["SOUL_MCP_DB"] = postgres_url
    server = start_server(tmp_path / "server.db", "--oauth", env=env, database=postgres_url)
    try:
        storage = Memory()
        async with oauth_client(
            server, Owner(scopes=["read", "write"]), storage, name="PG Connector"
        ) as client:
            stored = await tool(client, "remember", {"content": "the grant works on PostgreSQL too"})
            assert stored["memory"]["author"] == "PG Connector"
        assert storage.tokens is not None and storage.client is not None
        client_info = storage.client.model_dump(mode="json")
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            renewed = await token_request(http, server, client_info, grant_type="refresh_token",
                                          refresh_token=storage.tokens.refresh_token or "")  # fmt: skip
            assert renewed.status_code == 200, renewed.text
            reused = await token_request(http, server, client_info, grant_type="refresh_token",
                                         refresh_token=storage.tokens.refresh_token or "")  # fmt: skip
            assert reused.status_code == 400
        listed = json.loads(cli(postgres_url, "token", "list", "--json").stdout)
        grant = next(g for g in listed if g["kind"] == "oauth")
        assert grant["client"] == "PG Connector" and grant["revoked_at"] is not None  # the reuse ended it
        assert await mcp_status(server, renewed.json()["access_token"]) == 401
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_registrations_nobody_approved_are_dropped_after_a_day(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Registration is open to anyone; what it leaves behind does not pile up."""
    from soul_mcp.opening import open_store
    from soul_mcp.storage.oauth_rows import IssuedTokens, OAuthCode

    db = str(tmp_path / "soul.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store: Any = await open_store(Settings.load(db))
    try:
        old, recent = "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"
        await store.save_oauth_client("spam", "spam", "{}", old)
        await store.save_oauth_client("approved", "approved", "{}", old)
        await store.save_oauth_client("waiting", "waiting", "{}", recent)
        code = OAuthCode("approved", ("read",), "http://127.0.0.1/cb", True, "challenge", None, 2**40)
        await store.add_oauth_code("code-hash", code)
        issued = IssuedTokens(0, "access-hash", 2**40, "refresh-hash", 2**40)
        assert await store.redeem_oauth_code("code-hash", "approved", ("read",), issued, recent) is not None

        assert await store.unapproved_oauth_clients("2026-01-02T00:00:00Z") == 1  # "waiting"
        assert await store.oauth_client("spam") is None
        assert await store.oauth_client("approved") == "{}" and await store.oauth_client("waiting") == "{}"
    finally:
        await store.close()
