"""Storage behind a narrow interface: the domain talks to a `Store`, never to SQL.

    base.py               Store, EmbeddingStore: the interfaces a backend implements
    schema.py             the SQLite schema and its migrations
    sqlite.py             SQLiteStore: one file, many processes; documents, memories, tokens, backup
    sqlite_rows.py        memory rows: the columns read, a row as a Memory, listing filters
    sqlite_recall.py      SQLiteStore as a RecallSource: FTS5 score parts, change log, columns
    sqlite_embeddings.py  SQLiteStore as an EmbeddingStore: which text stands for a memory, vectors

`SQLiteStore` is imported from `soul_mcp.storage.sqlite`; opening a store from settings is
`soul_mcp.opening`'s job.
"""

from soul_mcp.storage.base import EmbeddingStore, Store

__all__ = ["EmbeddingStore", "Store"]
