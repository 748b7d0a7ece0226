"""Choosing, building and tuning a vector index from the stored embeddings.

The policy (``auto``), by vector count n and a memory budget B for the index:

============================  =========================================================
n < 50,000                    ``flat``: exact, and a scan of 50k vectors is ~ms
n < 500,000 and HNSW fits B   ``hnsw`` (M=32): best QPS/recall; build cost grows
                              ~n log n and it cannot delete (tombstones), so it stops
                              at 500k where a rebuild would take minutes
IVF-Flat fits B               ``ivf`` with nlist ~ 4*sqrt(n); cheap to train on a
                              sample, supports removal
n < 500,000 and SQ8 fits B    ``sq8``: a scan of d-byte codes (4x smaller than flat),
                              candidates rescored exactly from SQL
n < 500,000 and binary fits B ``binary``: a Hamming scan of d/8-byte sign codes (32x
                              smaller), candidates rescored exactly from SQL
otherwise                     ``ivfpq``: ~d/8 bytes of code per vector (or fewer, to
                              fit B), candidates rescored exactly from SQL
============================  =========================================================

The scans (sq8, binary) stop at 500k vectors, where IVF-PQ's probing of a few cells is
faster than reading every code.

B is ``collections.config["memory_budget"]`` (bytes), else $SEMINDEX_INDEX_MEMORY
(bytes, or with a K/M/G suffix), else half the machine's RAM.

Everything here works on an :class:`EmbeddingSource` (the store's SQL rows, or a numpy
array in the benchmark), so the benchmark measures exactly the code the store runs:

1. training sample: 40 points per IVF cell (faiss asks 39..256), at least 10k for PQ;
2. one streamed pass that adds every vector and computes, in the same pass, the exact
   top-11 of 400 query vectors: 200 stored vectors, and the same moved off themselves by
   noise (:func:`query_like`), their own id dropped; recall is the worse of the two kinds;
3. tuning: the smallest nprobe / efSearch (and for PQ, SQ8 and binary the smallest
   rescoring factor) whose recall@10 against that exact answer reaches the target
   (default 0.95) plus a margin (TUNE_MARGIN), so real queries get the target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, StorageError
from . import exact
from .vectors import (
    HNSW_M,
    IVFIndex,
    VectorIndex,
    as_vectors,
    build_index,
    default_memory_budget,
    default_nlist,
    min_training_points,
    pq_subquantizers,
    spec_kind,
)
from .vectors import parse_bytes as parse_bytes  # re-exported: callers of autoindex name it here
from .vectors.binary import code_bytes

log = logging.getLogger(__name__)

FLAT_MAX = 50_000
HNSW_MAX = 500_000
TOMBSTONE_REBUILD = 0.20
IVF_REGROW = 4.0  # retrain an IVF when the collection is this many times what it was trained for
TUNE_QUERIES = 200
TUNE_K = 10
TUNE_PERTURB = 0.75  # see query_like
# tuning aims this much above the target: query_like's queries are still easier than real ones
# (SciFact's real queries, target 0.95: tuned exactly to it, IVF gave 0.916 and binary 0.933;
# with the margin every type gives >= 0.954, benchmarks/ann.py --real-scifact)
TUNE_MARGIN = 0.02
DEFAULT_TARGET_RECALL = 0.95
RANK = {"flat": 0, "hnsw": 1, "ivf": 2, "sq8": 3, "binary": 4, "ivfpq": 5}
# indexes whose quantizer is learnt from the first vectors they see (IVF cells, SQ8 ranges,
# binary thresholds): rebuilt from a fresh sample when the collection outgrows that sample
REGROWN = ("ivf", "ivfpq", "sq8", "binary")

ShardedAdd = Callable[[Any, Iterator[tuple[np.ndarray, np.ndarray]]], Any]
"""The add step of an IVF build done elsewhere: given a trained, empty FAISS index
(:meth:`IVFIndex.export_trained`) and the stream of (ids, float32 vectors) batches, return that
index filled with every batch under its ids (semindex.indexer.sharded_ivf does it in Ray tasks)."""


def default_budget() -> int:
    """$SEMINDEX_INDEX_MEMORY, else half the machine's RAM (one definition, in vectors.base)."""
    return default_memory_budget()


