# mypy: disable-error-code="import-untyped"
"""Build an IVF index from shards in parallel: train once on a random sample, add per shard, merge.

The recipe FAISS's own on-disk demo, autofaiss and lance-ray share (see
shared/notes/ray-scale-out.md): the coarse quantizer (and PQ codebooks) are trained *once*,
on a *random* sample (autofaiss's first-N sample is biased when the input is sorted); that
trained, empty index is shipped to every worker, which adds its shard with the store's
global vector ids (``add_with_ids``; ids must be unique before the merge, FAISS cannot shift
them afterwards); the coordinator merges the inverted lists (``merge_from``). Because every
shard uses the same frozen quantizer, the merged index is the index one process would have
built from the same sample: same lists, same ids, same search results.

``ray`` is optional: without it the shards are added one after another in this process
(the same result, used by tests and small builds).

:class:`ShardedAdder` is that add step for the store (``autoindex.ShardedAdd``): the store
keeps its own sample, training and tuning, hands the trained empty index and the stream of
stored (id, vector) batches over, and installs the merged result as an ordinary checkpoint
(:func:`sharded_reindex`; ``semindex index --engine ray`` and ``import-vectors --engine ray``).
"""

from __future__ import annotations

import collections
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError


@dataclass
class ShardedBuild:
    """The merged index and where the time went."""

    index: Any
    seconds: dict[str, float] = field(default_factory=dict)
    parts: int = 0


def _metric(metric: str) -> int:
    import faiss

    if metric in ("cosine", "ip", "dot"):
        return int(faiss.METRIC_INNER_PRODUCT)
    if metric in ("l2", "euclidean"):
        return int(faiss.METRIC_L2)
    raise ConfigError(f"unknown metric {metric!r}")


def train_on_sample(vectors: np.ndarray, factory: str, metric: str, *, sample: int, seed: int = 0) -> Any:
    """An empty, trained index for ``factory`` (e.g. "IVF1024,Flat", "IVF1024,PQ48x8")."""
    import faiss

    if "IVF" not in factory:
        raise ConfigError(f"{factory!r} is not an IVF factory string")
    n = len(vectors)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    from ..storage.vectors import no_polysemous

    index = faiss.index_factory(int(vectors.shape[1]), factory, _metric(metric))
    no_polysemous(faiss.extract_index_ivf(index))
    index.train(np.ascontiguousarray(vectors[pick], dtype=np.float32))
    return index


def add_part(trained_blob: bytes, ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """One shard: the trained empty index plus this shard's vectors under their global ids."""
    import faiss

    index = _load(trained_blob)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return bytes(faiss.serialize_index(index))


def merge_parts(blobs: Sequence[bytes]) -> Any:
    """Merge shard indexes into the first (inverted lists concatenated, ids kept as they are)."""

    if not blobs:
        raise ConfigError("nothing to merge")
    base = _load(blobs[0])
    for blob in blobs[1:]:
        merge_into(base, _load(blob))
    return base


def _load(blob: bytes) -> Any:
    import faiss

    return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))


def merge_into(base: Any, part: Any) -> None:
    """Append ``part``'s inverted lists to ``base``'s (ids kept as they are; same quantizer)."""
    import faiss

    ivf = faiss.extract_index_ivf(base)
    ivf.merge_from(faiss.extract_index_ivf(part), 0)
    base.ntotal = ivf.ntotal


