"""Numbers in words for people: counts with their plural, sizes in bytes, KB, MB or GB.

Shared by the command line and the checks of `soul-mcp doctor`, whose details are text too.
"""

from __future__ import annotations


def count(n: int, noun: str, plural: str = "") -> str:
    """'1 version', '2 versions', '1 memory' ('memories' given as the plural)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # unreachable; keeps type checkers content
