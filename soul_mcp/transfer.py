"""Moving a whole self from one store to another (`soul-mcp migrate`): SQLite to PostgreSQL, back,
or SQLite to SQLite.

What is copied, as rows with their own keys: every document version, every memory whatever its
status (its rowid too: tags, embeddings and the change log refer to it, and recall's neighbours are
rowid - 1 and rowid + 1), sessions, tokens (their hashes) and embeddings. What each store derives
from those rows (the full-text index, tag rows, text totals, document heads, sequences) the target
makes itself. The source is read in one consistent snapshot, opened read-only; the target is
written in one transaction, emptiness checked and counts compared inside it, so that a failure
leaves it as it was.

Each backend reads and writes its rows through `SelfRows` (storage/sqlite_transfer.py,
storage/postgres_transfer.py); rows travel in one neutral form per kind (ROW_COLUMNS).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from soul_mcp.errors import InvalidInput, StorageError

Row = tuple[Any, ...]

# The rows copied, in the order they are written (embeddings refer to memories), and each row's
# columns in the form both backends exchange: ids, kinds and times as text, digests and vectors as
# bytes, tags as their JSON text.
ROW_COLUMNS: dict[str, tuple[str, ...]] = {
    "document_versions": ("document", "version", "content", "author", "reason", "created_at",
                          "session_id", "restored_from"),
    "sessions": ("id", "client", "started_at"),
    "tokens": ("rowid", "name", "token_hash", "scopes", "created_at", "last_used_at", "revoked_at"),
    "memories": ("rowid", "id", "content", "content_key", "kind", "tags", "importance", "occurred_at",
                 "created_at", "author", "session_id", "status", "status_reason", "status_changed_at",
                 "supersedes", "superseded_by", "status_changed_by"),
    "memory_embeddings": ("id", "memory_rowid", "model", "dims", "text_hash", "vector"),
}  # fmt: skip
COPIED = tuple(ROW_COLUMNS)
# Counted on both sides and compared, but made by the target from the copied rows.
DERIVED = ("memory_tags", "active_memories")
# The memories the target's full-text index holds: it must be every active one.
INDEXED = "indexed_memories"

NAMES = {
    "document_versions": "document versions",
    "sessions": "sessions",
    "tokens": "tokens",
    "memories": "memories",
    "memory_embeddings": "embeddings",
    "memory_tags": "tag rows",
    "active_memories": "active memories",
    INDEXED: "memories in the text index",
}
BATCH = 1000


class SelfReading(Protocol):
    """A consistent snapshot of a self, read in batches."""

    async def counts(self) -> dict[str, int]:
        """Rows of each kind of COPIED and DERIVED, and INDEXED."""
        ...

    def rows(self, kind: str, batch: int) -> AsyncGenerator[list[Row], None]:
        """The rows of `kind`, in the columns ROW_COLUMNS names, `batch` at a time, in key order."""
        ...


class SelfWriting(Protocol):
    """One open write transaction on a store: everything it does commits together or not at all."""

    async def counts(self) -> dict[str, int]: ...

    async def clear(self) -> None:
        """Delete every row of the self (for --replace)."""
        ...

    async def write(self, kind: str, rows: list[Row]) -> None: ...

    async def finish(self) -> None:
        """Make what the store derives from the rows written (tag rows, heads, sequences)."""
        ...


class SelfRows(Protocol):
    """A store's self as rows: one implementation per backend."""

    shown: str  # the store's name for messages: a path, or a URL without its password

    def reading(self) -> AbstractAsyncContextManager[SelfReading]: ...

    def writing(self) -> AbstractAsyncContextManager[SelfWriting]: ...

    async def close(self, failed: bool = False) -> None:
        """Close; with `failed`, also remove what opening created (a new SQLite file)."""
        ...


@dataclass
class Transferred:
    source: str
    target: str
    copied: dict[str, int]
    derived: dict[str, int]
    replaced: dict[str, int] = field(default_factory=dict)  # what the target held before, if replaced
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "copied": self.copied,
            "derived": self.derived,
            "replaced": self.replaced,
            "seconds": round(self.seconds, 3),
        }


class TargetNotEmpty(InvalidInput):
    """The target already holds a self (or part of one)."""


class CountMismatch(StorageError):
    """The target does not hold what the source does, after the copy."""


