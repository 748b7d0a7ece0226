"""Hybrid fusion for adapters whose queries are embedded by the framework, not by a semindex model.

``Collection.search(mode="hybrid")`` encodes the query with the collection's model; a
vectors-only collection has none, so the adapters search dense (with the framework's query
vector) and keyword separately and fuse here, the same way semindex does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..core import DEFAULT_RRF_K, DEFAULT_WEIGHTS, MAX_K, Collection, Hit

HYBRID_CANDIDATES = 100  # what Collection.search fuses by default in hybrid mode


def hybrid_hits(
    coll: Collection,
    query: str,
    qvec: np.ndarray,
    k: int,
    filter: Mapping[str, Any] | None,
    *,
    candidates: int | None = None,
    hybrid_weights: Sequence[float] = DEFAULT_WEIGHTS,
    rrf_k: float = DEFAULT_RRF_K,
    alpha: float | None = None,
) -> list[Hit]:
    """The dense and keyword top ``candidates``, both filtered, fused into the top ``k``.

    Reciprocal rank fusion with ``hybrid_weights`` (dense, keyword) and ``rrf_k``; with
    ``alpha``, ``alpha * dense + (1 - alpha) * keyword`` on per-query min-max normalised
    scores instead (LlamaIndex's convention: 1 is dense only, 0 keyword only).
    """
    n = min(MAX_K, max(k, candidates if candidates is not None else HYBRID_CANDIDATES))
    dense = coll.search_vectors(qvec, n, filter=filter)[0]
    lexical = coll.search(query, n, filter=filter, mode="keyword")
    hits: dict[str, Hit] = {}
    fused: dict[str, float] = {}
    if alpha is not None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
        for weight, ranked in ((alpha, dense), (1.0 - alpha, lexical)):
            for hit, norm in zip(ranked, _minmax([h.score for h in ranked])):
                fused[hit.id] = fused.get(hit.id, 0.0) + weight * norm
                hits.setdefault(hit.id, hit)
    else:
        w_dense, w_keyword = (float(w) for w in hybrid_weights)
        for weight, ranked in ((w_dense, dense), (w_keyword, lexical)):
            for rank, hit in enumerate(ranked, start=1):
                fused[hit.id] = fused.get(hit.id, 0.0) + weight / (rrf_k + rank)
                hits.setdefault(hit.id, hit)
    order = sorted(fused, key=lambda i: -fused[i])[:k]
    return [replace(hits[i], score=fused[i]) for i in order]  # keeps whatever else a hit carries (chunks...)


def _minmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]
