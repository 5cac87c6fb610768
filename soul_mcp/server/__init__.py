"""The MCP surface: the only package that imports `mcp`. Tools are thin adapters over AgentSelf."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soul_mcp.server.app import build_server

__all__ = ["build_server"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `soul_mcp.server.warmstart` can be imported without the SDK (its whole point is
    # to answer the handshake while the SDK is still loading); `from soul_mcp.server import
    # build_server` works as before.
    if name == "build_server":
        from soul_mcp.server.app import build_server

        return build_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
