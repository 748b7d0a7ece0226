"""Reciprocal rank fusion: several ranked lists -> one.

``score(d) = sum_i w_i / (k + rank_i(d))`` with 1-based ranks; a list that does
not contain ``d`` adds nothing (Cormack, Clarke & Büttcher, SIGIR 2009; k = 60).
Only ranks matter, so lists with incomparable scores (cosine, BM25) fuse cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

from ..errors import InvalidInputError

K = TypeVar("K", bound=Hashable)

DEFAULT_RRF_K = 60.0
DEFAULT_WEIGHTS: tuple[float, float] = (1.0, 1.0)  # (dense, keyword)


def check_fusion(weights: Sequence[float], rrf_k: float, n_lists: int) -> tuple[list[float], float]:
    ws = [float(w) for w in weights]
    if len(ws) != n_lists or not all(math.isfinite(w) and w >= 0 for w in ws) or not any(ws):
        raise InvalidInputError(
            f"hybrid weights must be {n_lists} finite non-negative numbers, not all zero; got {list(weights)!r}"
        )
    if isinstance(rrf_k, bool) or not math.isfinite(float(rrf_k)) or float(rrf_k) < 0:
        raise InvalidInputError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}")
    return ws, float(rrf_k)


def rrf(
    rankings: Sequence[Sequence[K]],
    *,
    weights: Sequence[float] | None = None,
    k: float = DEFAULT_RRF_K,
    limit: int | None = None,
) -> list[tuple[K, float]]:
    """Fuse ranked lists of keys (best first) into [(key, fused score)], best first.

    Ties on the fused score go to the key with the better (smaller) rank in the
    earliest list that holds it, then in the next list, and so on; so the order is
    deterministic and, with one list, the same as that list.
    """
    ws, kk = check_fusion(weights if weights is not None else [1.0] * len(rankings), k, len(rankings))
    scores: dict[K, float] = {}
    ranks: dict[K, list[float]] = {}
    for li, ranking in enumerate(rankings):
        seen: set[K] = set()
        for r, key in enumerate(ranking, 1):
            if key in seen:  # a repeated key counts at its best rank only
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + ws[li] / (kk + r)
            ranks.setdefault(key, [math.inf] * len(rankings))[li] = r
    order = sorted(scores, key=lambda key: (-scores[key], *ranks[key]))
    if limit is not None:
        order = order[:limit]
    return [(key, scores[key]) for key in order]
