"""ANN index types through semindex's own index classes: build time, memory, QPS, recall@10.

    python benchmarks/ann.py --n 200000                      # synthetic, quick
    OMP_NUM_THREADS=2 nohup python benchmarks/ann.py --n 1000000 > /tmp/ann_1m.log &
    python benchmarks/ann.py --real-scifact                  # the SciFact embeddings (5,183 docs)
    python benchmarks/ann.py --n 0 --real-scifact --types flat,sq8,binary   # issue 13's quantized targets

Every index is built with ``semindex.storage.autoindex.build_from_source`` - the function the
store's rebuild runs - from an ``ArraySource`` over a memory-mapped .npy (the store reads SQL
instead). IVF-PQ rescoring reads its candidates from that memory-mapped file, as the store
reads them from SQL: neither is counted as index memory. Recall@10 is measured on separate
query vectors against exact search (flat). Prints one table row per type and a verdict on
the issue's targets.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semindex.storage.autoindex import ArraySource, build_from_source, choose_spec

CACHE = Path(os.environ.get("SEMINDEX_BENCH_CACHE", "/tmp"))


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def synthetic(n: int, dim: int, clusters: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Gaussian mixture, unit-normalised (cosine), written once to a .npy memmap."""
    path = CACHE / f"semindex_ann_{n}_{dim}_{clusters}_{seed}.npy"
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    spread = rng.uniform(0.3, 0.8, size=clusters).astype(np.float32)

    def draw(m: int, r: np.random.Generator) -> np.ndarray:
        c = r.integers(0, clusters, m)
        x = centers[c] + spread[c, None] * r.standard_normal((m, dim)).astype(np.float32) * 1.2
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        r = np.random.default_rng(seed + 1)
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            mm[lo:hi] = draw(hi - lo, r)
        mm.flush()
        del mm
        os.replace(tmp, path)
    queries = draw(nq, np.random.default_rng(seed + 2))
    return np.load(path, mmap_mode="r"), queries


