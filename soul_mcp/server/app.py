"""Build the MCP server: the tools (server/tools.py), the documents' resources and the prompts,
over one AgentSelf.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec

import anyio
from mcp.server import MCPServer
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import AnyHttpUrl

from soul_mcp import __version__
from soul_mcp.config import Settings
from soul_mcp.core import validate
from soul_mcp.errors import InvalidInput, NotFound, SoulError
from soul_mcp.models import Actor
from soul_mcp.names import DOCUMENT_TABLE, DOCUMENT_URIS
from soul_mcp.server import access
from soul_mcp.server.live import LiveUpdates
from soul_mcp.server.state import SelfHolder, Session
from soul_mcp.server.tools import TOOL_ACCESS, TOOLS

log = logging.getLogger(__name__)

P = ParamSpec("P")

INSTRUCTIONS = """\
soul-mcp keeps your persistent self: a soul (who you are, values, boundaries, voice), memories,
an intent (the note one session leaves for the next) and a north star (what matters across weeks),
plus an identity (your name, what you are, your vibe) and what you know about your user.
Every client connected to the same database shares this self.

Call wake_up first in every session (pass focus= with the task at hand). Use recall before
answering from memory, remember for anything worth keeping (decisions, preferences, facts about
people, lessons), and write_intent before the session ends. The soul and north star change rarely
and always with a reason; every change is versioned and can be restored.
"""


def _unexpected(what: str, exc: Exception) -> str:
    log.exception("%s failed unexpectedly", what)
    return f"internal error in {what}: {type(exc).__name__}; the server log has details"


def _prompt_errors(
    holder: SelfHolder,
) -> Callable[[Callable[P, Awaitable[str]]], Callable[P, Awaitable[str]]]:
    """What tool_errors does for tools, for prompts: the SDK answers a failed prompt with only
    "Error rendering prompt X"."""

    def decorate(fn: Callable[P, Awaitable[str]]) -> Callable[P, Awaitable[str]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> str:
            try:
                await holder.ready()
                return await fn(*args, **kwargs)
            except (InvalidInput, NotFound) as exc:
                raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
            except SoulError as exc:
                raise MCPError(code=INTERNAL_ERROR, message=str(exc)) from None
            except MCPError:
                raise
            except Exception as exc:
                raise MCPError(
                    code=INTERNAL_ERROR,
                    message=_unexpected(f"the {fn.__name__.removesuffix('_prompt')} prompt", exc),
                ) from None

        return wrapper

    return decorate


async def _read_resource(uri: str, read: Awaitable[str]) -> str:
    """A resource's text; any failure as a ResourceError that says what it was (the SDK would
    answer only "Error reading resource")."""
    try:
        return await read
    except SoulError as exc:
        raise ResourceError(str(exc)) from None
    except (ResourceError, MCPError):
        raise
    except Exception as exc:
        raise ResourceError(_unexpected(f"reading {uri}", exc)) from None


def _add_resources(server: MCPServer[Session], holder: SelfHolder) -> None:
    async def document_text(document: str, version: int | None = None) -> str:
        return (await (await holder.ready()).read(document, version)).content

    async def current(document: str) -> str:
        return await _read_resource(DOCUMENT_URIS[document], document_text(document))

    # One resource per document, at the same URIs live updates announce (self://north-star, ...).
    for spec in DOCUMENT_TABLE:
        document, uri = spec.name, spec.uri

        def reader(document: str = document) -> Callable[[], Awaitable[str]]:
            async def read() -> str:
                return await current(document)

            return read

        server.resource(
            uri,
            name=spec.command,
            mime_type="text/markdown",
            description=spec.resource_description,
        )(reader())

    @server.resource("self://soul/versions/{version}", name="soul-version", mime_type="text/markdown",
                     description="One stored version of the soul")  # fmt: skip
    async def soul_version_resource(version: str) -> str:
        # ASCII digits only ("²".isdigit() is true), and few enough for int() to take.
        if not (version.isascii() and version.isdigit() and len(version) <= 30):
            raise ResourceError(validate.bad_version(version))
        return await _read_resource(f"self://soul/versions/{version}", document_text("soul", int(version)))

    @server.resource("self://memories/{memory_id}", name="memory", mime_type="application/json",
                     description="One memory, whatever its status (active, forgotten or superseded)")  # fmt: skip
    async def memory_resource(memory_id: str) -> str:
        async def read() -> str:
            memory = await (await holder.ready()).get_memory(memory_id)
            return json.dumps(memory.model_dump(mode="json"), ensure_ascii=False, indent=2)

        return await _read_resource(f"self://memories/{memory_id}", read())


def _add_prompts(server: MCPServer[Session], holder: SelfHolder) -> None:
    @server.prompt(name="wake_up", description="Start a session: your assembled self and how to use it")
    @_prompt_errors(holder)
    async def wake_up_prompt(focus: str | None = None) -> str:
        woken = await holder.current().wake_up(Actor(name="wake_up prompt"), focus=focus)
        return (
            "This is your persistent self, kept by soul-mcp and shared by every client you use.\n\n"
            f"{woken.text}\n\n"
            "During this session: recall before answering from memory; remember decisions, preferences, "
            "facts about people and lessons as they happen; revise_memory when something you stored "
            "turns out wrong. Before the session ends, write_intent with what you were doing and what "
            "comes next."
        )

    @server.prompt(name="reflect", description="End a session: keep what matters and leave an intent")
    @_prompt_errors(holder)
    async def reflect_prompt() -> str:
        intent = await holder.current().read("intent")
        previous = intent.content if intent.version else "(none yet)"
        return (
            "The session is ending. Reflect on it and use your soul-mcp tools:\n"
            "1. remember each thing worth keeping (decisions, preferences, facts about people, lessons), "
            "one self-contained memory each, with kind, tags and importance. Skip small talk and secrets.\n"
            "2. revise_memory or forget memories that this session showed to be wrong or outdated.\n"
            "3. write_intent: what you were doing, where you stopped, what the next session should do.\n"
            "4. Only if something fundamental about who you are changed, write_soul with a reason.\n\n"
            f"The intent the last session left was:\n{previous}"
        )


def build_server(
    settings: Settings,
    *,
    bearer_auth: bool = False,
    auth_for: Callable[[SelfHolder], dict[str, Any]] | None = None,
) -> MCPServer[Session]:
    """A ready MCP server over the database named by `settings`. Opens nothing until it runs.

    `bearer_auth`: HTTP requests must carry a token from the tokens table (see server/http.py).
    `auth_for`: the MCPServer auth arguments instead, made over the server's holder (OAuth).
    """
    holder = SelfHolder(settings)
    auth: dict[str, Any] = {}
    if auth_for is not None:
        auth = auth_for(holder)
    elif bearer_auth:
        # The SDK wants an issuer URL with its auth settings; it is only published when the server
        # is also an OAuth authorization or resource server, which this one is not.
        auth = {
            "token_verifier": access.StoreTokenVerifier(holder),
            "auth": AuthSettings(issuer_url=AnyHttpUrl("http://localhost"), resource_server_url=None),
        }
    live = LiveUpdates()  # subscriptions to the documents, in both protocol eras

    async def watch_once_open(opened: anyio.Event) -> None:
        await opened.wait()
        async with live.watching(holder.current().store):
            await anyio.sleep_forever()

    @asynccontextmanager
    async def lifespan(_: MCPServer[Session]) -> AsyncIterator[Session]:
        async with holder.session() as session:
            if holder.opened is not None and not holder.opened.is_set():
                # The database could not be opened: serve anyway. Every call answers why (or
                # opens it, once it can), and live updates start then.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_once_open, holder.opened)
                    try:
                        yield session
                    finally:
                        tg.cancel_scope.cancel()
                return
            async with live.watching(session.agent_self.store):
                yield session

    server: MCPServer[Session] = MCPServer(
        "soul-mcp",
        title="soul-mcp: one persistent self",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        subscriptions=live.bus,
        middleware=[access.AccessMiddleware(TOOL_ACCESS)],
        **auth,
    )
    live.install(server)
    for tool in TOOLS:
        server.add_tool(tool.fn, annotations=tool.annotations, structured_output=True)
    _add_resources(server, holder)
    _add_prompts(server, holder)
    return server


def freeze_startup_heap() -> None:
    """Put what the start built (the SDK's and pydantic's models, ~100k objects) out of the garbage
    collector's reach. A serving process never frees them, and a full collection over them pauses
    whichever call it lands on by tens of milliseconds. For the serving processes only: a process
    that builds servers and drops them (the tests) would keep them all."""
    import gc

    gc.freeze()
