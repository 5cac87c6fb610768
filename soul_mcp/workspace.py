"""Workspaces: the self as a folder of Markdown files, in and out (the OpenClaw convention).

    SOUL.md                -> the soul          IDENTITY.md  -> identity     USER.md -> user
    intent.md              -> the intent        north-star.md -> the north star
    MEMORY.md              -> long-term memories (tag `long-term`, importance 4 unless marked)
    memory/YYYY-MM-DD.md   -> memories of that day; memory/YYYY-MM-DD-slug.md too (the slug becomes a
                              tag), and memory/YYYY-MM-DD-HHMM.md (that time of the day, UTC)

Import reads documents verbatim (front matter included) and stores a new version only when the
content differs from the current one; a file whose content is an *older* version is not brought
back (restore does that on purpose), and an empty file is skipped, because a document cannot be
empty. Memory files hold one memory per top-level list item or paragraph; a fenced code block
that follows one joins it. Headings of level 2 and deeper become tags (the level-1 heading is the
file's title); the file's date is the day the memory occurred (midnight UTC); MEMORY.md has no
date, so its memories take the time of the import.

Export writes the same layout: each document that has a version as its file, byte for byte; each
active memory as a list item, in memory/YYYY-MM-DD.md by the UTC day it occurred (MEMORY.md for
those tagged `long-term`), oldest first, with a marker line under it that keeps what the text
cannot say:

    - Maya prefers short answers with the code first.
      <!-- soul: at=2024-05-08T14:30:00Z kind=preference importance=4 tags=maya by=cli:maya -->

The author a marker names is stored as `imported:<by>` (cut so that the whole stays within 100
characters), so a file cannot pass for a client; export writes `by=` without that prefix.

Continuation lines of an item are indented by two spaces, so a memory may hold lists, code blocks
and blank lines. Marker values escape `%`, whitespace, `<` and `>` as %XX. An item with a marker
keeps exactly the marker's date, kind, importance, tags and author (headings do not add tags to
it), which makes the round trip lossless: export, import into a fresh database, export again
gives byte-identical files. Only active memories are exported: forgotten and revised ones stay in
the database (they would come back to life in any tool that reads the folder), and so does the
history of each document. Ids and creation times are the database's own and are not carried.

Importing never revives what was let go: an item whose content matches a memory that is stored,
forgotten or revised is skipped, so importing the same workspace again adds nothing. This module
is domain-level: it calls AgentSelf, never the store's SQL.

A workspace may come from anyone. Import reads only regular files: a symbolic link (unless
follow_links and its target is a file inside the folder), a FIFO or a device is listed as not
imported, never opened; files are opened without following links or blocking, checked through the
descriptor and bounded in size (a document file by the document limit, a memory file by 64 MiB).
Export never writes through a link inside the folder (the folder named may itself be one), and
creates folders 0700 and files 0600.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, Field

from soul_mcp.core import AgentSelf, validate
from soul_mcp.core.dates import parse_moment
from soul_mcp.core.text import content_key, normalize_newlines
from soul_mcp.errors import InvalidInput, NotFound
from soul_mcp.files import PRIVATE_FILE_MODE, make_private_dirs
from soul_mcp.models import Actor, DocumentName, Memory

log = logging.getLogger(__name__)

DOCUMENT_FILES: dict[str, str] = {
    "soul": "SOUL.md",
    "identity": "IDENTITY.md",
    "user": "USER.md",
    "intent": "intent.md",
    "north_star": "north-star.md",
}
LONG_TERM_FILE = "MEMORY.md"
MEMORY_DIR = "memory"
# MEMORY.md is curated, long-term memory: an OpenClaw agent reads it every session. Here the tag
# sends it back to MEMORY.md on export, and importance 4 puts it among wake-up's important memories.
LONG_TERM_TAG = "long-term"
LONG_TERM_IMPORTANCE = 4
LONG_TERM_TITLE = "Long-term memory"

Progress = Callable[[int, int], None]


# Summaries -------------------------------------------------------------------------------------


class DocumentImport(BaseModel):
    document: DocumentName
    file: str
    action: Literal["updated", "unchanged", "skipped"] = Field(description="in a dry run: what would happen")
    version: int | None = Field(default=None, description="the version now current (None in a dry run)")
    note: str | None = Field(default=None, description="why it was skipped or left unchanged")


class FileImport(BaseModel):
    file: str
    memories: int = Field(description="memories found in the file")
    added: int
    duplicates: int = Field(description="already stored, or repeated in the workspace")
    forgotten: int = Field(description="skipped: the same content was forgotten or revised before")


class ImportSummary(BaseModel):
    directory: str
    dry_run: bool
    documents: list[DocumentImport]
    files: list[FileImport]
    documents_updated: int
    memories_added: int
    memories_duplicate: int
    memories_forgotten: int
    not_imported: list[str] = Field(description="files left out, each with the reason")


class ExportFile(BaseModel):
    file: str
    action: Literal["created", "replaced", "unchanged"] = Field(description="in a dry run: what would happen")
    memories: int | None = Field(default=None, description="memories in the file (None for a document)")


class ExportSummary(BaseModel):
    directory: str
    dry_run: bool
    files: list[ExportFile]
    documents: int
    memories: int
    left_alone: list[str] = Field(
        description="workspace files already in the folder that this export did not write"
    )
    notes: list[str] = Field(description="what was not exported, and why")


# The marker under each exported memory ---------------------------------------------------------

_MARKER = re.compile(r"^[ \t]*<!-- soul: (.*) -->[ \t]*$")
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


def _parse_marker(body: str) -> dict[str, str]:
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


# Reading memory files --------------------------------------------------------------------------

_ITEM = re.compile(r"^( {0,3})([-*+]|\d{1,9}[.)])( +|$)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


@dataclass
class _Block:
    kind: Literal["item", "paragraph"]
    line: int  # where it starts, 1-based
    tags: list[str]
    offset: int = 0  # an item's content indentation
    lines: list[str] = field(default_factory=list)


@dataclass
class ParsedMemory:
    """One memory as a file holds it, before validation."""

    content: str
    line: int
    heading_tags: list[str]
    marker: str | None = None  # the inside of its `<!-- soul: ... -->` line, when it has one
    marker_line: int | None = None


def heading_tag(text: str) -> str | None:
    """'## Open Questions' -> 'open-questions': short, lower-case, no commas, as tags must be."""
    tag = re.sub(r"[*`]", "", text).replace(",", " ").strip().lstrip("#").strip().lower()
    tag = re.sub(r"\s+", "-", tag)[:64].strip("-.:;!?")
    return tag or None


def _dedent(line: str, width: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, width) :]


def _split_front_matter(lines: list[str]) -> tuple[list[str], int]:
    """Drop YAML front matter ('---' ... '---' at the top); returns the rest and its first line number."""
    if lines and lines[0].rstrip() == "---":
        for n in range(1, len(lines)):
            if lines[n].rstrip() in {"---", "..."}:
                return lines[n + 1 :], n + 1
    return lines, 0


def parse_memory_file(text: str) -> tuple[list[ParsedMemory], bool]:
    """The memories in a Markdown memory file, and whether it had front matter (which is ignored).

    Line-based, following CommonMark where it matters: top-level list items (with their indented
    or lazy continuation lines, nested lists and blank lines inside them) and paragraphs are
    memories; headings set tags; thematic breaks separate; a top-level fenced code block joins the
    memory before it, and '#' or '- ' lines inside a fence are code, not structure. Lines are split
    on '\\n' only: other line separators are content.
    """
    lines, first = _split_front_matter(text.split("\n"))
    had_front_matter = first > 0
    blocks: list[_Block] = []
    headings: list[tuple[int, str | None]] = []
    current: _Block | None = None
    last: _Block | None = None  # the block a following code fence would join
    pending: list[str] = []  # blank lines inside an item, kept if the item goes on
    fence: tuple[str, int] | None = None

    def tags() -> list[str]:
        return [t for _, t in headings if t]

    def finish() -> None:
        nonlocal current, last, pending
        if current is not None:
            last = current
        current, pending = None, []

    for number, line in enumerate(lines, start=first + 1):
        if fence is not None:  # inside a top-level code fence: everything is code
            assert current is not None
            current.lines.append(line)
            closing = re.match(r"^ {0,3}(`{3,}|~{3,})[ \t]*$", line)
            if closing and closing[1][0] == fence[0] and len(closing[1]) >= fence[1]:
                fence = None
                finish()
            continue
        if not line.strip():
            if current is not None and current.kind == "item":
                pending.append(_dedent(line, current.offset))
            else:
                finish()
            continue
        if current is not None and current.kind == "item":
            item = _ITEM.match(line)
            indented = line[0] in " \t"
            if indented and not (item and len(item[1]) < current.offset):
                current.lines += pending
                current.lines.append(_dedent(line, current.offset))
                pending = []
                continue
            structural = item or _HEADING.match(line) or _FENCE.match(line) or _BREAK.match(line)
            if not pending and not structural:  # a lazy continuation line
                current.lines.append(line)
                continue
        if current is not None and current.kind == "paragraph" and (setext := _SETEXT.match(line)):
            level = 1 if setext[1][0] == "=" else 2
            title = " ".join(s.strip() for s in current.lines)
            blocks.remove(current)  # the paragraph was a heading all along
            current = None
            headings = [(lvl, t) for lvl, t in headings if lvl < level]
            headings.append((level, heading_tag(title) if level > 1 else None))
            last = None
            continue
        if heading := _HEADING.match(line):
            finish()
            level = len(heading[1])
            title = re.sub(r"[ \t]+#+$", "", heading[2] or "").strip()
            headings = [(lvl, t) for lvl, t in headings if lvl < level]
            # The level-1 heading is the file's title ('# 2024-05-08'), not a topic.
            headings.append((level, heading_tag(title) if level > 1 else None))
            last = None
            continue
        if _BREAK.match(line):
            finish()
            last = None
            continue
        if item := _ITEM.match(line):
            finish()
            current = _Block("item", number, tags(), offset=len(item[0]), lines=[line[len(item[0]) :]])
            blocks.append(current)
            continue
        if opening := _FENCE.match(line):
            finish()
            if last is not None:
                current = last
                current.lines += ["", line]
            else:
                current = _Block("paragraph", number, tags(), lines=[line])
                blocks.append(current)
            fence = (opening[1][0], len(opening[1]))
            continue
        if current is not None and current.kind == "paragraph":
            current.lines.append(line)
            continue
        finish()
        current = _Block("paragraph", number, tags(), lines=[line])
        blocks.append(current)

    found: list[ParsedMemory] = []
    for block in blocks:
        body = list(block.lines)
        while body and not body[-1].strip():
            body.pop()
        parsed = ParsedMemory("", block.line, block.tags)
        if body and (m := _MARKER.match(body[-1])):
            parsed.marker, parsed.marker_line = m[1], block.line + len(body) - 1
            body.pop()
        parsed.content = "\n".join(body).strip()
        if parsed.content or parsed.marker is not None:
            found.append(parsed)
    return found, had_front_matter


def _item(memory: Memory) -> str:
    first, *rest = memory.content.split("\n")
    lines = [f"- {first}", *(f"  {line}" if line else "" for line in rest), f"  {marker(memory)}"]
    return "\n".join(lines)


def render_memory_file(title: str, memories: list[Memory]) -> str:
    """A memory file as export writes it: a title, then one list item per memory."""
    return f"# {title}\n\n" + "\n\n".join(_item(m) for m in memories) + "\n"


# Finding the files -----------------------------------------------------------------------------

_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[-_ T](.+))?\.md$", re.IGNORECASE)
# memory/2024-05-08-2107.md: a session log written at 21:07 (the suffix is a time, not a topic).
_TIME_SUFFIX = re.compile(r"^([01]\d|2[0-3])[-:]?([0-5]\d)$")


@dataclass
class _MemoryFile:
    path: Path
    name: str  # relative to the workspace, with '/'
    occurred_at: str | None  # None: MEMORY.md, no date
    extra_tags: list[str]
    importance: int | None


@dataclass
class _Layout:
    documents: dict[str, tuple[Path, str]]
    memory_files: list[_MemoryFile]
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
_READ_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
)


def _document_bytes(document_chars: int) -> int:
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


def _find(root: Path, follow_links: bool) -> _Layout:
    try:
        return _find_files(root, follow_links)
    except OSError as exc:
        raise InvalidInput(f"cannot read the folder {exc.filename or root}: {exc.strerror or exc}") from None


def _find_files(root: Path, follow_links: bool) -> _Layout:
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
    documents: dict[str, tuple[Path, str]] = {}
    for document, wanted in DOCUMENT_FILES.items():
        if name := _pick(root, wanted, by_lower):
            documents[document] = (files[name], name)
    memory_files: list[_MemoryFile] = []
    if name := _pick(root, LONG_TERM_FILE, by_lower):
        memory_files.append(_MemoryFile(files[name], name, None, [LONG_TERM_TAG], LONG_TERM_IMPORTANCE))
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
            memory_files.append(_MemoryFile(found[0], shown, occurred_at, [slug] if slug else [], None))
        # Oldest day first, so memories are stored (and later exported) in time order.
        memory_files[:] = sorted(
            memory_files, key=lambda f: (f.occurred_at is not None, f.occurred_at or "", f.name)
        )
    return _Layout(documents, memory_files, not_imported)


def _read_text(path: Path, shown: str, max_bytes: int, limit: str) -> str:
    """The text of a file found by _find. Opened without following a link at its end and without
    waiting on a FIFO, then checked through its descriptor: a file swapped for a link, a FIFO or
    a device after it was listed is refused, and nothing larger than max_bytes is read."""
    try:
        fd = os.open(path, _READ_FLAGS)
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


# Import ----------------------------------------------------------------------------------------


@dataclass
class _PlannedMemory:
    content: str
    author: str
    kind: str
    tags: list[str]
    importance: int
    occurred_at: str
    file: FileImport


def _workspace_dir(directory: str | os.PathLike[str]) -> Path:
    root = Path(directory).expanduser()
    if not root.exists():
        raise NotFound(
            f"the folder {root} does not exist; give the workspace folder (the one holding SOUL.md, "
            "MEMORY.md and memory/)"
        )
    if not root.is_dir():
        raise InvalidInput(f"{root} is a file, not a folder; give the workspace folder that holds it")
    return root.absolute()


async def _forgotten_keys(agent_self: AgentSelf) -> set[str]:
    """Content keys of forgotten and revised memories: importing them again would revive them."""
    keys: set[str] = set()
    for status in ("forgotten", "superseded"):
        offset: int | None = 0
        while offset is not None:
            page = await agent_self.list_memories(status=status, limit=200, offset=offset)
            keys.update(content_key(m.content) for m in page.memories)
            offset = page.next_offset
    return keys


async def _plan_document(
    agent_self: AgentSelf, document: str, path: Path, shown: str
) -> tuple[DocumentImport, str | None]:
    chars = agent_self.limits.document_chars
    limit = (
        f"a document file may hold at most {_document_bytes(chars):,} bytes (the document limit is "
        f"{chars:,} characters, SOUL_MCP_MAX_DOCUMENT_CHARS)"
    )
    content = _read_text(path, shown, _document_bytes(chars), limit)
    if not content.strip():
        return DocumentImport(
            document=document,  # type: ignore[arg-type]
            file=shown,
            action="skipped",
            note="the file is empty and a document cannot be; the current version stays",
        ), None
    content = validate.text(content, shown, agent_self.limits.document_chars)
    current = await agent_self.read(document)
    if current.version is not None:
        if current.content == content:
            return DocumentImport(
                document=document,  # type: ignore[arg-type]
                file=shown,
                action="unchanged",
                version=current.version,
                note=f"same as version {current.version}",
            ), None
        for older in range(current.version - 1, 0, -1):
            if (await agent_self.read(document, older)).content == content:
                return DocumentImport(
                    document=document,  # type: ignore[arg-type]
                    file=shown,
                    action="skipped",
                    version=current.version,
                    note=f"same as version {older}, older than the current version {current.version}; "
                    f"import does not bring old versions back (restore {older} does)",
                ), None
    return DocumentImport(document=document, file=shown, action="updated"), content  # type: ignore[arg-type]


def _marked(meta: dict[str, str], source: _MemoryFile, importer: str, imported_at: str) -> dict[str, Any]:
    """The metadata a marker gives, each missing value taken from the file (its date, its kind of
    memory); a marked item's tags are exactly the marker's (none when it names none)."""
    importance = meta.get("importance")
    if importance is not None and not re.fullmatch(r"[1-5]", importance):
        raise InvalidInput(f"importance={importance} in the marker; use 1 to 5")
    author = importer
    if by := meta.get("by"):
        author = validate.text(by, "by= (the author)", 100).strip()
        if not author.startswith(IMPORTED_PREFIX):
            author = IMPORTED_PREFIX + author[: AUTHOR_CHARS - len(IMPORTED_PREFIX)]
    return {
        "author": author,
        "kind": validate.kind(meta.get("kind")),
        "tags": [t for t in meta.get("tags", "").split(",") if t],
        "importance": int(importance) if importance else source.importance or 3,
        "occurred_at": parse_moment(meta["at"], "at=") if "at" in meta else source.occurred_at or imported_at,
    }


def _plan_memories(
    agent_self: AgentSelf, source: _MemoryFile, text: str, importer: str, imported_at: str
) -> tuple[list[_PlannedMemory], FileImport, bool]:
    parsed, had_front_matter = parse_memory_file(text)
    summary = FileImport(file=source.name, memories=len(parsed), added=0, duplicates=0, forgotten=0)
    planned: list[_PlannedMemory] = []
    limits = agent_self.limits
    for item in parsed:
        where = f"{source.name}:{item.line}"
        try:
            if item.marker is not None:
                where = f"{source.name}:{item.marker_line}"
                meta = _marked(_parse_marker(item.marker), source, importer, imported_at)
                where = f"{source.name}:{item.line}"
                if not item.content:
                    raise InvalidInput(
                        "a soul marker with no memory above it; remove the marker or add the text"
                    )
            else:
                # Headings and the file name tag what a person wrote without a marker.
                meta = _marked({}, source, importer, imported_at)
                meta["tags"] = [*source.extra_tags, *item.heading_tags]
            planned.append(
                _PlannedMemory(
                    content=validate.text(item.content, "the memory", limits.memory_chars).strip(),
                    author=meta["author"],
                    kind=meta["kind"],
                    tags=validate.tags(meta["tags"], limits),
                    importance=meta["importance"],
                    occurred_at=meta["occurred_at"],
                    file=summary,
                )
            )
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}; nothing was imported") from None
    return planned, summary, had_front_matter


async def import_workspace(
    agent_self: AgentSelf,
    directory: str | os.PathLike[str],
    actor: Actor,
    dry_run: bool = False,
    progress: Progress | None = None,
    follow_links: bool = False,
) -> ImportSummary:
    """Bring a workspace folder into the self; with dry_run, only say what would change.

    Everything is read and checked before anything is written, so a bad file (too long, not
    UTF-8, a broken marker) stops the import with its name and line and nothing half-imported.
    Only regular files are read: links (unless follow_links and they stay inside the folder),
    FIFOs and devices are listed in not_imported.
    """
    from soul_mcp.core.dates import now_stored

    root = _workspace_dir(directory)
    layout = _find(root, follow_links)
    if not layout.documents and not layout.memory_files:
        raise InvalidInput(
            f"{root} holds none of the workspace files (SOUL.md, IDENTITY.md, USER.md, intent.md, "
            "north-star.md, MEMORY.md, memory/YYYY-MM-DD.md); is it the right folder?"
        )
    documents: list[tuple[DocumentImport, str | None]] = [
        await _plan_document(agent_self, document, path, shown)
        for document, (path, shown) in layout.documents.items()
    ]

    imported_at = now_stored()
    stored = {content_key(m.content) for m in await agent_self.active_memories()}
    let_go = await _forgotten_keys(agent_self)
    files: list[FileImport] = []
    to_add: list[_PlannedMemory] = []
    not_imported = list(layout.not_imported)
    memory_limit = (
        f"a memory file may hold at most {MEMORY_FILE_BYTES // 2**20} MiB; split it into several "
        "memory/YYYY-MM-DD.md files"
    )
    for source in layout.memory_files:
        planned, summary, had_front_matter = _plan_memories(
            agent_self,
            source,
            _read_text(source.path, source.name, MEMORY_FILE_BYTES, memory_limit),
            actor.name,
            imported_at,
        )
        if had_front_matter:
            not_imported.append(f"{source.name}: its front matter (memory files keep only their items)")
        files.append(summary)
        for memory in planned:
            key = content_key(memory.content)
            if key in stored:
                summary.duplicates += 1
            elif key in let_go:
                summary.forgotten += 1
            else:
                stored.add(key)
                summary.added += 1
                to_add.append(memory)

    if not dry_run:
        reason = f"imported from {root}"
        for result, content in documents:
            if content is not None:
                written = await agent_self.write(result.document, content, actor, reason=reason)
                result.version = written.version.version
        for done, memory in enumerate(to_add, start=1):
            remembered = await agent_self.remember(
                memory.content,
                Actor(name=memory.author),
                kind=memory.kind,
                tags=memory.tags,
                importance=memory.importance,
                occurred_at=memory.occurred_at,
            )
            if not remembered.is_new:  # another client stored it meanwhile
                memory.file.added -= 1
                memory.file.duplicates += 1
            if progress is not None:
                progress(done, len(to_add))
        log.info("imported %s: %d memories", root, len(to_add))
    return ImportSummary(
        directory=str(root),
        dry_run=dry_run,
        documents=[d for d, _ in documents],
        files=files,
        documents_updated=sum(1 for d, _ in documents if d.action == "updated"),
        memories_added=sum(f.added for f in files),
        memories_duplicate=sum(f.duplicates for f in files),
        memories_forgotten=sum(f.forgotten for f in files),
        not_imported=not_imported,
    )


# Export ----------------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target and rename over it, so a crash never leaves half a file (and the
    rename replaces a link rather than writing through it). A replaced file keeps its mode."""
    make_private_dirs(path.parent)
    try:
        info = os.lstat(path)
        mode = stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else PRIVATE_FILE_MODE
    except FileNotFoundError:
        mode = PRIVATE_FILE_MODE
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        return stat.S_ISREG(info.st_mode) and info.st_size == len(data) and file.read(len(data) + 1) == data