def estimate_bytes(kind: str, n: int, dimension: int, pq_m: int | None = None) -> int:
    """What :meth:`memory_bytes` will report for ``kind`` at ``n`` vectors (for the policy)."""
    if kind == "flat":
        return n * (4 * dimension + 24)
    if kind == "hnsw":
        return n * (4 * dimension + 8 * HNSW_M + 4 * HNSW_M // 8 + 20)
    nlist = default_nlist(n)
    if kind == "ivf":
        return n * (4 * dimension + 8 + 48) + nlist * dimension * 4
    if kind == "ivfpq":
        m = pq_m or pq_subquantizers(dimension)
        return n * (m + 8) + nlist * dimension * 4 + 256 * dimension * 4
    if kind == "sq8":
        return n * (dimension + 24) + 8 * dimension
    if kind == "binary":
        return n * (code_bytes(dimension) + 24) + 4 * dimension
    raise ConfigError(f"no estimate for {kind!r}")


@dataclass(frozen=True)
class Choice:
    spec: str
    params: dict[str, Any]
    reason: str


def choose_spec(n: int, dimension: int, budget: int | None = None) -> Choice:
    """The ``auto`` policy (see the module docstring)."""
    budget = budget or default_budget()
    if n < FLAT_MAX and estimate_bytes("flat", n, dimension) <= budget:
        return Choice("flat", {}, f"{n} vectors < {FLAT_MAX}: exact search is fast enough")
    if n < HNSW_MAX and estimate_bytes("hnsw", n, dimension) <= budget:
        return Choice("hnsw", {}, f"{n} vectors < {HNSW_MAX} and HNSW fits the {budget >> 20} MiB budget")
    if estimate_bytes("ivf", n, dimension) <= budget:
        return Choice("ivf", {}, f"{n} vectors: IVF-Flat fits the {budget >> 20} MiB budget")
    for kind, what in (("sq8", "8-bit codes"), ("binary", "sign bits")):
        if n < HNSW_MAX and estimate_bytes(kind, n, dimension) <= budget:
            return Choice(kind, {}, f"{n} vectors: only {what} ({kind}) fit the {budget >> 20} MiB budget; "
                                    "candidates rescored exactly")
    m = pq_subquantizers(dimension)
    while m > 1 and estimate_bytes("ivfpq", n, dimension, m) > budget:
        m = pq_subquantizers(dimension, m - 1)
    return Choice("ivfpq", {"pq_m": m}, f"{n} vectors: only IVF-PQ ({m} bytes/vector) fits the {budget >> 20} MiB budget")


def outgrown(index: VectorIndex, policy: str, n: int, dimension: int, budget: int | None = None) -> str | None:
    """Why ``index`` should be rebuilt now that the collection holds ``n`` vectors, or None."""
    pending = index.params.get("pending")
    if pending:  # exact stand-in for a spec that could not be trained yet: retry as the data doubles
        need = int(index.params.get("pending_need", 1) or 1)
        tried = int(index.params.get("pending_tried", 0) or 0)
        if n >= max(need, 2 * tried, 1):
            return f"{n} vectors: enough to train {pending!r} (searched exactly until now)"
        return None
    if index.tombstone_ratio() > TOMBSTONE_REBUILD:
        return f"{index.tombstone_ratio():.0%} of the HNSW nodes are tombstones"
    if policy == "auto":
        choice = choose_spec(n, dimension, budget)
        cur = RANK.get(index.kind)
        if cur is not None and RANK[choice.spec] > cur:
            return f"grew to {n} vectors: {index.kind} -> {choice.spec} ({choice.reason})"
    if index.kind in REGROWN:
        built_for = int(index.params.get("built_for", 0) or 0)
        if not built_for and index.kind in ("sq8", "binary"):  # trained by its first add, never built
            built_for = int(index.params.get("trained_on", 0) or 0)
        if built_for and n > IVF_REGROW * max(built_for, 1000):
            what = f"its {index.params.get('nlist')} cells" if index.kind.startswith("ivf") else "its quantizer"
            return f"grew to {n} vectors, {n / built_for:.1f}x what {what} was trained for"
    return None


# -- sources -------------------------------------------------------------------------


class EmbeddingSource(Protocol):
    """Where a build reads vectors from: the store's SQL rows, or an array (benchmark)."""

    def count(self) -> int: ...
    def all_ids(self) -> np.ndarray: ...
    def fetch(self, ids: np.ndarray) -> np.ndarray: ...
    def iter_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class ArraySource:
    """An (n, d) array (a np.memmap is fine: batches are copied out one at a time); id = row."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray | None = None, batch: int = 50_000) -> None:
        self.vectors = vectors
        self.ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.batch = batch
        self._pos: np.ndarray | None = None
        if ids is not None:
            self._order = np.argsort(self.ids)

    def count(self) -> int:
        return len(self.vectors)

    def all_ids(self) -> np.ndarray:
        return self.ids

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if hasattr(self, "_order"):
            rows = self._order[np.searchsorted(self.ids, ids, sorter=self._order)]
        else:
            rows = ids
        order = np.argsort(rows)
        out = np.empty((len(ids), self.vectors.shape[1]), dtype=np.float32)
        out[order] = self.vectors[rows[order]]
        return out

    def iter_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo in range(0, len(self.vectors), self.batch):
            hi = min(lo + self.batch, len(self.vectors))
            yield self.ids[lo:hi], np.ascontiguousarray(self.vectors[lo:hi], dtype=np.float32)


# -- exact answers for tuning ----------------------------------------------------------


class GroundTruth:
    """Exact top-(k+1) of a few queries, accumulated batch by batch during the build pass."""

    def __init__(self, query_ids: np.ndarray, queries: np.ndarray, metric: str, k: int = TUNE_K,
                 groups: np.ndarray | None = None) -> None:
        self.query_ids = np.asarray(query_ids, dtype=np.int64)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        # kinds of query (stored as-is, query_like...): recall is the worst kind's, so tuning
        # cannot trade one kind's recall for another's
        self.groups = np.zeros(len(self.queries), dtype=np.int64) if groups is None else np.asarray(groups)
        self.metric = metric
        self.k = k
        self._best = exact.TopK(len(queries), k + 1)  # k+1: a stored query finds itself first
        self.scores, self.ids = self._best.scores, self._best.ids

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids) or not len(self.queries):
            return
        self._best.push(exact.scores(self.queries, vectors, self.metric), ids)
        self.scores, self.ids = self._best.scores, self._best.ids

    def truth(self) -> list[set[int]]:
        out = []
        for qi in range(len(self.queries)):
            order = np.argsort(-self.scores[qi], kind="stable")
            ids = [int(i) for i in self.ids[qi][order] if i >= 0 and i != self.query_ids[qi]]
            out.append(set(ids[: self.k]))
        return out


def query_like(vectors: np.ndarray, rng: np.random.Generator, perturb: float | None = None) -> np.ndarray:
    """Stored vectors moved off themselves, to tune on queries that look like real ones.

    A real query is not a stored document: its nearest neighbour sits at a cosine of ~0.6-0.8
    (short questions against abstracts), where an index's candidate lists are least certain,
    while a stored vector used as a query finds itself at 1.0 and its neighbourhood is the
    densest part of the space. Tuning on the latter promised recall that real queries did not
    get (SciFact: IVF tuned 0.953, real 0.916; binary 0.979 vs 0.933). Each vector gets
    Gaussian noise of ``perturb`` times its own norm (cosine to the original ~1/sqrt(1+p^2)),
    then its original norm back, so dot and l2 collections see the same scale."""
    p = TUNE_PERTURB if perturb is None else float(perturb)
    if p <= 0 or not len(vectors):
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = rng.standard_normal(vectors.shape).astype(np.float32)
    noise *= p * norms / np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    moved = vectors + noise
    moved *= norms / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(moved, dtype=np.float32)


def recall_at_k(index: VectorIndex, gt: GroundTruth, params: Mapping[str, Any] | None = None) -> float:
    truth = gt.truth()
    if not truth:
        return 1.0
    _, lab = index.search(gt.queries, gt.k + 1, params=params)
    hit: dict[int, int] = {}
    total: dict[int, int] = {}
    for qi, t in enumerate(truth):
        if not t:
            continue
        got = [int(i) for i in lab[qi] if i >= 0 and i != gt.query_ids[qi]][: gt.k]
        g = int(gt.groups[qi])
        hit[g] = hit.get(g, 0) + len(t.intersection(got))
        total[g] = total.get(g, 0) + len(t)
    return min((hit[g] / total[g] for g in total), default=1.0)


def _ladder(limit: int) -> list[int]:
    vals = []
    v = 1
    while v < limit:
        vals.append(v)
        vals.append(int(v * 1.5)) if int(v * 1.5) > v and int(v * 1.5) < limit else None
        v *= 2
    vals.append(limit)
    return sorted(set(vals))


def _smallest(values: list[int], ok: Callable[[int], float], target: float) -> tuple[int, float, bool]:
    """Binary search for the smallest value with recall >= target (recall rises with it)."""
    lo, hi = 0, len(values) - 1
    best: tuple[int, float] | None = None
    cache: dict[int, float] = {}

    def rec(i: int) -> float:
        if values[i] not in cache:
            cache[values[i]] = ok(values[i])
        return cache[values[i]]

    if rec(hi) < target:
        return values[hi], rec(hi), False
    while lo <= hi:
        mid = (lo + hi) // 2
        r = rec(mid)
        if r >= target:
            best = (values[mid], r)
            hi = mid - 1
        else:
            lo = mid + 1
    assert best is not None
    return best[0], best[1], True


def tune(index: VectorIndex, gt: GroundTruth, target: float = DEFAULT_TARGET_RECALL) -> dict[str, Any]:
    """Set index.params to the cheapest settings reaching ``target`` recall@10 (plus
    TUNE_MARGIN, on query-like vectors: see :func:`query_like`); returns a summary."""
    knobs = index.tunable()
    if not knobs or not len(gt.queries):
        return {}
    start = time.perf_counter()
    user_target = target
    target = max(target, min(target + TUNE_MARGIN, 0.995))
    found = True
    if "efSearch" in knobs:
        ef, rec, found = _smallest([16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
                                   lambda v: recall_at_k(index, gt, {"efSearch": v}), target)
        index.params["efSearch"] = ef
    elif "nprobe" in knobs:
        nlist = int(index.params.get("nlist", 1))
        probes = _ladder(nlist)
        factors = [4, 8, 16, 32, 64] if "k_factor" in knobs and index.refine_source is not None else [None]
        for kf in factors:
            extra: dict[str, int] = {} if kf is None else {"k_factor": kf}
            nprobe, rec, found = _smallest(
                probes, lambda v, extra=extra: recall_at_k(index, gt, {"nprobe": v, **extra}), target  # type: ignore[misc]  # mypy cannot infer a lambda with a default; _smallest types it
            )
            if found or kf == factors[-1]:
                index.params["nprobe"] = nprobe
                if kf is not None:
                    index.params["k_factor"] = kf
                break
    elif "k_factor" in knobs and index.refine_source is not None:
        kf, rec, found = _smallest([1, 2, 4, 8, 16, 32, 64], lambda v: recall_at_k(index, gt, {"k_factor": v}), target)
        index.params["k_factor"] = kf
    else:
        return {}
    index.params["recall@10"] = round(float(rec), 4)
    index.params["target_recall"] = user_target
    if not found and rec < user_target:
        log.warning("index %s reaches only recall@10 %.3f < target %.2f at its most thorough settings",
                    index.spec, rec, user_target)
    return {"recall@10": rec, "reached": found, "tune_seconds": time.perf_counter() - start}


# -- building --------------------------------------------------------------------------


@dataclass
class BuildReport:
    spec: str
    params: dict[str, Any]
    count: int
    seconds: float
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    sharded: bool = False  # the vectors were added by an ``add_batches`` callable (e.g. in Ray tasks)


def exact_stand_in(spec: str, dimension: int, metric: str, n: int, *, need: int, why: str) -> VectorIndex:
    """A flat (exact) index standing in for ``spec`` until the collection can train it.

    Writes never fail because an index cannot be trained yet (FAISS needs at least as many
    vectors as IVF cells or PQ centroids): the rows are stored, searches are exact, and
    :func:`outgrown` asks for the real build once there are ``need`` vectors (then again each
    time the count doubles, if training still fails). The params record why, for ``info``,
    and travel with the checkpoint."""
    return build_index("flat", dimension, metric, params={
        "pending": spec, "pending_need": int(min(need, 1 << 62)), "pending_tried": int(n), "pending_reason": why,
    })


def training_size(index: VectorIndex, n: int) -> int:
    if index.kind in ("ivf", "ivfpq") or (index.kind == "factory" and "IVF" in index.spec):
        cells = default_nlist(n) if index.kind != "factory" else int(index.params.get("nlist", default_nlist(n)))
        want = 40 * cells
        if index.lossy:
            want = max(want, 10_000)
        return int(min(n, max(want, 1000), 256 * cells if index.kind != "ivfpq" else max(256 * cells, 20_000)))
    return int(min(n, 50_000))


def build_from_source(
    spec: str,
    dimension: int,
    metric: str,
    source: EmbeddingSource,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    budget: int | None = None,
    tune_params: bool = True,
    seed: int = 0,
    device: str | None = None,
    refine_source: Callable[[np.ndarray], np.ndarray] | None = None,
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    add_batches: ShardedAdd | None = None,
) -> tuple[VectorIndex, BuildReport]:
    """Build ``spec`` (or resolve ``auto``) from every vector of ``source``: train, add, tune.

    ``add_batches``: when the build is an IVF family, the add step is handed to it (the trained,
    empty FAISS index and the stream of batches; it returns the filled index), so the adds can
    run in parallel elsewhere while the sample, the quantizer, the tuning queries and the tuned
    parameters stay exactly this function's. Other families ignore it and add here."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    n = source.count()
    reason = ""
    params: dict[str, Any] = {}
    concrete = spec
    if spec == "auto":
        choice = choose_spec(n, dimension, budget)
        concrete, params, reason = choice.spec, dict(choice.params), choice.reason
    try:
        index = build_index(concrete, dimension, metric, params=params)
    except ConfigError as exc:  # a spec stored before semindex refused it: keep the collection usable
        log.warning("index %r cannot be built (%s); searching exactly", concrete, exc)
        index = exact_stand_in(concrete, dimension, metric, n, need=1 << 62, why=str(exc))
    if device is not None:
        index.use_device(device)
    index.refine_source = refine_source or source.fetch
    all_ids: np.ndarray | None = None
    needs_train = not index.is_trained
    tunable = bool(index.tunable()) and tune_params and n > 0
    if (needs_train or tunable) and n:
        all_ids = source.all_ids()
    if needs_train:
        need = min_training_points(concrete, dimension)
        if n < need:
            index = exact_stand_in(concrete, dimension, metric, n, need=need,
                                   why=f"{n} vectors, training needs at least {need}")
        else:
            t = time.perf_counter()
            m = max(training_size(index, n), min(n, need))
            assert all_ids is not None
            pick = np.sort(rng.choice(all_ids, size=m, replace=False)) if m < len(all_ids) else np.asarray(all_ids)
            try:
                index.train(source.fetch(pick), n)
            except (RuntimeError, MemoryError, ValueError, ConfigError) as exc:  # faiss: too few points...
                log.warning("index %r cannot be trained on %d vectors yet (%s); searching exactly", concrete, n, exc)
                index = exact_stand_in(concrete, dimension, metric, n, need=need, why=str(exc).splitlines()[0][:200])
            timings["train_s"] = time.perf_counter() - t
        if index.params.get("pending"):
            index.refine_source = refine_source or source.fetch
            tunable = False
    gt = None
    if tunable and all_ids is not None:
        nq = min(TUNE_QUERIES, len(all_ids))
        qids = np.sort(rng.choice(all_ids, size=nq, replace=False))
        stored = as_vectors(source.fetch(qids), dimension)
        gt = GroundTruth(np.concatenate([qids, qids]), np.concatenate([stored, query_like(stored, rng)]),
                         metric, groups=np.repeat([0, 1], len(qids)))
    t = time.perf_counter()

    sharded = add_batches is not None and isinstance(index, IVFIndex) and index.is_trained and not len(index)
    streamed: list[np.ndarray] = []  # the ids handed to a sharded add step, to check its result

    def feed() -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
        for ids, vecs in source.iter_batches():
            if gt is not None:
                gt.update(ids, vecs)
            if on_batch is not None:
                on_batch(ids, vecs)
            if sharded:
                streamed.append(ids)
            yield ids, vecs

    if sharded:
        assert add_batches is not None and isinstance(index, IVFIndex)
        stream = feed()
        try:
            index.adopt(add_batches(index.export_trained(), stream))
        finally:
            stream.close()  # ends the SQL snapshot now, also when the add step failed
        want = np.sort(np.concatenate(streamed)) if streamed else np.empty(0, dtype=np.int64)
        got = np.sort(index.ids())
        if len(got) != len(want) or not np.array_equal(got, want):
            raise StorageError(f"the sharded build of {index.spec!r} holds {len(got)} vectors, not the "
                               f"{len(want)} stored ones (or other ids); the index in use is kept")
    else:
        for ids, vecs in feed():
            index.add(ids, vecs)
    timings["add_s"] = time.perf_counter() - t
    if gt is not None and len(index):
        t = time.perf_counter()
        tune(index, gt, target_recall)
        timings["tune_s"] = time.perf_counter() - t
    index.params["built_for"] = max(int(index.params.get("built_for", 0) or 0), len(index))
    if index.kind in ("hnsw",) or spec_kind(index.spec) == "factory":
        index.params["built_for"] = len(index)
    return index, BuildReport(index.spec, dict(index.params), len(index), time.perf_counter() - start, reason, timings,
                              sharded=sharded)
