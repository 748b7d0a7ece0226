"""Issue 11, class 10: time limits. A request past `serve --request-timeout` answers 504
deadline_exceeded with a JSON body and stops its work at the next safe point, a write that has
started finishes, one that has not never starts; a batch is bounded (queries x k) and searched in
slices, so a single query sent while a long batch runs is answered long before the batch ends.

The model is made slow with a test-only encoder (``slowtest:DIM``, registered with
``semindex.register_encoder`` like the hashing one): it sleeps per call while holding a lock, the
way the real model serves one call at a time. Waits are on events the encoder sets, not on sleeps.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import semindex
from semindex.api.deadline import Deadline
from semindex.api.routes import MAX_BATCH_HITS, SEARCH_SLICE
from semindex.errors import DeadlineExceededError
from semindex.indexer.fake import HashEncoder
from tests.api import gated_serve
from tests.api.serving import ServeProcess
from tests.support import sample_docs

MODEL = "slowtest:64"
SLICES = 10
QUERIES = [f"query {i} about stars and black holes" for i in range(SEARCH_SLICE * SLICES)]


class _Slow:
    """What the slow encoder does and has done (shared by every encoder instance of the test)."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.lock = threading.Lock()  # one call at a time, as SentenceTransformerEncoder
        self.calls: list[int] = []  # sizes of the calls made, in order
        self.batch_started = threading.Event()

    def batch_calls(self) -> int:
        return sum(1 for n in self.calls if n > 1)


class SlowEncoder(HashEncoder):
    state = _Slow()

    def __init__(self, name: str) -> None:
        super().__init__("hash:" + name.partition(":")[2])
        self.name = name

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        st = SlowEncoder.state
        with st.lock:
            if len(texts) > 1:
                st.batch_started.set()
            time.sleep(st.delay)
            st.calls.append(len(texts))
            return super().encode(texts, batch_size=batch_size, normalize=normalize)


@pytest.fixture
def slow() -> Iterator[_Slow]:
    SlowEncoder.state = _Slow()
    semindex.register_encoder("slowtest", lambda name, device: SlowEncoder(name), replace=True)
    # every query must reach the model: the query-embedding cache would answer repeats instantly
    size = semindex.query_cache_stats().max_entries
    semindex.configure_query_cache(0)
    yield SlowEncoder.state
    semindex.configure_query_cache(size)
    semindex.unregister_encoder("slowtest")


def _slow_store(path: Path) -> semindex.Store:
    store = semindex.Store(path)
    store.collection("c", model=MODEL).add(sample_docs())
    return store


def _wait_until(ready: Any, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.01)


def test_a_single_query_overtakes_a_long_batch(tmp_path: Path, thread_server: Any, slow: _Slow) -> None:
    store = _slow_store(tmp_path / "s")
    expected = [[h.id for h in hits] for hits in store.collection("c").search_batch(QUERIES, 3)]
    srv = thread_server(store)
    slow.delay = delay = 0.5  # the batch: SLICES calls of SEARCH_SLICE queries, 5 s of model time
    slow.calls.clear()
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(httpx.post, f"{srv.base}/collections/c/search/batch",
                            json={"queries": QUERIES, "k": 3}, timeout=120)
        assert slow.batch_started.wait(60)
        t0 = time.monotonic()
        r = httpx.post(f"{srv.base}/collections/c/search", json={"query": "black holes", "k": 3}, timeout=120)
        single_s = time.monotonic() - t0
        slices_done = slow.batch_calls()
        assert r.status_code == 200 and r.json()["hits"], r.text
        assert not batch.done() and slices_done <= SLICES // 2, (slices_done, slow.calls)
        slow.delay = 0.0  # overtaken: the rest of the batch need not take its 5 s
        batch_r = batch.result()
    assert batch_r.status_code == 200, batch_r.text
    assert [[h["id"] for h in res["hits"]] for res in batch_r.json()["results"]] == expected  # slicing changes nothing
    assert sorted(n for n in slow.calls if n > 1) == [SEARCH_SLICE] * SLICES
    assert single_s < SLICES * delay / 2, single_s  # about one slice against the batch's ten


def test_past_the_deadline_is_504_json_and_the_batch_stops(tmp_path: Path, thread_server: Any, slow: _Slow) -> None:
    store = _slow_store(tmp_path / "s")
    srv = thread_server(store, request_timeout=1.0)
    gate = srv.server.config.app.state.gate
    slow.delay = 0.5  # SLICES x 0.5 s: far past the 1 s limit
    slow.calls.clear()
    t0 = time.monotonic()
    r = httpx.post(f"{srv.base}/collections/c/search/batch", json={"queries": QUERIES, "k": 3}, timeout=120)
    took = time.monotonic() - t0
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["error"] == "deadline_exceeded" and "--request-timeout" in body["detail"], body
    assert took < SLICES * slow.delay, took  # answered at the deadline, not when the batch would have ended
    _wait_until(lambda: gate.active == 0, "the abandoned batch stops")
    assert slow.batch_calls() < SLICES, slow.calls  # it stopped at a slice boundary
    slow.delay = 0.0
    r = httpx.post(f"{srv.base}/collections/c/search", json={"query": "stars", "k": 1}, timeout=60)
    assert r.status_code == 200, r.text


