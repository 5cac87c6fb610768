"""The learned ranker (soul_mcp/recall/ranker.py) and what it reads in a query (query_facts.py).

Ranking is driven through the MCP `recall` tool on real SQLite files; the model file shipped in the
package is checked as recall checks it, and a damaged one is refused with a log line while recall
still ranks (by the fused score, the order of the old fusion).
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from soul_mcp.recall import Recall
from soul_mcp.recall.filters import among
from soul_mcp.recall.query_facts import query_facts
from soul_mcp.recall.ranker import FEATURES, RANKER_FILE, Model, _holding, design, read_models, scores

pytestmark = pytest.mark.anyio


async def ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    assert result.structured_content is not None
    return result.structured_content


async def remember(client: Client, content: str, occurred_at: str) -> str:
    return (await ok(client, "remember", {"content": content, "occurred_at": occurred_at}))["memory"]["id"]


async def ranked(client: Client, query: str) -> list[str]:
    return [hit["id"] for hit in (await ok(client, "recall", {"query": query}))["hits"]]


# --- query facts, read without a model call ---

TODAY = date(2026, 12, 7)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("When did Caroline go to the support group?", ("caroline",)),
        ("What did Melanie's kids paint?", ("melanie",)),
        ("Caroline met Jon in Paris", ("jon", "paris")),  # the first word starts the sentence
        ("May I ask what I said about the garden?", ()),  # "May" and "I" name no one
        ("what did gina say", ()),
    ],
)
def test_names_are_capitalised_words_inside_a_sentence(text: str, names: tuple[str, ...]) -> None:
    assert query_facts(text, TODAY).names == names


def test_known_names_are_found_in_any_case() -> None:
    assert query_facts("what did gina say", TODAY, known_names=["Gina"]).names == ("gina",)


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("What happened in 2023?", (20230101000000, 20240101000000)),
        ("What did we plan in March 2022?", (20220301000000, 20220401000000)),
        ("Where were we on 8 May, 2023?", (20230508000000, 20230509000000)),
        ("Where were we on May 8, 2023?", (20230508000000, 20230509000000)),
        ("What did I paint last May?", (20260501000000, 20260601000000)),
        ("What did I paint in December?", (20261201000000, 20270101000000)),
        ("What did I paint last December?", (20251201000000, 20260101000000)),
        ("Who called yesterday?", (20261206000000, 20261207000000)),
        ("What did I read last month?", (20261101000000, 20261201000000)),
        ("What did I read last year?", (20250101000000, 20260101000000)),
    ],
)
def test_times_in_a_query_become_periods(text: str, period: tuple[int, int]) -> None:
    assert query_facts(text, TODAY).periods == (period,)


def test_may_as_a_word_is_no_month() -> None:
    assert query_facts("May I see what you may have said?", TODAY).periods == ()


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("When did Caroline go?", "when"),
        ("What year did we move?", "when"),
        ("Who gave Melanie the book?", "who"),
        ("Where did they meet?", "where"),
        ("How many kids does she have?", "how_many"),
        ("Why did he leave?", "why"),
        ("What did I say about the garden?", None),
    ],
)
def test_the_question_form_says_what_is_wanted(text: str, form: str | None) -> None:
    assert query_facts(text, TODAY).form == form


def test_quoted_phrases_are_kept() -> None:
    assert query_facts('Who said "the big move" and “green tea”?', TODAY).quoted == (
        "the big move",
        "green tea",
    )


# --- the model file ---


def test_the_shipped_model_file_loads_and_names_these_features() -> None:
    models = read_models(RANKER_FILE)
    assert set(models) == {"bm25", "hybrid"}
    assert json.loads(RANKER_FILE.read_text())["features"] == list(FEATURES)
    assert RANKER_FILE.stat().st_size < 20_000  # a few kilobytes of weights, no more


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: "{ not json",
        lambda data: json.dumps({**data, "features": data["features"][:-1]}),
        lambda data: json.dumps({**data, "version": 99}),
        lambda data: json.dumps(data).replace('"weights": [', '"weights": [NaN, ', 1),
        lambda data: json.dumps({**data, "models": {"bm25": data["models"]["bm25"]}}),
    ],
    ids=["not-json", "other-features", "other-version", "not-finite", "a-model-missing"],
)
def test_a_damaged_model_file_is_refused(damage: Any, tmp_path: Path) -> None:
    damaged = tmp_path / "ranker.json"
    damaged.write_text(damage(json.loads(RANKER_FILE.read_text())))
    with pytest.raises(ValueError):
        read_models(damaged)


# --- the model's arithmetic ---


def test_a_model_scores_its_features_and_their_pairs_as_computed_by_hand() -> None:
    import numpy as np

    weights = [0.0] * len(FEATURES)
    weights[0], weights[2] = 2.0, -1.0
    # (0, 1): x0*x1 weighed 3; (1, 1): x1² weighed 0.5; (1, 0) again, weighed -1.
    model = Model(tuple(weights), ((0, 1), (1, 1), (1, 0)), (3.0, 0.5, -1.0), bias=0.25)
    rows = np.zeros((2, len(FEATURES)))
    rows[0, :3] = [1.0, 2.0, 4.0]
    rows[1, :3] = [0.5, -1.0, 0.0]
    # 2*1 - 4 + 3*2 + 0.5*4 - 2 + 0.25 = 4.25; 2*0.5 - 0 + 3*-0.5 + 0.5*1 + 0.5 + 0.25 = 0.75
    assert scores(rows, model).tolist() == pytest.approx([4.25, 0.75])
    by_design = design(rows, model.pairs) @ np.asarray(model.weights + model.pair_weights) + model.bias
    assert scores(rows, model).tolist() == pytest.approx(by_design.tolist())


def test_the_shipped_models_score_as_their_design_rows_do() -> None:
    import numpy as np

    rows = np.random.default_rng(5).random((300, len(FEATURES)))
    for model in read_models(RANKER_FILE).values():
        expected = design(rows, model.pairs) @ np.asarray(model.weights + model.pair_weights) + model.bias
        assert np.allclose(scores(rows, model), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("postings", [3, 40, 400, 4000])
def test_which_candidates_hold_a_word_whichever_side_is_longer(postings: int) -> None:
    import numpy as np

    rng = np.random.default_rng(postings)
    rowids = np.sort(rng.choice(np.arange(1, 5000), 200, replace=False))
    word = np.sort(rng.choice(np.arange(1, 5000), postings, replace=False))
    held = _holding(rowids, word)
    assert held.tolist() == among(rowids, word).tolist()
    assert held.tolist() == np.isin(rowids, word).tolist()
    assert not _holding(rowids, word[:0]).any() and len(_holding(rowids[:0], word)) == 0


# --- ranking through the recall tool ---


def _last_may() -> tuple[str, str]:
    """A day in the last May before today, and a day in the January before that (UTC)."""
    today = datetime.now(timezone.utc).date()
    year = today.year if today.month > 5 else today.year - 1
    return f"{year}-05-14", f"{year}-01-14"


async def test_a_memory_dated_in_the_month_the_query_names_ranks_up(server: Any) -> None:
    may, january = _last_may()
    async with Client(server) as c:
        # The same words, so the same BM25 score; on different days, so no lending between them.
        in_may = await remember(c, "Visited the lake with Sam", occurred_at=may)
        in_january = await remember(c, "Visited the lake with Ann", occurred_at=january)
        assert (await ranked(c, "When did I visit the lake last May?"))[0] == in_may
        assert (await ranked(c, f"When did I visit the lake in January {january[:4]}?"))[0] == in_january


FILLER = (
    "The build takes four minutes",
    "We moved the meeting to Friday",
    "The cat sleeps on the sofa",
    "Rain is expected all week",
    "The invoice was paid late",
    "Tom fixed the bike chain",
)


async def named_and_other(client: Client) -> tuple[str, str]:
    """Two memories that each hold two words of NAME_QUERY (the same BM25 score: a tie that the
    newer one wins without the ranker), only the older one its name; and memories holding none."""
    named = await remember(client, "Melanie: we went to the lake", occurred_at="2024-01-01")
    other = await remember(client, "Caroline: a sunrise painting, so pretty", occurred_at="2024-02-01")
    for day, text in enumerate(FILLER, start=1):  # so that every query word is rare: its idf above 0
        await remember(client, text, occurred_at=f"2024-03-0{day}")
    return named, other


NAME_QUERY = "What did Melanie paint at the lake at sunrise?"


async def test_a_memory_that_holds_the_name_in_the_query_ranks_up(server: Any) -> None:
    async with Client(server) as c:
        named, other = await named_and_other(c)
        assert await ranked(c, NAME_QUERY) == [named, other]


async def test_a_damaged_model_file_is_logged_and_recall_ranks_by_the_fused_score(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = tmp_path / "ranker.json"
    damaged.write_text('{"version": 1, "features": ["fused"]}')
    monkeypatch.setattr(Recall, "ranker_file", damaged)
    caplog.set_level(logging.ERROR, logger="soul_mcp.recall.ranker")
    async with Client(server) as c:
        named, other = await named_and_other(c)
        # The old fusion's order: BM25 alone, the tie to the newer memory.
        assert await ranked(c, NAME_QUERY) == [other, named]
    assert f"recall ranker {damaged} refused" in caplog.text
    assert "ranking by the fused score instead" in caplog.text
