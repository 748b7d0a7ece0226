"""HTTP side of Matryoshka truncation (issue 13): POST /collections with ``dimensions``, through a
real server. Fast lane: ``mrlhash`` declares Matryoshka training (tests/mrl.py), ``hash:384`` does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.mrl import matryoshka_encoder
from tests.support import sample_docs


@pytest.fixture
def base(tmp_path: Path, encoder: Any, thread_server: Any) -> Iterator[str]:
    import semindex

    with matryoshka_encoder() as model:
        store = semindex.Store(tmp_path / "store")
        yield thread_server(store, allow_models=[model]).base
        store.close()


def post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=60)


def test_create_upsert_search_truncated(base: str) -> None:
    r = post(base, "/collections", {"name": "m", "model": "mrlhash:64", "dimensions": 16})
    assert r.status_code == 201, r.text
    assert r.json()["dimension"] == 16 and r.json()["truncate_dim"] == 16
    docs = [{"id": d["id"], "text": d["text"], "title": d["title"]} for d in sample_docs()]
    assert post(base, "/collections/m/documents", {"documents": docs}).status_code == 200
    hits = post(base, "/collections/m/search", {"query": docs[5]["title"] + " " + docs[5]["text"], "k": 1})
    assert hits.status_code == 200, hits.text
    assert hits.json()["hits"][0]["id"] == docs[5]["id"]
    vec = np.zeros(16).tolist()
    vec[0] = 1.0
    assert post(base, "/collections/m/search", {"vector": vec, "k": 1}).status_code == 200
    wrong = post(base, "/collections/m/search", {"vector": [1.0] * 64, "k": 1})  # full-size query: refused
    assert wrong.status_code == 422 and wrong.json()["error"] == "dimension_mismatch"
    got = httpx.get(f"{base}/collections/m", timeout=30).json()
    assert got["truncate_dim"] == 16 and got["count"] == len(docs)
    plain = post(base, "/collections", {"name": "p"}).json()
    assert plain["truncate_dim"] is None and plain["dimension"] == 384


def test_refusals_are_422_json(base: str) -> None:
    r = post(base, "/collections", {"name": "h", "dimensions": 64})  # the lane's hash:384: not trained
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "truncation_unsupported" and "not trained for truncation" in body["detail"]
    r = post(base, "/collections", {"name": "h", "model": "mrlhash:64", "dimensions": 24})
    assert r.status_code == 422 and "64, 32, 16" in r.json()["detail"]
    r = post(base, "/collections", {"name": "h", "dimensions": 0})
    assert r.status_code == 422  # schema validation
    forced = post(base, "/collections", {"name": "f", "dimensions": 24, "allow_truncation": True})
    assert forced.status_code == 201 and forced.json()["dimension"] == 24
    names = [c["name"] for c in httpx.get(f"{base}/collections", timeout=30).json()["collections"]]
    assert names == ["f"]


def test_openai_embeddings_dimensions(tmp_path: Path, encoder: Any, thread_server: Any) -> None:
    """/v1/embeddings: ``dimensions`` cuts a Matryoshka model's vectors as a collection would; others 400."""
    import semindex

    with matryoshka_encoder() as model, semindex.Store(tmp_path / "store") as store:
        base = thread_server(store, embed_models=[model, "hash:384"]).base
        body = {"model": model, "input": ["sourdough bread", "black holes"], "encoding_format": "float"}
        r = post(base, "/v1/embeddings", {**body, "dimensions": 16})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        want = semindex.embed(["sourdough bread", "black holes"], model, dimensions=16)
        assert got.shape == (2, 16) and np.allclose(got, want, atol=1e-6)
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        coll = store.create_collection("m", model=model, dimensions=16)  # the same vectors a collection stores
        assert np.allclose(coll.embed(["sourdough bread", "black holes"]), got, atol=1e-6)
        assert len(post(base, "/v1/embeddings", {**body, "dimensions": 64}).json()["data"][0]["embedding"]) == 64
        for bad_body in ({**body, "dimensions": 24}, {**body, "model": "hash:384", "dimensions": 128}):
            bad = post(base, "/v1/embeddings", bad_body)
            assert bad.status_code == 400, bad.text
            err = bad.json()["error"]
            assert err["param"] == "dimensions" and "cannot shorten" in err["message"]
