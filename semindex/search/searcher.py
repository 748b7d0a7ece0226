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

Storage ranks chunks (a document too long for the model's window has several); this
module returns documents: one hit per document, scored by its best chunk (MaxP), with
the matching chunks' offsets and the best chunk's text as the passage. Each mode
over-fetches chunks until it has k distinct documents or the collection has no more,
so a filtered or chunked query still returns k hits whenever k documents match.
``level="chunk"`` returns the chunks themselves instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, InvalidInputError
from ..indexer.encoder import Encoder
from ..storage import ChunkRef, CollectionStorage, KeywordIndex, StoredDoc, recall_monitor
from .hybrid import DEFAULT_RRF_K, DEFAULT_WEIGHTS, check_convex, check_fusion, convex, rrf

MAX_K = 1000
MODES = ("dense", "keyword", "hybrid")
LEVELS = ("document", "chunk")
HYBRID_CANDIDATES = 100  # per side: max(k, this)
DEFAULT_RERANK_TOP = 50
DEFAULT_MMR_FETCH_K = 20
DEFAULT_MMR_LAMBDA = 0.5
MAX_CONTEXT_CHUNKS = 8
OVERFETCH = 4  # chunks asked for grow by this factor until k distinct documents are found

Level = Literal["document", "chunk"]


@dataclass
class ChunkHit:
    """Where a matching chunk lies in its document: ``text[start:end]``; ``index`` is its ordinal."""

    index: int
    start: int
    end: int
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "end": self.end, "score": self.score}


@dataclass
class Hit:
    """One ranked match. ``score`` is higher-is-better (cosine similarity for the default metric).

    ``text`` is the passage: the best chunk's text (the whole text for a document that fits
    the model's window). ``chunks``: the document's matching chunks, best first, with their
    offsets into the document's full text. ``context``: the best chunk with its neighbours
    (when ``context_chunks`` was asked for).
    """

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    chunks: list[ChunkHit] = field(default_factory=list)
    context: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata}
        if self.title is not None:
            out["title"] = self.title
        if self.chunks:
            out["chunks"] = [c.as_dict() for c in self.chunks]
        if self.context is not None:
            out["context"] = self.context
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


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def check_level(level: str) -> Level:
    if level not in LEVELS:
        raise InvalidInputError(f"unknown result level {level!r}: use one of {', '.join(LEVELS)}")
    return "chunk" if level == "chunk" else "document"


# -- chunks -> documents ------------------------------------------------------------------


@dataclass
class _Doc:
    """A document being assembled from its ranked chunks (best first)."""

    doc: StoredDoc
    score: float
    chunks: list[tuple[ChunkRef, float]]


def group(ranked: Sequence[tuple[ChunkRef, float]], k: int, level: Level = "document") -> list[_Doc]:
    """MaxP: each document scores as its best chunk; its other matching chunks ride along."""
    if level == "chunk":
        return [_Doc(ref.doc, score, [(ref, score)]) for ref, score in list(ranked)[:k]]
    out: dict[int, _Doc] = {}
    for ref, score in ranked:
        d = out.get(ref.doc.vid)
        if d is None:
            if len(out) >= k:
                continue  # keep collecting chunks of the k documents already in
            out[ref.doc.vid] = _Doc(ref.doc, float(score), [(ref, float(score))])
        else:
            d.chunks.append((ref, float(score)))
    return list(out.values())


def _to_hit(d: _Doc) -> Hit:
    best = d.chunks[0][0]
    return Hit(
        id=d.doc.id,
        score=float(d.score),
        text=best.text,
        metadata=d.doc.metadata,
        title=d.doc.title,
        chunks=[ChunkHit(ref.ordinal, ref.start, ref.end, float(sc)) for ref, sc in d.chunks],
    )


