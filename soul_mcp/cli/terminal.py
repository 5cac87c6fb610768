"""Output for people at a terminal: colour when it helps, aligned tables, text that fits.

Colour is used only when the stream is a terminal, `NO_COLOR` is unset or empty
(https://no-color.org) and `TERM` is not `dumb`; scripts reading a pipe get plain text. Nothing here
knows about soul-mcp's records: the CLI decides what to show, this module decides how.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import unicodedata
from collections.abc import Sequence
from typing import ClassVar, TextIO


def colour_enabled(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Style:
    """ANSI styles that turn into plain text when colour is off."""

    CODES: ClassVar[dict[str, str]] = {
        "bold": "1",
        "dim": "2",
        "red": "31",
        "green": "32",
        "yellow": "33",
        "cyan": "36",
    }

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(self.CODES[s] for s in styles)
        return f"\033[{codes}m{text}\033[0m"


def width(text: str) -> int:
    """Columns the text takes on a terminal: wide East Asian characters take two, combining marks none."""
    total = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        total += 2 if unicodedata.east_asian_width(char) in {"W", "F"} else 1
    return total


def clip(text: str, columns: int) -> str:
    """The first line of text, cut to `columns` with an ellipsis when longer."""
    first, _, rest = text.strip().partition("\n")
    if width(first) <= columns and not rest:
        return first
    out, used = "", 0
    for char in first:
        w = width(char)
        if used + w > columns - 1:
            break
        out += char
        used += w
    return out + "…"


def terminal_columns() -> int:
    """The terminal's width ($COLUMNS first); 120 when stdout is not a terminal."""
    return shutil.get_terminal_size((120, 24)).columns


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    style: Style,
    right: Sequence[int] = (),
    indent: str = "",
) -> str:
    """Rows under bold headers, columns padded to their widest cell; `right` aligns numbers."""
    widths = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str], bold: bool = False) -> str:
        parts = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - width(cell))
            text = pad + cell if i in right else cell + (pad if i < len(cells) - 1 else "")
            parts.append(style(text, "bold") if bold else text)
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers, bold=True), *(line(r) for r in rows)])


def wrap(label: str, text: str) -> str:
    """`label` then `text`, wrapped to the terminal with the continuation lines under the text."""
    return textwrap.fill(
        text,
        width=max(60, terminal_columns()),
        initial_indent=label,
        subsequent_indent=" " * len(label),
        break_on_hyphens=False,
    )
