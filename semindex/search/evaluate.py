"""Retrieval quality on a BEIR folder: nDCG@10, recall@100 and MRR@10 with ir-measures.

The metrics are computed by ir-measures (pytrec_eval underneath), never by hand.
The run handed to it scores each hit by its rank (``len - rank``), so the
metrics see exactly the order a user sees, whatever ties the raw scores hold.
The BEIR files it scores against (queries, ``qrels/<split>.tsv``) are read by
:mod:`semindex.indexer.beir` (``load_split``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .searcher import Hit

QUERY_BATCH = 256  # queries encoded and searched per call, here and in `semindex search --queries`


@dataclass
class EvalResult:
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int
    mode: str
    queries_per_s: float
    seconds: float
    rerank: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ndcg@10": round(self.ndcg_at_10, 4),
            "recall@100": round(self.recall_at_100, 4),
            "mrr@10": round(self.mrr_at_10, 4),
            "queries": self.queries,
            "mode": self.mode,
            "queries_per_s": round(self.queries_per_s, 2),
        }
        if self.rerank is not None:
            out["rerank"] = self.rerank
        return out


def measure(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    import ir_measures
    from ir_measures import RR, R, nDCG

    measures = [nDCG @ 10, R @ 100, RR @ 10]
    agg = ir_measures.calc_aggregate(measures, {q: dict(d) for q, d in qrels.items()},
                                     {q: dict(d) for q, d in run.items()})
    # ir-measures averages over the qrels' queries: one with no hit at all counts as 0
    return {
        "ndcg@10": float(agg.get(nDCG @ 10, 0.0)),
        "recall@100": float(agg.get(R @ 100, 0.0)),
        "mrr@10": float(agg.get(RR @ 10, 0.0)),
    }


def evaluate(
    search_batch: Callable[[list[str]], Sequence[Sequence[Hit]]],
    queries: Sequence[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    mode: str,
    rerank: str | None = None,
) -> EvalResult:
    """Run every query through ``search_batch`` (texts -> hits per text) and score the run."""
    run: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for lo in range(0, len(queries), QUERY_BATCH):
        part = list(queries[lo : lo + QUERY_BATCH])
        results = search_batch([text for _, text in part])
        for (qid, _), hits in zip(part, results):
            n = len(hits)
            if n:
                run[qid] = {h.id: float(n - r) for r, h in enumerate(hits)}
    seconds = time.perf_counter() - start
    qrels_used = {qid: qrels[qid] for qid, _ in queries}
    m = measure(qrels_used, run) if run else {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    return EvalResult(
        ndcg_at_10=m["ndcg@10"],
        recall_at_100=m["recall@100"],
        mrr_at_10=m["mrr@10"],
        queries=len(queries),
        mode=mode,
        queries_per_s=len(queries) / seconds if seconds > 0 else float("inf"),
        seconds=seconds,
        rerank=rerank,
    )
