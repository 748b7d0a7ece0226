#!/usr/bin/env python
"""Long documents: does default chunking recover what truncation loses? (issue 10)

Builds a long-document set from a BEIR folder (SciFact by default, the development set):
the corpus is shuffled (seeded) and each ``--group`` (8) consecutive documents are joined
into one parent (about 12 kB; each child is a paragraph "title\\ntext"); a parent is relevant
to a query if any child is (its grade: the children's maximum). Then, on the parents:

  (a) truncation       a collection made with ``chunking=False`` (one vector per parent, cut
                       at the model's window: what semindex did before chunking)
  (b) chunked          semindex's default collection (chunks, one hit per parent, MaxP)
  (c) reference MaxP   the original per-document run (the children indexed unchunked, top
                       1000 searched) with each parent scored by its best child

nDCG@10 by semindex's own metric code (ir-measures; ranks as the user sees them). Target:
(b) within 0.02 of (c), far above (a). The same three on the plain set (no joining) show
whether default chunking moved the standard figure. Also, measured in this one run:
ingest cost of (b) against plain ``SentenceTransformer.encode`` of the same chunk texts, and
search latency of the chunked collection against an unchunked one holding the same number
of vectors (its documents are (b)'s chunk texts, with the same vectors).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/longdoc.py            # ../shared/data/scifact
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/longdoc.py --limit 800  # a quick look

On 2 shared CPU cores the full run encodes SciFact about four times: budget 10-20 minutes.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import semindex  # noqa: E402
from semindex.indexer.beir import load_split  # noqa: E402
from semindex.search.evaluate import QUERY_BATCH, measure  # noqa: E402

Run = dict[str, dict[str, float]]
print = functools.partial(print, flush=True)  # noqa: A001 - partial results show on a slow machine


def read_corpus(folder: Path) -> list[dict[str, Any]]:
    path = folder / "corpus.jsonl.gz"
    opener = gzip.open if path.exists() else open
    path = path if path.exists() else folder / "corpus.jsonl"
    with opener(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{"id": str(r["_id"]), "title": r.get("title") or None, "text": r.get("text") or ""} for r in rows]


def subsample(docs: Sequence[dict[str, Any]], qrels: Mapping[str, Mapping[str, int]], n: int,
              seed: int) -> list[dict[str, Any]]:
    """``n`` documents (seeded): the relevant ones of as many queries as fill half, then random distractors."""
    rng = random.Random(seed)
    qids = sorted(qrels)
    rng.shuffle(qids)
    keep: set[str] = set()
    for q in qids:
        if len(keep) + len(qrels[q]) > n // 2:
            break
        keep.update(qrels[q])
    rest = [d["id"] for d in docs if d["id"] not in keep]
    keep.update(rng.sample(rest, max(0, min(len(rest), n - len(keep)))))
    return [d for d in docs if d["id"] in keep]


def make_parents(docs: Sequence[dict[str, Any]], group: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Shuffle (seeded), join each ``group`` consecutive documents; also child id -> parent id."""
    order = list(docs)
    random.Random(seed).shuffle(order)
    parents, parent_of = [], {}
    for p, lo in enumerate(range(0, len(order), group)):
        kids = order[lo:lo + group]
        pid = f"p{p:05d}"
        parents.append({"id": pid, "text": "\n\n".join(f"{d['title']}\n{d['text']}" if d["title"] else d["text"]
                                                      for d in kids)})
        parent_of.update({d["id"]: pid for d in kids})
    return parents, parent_of


