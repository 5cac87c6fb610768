"""Reading a workspace folder that may come from anyone: which files it holds, and their text.

Only regular files are read: a symbolic link (unless follow_links and its target is a file inside
the folder), a FIFO or a device is listed as not imported, never opened. Files are opened without
following links or blocking, checked through the descriptor and bounded in size before reading.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soul_mcp.core.dates import parse_moment
from soul_mcp.core.text import normalize_newlines
from soul_mcp.errors import InvalidInput
from soul_mcp.names import DocumentName
from soul_mcp.workspace.layout import (
    DOCUMENT_FILES,
    LONG_TERM_FILE,
    LONG_TERM_IMPORTANCE,
    LONG_TERM_TAG,
    MEMORY_DIR,
)
from soul_mcp.workspace.markdown import heading_tag

_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[-_ T](.+))?\.md$", re.IGNORECASE)
# memory/2024-05-08-2107.md: a session log written at 21:07 (the suffix is a time, not a topic).
_TIME_SUFFIX = re.compile(r"^([01]\d|2[0-3])[-:]?([0-5]\d)$")


@dataclass
class MemoryFile:
    """A memory file to import, and what its name says about the memories in it."""

    path: Path
    name: str  # relative to the workspace, with '/'
    occurred_at: str | None  # None: MEMORY.md, no date
    extra_tags: list[str]
    importance: int | None


@dataclass
class WorkspaceFiles:
    """What a workspace folder holds: the files to read, and those left out with the reason."""

    documents: dict[DocumentName, tuple[Path, str]]
    memory_files: list[MemoryFile]
    not_imported: list[str]


def _pick(root: Path, wanted: str, by_lower: dict[str, list[str]]) -> str | None:
    names = by_lower.get(wanted.lower(), [])
    if len(names) > 1:
        raise InvalidInput(
            f"{root} holds {' and '.join(sorted(names))}, which name the same thing; keep one of them"
        )
    return names[0] if names else None


_LINK = "a symbolic link; pass --follow-links to read links that stay inside the workspace"
_LINK_OUT = "a link that leads out of the workspace: never read"
_LINK_BROKEN = "a symbolic link to nothing"
_NOT_REGULAR = "not a regular file"
# Sizes checked before a file is read, so that no file can exhaust memory. A memory file has no
# character limit of its own (it holds any number of memories): 64 MiB is far beyond real notes.
MEMORY_FILE_BYTES = 64 * 1024 * 1024
READ_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
)


def document_bytes(document_chars: int) -> int:
    """The most a document file can hold and still pass: 4 UTF-8 bytes a character, and a BOM."""
    return 4 * document_chars + 3


def _look(path: Path, inside: Path, follow_links: bool) -> tuple[Path, Literal["file", "dir"]] | str:
    """What a workspace entry is, without following it unless follow_links and it stays inside:
    the path to read and whether it is a file or a folder, or why it is not read."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(inside):
            return _LINK_OUT
        if not follow_links:
            return _LINK
        try:
            path, mode = target, os.lstat(target).st_mode  # realpath leaves no link in it
        except OSError:
            return _LINK_BROKEN
    if stat.S_ISREG(mode):
        return path, "file"
    if stat.S_ISDIR(mode):
        return path, "dir"
    return _NOT_REGULAR


def find_files(root: Path, follow_links: bool) -> WorkspaceFiles:
    """The documents and memory files in root (oldest day first), without opening any of them."""
    try:
        return _scan(root, follow_links)
    except OSError as exc:
        raise InvalidInput(f"cannot read the folder {exc.filename or root}: {exc.strerror or exc}") from None