def _overfetch(
    fetch: Callable[[list[int], int], list[list[tuple[ChunkRef, float]]]],
    n_queries: int,
    k: int,
    level: Level,
) -> list[list[_Doc]]:
    """Ask for k chunks per query, then OVERFETCH times more for the queries that got fewer than
    k documents from a full page of chunks, until they have k or the collection is exhausted."""
    out: list[list[_Doc]] = [[] for _ in range(n_queries)]
    todo = list(range(n_queries))
    want = k
    while todo:
        results = fetch(todo, want)
        again: list[int] = []
        for qi, ranked in zip(todo, results):
            out[qi] = group(ranked, k, level)
            if level == "document" and len(out[qi]) < k and len(ranked) >= want:
                again.append(qi)  # a full page of chunks gave too few documents: there may be more
        todo, want = again, want * OVERFETCH
    return out


def dense_docs(
    storage: CollectionStorage, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None, level: Level
) -> list[list[_Doc]]:
    vecs = np.asarray(vectors, dtype=np.float32)
    if filter is None and len(vecs):
        recall_monitor.offer(storage, vecs)  # a no-op unless the process enabled live recall checks
    return _overfetch(lambda qs, n: storage.search(vecs[qs], n, filter), len(vecs), k, level)


def keyword_docs(
    keyword: KeywordIndex | None,
    storage: CollectionStorage,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None,
    level: Level,
) -> list[list[_Doc]]:
    def fetch(qs: list[int], n: int) -> list[list[tuple[ChunkRef, float]]]:
        ranked = keyword_ranked(keyword, storage, [queries[i] for i in qs], n, filter)
        refs = storage.rows.chunks({cid for res in ranked for cid, _ in res})
        # a row deleted between the ranking and the fetch is dropped, never returned half-read
        return [[(refs[cid], sc) for cid, sc in res if cid in refs] for res in ranked]

    return _overfetch(fetch, len(queries), k, level)


def keyword_ranked(
    keyword: KeywordIndex | None,
    storage: CollectionStorage,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
) -> list[list[tuple[int, float]]]:
    """(chunk id, -bm25 or ts_rank) per query, best first, from the store's keyword index."""
    if keyword is None or not keyword.supported:
        raise ConfigError("keyword search needs a SQLite or PostgreSQL store")
    storage.check_open()
    return keyword.search(storage.id, queries, k, filter)


# -- the modes ------------------------------------------------------------------------------


def dense_search(
    storage: CollectionStorage,
    encoder: Encoder,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    normalize: bool = True,
    level: Level = "document",
) -> list[list[Hit]]:
    queries = check_queries(queries)
    check_k(k)
    if not queries:
        return []
    vecs = encoder.encode(queries, normalize=normalize)
    return vector_search(storage, vecs, k, filter, level=level)


def vector_search(
    storage: CollectionStorage,
    vectors: np.ndarray,
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    level: Level = "document",
) -> list[list[Hit]]:
    check_k(k)
    return [[_to_hit(d) for d in res] for res in dense_docs(storage, vectors, k, filter, level)]


