"""The Ray engine against the local path: same rows, same ids, same top-10; faults and resume.

Every test here runs inside a loopback-only network namespace (see conftest.py), on one
session-wide Ray cluster, with the fast ``hash`` encoder except the one real-model run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.support import REPO, SAMPLE

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a Ray cluster in a namespace: minutes, not the fast lane

QUERIES = ["topic 3 and 5", "document about topic 1", "changed text", "alpha beta", "topic 6 and 10"]


def corpus(path: Path, n: int = 1800) -> Path:
    """Ids given and derived, metadata, blank lines, and an id repeated later with new text."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            if i % 97 == 5:
                fh.write("\n")
            doc: dict[str, Any] = {"text": f"document {i} about topic {i % 7} and {i % 11}", "k": i % 3}
            if i % 5:
                doc["id"] = f"d{i}"
            if i % 9 == 0:
                doc["title"] = f"title {i % 4}"
            fh.write(json.dumps(doc) + "\n")
        fh.write(json.dumps({"id": "d1", "text": "changed text for d1", "k": 9}) + "\n")
    return path


def rows(coll: Any) -> list[tuple[Any, ...]]:
    """Every document row of the collection in vid order (= commit order), with its stored vector."""
    eng = coll.storage.engine
    with eng.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT doc_id, content_hash, title, text, metadata FROM documents "
            "WHERE collection_id = :c ORDER BY vid"), {"c": coll.storage.id}).all()
    vecs = stored_vectors(eng, coll.storage.id)
    return [(r[0], r[1], r[2], r[3], r[4] if isinstance(r[4], dict) else json.loads(r[4]), vecs[r[0]])
            for r in got]


def stored_vectors(eng: Any, collection_id: int | None = None) -> dict[str, Any]:
    """doc_id -> its stored vector, from SQL (documents.embedding, or the first chunk's where chunks exist)."""
    import numpy as np
    import sqlalchemy as sa

    where = "" if collection_id is None else f" WHERE d.collection_id = {int(collection_id)}"
    with eng.connect() as conn:
        if "chunks" in sa.inspect(conn).get_table_names():
            q = ("SELECT d.doc_id, c.embedding FROM documents d JOIN chunks c ON c.doc_vid = d.vid"
                 f"{where}{' AND' if where else ' WHERE'} c.ordinal = 0")
        else:
            q = f"SELECT d.doc_id, d.embedding FROM documents d{where}"
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in conn.execute(sa.text(q))}


def assert_same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert [r[:5] for r in a] == [r[:5] for r in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x[5], y[5], atol=1e-5)


def top10(coll: Any) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in coll.search(q, 10)] for q in QUERIES]


def local_reference(tmp_path: Path, src: Path, db: str | None, model: str = "hash", commit_every: int = 200) -> Any:
    import semindex
    from semindex.indexer.readers import iter_records

    store = semindex.Store(tmp_path / "local", db_url=_other_db(db))
    coll = store.collection("c", model=model)
    stats = coll.add_records(iter_records([src]), commit_every=commit_every)
    return store, coll, stats


