"""Assembling a wake-up within a character budget.

Priority, highest first; each part takes what it needs while the budget lasts:
1. the soul, cut to at most half the budget if it is longer;
2. the identity (name, creature, vibe), only when written, cut to at most a tenth of the budget;
3. the user (facts about the human), only when written, cut to at most a tenth of the budget;
4. the intent, with its author and age, cut to at most a fifth of the budget;
5. the north star, cut to at most a fifth of the budget;
6. memories relevant to the focus (when a focus is given);
7. important memories (importance 4 or 5);
8. the most recent memories.
The shares add up to more than the whole (1/2 + 1/10 + 1/10 + 1/5 + 1/5), so each document is
also held to what the parts above it left (keeping room for the closing line): when every document
is long, the lowest ones shrink first, and one with less than MIN_SECTION characters left is left
out. The identity and user documents are short by nature (a name, a timezone), hence a tenth each;
they come before the intent because they say who is speaking to whom, which every session needs.
Memories are added one at a time, each cut to 400 characters, until the next one would not fit.
Whatever was cut or left out is listed in `trimmed`, so the caller knows to read or recall it.

What the documents and memories say is data, never structure: the only lines that start a section
("## ...") or end the text ("---") are this module's. A document's headings are nested two levels
under its section ("# Soul" becomes "### Soul"), a rule or underline line in it is escaped, a
memory's lines are indented under its list item, and names and the focus are one line each.
"""

from __future__ import annotations

import re

from soul_mcp.core import render
from soul_mcp.core.dates import describe_age
from soul_mcp.core.text import clean_name, clip
from soul_mcp.models import Document, DocumentInfo, RecallHit, WakeUp

MEMORY_CHARS = 400
# Below this, a document section would be little more than its heading: leave it out instead.
MIN_SECTION = 80
# The tools that read each document whole, for the `trimmed` notes.
READ_TOOL = {
    "soul": "read_soul",
    "intent": "read_intent",
    "north_star": "read_north_star",
    "identity": "read_document(document='identity')",
    "user": "read_document(document='user')",
}
FOCUS_CHARS = 200  # of the focus repeated in its section's heading
# Markdown that could pass for the wake-up's own structure: an ATX heading (up to three spaces in),
# and a line of only '-', '=', '*' or '_' (a setext underline makes the line above a heading; a
# '---' would stand for the end of the text).
_HEADING = re.compile(r"^( {0,3})(#{1,6})(?=[ \t]|$)", re.MULTILINE)
_RULE = re.compile(r"^( {0,3})([-=*_][-=*_ \t]*)$", re.MULTILINE)
TAIL = (
    "\n\n---\nUse recall(query) to search memories, remember(content) to keep something, and "
    "write_intent(content) before the session ends."
)


def _as_data(body: str) -> str:
    """A document's text as it sits under its section: headings two levels down, rules escaped."""
    body = _HEADING.sub(r"\1##\2", body)
    return _RULE.sub(r"\1\\\2", body)


def _section(doc: Document, title: str, share: int, trimmed: list[str], extra: str = "") -> str | None:
    if doc.version is None:
        # Nothing stored: the soul shows its starter text, the others only what to do.
        starter = f"(starter, not yet adopted)\n{_as_data(doc.content)}\n{doc.hint}"
        body = starter if doc.content else str(doc.hint)
    else:
        body = _as_data(doc.content)
        extra = f" (version {doc.version}, by {clean_name(doc.author or '')}{extra})"
    text = f"## {title}{extra}\n{body.strip()}"
    if len(text) > share and share < MIN_SECTION:
        trimmed.append(f"{doc.document} (no room; read it with {READ_TOOL[doc.document]})")
        return None
    if len(text) > share:
        trimmed.append(f"{doc.document} (cut to {share} chars; read it whole with {READ_TOOL[doc.document]})")
        text = clip(text, share)
    return text


def _info(doc: Document) -> DocumentInfo:
    return DocumentInfo(
        version=doc.version, adopted=doc.adopted, author=doc.author, created_at=doc.created_at
    )


def assemble_wake_up(
    soul: Document,
    intent: Document,
    north_star: Document,
    focus: str | None,
    relevant: list[RecallHit],
    important: list[RecallHit],
    recent: list[RecallHit],
    budget: int,
    *,
    identity: Document | None = None,
    user: Document | None = None,
) -> WakeUp:
    trimmed: list[str] = []
    age = describe_age(intent.created_at) if intent.created_at else None
    documents: list[tuple[Document, str, int, str]] = [(soul, "Soul", budget // 2, "")]
    # Identity and user appear only once written: their hints would be noise in every session.
    if identity is not None and identity.version is not None:
        documents.append((identity, "Identity", budget // 10, ""))
    if user is not None and user.version is not None:
        documents.append((user, "User", budget // 10, ""))
    documents += [
        (intent, "Intent", budget // 5, f", {age}" if age else ""),
        (north_star, "North star", budget // 5, ""),
    ]
    parts: list[str] = []
    used = len(TAIL)
    for doc, title, share, extra in documents:
        part = _section(doc, title, min(share, budget - used - 2), trimmed, extra)
        if part is not None:
            parts.append(part)
            used += len(part) + 2

    kept: dict[str, list[RecallHit]] = {"relevant": [], "important": [], "recent": []}
    topic = clip(" ".join((focus or "").split()), FOCUS_CHARS)  # one line: a heading
    sections = [
        ("relevant", f"## Memories relevant to: {topic}", relevant),
        ("important", "## Important memories", important),
        ("recent", "## Recent memories", recent),
    ]
    for key, heading, hits in sections:
        if not hits:
            continue
        lines: list[str] = []
        cost = len(heading) + 3
        for n, hit in enumerate(hits):
            line = render.hit_line(hit, MEMORY_CHARS)
            if used + cost + len(line) + 1 > budget:
                trimmed.append(
                    f"{len(hits) - n} {key} memor{'y' if len(hits) - n == 1 else 'ies'} (no room; use recall)"
                )
                break
            lines.append(line)
            kept[key].append(hit)
            cost += len(line) + 1
        if lines:
            parts.append(heading + "\n" + "\n".join(lines))
            used += cost

    text = "\n\n".join(parts) + TAIL
    if len(text) > budget:  # tiny budgets: the shares above are a guide, the budget is the rule
        text = clip(text, budget)
    return WakeUp(
        soul=_info(soul),
        identity=_info(identity) if identity is not None else DocumentInfo(version=None, adopted=False),
        user=_info(user) if user is not None else DocumentInfo(version=None, adopted=False),
        intent=_info(intent),
        intent_age=age,
        north_star=_info(north_star),
        focus=focus,
        relevant=kept["relevant"],
        important=kept["important"],
        recent=kept["recent"],
        budget_chars=budget,
        used_chars=len(text),
        trimmed=trimmed,
        text=text,
    )
