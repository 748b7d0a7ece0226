"""Live recall checks: real queries are sampled, scored exactly in the background, and an index
whose recall falls below its target is made more thorough."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semindex
from semindex.storage import recall_monitor
from semindex.storage.recall_monitor import RecallMonitor, raise_knob
from tests import support

DIM = 32


def clustered(n: int, seed: int = 0) -> np.ndarray:
    return support.clustered(n, dim=DIM, clusters=40, spread=0.6, seed=seed)


@pytest.fixture
def under_tuned(tmp_path: Path) -> Iterator[tuple[semindex.Collection, np.ndarray]]:
    """An IVF collection probing one cell of many: recall far below its 0.95 target."""
    x = clustered(4000)
    with semindex.Store(tmp_path / "s") as store:
        coll = store.create_collection("v", dimension=DIM, index="ivf")
        coll.add_embeddings([f"d{i}" for i in range(len(x))], x)
        coll.reindex("ivf")
        coll.storage.index.params["nprobe"] = 1
        yield coll, x


def test_a_falling_recall_is_measured_and_the_knob_raised(under_tuned: tuple[semindex.Collection, np.ndarray]) -> None:
    coll, x = under_tuned
    mon = RecallMonitor(coll.storage, every=1, window=16, min_checks=16, batch=8)
    rng = np.random.default_rng(3)
    for _ in range(12):
        q = x[rng.integers(0, len(x), 8)] + 0.3 * rng.standard_normal((8, DIM)).astype(np.float32)
        mon.offer(q / np.linalg.norm(q, axis=1, keepdims=True))
        assert mon.idle.wait(60)
    params = coll.storage.index.params
    assert params["live_checked"] >= 16 and "live_recall@10" in params
    assert mon.raised and mon.raised[0].startswith("nprobe 1->")
    assert params["nprobe"] > 1 and "nprobe" in params["live_raised"]
    assert coll.info().index_params["live_recall@10"] == params["live_recall@10"]  # info shows it


def test_flat_is_never_checked_and_checks_are_off_unless_enabled(tmp_path: Path) -> None:
    x = clustered(500)
    with semindex.Store(tmp_path / "s") as store:
        coll = store.create_collection("f", dimension=DIM, index="flat")
        coll.add_embeddings([f"d{i}" for i in range(500)], x)
        mon = RecallMonitor(coll.storage, every=1, batch=1)
        mon.offer(x[:4])
        assert mon.idle.is_set() and mon.checked == 0
        recall_monitor.enable(False)
        coll.search_vectors(x[:3], k=5)
        assert recall_monitor.monitor_of(coll.storage) is None


def test_raise_knob_steps_and_ceilings() -> None:
    p: dict[str, Any] = {"efSearch": 16}
    assert raise_knob(p, ["efSearch"]) == "efSearch 16->24" and p["efSearch"] == 24
    p = {"nprobe": 7, "nlist": 8}
    assert raise_knob(p, ["nprobe", "k_factor"]) == "nprobe 7->8"
    p = {"nprobe": 8, "nlist": 8, "k_factor": 4}  # nprobe at nlist: the rescoring factor next
    assert raise_knob(p, ["nprobe", "k_factor"]) == "k_factor 4->8"
    assert raise_knob({"k_factor": 64}, ["k_factor"]) is None