def count_mismatches(source: dict[str, int], read: dict[str, int], target: dict[str, int]) -> list[str]:
    """What differs between the source's counts, the rows read from it and the target's counts,
    each in words; empty when they agree. The target's text index must hold every active memory."""
    found = []
    for kind in (*COPIED, *DERIVED):
        if kind in read and read[kind] != source.get(kind):
            found.append(f"{NAMES[kind]}: {source.get(kind)} in the source, {read[kind]} read from it")
        if target.get(kind) != source.get(kind):
            found.append(f"{NAMES[kind]}: {source.get(kind)} in the source, {target.get(kind)} in the target")
    if target.get(INDEXED) != source.get("active_memories"):
        found.append(
            f"{NAMES[INDEXED]}: {target.get(INDEXED)} in the target, for "
            f"{source.get('active_memories')} active memories"
        )
    return found


async def transfer(
    source: SelfRows,
    target: SelfRows,
    *,
    replace: bool = False,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> Transferred:
    """Copy the self of `source` into `target` (see the module's docstring). Raises TargetNotEmpty
    when the target holds rows and `replace` is false, CountMismatch when the counts differ after
    the copy; either way, and on any failure, the target's transaction is rolled back."""
    started = time.monotonic()
    async with source.reading() as reading:
        counts = await reading.counts()
        total = sum(counts[kind] for kind in COPIED)
        async with target.writing() as writing:
            held = {kind: n for kind, n in (await writing.counts()).items() if kind in COPIED and n}
            if held and not replace:
                what = ", ".join(f"{n} {NAMES[kind]}" for kind, n in held.items())
                raise TargetNotEmpty(
                    f"{target.shown} is not empty ({what}); nothing was written: choose an empty "
                    "database, or pass --replace to delete what it holds and copy in its place"
                )
            if held:
                await writing.clear()
            read: dict[str, int] = {}
            done = 0
            if progress:
                progress(0, total)
            for kind in COPIED:
                read[kind] = 0
                # Closed here even when a write fails: the reader is free again for the rollback.
                async with contextlib.aclosing(reading.rows(kind, batch)) as batches:
                    async for rows in batches:
                        await writing.write(kind, rows)
                        read[kind] += len(rows)
                        done += len(rows)
                        if progress:
                            progress(min(done, total), total)
            await writing.finish()
            after = await writing.counts()
            if problems := count_mismatches(counts, read, after):
                raise CountMismatch(
                    f"the copy into {target.shown} does not match {source.shown}: "
                    + "; ".join(problems)
                    + "; nothing was written (the copy was rolled back): run `soul-mcp doctor` on both, "
                    "and make sure nothing else writes to the target meanwhile"
                )
    return Transferred(
        source=source.shown,
        target=target.shown,
        copied={kind: read[kind] for kind in COPIED},
        derived={kind: after[kind] for kind in (*DERIVED, INDEXED)},
        replaced=held,
        seconds=time.monotonic() - started,
    )


async def open_rows(location: str, as_source: bool) -> SelfRows:
    """The SelfRows of a SQLite path or a postgresql:// URL: a source opened read-only (and never
    created or migrated), a target opened for writing (a missing SQLite file is created)."""
    from soul_mcp.config import postgres_url

    if postgres_url(location):
        from soul_mcp.storage.postgres_transfer import PostgresSelfRows

        return await (PostgresSelfRows.open_source(location) if as_source
                      else PostgresSelfRows.open_target(location))  # fmt: skip
    from soul_mcp.storage.sqlite_transfer import SQLiteSelfRows

    return await (SQLiteSelfRows.open_source(location) if as_source
                  else SQLiteSelfRows.open_target(location))  # fmt: skip


async def migrate(
    source_location: str,
    target_location: str,
    *,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Transferred:
    """Open both, copy, close. A new SQLite target file is removed again when the copy fails."""
    source = await open_rows(source_location, as_source=True)
    try:
        target = await open_rows(target_location, as_source=False)
    except BaseException:
        await source.close()
        raise
    failed = True
    try:
        if source.shown == target.shown:
            raise InvalidInput(f"{source.shown} is both the source and the target; name two databases")
        done = await transfer(source, target, replace=replace, progress=progress)
        failed = False
        return done
    finally:
        try:
            await target.close(failed=failed)
        finally:
            await source.close()
