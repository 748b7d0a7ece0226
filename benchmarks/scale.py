"""Scale-out measurements (issue 12): local vs --devices vs Ray; Ray's fixed cost; E(n); SQL commit rows/s.

    .venv/bin/python benchmarks/scale.py                 # everything, SciFact's first 1000 docs
    .venv/bin/python benchmarks/scale.py --docs 5183     # the whole SciFact corpus
    .venv/bin/python benchmarks/scale.py --only efficiency,sql

Ray sends nothing but loopback traffic here: the script re-executes itself inside a fresh
network namespace that has only ``lo`` (``unshare -n``, root needed), and starts its
PostgreSQL inside it (scripts/pg.sh). Parts:

* ``docs``: docs/s on the same corpus and model (all-MiniLM-L6-v2, CPU): the local path,
  ``--devices cpu,cpu``, Ray with 1 and 2 actors; Ray's fixed cost (cluster start, time to
  the first shard) and its per-stage split (plan, encode+commit window, commit).
* ``efficiency``: E(n) = T1 / (n * Tn) for n = 1, 2, 4, 8 actors with an encoder that sleeps a
  fixed time per batch (a stand-in for GPUs: the actors cost the CPUs nothing), T measured
  from the first shard an actor began (every actor is up before the first dispatch) to the
  last shard committed, and the whole window with the pool's start-up beside it.
* ``sql``: the single writer's ceiling: rows/s of the commit path (one transaction per
  512-row shard, 384-d vectors) on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCIFACT = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl.gz"


def sleep_encoder(name: str, device: str | None) -> Any:
    """``sleep:SECONDS``: hash vectors, after sleeping SECONDS per batch of 32 texts."""
    import numpy as np

    from semindex.indexer.fake import HashEncoder

    seconds = float(name.split(":", 1)[1]) if ":" in name else 0.05
    base = HashEncoder("hash:384")

    class Sleepy:
        dimension = base.dimension
        max_seq_length = 1 << 30

        def __init__(self) -> None:
            self.name = name

        def encode(self, texts: Any, *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
            for _ in range(0, len(texts), batch_size):
                time.sleep(seconds)
            return base.encode(texts, batch_size=batch_size, normalize=normalize)

    return Sleepy()


def register_sleep() -> None:
    """Actor setup hook (``RayOptions.actor_setup``): make ``sleep:...`` models available there."""
    from semindex.indexer.encoder import register_encoder

    register_encoder("sleep", sleep_encoder, replace=True)


def write_corpus(path: Path, n: int) -> Path:
    """SciFact's first ``n`` docs as plain JSONL (Ray shards JSONL by byte ranges)."""
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as src, path.open("w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            if i >= n:
                break
            out.write(line)
    return path


def synthetic_corpus(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"d{i}", "text": f"document {i} on topic {i % 17} and {i % 29}"}) + "\n")
    return path


def run_local(src: Path, store: Path, model: str | None, devices: list[str] | None) -> dict[str, float]:
    import semindex
    from semindex.indexer.readers import iter_records

    with semindex.Store(store) as s:
        coll = s.collection("c", model=model)
        t = time.perf_counter()
        if devices:
            from semindex.indexer.multidevice import ingest_on_devices

            stats = ingest_on_devices(coll, iter_records([src]), devices, commit_every=128)
        else:
            stats = coll.add_records(iter_records([src]), commit_every=128)
        total = time.perf_counter() - t
    return {"docs": stats.added, "seconds": round(total, 2), "docs_per_s": round(stats.added / total, 1)}


def run_ray(src: Path, store: Path, model: str | None, actors: int, cpus_per_actor: float = 1.0,
            setup: str | None = None, shard_size: int = 512, num_cpus: int | None = None) -> dict[str, Any]:
    import semindex
    from semindex.indexer.pipeline import IngestStats
    from semindex.indexer.ray_engine import RayOptions, ray_index

    with semindex.Store(store) as s:
        coll = s.collection("c", model=model)
        stats = IngestStats()
        t = time.perf_counter()
        rep = ray_index(coll, [src], RayOptions(actors=actors, cpus_per_actor=cpus_per_actor, actor_setup=setup,
                                                shard_size=shard_size, num_cpus=num_cpus), stats=stats)
        total = time.perf_counter() - t
    assert rep.nodes == ["127.0.0.1"], rep.nodes
    return {"docs": stats.added, "seconds": round(total, 2), "docs_per_s": round(stats.added / total, 1),
            "actors": rep.actors, "shards": rep.shards, "stages_s": rep.seconds}


def part_docs(work: Path, n: int) -> None:
    src = write_corpus(work / "scifact.jsonl", n)
    print(f"\n== docs/s, SciFact first {n} docs, all-MiniLM-L6-v2 on CPU ({os.cpu_count()} cores), "
          "128 docs per transaction / shard ==")
    runs = {
        "local": lambda: run_local(src, work / "s-local", None, None),
        "--devices cpu,cpu": lambda: run_local(src, work / "s-dev", None, ["cpu", "cpu"]),
        "ray 1 actor": lambda: run_ray(src, work / "s-ray1", None, 1, shard_size=128),
        "ray 2 actors": lambda: run_ray(src, work / "s-ray2", None, 2, cpus_per_actor=1.0, num_cpus=3,
                                        shard_size=128),
    }
    rows: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():  # printed as each finishes: a long run still reports its parts
        r = rows[name] = run()
        base = rows["local"]["docs_per_s"]
        extra = f"  stages {r['stages_s']}" if "stages_s" in r else ""
        print(f"{name:20s} {r['docs_per_s']:8.1f} docs/s  {r['seconds']:7.2f} s  x{r['docs_per_s'] / base:.2f}{extra}",
              flush=True)
    r1 = rows["ray 1 actor"]["stages_s"]
    print(f"Ray fixed cost: cluster start {r1.get('ray_start', 0):.2f} s, time to first shard "
          f"{r1.get('first_shard', 0):.2f} s (actor start + model load + first shard)")