def test_embeddings_are_sliced_and_bounded_in_time(tmp_path: Path, thread_server: Any, slow: _Slow) -> None:
    store = _slow_store(tmp_path / "s")
    srv = thread_server(store, request_timeout=1.0)
    gate = srv.server.config.app.state.gate
    texts = QUERIES[:70]
    r = httpx.post(f"{srv.base}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    assert np.allclose(got, semindex.embed(texts, MODEL), atol=1e-6)  # sliced, the same vectors
    slow.delay = 0.5
    slow.calls.clear()
    r = httpx.post(f"{srv.base}/v1/embeddings", json={"model": MODEL, "input": QUERIES}, timeout=120)
    assert r.status_code == 504, r.text
    err = r.json()["error"]  # in OpenAI's shape, like every /v1 error
    assert err["code"] == "deadline_exceeded" and err["type"] == "server_error", err
    _wait_until(lambda: gate.active == 0, "the abandoned embeddings stop")
    assert len(slow.calls) < SLICES, slow.calls


def test_batch_work_is_bounded(tmp_path: Path, thread_server: Any) -> None:
    store = semindex.Store(tmp_path / "s")
    store.create_collection("v", dimension=4)
    store.collection()  # the default collection, with this lane's model
    srv = thread_server(store)
    with httpx.Client(base_url=srv.base, timeout=60) as c:
        r = c.post("/collections/v/search/batch", json={"vectors": [[1.0, 0, 0, 0]] * 1024, "k": 1000})
        assert r.status_code == 422 and f"{MAX_BATCH_HITS:,}" in r.json()["detail"], r.text
        r = c.post("/collections/default/search/batch", json={"queries": ["x"] * 1024, "k": 1000})
        assert r.status_code == 422 and "fewer queries" in r.json()["detail"], r.text
        r = c.post("/collections/v/search/batch", json={"vectors": [[1.0, 0, 0, 0]] * 100, "k": 1000})
        assert r.status_code == 200 and len(r.json()["results"]) == 100, r.text


# -- the deadline itself (an injected clock) ----------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_deadline_decides_between_write_and_504_once() -> None:
    clock = _Clock()
    d = Deadline(10, clock=clock)
    d.check()
    d.begin_write()  # in time: committed
    clock.now += 60
    d.check()  # a write in flight is not stopped
    assert d.cut() is False  # and the 504 cannot win any more

    late = Deadline(10, clock=clock)
    clock.now += 11
    with pytest.raises(DeadlineExceededError, match="request-timeout"):
        late.begin_write()  # too late: never started
    cut = Deadline(10, clock=clock)
    assert cut.cut() is True
    with pytest.raises(DeadlineExceededError):
        cut.begin_write()  # answered 504: it may not start afterwards either
    with pytest.raises(DeadlineExceededError):
        cut.check()
    assert DeadlineExceededError.http_status == 504


# -- `semindex serve --request-timeout` end to end ------------------------------------------------


GATED = "gated:64"


def test_serve_request_timeout_never_half_applies_a_write(tmp_path: Path) -> None:
    """A write whose body arrives after the deadline is 504 and never applied; a write that has
    started (held at the gated encoder past the deadline) finishes and is answered 200."""
    gated_serve.register()
    gate = tmp_path / "gate"
    gate.mkdir()
    path = tmp_path / "store"
    with semindex.Store(path) as s:
        s.collection("default", model=GATED).add(sample_docs())
    srv = ServeProcess(path, "--request-timeout", "0.5", env={"SEMINDEX_GATE_DIR": str(gate)},
                       entry=(str(Path(gated_serve.__file__)),)).wait()
    try:
        body = b'{"name": "late", "dimension": 4}'
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"POST /collections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
            answer = b""  # the 504 comes at the deadline, the body still unsent
            while b"deadline_exceeded" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 504"), answer
            sock.sendall(body[5:])
        docs = [{"id": f"w{i}", "text": f"document {i} on topic {i % 7}"} for i in range(gated_serve.GATE_MIN + 20)]
        result: dict[str, Any] = {}

        def write() -> None:
            r = httpx.post(f"{srv.base}/collections/default/documents", json={"documents": docs}, timeout=300)
            result.update(status=r.status_code, body=r.json())

        t = threading.Thread(target=write)
        t.start()
        _wait_until((gate / "entered").exists, "the write is being encoded")
        time.sleep(1)  # past the 0.5 s deadline, with the write under way
        (gate / "go").touch()
        t.join(timeout=300)
        assert result["status"] == 200 and result["body"]["added"] == len(docs), result
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            assert c.get("/collections/late").status_code == 404
            assert c.get("/collections/default").json()["count"] == len(sample_docs()) + len(docs)
    finally:
        srv.stop()
