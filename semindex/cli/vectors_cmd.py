"""`semindex reindex` and `semindex import-vectors`: the vector index itself, and bring-your-own vectors."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click

from ..errors import SemindexError
from .app import cli, echo_json, open_store, store_options
from .format import params_suffix as _params
from .progress import progress_bar


@cli.command("reindex")
@store_options
@click.option("--index", "spec", default=None, metavar="TYPE|FACTORY",
              help="auto, flat, hnsw, ivf, ivfpq, sq8, binary, or a FAISS factory string such as 'IVF256,PQ32' "
                   "(default: the collection's current choice).")
@click.option("--target-recall", type=click.FloatRange(0.01, 1.0), default=None,
              help="recall@10 the search parameters (nprobe, efSearch) are tuned to [default: 0.95].")
@click.option("--memory-budget", default=None, metavar="SIZE",
              help="Index memory the auto policy may use, e.g. 4G (default: half the RAM).")
@click.option("--index-device", "device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="Where flat/IVF searches and IVF training run (auto: GPU when faiss sees one).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reindex_command(
    store_path: Path, db_url: str | None, collection: str, spec: str | None, target_recall: float | None,
    memory_budget: str | None, device: str | None, as_json: bool,
) -> None:
    """Rebuild a collection's vector index from the embeddings stored in SQL (nothing is re-encoded).

    The new index is trained on a sample, filled from every stored vector, tuned to the
    target recall, checkpointed, and swapped in atomically; searches keep working meanwhile
    in other processes (they see the old checkpoint until the new one is in place).

    \b
    Examples:
      semindex reindex --index hnsw
      semindex reindex --index ivfpq --target-recall 0.9
      semindex reindex --index 'IVF1024,PQ32'
    """
    store = open_store(store_path, db_url, must_exist=True)
    try:
        rep = store.get_collection(collection).reindex(
            spec, target_recall=target_recall, memory_budget=memory_budget, device=device
        )
    finally:
        store.close()
    if as_json:
        echo_json(rep)
        return
    old, new = rep["old"], rep["new"]
    policy = f" [policy {new['policy']}]" if new["policy"] != new["type"] else ""
    click.echo(
        f"{collection}: {old['type']}{_params(old['params'])} -> {new['type']}{_params(new['params'])}{policy}, "
        f"{rep['count']} vectors in {rep['seconds']:.1f} s"
    )


# -- import-vectors -------------------------------------------------------------------------


@cli.command("import-vectors")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@store_options
@click.option("--ids-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=".npy only: one id per line, in row order (default: the row numbers 0, 1, ...).")
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSONL, one object per row, stored as each vector's metadata.")
@click.option("--id-column", default=None, help="Parquet: the id column (default: id, _id or doc_id; else row numbers).")
@click.option("--vector-column", default=None, help="Parquet: the list<float> column (default: vector/embedding, or the only list column).")
@click.option("--batch-size", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Rows per transaction.")
@click.option("--metric", type=click.Choice(["cosine", "dot", "l2"]), default="cosine", show_default=True,
              help="For a new collection: how vectors compare (cosine normalises them).")
@click.option("--index", "spec", default="auto", show_default=True, help="For a new collection: the index type.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: once the rows are committed, an IVF / IVF-PQ index is rebuilt with its adds in Ray "
                   "tasks (pip install 'semindex[ray]'); other index types are built here either way.")
@click.option("--ray-address", default=None,
              help="Ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); default: start one here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_vectors_command(
    file: Path, store_path: Path, db_url: str | None, collection: str, ids_file: Path | None,
    metadata_file: Path | None, id_column: str | None, vector_column: str | None, batch_size: int,
    metric: str, spec: str, engine: str, ray_address: str | None, as_json: bool,
) -> None:
    """Import precomputed vectors from FILE (.npy, or Parquet with an id and a vector column).

    Streams the file in batches (a .npy is memory-mapped; Parquet is read batch by batch),
    upserting by id. A missing collection is created as vectors-only with the file's dimension;
    other Parquet columns become metadata. Search it with `semindex search --query-vectors`.

    \b
    Examples:
      semindex import-vectors emb.npy --ids-file ids.txt -c papers
      semindex import-vectors emb.parquet --id-column doc_id -c papers
      semindex import-vectors emb.npy -c papers --index ivfpq --engine ray
    """
    from ..core import VectorImportStats, open_vector_file, ray_index_builder

    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    # the file is checked (options, shape, row counts) before the store is opened or created,
    # and Ray (extra installed, cluster reachable) before any row is written
    vf = open_vector_file(file, ids_file=ids_file, metadata_file=metadata_file, id_column=id_column,
                          vector_column=vector_column, batch_size=batch_size)
    with contextlib.ExitStack() as ray_session:
        build = ray_session.enter_context(ray_index_builder(ray_address)) if engine == "ray" else None
        store = open_store(store_path, db_url, must_exist=False)
        start = time.perf_counter()
        stats = VectorImportStats(collection=collection)
        try:
            progress, advance = progress_bar(vf.rows, "importing")
            with progress:
                try:
                    store.import_vectors(collection, vf, metric=metric, index=spec, progress=advance, stats=stats,
                                         build_index=build)
                except (SemindexError, KeyboardInterrupt):
                    click.echo(f"stopped after {stats.rows} rows (those are committed)", err=True)
                    raise
            info = store.get_collection(collection).info()
        finally:
            store.close()
    secs = time.perf_counter() - start
    row, created = stats.rows, stats.created
    summary = {
        "collection": collection, "created": created, "rows": row, "added": stats.added, "updated": stats.updated,
        "unchanged": stats.unchanged, "dimension": stats.dimension, "seconds": round(secs, 3),
        "index_type": info.index_type, "index_params": info.index_params,
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(
        f"imported {row} vectors into {collection}{' (new, vectors only)' if created else ''}: added {stats.added}, "
        f"updated {stats.updated}, unchanged {stats.unchanged} in {secs:.1f} s ({row / max(secs, 1e-9):.0f} vectors/s)"
    )
    if stats.index_after != stats.index_before:
        click.echo(f"index grew from {stats.index_before} to {stats.index_after}{_params(info.index_params)}")
