"""Output for people at a terminal: colour when it helps, aligned tables, an editor.

Colour is used only when the stream is a terminal, `NO_COLOR` is unset or empty
(https://no-color.org) and `TERM` is not `dumb`; scripts reading a pipe get plain text. Nothing here
knows about soul-mcp's records: the CLI decides what to show, this module decides how.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unicodedata
from collections.abc import Sequence
from pathlib import Path
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


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # unreachable; keeps type checkers content


# The editor ------------------------------------------------------------------------------------


class EditorError(Exception):
    """The editor could not be started or failed; the message says what to do."""


def editor_command() -> list[str]:
    """$VISUAL, then $EDITOR (either may carry arguments, e.g. 'code --wait'), then vi / notepad."""
    for name in ("VISUAL", "EDITOR"):
        value = os.environ.get(name, "").strip()
        if value:
            return shlex.split(value, posix=os.name != "nt")
    return ["notepad"] if os.name == "nt" else ["vi"]


def edit_text(initial: str, name: str) -> tuple[str, Path]:
    """Open the editor on a temporary file holding `initial`; return the saved text and the file.

    The caller deletes the file once the text is safely stored, and keeps it (and names it) when
    storing fails, so nothing typed is lost. A newline is added for the editor's sake when the text
    lacks one, and taken off again afterwards.
    """
    added_newline = bool(initial) and not initial.endswith("\n")
    handle, raw_path = tempfile.mkstemp(prefix=f"soul-mcp-{name}-", suffix=".md")
    path = Path(raw_path)
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
        f.write(initial + ("\n" if added_newline else ""))
    command = [*editor_command(), str(path)]
    try:
        done = subprocess.run(command, check=False)
    except FileNotFoundError:
        path.unlink(missing_ok=True)
        raise EditorError(f"cannot start the editor {command[0]!r}; set $EDITOR (e.g. EDITOR=nano)") from None
    if done.returncode != 0:
        path.unlink(missing_ok=True)
        raise EditorError(f"the editor {command[0]!r} exited with status {done.returncode}; nothing saved")
    edited = path.read_text(encoding="utf-8")
    if added_newline and edited.endswith("\n"):
        edited = edited[:-1]
    return edited, path