def parent_qrels(qrels: Mapping[str, Mapping[str, int]], parent_of: Mapping[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for q, rel in qrels.items():
        row = out.setdefault(q, {})
        for d, g in rel.items():
            if d in parent_of:
                row[parent_of[d]] = max(g, row.get(parent_of[d], g))
    return out


def ranked_run(qids: Sequence[str], ranked: Sequence[Sequence[str]]) -> Run:
    """Scores by rank (len - rank), as semindex.search.evaluate does: the order the user sees."""
    return {q: {d: float(len(ids) - r) for r, d in enumerate(ids)} for q, ids in zip(qids, ranked)}


def search_all(coll: semindex.Collection, queries: Sequence[str], k: int, mode: str = "dense") -> list[list[semindex.Hit]]:
    out: list[list[semindex.Hit]] = []
    for lo in range(0, len(queries), QUERY_BATCH):
        out.extend(coll.search_batch(list(queries[lo:lo + QUERY_BATCH]), k, mode=mode))
    return out


def maxp(hits: Sequence[Sequence[semindex.Hit]], parent_of: Mapping[str, str]) -> list[list[str]]:
    """Each parent scored by its best child (hits come best first: first seen = best)."""
    out = []
    for row in hits:
        seen: dict[str, None] = {}
        for h in row:
            seen.setdefault(parent_of[h.id], None)
        out.append(list(seen))
    return out


def ndcg(qrels: Mapping[str, Mapping[str, int]], qids: Sequence[str], ranked: Sequence[Sequence[str]]) -> float:
    return measure(qrels, ranked_run(qids, ranked))["ndcg@10"]


def ingest(store: semindex.Store, name: str, docs: Sequence[dict[str, Any]], model: str | None,
           chunking: bool, backend: str) -> tuple[semindex.Collection, semindex.IngestStats, float]:
    coll = store.collection(name, model=model, chunking=chunking, backend=backend)
    t0 = time.perf_counter()
    stats = coll.add(docs, batch_size=32)
    return coll, stats, time.perf_counter() - t0


def latency_ms(coll: semindex.Collection, queries: Sequence[str], k: int = 10) -> float:
    coll.search(queries[0], k=k)  # warm
    times = []
    for q in queries:
        t0 = time.perf_counter()
        coll.search(q, k=k)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("beir_dir", type=Path, nargs="?", default=REPO.parent / "shared" / "data" / "scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None, help="default: semindex's default model")
    ap.add_argument("--group", type=int, default=8, help="documents joined into one parent")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--backend", default="torch",
                    help="inference backend (default torch: the plain-encode baseline is sentence-transformers on torch)")
    ap.add_argument("--limit", type=int, default=None, help="a quick look: N documents, half of them relevant to some test queries, half random")
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--skip-plain", action="store_true", help="skip the chunked run on the plain set")
    args = ap.parse_args()

    docs = read_corpus(args.beir_dir)
    queries, qrels = load_split(args.beir_dir, args.split)
    if args.limit:
        docs = subsample(docs, qrels, args.limit, args.seed)
    ids = {d["id"] for d in docs}
    qrels = {q: {d: g for d, g in rel.items() if d in ids} for q, rel in qrels.items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    queries = [(q, t) for q, t in queries if q in qrels]
    qids, qtexts = [q for q, _ in queries], [t for _, t in queries]
    parents, parent_of = make_parents(docs, args.group, args.seed)
    pqrels = parent_qrels(qrels, parent_of)
    kb = statistics.mean(len(p["text"]) for p in parents) / 1000
    print(f"set          {args.beir_dir.name}: {len(docs)} docs -> {len(parents)} parents of {args.group} "
          f"(mean {kb:.1f} kB), {len(qids)} {args.split} queries")

    with tempfile.TemporaryDirectory() as tmp, semindex.Store(str(Path(tmp) / "store")) as store:
        child, cstats, _ = ingest(store, "children", docs, args.model, chunking=False, backend=args.backend)
        trunc, tstats, _ = ingest(store, "parents_trunc", parents, args.model, chunking=False, backend=args.backend)
        chunked, bstats, b_s = ingest(store, "parents_chunked", parents, args.model, chunking=True, backend=args.backend)

        # ingest cost: the same chunk texts through plain SentenceTransformer.encode
        chunker = chunked.chunker
        texts = [p["text"][s:e] for p in parents for s, e in chunker.spans(p["text"], None)]
        model: Any = getattr(chunked.encoder, "model", None)
        if not hasattr(model, "encode"):  # another backend: the baseline is still sentence-transformers
            from sentence_transformers import SentenceTransformer

            from semindex.indexer.encoder import resolve_model_path
            model = SentenceTransformer(resolve_model_path(args.model), device="cpu")
        t0 = time.perf_counter()
        vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
        enc_s = time.perf_counter() - t0

        nd_c = ndcg(pqrels, qids, maxp(search_all(child, qtexts, 1000), parent_of))
        nd_a = ndcg(pqrels, qids, [[h.id for h in r] for r in search_all(trunc, qtexts, 100)])
        nd_b = ndcg(pqrels, qids, [[h.id for h in r] for r in search_all(chunked, qtexts, 100)])
        print(f"parents      truncated by the model: {tstats.truncated} of {len(parents)}; "
              f"chunked into {bstats.chunks} chunks ({bstats.chunks / len(parents):.1f} per parent)")
        print("nDCG@10 on the parents (dense)")
        print(f"  (a) truncation (chunking=False)   {nd_a:.4f}")
        print(f"  (b) default chunked collection    {nd_b:.4f}")
        print(f"  (c) reference MaxP (per document)  {nd_c:.4f}")
        print(f"  (b) - (c) = {nd_b - nd_c:+.4f}   (b) - (a) = {nd_b - nd_a:+.4f}   (b)/(a) = {nd_b / nd_a:.2f}x")

        print("ingest cost of chunking (same run)")
        print(f"  (b) semindex add        {len(parents) / b_s:7.2f} docs/s  {bstats.chunks / b_s:7.1f} chunks/s  "
              f"({b_s:.0f} s, tokenize + chunk + encode + store)")
        print(f"  plain encode of chunks  {len(texts) / enc_s:7.1f} chunks/s ({enc_s:.0f} s)")
        print(f"  ratio semindex/plain    {(bstats.chunks / b_s) / (len(texts) / enc_s):.2f}x chunks/s")

        flat = store.collection("flat_chunks", model=args.model, chunking=False, backend=args.backend)
        flat.add_embeddings([f"c{i}" for i in range(len(texts))], vecs, texts=texts)
        lq = qtexts[: args.latency_queries]
        lat_b, lat_f = latency_ms(chunked, lq), latency_ms(flat, lq)
        print(f"search latency, k=10, one query at a time, median of {len(lq)} (query encoding included)")
        print(f"  chunked ({chunked.chunk_count()} vectors, {chunked.count()} docs)  {lat_b:6.2f} ms")
        print(f"  unchunked ({flat.chunk_count()} vectors, {flat.count()} docs)  {lat_f:6.2f} ms")
        print(f"  ratio chunked/unchunked  {lat_b / lat_f:.2f}x")

        # the plain set: did default chunking move the standard figure?
        print(f"plain {args.beir_dir.name} ({len(docs)} docs; {cstats.truncated} longer than the window), nDCG@10")
        plain_dense = ndcg(qrels, qids, [[h.id for h in r] for r in search_all(child, qtexts, 100)])
        plain_hyb = ndcg(qrels, qids, [[h.id for h in r] for r in search_all(child, qtexts, 100, "hybrid")])
        print(f"  (a)=(c) unchunked            dense {plain_dense:.4f}  hybrid {plain_hyb:.4f}")
        if not args.skip_plain:
            pc, pstats, _ = ingest(store, "children_chunked", docs, args.model, chunking=True, backend=args.backend)
            pc_dense = ndcg(qrels, qids, [[h.id for h in r] for r in search_all(pc, qtexts, 100)])
            pc_hyb = ndcg(qrels, qids, [[h.id for h in r] for r in search_all(pc, qtexts, 100, "hybrid")])
            print(f"  (b) default chunked          dense {pc_dense:.4f}  hybrid {pc_hyb:.4f}  "
                  f"({pstats.chunks} chunks)")


if __name__ == "__main__":
    main()
