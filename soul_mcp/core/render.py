"""Plain-text renderings of the self, for the model (tool text) and for people (the CLI)."""

from __future__ import annotations

from soul_mcp.core.text import clean_name, clip
from soul_mcp.models import (
    Diff,
    Document,
    DocumentWrite,
    History,
    Memory,
    MemoryReceipt,
    RecallHit,
    RecallResult,
    RememberResult,
)

TITLES = {
    "soul": "Soul",
    "identity": "Identity",
    "user": "User",
    "intent": "Intent",
    "north_star": "North star",
}


def hit_line(hit: RecallHit | Memory, max_chars: int | None = None) -> str:
    tags = " ".join(f"#{t}" for t in hit.tags)
    meta = " · ".join(
        part
        for part in (
            hit.occurred_at[:10],
            hit.kind,
            f"importance {hit.importance}",
            tags,
            f"by {clean_name(hit.author)}",
        )
        if part
    )
    content = clip(hit.content, max_chars) if max_chars else hit.content
    line = f"- [{hit.id}] ({meta})\n  " + content.replace("\n", "\n  ")
    context_of = getattr(hit, "context_of", None)
    if context_of:
        line += f"\n  (found as context: stored right beside {context_of}, which matched)"
    return line


def document(doc: Document) -> str:
    title = TITLES[doc.document]
    if doc.version is None:
        head = f"{title}: nothing stored yet."
        if doc.document == "soul":
            head = f"{title} (starter, not yet adopted):"
        return "\n".join(part for part in (head, doc.content, doc.hint) if part)
    about = f"{title}, version {doc.version}, by {clean_name(doc.author or '')} at {doc.created_at}"
    if doc.reason:
        about += f" (reason: {doc.reason})"
    if doc.restored_from:
        about += f" (restored from version {doc.restored_from})"
    return f"{about}\n\n{doc.content}"


def write(result: DocumentWrite) -> str:
    v = result.version
    title = TITLES[v.document]
    if not result.changed:
        return f"{title} unchanged: the content is identical to version {v.version}."
    if v.restored_from:
        return f"{title} restored: version {v.restored_from} is now current as version {v.version}."
    return f"{title} saved as version {v.version}."


def history(h: History) -> str:
    if not h.versions:
        return f"{TITLES[h.document]} has no stored versions yet."
    lines = [f"{TITLES[h.document]} history, newest first:"]
    for v in h.versions:
        extra = f", restored from {v.restored_from}" if v.restored_from else ""
        lines.append(
            f"- version {v.version}: {v.created_at} by {clean_name(v.author)}, {v.chars} chars{extra}"
            + (f" — {' '.join(v.reason.split())}" if v.reason else "")  # one line per version
        )
    if h.next_before_version:
        lines.append(f"(older versions: history with before_version={h.next_before_version})")
    return "\n".join(lines)


def diff(d: Diff) -> str:
    if not d.diff:
        return f"Versions {d.from_version} and {d.to_version} of {TITLES[d.document]} are identical."
    return d.diff


def remember(r: RememberResult) -> str:
    head = "Remembered" if r.is_new else "Already remembered (the same content is stored; nothing added)"
    if isinstance(r.memory, MemoryReceipt):  # for a caller that may not read it
        return f"{head}: {r.memory.id}"
    return f"{head}:\n{hit_line(r.memory)}"


def memory(m: Memory) -> str:
    lines = [hit_line(m), f"  status: {m.status}, created {m.created_at}"]
    if m.status_reason:
        lines.append(f"  reason: {m.status_reason}")
    if m.status_changed_by and m.status_changed_at:
        lines.append(
            f"  {m.status if m.status != 'active' else 'restored'} by {m.status_changed_by}, {m.status_changed_at}"
        )
    if m.supersedes:
        lines.append(f"  revises: {m.supersedes}")
    if m.superseded_by:
        lines.append(f"  revised into: {m.superseded_by}")
    return "\n".join(lines)


def recall(r: RecallResult) -> str:
    if not r.hits:
        lines = [f"No memories found for {r.query!r}." if r.query else "No memories stored yet."]
    else:
        count = f"{len(r.hits)} memor{'y' if len(r.hits) == 1 else 'ies'}"
        head = count + (f" for {r.query!r}" if r.query else ", most recent first") + ":"
        lines = [head] + [hit_line(h) for h in r.hits]
    if r.note:
        lines.append(r.note)
    if r.next_cursor:
        lines.append(f"More: recall again with cursor={r.next_cursor!r}.")
    return "\n".join(lines)
