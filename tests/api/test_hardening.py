"""Issue 11: hostile or careless requests against a real server on 127.0.0.1 never poison a
store, exhaust the server, or answer 5xx (one test per class; storage-level ones are in
tests/storage/test_index_specs.py)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import semindex
from tests.api.serving import ServeProcess, free_port, wait_healthy
from tests.support import REPO, SAMPLE, invoke_cli, run_cli, sample_docs


def _vec(i: int, dim: int = 8) -> list[float]:
    v = np.random.default_rng(i).standard_normal(dim)
    return [float(x) for x in v / np.linalg.norm(v)]


# -- class 1: an index that cannot be built yet never fails a write; a spec that never works is 422 --


@pytest.mark.parametrize("spec", ["PQ4", "IVF64,Flat", "IVF16,PQ4"])
def test_untrainable_index_upsert_is_acknowledged_and_served(tmp_path: Path, thread_server: Any,
                                                             db_url: str | None, spec: str) -> None:
    store = semindex.Store(tmp_path / "s", db_url=db_url)
    srv = thread_server(store)
    with httpx.Client(base_url=srv.base, timeout=60) as c:
        assert c.post("/collections", json={"name": "other", "dimension": 8}).status_code == 201
        assert c.post("/collections", json={"name": "pq", "dimension": 8, "index": spec}).status_code == 201
        body = {"ids": [f"d{i}" for i in range(5)], "embeddings": [_vec(i) for i in range(5)]}
        r = c.post("/collections/pq/documents", json=body)
        assert r.status_code == 200, r.text
        r = c.post("/collections/pq/search", json={"vector": _vec(3), "k": 2})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["id"] == "d3"
        assert c.get("/collections/pq").status_code == 200
        assert c.get("/collections").status_code == 200
        assert c.get("/collections/other").status_code == 200


@pytest.mark.parametrize("spec", ["IVF0,Flat", "HNSW0", "HNSW-1", "NSG32", "IVF99999999,Flat", "PQ3"])
def test_a_spec_that_can_never_work_is_422(tmp_path: Path, thread_server: Any, spec: str) -> None:
    store = semindex.Store(tmp_path / "s")
    srv = thread_server(store)
    with httpx.Client(base_url=srv.base, timeout=60) as c:
        r = c.post("/collections", json={"name": "bad", "dimension": 8, "index": spec})
        assert r.status_code == 422, r.text
        assert c.get("/collections").json()["collections"] == []
        assert c.get("/collections/bad").status_code == 404


def test_cli_refuses_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.stack([_vec(i) for i in range(5)]).astype(np.float32))
    proc = invoke_cli("import-vectors", str(tmp_path / "v.npy"), "--store", str(tmp_path / "s"), "-c", "v",
                   "--index", "IVF0,Flat")
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "IVF" in errors[0] and "Traceback" not in proc.stderr
    invoke_cli("index", str(SAMPLE), "--store", str(tmp_path / "s"), check=True)
    for spec in ("NSG32", "HNSW-1"):
        proc = invoke_cli("reindex", "--store", str(tmp_path / "s"), "--index", spec)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- class 2: a size from a request is bounded, tested under a memory limit ------------------------


def test_huge_nlist_refused_under_a_memory_limit(tmp_path: Path) -> None:
    """`{"dimension": 4, "index": "IVF99999999,Flat"}` once took the server to 16.5 GB. The server
    runs here under RLIMIT_AS = 12 GiB (the old behaviour mapped 16.5 GB), so a regression fails fast
    (MemoryError or a crash) instead of swapping the machine."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMINDEX_") or k == "SEMINDEX_MODEL"}
    env["PYTHONPATH"] = str(REPO)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))

    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "semindex", "serve", "--store", str(tmp_path / "s"),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=limit)
    proc.log_path = str(tmp_path / "serve.log")  # type: ignore[attr-defined]
    try:
        wait_healthy(base, proc)
        with httpx.Client(base_url=base, timeout=60) as c:
            for spec in ("IVF99999999,Flat", "PQ4x40", "HNSW1000000", "PCA4096,Flat", "IVF0,Flat"):
                r = c.post("/collections", json={"name": "big", "dimension": 4, "index": spec})
                assert r.status_code == 422, (spec, r.text)
            r = c.post("/collections", json={"name": "wide", "dimension": 50_000_000})
            assert r.status_code == 422, r.text
            assert c.get("/collections").json()["collections"] == []
            assert c.get("/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


# -- class 5: /metrics labels are bounded --------------------------------------------------------


def test_metrics_labels_bounded_under_random_methods_and_paths(tmp_path: Path, thread_server: Any) -> None:
    import random
    import re

    srv = thread_server(semindex.Store(tmp_path / "s"))
    rng = random.Random(11)
    with httpx.Client(base_url=srv.base, timeout=30) as c:
        for i in range(300):
            method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
            c.request(method, rng.choice(["/health", "/collections", f"/nope/{i}", f"/collections/c{i}"]))
        text = c.get("/metrics").text
    methods = set(re.findall(r'method="([^"]*)"', text))
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert len(routes) <= 30 and not any(r.startswith("/nope/") for r in routes), routes
    assert len(text) < 200_000


# -- class 3: one text limit on every write path; bounded answers; ids only ----------------------


def test_text_limit_on_every_write_path_and_bounded_answers(tmp_path: Path, thread_server: Any,
                                                            db_url: str | None) -> None:
    store = semindex.Store(tmp_path / "s", db_url=db_url)
    srv = thread_server(store)
    with httpx.Client(base_url=srv.base, timeout=120) as c:
        assert c.post("/collections", json={"name": "v", "dimension": 8}).status_code == 201
        big = {"ids": ["x"], "embeddings": [_vec(0)], "texts": ["a" * 1_000_001]}
        r = c.post("/collections/v/documents", json=big)
        assert r.status_code == 422 and "1,000,000" in r.text, r.text
        assert c.get("/collections/v").json()["count"] == 0
        with pytest.raises(semindex.errors.InvalidInputError):  # the library refuses it too
            store.collection("v").add_embeddings(["x"], np.asarray([_vec(0)]), texts=["a" * 1_000_001])
        for i in range(8):
            body = {"ids": [f"d{i}"], "embeddings": [_vec(i)], "texts": ["é" * 700_000], "metadata": [{"n": i}]}
            assert c.post("/collections/v/documents", json=body).status_code == 200
        ask = {"vectors": [_vec(1)] * 8, "k": 8}  # 8 x 8 x 1.4 MB > 32 MiB
        r = c.post("/collections/v/search/batch", json=ask)
        assert r.status_code == 413 and "include_text" in r.text, r.text[:300]
        r = c.post("/collections/v/search/batch", json={**ask, "include_text": False})
        assert r.status_code == 200 and len(r.content) < 100_000
        hit = r.json()["results"][0]["hits"][0]
        assert hit["id"] == "d1" and hit["text"] == "" and hit["metadata"] == {"n": 1}
        r = c.post("/collections/v/search", json={"vector": _vec(2), "k": 1})
        assert r.status_code == 200 and r.json()["hits"][0]["text"] == "é" * 700_000


# -- class 7 (#13): strict types ------------------------------------------------------------------


@pytest.mark.parametrize("k", ["5", True, 5.0, None])
def test_k_has_a_strict_type(tmp_path: Path, thread_server: Any, k: Any) -> None:
    store = semindex.Store(tmp_path / "s")
    store.create_collection("v", dimension=8)
    srv = thread_server(store)
    with httpx.Client(base_url=srv.base, timeout=30) as c:
        r = c.post("/collections/v/search", json={"vector": _vec(0), "k": k})
        assert r.status_code == 422, r.text
        assert c.post("/collections/v/search", json={"vector": _vec(0), "k": 5}).status_code == 200


# -- class 6 (#9): concurrent create/delete of one name -------------------------------------------


def test_concurrent_create_delete_of_one_name_never_5xx(tmp_path: Path, thread_server: Any,
                                                        db_url: str | None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = semindex.Store(tmp_path / "s", db_url=db_url)
    srv = thread_server(store)

    def worker(seed: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=srv.base, timeout=120) as c:
            for i in range(25):
                op = (seed + i) % 4
                if op == 0:
                    r = c.post("/collections", json={"name": "x", "dimension": 8})
                elif op == 1:
                    r = c.delete("/collections/x")
                elif op == 2:
                    r = c.post("/collections/x/documents", json={"ids": [f"d{i}"], "embeddings": [_vec(i)]})
                else:
                    r = c.post("/collections/x/search", json={"vector": _vec(i), "k": 3})
                codes.append(r.status_code)
                assert r.status_code < 500, (op, r.status_code, r.text)
        return codes

    with ThreadPoolExecutor(8) as pool:
        codes = [c for cs in pool.map(worker, range(8)) for c in cs]
    assert set(codes) <= {200, 201, 404, 409}, set(codes)
    assert 404 in codes and 201 in codes


# -- class 7 (#13): the smaller items ---------------------------------------------------------------


def test_small_items_head_health_duplicate_ids_embeddings_into_model_collection(
        tmp_path: Path, thread_server: Any) -> None:
    store = semindex.Store(tmp_path / "s")
    store.create_collection("v", dimension=8)
    store.collection("m")  # a model collection (the default model of this lane)
    srv = thread_server(store)
    with httpx.Client(base_url=srv.base, timeout=60) as c:
        assert c.head("/health").status_code == 200
        r = c.post("/collections/v/documents", json={"ids": ["a", "a"], "embeddings": [_vec(1), _vec(2)]})
        assert r.status_code == 200 and (r.json()["added"], r.json()["updated"]) == (1, 0), r.text
        r = c.post("/collections/v/search", json={"vector": _vec(2), "k": 1})
        assert r.json()["hits"][0]["id"] == "a" and r.json()["hits"][0]["score"] > 0.999
        dim = c.get("/collections/m").json()["dimension"]
        r = c.post("/collections/m/documents", json={"ids": ["x"], "embeddings": [_vec(0, dim)]})
        assert r.status_code == 422 and "vectors-only" in r.text, r.text
        assert c.get("/collections/m").json()["count"] == 0


def test_serve_api_key_blank_or_untrimmed_and_busy_port(tmp_path: Path) -> None:
    import socket

    proc = run_cli("serve", "--store", str(tmp_path / "s"), "--host", "0.0.0.0", "--api-key", "   ")
    assert proc.returncode == 2 and "blank" in proc.stderr, proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--store", str(tmp_path / "s"), "--port", str(port), timeout=120)
    assert proc.returncode == 2 and "cannot listen" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# -- class 8 (#8): models are a server-side allow-list ----------------------------------------------


def test_models_are_an_allow_list_and_refusals_reveal_nothing(tmp_path: Path, thread_server: Any) -> None:
    store = semindex.Store(tmp_path / "s")
    store.collection()  # the default collection, with the default model of this lane
    srv = thread_server(store, allow_models=["hash:64"])
    with httpx.Client(base_url=srv.base, timeout=60) as c:
        bodies = []
        for probe in ("/etc/passwd", "/etc", "/nonexistent/xyz", "~", "/proc/self/cwd", str(REPO)):
            r = c.post("/collections", json={"name": "p", "model": probe})
            assert r.status_code == 422, r.text
            r2 = c.post("/collections/default/search", json={"query": "x", "rerank": probe})
            assert r2.status_code == 422, r2.text
            for text in (r.text, r2.text):
                assert str(Path.home()) not in text.replace(probe, "") and str(os.getpid()) not in text
                bodies.append(text.replace(probe, "P"))
        assert len({b for b in bodies[::2]}) == 1 and len({b for b in bodies[1::2]}) == 1  # same answer for all
        assert c.post("/collections", json={"name": "ok", "model": "hash:64"}).status_code == 201
        default = c.get("/collections/default").json()["model"]
        assert c.post("/collections", json={"name": "ok2", "model": default}).status_code == 201
        assert "p" not in {x["name"] for x in c.get("/collections").json()["collections"]}


def test_rerank_cache_is_bounded() -> None:
    from semindex.search import rerank

    assert rerank.CACHE_SIZE <= 8


def test_duplicate_keys_in_a_filter_are_refused(tmp_path: Path, thread_server: Any) -> None:
    store = semindex.Store(tmp_path / "s")
    store.create_collection("v", dimension=8)
    srv = thread_server(store)
    vec = ",".join(str(x) for x in _vec(0))
    with httpx.Client(base_url=srv.base, timeout=30) as c:
        for flt in ('{"a": 1, "a": 2}', '{"$and": [{"b": {"$gt": 1, "$gt": 5}}]}'):
            raw = f'{{"vector": [{vec}], "k": 3, "filter": {flt}}}'
            r = c.post("/collections/v/search", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["error"] == "invalid_filter", r.text
        raw = f'{{"vector": [{vec}], "k": 3, "filter": {{"a": 1, "b": 2}}}}'
        r = c.post("/collections/v/search", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text


# -- #6: two servers on one store: the cache follows the collection's identity, not its name --------


def test_a_collection_recreated_by_another_server_is_reopened(tmp_path: Path, thread_server: Any,
                                                              db_url: str | None) -> None:
    a_store = semindex.Store(tmp_path / "s", db_url=db_url)
    srv = thread_server(a_store)
    with httpx.Client(base_url=srv.base, timeout=60) as c:
        assert c.post("/collections", json={"name": "c", "dimension": 8}).status_code == 201
        assert c.post("/collections/c/documents", json={"ids": ["a"], "embeddings": [_vec(0)]}).status_code == 200
        assert c.post("/collections/c/search", json={"vector": _vec(0), "k": 1}).status_code == 200
        b_store = semindex.Store(tmp_path / "s", db_url=db_url)  # the other server
        b_store.delete_collection("c")
        b_store.create_collection("c", dimension=16).add_embeddings(["b"], np.asarray([_vec(1, 16)]))
        b_store.close()
        r = c.get("/collections")
        assert r.status_code == 200 and [x["dimension"] for x in r.json()["collections"]] == [16], r.text
        r = c.post("/collections/c/documents", json={"ids": ["x"], "embeddings": [_vec(2, 16)]})
        assert r.status_code == 200, r.text
        assert c.get("/collections/c").json()["count"] == 2
        r = c.post("/collections/c/search", json={"vector": _vec(1, 16), "k": 1})
        assert r.status_code == 200 and r.json()["hits"][0]["id"] == "b", r.text


# -- #7: a collection whose model is gone is 503; the others are served -------------------------------


@pytest.mark.slow  # a `semindex serve` subprocess (~90 s on a busy 2-core box)
def test_a_collection_whose_model_vanished_is_503_and_serve_still_starts(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from tests.api.serving import ServeProcess

    path = tmp_path / "s"
    store = semindex.Store(path)
    store.collection("good").add([{"id": "a", "text": "black holes and stars"}])
    store.collection("gone").add([{"id": "b", "text": "a document"}])
    store.close()
    engine = sa.create_engine(f"sqlite:///{path / 'semindex.db'}")
    with engine.begin() as conn:  # as if its local model folder had been deleted
        conn.execute(sa.text("UPDATE collections SET model=:m WHERE name='gone'"), {"m": str(tmp_path / "model-was-here")})
    engine.dispose()
    srv = ServeProcess(path).wait()
    try:
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            assert c.post("/collections/good/search", json={"query": "stars", "k": 1}).json()["hits"][0]["id"] == "a"
            r = c.post("/collections/gone/search", json={"query": "x", "k": 1})
            assert r.status_code == 503 and r.json()["error"] == "model_unavailable", r.text
            assert c.get("/collections").status_code == 200
    finally:
        srv.stop()


def _hub_cache_with(cache: Path, repo_id: str, model_dir: Path) -> None:
    """``model_dir``'s files laid out as the Hugging Face hub cache keeps a downloaded repo."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "blobs").mkdir()


@pytest.mark.slow  # a server process that loads torch for the cross-encoder
def test_installed_cross_encoders_are_allowed_for_rerank(tmp_path: Path, tiny_cross_encoder: Path,
                                                         tiny_bert: Path) -> None:
    from semindex.core import installed_cross_encoders

    cache = tmp_path / "hub"
    _hub_cache_with(cache, "acme/tiny-reranker", tiny_cross_encoder)
    _hub_cache_with(cache, "acme/tiny-bert", tiny_bert)  # a bi-encoder checkpoint: not a reranker
    assert installed_cross_encoders(cache) == ["acme/tiny-reranker"]
    assert installed_cross_encoders(tmp_path / "no-cache-here") == []
    with semindex.Store(tmp_path / "s") as store:
        store.collection().add(sample_docs())
    # a real server process whose Hugging Face cache is this one, with no --allow-model at all
    srv = ServeProcess(tmp_path / "s", env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}).wait()
    try:
        with httpx.Client(base_url=srv.base, timeout=120) as c:
            r = c.post("/collections/default/search", json={"query": "stars", "k": 3, "rerank": "acme/tiny-reranker"})
            assert r.status_code == 200, r.text + srv.log()
            assert len(r.json()["hits"]) == 3
            r = c.post("/collections/default/search", json={"query": "stars", "rerank": "acme/tiny-bert"})
            assert r.status_code == 422, r.text
    finally:
        srv.stop()
