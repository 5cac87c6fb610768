"""The workspace layout's names: which file holds each document, and where memories live."""

from __future__ import annotations

# Which file holds each document comes from the one table of documents.
from soul_mcp.names import DOCUMENT_FILES as DOCUMENT_FILES

LONG_TERM_FILE = "MEMORY.md"
MEMORY_DIR = "memory"
# MEMORY.md is curated, long-term memory: an OpenClaw agent reads it every session. Here the tag
# sends it back to MEMORY.md on export, and importance 4 puts it among wake-up's important memories.
LONG_TERM_TAG = "long-term"
LONG_TERM_IMPORTANCE = 4
LONG_TERM_TITLE = "Long-term memory"
