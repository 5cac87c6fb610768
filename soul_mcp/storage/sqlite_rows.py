"""Memory rows of the SQLite store: the columns read, a row as a `Memory`, and listing filters."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from soul_mcp.models import Memory

MEMORY_COLUMNS = (
    "m.id, m.content, m.kind, m.tags, m.importance, m.occurred_at, m.created_at, m.author, m.status, "
    "m.status_reason, m.status_changed_at, m.supersedes, m.superseded_by"
)


def memory_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Memory:
    (id_, content, kind, tags, importance, occurred_at, created_at, author, status,
     status_reason, status_changed_at, supersedes, superseded_by) = tuple(row)[:13]  # fmt: skip
    return Memory(
        id=id_,
        content=content,
        kind=kind,
        tags=json.loads(tags),
        importance=importance,
        occurred_at=occurred_at,
        created_at=created_at,
        author=author,
        status=status,
        status_reason=status_reason,
        status_changed_at=status_changed_at,
        supersedes=supersedes,
        superseded_by=superseded_by,
    )


def memory_filters(
    statuses: tuple[str, ...],
    kind: str | None,
    tags: tuple[str, ...],
    since: str | None,
    until: str | None,
    exclude_ids: tuple[str, ...] = (),
) -> tuple[list[str], list[Any]]:
    """SQL conditions on `m` (the memories table) for listings by time: in one of `statuses`, of
    `kind`, carrying every one of `tags`, occurred in [since, until), none of `exclude_ids`. (Text
    search filters in the recall engine instead.)"""
    where = [f"m.status IN ({', '.join('?' * len(statuses))})"]
    params: list[Any] = list(statuses)
    if kind:
        where.append("m.kind = ?")
        params.append(kind)
    if since:
        where.append("m.occurred_at >= ?")
        params.append(since)
    if until:
        where.append("m.occurred_at < ?")
        params.append(until)
    if tags:
        where.append(
            f"m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag IN ({', '.join('?' * len(tags))}) "
            "GROUP BY memory_rowid HAVING count(*) = ?)"
        )
        params += [*tags, len(tags)]
    if exclude_ids:
        where.append(f"m.id NOT IN ({', '.join('?' * len(exclude_ids))})")
        params += exclude_ids
    return where, params
