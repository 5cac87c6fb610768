"""Storage behind a narrow interface: the domain talks to a `Store`, never to SQL."""

from soul_mcp.storage.base import SearchHit, SearchQuery, Store
from soul_mcp.storage.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "SearchHit", "SearchQuery", "Store"]
