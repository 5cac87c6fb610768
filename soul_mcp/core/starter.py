"""What a self looks like before anyone has written one: each document's starter text and hint
(shown, never stored), taken from the documents' table in soul_mcp/names.py."""

from soul_mcp.names import DOCUMENT_SPECS, DOCUMENT_TABLE, STARTER_SOUL

__all__ = ["EMPTY_DOCUMENTS", "INTENT_HINT", "STARTER_SOUL"]

# document -> (the content shown while nothing is written, the hint that says what to write)
EMPTY_DOCUMENTS: dict[str, tuple[str, str]] = {
    spec.name: (spec.starter, spec.hint) for spec in DOCUMENT_TABLE
}
INTENT_HINT = DOCUMENT_SPECS["intent"].hint
