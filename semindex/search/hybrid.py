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


FUSIONS = ("rrf", "convex")
# alpha (the dense side's share) for fusion="convex": chosen on SciFact's TRAIN queries only
# (benchmarks/finetune.py --tune-alpha); never on a test split.
DEFAULT_ALPHA = 0.45  # SciFact train (809 queries): 0.7406 at 0.45 vs 0.7144 for RRF; grid 0..1 by 0.05


def check_convex(fusion: str, alpha: float | None) -> float:
    """The validated fusion name's alpha: ``DEFAULT_ALPHA`` when None, else a number in [0, 1]."""
    if fusion not in FUSIONS:
        raise InvalidInputError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
    if alpha is None:
        return DEFAULT_ALPHA
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise InvalidInputError(f"alpha must be a number from 0 to 1, got {alpha!r}")
    return float(alpha)


def minmax(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1] by the list's own min and max; a flat list maps to all 1.0.

    Per-query min-max is what makes cosine similarities and BM25 scores (unbounded,
    query-length dependent) addable at all (Bruch, Gai & Ingber, TOIS 2023).
    """
    if not scores:
        return []
    if not all(math.isfinite(s) for s in scores):
        raise InvalidInputError("cannot fuse non-finite scores")
    lo, hi = min(scores), max(scores)
    if hi - lo <= 0.0:
        return [1.0] * len(scores)
    return [(s - lo) / (hi - lo) for s in scores]


def convex(
    scored: Sequence[Sequence[tuple[K, float]]],
    *,
    weights: Sequence[float],
    limit: int | None = None,
) -> list[tuple[K, float]]:
    """Fuse scored lists (best first, higher is better) by a convex combination of min-max-normalised scores.

    ``score(d) = sum_i w_i * norm_i(d)``, where ``norm_i`` is list i's min-max normalisation and a
    list that does not hold ``d`` contributes 0 (its own minimum). With two lists and weights
    (alpha, 1 - alpha) this is the "convex combination" of the hybrid-retrieval literature.
    Ties go to the better rank in the earliest list that holds the key, as in :func:`rrf`.
    """
    ws = [float(w) for w in weights]
    if len(ws) != len(scored) or not all(math.isfinite(w) and w >= 0 for w in ws) or not any(ws):
        raise InvalidInputError(
            f"fusion weights must be {len(scored)} finite non-negative numbers, not all zero; got {list(weights)!r}"
        )
    scores: dict[K, float] = {}
    ranks: dict[K, list[float]] = {}
    for li, lst in enumerate(scored):
        seen: dict[K, float] = {}
        for key, s in lst:  # a repeated key counts with its best score only
            if key not in seen or s > seen[key]:
                seen[key] = float(s)
        keys = list(seen)
        for r, (key, norm) in enumerate(zip(keys, minmax([seen[x] for x in keys])), 1):
            scores[key] = scores.get(key, 0.0) + ws[li] * norm
            ranks.setdefault(key, [math.inf] * len(scored))[li] = r
    order = sorted(scores, key=lambda key: (-scores[key], *ranks[key]))
    if limit is not None:
        order = order[:limit]
    return [(key, scores[key]) for key in order]