def _export_action(root: Path, name: str, data: bytes) -> Literal["created", "replaced", "unchanged"]:
    """What writing data to root/name would do; refused when a link or a special file is in the way.
    The folder given is followed if it is a link (the user chose it); nothing inside it is."""
    path = root
    for part in name.split("/"):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "created"  # writing fails later if a file stands where a folder should
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from None
        if stat.S_ISLNK(mode):
            raise InvalidInput(
                f"{path} is a symbolic link; export does not write through links: remove it or export "
                "into another folder; nothing was written"
            )
    if not stat.S_ISREG(mode):
        raise InvalidInput(
            f"{path} is not a regular file; export replaces only regular files: remove it or export "
            "into another folder; nothing was written"
        )
    return "unchanged" if _same_bytes(path, data) else "replaced"


def _real_dir(path: Path) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


async def export_workspace(
    agent_self: AgentSelf, directory: str | os.PathLike[str], dry_run: bool = False, force: bool = False
) -> ExportSummary:
    """Write the self as a workspace folder; with dry_run, only say which files would change.

    The folder must be new or empty, unless force: then the files export writes are replaced and
    every other file is left as it is (an OpenClaw workspace's AGENTS.md, say).
    """
    root = Path(directory).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise InvalidInput(f"{root} is a file; export needs a folder (a new one is created)")
    occupied = root.is_dir() and any(root.iterdir())
    notes: list[str] = []
    if occupied and not force:
        if not dry_run:
            raise InvalidInput(
                f"{root} is not empty; export into a new or empty folder, or pass --force to replace the "
                "files soul-mcp writes there (SOUL.md, memory/YYYY-MM-DD.md, ...; others stay as they are)"
            )
        notes.append(f"{root} is not empty: the export itself needs --force")

    # A folder that has memory.md or Soul.md keeps those names: writing MEMORY.md beside memory.md
    # would leave two files naming the same thing, which import refuses.
    existing = {n.lower(): n for n in os.listdir(root)} if root.is_dir() else {}
    rendered: dict[str, tuple[str, int | None]] = {}
    for document, name in DOCUMENT_FILES.items():
        name = existing.get(name.lower(), name)
        current = await agent_self.read(document)
        if current.version is None:
            notes.append(f"{document}: nothing written yet, so no {name}")
        else:
            rendered[name] = (current.content, None)
    documents = len(rendered)

    memories = await agent_self.active_memories()
    groups: dict[str, list[Memory]] = {}
    for memory in memories:
        name = (
            LONG_TERM_FILE if LONG_TERM_TAG in memory.tags else f"{MEMORY_DIR}/{memory.occurred_at[:10]}.md"
        )
        groups.setdefault(name, []).append(memory)
    for name in sorted(groups, key=lambda n: (n != LONG_TERM_FILE, n)):
        title = LONG_TERM_TITLE if name == LONG_TERM_FILE else name[len(MEMORY_DIR) + 1 : -3]
        shown = existing.get(name.lower(), name) if name == LONG_TERM_FILE else name
        rendered[shown] = (render_memory_file(title, groups[name]), len(groups[name]))

    stats = await agent_self.stats()
    if stats.memories_forgotten or stats.memories_superseded:
        notes.append(
            f"{stats.memories_forgotten} forgotten and {stats.memories_superseded} revised memories stay in "
            "the database only (an export holds the active self)"
        )

    # Every target is checked before the first write, so a link in the way stops the whole export.
    files = [
        ExportFile(file=name, action=_export_action(root, name, text.encode("utf-8")), memories=count)
        for name, (text, count) in rendered.items()
    ]
    done: list[str] = []
    for f in files:
        if dry_run or f.action == "unchanged":
            continue
        try:
            _write_atomically(root / f.file, rendered[f.file][0].encode("utf-8"))
        except OSError as exc:
            raise InvalidInput(
                f"cannot write {root / f.file}: {exc.strerror or exc}"
                + (f"; already written: {', '.join(done)}" if done else "; nothing was written")
            ) from None
        done.append(f.file)

    left_alone: list[str] = []
    if root.is_dir():
        candidates = [
            n
            for n in os.listdir(root)
            if n.lower() in {f.lower() for f in (*DOCUMENT_FILES.values(), LONG_TERM_FILE)}
        ]
        if _real_dir(root / MEMORY_DIR):
            candidates += [
                f"{MEMORY_DIR}/{n}" for n in os.listdir(root / MEMORY_DIR) if n.lower().endswith(".md")
            ]
        left_alone = sorted(n for n in candidates if n not in rendered)
    return ExportSummary(
        directory=str(root),
        dry_run=dry_run,
        files=files,
        documents=documents,
        memories=len(memories),
        left_alone=left_alone,
        notes=notes,
    )


