"""The MCP tools, each described once in TOOLS: its function, its annotations and what access it
needs. build_server registers them from the table; access control reads the same table.

Each tool is a few lines: read the arguments, call the domain, return the model with a readable
text. Domain errors (SoulError) become tool errors whose message the model reads; the SDK would
otherwise hide the message behind "Error executing tool".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar, cast

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import ElicitationResult, Resolve
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from soul_mcp.core import AgentSelf, render
from soul_mcp.errors import SoulError
from soul_mcp.models import (
    Actor,
    Diff,
    Document,
    DocumentWrite,
    History,
    MemoryReceipt,
    MemoryView,
    RecallResult,
    RememberResult,
    WakeUp,
)
from soul_mcp.names import DocumentName
from soul_mcp.server import access
from soul_mcp.server.access import DOCUMENT_ARGUMENT, IDENTITY, READ, WRITE, ToolAccess
from soul_mcp.server.state import Session

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DocumentArg = Annotated[
    DocumentName, Field(description="which document: soul, identity, user, intent or north_star")
]
Reason = Annotated[str, Field(description="one sentence on why; required, stored with the change")]
# Integer arguments are strict: pydantic's lax mode would read true as 1 and "3" as 3.


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn domain errors into tool errors with the domain's message, and anything unexpected into
    one that says so (the SDK would answer only "Error executing tool X"). First, when the database
    could not be opened, try again, or answer why."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            ctx = kwargs.get("ctx")
            if isinstance(ctx, Context):
                await _session(ctx).holder.ready()
            return await fn(*args, **kwargs)
        except SoulError as exc:
            raise ToolError(str(exc)) from None
        except (ToolError, MCPError):
            raise
        except Exception as exc:
            # The traceback, not the arguments: they may hold the user's memories.
            log.exception("tool %s failed unexpectedly", fn.__name__)
            raise ToolError(
                f"internal error in {fn.__name__}: {type(exc).__name__}; the server log has details"
            ) from None

    return wrapper


def _session(ctx: Context) -> Session:
    return cast(Session, ctx.request_context.lifespan_context)


def _self(ctx: Context) -> AgentSelf:
    return _session(ctx).agent_self


def _actor(ctx: Context) -> Actor:
    """The token's name over HTTP, else the client's name (MCP client info); and the session id."""
    return access.caller(ctx.request_context).actor


def _result(model: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=model.model_dump(mode="json"),
    )


@tool_errors
async def wake_up(
    ctx: Context,
    focus: Annotated[
        str | None, Field(description="what this session is about; memories relevant to it are included")
    ] = None,
    budget_chars: Annotated[
        int | None,
        Field(
            strict=True, description="maximum characters of the assembled text (500 to 100000, default 8000)"
        ),
    ] = None,
) -> Annotated[CallToolResult, WakeUp]:
    """Reassemble your persistent self at the start of a session. Call this first, every session.

    Returns, within budget_chars: your soul, the intent the last session left (with who wrote it and
    how long ago), your north star, memories relevant to `focus`, important memories and recent ones.
    Read the `text` field. If something was cut to fit, `trimmed` says what; use recall for more.
    Example: wake_up(focus="refactoring the billing module")
    """
    result = await _self(ctx).wake_up(_actor(ctx), focus=focus, budget_chars=budget_chars)
    return _result(result, result.text)


@tool_errors
async def remember(
    ctx: Context,
    content: Annotated[str, Field(description="the memory, self-contained (1 to 8000 characters)")],
    kind: Annotated[
        str | None,
        Field(
            description="one of: fact, event, preference, lesson, reflection, person, other (default other)"
        ),
    ] = None,
    tags: Annotated[
        list[str] | None, Field(description="short labels for filtering, e.g. ['project-x', 'family']")
    ] = None,
    importance: Annotated[
        int | None, Field(strict=True, description="1 (minor) to 5 (vital); default 3")
    ] = None,
    occurred_at: Annotated[
        str | None,
        Field(description="when it happened: ISO date or date-time, e.g. '2024-05-08'; default now"),
    ] = None,
) -> Annotated[CallToolResult, RememberResult]:
    """Store something worth keeping across sessions: a decision, a preference, a fact about a person,
    a lesson learned, an event. Write it so it makes sense on its own months later.

    Returns the stored memory with its id. Storing the same content again (ignoring case and spacing)
    returns the existing memory with is_new=false instead of a copy (only its id and status for a
    token without the read scope).
    Example: remember(content="Maya prefers short answers with code first", kind="preference",
    tags=["maya"], importance=4)
    """
    result = await _self(ctx).remember(
        content, _actor(ctx), kind=kind, tags=tags, importance=importance, occurred_at=occurred_at
    )
    if not result.is_new and not access.may_read(ctx.request_context):
        # The stored memory's tags, author and dates are not what this caller sent.
        receipt = MemoryReceipt(id=result.memory.id, status=result.memory.status)
        result = RememberResult(memory=receipt, is_new=False)
    return _result(result, render.remember(result))


@tool_errors
async def recall(
    ctx: Context,
    query: Annotated[
        str | None,
        Field(description="natural-language words to search for; empty lists the most recent memories"),
    ] = None,
    limit: Annotated[
        int | None, Field(strict=True, description="how many memories per page, 1 to 50 (default 10)")
    ] = None,
    tags: Annotated[
        list[str] | None, Field(description="only memories carrying every one of these tags")
    ] = None,
    kind: Annotated[str | None, Field(description="only this kind (fact, event, preference, ...)")] = None,
    since: Annotated[
        str | None,
        Field(
            description="only memories from this time on: an ISO date or date-time, a month '2024-05', "
            "a year, or 'today', 'yesterday', 'last week', 'this month', '3 days ago', ... (UTC)"
        ),
    ] = None,
    until: Annotated[
        str | None,
        Field(
            description="only memories before the end of this: same forms as since; a day, month or "
            "'last week' includes all of it"
        ),
    ] = None,
    cursor: Annotated[
        str | None, Field(description="next_cursor from the previous page of the same recall")
    ] = None,
) -> Annotated[CallToolResult, RecallResult]:
    """Search your memories by meaning-bearing words, best match first (BM25 with stemming: "runs"
    finds "running"). Any text is a safe query. Call this before answering from memory.

    Returns hits with id, content, kind, tags, importance, occurred_at, author and score, plus
    next_cursor when there are more. Example: recall(query="what does Maya like for lunch", limit=5)
    """
    result = await _self(ctx).recall(
        query, limit=limit, tags=tags, kind=kind, since=since, until=until, cursor=cursor
    )
    return _result(result, render.recall(result))


@tool_errors
async def forget(
    ctx: Context,
    memory_id: Annotated[str, Field(description="the memory's id, e.g. 'm_1a2b3c4d5e6f'")],
    reason: Reason,
) -> Annotated[CallToolResult, MemoryView]:
    """Take a memory out of recall because it is wrong, outdated or unwanted. It is not deleted: it
    stays readable (self://memories/{id}) and a person can restore it with the CLI. To correct a
    memory, use revise_memory instead. Returns the memory (only its id and status for a token
    without the read scope).
    """
    memory = await _self(ctx).forget(memory_id, reason, _actor(ctx))
    if not access.may_read(ctx.request_context):
        kept = memory.model_dump(include={"id", "status", "status_reason", "status_changed_at"})
        return _result(MemoryView(**kept), f"Forgotten {memory.id} (restorable until purged).")
    text = "Forgotten (restorable until purged):\n" + render.memory(memory)
    return _result(MemoryView(**memory.model_dump()), text)


@tool_errors
async def revise_memory(
    ctx: Context,
    memory_id: Annotated[str, Field(description="the id of the memory to correct")],
    content: Annotated[str, Field(description="the corrected, complete content")],
    reason: Reason,
) -> Annotated[CallToolResult, MemoryView]:
    """Correct a memory. Stores the new content as a new memory (same kind, tags, importance and
    date) that supersedes the old one; the old one leaves recall but stays readable with a link to
    the new one. Returns the new memory (for a token without the read scope: its id, content and
    author, not what it took over from the old one).
    """
    _, new = await _self(ctx).revise(memory_id, content, reason, _actor(ctx))
    if not access.may_read(ctx.request_context):
        kept = new.model_dump(include={"id", "content", "author", "created_at", "status", "supersedes"})
        return _result(MemoryView(**kept), f"Revised {memory_id} into {new.id}.")
    return _result(MemoryView(**new.model_dump()), f"Revised {memory_id} into:\n" + render.memory(new))


async def _read(ctx: Context, document: str, version: int | None = None) -> CallToolResult:
    doc = await _self(ctx).read(document, version)
    return _result(doc, render.document(doc))


async def _write(ctx: Context, document: str, content: str, reason: str | None) -> CallToolResult:
    result = await _self(ctx).write(document, content, _actor(ctx), reason)
    return _result(result, render.write(result))


@tool_errors
async def read_soul(
    ctx: Context,
    version: Annotated[
        int | None, Field(strict=True, description="an older version number; default the current one")
    ] = None,
) -> Annotated[CallToolResult, Document]:
    """Read your soul: the identity document (who you are, values, boundaries, voice). When none has
    been written yet this returns a starter text with adopted=false and a hint.
    """
    return await _read(ctx, "soul", version)


@tool_errors
async def write_soul(
    ctx: Context,
    content: Annotated[
        str, Field(description="the whole new soul document (Markdown), up to 20000 characters")
    ],
    reason: Reason,
    approval: Annotated[ElicitationResult[Any], Resolve(access.confirm_soul)],
) -> Annotated[CallToolResult, DocumentWrite]:
    """Replace your soul with a new version. Rare and deliberate: the soul is who you are. Send the
    whole document, not a patch. The old version is kept; history and restore can bring it back.
    """
    access.require_approval(approval, "soul")
    return await _write(ctx, "soul", content, reason)


@tool_errors
async def read_intent(ctx: Context) -> Annotated[CallToolResult, Document]:
    """Read the intent: the note the last session left about what it was doing and what comes next."""
    return await _read(ctx, "intent")


@tool_errors
async def write_intent(
    ctx: Context,
    content: Annotated[
        str, Field(description="what you were doing, where you stopped, what should happen next")
    ],
) -> Annotated[CallToolResult, DocumentWrite]:
    """Leave a note for your next session (any client). Call it before a session ends or when the
    plan changes. Replaces the current intent; older ones stay in history.
    """
    return await _write(ctx, "intent", content, None)


@tool_errors
async def read_north_star(ctx: Context) -> Annotated[CallToolResult, Document]:
    """Read your north star: what matters across weeks, the direction behind daily work."""
    return await _read(ctx, "north_star")


@tool_errors
async def write_north_star(
    ctx: Context,
    content: Annotated[str, Field(description="the whole new north star (Markdown)")],
    reason: Reason,
    approval: Annotated[ElicitationResult[Any], Resolve(access.confirm_north_star)],
) -> Annotated[CallToolResult, DocumentWrite]:
    """Replace your north star with a new version, with a reason. The old version is kept."""
    access.require_approval(approval, "north_star")
    return await _write(ctx, "north_star", content, reason)


@tool_errors
async def read_document(
    ctx: Context,
    document: DocumentArg,
    version: Annotated[
        int | None, Field(strict=True, description="an older version number; default the current one")
    ] = None,
) -> Annotated[CallToolResult, Document]:
    """Read any of your documents: soul, identity (your name, what you are, your vibe), user (facts
    about your human), intent or north_star; the current version or an older one. When nothing is
    written yet, adopted=false and a hint says what to write.
    Example: read_document(document="user")
    """
    return await _read(ctx, document, version)


@tool_errors
async def write_document(
    ctx: Context,
    document: DocumentArg,
    content: Annotated[str, Field(description="the whole new document (Markdown), up to 20000 characters")],
    reason: Annotated[
        str | None,
        Field(description="one sentence on why; required for every document except the intent"),
    ] = None,
    *,
    approval: Annotated[ElicitationResult[Any], Resolve(access.confirm_document)],
) -> Annotated[CallToolResult, DocumentWrite]:
    """Store a new version of a document: soul, identity, user, intent or north_star. Send the whole
    document, not a patch; the old version is kept and restore can bring it back. Identical content
    stores nothing (changed=false).
    Example: write_document(document="user", content="# User\n- Name: Maya\n- Timezone: Europe/Berlin",
    reason="Maya told me her timezone")
    """
    access.require_approval(approval, document)
    return await _write(ctx, document, content, reason)


@tool_errors
async def history(
    ctx: Context,
    document: DocumentArg,
    limit: Annotated[
        int | None, Field(strict=True, description="how many versions, 1 to 100 (default 20)")
    ] = None,
    before_version: Annotated[
        int | None, Field(strict=True, description="only versions older than this (for paging)")
    ] = None,
) -> Annotated[CallToolResult, History]:
    """List the versions of a document, newest first, each with its author, time, size and reason."""
    result = await _self(ctx).history(document, limit=limit, before_version=before_version)
    return _result(result, render.history(result))


@tool_errors
async def restore(
    ctx: Context,
    document: DocumentArg,
    version: Annotated[int, Field(strict=True, description="the version to bring back (see history)")],
    reason: Reason,
    approval: Annotated[ElicitationResult[Any], Resolve(access.confirm_restore)],
) -> Annotated[CallToolResult, DocumentWrite]:
    """Make an old version of a document current again. It is stored as a new version; history is
    never rewritten, so a restore can itself be undone.
    """
    access.require_approval(approval, document)
    result = await _self(ctx).restore(document, version, reason, _actor(ctx))
    return _result(result, render.write(result))


@tool_errors
async def diff(
    ctx: Context,
    document: DocumentArg,
    from_version: Annotated[int, Field(strict=True, description="the older version")],
    to_version: Annotated[int, Field(strict=True, description="the newer version")],
) -> Annotated[CallToolResult, Diff]:
    """Show what changed between two versions of a document, as a unified diff."""
    result = await _self(ctx).diff(document, from_version, to_version)
    return _result(result, render.diff(result))


READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
ADDS = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
CHANGES = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


@dataclass(frozen=True)
class Tool:
    """One tool: the function the server registers (its name is the tool's), the hints clients
    see, and what access a call needs (server/access.py)."""

    fn: Callable[..., Awaitable[CallToolResult]]
    annotations: ToolAnnotations
    access: ToolAccess

    @property
    def name(self) -> str:
        return self.fn.__name__


# In the order tools/list shows them.
TOOLS: tuple[Tool, ...] = (
    # It records that a session began, but starting a session is reading.
    Tool(wake_up, CHANGES, ToolAccess(READ)),
    Tool(remember, ADDS, ToolAccess(WRITE)),
    Tool(recall, READ_ONLY, ToolAccess(READ)),
    Tool(forget, CHANGES, ToolAccess(WRITE)),
    Tool(revise_memory, CHANGES, ToolAccess(WRITE)),
    Tool(read_soul, READ_ONLY, ToolAccess(READ)),
    Tool(write_soul, ADDS, ToolAccess(IDENTITY, changes="soul", confirms=True)),
    Tool(read_intent, READ_ONLY, ToolAccess(READ)),
    Tool(write_intent, ADDS, ToolAccess(WRITE, changes="intent")),
    Tool(read_north_star, READ_ONLY, ToolAccess(READ)),
    Tool(write_north_star, ADDS, ToolAccess(IDENTITY, changes="north_star", confirms=True)),
    Tool(read_document, READ_ONLY, ToolAccess(READ)),
    # Identity to change an identity document, write for the others.
    Tool(write_document, ADDS, ToolAccess(WRITE, changes=DOCUMENT_ARGUMENT, confirms=True)),
    Tool(history, READ_ONLY, ToolAccess(READ)),
    Tool(restore, CHANGES, ToolAccess(WRITE, changes=DOCUMENT_ARGUMENT, confirms=True)),
    Tool(diff, READ_ONLY, ToolAccess(READ)),
)
TOOL_ACCESS: dict[str, ToolAccess] = {tool.name: tool.access for tool in TOOLS}
TOOL_SCOPES: dict[str, str] = {tool.name: tool.access.scope for tool in TOOLS}