def _other_db(db: str | None) -> str | None:
    """The local reference on PostgreSQL goes to a second database on the same server."""
    if db is None:
        return None
    import sqlalchemy as sa

    url = sa.engine.make_url(db)
    name = f"{url.database}_local"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def test_ray_matches_local_and_rerun_commits_nothing(tmp_path: Path, ray_cluster: Any, ray_db: str | None) -> None:
    import semindex
    from semindex.indexer.pipeline import IngestStats
    from semindex.indexer.ray_engine import RayOptions, ray_index

    src = corpus(tmp_path / "c.jsonl")
    lstore, lcoll, lstats = local_reference(tmp_path, src, ray_db)
    store = semindex.Store(tmp_path / "ray", db_url=ray_db)
    coll = store.collection("c", model="hash")
    stats = IngestStats()
    report = ray_index(coll, [src], RayOptions(actors=2, cpus_per_actor=0.5, shard_size=200), stats=stats)
    assert report.nodes == ["127.0.0.1"]
    assert report.shards == 10 and report.encoded == 10
    assert (stats.added, stats.updated, stats.unchanged) == (lstats.added, lstats.updated, lstats.unchanged)
    assert (stats.added, stats.updated) == (1800, 1)
    assert stats.ids == lstats.ids
    assert_same(rows(coll), rows(lcoll))
    assert top10(coll) == top10(lcoll)
    assert coll.check().ok
    # the same command again: a new run whose actors skip every stored document before encoding
    again = IngestStats()
    report2 = ray_index(coll, [src], RayOptions(actors=1, shard_size=200), stats=again)
    assert report2.run_id != report.run_id
    lagain = lcoll.add_records(__import__("semindex.indexer.readers").indexer.readers.iter_records([src]),
                               commit_every=200)
    assert (again.added, again.updated, again.unchanged) == (lagain.added, lagain.updated, lagain.unchanged)
    assert again.added == 0 and again.unchanged >= 1799  # d1 appears twice with different texts
    assert coll.count() == 1800
    store.close()
    lstore.close()
    # the checkpoint is an ordinary one: a fresh open checks clean without rebuilding
    with semindex.Store(tmp_path / "ray", db_url=ray_db) as s2:
        assert s2.get_collection("c").check().ok
    assert not (tmp_path / "ray" / "ray-runs" / report.run_id).exists()  # shard files removed when done


def test_killed_actor_is_retried_without_duplicates(tmp_path: Path, ray_cluster: Any) -> None:
    import semindex
    from semindex.indexer.pipeline import IngestStats
    from semindex.indexer.ray_engine import RayOptions, ray_index

    src = corpus(tmp_path / "c.jsonl", 1200)
    lstore, lcoll, _ = local_reference(tmp_path, src, None)
    marker = tmp_path / "killed"
    with semindex.Store(tmp_path / "ray") as store:
        coll = store.collection("c", model="hash")
        stats = IngestStats()
        ray_index(coll, [src], RayOptions(actors=1, shard_size=200,
                                           actor_setup=f"tests.distributed.hooks:kill_once:{marker}"), stats=stats)
        assert marker.exists()  # an actor really died mid-run
        assert (stats.added, stats.updated) == (1200, 1)
        assert coll.count() == 1200
        assert_same(rows(coll), rows(lcoll))
        assert coll.check().ok
    lstore.close()


