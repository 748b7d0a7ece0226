"""`semindex index` then `semindex serve` on the same store, driven over real HTTP: every endpoint, auth, errors."""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from semindex.indexer.encoder import canonical_model_name
from tests.api.serving import KEY, ServeProcess, cli_store
from tests.conftest import BACKENDS, fresh_pg_database, pg_admin_url
from tests.support import invoke_cli, run_cli

LIMIT = 200_000  # --max-body-bytes of the server under test
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server per backend: the store built by `semindex index` (SQLite, or --db PostgreSQL)."""
    with contextlib.ExitStack() as stack:
        db_args: list[str] = []
        if request.param == "postgresql":
            if pg_admin_url() is None:
                pytest.skip("PostgreSQL tests need $SEMINDEX_TEST_PG_URL (set by .ci/run)")
            db_args = ["--db", stack.enter_context(fresh_pg_database("api"))]
        store = cli_store(tmp_path_factory.mktemp("serve"), *db_args)
        srv = ServeProcess(store, *db_args, "--api-key", KEY, "--max-body-bytes", str(LIMIT)).wait()
        srv.db_args = db_args  # type: ignore[attr-defined]
        yield srv
        srv.stop()


@pytest.fixture(scope="module")
def client(served: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base, headers=AUTH, timeout=120) as c:
        yield c


def error_of(r: httpx.Response, status: int, code: str | None = None) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body
    return str(body["detail"])


# -- auth --------------------------------------------------------------------------


def test_health_needs_no_key(served: ServeProcess) -> None:
    r = httpx.get(f"{served.base}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/collections", "/collections/default", "/metrics", "/openapi.json", "/docs", "/nope"])
def test_every_other_endpoint_needs_the_key(served: ServeProcess, path: str) -> None:
    assert "missing" in error_of(httpx.get(served.base + path), 401, "unauthorized")
    r = httpx.get(served.base + path, headers={"Authorization": "Bearer wrong-key"})
    assert "invalid" in error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    error_of(httpx.get(served.base + path, headers={"Authorization": f"Basic {KEY}"}), 401)
    error_of(httpx.get(served.base + path, headers={"Authorization": f"Bearer {KEY}x"}), 401)
    ok = httpx.get(served.base + path, headers=AUTH)
    assert ok.status_code == (404 if path == "/nope" else 200), ok.text


def test_write_without_key_is_refused_before_reading_the_body(served: ServeProcess, client: httpx.Client) -> None:
    r = httpx.post(f"{served.base}/collections/default/documents", json={"documents": [{"id": "x", "text": "x"}]})
    error_of(r, 401)
    error_of(client.get("/collections/default/documents/x"), 404, "document_not_found")


# -- the CLI-built store, served as is ------------------------------------------------


def test_cli_built_default_collection_is_served(client: httpx.Client) -> None:
    cols = client.get("/collections").json()["collections"]
    default = next(c for c in cols if c["name"] == "default")
    assert default["count"] == 40
    assert default["model"] == canonical_model_name(None)  # the lane's default (the real one when slow)
    assert default["dimension"] == 384 and default["index_type"] == "flat"
    info = client.get("/collections/default").json()
    assert info["count"] == 40 and info["metric"] == "cosine"
    hits = client.post("/collections/default/search", json={"query": "how do black holes form", "k": 3}).json()["hits"]
    assert len(hits) == 3
    assert hits[0]["id"] == "astro-black-holes"
    assert set(hits[0]) >= {"id", "score", "text", "metadata"}
    assert hits[0]["metadata"]["topic"] == "astronomy"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_filtered_and_batch_search(client: httpx.Client) -> None:
    r = client.post("/collections/default/search", json={"query": "stars", "k": 5, "filter": {"topic": "cooking"}})
    hits = r.json()["hits"]
    assert hits and all(h["metadata"]["topic"] == "cooking" for h in hits)
    r = client.post(
        "/collections/default/search/batch",
        json={"queries": ["how do black holes form", "baking bread", "stars"], "k": 2},
    )
    results = r.json()["results"]
    assert len(results) == 3 and all(len(res["hits"]) == 2 for res in results)
    assert results[0]["hits"][0]["id"] == "astro-black-holes"
    single = client.post("/collections/default/search", json={"query": "baking bread", "k": 2}).json()["hits"]
    assert [h["id"] for h in results[1]["hits"]] == [h["id"] for h in single]


def test_search_modes_are_passed_to_the_library(client: httpx.Client) -> None:
    for mode in ("keyword", "hybrid"):
        r = client.post("/collections/default/search", json={"query": "black holes", "k": 3, "mode": mode})
        # the library answers these (keyword/hybrid) or refuses them with a ConfigError: never a 5xx
        assert r.status_code in (200, 400, 422), r.text
        if r.status_code == 200:  # keyword hits only documents holding the words: maybe fewer than k
            hits = r.json()["hits"]
            assert 1 <= len(hits) <= 3 and hits[0]["id"] == "astro-black-holes"
        else:
            error_of(r, r.status_code)
    r = client.post("/collections/default/search", json={"query": "x", "mode": "telepathy"})
    error_of(r, 422, "validation_error")


# -- documents ------------------------------------------------------------------------


def test_document_lifecycle(client: httpx.Client) -> None:
    docs = [
        {"id": "api/doc-1", "text": "Volcanic eruptions on Io are driven by tidal heating.", "metadata": {"topic": "space"}},
        {"text": "Sourdough needs a lively starter and a long, cool proof."},
    ]
    r = client.post("/collections/default/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == 2 and body["updated"] == 0 and body["unchanged"] == 0
    assert body["ids"][0] == "api/doc-1" and len(body["ids"]) == 2
    derived = body["ids"][1]
    # visible to searches as soon as the response returned
    hits = client.post("/collections/default/search", json={"query": docs[0]["text"], "k": 1}).json()["hits"]
    assert hits[0]["id"] == "api/doc-1" and hits[0]["score"] > 0.99
    # an id with a slash is one path segment for the document routes
    got = client.get("/collections/default/documents/api/doc-1").json()
    assert got == {"id": "api/doc-1", "text": docs[0]["text"], "title": None, "metadata": {"topic": "space"}}
    assert client.get(f"/collections/default/documents/{derived}").json()["text"] == docs[1]["text"]

    again = client.post("/collections/default/documents", json={"documents": docs}).json()
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 2)
    changed = [{"id": "api/doc-1", "text": "Io has hundreds of active volcanoes.", "title": "Io"}]
    upd = client.post("/collections/default/documents", json={"documents": changed}).json()
    assert (upd["added"], upd["updated"]) == (0, 1)
    assert client.get("/collections/default/documents/api/doc-1").json()["title"] == "Io"

    ids = client.get("/collections/default/documents", params={"offset": 40, "limit": 10}).json()
    assert ids["ids"] == ["api/doc-1", derived] and ids["count"] == 42 and ids["offset"] == 40

    r = client.delete("/collections/default/documents/api/doc-1")
    assert r.json() == {"id": "api/doc-1", "deleted": True}
    error_of(client.get("/collections/default/documents/api/doc-1"), 404, "document_not_found")
    error_of(client.delete("/collections/default/documents/api/doc-1"), 404, "document_not_found")
    hits = client.post("/collections/default/search", json={"query": "volcanoes on Io", "k": 5}).json()["hits"]
    assert "api/doc-1" not in [h["id"] for h in hits]
    assert client.delete(f"/collections/default/documents/{derived}").status_code == 200
    assert client.get("/collections/default").json()["count"] == 40


def test_a_bad_document_rejects_the_whole_batch(client: httpx.Client) -> None:
    docs = [{"id": "fine", "text": "a perfectly good document"}, {"id": "empty", "text": "   "}]
    error_of(client.post("/collections/default/documents", json={"documents": docs}), 422, "validation_error")
    error_of(client.get("/collections/default/documents/fine"), 404)


# -- collections ------------------------------------------------------------------------


def test_collection_lifecycle(client: httpx.Client) -> None:
    r = client.post("/collections", json={"name": "notes"})
    assert r.status_code == 201, r.text
    assert r.json()["count"] == 0 and r.json()["model"] == canonical_model_name(None)
    error_of(client.post("/collections", json={"name": "notes"}), 409, "collection_exists")
    error_of(client.post("/collections", json={"name": "bad name!"}), 422)
    names = [c["name"] for c in client.get("/collections").json()["collections"]]
    assert {"default", "notes"} <= set(names)
    client.post("/collections/notes/documents", json={"documents": [{"id": "n1", "text": "buy milk and eggs"}]})
    assert client.get("/collections/notes").json()["count"] == 1
    hits = client.post("/collections/notes/search", json={"query": "groceries", "k": 10}).json()["hits"]
    assert [h["id"] for h in hits] == ["n1"]
    assert client.delete("/collections/notes").json() == {"name": "notes", "deleted": True}
    error_of(client.get("/collections/notes"), 404, "collection_not_found")
    error_of(client.delete("/collections/notes"), 404, "collection_not_found")
    error_of(client.post("/collections/notes/search", json={"query": "x"}), 404, "collection_not_found")


def test_vectors_only_collection(client: httpx.Client) -> None:
    r = client.post("/collections", json={"name": "vec", "dimension": 3})
    assert r.status_code == 201 and r.json()["model"] is None and r.json()["dimension"] == 3
    body = {"ids": ["a", "b"], "embeddings": [[1, 0, 0], [0, 1, 0]], "metadata": [{"k": 1}, None], "texts": ["A", "B"]}
    up = client.post("/collections/vec/documents", json=body).json()
    assert up["ids"] == ["a", "b"] and up["added"] == 2
    hits = client.post("/collections/vec/search", json={"vector": [0.9, 0.1, 0], "k": 2}).json()["hits"]
    assert [h["id"] for h in hits] == ["a", "b"] and hits[0]["text"] == "A"
    res = client.post("/collections/vec/search/batch", json={"vectors": [[0, 1, 0], [1, 0, 0]], "k": 1}).json()
    assert [r["hits"][0]["id"] for r in res["results"]] == ["b", "a"]
    # wrong embedding sizes
    error_of(client.post("/collections/vec/documents", json={"ids": ["c"], "embeddings": [[1, 2]]}), 422, "dimension_mismatch")
    error_of(client.post("/collections/vec/search", json={"vector": [1, 2, 3, 4]}), 422, "dimension_mismatch")
    error_of(client.post("/collections/vec/documents", json={"ids": ["c", "d"], "embeddings": [[1, 2, 3], [1]]}), 422)
    error_of(client.post("/collections/vec/documents", json={"ids": ["c", "d"], "embeddings": [[1, 2, 3]]}), 422)
    error_of(client.post("/collections/vec/documents", json={"ids": ["c"], "embeddings": [[1e300, 0, 0]]}), 422)
    # text into a vectors-only collection, or a vector of the wrong size into a text one
    error_of(client.post("/collections/vec/search", json={"query": "hello"}), 422)
    error_of(client.post("/collections/default/search", json={"vector": [1.0, 2.0]}), 422, "dimension_mismatch")
    assert client.delete("/collections/vec").status_code == 200


@pytest.mark.parametrize("kind, code_bytes", [("sq8", 8), ("binary", 1)])
def test_quantized_collections_over_http(client: httpx.Client, kind: str, code_bytes: int) -> None:
    name = f"q-{kind}"
    r = client.post("/collections", json={"name": name, "dimension": 8, "index": kind})
    assert r.status_code == 201, r.text
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    up = client.post(f"/collections/{name}/documents", json={"ids": [f"v{i}" for i in range(300)],
                                                            "embeddings": x.tolist()})
    assert up.status_code == 200 and up.json()["added"] == 300
    hits = client.post(f"/collections/{name}/search", json={"vector": x[42].tolist(), "k": 3}).json()["hits"]
    assert hits[0]["id"] == "v42" and abs(hits[0]["score"] - 1.0) < 1e-5  # exact rescoring, real cosine
    info = client.get(f"/collections/{name}").json()
    assert info["index_policy"] == info["index_type"] == kind and info["bytes_per_vector"] == code_bytes + 24
    assert client.delete(f"/collections/{name}").status_code == 200


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, code",
    [
        ({"query": "x", "k": 0}, "validation_error"),
        ({"query": "x", "k": 1001}, "validation_error"),
        ({"query": "x", "k": "ten"}, "validation_error"),
        ({"query": ""}, "validation_error"),
        ({"query": "   "}, "validation_error"),
        ({}, "validation_error"),
        ({"query": "x", "vector": [1.0]}, "validation_error"),
        ({"query": "x", "filter": {"year": {"$bogus": 1}}}, "invalid_filter"),
        ({"query": "x", "filter": {"year": {"$gte": [1, 2]}}}, None),
        ({"query": "x", "filter": "topic = cooking"}, "validation_error"),
        ({"query": "x", "unknown_field": 1}, "validation_error"),
    ],
)
def test_search_input_errors(client: httpx.Client, body: dict[str, Any], code: str | None) -> None:
    error_of(client.post("/collections/default/search", json=body), 422, code)


def test_batch_and_document_input_errors(client: httpx.Client) -> None:
    error_of(client.post("/collections/default/search/batch", json={"queries": []}), 422)
    error_of(client.post("/collections/default/search/batch", json={"queries": ["ok", ""]}), 422)
    error_of(client.post("/collections/default/search/batch", json={"queries": ["ok"], "k": 5000}), 422)
    error_of(client.post("/collections/default/documents", json={"documents": []}), 422)
    error_of(client.post("/collections/default/documents", json={"documents": [{"text": ""}]}), 422)
    error_of(client.post("/collections/default/documents", json={"documents": [{"id": "x"}]}), 422)
    error_of(client.post("/collections/default/documents", json={"documents": [{"text": "t", "metadata": [1]}]}), 422)
    error_of(client.get("/collections/default/documents", params={"limit": 0}), 422)


def test_malformed_bodies(client: httpx.Client) -> None:
    url = "/collections/default/search"
    error_of(client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422)
    error_of(client.post(url, content=b'{"query": "x"}', headers={"content-type": "text/plain"}), 422)
    error_of(client.post(url, content=b"\xff\xfe", headers={"content-type": "application/json"}), 422)
    # 10,000 nested lists: refused, server unharmed
    deep = b"[" * 10_000 + b"]" * 10_000
    r = client.post(url, content=deep, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    error_of(r, r.status_code)
    nested_filter = '{"query": "x", "filter": {"a": ' + "[" * 500 + "]" * 500 + "}}"
    error_of(client.post(url, content=nested_filter, headers={"content-type": "application/json"}), 422)
    and_chain = {"query": "x", "filter": {}}
    node = and_chain["filter"]
    for _ in range(200):
        node["$and"] = [{}]
        node = node["$and"][0]
    error_of(client.post(url, json=and_chain), 422)
    assert client.post(url, json={"query": "still fine"}).status_code == 200


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    error_of(client.get("/no/such/route"), 404, "not_found")
    error_of(client.put("/collections/default"), 405, "method_not_allowed")
    error_of(client.get("/collections/nope"), 404, "collection_not_found")
    error_of(client.get("/collections/nope/documents/x"), 404, "collection_not_found")
    error_of(client.get("/collections/default/documents/nope"), 404, "document_not_found")


def test_body_over_the_limit_is_413(served: ServeProcess, client: httpx.Client) -> None:
    big = {"documents": [{"id": "big", "text": "word " * (LIMIT // 4)}]}
    assert "limit" in error_of(client.post("/collections/default/documents", json=big), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"documents": [{"id": "big", "text": "'
        for _ in range(LIMIT // 1000 + 10):
            yield b"x" * 1000
        yield b'"}]}'

    r = client.post("/collections/default/documents", content=chunks(), headers={"content-type": "application/json"})
    error_of(r, 413, "body_too_large")
    error_of(client.get("/collections/default/documents/big"), 404)
    # just under the limit is fine
    ok = {"documents": [{"id": "big", "text": "word " * (LIMIT // 6)}]}
    assert client.post("/collections/default/documents", json=ok).status_code == 200
    assert client.delete("/collections/default/documents/big").status_code == 200


def test_openapi_and_docs_are_complete(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/health", "/metrics", "/collections", "/collections/{name}", "/collections/{name}/documents",
            "/collections/{name}/documents/{doc_id}", "/collections/{name}/search",
            "/collections/{name}/search/batch"} <= set(paths)
    search = paths["/collections/{name}/search"]["post"]
    assert {"200", "401", "404", "413", "422"} <= set(search["responses"])
    assert "ErrorBody" in json.dumps(search["responses"]["422"])
    assert "text/html" in client.get("/docs").headers["content-type"]


def test_metrics(client: httpx.Client) -> None:
    client.post("/collections/default/search", json={"query": "metrics please", "k": 1})
    client.post("/collections/default/documents", json={"documents": [{"id": "m1", "text": "counted once"}]})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert re.search(r'semindex_http_requests_total\{method="POST",route="/collections/\{name\}/search",status="200"\} \d', text)
    assert re.search(r'semindex_http_requests_total\{.*status="401"\}', text)
    assert 'semindex_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/collections/{name}/search"}' in text
    assert re.search(r'semindex_documents_indexed_total\{collection="default"\} [1-9]', text)
    assert re.search(r'semindex_collection_documents\{collection="default"\} 41\.0', text)
    assert client.delete("/collections/default/documents/m1").status_code == 200


def test_repeated_queries_hit_the_query_cache_and_metrics_count_them(client: httpx.Client) -> None:
    def counts() -> tuple[float, float]:
        text = client.get("/metrics").text
        hits = re.search(r"^semindex_query_cache_hits_total (\S+)$", text, re.M)
        misses = re.search(r"^semindex_query_cache_misses_total (\S+)$", text, re.M)
        assert hits and misses, text[-2000:]
        return float(hits.group(1)), float(misses.group(1))

    h0, m0 = counts()
    body = {"query": "a query that a search box sends twice", "k": 3}
    first = client.post("/collections/default/search", json=body).json()["hits"]
    second = client.post("/collections/default/search", json=body).json()["hits"]
    assert first == second
    h1, m1 = counts()
    assert (h1 - h0, m1 - m0) == (1, 1)


def test_zz_sigterm_shuts_down_cleanly(served: ServeProcess) -> None:
    """Last in the module: SIGTERM -> graceful shutdown, exit 0, index checkpointed, store consistent."""
    assert served.stop(signal.SIGTERM) == 0, served.log()
    log = served.log()
    assert "store closed" in log and "shut down cleanly" in log
    db_args = served.db_args  # type: ignore[attr-defined]
    check = invoke_cli("check", "--store", str(served.store), *db_args)
    assert check.returncode == 0, check.stderr
    assert "40" in invoke_cli("info", "--store", str(served.store), *db_args).stdout


def test_refuses_a_public_host_without_a_key(tmp_path: Path) -> None:
    r = run_cli("serve", "--store", str(tmp_path / "s"), "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "API key" in lines[0] and "--insecure" in lines[0]
    assert not (tmp_path / "s").exists()
