"""Memory files in Markdown: reading the memories a file holds, and writing them as export does.

Reading follows CommonMark where it matters (list items, paragraphs, headings, fences); writing
gives one list item per memory with its marker line (see markers.py) under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from soul_mcp.models import Memory
from soul_mcp.workspace.markers import MARKER_LINE, marker

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
        if body and (m := MARKER_LINE.match(body[-1])):
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
