"""IVF / IVF-PQ indexes built in Ray tasks and installed as the checkpoint (issue 12, the vector index).

A Ray run (``semindex index --engine ray``) and ``import-vectors --engine ray`` on an IVF
collection end with the index rebuilt from the committed vectors, its adds in Ray tasks: the
result must be a local reindex's (same tuned params, same top-10), an ordinary checkpoint
(`check` passes, a reopened store and the HTTP API serve it). Inside the loopback-only
namespace, on the session cluster (see conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.distributed.test_ray_engine import QUERIES, corpus, top10
from tests.support import REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]

N = 3000


@pytest.mark.parametrize("spec", ["ivf", "ivfpq"])
def test_ray_run_installs_a_sharded_ivf_equal_to_a_local_build(
    tmp_path: Path, ray_cluster: Any, ray_db: str | None, spec: str
) -> None:
    """The reference is the local build from the same SQL rows, which tests the install itself.
    (Shards now count records as local commit batches do, so a separate local store with the same
    --commit-every assigns the same vector ids; with another batch size, a batch holding an update
    assigns the last few in another order, and the seeded training sample picks other vectors.)"""
    import semindex
    from semindex.indexer.pipeline import IngestStats
    from semindex.indexer.ray_engine import RayOptions, ray_index

    src = corpus(tmp_path / "c.jsonl", N)
    store = semindex.Store(tmp_path / "ray", db_url=ray_db)
    coll = store.collection("c", model="hash", index=spec)
    report = ray_index(coll, [src], RayOptions(actors=2, cpus_per_actor=0.5, shard_size=500, index_shard_rows=700),
                       stats=IngestStats(), notify=lambda msg: None)
    assert report.index is not None, "no sharded build ran"
    assert report.index["sharded"] is True and report.index["parts"] == -(-N // 700)
    assert report.index["count"] == N and report.index["new"]["type"] == spec
    assert report.index["worker_rss_kib"] and os.getpid() not in report.index["worker_rss_kib"]  # Ray workers
    assert "index_build" in report.seconds
    local, _, ref = coll.storage._build_report()  # what a local reindex builds from these rows (seed 0)
    installed = coll.storage.index
    assert installed.spec == local.spec and installed.params["built_for"] == N
    drop = ("generation",)
    assert {k: v for k, v in installed.params.items() if k not in drop} == {
        k: v for k, v in local.params.items() if k not in drop}  # nlist, nprobe, pq_m, k_factor, recall@10
    q = coll.storage.fetch_embeddings(np.arange(1, N, 97, dtype=np.int64))
    s_inst, i_inst = installed.search(q, 10)
    s_loc, i_loc = local.search(q, 10)
    np.testing.assert_array_equal(i_inst, i_loc)  # identical top-10 lists
    np.testing.assert_array_equal(s_inst, s_loc)
    expected = top10(coll)
    assert coll.check().ok
    store.close()

    with semindex.Store(tmp_path / "ray", db_url=ray_db) as again:  # a fresh open loads the installed checkpoint
        c2 = again.get_collection("c")
        assert c2.check().ok
        assert c2.info().index_params["nprobe"] == local.params["nprobe"]
        assert top10(c2) == expected

    from fastapi.testclient import TestClient

    from semindex.api.app import create_app

    app = create_app(semindex.Store(tmp_path / "ray", db_url=ray_db), warm_up=False, close_store=True)
    with TestClient(app) as client:  # what `semindex serve` answers
        got = client.post("/collections/c/search", json={"query": QUERIES[0], "k": 10})
        assert got.status_code == 200, got.text
        assert [h["id"] for h in got.json()["hits"]] == [h[0] for h in expected[0]]


def test_ray_run_on_flat_leaves_the_coordinator_index(tmp_path: Path, ray_cluster: Any) -> None:
    import semindex
    from semindex.indexer.ray_engine import RayOptions, ray_index

    src = corpus(tmp_path / "c.jsonl", 600)
    with semindex.Store(tmp_path / "ray") as store:
        coll = store.collection("c", model="hash", index="flat")
        report = ray_index(coll, [src], RayOptions(actors=1, shard_size=300), notify=lambda msg: None)
        assert report.index is None and "index_build" not in report.seconds
        assert coll.check().ok


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((25, dim))
    x = centers[rng.integers(0, 25, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semindex", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("spec", ["ivf", "ivfpq"])
def test_import_vectors_engine_ray_equals_local(tmp_path: Path, ray_cluster: Any, spec: str) -> None:
    import semindex

    x = _clustered(6000)
    np.save(tmp_path / "emb.npy", x)
    address = ray_cluster.get_runtime_context().gcs_address
    common = [str(tmp_path / "emb.npy"), "-c", "v", "--index", spec, "--batch-size", "1000", "--json"]
    local = _cli("import-vectors", *common, "--store", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-2000:]
    assert _cli("reindex", "--store", str(tmp_path / "local"), "-c", "v").returncode == 0
    ray = _cli("import-vectors", *common, "--store", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", address)
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert f"vector index: {spec}" in ray.stderr and "Ray tasks" in ray.stderr
    out, ref = json.loads(ray.stdout), json.loads(local.stdout)
    assert (out["rows"], out["added"], out["index_type"]) == (6000, 6000, spec)  # same summary fields as local
    assert set(out) == set(ref)
    q = _clustered(20, seed=4)
    with semindex.Store(tmp_path / "local") as ls, semindex.Store(tmp_path / "ray") as rs:
        lc, rc = ls.get_collection("v"), rs.get_collection("v")
        assert rc.check().ok
        drop = {"generation"}
        assert {k: v for k, v in rc.info().index_params.items() if k not in drop} == {
            k: v for k, v in lc.info().index_params.items() if k not in drop}
        assert [[h.id for h in r] for r in rc.search_vectors(q, 10)] == [[h.id for h in r] for r in lc.search_vectors(q, 10)]


def test_import_vectors_unreachable_ray_is_one_line_before_any_row(tmp_path: Path, ray_cluster: Any) -> None:
    np.save(tmp_path / "emb.npy", _clustered(100))
    proc = _cli("import-vectors", str(tmp_path / "emb.npy"), "--store", str(tmp_path / "s"), "-c", "v",
                "--engine", "ray", "--ray-address", "127.0.0.1:9")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
    assert proc.stderr.strip().startswith("error: cannot reach the Ray cluster at 127.0.0.1:9")
    assert not (tmp_path / "s").exists()
