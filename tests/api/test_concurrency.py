"""Writers and readers at once for a fixed time: nothing fails, and what was acknowledged is all there."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx
import pytest

WRITERS = 3
READERS = 3
SECONDS = 10.0
PER_BATCH = 4


def _text(w: int, n: int, i: int) -> str:
    return f"Writer {w} batch {n} item {i} reports measurement {random.Random(w * 1000 + n * 10 + i).random():.6f}."


@pytest.mark.slow
def test_concurrent_writers_and_readers(sample_store: Any, thread_server: Any) -> None:
    srv = thread_server(sample_store)
    acked: dict[str, str] = {}
    lock = threading.Lock()
    failures: list[str] = []
    stop = time.monotonic() + SECONDS
    counts = {"writes": 0, "reads": 0}

    def writer(w: int) -> None:
        with httpx.Client(base_url=srv.base, timeout=120) as c:
            n = 0
            while time.monotonic() < stop:
                docs = [{"id": f"w{w}-{n}-{i}", "text": _text(w, n, i), "metadata": {"w": w}} for i in range(PER_BATCH)]
                r = c.post("/collections/default/documents", json={"documents": docs})
                if r.status_code != 200:
                    failures.append(f"write {r.status_code} {r.text}")
                    return
                # acknowledged: from now on every reader must see it
                with lock:
                    acked.update({d["id"]: d["text"] for d in docs})
                    counts["writes"] += 1
                n += 1

    def reader(rd: int) -> None:
        rng = random.Random(rd)
        with httpx.Client(base_url=srv.base, timeout=120) as c:
            while time.monotonic() < stop:
                with lock:
                    known = list(acked.items())
                if known and rng.random() < 0.5:
                    doc_id, text = rng.choice(known)
                    r = c.get(f"/collections/default/documents/{doc_id}")
                    if r.status_code != 200 or r.json()["text"] != text:
                        failures.append(f"get {doc_id}: {r.status_code} {r.text[:200]}")
                    r = c.post("/collections/default/search",
                               json={"query": text, "k": 1, "filter": {"w": {"$in": [0, 1, 2]}}})
                    if r.status_code != 200 or r.json()["hits"][0]["id"] != doc_id:
                        failures.append(f"search {doc_id}: {r.status_code} {r.text[:200]}")
                else:
                    r = c.post("/collections/default/search", json={"query": "black holes and stars", "k": 5})
                    if r.status_code != 200 or len(r.json()["hits"]) != 5:
                        failures.append(f"search: {r.status_code} {r.text[:200]}")
                    r = c.get("/collections/default")
                    if r.status_code != 200 or r.json()["count"] < 40:
                        failures.append(f"info: {r.status_code} {r.text[:200]}")
                with lock:
                    counts["reads"] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 300)
    assert not failures, failures[:5]
    assert counts["writes"] >= WRITERS and counts["reads"] >= READERS, counts

    with httpx.Client(base_url=srv.base, timeout=120) as c:
        assert c.get("/collections/default").json()["count"] == 40 + len(acked)
        ids = sorted(acked)
        for doc_id in ids:
            assert c.get(f"/collections/default/documents/{doc_id}").json()["text"] == acked[doc_id]
        for lo in range(0, len(ids), 64):
            part = ids[lo : lo + 64]
            res = c.post("/collections/default/search/batch", json={"queries": [acked[i] for i in part], "k": 1}).json()
            assert [r["hits"][0]["id"] for r in res["results"]] == part
    report = sample_store.get_collection("default").check()
    assert report.ok, report.summary()
