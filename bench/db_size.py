"""The database file's size against its content: bytes per table and index, from SQLite's dbstat.

It takes a database (--db FILE), or fills one with N synthetic memories the way bench/latency.py
does (its own fill code, reused from --workdir when an identical fill is there), copies it with
SQLite's backup API, opens the copy with the project's store (which migrates an older schema to the
current one, as a server would), VACUUMs it, and prints:
- the content bytes (the UTF-8 bytes of every memory's text), the file's bytes and their ratio;
- each table and index with its pages, bytes and share of the file, from the dbstat virtual table,
  and each table's total with its indexes and (for the full-text index) its shadow tables.

    .venv/bin/python bench/db_size.py                                   # 100k memories, seed 7
    .venv/bin/python bench/db_size.py --db /tmp/soul-bench/fill-100000-s7-v2.db
    .venv/bin/python bench/db_size.py --size 1000 --json /tmp/size.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency

from soul_mcp.storage.sqlite import SQLiteStore


def copy_database(source: Path, target: Path) -> None:
    """One consistent snapshot of `source`, WAL included, into a new file."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


async def migrate(path: Path) -> int | None:
    """Open with the project's store, which brings the schema to the current version."""
    store = await SQLiteStore.open(path)
    try:
        return store.migrated_from
    finally:
        await store.close()


def measure(path: Path) -> dict[str, Any]:
    """VACUUM the file (so that free pages and half-empty ones from the fill do not count), then size it."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("VACUUM")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        memories, content = db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(content AS BLOB))), 0) FROM memories"
        ).fetchone()
        owner = dict(db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
        objects = [
            {"name": name, "pages": pages, "bytes": size, "payload": payload}
            for name, pages, size, payload in db.execute(
                "SELECT name, count(*), sum(pgsize), sum(payload) FROM dbstat GROUP BY name ORDER BY 3 DESC"
            )
        ]
    finally:
        db.close()
    file_bytes = path.stat().st_size
    tables: dict[str, int] = {}
    for item in objects:
        table = owner.get(item["name"], item["name"])
        # FTS5 keeps its index in shadow tables named after it: memories_fts_data, _idx, ...
        if table.startswith("memories_fts_"):
            table = "memories_fts"
        item["table"] = table
        tables[table] = tables.get(table, 0) + item["bytes"]
    return {
        "schema_version": version,
        "page_size": page_size,
        "memories": memories,
        "content_bytes": content,
        "file_bytes": file_bytes,
        "ratio": round(file_bytes / content, 2) if content else None,
        "objects": objects,
        "tables": dict(sorted(tables.items(), key=lambda kv: -kv[1])),
    }


def report(result: dict[str, Any]) -> str:
    mb = 1e6
    file_bytes = result["file_bytes"]
    lines = [
        f"{result['memories']:,} memories, schema version {result['schema_version']}, "
        f"page size {result['page_size']}",
        f"content {result['content_bytes'] / mb:.1f} MB, file {file_bytes / mb:.1f} MB: "
        f"{result['ratio']} x the content",
        "",
        f"{'table or index':<36} {'table':<20} {'pages':>7} {'MB':>7} {'share':>6}",
    ]
    for item in result["objects"]:
        lines.append(
            f"{item['name']:<36} {item['table']:<20} {item['pages']:>7} {item['bytes'] / mb:>7.2f} "
            f"{item['bytes'] / file_bytes:>6.1%}"
        )
    lines += ["", f"{'table, with its indexes':<36} {'MB':>7} {'share':>6}"]
    for table, size in result["tables"].items():
        lines.append(f"{table:<36} {size / mb:>7.2f} {size / file_bytes:>6.1%}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", type=Path, help="measure this database (a copy of it) instead of a fill")
    parser.add_argument("--size", type=int, default=100_000, help="memories to fill (default 100000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep the fill here and reuse it (as latency.py does)")
    parser.add_argument("--no-migrate", action="store_true", help="measure the schema the file has")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soul-db-size-") as scratch:
        source = args.db
        if source is None:
            workdir = args.workdir or Path(scratch)
            source = workdir / f"fill-{args.size}-s{args.seed}-v{latency.CORPUS_VERSION}.db"
            if not source.exists():
                partial = source.with_suffix(".partial")
                await latency.fill(partial, args.size, latency.Corpus(args.seed))
                partial.rename(source)
        copy = Path(scratch) / "measured.db"
        copy_database(source, copy)
        migrated_from = None if args.no_migrate else await migrate(copy)
        result = measure(copy)
        result["source"] = str(source)
        result["migrated_from"] = migrated_from
    if migrated_from is not None:
        print(f"(migrated from schema version {migrated_from})")
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
