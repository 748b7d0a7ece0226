#!/usr/bin/env python
"""Inference backends against torch: ingest docs/s ratios, mean cosine to torch, nDCG@10.

Two parts, one run:

* speed: ``Collection.add`` (the whole ingest pipeline into a temporary store) of the
  first ``--timing-docs`` SciFact documents with each variant, interleaved round-robin
  ``--repeats`` times on this machine; the best run of each is kept and divided by torch's
  best, so a noisy neighbour on a shared CPU hurts every variant alike. The mean cosine of
  each variant's vectors to torch's on those documents is printed with it.
* quality: each ``--sets`` corpus encoded with each ``--quality`` variant, its test queries
  with the same variant, exact cosine top-10, nDCG@10 (ir-measures). ``--reference``
  is the fp32 variant the others' mean cosine is measured against (torch by default;
  openvino fp32 gives the same vectors at a fraction of the time). Vectors are kept under
  ``--work`` so an interrupted run resumes.

    python benchmarks/backends.py                                   # everything (long on 2 cores)
    python benchmarks/backends.py --sets scifact --quality torch,openvino-bf16
    python benchmarks/backends.py --timing-docs 128 --repeats 2 --sets ''   # speed only

SciFact is the development set (tune there); nfcorpus and cranfield are held out (measure only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import semindex  # noqa: E402
from semindex.indexer.beir import load_split  # noqa: E402
from semindex.indexer.encoder import get_encoder  # noqa: E402
from semindex.indexer.pipeline import embedding_input  # noqa: E402

DATA = REPO.parent / "shared" / "data"
VARIANTS = {  # name -> (backend, precision)
    "torch": ("torch", "fp32"),
    "onnx": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
    "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
}


def corpus(name: str, n: int | None = None) -> list[tuple[str, str]]:
    """(id, embedding input) per document, as `semindex index` embeds it."""
    import gzip
    import json

    folder = DATA / name
    path = folder / "corpus.jsonl.gz"
    opener = gzip.open if path.exists() else open
    path = path if path.exists() else folder / "corpus.jsonl"
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            r = json.loads(line)
            text = embedding_input(r.get("text") or "", r.get("title") or None).strip()
            if text:
                out.append((str(r["_id"]), text))
            if n is not None and len(out) >= n:
                break
    return out


def timing(names: list[str], docs: list[tuple[str, str]], repeats: int, batch_size: int) -> None:
    texts = [{"id": i, "text": t} for i, t in docs]
    best: dict[str, float] = {}
    runs: dict[str, list[float]] = {n: [] for n in names}
    vecs: dict[str, np.ndarray] = {}
    for n in names:  # load (and export) outside the timings, and warm up
        b, p = VARIANTS[n]
        get_encoder(None, "cpu", backend=b, precision=p).encode(["warm up"] * 8)
    for _ in range(repeats):
        for n in names:
            b, p = VARIANTS[n]
            with tempfile.TemporaryDirectory() as tmp, semindex.Store(Path(tmp) / "s", device="cpu") as store:
                coll = store.collection("c", backend=b, precision=p)
                t0 = time.perf_counter()
                stats = coll.add(texts, batch_size=batch_size)
                runs[n].append(time.perf_counter() - t0)
                assert stats.added == len(texts), stats
                if n not in vecs:
                    vecs[n] = coll.embed([t for _, t in docs])
    for n in names:
        best[n] = min(runs[n])
    ref = vecs.get("torch")
    print(f"speed: Collection.add of the first {len(docs)} SciFact docs, batch {batch_size}, "
          f"{os.cpu_count()} CPUs, best of {repeats} interleaved runs")
    print(f"  {'variant':15s} {'docs/s':>8s} {'vs torch':>9s} {'cos to torch':>13s}   runs (s)")
    for n in names:
        cos = float((vecs[n] * ref).sum(1).mean()) if ref is not None else float("nan")
        ratio = best["torch"] / best[n] if "torch" in best else float("nan")
        print(f"  {n:15s} {len(docs) / best[n]:8.2f} {ratio:8.2f}x {cos:13.5f}   "
              + ", ".join(f"{t:.1f}" for t in runs[n]), flush=True)


def quality_corpus(name: str, max_docs: int) -> list[tuple[str, str]]:
    """The corpus, or with ``max_docs`` a sample: every document judged for a test query first,
    then the others in file order, up to ``max_docs`` (nDCG is then that of the sample)."""
    docs = corpus(name)
    if not max_docs or len(docs) <= max_docs:
        return docs
    _, qrels = load_split(DATA / name, "test")
    judged = {d for q in qrels.values() for d in q}
    first = [d for d in docs if d[0] in judged][:max_docs]
    rest = [d for d in docs if d[0] not in judged][: max_docs - len(first)]
    return first + rest


def encode_set(name: str, variant: str, work: Path, batch_size: int,
               max_docs: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(doc vectors, query vectors, doc ids), cached under ``work``."""
    docs = quality_corpus(name, max_docs)
    queries, _ = load_split(DATA / name, "test")
    f = work / f"{name}.{max_docs or 'all'}.{variant}.npz"
    if f.exists():
        z = np.load(f)
        return z["docs"], z["queries"], [d for d, _ in docs]
    b, p = VARIANTS[variant]
    enc = get_encoder(None, "cpu", backend=b, precision=p)
    t0 = time.perf_counter()
    dv = enc.encode([t for _, t in docs], batch_size=batch_size)
    qv = enc.encode([t for _, t in queries], batch_size=batch_size)
    print(f"  (encoded {name} with {variant}: {len(docs)} docs in {time.perf_counter() - t0:.0f} s)", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(f, docs=dv, queries=qv)
    return dv, qv, [d for d, _ in docs]


def ndcg(name: str, dv: np.ndarray, qv: np.ndarray, ids: list[str]) -> float:
    import ir_measures
    from ir_measures import nDCG

    queries, qrels = load_split(DATA / name, "test")
    scores = qv @ dv.T
    top = np.argsort(-scores, axis=1)[:, :10]
    run = {qid: {ids[j]: float(scores[i, j]) for j in top[i]} for i, (qid, _) in enumerate(queries)}
    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timing", default="torch,onnx,onnx-int8,openvino,openvino-bf16",
                    help="variants to time ('' for none)")
    ap.add_argument("--timing-docs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sets", default="scifact,nfcorpus,cranfield")
    ap.add_argument("--quality", default="torch,onnx-int8,openvino,openvino-bf16",
                    help="variants whose nDCG@10 is measured")
    ap.add_argument("--reference", default="torch", help="fp32 variant the cosines are measured against")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-docs", type=int, default=0,
                    help="per set: judged documents first, then others, up to this many (0: the whole corpus)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "semindex-backends-bench")
    args = ap.parse_args()
    names = [n for n in args.timing.split(",") if n]
    if names:
        timing(names, corpus("scifact", args.timing_docs), args.repeats, args.batch_size)
    sets = [s for s in args.sets.split(",") if s]
    variants = [v for v in args.quality.split(",") if v]
    if args.reference not in variants:
        variants.insert(0, args.reference)
    if not sets:
        return
    print(f"quality: nDCG@10 on the test queries, exact search; cosine to {args.reference}"
          + (f"; corpora cut to {args.max_docs} docs (judged first)" if args.max_docs else ""))
    print(f"  {'set':10s} {'variant':15s} {'nDCG@10':>8s} {'loss':>8s} {'cos mean':>9s} {'cos min':>8s}")
    for s in sets:
        ref_dv, ref_qv, ids = encode_set(s, args.reference, args.work, args.batch_size, args.max_docs)
        ref_score = ndcg(s, ref_dv, ref_qv, ids)
        for v in variants:
            dv, qv, _ = (ref_dv, ref_qv, ids) if v == args.reference else encode_set(s, v, args.work, args.batch_size,
                                                                                       args.max_docs)
            score = ndcg(s, dv, qv, ids)
            cos = (dv * ref_dv).sum(1)
            print(f"  {s:10s} {v:15s} {score:8.4f} {ref_score - score:8.4f} {cos.mean():9.5f} {cos.min():8.5f}",
                  flush=True)


if __name__ == "__main__":
    main()
