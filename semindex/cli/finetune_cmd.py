"""`semindex finetune` and `semindex reembed`: adapt the model to your data, then move a collection to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .app import cli, echo_json, open_store, stderr_is_tty, store_options


@contextlib.contextmanager
def _finetune_progress() -> Iterator[Any]:
    """A bar of training steps showing the last loss and the eval nDCG@10 (on a terminal);
    plain lines for phases and epochs otherwise, so logs still show how training went."""
    if not stderr_is_tty():
        def plain(e: dict[str, Any]) -> None:
            if e["event"] == "phase":
                click.echo(e["phase"] + " ...", err=True)
            elif e["event"] == "epoch":
                click.echo(f"epoch {e['epoch']}: nDCG@10 {e['ndcg@10']:.4f}  recall@100 {e['recall@100']:.4f}"
                           f"  loss {e['loss'] if e['loss'] is not None else '-'}  (best: epoch {e['best_epoch']})",
                           err=True)
        yield plain
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}  nDCG@10 {task.fields[ndcg]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))
    task = progress.add_task("preparing", total=None, loss="-", ndcg="-")

    def rich_cb(e: dict[str, Any]) -> None:
        if e["event"] == "phase":
            progress.update(task, description=e["phase"])
        elif e["event"] == "step":
            progress.update(task, description="training", total=e["total_steps"], completed=e["step"],
                            loss=f"{e['loss']:.3f}")
        elif e["event"] == "epoch":
            progress.update(task, total=e["total_steps"], ndcg=f"{e['ndcg@10']:.4f} (epoch {e['epoch']})")
            progress.console.print(f"epoch {e['epoch']}: nDCG@10 {e['ndcg@10']:.4f}  recall@100 "
                                   f"{e['recall@100']:.4f}  (best: epoch {e['best_epoch']})")

    with progress:
        yield rich_cb


@cli.command("finetune")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the model to (usable as --model DIR).")
@click.option("--base", default=None, help="Model to start from (default: all-MiniLM-L6-v2, bundled).")
@click.option("--split", default="train", show_default=True, help="BEIR qrels split to train on.")
@click.option("--eval-split", default="dev", show_default=True,
              help="BEIR split that picks the best epoch; a held-out tenth of --split when the folder has none.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(2, 4096),
              help="Queries per step; the other passages in a batch are its negatives.")
@click.option("--hard-negatives", default=1, show_default=True, type=click.IntRange(0, 64),
              help="Negatives per pair mined with semindex's hybrid search (0: in-batch negatives only).")
@click.option("--learning-rate", "--lr", "learning_rate", default=3e-5, show_default=True,
              type=click.FloatRange(0, 1, min_open=True))
@click.option("--mine", type=click.Choice(["hybrid", "dense", "keyword"]), default="hybrid", show_default=True,
              help="Search that mines the negatives; keyword needs no encoding of the corpus (cheap on a CPU).")
@click.option("--max-seq-length", default=None, type=click.IntRange(8, 8192),
              help="Truncate training passages to this many tokens (faster); the model keeps its own length.")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps (fp16 on CUDA).")
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same data, same machine: same model.")
@click.option("--i-know", is_flag=True, help="Allow training or selecting on a split named test.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def finetune_command(
    data: Path, output: Path, base: str | None, split: str, eval_split: str, epochs: int, batch_size: int,
    hard_negatives: int, learning_rate: float, mine: str, max_seq_length: int | None, device: str | None,
    seed: int, i_know: bool, overwrite: bool, as_json: bool,
) -> None:
    """Fine-tune the embedding model on DATA: a BEIR folder (corpus, queries, qrels/SPLIT.tsv)
    or a PAIRS.jsonl file of {"query", "positive", "negative"?} lines.

    \b
    Examples:
      semindex finetune data/scifact --output models/scifact
      semindex finetune pairs.jsonl --output models/mine --epochs 2
      semindex index data/scifact --model models/scifact --collection scifact-ft
    """
    from ..finetuning import check_splits, finetune

    check_splits(split, eval_split, i_know=i_know)  # before any model is loaded
    with _finetune_progress() as cb:
        res = finetune(data, output, base=base, split=split, eval_split=eval_split, epochs=epochs,
                       batch_size=batch_size, hard_negatives=hard_negatives, learning_rate=learning_rate,
                       device=device, seed=seed, i_know=i_know, overwrite=overwrite, mine=mine,
                       max_seq_length=max_seq_length, progress=cb)
    if as_json:
        echo_json(res.as_dict())
        return
    b, best = res.base, res.best
    click.echo(f"wrote {res.model_path} (epoch {res.best_epoch} of {res.epochs}, {res.steps} steps, {res.seconds:.0f} s)")
    click.echo(f"  selected on {res.eval_split} ({res.eval_queries} queries): nDCG@10 {b['ndcg@10']:.4f} (base) -> "
               f"{best['ndcg@10']:.4f}")
    click.echo(f"  use it: semindex reembed --collection C --model {res.model_path} --into C-ft")


@cli.command("reembed")
@store_options
@click.option("--model", "-m", required=True, help="Model to re-encode with (id or local path, e.g. a finetune --output).")
@click.option("--into", default=None,
              help="New collection to build (the source is left as it is); default: replace --collection in place.")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--dimensions", default=None, type=click.IntRange(1, 65536), metavar="N",
              help="Keep the new model's first N dims (Matryoshka truncation; see `semindex index --dimensions`).")
@click.option("--force-dimensions", is_flag=True,
              help="With --dimensions: truncate even a model that does not declare Matryoshka training.")
def reembed_command(
    store_path: Path, db_url: str | None, collection: str, model: str, into: str | None, device: str | None,
    batch_size: int, as_json: bool, dimensions: int | None = None, force_dimensions: bool = False,
) -> None:
    """Re-encode a collection's stored texts with another model (ids, titles, metadata kept).

    With --into, the result is a new collection. Without it, the new vectors are built
    in a temporary collection and swapped in at the end: a crash midway leaves the
    original untouched.

    \b
    Examples:
      semindex reembed --collection scifact --model models/scifact --into scifact-ft
      semindex reembed --collection notes --model models/notes
    """
    from ..reembedding import reembed
    from .progress import progress_bar

    store = open_store(store_path, db_url, must_exist=True, device=device)
    try:
        total = store.get_collection(collection).count()
        progress_cm, advance = progress_bar(total, "re-embedding", rate_unit="docs")
        with progress_cm:
            res = reembed(store, collection, model, into=into, batch_size=batch_size, progress=advance,
                          dimensions=dimensions, allow_truncation=force_dimensions)
    finally:
        store.close()
    if as_json:
        echo_json(res.as_dict())
    else:
        where = f"into {res.target!r}" if res.target != res.source else "in place"
        click.echo(f"re-embedded {res.count} documents of {res.source!r} {where} with {res.model} "
                   f"in {res.seconds:.1f} s")
