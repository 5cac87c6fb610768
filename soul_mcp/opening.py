"""The one place that opens a self's parts from settings: which store, which semantic indexer.

The domain (core/) names only the protocols (`Store`, `EmbeddingStore`); a second backend is
chosen here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from soul_mcp.config import Settings
from soul_mcp.storage.base import Store

# Imported with the domain, as before this module existed: the server's warm start imports it ahead
# of the first request, so that opening the database at the first request does not wait for it.
from soul_mcp.storage.sqlite import SQLiteStore

if TYPE_CHECKING:
    from soul_mcp.semantic.indexer import SemanticIndexer


async def open_store(settings: Settings) -> Store:
    """The store the settings name (the SQLite file at `db_path`: the only backend today)."""
    return await SQLiteStore.open(Path(settings.db_path), settings.synchronous)


def open_semantic(settings: Settings) -> SemanticIndexer | None:
    """The semantic indexer the settings ask for; None when semantic search is off. Its background
    thread opens a store of its own (connections are not shared between event loops)."""
    if settings.semantic.mode == "off":
        return None
    from soul_mcp.semantic.indexer import SemanticIndexer

    async def open_embedding_store() -> SQLiteStore:
        return await SQLiteStore.open(Path(settings.db_path), settings.synchronous)

    return SemanticIndexer.from_settings(settings.semantic, open_embedding_store)