def part_efficiency(work: Path, sleep_s: float, shards: int) -> None:
    register_sleep()
    shard_size = 64
    src = synthetic_corpus(work / "eff.jsonl", shards * shard_size)
    model = f"sleep:{sleep_s}"
    print(f"\n== scaling efficiency: {shards} shards x {shard_size} docs, encoder sleeps {sleep_s}s per batch of 32 ==")
    per_shard = sleep_s * ((shard_size + 31) // 32)
    full: dict[int, float] = {}
    steady: dict[int, float] = {}
    for n in (1, 2, 4, 8):
        r = run_ray(src, work / f"s-eff{n}", model, n, cpus_per_actor=0.1, setup="benchmarks.scale:register_sleep",
                    shard_size=shard_size)
        st = r["stages_s"]
        full[n] = float(st["encode_and_commit"])
        # The engine starts every actor (model loaded) before the first shard is dispatched, and
        # times the run from the first shard an actor began (its own clock) to the last commit;
        # the whole window also holds the pool's start-up, a fixed cost per run, not scaling.
        steady[n] = float(st["first_dispatch_to_last_commit"])
        print(f"n={n}: whole window (pool start-up included) {full[n]:.2f} s, first shard begun to last commit "
              f"{steady[n]:.2f} s (ideal {shards * per_shard / n:.2f} s); commit {st.get('commit', 0):.2f} s")
    for n in full:
        print(f"E({n}) = {full[1] / (n * full[n]):.3f} (whole window), "
              f"{steady[1] / (n * steady[n]):.3f} (first shard begun to last commit)")


def part_sql(work: Path, rows_n: int) -> None:
    import numpy as np

    import semindex
    from semindex.indexer.pipeline import content_hash

    try:
        from semindex.storage import DocWrite
    except ImportError:
        from semindex.storage.store import DocWrite

    print(f"\n== SQL commit ceiling: {rows_n} rows, 512-row transactions, 384-d vectors ==")
    urls: dict[str, str | None] = {"sqlite": None}
    pg = os.environ.get("SEMINDEX_TEST_PG_URL")
    if pg:
        urls["postgresql"] = pg
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((rows_n, 384)).astype(np.float32)
    for name, url in urls.items():
        with semindex.Store(work / f"s-sql-{name}", db_url=url) as s:
            coll = s.create_collection(f"sql{int(time.time())}", dimension=384, vectors_only=True)
            t = time.perf_counter()
            for lo in range(0, rows_n, 512):
                docs = [DocWrite(doc_id=f"d{i}", text=f"text {i}", title=None, metadata={"i": i},
                                 content_hash=content_hash(f"text {i}", None), embedding=vecs[i])
                        for i in range(lo, min(rows_n, lo + 512))]
                coll.storage.write(docs)
            dt = time.perf_counter() - t
            print(f"{name:10s} {rows_n / dt:9.0f} rows/s  ({dt:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000, help="SciFact docs for the docs/s part (default 1000)")
    ap.add_argument("--only", default="docs,efficiency,sql", help="comma list of parts: docs, efficiency, sql")
    ap.add_argument("--sleep", type=float, default=0.5, help="efficiency: seconds slept per batch of 32")
    ap.add_argument("--shards", type=int, default=48, help="efficiency: shards of 64 docs")
    ap.add_argument("--sql-rows", type=int, default=20_000)
    args = ap.parse_args()
    if os.environ.get("SEMINDEX_NETNS") != "1":
        # Re-run inside a loopback-only network namespace, with a PostgreSQL of its own there.
        inner = (
            "set -e; ip link set lo up; d=$(mktemp -d); rmdir $d; "
            f"if out=$(bash {REPO}/scripts/pg.sh start $d 2>/dev/null); then eval \"$out\"; fi; "
            f"SEMINDEX_NETNS=1 {sys.executable} {Path(__file__).resolve()} {shlex.join(sys.argv[1:])}; "
            f"rc=$?; bash {REPO}/scripts/pg.sh stop $d >/dev/null 2>&1 || true; exit $rc"
        )
        env = {k: v for k, v in os.environ.items() if k != "SEMINDEX_TEST_PG_URL"}
        env["PYTHONPATH"] = str(REPO)
        env.setdefault("HF_HUB_OFFLINE", "1")
        sys.exit(subprocess.call(["unshare", "-n", "bash", "-c", inner], env=env))
    parts = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="semindex-scale-"))
    try:
        print(f"machine: {os.cpu_count()} CPUs; no GPU lent to this run")
        if "sql" in parts:
            part_sql(work, args.sql_rows)
        if "efficiency" in parts:
            part_efficiency(work, args.sleep, args.shards)
        if "docs" in parts:
            part_docs(work, args.docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