def _scan(root: Path, follow_links: bool) -> WorkspaceFiles:
    inside = Path(os.path.realpath(root))
    files: dict[str, Path] = {}  # name -> the regular file to read
    not_imported: list[str] = []
    for name in sorted(os.listdir(root)):
        if not name.lower().endswith(".md"):
            continue
        found = _look(root / name, inside, follow_links)
        if isinstance(found, str):
            not_imported.append(f"{name} ({found})")
        elif found[1] == "file":
            files[name] = found[0]
    by_lower: dict[str, list[str]] = {}
    for name in files:
        by_lower.setdefault(name.lower(), []).append(name)
    documents: dict[DocumentName, tuple[Path, str]] = {}
    for document, wanted in DOCUMENT_FILES.items():
        if picked := _pick(root, wanted, by_lower):
            documents[document] = (files[picked], picked)
    memory_files: list[MemoryFile] = []
    if picked := _pick(root, LONG_TERM_FILE, by_lower):
        memory_files.append(MemoryFile(files[picked], picked, None, [LONG_TERM_TAG], LONG_TERM_IMPORTANCE))
    known = {shown.lower() for _, shown in documents.values()} | {f.name.lower() for f in memory_files}
    not_imported += [f"{n} (soul-mcp has no place for it)" for n in files if n.lower() not in known]
    exists = os.path.lexists(root / MEMORY_DIR)
    memory_dir = _look(root / MEMORY_DIR, inside, follow_links) if exists else None
    if isinstance(memory_dir, str) and memory_dir != _NOT_REGULAR:  # a link, not followed
        not_imported.append(f"{MEMORY_DIR}/ ({memory_dir})")
    if isinstance(memory_dir, tuple) and memory_dir[1] == "dir":
        for name in sorted(os.listdir(memory_dir[0])):
            shown = f"{MEMORY_DIR}/{name}"
            found = _look(memory_dir[0] / name, inside, follow_links)
            if isinstance(found, tuple) and found[1] == "dir":
                not_imported.append(f"{shown}/ (a folder; only memory/YYYY-MM-DD.md files are read)")
                continue
            if not name.lower().endswith(".md"):
                continue
            if isinstance(found, str):
                not_imported.append(f"{shown} ({found})")
                continue
            day = _DAY_FILE.match(name)
            if not day:
                not_imported.append(f"{shown} (no date in its name; daily notes are memory/YYYY-MM-DD.md)")
                continue
            time = _TIME_SUFFIX.match(day[2] or "")
            try:
                occurred_at = parse_moment(f"{day[1]}T{time[1]}:{time[2]}" if time else day[1], "occurred_at")
            except InvalidInput:
                not_imported.append(f"{shown} ({day[1]} is not a real date)")
                continue
            slug = heading_tag(day[2]) if day[2] and not time else None
            memory_files.append(MemoryFile(found[0], shown, occurred_at, [slug] if slug else [], None))
        # Oldest day first, so memories are stored (and later exported) in time order.
        memory_files[:] = sorted(
            memory_files, key=lambda f: (f.occurred_at is not None, f.occurred_at or "", f.name)
        )
    return WorkspaceFiles(documents, memory_files, not_imported)


def read_text(path: Path, shown: str, max_bytes: int, limit: str) -> str:
    """The text of a file found by find_files. Opened without following a link at its end and without
    waiting on a FIFO, then checked through its descriptor: a file swapped for a link, a FIFO or
    a device after it was listed is refused, and nothing larger than max_bytes is read."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise InvalidInput(
                f"{shown} became a symbolic link during the import; nothing was imported"
            ) from None
        raise InvalidInput(f"{shown} cannot be read: {exc.strerror}; nothing was imported") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(
                f"{shown} stopped being a regular file during the import; nothing was imported"
            )
        # Read one byte past the limit: a file that grew since fstat is caught too.
        data = file.read(max_bytes + 1) if info.st_size <= max_bytes else b""
    if info.st_size > max_bytes or len(data) > max_bytes:
        size = max(info.st_size, len(data))
        raise InvalidInput(f"{shown} has {size:,} bytes; {limit}; nothing was imported")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{shown} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and import again"
        ) from None
    return normalize_newlines(text.removeprefix("\ufeff"))
