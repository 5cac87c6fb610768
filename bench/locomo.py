"""Recall quality on LoCoMo-shaped data, through soul-mcp's own storage and recall code.

    python bench/locomo.py ../shared/eval/locomo-dev.json [--semantic] [--json OUT]
    python bench/locomo.py ../shared/eval/locomo-dev.json --cv [--semantic]      # cross-validated
    python bench/locomo.py ../shared/eval/locomo-dev.json \\
        --corrections ../shared/eval/locomo-dev-corrections.json                # both answer keys
    python bench/locomo.py ../shared/eval/locomo-dev.json --postgres            # a throwaway cluster
    python bench/locomo.py ../shared/eval/locomo-dev.json --db-url postgresql://me@127.0.0.1/postgres

For each conversation: a fresh database (a SQLite file; with --db-url or --postgres, a new
PostgreSQL database on that server, created and dropped by the script); every dialogue turn stored
as a memory ("Speaker: text", occurred_at = the session's date); then every question with evidence
is asked through recall, and the ranked memory ids are scored against the evidence turn ids.
recall@k counts a question as found when any evidence turn is in the top k; session recall@k when
any evidence turn's session is among the distinct sessions of the first hits, in order (what most
other memory servers publish). The data is read at run time and never copied (its licence, CC
BY-NC 4.0, allows evaluation only).

Each question's candidates and their ranker features (Recall.pool) are computed once, beside the
recall itself; `--cv` then fits the ranker (bench/train_ranker.py) on all conversations but one and
scores the one left out, for each conversation in turn, from those: the figures of a model that
never saw the questions it is scored on. `--pools FILE` keeps them (a pickle, derived from the data:
keep it out of the repository) so that another run skips storing and embedding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for pg_server

from pg_server import PostgresServer

from soul_mcp.config import Semantic, Settings
from soul_mcp.core import AgentSelf
from soul_mcp.core.text import query_terms
from soul_mcp.models import Actor
from soul_mcp.recall import QueryVector, SearchQuery
from soul_mcp.recall.ranker import FEATURES, Model, order, scores

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
KS = (1, 5, 10)
SESSION_KS = (5, 10)


def session_date(text: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '2023-05-08T13:56:00Z'."""
    moment = datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def evidence_ids(evidence: list[str]) -> set[str]:
    ids: set[str] = set()
    for item in evidence:
        ids.update(part.strip() for part in re.split(r"[;,]", item) if part.strip())
    return ids


def session_of(dia_id: str) -> str:
    """'D8:6' -> 'D8'."""
    return dia_id.split(":")[0]


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
    sessions = list(dict.fromkeys(session_of(d) for ids in ranked for d in sorted(ids)))
    wanted = {session_of(d) for d in gold}
    for k in SESSION_KS:
        metrics[f"session@{k}"] = float(bool(wanted & set(sessions[:k])))
    return metrics


@dataclass
class Question:
    """One question with evidence, and what recall made of it."""

    conversation: str
    index: int  # in the sample's qa list
    category: str
    gold: set[str]
    corrected: set[str] | None  # the audit's evidence, when it differs
    ranked: list[set[str]]  # the dia_ids of each hit of the real recall, best first
    rowids: np.ndarray  # the candidates (Recall.pool)
    features: np.ndarray  # their ranker.FEATURES rows (float32)
    fused: np.ndarray  # their fused scores: the ranking without the model


@dataclass
class Conversation:
    name: str
    dia_ids: dict[int, set[str]] = field(default_factory=dict)  # memory rowid -> its turns
    questions: list[Question] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def load_corrections(path: Path | None) -> dict[tuple[str, int], set[str]]:
    if path is None:
        return {}
    data = json.loads(path.read_text())
    return {
        (c["sample_id"], int(c["qa_index"])): evidence_ids(c["correct_evidence"]) for c in data["corrections"]
    }


