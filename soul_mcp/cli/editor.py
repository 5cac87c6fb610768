"""Editing a document in the person's own editor ($VISUAL, $EDITOR, else vi or notepad).

The text goes through a temporary file that outlives a failed save, so nothing typed is lost.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path


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
