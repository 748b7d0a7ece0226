"""Query -> ranked hits.

Backends implement the batch call; the single-query call is built on it.

* dense: encode the queries once and ask storage for the top k per query, with
  the filter applied before the vector search;
* keyword: BM25 from the store's full-text index (storage/keyword.py), the
  filter a WHERE on the same query;
* hybrid: the top ``candidates`` of both (same filter), fused by reciprocal
  rank fusion (search/hybrid.py);
* rerank (any mode): the top ``rerank_top`` re-scored by a cross-encoder
  (search/rerank.py), returned in its score order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidInputError
from ..indexer.encoder import Encoder
from ..storage import CollectionStorage, KeywordIndex, StoredDoc
from .hybrid import DEFAULT_RRF_K, DEFAULT_WEIGHTS, check_convex, check_fusion, convex, rrf

MAX_K = 1000
MODES = ("dense", "keyword", "hybrid")
HYBRID_CANDIDATES = 100  # per side: max(k, this)
DEFAULT_RERANK_TOP = 50


@dataclass
class Hit:
    """One ranked match. ``score`` is higher-is-better (cosine similarity for the default metric)."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata}
        if self.title is not None:
            out["title"] = self.title
        return out


def to_hit(doc: StoredDoc, score: float) -> Hit:
    return Hit(id=doc.id, score=float(score), text=doc.text, metadata=doc.metadata, title=doc.title)


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return k


def check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise InvalidInputError("queries must be a list of strings, not one string")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str) or not q.strip():
            raise InvalidInputError(f"query #{i} is empty")
    return out


def dense_search(
    storage: CollectionStorage,
    encoder: Encoder,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    normalize: bool = True,
) -> list[list[Hit]]:
    queries = check_queries(queries)
    check_k(k)
    if not queries:
        return []
    vecs = encoder.encode(queries, normalize=normalize)
    return vector_search(storage, vecs, k, filter)


def vector_search(
    storage: CollectionStorage,
    vectors: np.ndarray,
    k: int,
    filter: Mapping[str, Any] | None = None,
) -> list[list[Hit]]:
    check_k(k)
    results = storage.search(np.asarray(vectors, dtype=np.float32), k, filter)
    return [[to_hit(doc, score) for doc, score in res] for res in results]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def keyword_ranked(
    keyword: KeywordIndex | None,
    storage: CollectionStorage,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
) -> list[list[tuple[int, float]]]:
    """(vid, -bm25 or ts_rank) per query, best first, from the store's keyword index."""
    if keyword is None or not keyword.supported:
        raise ConfigError("keyword search needs a SQLite or PostgreSQL store")
    storage.check_open()
    return keyword.search(storage.id, queries, k, filter)


def keyword_search(
    keyword: KeywordIndex | None,
    storage: CollectionStorage,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
) -> list[list[Hit]]:
    queries = check_queries(queries)
    check_k(k)
    ranked = keyword_ranked(keyword, storage, queries, k, filter)
    return _hits(storage, ranked)


def hybrid_search(
    keyword: KeywordIndex | None,
    storage: CollectionStorage,
    encoder: Encoder,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    normalize: bool = True,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    rrf_k: float = DEFAULT_RRF_K,
    candidates: int | None = None,
    fusion: str = "rrf",
    alpha: float | None = None,
) -> list[list[Hit]]:
    """Dense and keyword top-``candidates`` (default max(k, 100)), both filtered, then fused.

    ``fusion="rrf"`` (default): reciprocal rank fusion with ``weights`` and ``rrf_k``.
    ``fusion="convex"``: ``alpha * dense + (1 - alpha) * keyword`` on per-query min-max
    normalised scores (``weights`` and ``rrf_k`` unused).
    """
    queries = check_queries(queries)
    check_k(k)
    ws, kk = check_fusion(weights, rrf_k, 2)
    a = check_convex(fusion, alpha)
    n = max(k, candidates if candidates is not None else HYBRID_CANDIDATES)
    if not queries:
        return []
    vecs = encoder.encode(queries, normalize=normalize)
    dense = storage.search(np.asarray(vecs, dtype=np.float32), n, filter)
    lexical = keyword_ranked(keyword, storage, queries, n, filter)
    fused: list[list[tuple[int, float]]] = []
    docs: dict[int, StoredDoc] = {}
    for d_res in dense:
        for doc, _ in d_res:
            docs[doc.vid] = doc
    for d_res, k_res in zip(dense, lexical):
        if fusion == "convex":
            fused.append(convex([[(doc.vid, float(sc)) for doc, sc in d_res], list(k_res)],
                                weights=(a, 1.0 - a), limit=k))
        else:
            fused.append(
                rrf([[doc.vid for doc, _ in d_res], [vid for vid, _ in k_res]], weights=ws, k=kk, limit=k)
            )
    return _hits(storage, fused, known=docs)


