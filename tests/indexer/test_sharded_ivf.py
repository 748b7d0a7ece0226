"""Sharded IVF build (train once on a random sample, add per shard, merge) == one-process build."""

from __future__ import annotations

import numpy as np
import pytest

from semindex.errors import ConfigError
from semindex.indexer.sharded_ivf import build_sharded, build_single


def _data(n: int = 6000, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((40, d)).astype(np.float32)
    x = centers[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(10_000, 10_000 + n)).astype(np.int64)  # global ids, not 0..n-1
    return ids, x


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,PQ8x4"])
def test_sharded_equals_single(factory: str) -> None:
    ids, x = _data()
    one = build_single(ids, x, factory, sample=3000)
    many = build_sharded(ids, x, factory, parts=5, sample=3000)
    assert many.index.ntotal == one.index.ntotal == len(ids)
    for idx in (one.index, many.index):
        idx.nprobe = 8
    q = x[:50]
    d1, i1 = one.index.search(q, 10)
    d2, i2 = many.index.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-5)
    assert set(i1[:, 0]) <= set(ids.tolist())


def test_duplicate_ids_are_refused() -> None:
    ids, x = _data(600)
    ids[5] = ids[6]
    with pytest.raises(ConfigError, match="unique"):
        build_sharded(ids, x, "IVF8,Flat", parts=2, sample=600)
