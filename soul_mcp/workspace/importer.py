"""Import: read and check the whole workspace into a plan, then apply it to the self.

Everything is read and checked before anything is written, so a bad file stops the import with its
name and line and nothing half-imported. Content already stored, forgotten or revised is skipped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soul_mcp.core import AgentSelf, validate
from soul_mcp.core.dates import now_stored, parse_moment
from soul_mcp.core.text import content_key
from soul_mcp.errors import InvalidInput, NotFound
from soul_mcp.models import Actor
from soul_mcp.names import DocumentName
from soul_mcp.workspace.markdown import parse_memory_file
from soul_mcp.workspace.markers import AUTHOR_CHARS, IMPORTED_PREFIX, parse_marker
from soul_mcp.workspace.reading import MEMORY_FILE_BYTES, MemoryFile, document_bytes, find_files, read_text
from soul_mcp.workspace.summary import DocumentImport, FileImport, ImportSummary

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


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
    agent_self: AgentSelf, document: DocumentName, path: Path, shown: str
) -> tuple[DocumentImport, str | None]:
    chars = agent_self.limits.document_chars
    limit = (
        f"a document file may hold at most {document_bytes(chars):,} bytes (the document limit is "
        f"{chars:,} characters, SOUL_MCP_MAX_DOCUMENT_CHARS)"
    )
    content = read_text(path, shown, document_bytes(chars), limit)
    if not content.strip():
        return DocumentImport(
            document=document,
            file=shown,
            action="skipped",
            note="the file is empty and a document cannot be; the current version stays",
        ), None
    content = validate.text(content, shown, agent_self.limits.document_chars)
    current = await agent_self.read(document)
    if current.version is not None:
        if current.content == content:
            return DocumentImport(
                document=document,
                file=shown,
                action="unchanged",
                version=current.version,
                note=f"same as version {current.version}",
            ), None
        for older in range(current.version - 1, 0, -1):
            if (await agent_self.read(document, older)).content == content:
                return DocumentImport(
                    document=document,
                    file=shown,
                    action="skipped",
                    version=current.version,
                    note=f"same as version {older}, older than the current version {current.version}; "
                    f"import does not bring old versions back (restore {older} does)",
                ), None
    return DocumentImport(document=document, file=shown, action="updated"), content


def _marked(meta: dict[str, str], source: MemoryFile, importer: str, imported_at: str) -> dict[str, Any]:
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
    agent_self: AgentSelf, source: MemoryFile, text: str, importer: str, imported_at: str
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
                meta = _marked(parse_marker(item.marker), source, importer, imported_at)
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
    root = _workspace_dir(directory)
    found = find_files(root, follow_links)
    if not found.documents and not found.memory_files:
        raise InvalidInput(
            f"{root} holds none of the workspace files (SOUL.md, IDENTITY.md, USER.md, intent.md, "
            "north-star.md, MEMORY.md, memory/YYYY-MM-DD.md); is it the right folder?"
        )
    documents: list[tuple[DocumentImport, str | None]] = [
        await _plan_document(agent_self, document, path, shown)
        for document, (path, shown) in found.documents.items()
    ]

    imported_at = now_stored()
    stored = {content_key(m.content) for m in await agent_self.active_memories()}
    let_go = await _forgotten_keys(agent_self)
    files: list[FileImport] = []
    to_add: list[_PlannedMemory] = []
    not_imported = list(found.not_imported)
    memory_limit = (
        f"a memory file may hold at most {MEMORY_FILE_BYTES // 2**20} MiB; split it into several "
        "memory/YYYY-MM-DD.md files"
    )
    for source in found.memory_files:
        planned, summary, had_front_matter = _plan_memories(
            agent_self,
            source,
            read_text(source.path, source.name, MEMORY_FILE_BYTES, memory_limit),
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