def test_killed_driver_then_resume(tmp_path: Path, ray_cluster: Any) -> None:
    import semindex

    src = corpus(tmp_path / "c.jsonl", 1600)
    lstore, lcoll, _ = local_reference(tmp_path, src, None)
    address = ray_cluster.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "semindex", "index", str(src), "--store", str(tmp_path / "ray"), "--model", "hash",
            "--engine", "ray", "--ray-address", address, "--actors", "1", "--commit-every", "200", "--collection", "c"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEMINDEX_RAY_ACTOR_SETUP": "tests.distributed.hooks:slow:0.7"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    db = sa.create_engine(f"sqlite:///{tmp_path / 'ray' / 'semindex.db'}")
    deadline = time.time() + 240
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            with db.connect() as conn:
                committed = int(conn.execute(sa.text("SELECT count(*) FROM semindex_run_shards")).scalar() or 0)
        except sa.exc.OperationalError:
            continue
        if committed >= 2:
            break
    assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run (its actors go with its job)
    proc.wait()
    db.dispose()
    assert 2 <= committed < 8
    env.pop("SEMINDEX_RAY_ACTOR_SETUP")
    done = subprocess.run([*args, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming run" in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["added"], summary["updated"]) == (1600, 1)
    with semindex.Store(tmp_path / "ray") as store:
        coll = store.get_collection("c")
        assert coll.count() == 1600
        assert_same(rows(coll), rows(lcoll))
        assert coll.check().ok
    # nothing left to resume now
    again = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "no interrupted run" in again.stderr and "Traceback" not in again.stderr
    lstore.close()


def test_bad_record_fails_like_local(tmp_path: Path, ray_cluster: Any) -> None:
    import semindex
    from semindex.errors import ReadError
    from semindex.indexer.pipeline import IngestStats
    from semindex.indexer.ray_engine import RayOptions, ray_index

    src = corpus(tmp_path / "c.jsonl", 700)
    lines = src.read_text().splitlines()
    lines[450] = "{not json"
    src.write_text("\n".join(lines) + "\n")
    lstore = semindex.Store(tmp_path / "local")
    lcoll = lstore.collection("c", model="hash")
    from semindex.indexer.readers import iter_records

    with pytest.raises(ReadError) as lerr:
        lcoll.add_records(iter_records([src]), commit_every=200)
    with semindex.Store(tmp_path / "ray") as store:
        coll = store.collection("c", model="hash")
        stats = IngestStats()
        with pytest.raises(ReadError) as rerr:
            ray_index(coll, [src], RayOptions(actors=1, shard_size=200), stats=stats)
        assert str(rerr.value) == str(lerr.value)
        assert_same(rows(coll), rows(lcoll))
        skipped = IngestStats()
        ray_index(coll, [src], RayOptions(actors=1, shard_size=200), on_error="skip", stats=skipped)
        assert skipped.failed == 1 and coll.count() == 699
    lstore.close()


@pytest.mark.slow
def test_real_model_ray_matches_local(tmp_path: Path, ray_cluster: Any) -> None:
    import semindex
    from semindex.indexer.ray_engine import RayOptions, ray_index

    lstore, lcoll, _ = local_reference(tmp_path, SAMPLE, None, model="default", commit_every=16)
    with semindex.Store(tmp_path / "ray") as store:
        coll = store.collection("c")
        ray_index(coll, [SAMPLE], RayOptions(actors=1, shard_size=16))
        assert_same(rows(coll), rows(lcoll))
        assert top10(coll) == top10(lcoll)
    lstore.close()


def test_unreachable_address_is_one_line(tmp_path: Path, ray_cluster: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "semindex", "index", str(SAMPLE), "--store", str(tmp_path / "s"), "--model", "hash",
         "--engine", "ray", "--ray-address", "127.0.0.1:9"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Ray cluster at 127.0.0.1:9")
    assert "Traceback" not in proc.stderr


def test_sharded_ivf_build_in_ray_tasks(ray_cluster: Any) -> None:
    from semindex.indexer.sharded_ivf import build_sharded, build_single

    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(7, 5007, dtype=np.int64)
    one = build_single(ids, x, "IVF50,Flat", sample=2500)
    many = build_sharded(ids, x, "IVF50,Flat", parts=4, sample=2500, ray=ray_cluster)
    one.index.nprobe = many.index.nprobe = 10
    np.testing.assert_array_equal(one.index.search(x[:40], 10)[1], many.index.search(x[:40], 10)[1])


def test_actor_pool_that_cannot_be_placed_is_one_error(tmp_path: Path, ray_cluster: Any) -> None:
    import semindex
    from semindex.indexer.ray_engine import RayEngineError, RayOptions, ray_index

    src = corpus(tmp_path / "c.jsonl", 300)
    with semindex.Store(tmp_path / "ray") as store:
        coll = store.collection("c", model="hash")
        t = time.perf_counter()
        with pytest.raises(RayEngineError, match="did not all start within 5 s"):  # 3 x 1 CPU on a 2-CPU cluster
            ray_index(coll, [src], RayOptions(actors=3, cpus_per_actor=1.0, shard_size=100, pool_wait_s=5))
        assert time.perf_counter() - t < 120
        assert coll.count() == 0
