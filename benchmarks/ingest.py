#!/usr/bin/env python
"""semindex's indexing throughput relative to the model itself.

ratio = semindex docs/s (Collection.add: hashing, dedupe, encode, SQL rows with
embeddings, change log, FAISS add, commit per batch) divided by plain
`SentenceTransformer.encode` + `faiss.IndexFlatIP.add` on the same documents,
same batch size, same process, same run. Runs are interleaved and the best of
each is kept, so a noisy neighbour hurts both sides alike. Target: >= 0.90.

    python benchmarks/ingest.py            # first 2,000 SciFact docs
    python benchmarks/ingest.py --docs 500 --repeats 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

import semindex  # noqa: E402
from semindex.indexer.encoder import get_encoder  # noqa: E402
from semindex.indexer.pipeline import embedding_input  # noqa: E402


def load_docs(path: Path, n: int) -> list[dict[str, str]]:
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            docs.append({"id": r["_id"], "title": r["title"], "text": r["text"]})
            if len(docs) >= n:
                break
    return docs


def baseline(model: object, docs: list[dict[str, str]], batch_size: int) -> float:
    t0 = time.perf_counter()
    texts = [embedding_input(d["text"], d["title"]) for d in docs]
    vecs = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,  # type: ignore[attr-defined]
                        normalize_embeddings=True, show_progress_bar=False)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    return time.perf_counter() - t0


def ours(docs: list[dict[str, str]], batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, semindex.Store(Path(tmp) / "store") as store:
        coll = store.collection()
        t0 = time.perf_counter()
        stats = coll.add(docs, batch_size=batch_size)
        elapsed = time.perf_counter() - t0
        assert stats.added == len(docs), stats
        return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/scifact/corpus.jsonl.gz")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    docs = load_docs(args.corpus, args.docs)
    enc = get_encoder()  # loaded once, outside both timings; the baseline uses the same weights
    model = enc.model
    model.encode(["warm up"] * 64, batch_size=args.batch_size)
    base_t, our_t = [], []
    for _ in range(args.repeats):
        base_t.append(baseline(model, docs, args.batch_size))
        our_t.append(ours(docs, args.batch_size))
    b, o = min(base_t), min(our_t)
    n = len(docs)
    print(f"docs              {n} (first of {args.corpus.parent.name}), batch size {args.batch_size}, device {enc.device}")
    print(f"baseline          {n / b:8.1f} docs/s  (SentenceTransformer.encode + IndexFlatIP.add; runs: "
          + ", ".join(f"{t:.1f}s" for t in base_t) + ")")
    print(f"semindex          {n / o:8.1f} docs/s  (Collection.add into SQLite + FAISS; runs: "
          + ", ".join(f"{t:.1f}s" for t in our_t) + ")")
    print(f"ratio             {b / o:8.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