def scifact(model: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,183 SciFact docs and 1,109 queries encoded once with the default model (cached)."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
    docs_npy, q_npy = CACHE / "semindex_scifact_docs.npy", CACHE / "semindex_scifact_queries.npy"
    if not docs_npy.exists() or not q_npy.exists():
        from semindex.indexer.encoder import get_encoder

        enc = get_encoder(model)
        t = time.perf_counter()
        if not docs_npy.exists():
            with gzip.open(root / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
                docs = [json.loads(line) for line in fh]
            texts = [(d.get("title", "") + "\n" + d.get("text", "")).strip() for d in docs]
            np.save(docs_npy, np.asarray(enc.encode(texts, batch_size=64, normalize=True), dtype=np.float32))
        if not q_npy.exists():
            lines = (root / "queries.jsonl").read_text(encoding="utf-8").splitlines()
            queries = [json.loads(line)["text"] for line in lines if line.strip()]
            np.save(q_npy, np.asarray(enc.encode(queries, batch_size=64, normalize=True), dtype=np.float32))
        print(f"# encoded SciFact in {time.perf_counter() - t:.0f} s (cached in {CACHE})", flush=True)
    return np.load(docs_npy, mmap_mode="r"), np.load(q_npy)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for lo in range(0, len(x), 100_000):
        blk = np.asarray(x[lo : lo + 100_000], dtype=np.float32)
        s = q @ blk.T
        best_s = np.concatenate([best_s, s], 1)
        best_i = np.concatenate([best_i, np.broadcast_to(np.arange(lo, lo + len(blk)), s.shape)], 1)
        part = np.argpartition(-best_s, k - 1, 1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, part, 1), np.take_along_axis(best_i, part, 1)
    order = np.argsort(-best_s, 1)
    return np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def qps(index: Any, q: np.ndarray, batch: int, budget_s: float = 20.0, k: int = 10) -> tuple[float, np.ndarray]:
    out = np.zeros((len(q), k), dtype=np.int64)
    t = time.perf_counter()
    done = 0
    for lo in range(0, len(q), batch):
        _, ids = index.search(q[lo : lo + batch], k)
        out[lo : lo + len(ids)] = ids
        done = lo + len(ids)
        if time.perf_counter() - t > budget_s:
            break
    return done / (time.perf_counter() - t), out[:done]


def run(name: str, x: np.ndarray, q: np.ndarray, types: list[str], target: float, budget: int | None) -> None:
    n, dim = x.shape
    print(f"\n## {name}: n={n} dim={dim} queries={len(q)} target recall@10={target} "
          f"threads={os.environ.get('OMP_NUM_THREADS', 'all')}", flush=True)
    t = time.perf_counter()
    truth = exact_topk(x, q, 10)
    print(f"# exact ground truth in {time.perf_counter() - t:.1f} s", flush=True)
    src = ArraySource(x, batch=50_000)
    hdr = f"{'type':<22}{'build s':>9}{'index MiB':>11}{'RSS+ MiB':>10}{'B/vec':>8}{'QPS@1':>9}{'QPS@64':>9}{'R@10':>7}  params"
    print(hdr, flush=True)
    rows: dict[str, dict[str, Any]] = {}
    built: dict[str, dict[str, Any]] = {}
    for spec in types:
        label = spec
        if spec == "auto":
            choice = choose_spec(n, dim, budget)
            label = f"auto->{choice.spec}"
            if choice.spec in built:  # auto *is* that build: same code, same params
                rows[spec] = {**built[choice.spec], "label": label}
                r = rows[spec]
                print(f"{label:<22}{r['build']:>9.1f}{r['mem'] / 2**20:>11.1f}{r['rss'] / 2**20:>10.1f}{r['bpv']:>8.0f}"
                      f"{r['qps1']:>9.0f}{r['qps64']:>9.0f}{r['recall']:>7.3f}  (same build as {choice.spec}) {choice.reason}",
                      flush=True)
                continue
        gc.collect()
        rss0 = rss_bytes()
        t = time.perf_counter()
        index, rep = build_from_source(spec, dim, "cosine", src, target_recall=target, budget=budget,
                                       refine_source=src.fetch)
        build_s = time.perf_counter() - t
        rss = rss_bytes() - rss0
        mem = index.memory_bytes()
        n1 = 100 if index.kind == "flat" else 1000
        q1, ids1 = qps(index, q[:n1], 1)
        q64, ids64 = qps(index, q, 64)
        rec = recall(ids64, truth[: len(ids64)])
        params = {k: v for k, v in index.params.items() if k in ("nlist", "nprobe", "M", "efSearch", "pq_m", "pq_nbits", "k_factor", "recall@10")}
        r = {"label": label, "build": build_s, "mem": mem, "rss": rss, "bpv": mem / n, "qps1": q1, "qps64": q64,
             "recall": rec, "params": params, "timings": rep.timings}
        rows[spec] = r
        built[index.spec if spec != "auto" else choose_spec(n, dim, budget).spec] = r
        print(f"{label:<22}{build_s:>9.1f}{mem / 2**20:>11.1f}{rss / 2**20:>10.1f}{mem / n:>8.0f}{q1:>9.0f}{q64:>9.0f}"
              f"{rec:>7.3f}  {params} {({k: round(v, 1) for k, v in rep.timings.items()})}", flush=True)
        del index
        gc.collect()
    flat = rows.get("flat")
    if flat:
        print("# targets:", flush=True)
        if "auto" in rows:
            a = rows["auto"]
            if a["label"] == "auto->flat":
                print("#   auto chose flat (exact) at this size; the 20x target is for 1M vectors", flush=True)
            ok = a["recall"] >= 0.95 and a["qps1"] >= 20 * flat["qps1"]
            print(f"#   auto: recall@10 {a['recall']:.3f} (>= 0.95), single-query QPS {a['qps1'] / flat['qps1']:.1f}x flat "
                  f"(>= 20x): {'MET' if ok else 'NOT MET'}", flush=True)
        for kind, want in (("sq8", 0.99), ("binary", 0.95)):
            if kind in rows:
                r = rows[kind]
                rel = r["recall"] / max(flat["recall"], 1e-9)
                print(f"#   {kind}: recall@10 {r['recall']:.3f} = {rel:.3f} of flat (>= {want}), "
                      f"{r['bpv']:.0f} bytes/vector vs flat {flat['bpv']:.0f} ({flat['bpv'] / r['bpv']:.1f}x smaller), "
                      f"single-query QPS {r['qps1'] / flat['qps1']:.2f}x flat: {'MET' if rel >= want else 'NOT MET'}",
                      flush=True)
        if "ivfpq" in rows and ("sq8" in rows or "binary" in rows):
            p = rows["ivfpq"]
            for kind in ("sq8", "binary"):
                if kind in rows:
                    r = rows[kind]
                    print(f"#   {kind} vs ivfpq: memory {r['mem'] / p['mem']:.2f}x, QPS@1 {r['qps1'] / p['qps1']:.2f}x, "
                          f"QPS@64 {r['qps64'] / p['qps64']:.2f}x, recall@10 {r['recall']:.3f} vs {p['recall']:.3f}",
                          flush=True)
        if "ivfpq" in rows:
            p = rows["ivfpq"]
            ok = p["recall"] >= 0.90 and p["mem"] <= flat["mem"] / 8
            print(f"#   ivfpq: memory {p['mem'] / flat['mem']:.3f} of flat (<= 0.125), recall@10 {p['recall']:.3f} "
                  f"(>= 0.90): {'MET' if ok else 'NOT MET'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--types", default="flat,ivf,ivfpq,sq8,binary,auto,hnsw")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--budget", default=None, help="memory budget for auto, e.g. 4G (default: half the RAM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-scifact", action="store_true", help="also (or, with --n 0, only) the SciFact embeddings")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    from semindex.storage.autoindex import parse_bytes

    budget = parse_bytes(args.budget) if args.budget else None
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    import faiss

    print(f"# semindex ANN benchmark; faiss {faiss.__version__}, {os.cpu_count()} CPUs, "
          f"OMP threads {faiss.omp_get_max_threads()}", flush=True)
    if args.n > 0:
        t = time.perf_counter()
        x, q = synthetic(args.n, args.dim, args.clusters, args.queries, args.seed)
        print(f"# synthetic Gaussian mixture ({args.clusters} clusters) ready in {time.perf_counter() - t:.1f} s", flush=True)
        run("synthetic", x, q, types, args.target_recall, budget)
    if args.real_scifact:
        x, q = scifact(args.model)
        run("scifact (all-MiniLM-L6-v2)", x, q, types, args.target_recall, budget)


if __name__ == "__main__":
    main()
