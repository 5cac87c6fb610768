"""The MCP SDK's private parts soul-mcp reaches for, each behind a check.

The SDK (2.3) has no public way to add a request handler to an MCPServer, to run one on streams of
our choosing, or to tell which connection a request came on. Each function here reaches for the
private attribute that does it, and returns None when an SDK release has moved or changed it, so
that the caller falls back (and says why) instead of failing. Imports nothing from the SDK: the
warm start uses it before the SDK is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mcp.server.connection import Connection
    from mcp.server.context import ServerRequestContext
    from mcp.server.lowlevel.server import Server


def lowlevel_server(server: object) -> Server[Any] | None:
    """The low-level server under an MCPServer, if it still has what soul-mcp calls on it."""
    lowlevel = getattr(server, "_lowlevel_server", None)
    wanted = ("add_request_handler", "run", "create_initialization_options")
    if lowlevel is None or not all(callable(getattr(lowlevel, name, None)) for name in wanted):
        return None
    return cast("Server[Any]", lowlevel)


def connection(ctx: ServerRequestContext[Any, Any]) -> Connection | None:
    """The connection a request came on: it lasts from a subscribe to the unsubscribe, where the
    request's ServerSession does not (the SDK builds one per request)."""
    found = getattr(ctx.session, "_connection", None)
    if found is None or not callable(getattr(found, "send_resource_updated", None)):
        return None
    return cast("Connection", found)
