"""`semindex search`: one query as a table or JSON lines, or a BEIR queries file in batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import InvalidInputError
from .app import cli, echo_json, open_store, store_options
from .backend_opts import apply_threads, backend_options

if TYPE_CHECKING:
    from ..core import Collection, Hit


def parse_filter_option(text: str | None) -> dict[str, Any] | None:
    """--filter JSON, checked before any store is opened; errors name the option."""
    if text is None:
        return None
    from ..core import parse_filter
    from ..errors import FilterError

    try:
        return parse_filter(text)
    except FilterError as exc:
        msg = str(exc)
        raise FilterError(msg if msg.startswith("--filter") else f"--filter: {msg}") from exc


@cli.command("search")
@click.argument("query", required=False)
@store_options
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Hits per query.")
@click.option("--filter", "filter_json", default=None, help='Metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\'.')
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="BEIR queries.jsonl ({_id, text} per line): batch search, one JSON line per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit per line.")
@click.option("--query-vectors", "query_vectors", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help='A .npy of query vectors (rows): batch search, one JSON line per row '
                                 '{"query_id": "<row>", "hits": [...]}.')
@click.option("--mode", type=click.Choice(["dense", "keyword", "hybrid"]), default="dense", show_default=True,
              help="dense (vectors), keyword (BM25) or hybrid (both, fused by reciprocal rank fusion).")
@click.option("--rerank", default=None, metavar="MODEL",
              help="Re-score the top --rerank-top hits with this cross-encoder (model id or local path).")
@click.option("--rerank-top", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="How many first-stage hits the cross-encoder re-scores.")
@click.option("--fusion", type=click.Choice(["rrf", "convex"]), default="rrf", show_default=True,
              help="Hybrid fusion: reciprocal rank fusion, or alpha*dense + (1-alpha)*keyword on min-max scores.")
@click.option("--alpha", default=None, type=click.FloatRange(0, 1),
              help="Dense share for --fusion convex (default: the value tuned on SciFact train).")
@click.option("--level", type=click.Choice(["document", "chunk"]), default="document", show_default=True,
              help="document: one hit per document (its best chunk's score); chunk: one hit per chunk.")
@click.option("--context-chunks", default=0, show_default=True, type=click.IntRange(0, 8), metavar="N",
              help="Add the best chunk with N neighbours each side as the hit's context.")
@click.option("--score-threshold", default=None, type=float, metavar="X", help="Drop hits scoring below X.")
@click.option("--mmr", is_flag=True, help="Re-select the k hits by maximal marginal relevance (diversity).")
@click.option("--fetch-k", default=None, type=click.IntRange(1, 1000), metavar="N",
              help="--mmr: candidates it chooses from (default 20).")
@click.option("--lambda-mult", default=None, type=click.FloatRange(0, 1), metavar="X",
              help="--mmr: 1 = relevance only, 0 = diversity only (default 0.5).")
@backend_options
def search_command(
    query: str | None,
    store_path: Path,
    db_url: str | None,
    collection: str,
    k: int,
    filter_json: str | None,
    queries_file: Path | None,
    as_json: bool,
    query_vectors: Path | None,
    mode: str,
    rerank: str | None,
    rerank_top: int,
    fusion: str,
    alpha: float | None,
    level: str,
    context_chunks: int,
    score_threshold: float | None,
    mmr: bool,
    fetch_k: int | None,
    lambda_mult: float | None,
    backend: str | None,
    precision: str | None,
    torch_threads: int | None,
) -> None:
    """Search a collection for QUERY (or every query in --queries FILE).

    \b
    Examples:
      semindex search "how do black holes form" -k 3
      semindex search "bread" --filter '{"topic": "cooking"}' --json
      semindex search --queries queries.jsonl -k 100 --json > run.jsonl
      semindex search "sourdough starter" --mode hybrid
    """
    flt = parse_filter_option(filter_json)
    chunk_opts = _chunk_options(level, context_chunks, score_threshold, mmr, fetch_k, lambda_mult)
    if query_vectors is not None:
        if level != "document" or context_chunks or score_threshold is not None or mmr:
            raise InvalidInputError("--level, --context-chunks, --score-threshold and --mmr need a text query")
        if query is not None or queries_file is not None:
            raise InvalidInputError("give one of QUERY, --queries FILE or --query-vectors FILE")
        _vector_batch(store_path, db_url, collection, query_vectors, k, flt)
        return
    if (query is None) == (queries_file is None):
        raise InvalidInputError("give either a QUERY or --queries FILE")
    if query is not None and not query.strip():
        raise InvalidInputError("QUERY is empty")
    apply_threads(torch_threads)
    store = open_store(store_path, db_url, must_exist=True)
    try:
        coll = store.collection(collection, create=False, backend=backend, precision=precision)
        if queries_file is not None:
            _batch(coll, queries_file, k, flt, mode=mode, rerank=rerank, rerank_top=rerank_top,
                   fusion=fusion, alpha=alpha, **chunk_opts)
            return
        assert query is not None
        hits = coll.search(query, k, filter=flt, mode=mode, rerank=rerank, rerank_top=rerank_top,
                           fusion=fusion, alpha=alpha, **chunk_opts)
        if as_json:
            for h in hits:
                row = {"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata,
                       "chunks": [c.as_dict() for c in h.chunks]}
                if h.context is not None:
                    row["context"] = h.context
                echo_json(row)
        else:
            _table(hits)
    finally:
        store.close()


def _batch(coll: Collection, path: Path, k: int, flt: dict[str, Any] | None, **search_opts: Any) -> None:
    from ..core import QUERY_BATCH, read_queries

    queries = read_queries(path)
    for lo in range(0, len(queries), QUERY_BATCH):
        part = queries[lo : lo + QUERY_BATCH]
        results = coll.search_batch([text for _, text in part], k, filter=flt, **search_opts)
        for (qid, _), hits in zip(part, results):
            echo_json({"query_id": qid, "hits": [{"id": h.id, "score": round(h.score, 6),
                                                   "chunks": [_chunk_row(c) for c in h.chunks]} for h in hits]})


def _chunk_row(c: Any) -> dict[str, Any]:
    return {"index": c.index, "start": c.start, "end": c.end, "score": round(c.score, 6)}


def _chunk_options(level: str, context_chunks: int, score_threshold: float | None, mmr: bool,
                   fetch_k: int | None, lambda_mult: float | None) -> dict[str, Any]:
    """The chunk/RAG search keywords, checked up front (fetch-k and lambda-mult only mean something with --mmr)."""
    import math

    from ..core import DEFAULT_MMR_LAMBDA

    if not mmr and (fetch_k is not None or lambda_mult is not None):
        raise InvalidInputError("--fetch-k and --lambda-mult need --mmr")
    if score_threshold is not None and not math.isfinite(score_threshold):
        raise InvalidInputError(f"--score-threshold must be a finite number, got {score_threshold}")
    return {"level": level, "context_chunks": context_chunks, "score_threshold": score_threshold, "mmr": mmr,
            "fetch_k": fetch_k, "lambda_mult": DEFAULT_MMR_LAMBDA if lambda_mult is None else lambda_mult}


def _vector_batch(store_path: Path, db_url: str | None, collection: str, path: Path, k: int,
                  flt: dict[str, Any] | None) -> None:
    """--query-vectors: the batch-search JSON lines, query_id = row number."""
    import numpy as np

    from ..core import QUERY_BATCH, load_query_vectors

    arr = load_query_vectors(path)
    store = open_store(store_path, db_url, must_exist=True)
    try:
        coll = store.get_collection(collection)
        for lo in range(0, len(arr), QUERY_BATCH):
            results = coll.search_vectors(np.asarray(arr[lo : lo + QUERY_BATCH], dtype=np.float32), k, filter=flt)
            for i, hits in enumerate(results):
                echo_json({"query_id": str(lo + i), "hits": [{"id": h.id, "score": round(h.score, 6)} for h in hits]})
    finally:
        store.close()


def _table(hits: list[Hit]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not hits:
        click.echo("no matches")
        return
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("id")
    table.add_column("text", overflow="fold", max_width=80)
    for rank, h in enumerate(hits, 1):
        text = f"{h.title}: {h.text}" if h.title else h.text
        snippet = text if len(text) <= 160 else text[:157] + "..."
        table.add_row(str(rank), f"{h.score:.4f}", h.id, snippet)
    Console(soft_wrap=False, width=None).print(table)
