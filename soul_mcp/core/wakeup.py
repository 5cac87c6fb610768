"""Assembling a wake-up within a character budget.

Priority, highest first; each part takes what it needs while the budget lasts:
1. the soul, cut to at most half the budget if it is longer;
2. the intent, with its author and age, cut to at most a fifth of the budget;
3. the north star, cut to at most a fifth of the budget;
4. memories relevant to the focus (when a focus is given);
5. important memories (importance 4 or 5);
6. the most recent memories.
Memories are added one at a time, each cut to 400 characters, until the next one would not fit.
Whatever was cut or left out is listed in `trimmed`, so the caller knows to recall it.
"""

from __future__ import annotations

from soul_mcp.core import render
from soul_mcp.core.dates import describe_age
from soul_mcp.core.text import clip
from soul_mcp.models import Document, DocumentInfo, RecallHit, WakeUp

MEMORY_CHARS = 400
TAIL = (
    "\n\n---\nUse recall(query) to search memories, remember(content) to keep something, and "
    "write_intent(content) before the session ends."
)


def _section(doc: Document, title: str, share: int, trimmed: list[str], extra: str = "") -> str:
    if doc.version is None:
        # Nothing stored: the soul shows its starter text, the others only what to do.
        body = f"(starter, not yet adopted)\n{doc.content}\n{doc.hint}" if doc.content else str(doc.hint)
    else:
        body = doc.content
        extra = f" (version {doc.version}, by {doc.author}{extra})"
    text = f"## {title}{extra}\n{body.strip()}"
    if len(text) > share:
        trimmed.append(f"{doc.document} (cut to {share} chars; read it whole with read_{doc.document})")
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
) -> WakeUp:
    trimmed: list[str] = []
    age = describe_age(intent.created_at) if intent.created_at else None
    parts = [
        _section(soul, "Soul", budget // 2, trimmed),
        _section(intent, "Intent", budget // 5, trimmed, f", {age}" if age else ""),
        _section(north_star, "North star", budget // 5, trimmed),
    ]
    used = sum(len(p) + 2 for p in parts) + len(TAIL)

    kept: dict[str, list[RecallHit]] = {"relevant": [], "important": [], "recent": []}
    sections = [
        ("relevant", f"## Memories relevant to: {focus}", relevant),
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
                trimmed.append(f"{len(hits) - n} {key} memories (no room; use recall)")
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
