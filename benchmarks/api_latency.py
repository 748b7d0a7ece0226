"""Search latency through `semindex serve` vs the bare model + FAISS, in the same run.

    python benchmarks/api_latency.py [--docs N] [--queries N] [--concurrency 8]

1. Builds a store holding SciFact (../shared/data/scifact; --docs limits it).
2. Starts `semindex serve` on a random port (a subprocess, as users run it).
3. Every SciFact test query through the raw baseline in this process —
   `SentenceTransformer.encode(query)` + `faiss.IndexFlatIP.search` over the same
   vectors — then through POST /collections/default/search over HTTP (keep-alive),
   twice over (raw, HTTP, raw, HTTP: load drift cancels out). Then once more
   interleaved query by query, printed too (there the two processes' models
   compete for the CPU caches, which costs the HTTP side a few ms).
4. Throughput: every query again, from --concurrency clients at once.

Prints p50/p99 of both, the ratio HTTP p50 / raw p50 (target <= 1.2), queries/s, and the
p50/p99 of the concurrent requests (target p99 <= 2x p50). ``--backend torch`` runs the server's
model on the same code as the raw baseline, so the ratio is the HTTP path's own cost; the default
(auto: OpenVINO on CPU) is what users get.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _serve import ServerDidNotStart, free_port, wait_healthy  # benchmarks/_serve.py (this folder)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
K = 10


def load_corpus(limit: int | None) -> list[dict[str, Any]]:
    out = []
    with gzip.open(DATA / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            out.append({"id": rec["_id"], "title": rec.get("title") or None, "text": rec["text"]})
            if limit is not None and len(out) >= limit:
                break
    return out


def load_test_queries(limit: int | None) -> list[str]:
    qids: list[str] = []
    qrels = DATA / "qrels" / "test.tsv"
    for line in qrels.read_text(encoding="utf-8").splitlines()[1:]:
        qid = line.split("\t")[0]
        if qid not in qids:
            qids.append(qid)
    texts = {}
    for line in (DATA / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        texts[rec["_id"]] = rec["text"]
    queries = [texts[q] for q in qids if q in texts]
    return queries[:limit] if limit else queries


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=None, help="Index only the first N SciFact documents (default: all 5,183).")
    ap.add_argument("--queries", type=int, default=None, help="Use the first N test queries (default: all 300).")
    ap.add_argument("--concurrency", type=int, default=8, help="Clients for the throughput run.")
    ap.add_argument("--store", type=Path, default=None, help="Reuse (or keep) this store folder.")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch CPU threads, for both the server (--torch-threads) and the raw baseline.")
    ap.add_argument("--json", action="store_true", help="Also print the numbers as one JSON line.")
    ap.add_argument("--backend", default=None, choices=["torch", "onnx", "openvino"],
                    help="The server's backend (default: auto). --backend torch isolates the HTTP path's own "
                         "cost: the same model code as the raw baseline.")
    ap.add_argument("--query-cache", type=int, default=0,
                    help="The server's query-embedding cache size (default 0: every query runs the model).")
    ap.add_argument("--query-batching", choices=["on", "off"], default="on",
                    help="The server's sharing of one model call among concurrent queries "
                         "($SEMINDEX_QUERY_BATCHING; default on, as users get it).")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import faiss
    import httpx
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import semindex
    from semindex.indexer.encoder import resolve_model_path
    from semindex.storage.rows import SQLSource

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
        # FAISS's OpenMP threads spin after each search; on a busy machine they would steal the
        # CPU from the server during the HTTP call that follows (one 5k-vector search needs no threads).
        faiss.omp_set_num_threads(args.torch_threads)

    tmp = tempfile.TemporaryDirectory(prefix="semindex-bench-")
    store_dir = args.store or Path(tmp.name) / "store"

    # 1. the store
    t0 = time.perf_counter()
    docs = load_corpus(args.docs)
    with semindex.Store(store_dir) as store:
        coll = store.collection(backend=args.backend)
        stats = coll.add(docs, batch_size=64)
        backend = f"{coll.backend} {coll.precision}"
        n_docs = coll.count()
        vectors = np.concatenate([v for _, v in SQLSource(coll.storage.rows).iter_batches()])
    print(f"store: {n_docs} SciFact documents ({stats.added} encoded now) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)

    # the raw baseline: the same model, the same vectors, a flat inner-product index
    model = SentenceTransformer(resolve_model_path(None), device="cpu")
    raw_index = faiss.IndexFlatIP(vectors.shape[1])
    raw_index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    queries = load_test_queries(args.queries)

    def raw_search(q: str) -> None:
        v = model.encode(q, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        raw_index.search(np.asarray(v, dtype=np.float32).reshape(1, -1), K)

    # 2. the server
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # the query-embedding cache off: each query is sent several times below, and a cache hit
    # skips the model (that is the point of the cache, but not of a comparison with raw encode)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEMINDEX_QUERY_CACHE": str(args.query_cache),
           "SEMINDEX_QUERY_BATCHING": "1" if args.query_batching == "on" else "0"}
    log = open(Path(tmp.name) / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "semindex", "serve", "--store", str(store_dir), "--port", str(port),
         "--no-access-log", "--log-level", "warning", *(["--backend", args.backend] if args.backend else []),
         *(["--torch-threads", str(args.torch_threads)] if args.torch_threads else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        try:
            wait_healthy(base, proc, 300, log=lambda: (Path(tmp.name) / "serve.log").read_text())
        except ServerDidNotStart as exc:
            raise SystemExit(f"semindex serve: {exc}") from None

        client = httpx.Client(base_url=base, timeout=60)
        url = "/collections/default/search"

        def http_search(c: httpx.Client, q: str) -> None:
            r = c.post(url, json={"query": q, "k": K})
            r.raise_for_status()

        for q in queries[:10]:  # warm-up both paths
            raw_search(q)
            http_search(client, q)

        # 3. single-query latency: in blocks (raw, HTTP, raw, HTTP: drift cancels, and neither
        # process's model evicts the other's from the CPU caches mid-query), then interleaved
        def timed(fn: Any) -> float:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1000

        raw_ms: list[float] = []
        http_ms: list[float] = []
        for _ in range(2):
            raw_ms += [timed(lambda q=q: raw_search(q)) for q in queries]
            http_ms += [timed(lambda q=q: http_search(client, q)) for q in queries]
        raw_il: list[float] = []
        http_il: list[float] = []
        for q in queries:
            raw_il.append(timed(lambda q=q: raw_search(q)))
            http_il.append(timed(lambda q=q: http_search(client, q)))

        # 4. throughput with N concurrent clients
        local = threading.local()
        conc_ms: list[float] = []

        def one(q: str) -> None:
            c = getattr(local, "client", None)
            if c is None:
                c = local.client = httpx.Client(base_url=base, timeout=60)
            conc_ms.append(timed(lambda: http_search(c, q)))

        work = queries * max(1, -(-200 // len(queries)))  # at least ~200 requests
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, work[: args.concurrency]))  # connect every client first
            conc_ms.clear()
            t = time.perf_counter()
            list(pool.map(one, work))
            elapsed = time.perf_counter() - t
        qps = len(work) / elapsed
        t = time.perf_counter()
        for q in work[: len(queries)]:
            raw_search(q)
        raw_qps = len(queries) / (time.perf_counter() - t)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()

    res = {
        "documents": n_docs,
        "queries": len(queries),
        "http_p50_ms": round(statistics.median(http_ms), 2),
        "http_p99_ms": round(pct(http_ms, 99), 2),
        "raw_p50_ms": round(statistics.median(raw_ms), 2),
        "raw_p99_ms": round(pct(raw_ms, 99), 2),
        "ratio_p50": round(statistics.median(http_ms) / statistics.median(raw_ms), 3),
        "interleaved_http_p50_ms": round(statistics.median(http_il), 2),
        "interleaved_raw_p50_ms": round(statistics.median(raw_il), 2),
        "interleaved_ratio_p50": round(statistics.median(http_il) / statistics.median(raw_il), 3),
        "http_qps_concurrent": round(qps, 1),
        "concurrent_p50_ms": round(statistics.median(conc_ms), 2),
        "concurrent_p99_ms": round(pct(conc_ms, 99), 2),
        "backend": backend,
        "concurrency": args.concurrency,
        "raw_qps_single_thread": round(raw_qps, 1),
        "cpus": os.cpu_count(),
        "torch_threads": args.torch_threads,
    }
    print(f"SciFact: {n_docs} documents, {len(queries)} test queries, k={K}, {os.cpu_count()} CPUs, "
          f"torch threads {args.torch_threads or 'default'}; the server's model runs on {backend} "
          "(raw is sentence-transformers on torch)")
    print(f"HTTP search     p50 {res['http_p50_ms']:8.2f} ms   p99 {res['http_p99_ms']:8.2f} ms")
    print(f"raw encode+FAISS p50 {res['raw_p50_ms']:7.2f} ms   p99 {res['raw_p99_ms']:8.2f} ms")
    print(f"ratio HTTP p50 / raw p50 = {res['ratio_p50']:.2f}  (target <= 1.2; in blocks of {len(queries)} queries)")
    print(f"interleaved query by query: HTTP p50 {res['interleaved_http_p50_ms']:.2f} ms, raw p50 "
          f"{res['interleaved_raw_p50_ms']:.2f} ms, ratio {res['interleaved_ratio_p50']:.2f}")
    print(f"throughput: {res['http_qps_concurrent']:.1f} queries/s over HTTP with {args.concurrency} clients "
          f"({res['raw_qps_single_thread']:.1f} queries/s raw, one thread; target >= raw)")
    print(f"latency with {args.concurrency} clients: p50 {res['concurrent_p50_ms']:.2f} ms, p99 "
          f"{res['concurrent_p99_ms']:.2f} ms, p99/p50 {res['concurrent_p99_ms'] / res['concurrent_p50_ms']:.2f} "
          "(target <= 2)")
    if args.json:
        print(json.dumps(res))
    tmp.cleanup()  # a --store given by the caller is kept


if __name__ == "__main__":
    main()