def keyword_search(
    keyword: KeywordIndex | None,
    storage: CollectionStorage,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    level: Level = "document",
) -> list[list[Hit]]:
    queries = check_queries(queries)
    check_k(k)
    return [[_to_hit(d) for d in res] for res in keyword_docs(keyword, storage, queries, k, filter, level)]


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
    level: Level = "document",
    vectors: np.ndarray | None = None,
) -> list[list[Hit]]:
    """Dense and keyword top-``candidates`` documents (default max(k, 100)), both filtered, then fused.

    ``fusion="rrf"`` (default): reciprocal rank fusion with ``weights`` and ``rrf_k``.
    ``fusion="convex"``: ``alpha * dense + (1 - alpha) * keyword`` on per-query min-max
    normalised scores (``weights`` and ``rrf_k`` unused). A fused document carries the chunks
    either side matched (dense ones first, each with its own side's score).
    ``vectors``: the queries' embeddings when the caller has them (else ``encoder`` makes them).
    """
    queries = check_queries(queries)
    check_k(k)
    ws, kk = check_fusion(weights, rrf_k, 2)
    a = check_convex(fusion, alpha)
    n = max(k, candidates if candidates is not None else HYBRID_CANDIDATES)
    if not queries:
        return []
    vecs = vectors if vectors is not None else encoder.encode(queries, normalize=normalize)
    dense = dense_docs(storage, vecs, n, filter, level)
    lexical = keyword_docs(keyword, storage, queries, n, filter, level)
    out: list[list[Hit]] = []
    for d_res, k_res in zip(dense, lexical):
        key: Callable[[_Doc], int] = (
            (lambda d: d.chunks[0][0].chunk_id) if level == "chunk" else (lambda d: d.doc.vid))
        merged: dict[int, _Doc] = {}
        for d in [*d_res, *k_res]:
            m = merged.setdefault(key(d), _Doc(d.doc, 0.0, []))
            seen = {ref.chunk_id for ref, _ in m.chunks}
            m.chunks += [(ref, sc) for ref, sc in d.chunks if ref.chunk_id not in seen]
        if fusion == "convex":
            fused = convex([[(key(d), d.score) for d in d_res], [(key(d), d.score) for d in k_res]],
                           weights=(a, 1.0 - a), limit=k)
        else:
            fused = rrf([[key(d) for d in d_res], [key(d) for d in k_res]], weights=ws, k=kk, limit=k)
        hits = []
        for kid, score in fused:
            m = merged[kid]
            m.score = score
            hits.append(_to_hit(m))
        out.append(hits)
    return out


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
    level: str = "document",
    score_threshold: float | None = None,
    mmr: bool = False,
    lambda_mult: float = DEFAULT_MMR_LAMBDA,
    fetch_k: int | None = None,
    context_chunks: int = 0,
) -> list[list[Hit]]:
    """Every mode and the optional rerank behind one call. ``encoder`` is only called when vectors are needed;
    ``keyword`` is the store's keyword index (keyword and hybrid modes need it).

    After ranking (and rerank): ``mmr`` re-selects the k hits from the top ``fetch_k`` by maximal
    marginal relevance (``lambda_mult``: 1 = relevance only, 0 = diversity only); ``score_threshold``
    drops hits scoring below it (in the final score's units); ``context_chunks=n`` adds each hit's
    best chunk with n neighbouring chunks on each side as ``context``.
    """
    check_mode(mode)
    lvl = check_level(level)
    check_convex(fusion, alpha)
    queries = check_queries(queries)
    check_k(k)
    if rerank is not None:
        if isinstance(rerank_top, bool) or not isinstance(rerank_top, int) or not 1 <= rerank_top <= MAX_K:
            raise InvalidInputError(f"rerank_top must be an integer from 1 to {MAX_K}, got {rerank_top!r}")
        if not isinstance(rerank, str) or not rerank.strip():
            raise InvalidInputError("rerank must be a cross-encoder model id or path")
    if score_threshold is not None and (isinstance(score_threshold, bool) or not np.isfinite(score_threshold)):
        raise InvalidInputError(f"score_threshold must be a finite number, got {score_threshold!r}")
    if isinstance(context_chunks, bool) or not isinstance(context_chunks, int) or not (
        0 <= context_chunks <= MAX_CONTEXT_CHUNKS
    ):
        raise InvalidInputError(f"context_chunks must be an integer from 0 to {MAX_CONTEXT_CHUNKS}")
    pool = k
    if mmr:
        if not isinstance(lambda_mult, (int, float)) or isinstance(lambda_mult, bool) or not 0 <= lambda_mult <= 1:
            raise InvalidInputError(f"lambda_mult must be a number from 0 to 1, got {lambda_mult!r}")
        pool = check_k(fetch_k if fetch_k is not None else max(DEFAULT_MMR_FETCH_K, k))
        if pool < k:
            raise InvalidInputError(f"fetch_k ({pool}) must be at least k ({k})")
    if not queries:
        return []
    first_k = max(pool, rerank_top) if rerank is not None else pool
    vecs: np.ndarray | None = None
    if mode != "keyword" or mmr:
        vecs = encoder().encode(queries, normalize=normalize)
    if mode == "dense":
        assert vecs is not None
        hits = vector_search(storage, vecs, first_k, filter, level=lvl)
    elif mode == "keyword":
        hits = keyword_search(keyword, storage, queries, first_k, filter, level=lvl)
    else:
        hits = hybrid_search(
            keyword, storage, encoder(), queries, first_k, filter, normalize=normalize, weights=hybrid_weights,
            rrf_k=rrf_k, candidates=candidates, fusion=fusion, alpha=alpha, level=lvl, vectors=vecs,
        )
    if rerank is not None:
        hits = rerank_hits(rerank, queries, hits, pool, top=rerank_top, device=device)
    if mmr:
        assert vecs is not None
        hits = [mmr_select(storage, q, res, k, lambda_mult) for q, res in zip(vecs, hits)]
    if score_threshold is not None:
        hits = [[h for h in res if h.score >= score_threshold] for res in hits]
    if context_chunks:
        add_context(storage, hits, context_chunks)
    return hits


