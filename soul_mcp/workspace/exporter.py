"""Export: write the self as a workspace folder, never through a link, in private files.

Every target is checked before the first write; each file is written beside its target and renamed
over it, so a crash leaves no half file. Folders are created 0700 and files 0600.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

from soul_mcp.core import AgentSelf
from soul_mcp.errors import InvalidInput
from soul_mcp.files import PRIVATE_FILE_MODE, make_private_dirs
from soul_mcp.models import Memory
from soul_mcp.workspace.layout import (
    DOCUMENT_FILES,
    LONG_TERM_FILE,
    LONG_TERM_TAG,
    LONG_TERM_TITLE,
    MEMORY_DIR,
)
from soul_mcp.workspace.markdown import render_memory_file
from soul_mcp.workspace.reading import READ_FLAGS
from soul_mcp.workspace.summary import ExportFile, ExportSummary


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
        fd = os.open(path, READ_FLAGS)
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
