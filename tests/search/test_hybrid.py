"""Hybrid search: reciprocal rank fusion of dense and keyword, filters on both sides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from semindex.errors import InvalidInputError
from semindex.search.hybrid import rrf
from tests.support import sample_docs


def test_rrf_by_hand() -> None:
    fused = dict(rrf([["a", "b", "c"], ["c", "a", "d"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d"] == pytest.approx(1 / 63)
    assert [key for key, _ in rrf([["a", "b", "c"], ["c", "a", "d"]])] == ["a", "c", "b", "d"]


def test_rrf_weights_k_and_ties() -> None:
    # weights: the second list counts three times as much
    out = rrf([["a", "b"], ["b", "a"]], weights=[1.0, 3.0], k=0)
    assert out == [("b", pytest.approx(1 / 2 + 3 / 1)), ("a", pytest.approx(1 / 1 + 3 / 2))]
    # exact tie: the better rank in the first list wins, deterministically
    assert [key for key, _ in rrf([["a", "b"], ["b", "a"]])] == ["a", "b"]
    assert [key for key, _ in rrf([["x"], ["y"]])] == ["x", "y"]
    assert [key for key, _ in rrf([["x", "y", "z"]], limit=2)] == ["x", "y"]
    assert rrf([[], []]) == []
    with pytest.raises(InvalidInputError):
        rrf([["a"], ["b"]], weights=[0.0, 0.0])
    with pytest.raises(InvalidInputError):
        rrf([["a"], ["b"]], weights=[1.0])


def test_hybrid_is_rrf_of_dense_and_keyword(samples: Any) -> None:
    q = "how do plants get nutrients from compost"
    dense = [h.id for h in samples.search(q, 100, mode="dense")]
    keyword = [h.id for h in samples.search(q, 100, mode="keyword")]
    expected = rrf([dense, keyword], k=60, limit=10)
    hits = samples.search(q, 10, mode="hybrid")
    assert [h.id for h in hits] == [key for key, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected])
    # weights and rrf_k reach the fusion
    expected_w = rrf([dense, keyword], weights=[0.2, 1.0], k=5, limit=10)
    hits_w = samples.search(q, 10, mode="hybrid", hybrid_weights=(0.2, 1.0), rrf_k=5)
    assert [h.id for h in hits_w] == [key for key, _ in expected_w]


def test_hybrid_filters_both_sides(samples: Any) -> None:
    flt = {"topic": "gardening"}
    garden = {d["id"] for d in sample_docs() if d["metadata"]["topic"] == "gardening"}
    for k in (1, 3, 5, 10, 40):
        hits = samples.search("sourdough bread baking", k, mode="hybrid", filter=flt)
        assert {h.id for h in hits} <= garden
        assert len(hits) == min(k, len(garden))
    # filtered hybrid = RRF of the filtered sides
    dense = [h.id for h in samples.search("compost worms", 100, mode="dense", filter=flt)]
    keyword = [h.id for h in samples.search("compost worms", 100, mode="keyword", filter=flt)]
    got = [h.id for h in samples.search("compost worms", 3, mode="hybrid", filter=flt)]
    assert got == [key for key, _ in rrf([dense, keyword], limit=3)]
    assert samples.search("compost", 5, mode="hybrid", filter={"topic": "nope"}) == []


def test_hybrid_batch_equals_single(samples: Any) -> None:
    qs = ["black holes", "knife sharpening", "😀", "offside rule"]
    batch = samples.search_batch(qs, 5, mode="hybrid")
    assert [[h.id for h in r] for r in batch] == [[h.id for h in samples.search(q, 5, mode="hybrid")] for q in qs]


def test_bad_fusion_options(samples: Any) -> None:
    with pytest.raises(InvalidInputError):
        samples.search("x", 5, mode="hybrid", hybrid_weights=(1.0, -1.0))
    with pytest.raises(InvalidInputError):
        samples.search("x", 5, mode="hybrid", rrf_k=float("nan"))


def test_cli_search_modes(sample_store: Any, tmp_path: Path) -> None:
    import json

    from tests.support import invoke_cli  # in process; tests/cli has the subprocess smoke tests

    where = ["--store", str(sample_store.path)]
    if sample_store.storage.dialect != "sqlite":
        where += ["--db", sample_store.storage.db_url]
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "sourdough starter"}\n{"_id": "q2", "text": "NEAR( \\"x"}\n')
    out = invoke_cli("search", "sourdough starter", *where, "-c", "samples", "--mode", "keyword",
                  "--json", "-k", "3", check=True)
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert [h["id"] for h in hits] == ["cook-sourdough"]  # the only document with either word
    out = invoke_cli("search", "--queries", str(queries), *where, "-c", "samples", "--mode", "hybrid",
                  "-k", "3", check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["query_id"] for r in rows] == ["q1", "q2"] and all(len(r["hits"]) == 3 for r in rows)
    assert rows[0]["hits"][0]["id"] == "cook-sourdough"
    bad = invoke_cli("search", "x", *where, "-c", "samples", "--mode", "sparse")
    assert bad.returncode != 0
