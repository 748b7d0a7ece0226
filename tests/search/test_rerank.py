"""Cross-encoder reranking with a tiny random-weight model built here (no cross-encoder ships)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_rerank_follows_cross_encoder(samples: Any, tiny_cross_encoder: Path, mode: str) -> None:
    from sentence_transformers import CrossEncoder

    q = "how do I make bread rise"
    first = samples.search(q, 20, mode=mode)
    reranked = samples.search(q, 5, mode=mode, rerank=str(tiny_cross_encoder), rerank_top=20)
    ce = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    pairs = [[q, f"{h.title}\n{h.text}" if h.title else h.text] for h in first]
    scores = [float(x) for x in ce.predict(pairs)]
    order = sorted(range(len(first)), key=lambda i: -scores[i])[:5]
    assert [h.id for h in reranked] == [first[i].id for i in order]
    assert [h.score for h in reranked] == pytest.approx([scores[i] for i in order], abs=1e-5)
    assert len({round(s, 6) for s in scores}) > 1  # the model really distinguishes them


def test_rerank_only_reorders_the_top(samples: Any, tiny_cross_encoder: Path) -> None:
    first = [h.id for h in samples.search("black holes and stars", 3, mode="dense")]
    got = [h.id for h in samples.search("black holes and stars", 3, rerank=str(tiny_cross_encoder), rerank_top=3)]
    assert sorted(got) == sorted(first)


def test_rerank_model_loaded_once(tiny_cross_encoder: Path) -> None:
    from semindex.search.rerank import get_reranker

    assert get_reranker(str(tiny_cross_encoder)) is get_reranker(str(tiny_cross_encoder))


def test_rerank_bad_model(samples: Any, tmp_path: Path) -> None:
    from semindex.errors import ConfigError, InvalidInputError

    with pytest.raises(ConfigError):
        samples.search("bread", 3, rerank=str(tmp_path / "no-such-model"))
    with pytest.raises(InvalidInputError):
        samples.search("bread", 3, rerank=str(tmp_path), rerank_top=0)
