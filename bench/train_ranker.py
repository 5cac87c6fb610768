"""Fit the recall ranker (soul_mcp/recall/ranker.py) on LoCoMo's development split, and write it.

    python bench/train_ranker.py ../shared/eval/locomo-dev.json \\
        [--pools /tmp/pools-bm25.pickle] [--semantic-pools /tmp/pools-hybrid.pickle] [--out FILE]

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
from collections.abc import Sequence
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


def questions(conversations: Sequence[Conversation]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of each question's first DEPTH candidates, for the questions whose
    evidence is among them (the others say nothing about the order of the head)."""
    out = []
    for conversation in conversations:
        for q in conversation.questions:
            label = np.array([bool(conversation.dia_ids.get(int(r), set()) & q.gold) for r in q.rowids])
            head = np.lexsort((-q.rowids, -q.fused))[:DEPTH]
            if label[head].any():
                out.append((q.features[head].astype(np.float64), label[head].astype(np.float64)))
    return out


def loss(data: list[tuple[np.ndarray, np.ndarray]], beta: np.ndarray, l2: float) -> float:
    total = 0.5 * l2 * float(beta @ beta)
    for x, y in data:
        s = x @ beta
        top = s.max()
        total -= float((y / y.sum()) @ (s - top - np.log(np.exp(s - top).sum())))
    return total


def fit(
    data: list[tuple[np.ndarray, np.ndarray]], pairs: tuple[tuple[int, int], ...], l2: float = L2
) -> Model:
    """A conditional logit (a softmax over each question's candidates, the evidence its target),
    by Newton's method with step halving, L2-penalised: the weights of a linear score whose order
    puts the evidence first. The bias is 0 (a softmax ignores it)."""
    data = [(design(x, pairs), y) for x, y in data]
    beta = np.zeros(data[0][0].shape[1])
    current = loss(data, beta, l2)
    for _ in range(NEWTON_STEPS):
        gradient = l2 * beta
        hessian = l2 * np.eye(len(beta))
        for x, y in data:
            s = x @ beta
            p = np.exp(s - s.max())
            p /= p.sum()
            gradient += x.T @ (p - y / y.sum())
            centred = x - p @ x
            hessian += (centred * p[:, None]).T @ centred
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


def fit_model(conversations: Sequence[Conversation], hybrid: bool) -> Model:
    return fit(questions(conversations), pairs_for(hybrid))


def main() -> None:
    from locomo import load_corrections, pools

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="the development split (../shared/eval/locomo-dev.json)")
    parser.add_argument("--pools", type=Path, help="BM25 candidates kept by locomo.py --pools")
    parser.add_argument(
        "--semantic-pools", type=Path, help="hybrid candidates kept by locomo.py --semantic --pools"
    )
    parser.add_argument("--out", type=Path, default=RANKER_FILE)
    args = parser.parse_args()
    if "dev" not in args.path.name:
        parser.error("the ranker is fitted on the development split only (locomo-dev.json)")
    corrections = load_corrections(None)
    models = {}
    for name, semantic, cache in (("bm25", False, args.pools), ("hybrid", True, args.semantic_pools)):
        conversations = pools(args.path, semantic, corrections, None, cache)
        models[name] = fit_model(conversations, semantic)
        print(
            f"{name}: "
            + ", ".join(f"{f} {w:+.3f}" for f, w in zip(FEATURES, models[name].weights, strict=True))
        )
    about = {
        "trained_on": "LoCoMo development split (conv-26, conv-30, conv-41, conv-42, conv-43), original key",
        "by": "bench/train_ranker.py",
        "fit": f"conditional logit over each question's first {DEPTH} candidates, L2 {L2}",
    }
    write_models(args.out, models, about)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
