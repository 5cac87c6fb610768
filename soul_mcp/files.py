"""Files and folders soul-mcp creates are private to their owner: they hold a person's memories.

Existing files and folders keep their modes (`soul-mcp doctor` warns when others can read them).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dirs(folder: Path) -> None:
    """`mkdir -p` where every folder created is 0700 (Path.mkdir gives missing parents the
    umask's mode, usually 0755)."""
    missing: list[Path] = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)


def create_private_file(path: Path) -> bool:
    """Create an empty file only its owner can read, unless something is already there (a file,
    a link: never followed); True when this call created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True
