"""Sharded IVF build in Ray tasks vs the single-process build (issue 12): time, recall@10, peak RSS.

    .venv/bin/python benchmarks/sharded_ivf.py --n 200000          # a smoke run
    .venv/bin/python benchmarks/sharded_ivf.py --n 1000000         # the README's figures

Data: a seeded Gaussian mixture (``--clusters`` centres in ``--dim`` dimensions, unit-normalised,
cosine/inner product), ``--queries`` held-out points of the same mixture as queries, exact
top-10 from a flat scan as the truth. Both builds use the same IVF spec (``IVF<nlist>,Flat`` or
``--pq M``), the same random training sample (seed 0) and the same ``--nprobe``:

* single: ``sharded_ivf.build_single`` in one process (FAISS on every core, OpenMP);
* sharded: the store's path: ``train_on_sample`` once in the driver, then
  ``sharded_ivf.ShardedAdder`` (the add step ``--engine ray`` hands to the store's reindex):
  the vectors streamed in 20,000-row batches, cut into ``--shard-rows`` shards, each added
  in a Ray task (1 CPU, global ids), merged in the driver in stream order.

Each build runs in its own child process, so "driver peak RSS" is that process's ru_maxrss
(it holds the vectors in RAM in both cases); the Ray workers report their own ru_maxrss from
inside the tasks. Ray's start-up is reported apart, not counted in the build time. Ray sends
nothing but loopback traffic: the script re-executes itself in a fresh network namespace that
has only ``lo`` (``unshare -n``, root needed), as benchmarks/scale.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SQL_BATCH = 20_000  # what the store's SQLSource yields per batch


def mixture(n: int, dim: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """n unit vectors around ``clusters`` seeded centres (the centres depend on the seed 1234 only)."""
    centres = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        x = centres[rng.integers(0, clusters, hi - lo)]
        x = x + (spread / np.sqrt(dim)) * rng.standard_normal((hi - lo, dim)).astype(np.float32)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, work: Path, args: argparse.Namespace) -> None:
    """One build in this (fresh) process; writes its figures and the queries' top-10 ids."""
    import faiss

    from semindex.indexer.sharded_ivf import ShardedAdder, build_single, train_on_sample

    x = np.load(work / "x.npy")
    q = np.load(work / "q.npy")
    ids = np.arange(len(x), dtype=np.int64)
    factory = f"IVF{args.nlist},PQ{args.pq}x8" if args.pq else f"IVF{args.nlist},Flat"
    sample = args.sample or 40 * args.nlist
    out: dict[str, Any] = {"mode": mode, "factory": factory, "sample": sample}
    if mode == "single":
        t = time.perf_counter()
        b = build_single(ids, x, factory, "cosine", sample=sample, seed=0)
        out["build_s"] = time.perf_counter() - t
        out["train_s"], out["add_s"] = b.seconds["train"], b.seconds["add"]
        index = b.index
        out["threads"] = faiss.omp_get_max_threads()
    else:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", object_store_memory=args.object_store_mib << 20)
        nodes = {n["NodeManagerAddress"] for n in ray.nodes()}
        assert nodes == {"127.0.0.1"}, nodes
        out["ray_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        trained = train_on_sample(x, factory, "cosine", sample=sample, seed=0)
        out["train_s"] = time.perf_counter() - t
        adder = ShardedAdder(ray, shard_rows=args.shard_rows)

        def batches() -> Any:
            for lo in range(0, len(x), SQL_BATCH):
                yield ids[lo:lo + SQL_BATCH], x[lo:lo + SQL_BATCH]

        t2 = time.perf_counter()
        index = adder(trained, batches())
        out["add_s"] = time.perf_counter() - t2
        out["build_s"] = time.perf_counter() - t
        out["parts"] = adder.parts
        out["workers"] = len(adder.worker_rss_kib)
        out["worker_peak_rss_mib"] = max(adder.worker_rss_kib.values()) / 1024
        out["workers_rss_sum_mib"] = sum(adder.worker_rss_kib.values()) / 1024
        ray.shutdown()
    faiss.extract_index_ivf(index).nprobe = args.nprobe
    _, top = index.search(q, 10)
    np.save(work / f"top-{mode}.npy", top)
    out["ntotal"] = int(index.ntotal)
    out["driver_peak_rss_mib"] = _maxrss_mib()
    (work / f"{mode}.json").write_text(json.dumps(out))


def recall(top: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / 10 for a, b in zip(top, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (unit centres)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--pq", type=int, default=0, help="PQ sub-quantizers (IVF-PQ, 8 bits); 0: IVF-Flat")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--sample", type=int, default=0, help="training sample (default 40 per cell)")
    ap.add_argument("--shard-rows", type=int, default=50_000)
    ap.add_argument("--cpus", type=int, default=0, help="Ray CPUs (default: every core)")
    ap.add_argument("--object-store-mib", type=int, default=2048)
    ap.add_argument("--child", choices=["single", "sharded"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.work), args)
        return
    if os.environ.get("SEMINDEX_NETNS") != "1":
        inner = (f"set -e; ip link set lo up; SEMINDEX_NETNS=1 exec {sys.executable} {Path(__file__).resolve()} "
                 + shlex.join(sys.argv[1:]))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        sys.exit(subprocess.call(["unshare", "-n", "bash", "-c", inner], env=env))
    import faiss

    work = Path(tempfile.mkdtemp(prefix="semindex-shivf-"))
    try:
        t = time.perf_counter()
        x = mixture(args.n, args.dim, args.clusters, seed=1, spread=args.spread)
        q = mixture(args.queries, args.dim, args.clusters, seed=2, spread=args.spread)  # held out
        np.save(work / "x.npy", x)
        np.save(work / "q.npy", q)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(x)
        _, truth = flat.search(q, 10)
        del flat, x
        prep = time.perf_counter() - t
        print(f"machine: {os.cpu_count()} CPUs (shared with other jobs), faiss {faiss.__version__}; "
              f"{args.n} x {args.dim} vectors, {args.clusters}-centre mixture (spread {args.spread}), {args.queries} held-out queries "
              f"(data + exact truth: {prep:.0f} s)")
        res: dict[str, dict[str, Any]] = {}
        for mode in ("single", "sharded"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--work", str(work),
                   *sys.argv[1:]]
            subprocess.run(cmd, check=True)
            res[mode] = json.loads((work / f"{mode}.json").read_text())
            res[mode]["recall@10"] = recall(np.load(work / f"top-{mode}.npy"), truth)
        s, p = res["single"], res["sharded"]
        same = bool(np.array_equal(np.load(work / "top-single.npy"), np.load(work / "top-sharded.npy")))
        print(f"spec {s['factory']}, nprobe {args.nprobe}, training sample {s['sample']} (seed 0); sharded: "
              f"{p['parts']} shards of {args.shard_rows} in Ray tasks on {p['workers']} workers "
              f"(Ray start-up {p['ray_start_s']:.1f} s, not counted)")
        print()
        print("| build | build s | train s | add s | recall@10 | driver peak RSS | Ray workers' peak RSS |")
        print("|---|---|---|---|---|---|---|")
        print(f"| single process ({s['threads']} OpenMP threads) | {s['build_s']:.1f} | {s['train_s']:.1f} | "
              f"{s['add_s']:.1f} | {s['recall@10']:.4f} | {s['driver_peak_rss_mib']:.0f} MiB | - |")
        print(f"| sharded, Ray tasks | {p['build_s']:.1f} | {p['train_s']:.1f} | {p['add_s']:.1f} | "
              f"{p['recall@10']:.4f} | {p['driver_peak_rss_mib']:.0f} MiB | {p['worker_peak_rss_mib']:.0f} MiB "
              f"each at most ({p['workers_rss_sum_mib']:.0f} MiB over {p['workers']}) |")
        print()
        print(f"ratios sharded/single: build time {p['build_s'] / s['build_s']:.2f}, add time "
              f"{p['add_s'] / s['add_s']:.2f}, driver peak RSS {p['driver_peak_rss_mib'] / s['driver_peak_rss_mib']:.2f}; "
              f"recall@10 difference {p['recall@10'] - s['recall@10']:+.4f}; identical top-10 lists: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