def build_sharded(
    ids: np.ndarray,
    vectors: np.ndarray,
    factory: str,
    metric: str = "cosine",
    *,
    parts: int = 4,
    sample: int = 100_000,
    seed: int = 0,
    ray: Any = None,
) -> ShardedBuild:
    """Train on a random sample, add ``parts`` shards (in parallel Ray tasks when ``ray`` is given), merge."""
    import time

    import faiss

    ids = np.asarray(ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError("vector ids must be unique before a sharded build (FAISS cannot shift them when merging)")
    out = ShardedBuild(index=None, parts=parts)
    t = time.perf_counter()
    trained = train_on_sample(vectors, factory, metric, sample=sample, seed=seed)
    out.seconds["train"] = time.perf_counter() - t
    blob = bytes(faiss.serialize_index(trained))
    bounds = np.linspace(0, len(ids), parts + 1).astype(int)
    t = time.perf_counter()
    if ray is None:
        blobs = [add_part(blob, ids[a:b], vectors[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    else:
        remote_add = ray.remote(num_cpus=1)(add_part)
        ref = ray.put(blob)
        futures = [remote_add.remote(ref, ids[a:b], vectors[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        blobs = ray.get(futures)
    out.seconds["add"] = time.perf_counter() - t
    t = time.perf_counter()
    out.index = merge_parts(blobs)
    out.seconds["merge"] = time.perf_counter() - t
    return out


def build_single(ids: np.ndarray, vectors: np.ndarray, factory: str, metric: str = "cosine", *,
                 sample: int = 100_000, seed: int = 0) -> ShardedBuild:
    """The one-process reference: the same sample and training, one add."""
    import time

    out = ShardedBuild(index=None, parts=1)
    t = time.perf_counter()
    index = train_on_sample(vectors, factory, metric, sample=sample, seed=seed)
    out.seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    out.seconds["add"] = time.perf_counter() - t
    out.index = index
    return out


# ---------------------------------------------------------------------------- the store's add step

DEFAULT_SHARD_ROWS = 50_000  # vectors per Ray task: ~77 MB of 384-d float32 in, about as much out


def add_part_measured(trained_blob: bytes, ids: np.ndarray, vectors: np.ndarray) -> tuple[bytes, int, int]:
    """:func:`add_part`, plus the worker's pid and peak RSS in KiB (what the benchmark reports)."""
    import os

    blob = add_part(trained_blob, ids, vectors)
    return blob, os.getpid(), int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class ShardedAdder:
    """The add step of a store's IVF build, in parallel Ray tasks (in this process without ``ray``).

    Called with the trained, empty FAISS index and the stream of (ids, vectors) batches the store
    reads from SQL in one snapshot: cuts the stream into shards of ``shard_rows`` vectors, adds each
    in a task (global ids, same frozen quantizer), and merges the results in stream order, so the
    inverted lists hold their ids in the order one process would have added them. At most
    ``max_in_flight`` shards are out at once (default: twice the cluster's CPUs), and each result
    is merged as soon as it is next in order: the driver holds the merged index plus a few shards,
    never every shard's copy at once, and the object store is not flooded.
    """

    def __init__(self, ray: Any = None, *, shard_rows: int = DEFAULT_SHARD_ROWS,
                 max_in_flight: int | None = None, num_cpus: float = 1.0) -> None:
        if shard_rows < 1:
            raise ConfigError(f"shard_rows must be >= 1, got {shard_rows}")
        self.ray = ray
        self.shard_rows = shard_rows
        self.max_in_flight = max_in_flight
        self.num_cpus = num_cpus
        self.parts = 0
        self.worker_rss_kib: dict[int, int] = {}  # worker pid -> its peak RSS (KiB), as the tasks report it
        self.seconds: dict[str, float] = {}

    def __call__(self, trained: Any, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> Any:
        import faiss

        t0 = time.perf_counter()
        blob = bytes(faiss.serialize_index(trained))
        merged: list[Any] = []  # the base index, once the first shard is back
        ray = self.ray
        pending: collections.deque[Any] = collections.deque()
        if ray is not None:
            remote_add = ray.remote(num_cpus=self.num_cpus)(add_part_measured)
            blob_ref = ray.put(blob)
            limit = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))

        def take(result: tuple[bytes, int, int]) -> None:
            part, pid, rss = result
            self.worker_rss_kib[pid] = max(self.worker_rss_kib.get(pid, 0), rss)
            index = _load(part)
            if merged:
                merge_into(merged[0], index)
            else:
                merged.append(index)

        def dispatch(ids: np.ndarray, vecs: np.ndarray) -> None:
            self.parts += 1
            if ray is None:
                take(add_part_measured(blob, ids, vecs))
                return
            while len(pending) >= limit:
                take(ray.get(pending.popleft()))
            pending.append(remote_add.remote(blob_ref, ids, vecs))

        ids_buf: list[np.ndarray] = []
        vec_buf: list[np.ndarray] = []
        held = 0
        for ids, vecs in batches:
            ids_buf.append(np.asarray(ids, dtype=np.int64))
            vec_buf.append(np.ascontiguousarray(vecs, dtype=np.float32))
            held += len(ids)
            if held >= self.shard_rows:  # whole shards of shard_rows; the rest waits for the next batch
                all_ids, all_vecs = np.concatenate(ids_buf), np.concatenate(vec_buf)
                cut = held - held % self.shard_rows
                for lo in range(0, cut, self.shard_rows):
                    dispatch(all_ids[lo:lo + self.shard_rows], all_vecs[lo:lo + self.shard_rows])
                ids_buf, vec_buf, held = [all_ids[cut:]], [all_vecs[cut:]], held - cut
        if held:
            dispatch(np.concatenate(ids_buf), np.concatenate(vec_buf))
        self.seconds["dispatch"] = time.perf_counter() - t0
        while pending:
            take(ray.get(pending.popleft()))
        self.seconds["total"] = time.perf_counter() - t0
        return merged[0] if merged else trained


def builds_ivf(coll: Any) -> bool:
    """Whether collection storage ``coll``'s index is an IVF family, trained (what a sharded build is for).

    Flat, HNSW, SQ8 and binary indexes stay built by the coordinator, as is an exact stand-in
    waiting for enough vectors to train its IVF."""
    from ..storage.vectors import IVFIndex

    return isinstance(coll.index, IVFIndex) and bool(coll.index.is_trained)


def sharded_reindex(coll: Any, ray: Any = None, *, shard_rows: int = DEFAULT_SHARD_ROWS) -> dict[str, Any] | None:
    """Rebuild collection storage ``coll``'s IVF / IVF-PQ index with its adds in Ray tasks; None for
    other families (left as they are).

    The store's own reindex does the rest (sample, training, tuning, id check, atomic checkpoint),
    so the result, its parameters and its search results are a local reindex's."""
    if not builds_ivf(coll):
        return None
    adder = ShardedAdder(ray, shard_rows=shard_rows)
    rep: dict[str, Any] = coll.reindex(add_batches=adder)
    rep["parts"] = adder.parts
    rep["worker_rss_kib"] = dict(adder.worker_rss_kib)
    return rep