async def run_conversation(
    sample: dict[str, Any],
    folder: Path,
    semantic: bool,
    corrections: dict[tuple[str, int], set[str]],
    db_url: str | None = None,
) -> Conversation:
    name = sample.get("sample_id", "conv")
    # With a URL, db_path only names the database (as the command line makes it).
    db_path = Settings.load(db_url).db_path if db_url else folder / f"{name}.db"
    settings = Settings(
        db_path=db_path,
        db_url=db_url,
        synchronous="NORMAL",
        semantic=Semantic(mode="local" if semantic else "off"),
    )
    agent_self = await AgentSelf.open(settings)
    actor = Actor(name="locomo")
    by_memory: dict[str, set[str]] = defaultdict(set)
    out = Conversation(name)
    try:
        for dia_id, content, when in turns(sample["conversation"]):
            result = await agent_self.remember(content[:8000], actor, kind="event", occurred_at=when)
            by_memory[result.memory.id].add(dia_id)
        # What the server's background indexer would do, done here before any question is asked.
        await agent_self.index_embeddings()
        engine = agent_self.recall_engine
        for memory_id, ids in by_memory.items():
            for rowid in await engine.source.rowids_of([memory_id]):
                out.dia_ids[rowid] = ids
        for index, qa in enumerate(sample["qa"]):
            gold = evidence_ids(qa.get("evidence") or [])
            if not gold:
                continue
            question = qa["question"][:1000]
            started = time.perf_counter()
            found = await agent_self.recall(question, limit=10)
            out.latencies.append((time.perf_counter() - started) * 1000)
            # The same query as recall's, for its candidates and their features.
            vector = None
            if agent_self.semantic is not None:
                vector = QueryVector(
                    agent_self.semantic.model, partial(agent_self.semantic.embed_query, question)
                )
            query = SearchQuery(terms=tuple(query_terms(question)), text=question, vector=vector, limit=10)
            pool, rows = await engine.pool(query)
            out.questions.append(
                Question(
                    conversation=name,
                    index=index,
                    category=CATEGORIES.get(qa["category"], str(qa["category"])),
                    gold=gold,
                    corrected=corrections.get((name, index)),
                    ranked=[by_memory.get(hit.id, set()) for hit in found.hits],
                    rowids=pool.rowids.copy(),
                    features=rows.astype(np.float32),
                    fused=pool.fused.copy(),
                )
            )
        return out
    finally:
        await agent_self.close()


async def collect(
    path: Path, semantic: bool, corrections: dict[tuple[str, int], set[str]], postgres: PostgresServer | None
) -> list[Conversation]:
    data = json.loads(path.read_text())
    conversations = []
    with tempfile.TemporaryDirectory() as folder:
        for sample in data:
            if postgres is None:
                conversations.append(await run_conversation(sample, Path(folder), semantic, corrections))
            else:
                with postgres.database() as url:
                    conversations.append(
                        await run_conversation(sample, Path(folder), semantic, corrections, url)
                    )
    return conversations


def pools(
    path: Path,
    semantic: bool,
    corrections: dict[tuple[str, int], set[str]],
    postgres: PostgresServer | None = None,
    cache: Path | None = None,
) -> list[Conversation]:
    """Every conversation's questions with their candidates, from `cache` when it was made for
    the same data and search, else computed (and written there)."""
    key = {
        "data": str(path.resolve()),
        "size": path.stat().st_size,
        "semantic": semantic,
        "features": FEATURES,
    }
    if cache is not None and cache.exists():
        kept = pickle.loads(cache.read_bytes())
        if kept["key"] == key:  # plain dicts: a pickle of this module's classes names __main__
            conversations = []
            for c in kept["conversations"]:
                questions = [Question(**q) for q in c.pop("questions")]
                for q in questions:  # the corrections file may have changed
                    q.corrected = corrections.get((q.conversation, q.index))
                conversations.append(Conversation(**c, questions=questions))
            return conversations
    conversations = anyio.run(collect, path, semantic, corrections, postgres)
    if cache is not None:
        plain = [dataclasses.asdict(c) for c in conversations]
        cache.write_bytes(pickle.dumps({"key": key, "conversations": plain}))
    return conversations


def ranked_by(question: Question, dia_ids: dict[int, set[str]], score: np.ndarray) -> list[set[str]]:
    """The first 10 hits of the question's candidates ranked by `score`, as the engine ranks them."""
    best = order(question.rowids, score)[:10]
    return [dia_ids.get(int(r), set()) for r in question.rowids[best]]


Ranking = Callable[[Conversation, Question], list[set[str]]]


def measure(
    conversations: Sequence[Conversation], ranking: Ranking, corrected: bool = False
) -> list[tuple[str, dict[str, float]]]:
    """(category, metrics) of every question of `conversations` ranked by `ranking`."""
    rows = []
    for conversation in conversations:
        for q in conversation.questions:
            gold = q.corrected if corrected and q.corrected is not None else q.gold
            rows.append((q.category, score(ranking(conversation, q), gold)))
    return rows


def as_shipped(conversation: Conversation, q: Question) -> list[set[str]]:
    return q.ranked


