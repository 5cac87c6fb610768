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
forgotten or revised is skipped, so importing the same workspace again adds nothing. This package
is domain-level: it calls AgentSelf, never the store's SQL.

A workspace may come from anyone. Import reads only regular files: a symbolic link (unless
follow_links and its target is a file inside the folder), a FIFO or a device is listed as not
imported, never opened; files are opened without following links or blocking, checked through the
descriptor and bounded in size (a document file by the document limit, a memory file by 64 MiB).
Export never writes through a link inside the folder (the folder named may itself be one), and
creates folders 0700 and files 0600.

The package, one job a module:

    layout.py     the layout's names: which file holds each document, MEMORY.md, memory/
    markers.py    the marker line under each exported memory, and its escaping
    markdown.py   memory files: parsing the memories in one, rendering one as export writes it
    reading.py    finding a workspace's files and reading them safely (links, FIFOs, sizes)
    importer.py   import: read and check everything into a plan, then apply it
    exporter.py   export: check every target, then write files atomically and privately
    summary.py    what an import or export did, and its text for people
"""

from soul_mcp.workspace.exporter import export_workspace
from soul_mcp.workspace.importer import Progress, import_workspace
from soul_mcp.workspace.layout import (
    DOCUMENT_FILES,
    LONG_TERM_FILE,
    LONG_TERM_IMPORTANCE,
    LONG_TERM_TAG,
    LONG_TERM_TITLE,
    MEMORY_DIR,
)
from soul_mcp.workspace.markdown import ParsedMemory, heading_tag, parse_memory_file, render_memory_file
from soul_mcp.workspace.markers import AUTHOR_CHARS, IMPORTED_PREFIX, MARKER_KEYS, marker
from soul_mcp.workspace.reading import MEMORY_FILE_BYTES
from soul_mcp.workspace.reading import read_text as _read_text  # noqa: F401 (tests import the old name)
from soul_mcp.workspace.summary import (
    DocumentImport,
    ExportFile,
    ExportSummary,
    FileImport,
    ImportSummary,
    render_export,
    render_import,
)

__all__ = [
    "AUTHOR_CHARS",
    "DOCUMENT_FILES",
    "IMPORTED_PREFIX",
    "LONG_TERM_FILE",
    "LONG_TERM_IMPORTANCE",
    "LONG_TERM_TAG",
    "LONG_TERM_TITLE",
    "MARKER_KEYS",
    "MEMORY_DIR",
    "MEMORY_FILE_BYTES",
    "DocumentImport",
    "ExportFile",
    "ExportSummary",
    "FileImport",
    "ImportSummary",
    "ParsedMemory",
    "Progress",
    "export_workspace",
    "heading_tag",
    "import_workspace",
    "marker",
    "parse_memory_file",
    "render_export",
    "render_import",
    "render_memory_file",
]
