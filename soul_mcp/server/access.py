"""Who is calling, what they may do, and how identity changes are guarded: the one place for it.

- `caller(ctx)`: the name recorded as author (the token's name over HTTP, the client's name
  otherwise), its scopes and its session id.
- Scopes: `read` (wake_up, recall, read_*, history, diff, resources, prompts), `write` (remember,
  forget, revise_memory, write_intent, writing or restoring the intent and the user document) and
  `identity` (writing or restoring the soul, the north star and the identity document). Over stdio and in-process there is no token: the process that
  started the server is trusted with every scope, as it owns the database file anyway.
- The soul policy (`Settings.soul_policy`): `open` lets identity writes through (each one is
  versioned and restorable), `locked` refuses them over MCP, `confirm` asks through MCP
  elicitation and refuses when the client cannot ask. The client answers the form: nothing in MCP
  proves that a person did, so only `locked` (and the CLI) guarantees a person made a change.

`AccessMiddleware` checks every request before the SDK looks at the arguments, so a missing scope
or a locked soul is refused before anything else happens (a human is never asked to confirm a call
that would be refused anyway). The confirm step runs inside the identity tools as a resolver
(`Annotated[Approval, Resolve(confirm_identity)]`), because that is how the SDK elicits in both
protocol eras: a server-to-client request mid-call in the handshake era, an InputRequiredResult
and a retry in the 2026-07-28 era.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import AcceptedElicitation, Elicit, ElicitationResult
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_REQUEST, CallToolResult, TextContent
from pydantic import BaseModel, Field
from starlette.authentication import AuthenticationError

from soul_mcp.core.text import clean_name
from soul_mcp.errors import SoulError, StorageError
from soul_mcp.models import SCOPES, Actor
from soul_mcp.names import DOCUMENT_SPECS, IDENTITY_DOCUMENTS

if TYPE_CHECKING:
    from soul_mcp.server.state import SelfHolder, Session

log = logging.getLogger(__name__)

# The claim of an OAuth access token that names the grant's author (server/oauth.AUTHOR_CLAIM,
# repeated here so that this module does not import the authorization server).
OAUTH_AUTHOR_CLAIM = "soul_author"

READ, WRITE, IDENTITY = "read", "write", "identity"
ALL_SCOPES = frozenset(SCOPES)

# The tool changes the document its `document` argument names.
DOCUMENT_ARGUMENT = "<document argument>"


@dataclass(frozen=True)
class ToolAccess:
    """What a call to one tool needs (each tool's is in server/tools.py's table).

    `scope` is what the call needs unless it changes an identity document (names.IDENTITY_DOCUMENTS),
    which needs `identity`; `changes` is the document it changes: a name, DOCUMENT_ARGUMENT or None.
    `confirms`: it carries the confirm resolver (an `approval` parameter); under `confirm` any other
    identity change is refused, because there would be no way to ask.
    """

    scope: str
    changes: str | None = None
    confirms: bool = False


# A tool nobody classified (the SDK will say it does not exist): `read_*` reads; anything else
# needs what changing the document it names needs, and `identity` when it names none: fail closed.
_UNCLASSIFIED_READ = ToolAccess(READ)
_UNCLASSIFIED = ToolAccess(WRITE, changes=DOCUMENT_ARGUMENT)
# Requests other than tools/call that reveal the self's content.
READ_METHODS = frozenset(
    {"resources/read", "resources/subscribe", "subscriptions/listen", "prompts/get", "completion/complete"}
)


def access_rule(tools: Mapping[str, ToolAccess], tool: str) -> ToolAccess:
    """The tool's entry in the table, or the rule for a tool nobody classified."""
    rule = tools.get(tool)
    if rule is not None:
        return rule
    return _UNCLASSIFIED_READ if tool.startswith("read_") else _UNCLASSIFIED


def identity_document(rule: ToolAccess, arguments: Mapping[str, Any]) -> str | None:
    """The identity document this tool call would change, or None."""
    document = arguments.get("document") if rule.changes == DOCUMENT_ARGUMENT else rule.changes
    return document if isinstance(document, str) and document in IDENTITY_DOCUMENTS else None


def tool_scope(rule: ToolAccess, arguments: Mapping[str, Any]) -> str:
    """The scope a call needs."""
    if identity_document(rule, arguments):
        return IDENTITY
    if rule.changes == DOCUMENT_ARGUMENT and not isinstance(arguments.get("document"), str):
        return IDENTITY  # no document named: fail closed
    return rule.scope


