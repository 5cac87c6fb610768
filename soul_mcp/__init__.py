"""soul-mcp: one persistent self (soul, memories, intent, north star) for every MCP client."""

__version__ = "0.1.0"
