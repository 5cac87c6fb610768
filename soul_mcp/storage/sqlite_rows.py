"""Rows of the SQLite store: the columns read, a row as a `Memory` or a `DocumentVersion`, and
listing filters. The PostgreSQL store reads the same columns the same way (MEMORY_COLUMNS,
memory_from_row, VERSION_COLUMNS, version_from_row)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from soul_mcp.models import DocumentVersion, Memory
from soul_mcp.storage.schema import kind_code, memory_id_key

VERSION_COLUMNS = "document, version, content, author, reason, created_at, restored_from, session_id"
MEMORY_COLUMNS = (
    "m.id, m.content, m.kind, m.tags, m.importance, m.occurred_at, m.created_at, m.author, m.status, "
    "m.status_reason, m.status_changed_at, m.supersedes, m.superseded_by, m.status_changed_by"
)


_STORED_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_EPOCH = datetime(1970, 1, 1)


def stored_seconds(moment: str) -> int | str:
    """What the memories table keeps of a time (schema migration 7): the unix seconds of a time in
    the stored form ('2024-05-08T10:00:00Z'), or any other text as it is (the virtual column shows
    both as the same text; the migration converts the same way, in SQL)."""
    if _STORED_TIME.fullmatch(moment):
        try:
            return (datetime.fromisoformat(moment[:19]) - _EPOCH) // timedelta(seconds=1)
        except ValueError:  # 2024-02-30
            pass
    return moment


def version_from_row(row: Sequence[Any]) -> DocumentVersion:
    """A row of VERSION_COLUMNS (or the same values, just written) as a `DocumentVersion`."""
    document, version, content, author, reason, created_at, restored_from, session_id = row
    return DocumentVersion(
        document=document,
        version=version,
        content=content,
        author=author,
        reason=reason,
        created_at=created_at,
        restored_from=restored_from,
        session_id=session_id,
    )


def memory_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Memory:
    (id_, content, kind, tags, importance, occurred_at, created_at, author, status,
     status_reason, status_changed_at, supersedes, superseded_by, status_changed_by) = tuple(row)[:14]  # fmt: skip
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
        status_changed_by=status_changed_by,
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
    # The listing indexes are partial (status = 'active', status <> 'active'): SQLite uses one only
    # when the query states its condition as written, not through a bound parameter.
    where: list[str] = []
    params: list[Any] = []
    if statuses == ("active",):
        where.append("m.status = 'active'")
    else:
        if "active" not in statuses:
            where.append("m.status <> 'active'")
        where.append(f"m.status IN ({', '.join('?' * len(statuses))})")
        params += statuses
    if kind:
        where.append("m.kind_code = ?")
        params.append(kind_code(kind))
    for moment, operator in ((since, ">="), (until, "<")):
        if moment:
            seconds = stored_seconds(moment)
            # A time in another form compares as text, as it did before times were kept as seconds.
            column = "m.occurred_unix" if isinstance(seconds, int) else "m.occurred_at"
            where.append(f"{column} {operator} ?")
            params.append(seconds)
    if tags:
        where.append(
            f"m.rowid IN (SELECT memory_rowid FROM memory_tags WHERE tag IN ({', '.join('?' * len(tags))}) "
            "GROUP BY memory_rowid HAVING count(*) = ?)"
        )
        params += [*tags, len(tags)]
    if exclude_ids:
        where.append(f"m.id_key NOT IN ({', '.join('?' * len(exclude_ids))})")
        params += [memory_id_key(i) for i in exclude_ids]
    return where, params


# Listing orders, on the stored seconds (in the same order as the text, which has a fixed width).
BY_TIME = "m.occurred_unix DESC, m.rowid DESC"
BY_IMPORTANCE = "m.importance DESC, m.occurred_unix DESC, m.rowid DESC"
