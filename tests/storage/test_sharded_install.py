"""Installing an IVF index whose adds were done elsewhere (``reindex(add_batches=...)``, issue 12).

The store keeps the sample, the training and the tuning; the add step is handed over. These run
it in this process (``ShardedAdder`` without Ray); tests/distributed runs it in Ray tasks. What
must hold: the installed index is the one a local reindex builds (same params, same top-10), it
is an ordinary checkpoint (`check` passes, a reopened store loads it), and a bad or failed
sharded build leaves the index in use and its checkpoint as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

import semindex
from semindex.errors import StorageError
from semindex.indexer.sharded_ivf import ShardedAdder, builds_ivf, sharded_reindex
from semindex.storage.checkpoint import read_manifest
from tests import support

DIM = 32
N = 2000


def clustered(n: int, seed: int = 0) -> np.ndarray:
    return support.clustered(n, dim=DIM, clusters=30, spread=0.4, seed=seed)


def make(path: Path, spec: str, x: np.ndarray) -> tuple[semindex.Store, semindex.Collection]:
    store = semindex.Store(path)
    coll = store.create_collection("v", dimension=DIM, index=spec)
    coll.add_embeddings([f"d{i}" for i in range(len(x))], x)
    return store, coll


def top10(coll: semindex.Collection, q: np.ndarray) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in hits] for hits in coll.search_vectors(q, 10)]


@pytest.mark.parametrize("spec", ["ivf", "ivfpq", "IVF32,Flat"])
def test_sharded_install_equals_local_reindex(tmp_path: Path, spec: str) -> None:
    x = clustered(N)
    q = clustered(25, seed=9)
    s1, local = make(tmp_path / "local", spec, x)
    s2, shard = make(tmp_path / "shard", spec, x)
    ref = local.reindex()
    assert builds_ivf(shard.storage)
    rep = sharded_reindex(shard.storage, shard_rows=700)  # 20k-row SQL batches cut into 700-row shards
    assert rep is not None and rep["sharded"] is True and rep["parts"] == -(-N // 700)
    assert rep["count"] == N and rep["new"]["type"] == ref["new"]["type"]
    drop = ("generation",)
    assert {k: v for k, v in rep["new"]["params"].items() if k not in drop} == {
        k: v for k, v in ref["new"]["params"].items() if k not in drop}
    assert top10(shard, q) == top10(local, q)
    assert shard.check().ok
    manifest = read_manifest(shard.storage.dir)
    assert manifest is not None and manifest.count == N and manifest.params["nprobe"] == rep["new"]["params"]["nprobe"]
    s2.close()
    again = semindex.Store(tmp_path / "shard")  # a fresh process loads the installed checkpoint
    reopened = again.get_collection("v")
    assert top10(reopened, q) == top10(local, q)
    assert reopened.check().ok
    again.close()
    s1.close()


def _never(trained: Any, batches: Any) -> Any:
    raise AssertionError("not an IVF build: the store adds these itself")


def test_flat_and_hnsw_stay_coordinator_built(tmp_path: Path) -> None:
    x = clustered(1500)
    for spec in ("flat", "hnsw"):
        store, coll = make(tmp_path / spec, spec, x)
        assert not builds_ivf(coll.storage)
        assert sharded_reindex(coll.storage) is None
        rep = coll.storage.reindex(add_batches=_never)  # the store adds these itself
        assert rep["sharded"] is False
        store.close()


def _checkpoint_state(coll: semindex.Collection) -> tuple[Any, bytes]:
    m = read_manifest(coll.storage.dir)
    assert m is not None
    return m, (coll.storage.dir / m.file).read_bytes()


def _checkpointed_ivf(path: Path) -> tuple[np.ndarray, np.ndarray, semindex.Store, semindex.Collection,
                                           list[list[tuple[str, float]]], tuple[Any, bytes]]:
    """An IVF collection of N vectors reindexed and checkpointed: (vectors, queries, store,
    collection, its top-10 for the queries, its checkpoint's manifest and bytes)."""
    x = clustered(N)
    q = clustered(10, seed=5)
    store, coll = make(path, "ivf", x)
    coll.reindex()
    return x, q, store, coll, top10(coll, q), _checkpoint_state(coll)


@pytest.mark.parametrize("fault", ["drops_a_shard", "other_quantizer", "wrong_dimension", "crash"])
def test_bad_or_failed_sharded_build_keeps_the_index_in_use(tmp_path: Path, fault: str) -> None:
    x, q, store, coll, before_hits, before = _checkpointed_ivf(tmp_path / "s")

    def bad(trained: Any, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> Any:
        parts = list(batches)
        if fault == "crash":
            raise KeyboardInterrupt  # the driver killed mid-build, as far as the store can tell
        if fault == "wrong_dimension":
            other = faiss.index_factory(DIM // 2, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
            other.train(np.ascontiguousarray(x[:400, : DIM // 2]))
            return other
        if fault == "other_quantizer":
            other = faiss.clone_index(trained)
            faiss.extract_index_ivf(other).quantizer.reset()
            faiss.extract_index_ivf(other).quantizer.add(clustered(faiss.extract_index_ivf(other).nlist, seed=3))
            trained = other
        for ids, vecs in parts[: len(parts) - 1 if fault == "drops_a_shard" else len(parts)]:
            trained.add_with_ids(vecs, ids)
        return trained

    adder = ShardedAdder(shard_rows=1500)
    if fault == "drops_a_shard":
        def drop(trained: Any, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> Any:
            def all_but_last() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                for ids, vecs in batches:  # consume all (the store counts them), add all but 100
                    yield ids[:-100], vecs[:-100]
            return adder(trained, all_but_last())
        fn = drop
    else:
        fn = bad
    with pytest.raises((StorageError, KeyboardInterrupt)):
        coll.storage.reindex(add_batches=fn)
    assert top10(coll, q) == before_hits
    assert _checkpoint_state(coll) == before
    assert coll.check().ok
    coll.add_embeddings(["new"], clustered(1, seed=11))  # and the collection goes on working
    store.close()
    again = semindex.Store(tmp_path / "s")
    c2 = again.get_collection("v")
    assert c2.check().ok and c2.count() == N + 1
    assert top10(c2, q)[0][0][0] == before_hits[0][0][0]
    again.close()


_KILLED_MID_BUILD = """
import os, sys
import semindex
from semindex.indexer.sharded_ivf import ShardedAdder

store = semindex.Store(sys.argv[1])
coll = store.get_collection("v")
adder = ShardedAdder(shard_rows=1000)

def add_then_die(trained, batches):
    adder(trained, batches)
    os._exit(137)  # killed after the adds and the merge, before the store could install anything

coll.storage.reindex(add_batches=add_then_die)
"""


def test_process_killed_during_a_sharded_build_leaves_a_valid_checkpoint(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.support import REPO

    _, q, store, _, before_hits, before = _checkpointed_ivf(tmp_path / "s")
    store.close()
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_BUILD, str(tmp_path / "s")], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 137, proc.stderr[-2000:]
    again = semindex.Store(tmp_path / "s")
    c2 = again.get_collection("v")
    assert _checkpoint_state(c2) == before  # the old checkpoint, untouched
    assert c2.check().ok
    assert top10(c2, q) == before_hits
    rep = sharded_reindex(c2.storage, shard_rows=1000)  # and the next sharded build installs
    assert rep is not None and rep["sharded"] and c2.check().ok
    again.close()