# Who is calling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: frozenset[str]
    session_id: str | None
    oauth: bool = False  # through an OAuth grant rather than a static token

    @property
    def actor(self) -> Actor:
        return Actor(name=self.name, session_id=self.session_id)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def caller(rctx: ServerRequestContext[Any, Any]) -> Caller:
    """Who sent this request. Works for tools (ctx.request_context) and for middleware."""
    session: Session = rctx.lifespan_context
    client = None
    try:
        params = rctx.session.client_params
        if params is not None and params.client_info is not None:
            client = params.client_info.name
    except (AttributeError, RuntimeError):
        client = None
    if client is not None:  # any program picks its name: shown in forms and errors, so made safe
        client = clean_name(client)
    request = rctx.request
    if request is None:
        # stdio or in-process: one connection per lifespan, so the lifespan's id is the session's.
        return Caller(client or "unknown client", ALL_SCOPES, session.session_id)
    user = request.scope.get("user")
    oauth = False
    if isinstance(user, AuthenticatedUser):
        token = user.access_token
        name, scopes = token.client_id, frozenset(user.scopes)
        # An OAuth grant (server/oauth.py) writes as its client's name; a static token as its own.
        author = (token.claims or {}).get(OAUTH_AUTHOR_CLAIM)
        if isinstance(author, str):
            name, oauth = author, True
    else:  # --insecure-no-auth on loopback
        name, scopes = client or "unknown client", ALL_SCOPES
    # One HTTP server serves many MCP sessions under one lifespan, so the session id comes from
    # the request. Handshake era: the transport's Mcp-Session-Id, stored as a digest because with
    # the token it addresses a live session and authors are readable by every client. The
    # 2026-07-28 era has no sessions: each client (token and client name) gets one id per server
    # run, which keeps its memories of a day together for recall's context neighbours.
    transport_session = request.headers.get("mcp-session-id")
    if transport_session:
        session_id = _digest(transport_session)
    else:
        session_id = _digest(session.session_id, name, client or "")
    return Caller(name, scopes, session_id, oauth)


def may_read(rctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the caller may read the self. A result to one that may not (a write-only token)
    carries only what it sent and the ids it needs, or writing would be a way to read."""
    return READ in caller(rctx).scopes


def _missing_scope(who: Caller, scope: str, what: str) -> str:
    have = ", ".join(s for s in SCOPES if s in who.scopes) or "none"
    if who.oauth:
        return (
            f"{what} needs the '{scope}' scope, and the owner approved {have} for {who.name}. "
            f"Connect again and ask the owner to approve '{scope}' on the consent page"
        )
    return (
        f"{what} needs the '{scope}' scope, and the token '{who.name}' has {have}. "
        f"Create a token that has it: soul-mcp token create NAME --scope {','.join(sorted({*who.scopes, scope}, key=SCOPES.index))}"
    )


def _edit_hint(document: str) -> str:
    spec = DOCUMENT_SPECS.get(document)
    return f"soul-mcp {spec.command if spec else document} edit"


def _label(document: str) -> str:
    return document.replace("_", " ")


class AccessMiddleware:
    """Refuses, before anything runs, a request outside the caller's scopes or the soul policy.

    `tools`: each tool's access rule (server/tools.py's table).
    """

    def __init__(self, tools: Mapping[str, ToolAccess]) -> None:
        self.tools = tools

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:  # notifications carry nothing to guard
            return await call_next(ctx)
        if ctx.method == "tools/call":
            params = ctx.params or {}
            tool, arguments = params.get("name"), params.get("arguments") or {}
            if isinstance(tool, str) and isinstance(arguments, Mapping):
                refusal = self._refuse_tool(ctx, access_rule(self.tools, tool), tool, arguments)
                if refusal is not None:
                    log.info("refused %s: %s", tool, refusal)
                    return CallToolResult(content=[TextContent(type="text", text=refusal)], is_error=True)
        elif ctx.method in READ_METHODS:
            who = caller(ctx)
            if READ not in who.scopes:
                raise MCPError(code=INVALID_REQUEST, message=_missing_scope(who, READ, ctx.method))
        return await call_next(ctx)

    @staticmethod
    def _refuse_tool(
        ctx: ServerRequestContext[Any, Any], rule: ToolAccess, tool: str, arguments: Mapping[str, Any]
    ) -> str | None:
        who = caller(ctx)
        scope = tool_scope(rule, arguments)
        if scope not in who.scopes:
            return f"Error executing tool {tool}: " + _missing_scope(who, scope, tool)
        document = identity_document(rule, arguments)
        if document is None:
            return None
        policy = ctx.lifespan_context.soul_policy
        if policy == "locked":
            return (
                f"Error executing tool {tool}: the {_label(document)} is locked (soul policy 'locked'): "
                f"identity changes only from the command line, by a person: {_edit_hint(document)}"
            )
        if policy == "confirm" and not rule.confirms:
            return f"Error executing tool {tool}: changing the {_label(document)} needs a person's confirmation ({_edit_hint(document)})"
        return None


# Confirming identity changes ---------------------------------------------------------------------


class Approval(BaseModel):
    """What the confirm resolver decided without asking (open policy, or nothing to guard)."""

    asked: bool = False


class Confirmation(BaseModel):
    """The form a person fills in when the agent wants to change its identity."""

    approve: bool = Field(title="Allow this change", description="Allow the agent to make this change?")


PREVIEW_CHARS = 1500


def _can_elicit(ctx: Context[Any, Any]) -> bool:
    """Whether the client can show the person a form: form elicitation declared, and a way to ask."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return False
    # The 2026-07-28 era asks through InputRequiredResult; the handshake era needs a back-channel.
    version = ctx.protocol_version or ""
    return version >= "2026-07-28" or ctx.session.can_send_request


