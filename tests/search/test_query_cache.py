"""The query-embedding cache: repeats skip the model, results never change, memory is bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import semindex
from semindex.errors import ConfigError
from semindex.indexer.fake import HashEncoder
from semindex.search import query_cache


class Counting:
    """A hashing encoder that records every text it was asked to encode."""

    def __init__(self, dim: int = 16) -> None:
        self.inner = HashEncoder(f"hash:{dim}")
        self.name, self.dimension = self.inner.name, dim
        self.seen: list[str] = []
        self.lock = threading.Lock()

    @property
    def max_seq_length(self) -> int:
        return 256

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        with self.lock:
            self.seen.extend(texts)
        out = self.inner.encode(texts, normalize=normalize)
        return out if normalize else out * 3.0


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    query_cache.clear()
    query_cache.configure(query_cache.DEFAULT_SIZE)
    yield
    query_cache.clear()
    query_cache.configure(query_cache.DEFAULT_SIZE)


def test_repeats_are_answered_from_the_cache_with_the_same_vectors() -> None:
    enc = Counting()
    first = query_cache.encode_queries(enc, ["a b", "c d", "a b"])
    assert enc.seen == ["a b", "c d"]  # a repeat inside one batch is encoded once
    again = query_cache.encode_queries(enc, ["c d", "e f", "a b"])
    assert enc.seen == ["a b", "c d", "e f"]
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[2], first[0])
    assert np.array_equal(again, enc.inner.encode(["c d", "e f", "a b"]))
    st = query_cache.stats()
    assert (st.hits, st.misses, st.entries) == (2, 4, 3)
    again[0][:] = 9.0  # the caller's array is its own: changing it cannot poison the cache
    assert np.array_equal(query_cache.encode_queries(enc, ["c d"])[0], first[1])


def test_keys_keep_normalisation_and_encoders_apart() -> None:
    a, b = Counting(), Counting()
    va = query_cache.encode_queries(a, ["q"], normalize=True)
    vn = query_cache.encode_queries(a, ["q"], normalize=False)
    assert not np.allclose(va, vn) and a.seen == ["q", "q"]
    query_cache.encode_queries(b, ["q"])
    assert b.seen == ["q"]  # another encoder (model, backend or precision) never shares entries


def test_lru_eviction_size_zero_and_long_texts() -> None:
    enc = Counting()
    query_cache.configure(2)
    for t in ("x", "y", "x", "z"):  # z evicts y (x was used more recently)
        query_cache.encode_queries(enc, [t])
    enc.seen.clear()
    query_cache.encode_queries(enc, ["x", "z", "y"])
    assert enc.seen == ["y"]
    assert query_cache.stats().entries == 2
    long = "w " * query_cache.MAX_CACHED_CHARS
    query_cache.encode_queries(enc, [long])
    query_cache.encode_queries(enc, [long])
    assert enc.seen.count(long) == 2  # long queries pass through, so memory stays bounded
    query_cache.configure(0)
    assert query_cache.stats().entries == 0
    enc.seen.clear()
    query_cache.encode_queries(enc, ["x", "x"])
    assert enc.seen == ["x", "x"]  # off: straight to the model
    with pytest.raises(ConfigError):
        query_cache.configure(-1)


def test_environment_size_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query_cache, "_state", query_cache._State())
    monkeypatch.setenv(query_cache.ENV, "7")
    assert query_cache.stats().max_entries == 7
    monkeypatch.setattr(query_cache, "_state", query_cache._State())
    monkeypatch.setenv(query_cache.ENV, "lots")
    with pytest.raises(ConfigError, match="SEMINDEX_QUERY_CACHE"):
        query_cache.stats()


def test_concurrent_callers_get_their_own_answers() -> None:
    enc = Counting()
    texts = [f"q{i} w{i % 7}" for i in range(200)]
    want = {t: enc.inner.encode([t])[0] for t in texts}
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            batch = [texts[i] for i in rng.integers(0, len(texts), 5)]
            got = query_cache.encode_queries(enc, batch)
            errors.extend(t for t, v in zip(batch, got) if not np.array_equal(v, want[t]))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert query_cache.stats().hits > 0


def test_collection_search_uses_the_cache(tmp_path: Path) -> None:
    with semindex.Store(tmp_path / "s") as store:
        coll = store.create_collection("c", model="hash:64")
        coll.add([{"id": f"d{i}", "text": f"document number {i} about topic {i % 5}"} for i in range(50)])
        before = semindex.query_cache_stats()
        first = coll.search("topic 3", k=5)
        second = coll.search("topic 3", k=5)
        after = semindex.query_cache_stats()
        assert [h.id for h in first] == [h.id for h in second]
        assert [h.score for h in first] == [h.score for h in second]
        assert after.hits - before.hits == 1 and after.misses - before.misses == 1
        coll.search_batch(["topic 3", "topic 4"], k=3, mode="hybrid")
        assert semindex.query_cache_stats().hits - after.hits == 1


def test_cached_rows_do_not_keep_their_batch_alive() -> None:
    enc = Counting()
    query_cache.encode_queries(enc, [f"q{i}" for i in range(32)])
    lru = next(iter(query_cache._state.per_encoder.values()))
    assert all(v.base is None for v in lru.values())  # each entry owns its 64 bytes, not a 32-row array
