#!/usr/bin/env python
"""nDCG@10 and recall@100 of the CLI's batch search on a BEIR folder.

Runs exactly what a user runs — `semindex index BEIR_DIR` then
`semindex search --queries ... -k 100 --json` — and scores the run with
ir-measures (pytrec_eval underneath), so a loss anywhere in the pipeline
(truncation, pooling, normalisation, title handling) shows up here.

    python benchmarks/beir_eval.py ../shared/data/scifact
    python benchmarks/beir_eval.py ../shared/data/nfcorpus --store /tmp/nf   # keep the store
    (re-running on a kept store encodes nothing: every document is unchanged)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ir_measures
from ir_measures import R, nDCG

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semindex.indexer.readers import read_qrels, read_queries  # noqa: E402


def semindex(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "semindex", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"semindex {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("beir_dir", type=Path)
    ap.add_argument("--store", type=Path, default=None, help="reuse/keep the store here (default: a temp dir)")
    ap.add_argument("--collection", default="default", help="collection name in the store")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    qrels = read_qrels(args.beir_dir / "qrels" / f"{args.split}.tsv")
    queries = [(qid, text) for qid, text in read_queries(args.beir_dir / "queries.jsonl") if qid in qrels]
    with tempfile.TemporaryDirectory() as tmp:
        store = str(args.store or Path(tmp) / "store")
        t0 = time.perf_counter()
        extra = ["--model", args.model] if args.model else []
        coll = ["--collection", args.collection]
        out = semindex("index", str(args.beir_dir), "--store", store, *coll, "--on-error", "skip", "--json", *extra)
        index_s = time.perf_counter() - t0
        stats = json.loads(out.stdout)
        qfile = Path(tmp) / "queries.jsonl"
        qfile.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries), encoding="utf-8")
        t0 = time.perf_counter()
        out = semindex("search", "--queries", str(qfile), "-k", "100", "--json", "--store", store, *coll)
        search_s = time.perf_counter() - t0
    run = {}
    for line in out.stdout.splitlines():
        row = json.loads(line)
        run[row["query_id"]] = {h["id"]: h["score"] for h in row["hits"]}
    scores = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels, run)
    print(f"dataset      {args.beir_dir.name} ({args.split}: {len(queries)} queries)")
    print(f"indexed      {stats['added'] + stats['unchanged'] + stats['updated']} docs "
          f"({stats['failed']} skipped) in {index_s:.0f} s")
    print(f"search       {len(queries)} queries in {search_s:.1f} s (CLI process, model load included)")
    print(f"nDCG@10      {scores[nDCG @ 10]:.4f}")
    print(f"recall@100   {scores[R @ 100]:.4f}")


if __name__ == "__main__":
    main()
