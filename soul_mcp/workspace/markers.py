"""The marker line under each exported memory: `<!-- soul: at=... kind=... by=... -->`.

It keeps what the memory's text cannot say (when, what kind, how important, its tags, who wrote it),
so that export and import round-trip losslessly. Values escape `%`, whitespace, `<` and `>` as %XX.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from soul_mcp.errors import InvalidInput
from soul_mcp.models import Memory

MARKER_LINE = re.compile(r"^[ \t]*<!-- soul: (.*) -->[ \t]*$")
_ESCAPE = re.compile(r"[%\s<>\x00-\x1f\x7f]")
MARKER_KEYS = ("at", "kind", "importance", "tags", "by")
# An author read from a marker is stored as imported:<by>, so nobody passes for a client by writing
# a file; export drops the prefix again. AUTHOR_CHARS is the longest author name an Actor keeps.
IMPORTED_PREFIX = "imported:"
AUTHOR_CHARS = 100


def _escape(value: str) -> str:
    return _ESCAPE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), value)


def marker(memory: Memory) -> str:
    fields = [f"at={memory.occurred_at}", f"kind={memory.kind}", f"importance={memory.importance}"]
    if memory.tags:
        fields.append("tags=" + ",".join(_escape(t) for t in memory.tags))
    fields.append(f"by={_escape(memory.author.removeprefix(IMPORTED_PREFIX))}")
    return f"<!-- soul: {' '.join(fields)} -->"


def parse_marker(body: str) -> dict[str, str]:
    """The values of a marker's inside (what MARKER_LINE captures), unescaped."""
    values: dict[str, str] = {}
    for token in body.split():
        key, sep, value = token.partition("=")
        if not sep or key not in MARKER_KEYS:
            raise InvalidInput(
                f"the soul marker has {token!r}; a marker holds {', '.join(k + '=' for k in MARKER_KEYS)} "
                "e.g. <!-- soul: at=2024-05-08T14:30:00Z kind=fact importance=3 tags=a,b by=me -->"
            )
        values[key] = unquote(value)
    return values
