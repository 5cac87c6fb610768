"""Storage behind a narrow interface: the domain talks to a `Store`, never to SQL."""

from soul_mcp.storage.base import SearchQuery, Store
from soul_mcp.storage.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "SearchQuery", "Store"]
