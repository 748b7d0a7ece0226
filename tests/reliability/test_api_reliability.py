"""`semindex serve` killed during write batches, and fed hostile bodies: acknowledged writes survive,
bad requests get 4xx only, memory stays bounded and the server stays up."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_pg_database
from tests.reliability._util import DIM, Server, query_rows, vec
from tests.support import run_cli

SEED = 20261201
BATCH = 20

pytestmark = pytest.mark.slow


def _post_batches(base: str, first: int, acked: dict[int, list[str]], deleted: set[str],
                  unsure: set[str], stop: threading.Event) -> int:
    """Upsert batches of BATCH ids (and now and then delete one acknowledged id) until the server dies."""
    b = first
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            ids = [f"b{b}-{i}" for i in range(BATCH)]
            body = {"ids": ids, "embeddings": [vec(b * BATCH + i) for i in range(BATCH)],
                    "metadata": [{"batch": b} for _ in ids]}
            try:
                r = client.post("/collections/v/documents", json=body)
            except httpx.HTTPError:
                return b
            assert r.status_code == 200, r.text
            acked[b] = ids
            if b % 5 == 4 and (b - 2) in acked:  # b - 2 may be the batch the last kill cut off
                victim = acked[b - 2][0]
                try:
                    r = client.delete(f"/collections/v/documents/{victim}")
                except httpx.HTTPError:
                    unsure.add(victim)  # not acknowledged, but it may have been committed
                    return b + 1
                assert r.status_code == 200, r.text
                deleted.add(victim)
            b += 1
    return b


def test_sigkill_server_during_write_batches_on_postgresql(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    store = tmp_path / "store"
    with fresh_pg_database("api") as url:
        srv = Server(store, url).wait()
        r = httpx.post(f"{srv.base}/collections", json={"name": "v", "dimension": DIM}, timeout=30)
        assert r.status_code == 201, r.text
        acked: dict[int, list[str]] = {}
        deleted: set[str] = set()
        unsure: set[str] = set()
        nxt = 0
        for round_ in range(2):
            stop = threading.Event()
            result: list[int] = []
            t = threading.Thread(target=lambda res, *a: res.append(_post_batches(*a)),
                                 args=(result, srv.base, nxt, acked, deleted, unsure, stop))
            t.start()
            time.sleep(rng.uniform(1.5, 4.0))
            srv.kill()  # SIGKILL while batches are in flight
            t.join(timeout=60)
            assert result, "the client did not notice the server dying"
            nxt = result[0] + 1
            srv = Server(store, url).wait()
            present = {row[0] for row in query_rows(store, url, "SELECT doc_id FROM documents")}
            want = {i for ids in acked.values() for i in ids} - deleted - unsure
            assert want <= present, f"round {round_}: acknowledged writes lost: {sorted(want - present)[:5]}"
            assert not deleted & present, "acknowledged deletes came back"
            # nothing half-written: every batch is all there (but for acknowledged deletes) or not at all
            by_batch: dict[int, int] = {}
            for doc_id in present | deleted | unsure:
                by_batch[int(doc_id[1:].split("-")[0])] = by_batch.get(int(doc_id[1:].split("-")[0]), 0) + 1
            assert all(n == BATCH for n in by_batch.values()), by_batch
            # the restarted server answers from an index that has every acknowledged row
            probe = sorted(acked)[-1]
            r = httpx.post(f"{srv.base}/collections/v/search",
                           json={"vector": vec(probe * BATCH + 3), "k": 1}, timeout=30)
            assert r.status_code == 200 and r.json()["hits"][0]["id"] == f"b{probe}-3", r.text
        assert len(acked) >= 4
        check = run_cli("check", "--store", str(store), "--db", url, "-c", "v")
        assert check.returncode == 0, check.stderr
        assert srv.stop() == 0, srv.log()


def _hostile_requests() -> list[tuple[str, str, Any, dict[str, str]]]:
    """(method, path, body bytes or JSON-able, headers)."""
    js = {"content-type": "application/json"}
    deep = '{"$not":' * 5000 + "{}" + "}" * 5000
    deep_list = "[" * 100_000 + "]" * 100_000
    reqs: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/collections/v/search", b"x" * (2 * 1024 * 1024), js),  # over --max-body-bytes
        ("POST", "/collections/v/search", ('{"vector": [' + ",".join(["0.5"] * 200_000) + "]}").encode(), js),
        ("POST", "/collections/v/search", ('{"k": 3, "vector": [0.1], "filter": ' + deep + "}").encode(), js),
        ("POST", "/collections/v/documents", ('{"ids": ["x"], "embeddings": [[0.1]], "metadata": [' + deep_list + "]}").encode(), js),
        ("POST", "/collections/v/documents", ('{"documents": [{"text": "x", "metadata": {"a": ' + deep_list + "}}]}").encode(), js),
        ("POST", "/collections/v/search", b"{not json", js),
        ("POST", "/collections/v/search", bytes(random.Random(SEED).randbytes(4000)), js),
        ("POST", "/collections/v/search", b'{"vector": [NaN, Infinity]}', js),
        ("POST", "/collections/v/search", b'{"query": "\xff\xfe"}', js),
        ("POST", "/collections/v/search", b'{"k": 1e400, "vector": [0.1]}', js),
        ("POST", "/collections/v/search", json.dumps({"k": 10**100, "vector": [0.1] * DIM}).encode(), js),
        ("POST", "/collections/v/search", json.dumps({"k": "ten", "vector": [0.1] * DIM}).encode(), js),
        ("POST", "/collections/v/search", json.dumps({"vector": "abc"}).encode(), js),
        ("POST", "/collections/v/search", json.dumps({"vector": [0.1] * (DIM + 1)}).encode(), js),
        ("POST", "/collections/v/search", json.dumps({"vector": [0.1] * DIM, "bogus": 1}).encode(), js),
        ("POST", "/collections/v/search", json.dumps({"vector": [0.1] * DIM, "filter": {"a') OR 1=1 --": 1}}).encode(), js),
        ("POST", "/collections/v/search", json.dumps({"vector": [0.1] * DIM, "filter": {"$.x": {"$gt": []}}}).encode(), js),
        ("POST", "/collections/v/search", json.dumps([1, 2, 3]).encode(), js),
        ("POST", "/collections/v/search", b"null", js),
        ("POST", "/collections/v/search", b'"just a string"', js),
        ("POST", "/collections/v/search", json.dumps({"vector": [0.1] * DIM}).encode(), {"content-type": "text/plain"}),
        ("POST", "/collections/v/documents", json.dumps({"ids": 5, "embeddings": 1}).encode(), js),
        ("POST", "/collections/v/documents", json.dumps({"ids": ["a"], "embeddings": [[0.1] * DIM], "surprise": True}).encode(), js),
        ("POST", "/collections/v/documents", json.dumps({"ids": ["a\u0000b"], "embeddings": [[0.1] * DIM]}).encode(), js),
        ("POST", "/collections/v/documents", json.dumps({"ids": ["a"], "embeddings": [[0.1] * DIM], "metadata": [{"x": "\u0000"}]}).encode(), js),
        ("POST", "/collections/v/documents", json.dumps({"ids": ["a", "b"], "embeddings": [[0.1] * DIM]}).encode(), js),
        ("POST", "/collections", json.dumps({"name": "../x", "dimension": 4}).encode(), js),
        ("POST", "/collections", json.dumps({"name": "/abs", "dimension": 4}).encode(), js),
        ("POST", "/collections", json.dumps({"name": "a\u0000b", "dimension": 4}).encode(), js),
        ("POST", "/collections", json.dumps({"name": "x" * 100_000, "dimension": 4}).encode(), js),
        ("POST", "/collections", json.dumps({"name": "ok", "dimension": -1}).encode(), js),
        ("GET", "/collections/..%2F..%2Fetc", None, {}),
        ("GET", "/collections/%00", None, {}),
        ("GET", "/collections/v/documents?limit=-5", None, {}),
        ("GET", "/collections/v/documents?offset=99999999999999999999999", None, {}),
        ("DELETE", "/collections/v/documents/does-not-exist", None, {}),
    ]
    return reqs


def test_hostile_bodies_get_4xx_and_the_server_stays_up(tmp_path: Path) -> None:
    store = tmp_path / "store"
    srv = Server(store, None, "--max-body-bytes", "1048576").wait()
    try:
        r = httpx.post(f"{srv.base}/collections", json={"name": "v", "dimension": DIM}, timeout=30)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{srv.base}/collections/v/documents",
                       json={"ids": ["ok"], "embeddings": [vec(1)], "metadata": [{"a": 1}]}, timeout=30)
        assert r.status_code == 200, r.text
        reqs = _hostile_requests()
        rss_before = srv.rss_bytes()
        failures: list[str] = []

        def hammer(rounds: int) -> None:
            with httpx.Client(base_url=srv.base, timeout=60) as client:
                for _ in range(rounds):
                    for method, path, body, headers in reqs:
                        try:
                            r = client.request(method, path, content=body, headers=headers)
                        except httpx.HTTPError as exc:
                            failures.append(f"{method} {path}: {exc!r}")
                            continue
                        if not 400 <= r.status_code < 500:
                            failures.append(f"{method} {path} {str(body)[:60]}: {r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=hammer, args=(2,)) for _ in range(4)]  # under some load
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not failures, "\n".join(failures[:10])
        assert srv.proc.poll() is None, srv.log()
        assert httpx.get(f"{srv.base}/health", timeout=10).status_code == 200
        grown = srv.rss_bytes() - rss_before
        assert grown < 300 * 1024 * 1024, f"server memory grew by {grown / 2**20:.0f} MiB"
        # and it still does its job, with nothing of the bad requests stored
        r = httpx.post(f"{srv.base}/collections/v/search", json={"vector": vec(1), "k": 5}, timeout=30)
        assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == ["ok"], r.text
        r = httpx.get(f"{srv.base}/collections", timeout=30)
        assert [c["name"] for c in r.json()["collections"]] == ["v"], r.text
        assert {p.name for p in tmp_path.iterdir()} <= {"store"} | {p.name for p in tmp_path.glob("serve-*.log")}
    finally:
        srv.stop()
