"""`semindex eval`: retrieval quality of a collection on a BEIR folder (indexing it first if needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInputError
from .app import cli, echo_json, open_store, store_location_options


def default_collection_name(folder: Path) -> str:
    """The BEIR folder's name, made a valid collection name (``scifact``, ``nfcorpus``...)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-.") or "beir"
    if not name[0].isalnum():
        name = "c" + name
    return name[:64]


@cli.command("eval")
@click.argument("beir_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@store_location_options
@click.option("--collection", "-c", default=None,
              help="Collection to evaluate (default: the BEIR folder's name, e.g. scifact).")
@click.option("--model", "-m", default=None, help="Model for indexing a missing collection (default: all-MiniLM-L6-v2).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--mode", type=click.Choice(["dense", "keyword", "hybrid"]), default="dense", show_default=True,
              help="Retrieval mode.")
@click.option("--rerank", default=None, metavar="MODEL", help="Re-score the top --rerank-top with this cross-encoder.")
@click.option("--rerank-top", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="Candidates the cross-encoder re-scores.")
@click.option("--fusion", type=click.Choice(["rrf", "convex"]), default="rrf", show_default=True,
              help="Hybrid fusion (see semindex search --help).")
@click.option("--alpha", default=None, type=click.FloatRange(0, 1), help="Dense share for --fusion convex.")
@click.option("--split", default="test", show_default=True, help="Which qrels/SPLIT.tsv to evaluate on.")
@click.option("-k", "k", default=100, show_default=True, type=click.IntRange(1, 1000), help="Hits per query.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--dimensions", default=None, type=click.IntRange(1, 65536), metavar="N",
              help="Index a missing collection with the model's first N dims (Matryoshka; see index --help); "
                   "an existing one must have been made with the same N.")
@click.option("--force-dimensions", is_flag=True,
              help="With --dimensions: truncate even a model that does not declare Matryoshka training.")
def eval_command(
    beir_dir: Path,
    store_path: Path,
    db_url: str | None,
    collection: str | None,
    model: str | None,
    device: str | None,
    mode: str,
    rerank: str | None,
    rerank_top: int,
    fusion: str,
    alpha: float | None,
    split: str,
    k: int,
    as_json: bool,
    dimensions: int | None = None,
    force_dimensions: bool = False,
) -> None:
    """Measure nDCG@10, recall@100 and MRR@10 on a BEIR folder (corpus.jsonl, queries.jsonl, qrels/).

    The corpus is indexed into --collection first when that collection is missing or
    empty (records without text are skipped); otherwise the collection is reused as is.

    \b
    Examples:
      semindex eval data/scifact --store /tmp/evalstore
      semindex eval data/scifact --store /tmp/evalstore --mode hybrid --json
    """
    from ..core import detect_format, evaluate, iter_records, load_split

    if detect_format(beir_dir) != "beir":
        raise InvalidInputError(f"{beir_dir} is not a BEIR folder (no corpus.jsonl or corpus.jsonl.gz)")
    queries, qrels = load_split(beir_dir, split)  # bad split or files fail before any indexing
    name = collection or default_collection_name(beir_dir)
    store = open_store(store_path, db_url, must_exist=False, device=device)
    try:
        coll = store.collection(name, model=model, dimensions=dimensions, allow_truncation=force_dimensions)
        if coll.count() == 0:
            click.echo(f"indexing {beir_dir} into collection {name!r} ...", err=True)
            stats = coll.add_records(iter_records([beir_dir]), on_error="skip")
            click.echo(
                f"indexed {stats.added} documents ({stats.failed} skipped) in {stats.seconds:.1f} s", err=True
            )

        def run(texts: list[str]) -> list[list[Any]]:
            return coll.search_batch(texts, k, mode=mode, rerank=rerank, rerank_top=rerank_top,
                                     fusion=fusion, alpha=alpha)

        result = evaluate(run, queries, qrels, mode=mode, rerank=rerank)
    finally:
        store.close()
    if as_json:
        extra = {"fusion": fusion, "alpha": alpha} if mode == "hybrid" else {}
        echo_json({**result.as_dict(), "collection": name, "split": split, **extra})
    else:
        click.echo(f"{name} ({split}, {result.queries} queries, mode {mode}"
                   + (f", rerank {rerank}" if rerank else "") + ")")
        click.echo(f"  nDCG@10     {result.ndcg_at_10:.4f}")
        click.echo(f"  recall@100  {result.recall_at_100:.4f}")
        click.echo(f"  MRR@10      {result.mrr_at_10:.4f}")
        click.echo(f"  {result.queries_per_s:.1f} queries/s")