# Text for people -------------------------------------------------------------------------------


def render_import(summary: ImportSummary) -> str:
    would = summary.dry_run
    lines = [
        f"Dry run: nothing was written. Importing {summary.directory} would do this:"
        if would
        else f"Imported {summary.directory}:"
    ]
    verbs = {
        "updated": "would be updated" if would else "updated",
        "unchanged": "unchanged",
        "skipped": "skipped",
    }
    for d in summary.documents:
        text = f"  {d.file} -> {d.document}: {verbs[d.action]}"
        if d.action == "updated" and d.version is not None:
            text += f" (now version {d.version})"
        lines.append(text + (f" ({d.note})" if d.note else ""))
    for f in summary.files:
        parts = [f"{f.added} {'to add' if would else 'added'}"]
        if f.duplicates:
            parts.append(f"{f.duplicates} already stored")
        if f.forgotten:
            parts.append(f"{f.forgotten} forgotten before")
        lines.append(
            f"  {f.file}: {f.memories} memor{'y' if f.memories == 1 else 'ies'}, " + ", ".join(parts)
        )
    if summary.not_imported:
        lines.append("Not imported: " + "; ".join(summary.not_imported))
    lines.append(
        f"{'Would update' if would else 'Updated'} {summary.documents_updated} "
        f"document{'s' if summary.documents_updated != 1 else ''}, "
        f"{'would add' if would else 'added'} {summary.memories_added} "
        f"memor{'y' if summary.memories_added == 1 else 'ies'}; skipped {summary.memories_duplicate} "
        f"as duplicates and {summary.memories_forgotten} as forgotten before."
    )
    return "\n".join(lines)


def render_export(summary: ExportSummary) -> str:
    would = summary.dry_run
    lines = [
        f"Dry run: nothing was written. Exporting to {summary.directory} would do this:"
        if would
        else f"Exported to {summary.directory}:"
    ]
    verbs = {
        "created": "would be created" if would else "created",
        "replaced": "would be replaced" if would else "replaced",
        "unchanged": "unchanged",
    }
    for f in summary.files:
        count = f" ({f.memories} memor{'y' if f.memories == 1 else 'ies'})" if f.memories is not None else ""
        lines.append(f"  {f.file}{count}: {verbs[f.action]}")
    if summary.left_alone:
        lines.append("Left as they were (not written by this export): " + ", ".join(summary.left_alone))
    lines += summary.notes
    lines.append(
        f"{summary.documents} document{'s' if summary.documents != 1 else ''} and "
        f"{summary.memories} memor{'y' if summary.memories == 1 else 'ies'} in {len(summary.files)} file{'' if len(summary.files) == 1 else 's'}."
    )
    return "\n".join(lines)
