"""Every error soul-mcp raises on purpose.

    SoulError              base: its message is written for the caller (a model or a person)
    ├── InvalidInput       an argument is wrong; the message says what is allowed
    ├── NotFound           an id or version that does not exist
    ├── StorageError       the database could not do what was asked (locked too long, corrupt)
    └── EmbeddingError     the embedder (local model or endpoint) could not embed

The MCP layer turns any SoulError into a tool error whose text the model reads; the CLI prints the
message and exits with a non-zero code. Anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations


class SoulError(Exception):
    """Base class: the message is safe and useful to show to the caller."""


class InvalidInput(SoulError):
    """An argument was wrong: empty, too long, of the wrong form."""


class NotFound(SoulError):
    """The id or version asked for does not exist."""


class StorageError(SoulError):
    """The database failed in a way the caller cannot fix by changing arguments."""


class EmbeddingError(SoulError):
    """The embedder failed: the endpoint is down or answered nonsense, or the model failed.
    Recall then falls back to BM25 alone; `soul-mcp reindex` reports it."""
