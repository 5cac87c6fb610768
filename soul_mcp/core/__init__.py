"""The domain: one self (documents, memories, wake-up). Knows nothing of MCP or SQL."""

from soul_mcp.core.agent_self import AgentSelf

__all__ = ["AgentSelf"]
