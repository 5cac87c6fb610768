"""bench/latency.py's fresh-server mode: the corpus is the issue's, and a small run reports each era.

The benchmark's figures are never asserted (tests never time anything); these tests check that it
measures what it says: memories and questions shaped as the issue describes, and one fresh server per
protocol era and run with the recalls counted from the spawn.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import anyio
from conftest import ROOT

# Registered before it runs: its dataclasses look their module up in sys.modules.
_spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "bench" / "latency.py")
assert _spec is not None and _spec.loader is not None
bench = sys.modules["bench_latency"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_natural_corpus_has_the_issues_shape() -> None:
    corpus = bench.NaturalCorpus(7)
    memories = [corpus.sentence() for _ in range(20_000)]
    assert all(15 <= len(m.split()) <= 25 for m in memories)
    held = Counter(w for m in memories for w in set(re.findall(r"\w+", m.lower())))
    content = {w.lower() for w in corpus.topics + corpus.people + corpus.places + corpus.years}
    shares = [held[w] / len(memories) for w in content]
    # "each content word in roughly 0.1-10 % of the memories" (20,000 draws: a little slack at the tail)
    assert max(shares) <= 0.1
    assert sum(s < 0.0005 for s in shares) == 0
    assert all(3 <= len(corpus.question().split()) <= 7 for _ in range(500))
    assert bench.NaturalCorpus(7).sentence() == bench.NaturalCorpus(7).sentence()


def test_fresh_mode_reports_each_era_from_fresh_servers(tmp_path: Path) -> None:
    out = tmp_path / "fresh.json"
    argv = ["--sizes", "200", "--fresh", "--fresh-runs", "1", "--fresh-remembers", "2", "--earlier-gap", "0"]
    argv += ["--workdir", str(tmp_path), "--json", str(out)]
    assert anyio.run(bench.main, argv) == 0
    (size,) = json.loads(out.read_text())["sizes"]
    assert size["fill"]["memories"] == 200
    assert set(size["eras"]) == {"legacy", "auto"}
    for era in size["eras"].values():
        assert era["runs"] == 1
        assert era["early"]["n"] == 50 and era["late"]["n"] == 50
        assert era["after_write"]["n"] == 2
        assert era["ready_s"]["median"] > 0 and era["tools_list_s"]["median"] <= era["ready_s"]["median"]
    short = size["after_short_session"]
    assert short["first_recall_without_snapshot_ms"] > 0
    assert short["early"]["n"] == 50 and short["late"]["n"] == 50
    # The copy it measured on is gone; the measured database and its snapshot stay.
    assert not list(tmp_path.glob("*-short.db*"))


def test_the_postgres_fill_stores_through_the_stores_own_insert(postgres_url: str) -> None:
    """The benchmark fills PostgreSQL with PostgresStore's own statement (a renamed or changed one
    must not leave the benchmark broken); a second fill of the same memories adds none."""
    import psycopg

    corpus = bench.NaturalCorpus(7)
    first = anyio.run(bench.fill_postgres, postgres_url, 40, corpus)
    again = anyio.run(bench.fill_postgres, postgres_url, 40, bench.NaturalCorpus(7))
    with psycopg.connect(postgres_url) as db:
        (count,) = db.execute("SELECT count(*) FROM memories").fetchone() or (0,)
    assert (first["memories"], again["memories"], count) == (40, 0, 40)  # "memories": the ones stored
