"""Convex fusion: alpha * minmax(dense) + (1 - alpha) * minmax(keyword), and its plumbing."""

from __future__ import annotations

from typing import Any

import pytest

from semindex.errors import InvalidInputError
from semindex.search.hybrid import DEFAULT_ALPHA, check_convex, convex, minmax


def test_minmax() -> None:
    assert minmax([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert minmax([5.0, 5.0]) == [1.0, 1.0]  # a flat list: all at the top
    assert minmax([]) == []
    with pytest.raises(InvalidInputError):
        minmax([1.0, float("nan")])


def test_convex_by_hand() -> None:
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]  # norm: a 1, b 0.5, c 0
    keyword = [("c", 12.0), ("d", 8.0), ("a", 4.0)]  # norm: c 1, d 0.5, a 0
    out = dict(convex([dense, keyword], weights=(0.7, 0.3)))
    assert out == pytest.approx({"a": 0.7, "b": 0.35, "c": 0.3, "d": 0.15})
    order = [k for k, _ in convex([dense, keyword], weights=(0.7, 0.3))]
    assert order == ["a", "b", "c", "d"]
    # alpha 1 or 0: one list's order (the other only breaks nothing: its absentees score 0)
    assert [k for k, _ in convex([dense, keyword], weights=(1.0, 0.0))][:3] == ["a", "b", "c"]
    assert [k for k, _ in convex([dense, keyword], weights=(0.0, 1.0))][:3] == ["c", "d", "a"]
    assert [k for k, _ in convex([dense, keyword], weights=(0.5, 0.5), limit=2)] == ["a", "c"]


def test_convex_is_scale_free_and_ties_are_deterministic() -> None:
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    keyword = [("c", 12.0), ("d", 8.0), ("a", 4.0)]
    scaled = [(k, s * 1000 - 7) for k, s in keyword]  # BM25's scale and offset do not matter
    a, b = convex([dense, keyword], weights=(0.4, 0.6)), convex([dense, scaled], weights=(0.4, 0.6))
    assert [k for k, _ in a] == [k for k, _ in b] and [s for _, s in a] == pytest.approx([s for _, s in b])
    # an exact tie: the better rank in the first list that holds the key wins
    assert [k for k, _ in convex([[("x", 1.0), ("y", 0.0)], [("y", 1.0), ("x", 0.0)]], weights=(1, 1))] == ["x", "y"]
    # a repeated key counts once, with its best score
    assert dict(convex([[("a", 1.0), ("b", 0.0), ("a", 0.5)]], weights=(1,))) == {"a": 1.0, "b": 0.0}
    assert convex([[], []], weights=(0.5, 0.5)) == []


def test_convex_checks() -> None:
    assert check_convex("rrf", None) == DEFAULT_ALPHA
    assert check_convex("convex", 0.25) == 0.25
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InvalidInputError, match="alpha"):
            check_convex("convex", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="unknown fusion"):
        check_convex("sum", None)
    with pytest.raises(InvalidInputError):
        convex([[("a", 1.0)], [("b", 1.0)]], weights=(0.0, 0.0))


def test_hybrid_convex_is_convex_of_dense_and_keyword(samples: Any) -> None:
    q = "how do plants get nutrients from compost"
    dense = [(h.id, h.score) for h in samples.search(q, 100, mode="dense")]
    keyword = [(h.id, h.score) for h in samples.search(q, 100, mode="keyword")]
    for alpha in (0.0, 0.3, 1.0):
        expected = convex([dense, keyword], weights=(alpha, 1 - alpha), limit=10)
        hits = samples.search(q, 10, mode="hybrid", fusion="convex", alpha=alpha)
        assert [h.id for h in hits] == [k for k, _ in expected]
        assert [h.score for h in hits] == pytest.approx([s for _, s in expected])
    default = samples.search(q, 10, mode="hybrid", fusion="convex")
    assert [h.id for h in default] == [k for k, _ in convex([dense, keyword], weights=(DEFAULT_ALPHA, 1 - DEFAULT_ALPHA), limit=10)]
    with pytest.raises(InvalidInputError, match="alpha"):
        samples.search(q, 10, mode="hybrid", fusion="convex", alpha=2.0)
    with pytest.raises(InvalidInputError, match="unknown fusion"):
        samples.search(q, 10, mode="hybrid", fusion="nope")


def test_cli_fusion_options(tmp_path: Any) -> None:
    import json

    from tests.support import SAMPLE, invoke_cli

    store = str(tmp_path / "s")
    assert invoke_cli("index", str(SAMPLE), "--store", store).returncode == 0
    proc = invoke_cli("search", "compost nutrients", "--store", store, "--mode", "hybrid", "--fusion", "convex",
                   "--alpha", "0.3", "--json", "-k", "3")
    assert proc.returncode == 0, proc.stderr
    assert len([json.loads(line) for line in proc.stdout.splitlines()]) == 3
    proc = invoke_cli("search", "compost", "--store", store, "--mode", "hybrid", "--fusion", "convex", "--alpha", "3")
    assert proc.returncode != 0 and "alpha" in proc.stderr.lower()
