"""Client ID metadata documents (the MCP authorization spec since 2025-11-25,
draft-ietf-oauth-client-id-metadata-document): a client whose client_id is an https URL needs no
registration; its metadata is the JSON document at that URL, fetched when it asks to authorize.

What is checked: an https URL with a path, a host that resolves to public addresses only (unless
this server itself is reached on loopback, where its clients are on this machine too), no redirect,
an answer within FETCH_SECONDS and MAX_BYTES, a `client_id` in the document equal to the URL, at
least one redirect URI, and public-client authentication (`none`: this server holds no client keys).
The SDK then checks the redirect URI of each request against the document's, as for any client.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import ValidationError

FETCH_SECONDS = 5.0
MAX_BYTES = 64 * 1024
CACHE_SECONDS = 300.0


class ClientDocumentError(ValueError):
    """The document cannot stand for this client; the message says why."""


def is_document_id(client_id: str) -> bool:
    parts = urlsplit(client_id)
    return parts.scheme == "https" and bool(parts.hostname) and parts.path not in ("", "/")


async def _check_host(host: str, port: int, allow_private: bool) -> None:
    if allow_private:
        return
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ClientDocumentError(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise ClientDocumentError(f"{host} resolves to {address}, which is not a public address")


async def fetch_client_document(client_id: str, allow_private: bool) -> OAuthClientInformationFull:
    if not is_document_id(client_id):
        raise ClientDocumentError("a client ID document's URL is https with a path")
    parts = urlsplit(client_id)
    await _check_host(parts.hostname or "", parts.port or 443, allow_private)
    # The system's trust store (and SSL_CERT_FILE), as a browser on this machine would trust.
    async with httpx2.AsyncClient(
        verify=ssl.create_default_context(), timeout=FETCH_SECONDS, follow_redirects=False
    ) as http:
        try:
            async with http.stream("GET", client_id, headers={"accept": "application/json"}) as answer:
                if answer.status_code != 200:
                    raise ClientDocumentError(f"{client_id} answered {answer.status_code}")
                body = b""
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise ClientDocumentError(f"{client_id} is larger than {MAX_BYTES} bytes")
        except httpx2.HTTPError as exc:
            raise ClientDocumentError(f"cannot fetch {client_id}: {exc}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise ClientDocumentError(f"{client_id} is not JSON") from None
    if not isinstance(document, dict) or document.get("client_id") != client_id:
        raise ClientDocumentError(f"the document's client_id is not {client_id}")
    if document.get("token_endpoint_auth_method", "none") != "none":
        raise ClientDocumentError("only public clients (token_endpoint_auth_method none) are accepted")
    document.pop("client_secret", None)
    try:
        info = OAuthClientInformationFull.model_validate({**document, "token_endpoint_auth_method": "none"})
    except ValidationError as exc:
        raise ClientDocumentError(
            f"the document is not valid client metadata: {exc.errors()[0]['msg']}"
        ) from None
    if not info.redirect_uris:
        raise ClientDocumentError("the document names no redirect_uris")
    return info
