"""Recall quality on LoCoMo-shaped data, through soul-mcp's own storage and recall code.

    python bench/locomo.py ../shared/eval/locomo-dev.json [--json OUT] [--semantic]
    python bench/locomo.py ../shared/eval/locomo-dev.json --postgres            # a throwaway cluster
    python bench/locomo.py ../shared/eval/locomo-dev.json --db-url postgresql://me@127.0.0.1/postgres

For each conversation: a fresh database (a SQLite file; with --db-url or --postgres, a new
PostgreSQL database on that server, created and dropped by the script); every dialogue turn stored as a memory ("Speaker: text",
occurred_at = the session's date); then every question with evidence is asked through recall, and
the ranked memory ids are scored against the evidence turn ids. recall@k counts a question as found
when any evidence turn is in the top k. The data is read at run time and never copied (its licence,
CC BY-NC 4.0, allows evaluation only).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for pg_server

from pg_server import PostgresServer

from soul_mcp.config import Semantic, Settings
from soul_mcp.core import AgentSelf
from soul_mcp.models import Actor

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
KS = (1, 5, 10)


def session_date(text: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '2023-05-08T13:56:00Z'."""
    moment = datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def evidence_ids(evidence: list[str]) -> set[str]:
    ids: set[str] = set()
    for item in evidence:
        ids.update(part.strip() for part in re.split(r"[;,]", item) if part.strip())
    return ids


def turns(conversation: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dia_id, content, occurred_at) for every turn, in order."""
    out = []
    n = 1
    while f"session_{n}" in conversation:
        when = session_date(conversation[f"session_{n}_date_time"])
        for turn in conversation[f"session_{n}"]:
            out.append((turn["dia_id"], f"{turn['speaker']}: {turn['text']}", when))
        n += 1
    return out


def score(ranked: list[set[str]], gold: set[str]) -> dict[str, float]:
    """ranked: for each hit, the dia_ids it stands for (identical turns share one memory)."""
    first = next((i for i, ids in enumerate(ranked) if ids & gold), None)
    metrics = {f"recall@{k}": float(first is not None and first < k) for k in KS}
    dcg = sum(1 / math.log2(i + 2) for i, ids in enumerate(ranked[:10]) if ids & gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    metrics["ndcg@10"] = dcg / ideal if ideal else 0.0
    metrics["mrr"] = 1 / (first + 1) if first is not None else 0.0
    return metrics


async def run_conversation(
    sample: dict[str, Any], folder: Path, semantic: bool, db_url: str | None = None
) -> tuple[list[Any], list[float]]:
    # With a URL, db_path only names the database (as the command line makes it).
    db_path = Settings.load(db_url).db_path if db_url else folder / f"{sample.get('sample_id', 'conv')}.db"
    settings = Settings(
        db_path=db_path,
        db_url=db_url,
        synchronous="NORMAL",
        semantic=Semantic(mode="local" if semantic else "off"),
    )
    agent_self = await AgentSelf.open(settings)
    actor = Actor(name="locomo")
    by_memory: dict[str, set[str]] = defaultdict(set)
    try:
        for dia_id, content, when in turns(sample["conversation"]):
            result = await agent_self.remember(content[:8000], actor, kind="event", occurred_at=when)
            by_memory[result.memory.id].add(dia_id)
        # What the server's background indexer would do, done here before any question is asked.
        await agent_self.index_embeddings()
        results, latencies = [], []
        for qa in sample["qa"]:
            gold = evidence_ids(qa.get("evidence") or [])
            if not gold:
                continue
            started = time.perf_counter()
            found = await agent_self.recall(qa["question"][:1000], limit=10)
            latencies.append((time.perf_counter() - started) * 1000)
            ranked = [by_memory.get(hit.id, set()) for hit in found.hits]
            results.append((CATEGORIES.get(qa["category"], str(qa["category"])), score(ranked, gold)))
        return results, latencies
    finally:
        await agent_self.close()


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [f"recall@{k}" for k in KS] + ["ndcg@10", "mrr"]
    return {key: round(statistics.fmean(r[key] for r in rows), 4) if rows else 0.0 for key in keys}


async def evaluate(path: Path, semantic: bool, postgres: PostgresServer | None = None) -> dict[str, Any]:
    data = json.loads(path.read_text())
    all_results: list[tuple[str, dict[str, float]]] = []
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for sample in data:
            if postgres is None:
                results, lat = await run_conversation(sample, Path(folder), semantic)
            else:
                with postgres.database() as url:
                    results, lat = await run_conversation(sample, Path(folder), semantic, url)
            all_results += results
            latencies += lat
    by_category: dict[str, list[dict[str, float]]] = defaultdict(list)
    for category, metrics in all_results:
        by_category[category].append(metrics)
    report: dict[str, Any] = {"questions": len(all_results)}
    report.update(summarise([m for _, m in all_results]))
    report["by_category"] = {
        name: {"questions": len(by_category[name]), **summarise(by_category[name])}
        for name in CATEGORIES.values()
        if by_category[name]
    }
    latencies.sort()
    report["p50_ms"] = round(latencies[len(latencies) // 2], 3)
    report["p95_ms"] = round(latencies[int(len(latencies) * 0.95)], 3)
    report["config"] = {
        "search": "hybrid" if semantic else "bm25",
        "semantic": semantic,
        "conversations": len(data),
        "store": "postgresql" if postgres is not None else "sqlite",
    }
    if semantic:
        from soul_mcp.recall import hybrid
        from soul_mcp.semantic.embedders import LocalE5

        report["config"].update(
            embedder=LocalE5.name,
            embedded_text="previous memory in the same context + the memory",
            fusion=f"(bm25/max)^2 + {hybrid.DENSE_WEIGHT} * max(0, (cos - mean)/(max - mean))^2, "
            "then neighbour smoothing",
            dense_candidates=hybrid.DENSE_CANDIDATES,
        )
    return report


def print_table(report: dict[str, Any]) -> None:
    cols = ["recall@1", "recall@5", "recall@10", "ndcg@10", "mrr"]
    print(f"{'category':<13}{'n':>6}" + "".join(f"{c:>11}" for c in cols))
    for name, m in report["by_category"].items():
        print(f"{name:<13}{m['questions']:>6}" + "".join(f"{m[c]:>11.3f}" for c in cols))
    print(f"{'all':<13}{report['questions']:>6}" + "".join(f"{report[c]:>11.3f}" for c in cols))
    print(f"recall latency: p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms; config {report['config']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="LoCoMo-shaped JSON (e.g. ../shared/eval/locomo-dev.json)")
    parser.add_argument("--semantic", action="store_true", help="hybrid search (needs the semantic extra)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--db-url",
        metavar="URL",
        help="store each conversation in a new database on this PostgreSQL server (its user must be "
        "allowed to CREATE DATABASE; each one is dropped after its conversation)",
    )
    where.add_argument(
        "--postgres",
        action="store_true",
        help="the same on a throwaway PostgreSQL cluster started here (needs initdb and pg_ctl)",
    )
    args = parser.parse_args()
    if args.db_url or args.postgres:
        with PostgresServer(args.db_url) as server:
            report = anyio.run(evaluate, args.path, args.semantic, server)
    else:
        report = anyio.run(evaluate, args.path, args.semantic)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