def search(
    storage: CollectionStorage,
    encoder: Callable[[], Encoder],
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    mode: str = "dense",
    normalize: bool = True,
    rerank: str | None = None,
    rerank_top: int = DEFAULT_RERANK_TOP,
    hybrid_weights: Sequence[float] = DEFAULT_WEIGHTS,
    rrf_k: float = DEFAULT_RRF_K,
    candidates: int | None = None,
    device: str | None = None,
    fusion: str = "rrf",
    alpha: float | None = None,
    keyword: KeywordIndex | None = None,
) -> list[list[Hit]]:
    """Every mode and the optional rerank behind one call. ``encoder`` is only called when vectors are needed;
    ``keyword`` is the store's keyword index (keyword and hybrid modes need it)."""
    check_mode(mode)
    check_convex(fusion, alpha)
    queries = check_queries(queries)
    check_k(k)
    if rerank is not None:
        if isinstance(rerank_top, bool) or not isinstance(rerank_top, int) or not 1 <= rerank_top <= MAX_K:
            raise InvalidInputError(f"rerank_top must be an integer from 1 to {MAX_K}, got {rerank_top!r}")
        if not isinstance(rerank, str) or not rerank.strip():
            raise InvalidInputError("rerank must be a cross-encoder model id or path")
    if not queries:
        return []
    first_k = max(k, rerank_top) if rerank is not None else k
    if mode == "dense":
        hits = dense_search(storage, encoder(), queries, first_k, filter, normalize=normalize)
    elif mode == "keyword":
        hits = keyword_search(keyword, storage, queries, first_k, filter)
    else:
        hits = hybrid_search(
            keyword, storage, encoder(), queries, first_k, filter, normalize=normalize,
            weights=hybrid_weights, rrf_k=rrf_k, candidates=candidates, fusion=fusion, alpha=alpha,
        )
    if rerank is not None:
        hits = rerank_hits(rerank, queries, hits, k, top=rerank_top, device=device)
    return hits


def rerank_hits(
    model: str,
    queries: Sequence[str],
    hits: Sequence[Sequence[Hit]],
    k: int,
    *,
    top: int = DEFAULT_RERANK_TOP,
    device: str | None = None,
) -> list[list[Hit]]:
    """Re-score the first ``top`` hits of each query with a cross-encoder; top ``k`` in its order.

    Equal cross-encoder scores keep the first-stage order. With ``k > top``, the first
    ``k`` are re-scored (a reranked list never mixes two kinds of score).
    """
    from .rerank import get_reranker, passage

    top = max(top, k)

    reranker = get_reranker(model, device)
    pairs: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    for q, res in zip(queries, hits):
        lo = len(pairs)
        pairs.extend((q, passage(h.title, h.text)) for h in list(res)[:top])
        spans.append((lo, len(pairs)))
    scores = reranker.score(pairs)
    out: list[list[Hit]] = []
    for (lo, hi), res in zip(spans, hits):
        cand = list(res)[: hi - lo]
        sc = scores[lo:hi]
        order = sorted(range(len(cand)), key=lambda i: (-float(sc[i]), i))[:k]
        out.append([
            Hit(id=cand[i].id, score=float(sc[i]), text=cand[i].text, metadata=cand[i].metadata, title=cand[i].title)
            for i in order
        ])
    return out


def _hits(
    storage: CollectionStorage,
    ranked: Sequence[Sequence[tuple[int, float]]],
    known: Mapping[int, StoredDoc] | None = None,
) -> list[list[Hit]]:
    known = dict(known or {})
    missing = {vid for res in ranked for vid, _ in res if vid not in known}
    if missing:
        known.update(storage.fetch(missing))
    # a row deleted between the ranking and the fetch is dropped, never returned half-read
    return [[to_hit(known[vid], score) for vid, score in res if vid in known] for res in ranked]
