"""The MCP surface: the only package that imports `mcp`. Tools are thin adapters over AgentSelf."""

from soul_mcp.server.app import build_server

__all__ = ["build_server"]
