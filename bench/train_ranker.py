"""Fit the recall ranker (soul_mcp/recall/ranker.py) on LoCoMo's development split, and write it.

    python bench/train_ranker.py ../shared/eval/locomo-dev.json \\
        [--pools /tmp/pools-bm25.pickle] [--semantic-pools /tmp/pools-hybrid.pickle] [--out FILE] \\
        [--weigh CATEGORY=N ...]
    python bench/train_ranker.py --time      # what re-scoring one recall's pool costs, in process

Stores the development conversations and asks their questions through soul-mcp, as bench/locomo.py
does (both with BM25 alone and hybrid: the `semantic` extra is needed), takes each question's
candidates with their features (Recall.pool), and fits one model per search: a conditional logit
whose target, among each question's candidates, is its evidence turns. Only the development split
(the five conversations of locomo-dev.json) is ever read: the other five stay unseen. The weights
go to soul_mcp/recall/ranker.json (the default --out), a reviewed change with the figures of
`bench/locomo.py --cv` that justify it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from soul_mcp.recall.ranker import FEATURES, RANKER_FILE, Model, design, write_models

if TYPE_CHECKING:
    from locomo import Conversation

# Only a question's first DEPTH candidates in the fused ranking are fitted on: the model is to
# reorder the head of the ranking, and the tail's easy negatives would pull it towards telling
# them apart instead.
DEPTH = 100
# L2 penalty on the weights; each question counts once in the loss.
L2 = 1.0
NEWTON_STEPS = 50
# The features whose pairwise products the model weighs too (ranker.Model): the score parts and
# how the memory and its neighbours hold the query's words and names. The dense ones: hybrid only.
PAIRED = (
    "fused",
    "fused_log_rank",
    "bm25",
    "coverage",
    "lent",
    "previous_own",
    "next_own",
    "previous_coverage",
    "next_coverage",
    "name_match",
)
PAIRED_DENSE = ("dense", "dense_log_rank", "previous_dense", "next_dense")


def pairs_for(hybrid: bool) -> tuple[tuple[int, int], ...]:
    names = PAIRED + PAIRED_DENSE if hybrid else PAIRED
    at = [FEATURES.index(name) for name in names]
    return tuple(itertools.combinations_with_replacement(at, 2))


# (features, labels, weight) of one question: its candidates' rows, which are its evidence, and
# how much it counts in the fit.
Example = tuple[np.ndarray, np.ndarray, float]


def questions(
    conversations: Sequence[Conversation], weigh: Mapping[str, float] | None = None
) -> list[Example]:
    """(features, labels, weight) of each question's first DEPTH candidates, for the questions whose
    evidence is among them (the others say nothing about the order of the head). `weigh`: a weight
    per category (1 for any other), e.g. {"adversarial": 3}, to make a category count more."""
    out = []
    for conversation in conversations:
        for q in conversation.questions:
            label = np.array([bool(conversation.dia_ids.get(int(r), set()) & q.gold) for r in q.rowids])
            head = np.lexsort((-q.rowids, -q.fused))[:DEPTH]
            if label[head].any():
                weight = float((weigh or {}).get(q.category, 1.0))
                out.append((q.features[head].astype(np.float64), label[head].astype(np.float64), weight))
    return out


def loss(data: list[Example], beta: np.ndarray, l2: float) -> float:
    total = 0.5 * l2 * float(beta @ beta)
    for x, y, w in data:
        s = x @ beta
        top = s.max()
        total -= w * float((y / y.sum()) @ (s - top - np.log(np.exp(s - top).sum())))
    return total


def fit(data: list[Example], pairs: tuple[tuple[int, int], ...], l2: float = L2) -> Model:
    """A conditional logit (a softmax over each question's candidates, the evidence its target),
    by Newton's method with step halving, L2-penalised: the weights of a linear score whose order
    puts the evidence first. The bias is 0 (a softmax ignores it)."""
    data = [(design(x, pairs), y, w) for x, y, w in data]
    beta = np.zeros(data[0][0].shape[1])
    current = loss(data, beta, l2)
    for _ in range(NEWTON_STEPS):
        gradient = l2 * beta
        hessian = l2 * np.eye(len(beta))
        for x, y, w in data:
            s = x @ beta
            p = np.exp(s - s.max())
            p /= p.sum()
            gradient += w * (x.T @ (p - y / y.sum()))
            centred = x - p @ x
            hessian += w * ((centred * p[:, None]).T @ centred)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-4 and (new := loss(data, beta - size * step, l2)) > current:
            size /= 2
        beta = beta - size * step
        done = current - new < 1e-7
        current = new
        if done:
            break
    weights = tuple(float(b) for b in beta)
    return Model(weights[: len(FEATURES)], pairs, weights[len(FEATURES) :])


def fit_model(
    conversations: Sequence[Conversation], hybrid: bool, weigh: Mapping[str, float] | None = None
) -> Model:
    return fit(questions(conversations, weigh), pairs_for(hybrid))


def weights_by_category(given: Sequence[str]) -> dict[str, float]:
    """--weigh CATEGORY=N ... as {category: N}."""
    from locomo import CATEGORIES

    out = {}
    for item in given:
        category, _, number = item.partition("=")
        if category not in CATEGORIES.values():
            raise SystemExit(f"--weigh {item}: the category must be one of {', '.join(CATEGORIES.values())}")
        try:
            out[category] = float(number)
        except ValueError:
            raise SystemExit(f"--weigh {item}: the weight must be a number, as in adversarial=3") from None
        if not out[category] > 0:
            raise SystemExit(f"--weigh {item}: the weight must be above 0")
    return out


def scoring_time(
    candidates: int = 800, words: int = 28, memories: int = 100_000, runs: int = 300
) -> dict[str, float]:
    """Microseconds (median, p95) to compute the features of a pool of `candidates` and score them
    with the shipped hybrid model, the work the ranker adds to a recall: a pool as large as hybrid
    recall makes (500 BM25 matches, 100 similar memories, the neighbours of 100 lenders), `words`
    query words (the latency bench's p95) whose postings hold up to a third of `memories`, a "when"
    question naming a person and a month (every feature computed). Synthetic data: only the sizes
    matter to the cost."""
    import time

    from soul_mcp.recall.bm25 import Postings
    from soul_mcp.recall.query_facts import QueryFacts
    from soul_mcp.recall.ranker import TIME_WORDS, Pool, features, read_models, scores

    rng = np.random.default_rng(7)
    rowids = np.sort(rng.choice(np.arange(1, memories + 1), candidates, replace=False)).astype(np.int64)

    def postings(size: int) -> Postings:
        held = np.sort(rng.choice(np.arange(1, memories + 1), size, replace=False)).astype(np.int64)
        return Postings(held, np.ones(size), memories, memories, size)

    sizes = np.geomspace(10, memories // 3, words).astype(int)
    query_words = [postings(int(size)) for size in sizes]
    time_words = [postings(memories // 50) for _ in TIME_WORDS]
    fused = rng.random(candidates)
    similarity = rng.random(candidates)
    pool = Pool(
        rowids=rowids,
        fused=fused,
        own=fused * 0.8,
        lender=np.zeros(candidates, dtype=np.int64),
        candidate=rng.random(candidates) < 0.8,
        bm25=rng.random(candidates),
        bm25_rank=np.where(rng.random(candidates) < 0.8, rng.permutation(candidates), -1),
        dense=similarity,
        similarity=similarity,
    )
    when = 20230101000000 + rng.integers(0, 365, candidates) * 1_000_000
    context = rng.integers(0, candidates // 10, candidates)
    facts = QueryFacts(names=("caroline",), periods=((20230501000000, 20230601000000),), form="when")
    idfs = list(rng.random(words) * 5)
    model = read_models(RANKER_FILE)["hybrid"]
    featuring, scoring = [], []
    for _ in range(runs):
        started = time.perf_counter()
        rows = features(pool, query_words, idfs, [3], [], when, context, facts, time_words)
        featured = time.perf_counter()
        scores(rows, model)
        featuring.append((featured - started) * 1e6)
        scoring.append((time.perf_counter() - featured) * 1e6)
    out = {}
    for name, taken in (("features", sorted(featuring)), ("scores", sorted(scoring))):
        out[f"{name}_median_us"] = round(taken[len(taken) // 2], 1)
        out[f"{name}_p95_us"] = round(taken[int(len(taken) * 0.95)], 1)
    return out


def main() -> None:
    from locomo import load_corrections, pools

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "path", type=Path, nargs="?", help="the development split (../shared/eval/locomo-dev.json)"
    )
    parser.add_argument("--pools", type=Path, help="BM25 candidates kept by locomo.py --pools")
    parser.add_argument(
        "--semantic-pools", type=Path, help="hybrid candidates kept by locomo.py --semantic --pools"
    )
    parser.add_argument("--out", type=Path, default=RANKER_FILE)
    parser.add_argument("--time", action="store_true", help="time re-scoring one pool (scoring_time)")
    parser.add_argument(
        "--weigh",
        action="append",
        default=[],
        metavar="CATEGORY=N",
        help="make a category's questions count N times in the fit (e.g. adversarial=3); repeatable",
    )
    args = parser.parse_args()
    if args.time:
        for candidates, words in ((800, 28), (600, 20)):
            taken = scoring_time(candidates, words)
            print(f"{candidates} candidates, {words} query words, 100k memories: {taken}")
        return
    if args.path is None:
        parser.error("the development split is needed (../shared/eval/locomo-dev.json)")
    if "dev" not in args.path.name:
        parser.error("the ranker is fitted on the development split only (locomo-dev.json)")
    corrections = load_corrections(None)
    weigh = weights_by_category(args.weigh)
    models = {}
    for name, semantic, cache in (("bm25", False, args.pools), ("hybrid", True, args.semantic_pools)):
        conversations = pools(args.path, semantic, corrections, None, cache)
        models[name] = fit_model(conversations, semantic, weigh)
        print(
            f"{name}: "
            + ", ".join(f"{f} {w:+.3f}" for f, w in zip(FEATURES, models[name].weights, strict=True))
        )
    about = {
        "trained_on": "LoCoMo development split (conv-26, conv-30, conv-41, conv-42, conv-43), original key",
        "by": "bench/train_ranker.py",
        "fit": f"conditional logit over each question's first {DEPTH} candidates, L2 {L2}",
    }
    if weigh:
        about["weighed"] = ", ".join(f"{category} x{n:g}" for category, n in sorted(weigh.items()))
    write_models(args.out, models, about)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
