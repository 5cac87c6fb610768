"""The one place that opens a self's parts from settings: which store, which semantic indexer.

The domain (core/) names only the protocols (`Store`, `EmbeddingStore`); a second backend is
chosen here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from soul_mcp.config import Settings
from soul_mcp.storage.base import EmbeddingStore, Store

# Imported with the domain, as before this module existed: the server's warm start imports it ahead
# of the first request, so that opening the database at the first request does not wait for it.
from soul_mcp.storage.sqlite import SQLiteStore
from soul_mcp.storage.sqlite_recall import snapshot_file

if TYPE_CHECKING:
    from soul_mcp.semantic.indexer import SemanticIndexer


async def open_store(settings: Settings) -> Store:
    """The store the settings name: the PostgreSQL database at `db_url`, else the SQLite file at
    `db_path`."""
    if settings.db_url:
        from soul_mcp.storage.postgres import PostgresStore  # the driver only for its users

        return await PostgresStore.open(settings.db_url)
    return await SQLiteStore.open(Path(settings.db_path), settings.synchronous)


def open_semantic(settings: Settings) -> SemanticIndexer | None:
    """The semantic indexer the settings ask for; None when semantic search is off. Its background
    thread opens a store of its own (connections are not shared between event loops)."""
    if settings.semantic.mode == "off":
        return None
    from soul_mcp.semantic.indexer import SemanticIndexer

    async def open_embedding_store() -> EmbeddingStore:
        if settings.db_url:
            from soul_mcp.storage.postgres import PostgresStore

            return await PostgresStore.open(settings.db_url, pool_size=2)
        return await SQLiteStore.open(Path(settings.db_path), settings.synchronous)

    return SemanticIndexer.from_settings(settings.semantic, open_embedding_store)


def read_ahead(settings: Settings) -> None:
    """Read what the first recall needs (numpy, the recall index's snapshot), blocking: a server
    calls this from a thread as it starts, so that it is done while the MCP SDK imports. With
    hybrid recall on, also the file of vectors beside the snapshot; when it holds vectors of the
    local model, that model is loaded too, on its own thread (without them, recall never embeds a
    query, and the model stays unloaded)."""
    if settings.db_url:  # the snapshot and the vector file are kept beside a SQLite file only
        return
    path = snapshot_file(Path(settings.db_path))
    if path is None:
        return
    from soul_mcp.recall.snapshot import read_early

    read_early(path)
    if settings.semantic.mode == "off":
        return
    from soul_mcp.recall.vectors import read_early as read_vectors_early
    from soul_mcp.recall.vectors import vectors_file
    from soul_mcp.semantic.embedders import embedder_for

    stored = read_vectors_early(vectors_file(path))
    embedder = embedder_for(settings.semantic)
    if stored is not None and embedder is not None and stored.model == embedder.name:
        load_soon = getattr(embedder, "load_soon", None)  # LocalE5's; an endpoint loads nothing
        if load_soon is not None:
            load_soon()
