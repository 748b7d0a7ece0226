"""Several processes on one store: writes from one become visible to another's searches, two writers
never corrupt anything, and on SQLite a second writer waits instead of failing with "database is locked"."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import semindex
from tests.reliability._util import DIM, child_env, count_rows, db_args, query_rows, start_writer, vec
from tests.support import REPO, run_cli, scifact_docs


def _wait_visible(coll: semindex.Collection, q: np.ndarray, want: str, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        hits = coll.search_vectors(q, k=1)[0]
        if hits and hits[0].id == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{want} not visible after {timeout} s")


def test_another_process_writes_are_visible_without_restart(tmp_path: Path, db_url: str | None) -> None:
    path = tmp_path / "store"
    with semindex.Store(path, db_url=db_url) as store:
        coll = store.create_collection("vecs", dimension=DIM)
        coll.add_embeddings(["d0"], np.array([vec(0)], dtype=np.float32))
        assert coll.search_vectors(np.array(vec(0)), k=5)[0][0].id == "d0"
        # another process commits new rows while this one keeps its collection (and index) open
        w = start_writer(path, db_url, [f"d{i}" for i in range(1, 31)], salt=0, batch=10)
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        waited = _wait_visible(coll, np.array(vec(30), dtype=np.float32), "d30")
        assert waited < 5
        assert coll.count() == 31
        assert {h.id for h in coll.search_vectors(np.array(vec(17)), k=3)[0]} >= {"d17"}
        # a delete and an update in the other process are seen too (replayed, no full rebuild)
        code = (
            "import semindex, numpy as np\n"
            "from tests.reliability._util import vec\n"
            f"with semindex.Store({str(path)!r}, db_url={db_url!r}) as s:\n"
            "    c = s.get_collection('vecs')\n"
            "    c.delete(['d30'])\n"
            "    c.add_embeddings(['d1'], np.array([vec(999)], dtype=np.float32))\n"
        )
        subprocess.run([__import__("sys").executable, "-c", code], env=child_env(), cwd=str(REPO),
                       check=True, timeout=120, capture_output=True)
        _wait_visible(coll, np.array(vec(999), dtype=np.float32), "d1")
        assert "d30" not in {h.id for h in coll.search_vectors(np.array(vec(30)), k=40)[0]}
        assert coll.count() == 30
        assert coll.check().ok


def test_two_library_writers_at_once_overlapping_ids(tmp_path: Path, db_url: str | None) -> None:
    """Two processes upsert overlapping ids in many small transactions, one also deleting."""
    path = tmp_path / "store"
    with semindex.Store(path, db_url=db_url) as store:
        store.create_collection("vecs", dimension=DIM)
    a = start_writer(path, db_url, [f"d{i}" for i in range(0, 150)], salt=1, batch=5, delete_every=4)
    b = start_writer(path, db_url, [f"d{i}" for i in range(75, 225)], salt=2, batch=5)
    for p in (a, b):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err
        assert out.strip().endswith("done")
    with semindex.Store(path, db_url=db_url) as store:
        coll = store.get_collection("vecs")
        report = coll.check()
        assert report.ok, report.summary()
        ids = set(coll.ids(limit=1000))
        deleted_by_a = {f"d{lo}" for lo in range(0, 150, 5) if (lo // 5) % 4 == 1}
        every = {f"d{i}" for i in range(225)}
        # everything not deleted is there; ids only A wrote and then deleted are gone; ids that
        # A deleted and B also wrote are there or not depending on who went last
        assert ids - deleted_by_a == every - deleted_by_a
        assert not ids & {d for d in deleted_by_a if int(d[1:]) < 75}
        assert ids <= every
        # each surviving row's stored vector is one of its writers' vectors, and the index agrees
        for doc_id in ["d80", "d100", "d149", "d150", "d224", "d3"]:
            if doc_id not in ids:
                continue
            n = int(doc_id[1:])
            doc = coll.get(doc_id)
            writer = doc.metadata["writer"]
            assert writer in (1, 2)
            assert coll.search_vectors(np.array(vec(n, writer)), k=1)[0][0].id == doc_id
    dup = query_rows(path, db_url, "SELECT doc_id, count(*) FROM documents GROUP BY doc_id HAVING count(*) > 1")
    assert dup == []
    check = run_cli("check", "--store", str(path), *db_args(db_url), "-c", "vecs")
    assert check.returncode == 0, check.stderr


@pytest.mark.slow
def test_two_cli_indexers_at_once(tmp_path: Path, db_url: str | None) -> None:
    """Two `semindex index` processes on one store: different files, and overlapping ids with other text.

    On SQLite the second writer waits on the busy timeout; on PostgreSQL on the collection's row lock.
    Neither fails, and `semindex check` passes afterwards.
    """
    docs = scifact_docs(48)
    f1, f2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with f1.open("w", encoding="utf-8") as fh:
        for d in docs[:32]:
            fh.write(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"][:200]}) + "\n")
    with f2.open("w", encoding="utf-8") as fh:
        for d in docs[16:]:  # 16..31 overlap, with different text
            fh.write(json.dumps({"_id": d["id"], "title": d["title"], "text": "B: " + d["text"][:200]}) + "\n")
    store = tmp_path / "store"
    common = ["--store", str(store), *db_args(db_url), "--commit-every", "4", "--batch-size", "4", "--json"]
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-m", "semindex", "index", str(f), *common], env=child_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in (f1, f2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "database is locked" not in err and "Traceback" not in err
        stats = json.loads(out)
        assert stats["failed"] == 0
    assert count_rows(store, db_url) == 48
    rows = query_rows(store, db_url, "SELECT doc_id, text FROM documents")
    by_id = {r[0]: r[1] for r in rows}
    assert len(by_id) == 48
    for d in docs[16:32]:
        assert by_id[d["id"]].strip() in (d["text"][:200].strip(), "B: " + d["text"][:200].strip())
    check = run_cli("check", "--store", str(store), *db_args(db_url))
    assert check.returncode == 0, check.stderr
    assert "ok (48 documents, 48 vectors" in check.stdout