def by_fused(conversation: Conversation, q: Question) -> list[set[str]]:
    return ranked_by(q, conversation.dia_ids, q.fused)


def by_model(model: Model) -> Ranking:
    def rank(conversation: Conversation, q: Question) -> list[set[str]]:
        return ranked_by(q, conversation.dia_ids, scores(q.features.astype(np.float64), model))

    return rank


METRICS = [f"recall@{k}" for k in KS] + [f"session@{k}" for k in SESSION_KS] + ["ndcg@10", "mrr"]


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(r[key] for r in rows), 4) if rows else 0.0 for key in METRICS}


def report_of(results: list[tuple[str, dict[str, float]]]) -> dict[str, Any]:
    by_category: dict[str, list[dict[str, float]]] = defaultdict(list)
    for category, metrics in results:
        by_category[category].append(metrics)
    report: dict[str, Any] = {"questions": len(results)}
    report.update(summarise([m for _, m in results]))
    report["by_category"] = {
        name: {"questions": len(by_category[name]), **summarise(by_category[name])}
        for name in CATEGORIES.values()
        if by_category[name]
    }
    return report


def cross_validate(
    conversations: list[Conversation],
    semantic: bool,
    corrected: bool,
    weigh: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Leave one conversation out: fit on the others, score it; the fused ranking beside it."""
    from train_ranker import fit_model

    folds: list[dict[str, Any]] = []
    results: list[tuple[str, dict[str, float]]] = []
    for held_out in conversations:
        training = [c for c in conversations if c is not held_out]
        model = fit_model(training, semantic, weigh)
        fold = measure([held_out], by_model(model), corrected)
        results += fold
        folds.append(
            {
                "conversation": held_out.name,
                "ranker": report_of(fold),
                "fused": report_of(measure([held_out], by_fused, corrected)),
            }
        )
    report = report_of(results)
    report["folds"] = folds
    for key in METRICS:
        values = [f["ranker"][key] for f in folds]
        report[f"{key}_folds"] = {
            "mean": round(statistics.fmean(values), 4),
            "min": min(values),
            "max": max(values),
        }
    return report


# An inference, not a fact a turn states: "Would Caroline likely...", "What might John...".
INFERENCE = re.compile(
    r"^(would|might|could|is it likely)\b|\blikely\b|^what\b.*\b(might|would)\b", re.IGNORECASE
)
WEAK = ("multi-hop", "open-domain")


def miss_kind(conversation: Conversation, q: Question, text: str) -> str:
    """Why a question's evidence is hard to find, the first that fits: the question asks for an
    inference; the evidence is in two sessions or more; no evidence turn holds a third of the query
    words' idf (a vocabulary gap); else other memories hold the words too (outranked)."""
    evidence = np.array([bool(conversation.dia_ids.get(int(r), set()) & q.gold) for r in q.rowids])
    coverage = float(q.features[evidence, FEATURES.index("coverage")].max()) if evidence.any() else 0.0
    if INFERENCE.search(text):
        return "implicit answer"
    if len({session_of(d) for d in q.gold}) >= 2:
        return "needs two memories"
    if coverage < 1 / 3:
        return "vocabulary gap"
    return "outranked"


def misses(
    path: Path, conversations: list[Conversation], semantic: bool, weigh: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The weak categories' misses at @5 of the cross-validated ranker by kind (miss_kind), and
    by kind the questions it found and lost against the fused ranking."""
    from train_ranker import fit_model

    texts = {
        (s.get("sample_id", "conv"), i): qa["question"]
        for s in json.loads(path.read_text())
        for i, qa in enumerate(s["qa"])
    }
    out: dict[str, Any] = {
        name: {"missed": defaultdict(int), "found": defaultdict(int), "lost": defaultdict(int)}
        for name in WEAK
    }
    for held_out in conversations:
        model = fit_model([c for c in conversations if c is not held_out], semantic, weigh)
        for q in held_out.questions:
            if q.category not in WEAK:
                continue
            kind = miss_kind(held_out, q, texts[(q.conversation, q.index)])
            now = score(by_model(model)(held_out, q), q.gold)["recall@5"]
            before = score(by_fused(held_out, q), q.gold)["recall@5"]
            counts = out[q.category]
            if not now:
                counts["missed"][kind] += 1
            if now and not before:
                counts["found"][kind] += 1
            if before and not now:
                counts["lost"][kind] += 1
    return out


def print_table(title: str, report: dict[str, Any], beside: dict[str, Any] | None = None) -> None:
    """One row per category: recall@1/5/10, session@5/10, MRR; `beside`'s recall@5/@10 after."""
    cols = ["recall@1", "recall@5", "recall@10", "session@5", "session@10", "mrr"]
    print(f"\n{title}")
    extra = "   corrected @5/@10" if beside else ""
    print(f"{'category':<13}{'n':>5}" + "".join(f"{c:>11}" for c in cols) + extra)

    def row(name: str, n: int, m: dict[str, float], other: dict[str, float] | None) -> str:
        line = f"{name:<13}{n:>5}" + "".join(f"{m[c]:>11.3f}" for c in cols)
        if other is not None:
            line += f"        {other['recall@5']:.3f} / {other['recall@10']:.3f}"
        return line

    for name, m in report["by_category"].items():
        print(row(name, m["questions"], m, beside["by_category"][name] if beside else None))
    print(row("all", report["questions"], report, beside))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="LoCoMo-shaped JSON (e.g. ../shared/eval/locomo-dev.json)")
    parser.add_argument("--semantic", action="store_true", help="hybrid search (needs the semantic extra)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--cv",
        action="store_true",
        help="leave one conversation out: fit the ranker on the others, score it (and the fused ranking)",
    )
    parser.add_argument(
        "--corrections", type=Path, metavar="FILE", help="corrected evidence (locomo-dev-corrections.json)"
    )
    parser.add_argument("--pools", type=Path, metavar="FILE", help="keep the candidates here (a pickle)")
    parser.add_argument(
        "--misses", action="store_true", help="classify the misses of multi-hop and open-domain (with --cv)"
    )
    parser.add_argument(
        "--weigh",
        action="append",
        default=[],
        metavar="CATEGORY=N",
        help="with --cv: a category's questions count N times in each fit (as train_ranker.py --weigh)",
    )
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
    corrections = load_corrections(args.corrections)
    from train_ranker import weights_by_category

    weigh = weights_by_category(args.weigh)
    if args.db_url or args.postgres:
        with PostgresServer(args.db_url) as server:
            conversations = pools(args.path, args.semantic, corrections, server, args.pools)
    else:
        conversations = pools(args.path, args.semantic, corrections, None, args.pools)

    report: dict[str, Any] = {"config": {"search": "hybrid" if args.semantic else "bm25"}}
    report["config"]["store"] = "postgresql" if args.db_url or args.postgres else "sqlite"
    report["config"]["conversations"] = [c.name for c in conversations]
    keys = [False, True] if corrections else [False]
    for corrected in keys:
        name = "corrected" if corrected else "original"
        report[name] = {
            "as_shipped": report_of(measure(conversations, as_shipped, corrected)),
            "fused": report_of(measure(conversations, by_fused, corrected)),
        }
        if args.cv:
            report[name]["cv"] = cross_validate(conversations, args.semantic, corrected, weigh)
    beside = report.get("corrected")
    for part, title in [
        ("as_shipped", "recall as shipped (ranker.json)"),
        ("fused", "the fused score alone (no model)"),
    ]:
        print_table(title, report["original"][part], beside[part] if beside else None)
    if args.cv:
        cv = report["original"]["cv"]
        print_table(
            "ranker, leave one conversation out (each fold fitted on the other four)",
            cv,
            beside["cv"] if beside else None,
        )
        print(f"\n{'held out':<10}{'n':>5}   ranker @1 / @5 / @10      fused @1 / @5 / @10")
        for fold in cv["folds"]:
            r, f = fold["ranker"], fold["fused"]
            print(
                f"{fold['conversation']:<10}{r['questions']:>5}   "
                f"{r['recall@1']:.3f} / {r['recall@5']:.3f} / {r['recall@10']:.3f}     "
                f"{f['recall@1']:.3f} / {f['recall@5']:.3f} / {f['recall@10']:.3f}"
            )
    if args.cv and args.misses:
        report["misses"] = misses(args.path, conversations, args.semantic, weigh)
        print("\nmisses at @5 of the cross-validated ranker, by kind; found and lost against the fused score")
        for category, counts in report["misses"].items():
            print(f"{category:<13}" + "; ".join(f"{part} {dict(kinds)}" for part, kinds in counts.items()))
    latencies = sorted(t for c in conversations for t in c.latencies)
    if latencies:
        report["p50_ms"] = round(latencies[len(latencies) // 2], 3)
        report["p95_ms"] = round(latencies[int(len(latencies) * 0.95)], 3)
        print(
            f"\nrecall latency in process: p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms; {report['config']}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