# -- after ranking ---------------------------------------------------------------------------


def mmr_select(storage: CollectionStorage, query: np.ndarray, hits: Sequence[Hit], k: int, lambda_mult: float) -> list[Hit]:
    """Maximal marginal relevance over the hits' best-chunk vectors (read from SQL, exact).

    Relevance is the query's similarity to each hit's best chunk, so the selection is the same
    whatever the first-stage score was (dense, BM25, fused, reranked).
    """
    from ..storage.exact import scores as exact_scores

    hits = list(hits)
    if len(hits) <= 1 or k <= 0:
        return hits[:k]
    ids = [h.id for h in hits]
    docs = {d.id: d.vid for d in storage.get(ids)}
    spans = storage.rows.spans(docs.values())
    chunk_ids = []
    for h in hits:
        best = h.chunks[0].index if h.chunks else 0
        cs = spans.get(docs.get(h.id, -1), [])
        chunk_ids.append(cs[best][0] if best < len(cs) else -1)
    vecs = storage.fetch_embeddings(np.array(chunk_ids, dtype=np.int64))
    metric = storage.record.metric
    rel = exact_scores(query.reshape(1, -1), vecs, metric)[0]
    sim = exact_scores(vecs, vecs, metric)
    chosen: list[int] = []
    left = list(range(len(hits)))
    while left and len(chosen) < k:
        if chosen:
            div = sim[np.ix_(left, chosen)].max(axis=1)
            val = lambda_mult * rel[left] - (1 - lambda_mult) * div
        else:
            val = rel[left]
        pick = left[int(np.argmax(val))]
        chosen.append(pick)
        left.remove(pick)
    return [hits[i] for i in chosen]


def add_context(storage: CollectionStorage, hits: Sequence[Sequence[Hit]], n: int) -> None:
    """Set each hit's ``context``: its best chunk and up to ``n`` neighbours on each side."""
    ids = {h.id for res in hits for h in res}
    docs = {d.id: d for d in storage.get(list(ids))}
    spans = storage.rows.spans([d.vid for d in docs.values()])
    for res in hits:
        for h in res:
            doc = docs.get(h.id)
            if doc is None:
                continue
            cs = spans.get(doc.vid, [])
            best = h.chunks[0].index if h.chunks else 0
            if not cs or best >= len(cs):
                h.context = h.text
                continue
            lo, hi = max(0, best - n), min(len(cs) - 1, best + n)
            h.context = doc.text[cs[lo][1] : cs[hi][2]]


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
        out.append([replace(cand[i], score=float(sc[i])) for i in order])
    return out
