"""Opaque page cursors for recall.

A cursor is the offset of the next page plus a fingerprint of the query and filters it belongs to,
so a cursor reused with another query is refused instead of silently returning the wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json

from soul_mcp.errors import InvalidInput

_HELP = "pass the next_cursor from a previous recall with the same query and filters, or leave cursor out"


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def encode(offset: int, print_: str) -> str:
    raw = json.dumps({"o": offset, "f": print_}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, print_: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        offset, their_print = data["o"], data["f"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidInput(f"cursor {cursor[:40]!r} is not one this server issued; {_HELP}") from None
    if not isinstance(offset, int) or offset < 0 or offset > 1_000_000:
        raise InvalidInput(f"cursor is damaged; {_HELP}")
    if their_print != print_:
        raise InvalidInput(f"cursor belongs to a different query or filters; {_HELP}")
    return offset
