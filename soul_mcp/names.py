"""The fixed vocabularies of a self: document names and memory kinds.

Kept apart from models.py (pydantic) so that the CLI can build its parser, and `serve` can start,
without importing pydantic.
"""

from typing import Literal, get_args

DocumentName = Literal["soul", "identity", "user", "intent", "north_star"]
DOCUMENTS: tuple[str, ...] = get_args(DocumentName)

MemoryKind = Literal["fact", "event", "preference", "lesson", "reflection", "person", "other"]
MEMORY_KINDS: tuple[str, ...] = get_args(MemoryKind)
