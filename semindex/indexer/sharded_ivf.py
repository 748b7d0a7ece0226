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
"""

from __future__ import annotations

from collections.abc import Sequence
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
    index = faiss.index_factory(int(vectors.shape[1]), factory, _metric(metric))
    index.train(np.ascontiguousarray(vectors[pick], dtype=np.float32))
    return index


def add_part(trained_blob: bytes, ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """One shard: the trained empty index plus this shard's vectors under their global ids."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained_blob, dtype=np.uint8))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return bytes(faiss.serialize_index(index))


def merge_parts(blobs: Sequence[bytes]) -> Any:
    """Merge shard indexes into the first (inverted lists concatenated, ids kept as they are)."""
    import faiss

    if not blobs:
        raise ConfigError("nothing to merge")
    base = faiss.deserialize_index(np.frombuffer(blobs[0], dtype=np.uint8))
    ivf = faiss.extract_index_ivf(base)
    for blob in blobs[1:]:
        other = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        ivf.merge_from(faiss.extract_index_ivf(other), 0)
        base.ntotal = ivf.ntotal
    return base


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