def gate(ctx: Context[Any, Any], document: str, request: str) -> Approval | Elicit[Confirmation]:
    """The identity policy for one change: let it through, or ask the person (`request` says what)."""
    if document not in IDENTITY_DOCUMENTS:
        return Approval()
    session: Session = ctx.request_context.lifespan_context
    if session.soul_policy == "open":
        return Approval()
    if session.soul_policy == "locked":  # the middleware refuses first; this is the second lock
        raise ToolError(
            f"the {_label(document)} is locked (soul policy 'locked'): use {_edit_hint(document)}"
        )
    if not _can_elicit(ctx):
        raise ToolError(
            f"changing the {_label(document)} needs a person's confirmation (soul policy 'confirm'), and this "
            f"client cannot ask (it does not support MCP elicitation). A person can make the change "
            f"with: {_edit_hint(document)}"
        )
    who = caller(ctx.request_context)
    return Elicit(
        f"{who.name} wants to {request}\n\nAllow this change only if you, a person, want it: it "
        "changes who the agent is for every client that shares this self (the old version stays "
        "in history and can be restored).",
        Confirmation,
    )


def _preview(content: str) -> str:
    if len(content) <= PREVIEW_CHARS:
        return content
    return content[:PREVIEW_CHARS] + f"\n[... {len(content) - PREVIEW_CHARS:,} more characters]"


def _replace(
    ctx: Context[Any, Any], document: str, content: str, reason: str | None
) -> Approval | Elicit[Confirmation]:
    label = _label(document)
    return gate(
        ctx,
        document,
        f"replace its {label}.\nReason: {reason or '(none given)'}\n\nThe new {label}:\n{_preview(content)}",
    )


async def confirm_soul(ctx: Context[Any, Any], content: str, reason: str) -> Approval | Elicit[Confirmation]:
    return _replace(ctx, "soul", content, reason)


async def confirm_north_star(
    ctx: Context[Any, Any], content: str, reason: str
) -> Approval | Elicit[Confirmation]:
    return _replace(ctx, "north_star", content, reason)


async def confirm_document(
    ctx: Context[Any, Any], document: str, content: str, reason: str | None
) -> Approval | Elicit[Confirmation]:
    return _replace(ctx, document, content, reason)


async def confirm_restore(
    ctx: Context[Any, Any], document: str, version: int, reason: str
) -> Approval | Elicit[Confirmation]:
    return gate(ctx, document, f"restore version {version} of its {_label(document)}.\nReason: {reason}")


def require_approval(outcome: ElicitationResult[Any], document: str) -> None:
    """Go on only when the policy let the change through or the person approved it."""
    if isinstance(outcome, AcceptedElicitation):
        data = outcome.data
        if isinstance(data, Approval) or (isinstance(data, Confirmation) and data.approve):
            return
    raise ToolError(
        f"the person did not approve this change to the {_label(document)}, so nothing was written. "
        f"Ask them first, or they can make the change themselves with {_edit_hint(document)}"
    )


# Bearer tokens -----------------------------------------------------------------------------------

TOUCH_SECONDS = 60.0  # last_used_at is kept to the minute: one write per token per minute at most
# While the database is unavailable, a token this server accepted this recently is let through, so
# the tool answers "database unavailable, retrying" (which needs the database for everything it does)
# rather than the request failing at the door with an HTTP error the model never reads.
OUTAGE_TRUST_SECONDS = 900.0


class StoreTokenVerifier:
    """The SDK's TokenVerifier over the tokens table. Never logs or keeps the token itself."""

    def __init__(self, holder: SelfHolder) -> None:
        self.holder = holder
        self._touched: dict[str, float] = {}
        self._accepted: dict[str, tuple[AccessToken, float]] = {}  # by the token's hash

    async def verify_token(self, token: str) -> AccessToken | None:
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        try:
            agent_self = await self.holder.ready()
            info = await agent_self.check_token(token)
        except StorageError as exc:
            accepted = self._accepted.get(key)
            if accepted is not None and time.monotonic() - accepted[1] < OUTAGE_TRUST_SECONDS:
                return accepted[0]
            # Not the caller's fault, and a 401 would send them to check their token. The reason
            # (with the database's path) goes to the log only: the caller is not known yet.
            log.error("cannot check a token: %s", exc)
            raise AuthenticationError(
                "the server cannot use its database; its operator can run `soul-mcp doctor`"
            ) from None
        if info is None:
            self._accepted.pop(key, None)  # revoked (or never valid): not trusted in an outage either
            return None
        now = time.monotonic()
        if now - self._touched.get(info.name, -TOUCH_SECONDS) >= TOUCH_SECONDS:
            self._touched[info.name] = now
            try:
                await agent_self.token_used(info.name)
            except SoulError as exc:  # bookkeeping only: never refuse a request over it
                log.warning("could not record the use of token %r: %s", info.name, exc)
        # `token` is required by the model; the secret itself is not kept past this check.
        access = AccessToken(token="", client_id=info.name, scopes=list(info.scopes))
        self._accepted[key] = (access, now)
        return access
