#!/usr/bin/env python
"""Issue 14's figures: base vs fine-tuned model, dense / keyword / hybrid, RRF vs convex fusion.

Everything goes through semindex itself: `Collection.search_batch` for the dense and keyword
candidate lists, `semindex.search.hybrid` for the fusions (the same functions hybrid search
calls, so fusing the two top-100 lists here is exactly `mode="hybrid"`), and
`semindex.search.evaluate.measure` (ir-measures) for the metrics.

    # alpha for fusion="convex", chosen on SciFact TRAIN queries only (never a test split)
    python benchmarks/finetune.py ../shared/data/scifact --store /tmp/b --tune-alpha

    # test figures of the base model (indexes the corpus into --store once)
    python benchmarks/finetune.py ../shared/data/scifact --store /tmp/b
    python benchmarks/finetune.py ../shared/data/cranfield --store /tmp/b

    # fine-tune on the train split, re-embed the collection with it, and compare on test
    python benchmarks/finetune.py ../shared/data/scifact --store /tmp/b --train models/scifact
    python benchmarks/finetune.py ../shared/data/nfcorpus --store /tmp/b --train models/nfcorpus

The fine-tuning run uses the library's defaults (what `semindex finetune` does) unless
--epochs/--mine/--max-seq-length say otherwise; nothing is tuned on NFCorpus or Cranfield.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import semindex  # noqa: E402
from semindex.cli.eval_cmd import default_collection_name  # noqa: E402
from semindex.indexer.beir import load_split  # noqa: E402
from semindex.indexer.readers import iter_records  # noqa: E402
from semindex.search.evaluate import measure  # noqa: E402
from semindex.search.hybrid import DEFAULT_ALPHA, DEFAULT_RRF_K, convex, rrf  # noqa: E402

DEPTH = 100  # hybrid's default candidates per side (max(k, 100))


def lists(coll: Any, queries: list[tuple[str, str]]) -> tuple[dict[str, list[tuple[str, float]]], ...]:
    """Dense and keyword top-DEPTH (id, score) per query id."""
    dense: dict[str, list[tuple[str, float]]] = {}
    keyword: dict[str, list[tuple[str, float]]] = {}
    for lo in range(0, len(queries), 256):
        part = queries[lo : lo + 256]
        texts = [t for _, t in part]
        for out, mode in ((dense, "dense"), (keyword, "keyword")):
            for (qid, _), hits in zip(part, coll.search_batch(texts, DEPTH, mode=mode)):
                out[qid] = [(h.id, h.score) for h in hits]
    return dense, keyword


def ndcg(qrels: dict[str, dict[str, int]], ranked: dict[str, list[str]]) -> dict[str, float]:
    run = {q: {d: float(len(ids) - r) for r, d in enumerate(ids[:DEPTH])} for q, ids in ranked.items() if ids}
    return measure(qrels, run)


def figures(dense: dict[str, list[tuple[str, float]]], keyword: dict[str, list[tuple[str, float]]],
            qrels: dict[str, dict[str, int]], alpha: float) -> dict[str, float]:
    qs = list(dense)
    f = {
        "dense": ndcg(qrels, {q: [d for d, _ in dense[q]] for q in qs})["ndcg@10"],
        "keyword": ndcg(qrels, {q: [d for d, _ in keyword[q]] for q in qs})["ndcg@10"],
        "hybrid-rrf": ndcg(qrels, {q: [d for d, _ in rrf([[d for d, _ in dense[q]], [d for d, _ in keyword[q]]],
                                                             k=DEFAULT_RRF_K)] for q in qs})["ndcg@10"],
        "hybrid-convex": ndcg(qrels, {q: [d for d, _ in convex([dense[q], keyword[q]], weights=(alpha, 1 - alpha))]
                                      for q in qs})["ndcg@10"],
    }
    return f


def ensure_collection(store: Any, name: str, beir: Path, model: str | None) -> Any:
    coll = store.collection(name, model=model)
    if coll.count() == 0:
        t0 = time.perf_counter()
        stats = coll.add_records(iter_records([beir]), on_error="skip")
        print(f"indexed {stats.added} documents into {name!r} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return coll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("beir_dir", type=Path)
    ap.add_argument("--store", type=Path, required=True, help="store to keep the collections in (reused)")
    ap.add_argument("--collection", default=None, help="base collection (default: the folder's name)")
    ap.add_argument("--split", default="test", help="split the figures are measured on")
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="convex fusion's dense share")
    ap.add_argument("--tune-alpha", action="store_true", help="choose alpha on the TRAIN split and print it")
    ap.add_argument("--train", type=Path, default=None, metavar="MODEL_DIR",
                    help="fine-tune on the train split into MODEL_DIR (reused if it holds a model), then compare")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--mine", default="hybrid", choices=["hybrid", "dense", "keyword"])
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    name = args.collection or default_collection_name(args.beir_dir)
    with semindex.Store(args.store, device=args.device) as store:
        base = ensure_collection(store, name, args.beir_dir, None)
        if args.tune_alpha:
            queries, qrels = load_split(args.beir_dir, "train")
            dense, keyword = lists(base, queries)
            grid = [round(i / 20, 2) for i in range(21)]
            scores = {a: figures(dense, keyword, qrels, a)["hybrid-convex"] for a in grid}
            best = max(grid, key=lambda a: (scores[a], -abs(a - 0.5)))
            print(f"{args.beir_dir.name} train ({len(queries)} queries): nDCG@10 of convex fusion by alpha")
            print("  " + "  ".join(f"{a:.2f}:{scores[a]:.4f}" for a in grid))
            rrf_train = figures(dense, keyword, qrels, best)["hybrid-rrf"]
            print(f"best alpha {best} (nDCG@10 {scores[best]:.4f}; RRF on the same queries {rrf_train:.4f})")
            return
        rows: list[tuple[str, dict[str, float]]] = []
        queries, qrels = load_split(args.beir_dir, args.split)
        rows.append(("base", figures(*lists(base, queries), qrels, args.alpha)))
        if args.train is not None:
            if not (args.train / "modules.json").is_file():
                kw: dict[str, Any] = {"mine": args.mine, "max_seq_length": args.max_seq_length}
                if args.epochs is not None:
                    kw["epochs"] = args.epochs
                res = semindex.finetune(args.beir_dir, args.train, mine_collection=base if args.mine != "keyword"
                                        else None, device=args.device, overwrite=True,
                                        progress=lambda e: e["event"] != "step" and print(e, file=sys.stderr), **kw)
                print(f"fine-tuned: {res.steps} steps in {res.seconds:.0f} s, kept epoch {res.best_epoch}; "
                      f"selection nDCG@10 {res.base['ndcg@10']:.4f} -> {res.best['ndcg@10']:.4f}", file=sys.stderr)
            ft_name = (name + "-ft")[:64]
            if ft_name not in store.collection_names():
                t0 = time.perf_counter()
                semindex.reembed(store, name, str(args.train), into=ft_name)
                print(f"re-embedded into {ft_name!r} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            rows.append(("fine-tuned", figures(*lists(store.get_collection(ft_name), queries), qrels, args.alpha)))
    print(f"{args.beir_dir.name} ({args.split}, {len(queries)} queries), nDCG@10; convex alpha={args.alpha}")
    print(f"  {'model':<11} {'dense':>7} {'keyword':>8} {'hybrid-rrf':>11} {'hybrid-convex':>14}")
    for label, f in rows:
        print(f"  {label:<11} {f['dense']:>7.4f} {f['keyword']:>8.4f} {f['hybrid-rrf']:>11.4f} {f['hybrid-convex']:>14.4f}")


if __name__ == "__main__":
    main()
