"""Concurrent query encodes share one model call; a lone caller never waits; failures stay isolated."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from semindex.indexer.fake import HashEncoder
from semindex.search import coalesce


class Gated:
    """A hashing encoder that records each call and can hold the first call until released."""

    def __init__(self, dim: int = 8) -> None:
        self.inner = HashEncoder(f"hash:{dim}")
        self.name, self.dimension, self.max_seq_length = self.inner.name, dim, 256
        self.calls: list[tuple[list[str], bool]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        with self.lock:
            self.calls.append((list(texts), normalize))
        self.started.set()
        assert self.release.wait(10)
        if any(t.startswith("bad") for t in texts):
            raise ValueError("this text cannot be encoded")
        out = self.inner.encode(texts, normalize=normalize)
        return out if normalize else out * 2.0


def expected(texts: Sequence[str], normalize: bool = True) -> np.ndarray:
    out = HashEncoder("hash:8").encode(texts, normalize=normalize)
    return out if normalize else out * 2.0


def run_while_busy(enc: Gated, jobs: list[tuple[list[str], bool]]) -> list[object]:
    """Hold a first call in the model, queue ``jobs`` behind it, then let everything run."""
    enc.release.clear()
    first = threading.Thread(target=coalesce.encode, args=(enc, ["first"]))
    first.start()
    assert enc.started.wait(10)
    results: list[object] = [None] * len(jobs)

    def call(i: int, texts: list[str], normalize: bool) -> None:
        try:
            results[i] = coalesce.encode(enc, texts, normalize=normalize)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i, t, n)) for i, (t, n) in enumerate(jobs)]
    for t in threads:
        t.start()
    lane = coalesce._lane(enc)
    for _ in range(1000):  # every job queued behind the held call
        with lane.lock:
            if len(lane.pending) == len(jobs):
                break
        threading.Event().wait(0.01)
    enc.release.set()
    for t in [first, *threads]:
        t.join(10)
    return results


def test_a_lone_caller_runs_at_once_with_its_own_texts() -> None:
    enc = Gated()
    out = coalesce.encode(enc, ["a", "b"])
    assert enc.calls == [(["a", "b"], True)]
    np.testing.assert_allclose(out, expected(["a", "b"]))
    assert not coalesce._lane(enc).busy


def test_callers_queued_behind_a_call_share_the_next_one() -> None:
    enc = Gated()
    jobs = [([f"q{i}"], True) for i in range(6)]
    results = run_while_busy(enc, jobs)
    assert len(enc.calls) == 2  # the held call, then one call for all six
    assert sorted(enc.calls[1][0]) == [f"q{i}" for i in range(6)]
    for (texts, _), got in zip(jobs, results, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, expected(texts))


def test_normalised_and_raw_queries_never_share_a_call() -> None:
    enc = Gated()
    jobs = [(["n1"], True), (["r1"], False), (["n2"], True), (["r2"], False)]
    results = run_while_busy(enc, jobs)
    for texts, normalize in enc.calls[1:]:
        assert all(t.startswith("n" if normalize else "r") for t in texts)
    for (texts, normalize), got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, expected(texts, normalize))  # type: ignore[arg-type]


def test_a_shared_call_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "MAX_BATCH_TEXTS", 4)
    enc = Gated()
    jobs = [([f"a{i}", f"b{i}"], True) for i in range(5)]
    results = run_while_busy(enc, jobs)
    assert all(len(texts) <= 4 for texts, _ in enc.calls[1:])
    assert sorted(t for texts, _ in enc.calls[1:] for t in texts) == sorted(t for j, _ in jobs for t in j)
    for (texts, _), got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, expected(texts))  # type: ignore[arg-type]


def test_a_bad_text_fails_only_its_own_caller() -> None:
    enc = Gated()
    jobs = [(["good1"], True), (["bad one"], True), (["good2"], True)]
    results = run_while_busy(enc, jobs)
    assert isinstance(results[1], ValueError)
    np.testing.assert_allclose(results[0], expected(["good1"]))  # type: ignore[arg-type]
    np.testing.assert_allclose(results[2], expected(["good2"]))  # type: ignore[arg-type]
    assert not coalesce._lane(enc).busy  # the lane is free again
    np.testing.assert_allclose(coalesce.encode(enc, ["after"]), expected(["after"]))


def test_many_threads_get_their_own_rows() -> None:
    enc = Gated()
    out: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        for j in range(20):
            texts = [f"t{i}-{j}", f"u{i}-{j}"]
            got = coalesce.encode(enc, texts)
            np.testing.assert_allclose(got, expected(texts))
            out[i] = got

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(out) == 8
    assert sum(len(texts) for texts, _ in enc.calls) == 8 * 20 * 2
    assert not coalesce._lane(enc).busy


def test_sharing_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(coalesce.ENV, "0")
    enc = Gated()
    enc.release.clear()
    first = threading.Thread(target=coalesce.encode, args=(enc, ["first"]))
    first.start()
    assert enc.started.wait(10)
    second = threading.Thread(target=coalesce.encode, args=(enc, ["second"]))
    second.start()
    for _ in range(500):  # the second caller reaches the model while the first is still in it
        if len(enc.calls) == 2:
            break
        threading.Event().wait(0.01)
    enc.release.set()
    first.join(10)
    second.join(10)
    assert enc.calls == [(["first"], True), (["second"], True)]
