"""serve's live recall check end to end: real HTTP queries are sampled, /metrics shows the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import semindex
from semindex.storage import recall_monitor
from tests.storage.test_recall_monitor import DIM, clustered


def test_server_samples_real_queries_and_metrics_show_live_recall(tmp_path: Path, thread_server: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recall_monitor, "DEFAULT_EVERY", 1)
    monkeypatch.setattr(recall_monitor, "BATCH", 4)
    monkeypatch.setattr(recall_monitor, "MIN_CHECKS", 8)
    recall_monitor.enable(True)
    try:
        x = clustered(3000, seed=5)
        store = semindex.Store(tmp_path / "s")
        coll = store.create_collection("v", dimension=DIM, index="ivf")
        coll.add_embeddings([f"d{i}" for i in range(len(x))], x)
        coll.reindex("ivf")
        coll.storage.index.params["nprobe"] = 1
        srv = thread_server(store)
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            for i in range(16):
                r = c.post("/collections/v/search", json={"vector": x[i * 7].tolist(), "k": 10})
                assert r.status_code == 200
                mon = recall_monitor.monitor_of(store.get_collection("v").storage)
                assert mon is not None and mon.idle.wait(60)
            text = c.get("/metrics").text
        assert 'semindex_index_live_recall{collection="v"}' in text
        assert store.get_collection("v").info().index_params["nprobe"] > 1  # raised from 1
    finally:
        recall_monitor.enable(False)
