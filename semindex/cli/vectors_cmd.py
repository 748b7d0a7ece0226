"""`semindex reindex` and `semindex import-vectors`: the vector index itself, and bring-your-own vectors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import InvalidInputError, SemindexError
from .app import cli, echo_json, open_store, stderr_is_tty, store_options


def _params(p: dict[str, Any]) -> str:
    keys = ("nlist", "nprobe", "M", "efSearch", "pq_m", "k_factor", "recall@10")
    shown = [f"{k}={p[k]}" for k in keys if k in p]
    return f" ({', '.join(shown)})" if shown else ""


@cli.command("reindex")
@store_options
@click.option("--index", "spec", default=None, metavar="TYPE|FACTORY",
              help="auto, flat, hnsw, ivf, ivfpq, or a FAISS factory string such as 'IVF256,PQ32' "
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


def _read_ids(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as fh:
        ids = [line.rstrip("\r\n") for line in fh]
    while ids and ids[-1] == "":
        ids.pop()
    for i, v in enumerate(ids, 1):
        if not v:
            raise InvalidInputError(f"{path}:{i}: empty id")
    return ids


def _read_metadata(path: Path | None) -> list[dict[str, Any]] | None:
    """A JSONL file: one JSON object per vector row."""
    if path is None:
        return None
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise InvalidInputError(f"{path}:{i}: not JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise InvalidInputError(f"{path}:{i}: expected a JSON object")
            out.append(obj)
    return out


def _npy_batches(
    path: Path, ids: list[str] | None, batch: int
) -> tuple[int, int, Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]] | None]]]:
    try:
        arr = np.load(path, mmap_mode="r")  # nothing is read until a batch is sliced
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npy file: {exc}") from exc
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: expected a 2-d array (rows x dimension), got shape {arr.shape}")
    n, dim = int(arr.shape[0]), int(arr.shape[1])
    if ids is not None and len(ids) != n:
        raise InvalidInputError(f"--ids-file has {len(ids)} ids but {path} has {n} rows")

    def gen() -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]] | None]]:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            part_ids = ids[lo:hi] if ids is not None else [str(i) for i in range(lo, hi)]
            yield part_ids, np.asarray(arr[lo:hi], dtype=np.float32), None

    return n, dim, gen()


def _parquet_batches(
    path: Path, id_col: str | None, vec_col: str | None, batch: int
) -> tuple[int, int, Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]] | None]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable Parquet file: {exc}") from exc
    schema = pf.schema_arrow
    names = schema.names
    if vec_col is None:
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                 or pa.types.is_large_list(f.type)]
        for cand in ("vector", "embedding", "emb"):
            if cand in lists:
                vec_col = cand
                break
        else:
            if len(lists) != 1:
                raise InvalidInputError(f"{path}: name the vector column with --vector-column (list columns: {lists})")
            vec_col = lists[0]
    if vec_col not in names:
        raise InvalidInputError(f"{path}: no column {vec_col!r} (columns: {names})")
    if id_col is None:
        id_col = next((c for c in ("id", "_id", "doc_id") if c in names), None)
    if id_col is not None and id_col not in names:
        raise InvalidInputError(f"{path}: no id column {id_col!r} (columns: {names})")
    n = pf.metadata.num_rows
    first = next(pf.iter_batches(batch_size=1, columns=[vec_col]), None)
    if first is None or first.num_rows == 0:
        raise InvalidInputError(f"{path}: no rows")
    dim = len(first.column(0)[0].as_py())
    meta_cols = [c for c in names if c not in (vec_col, id_col)]

    def gen() -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]] | None]]:
        row = 0
        for rb in pf.iter_batches(batch_size=batch):
            col = rb.column(rb.schema.get_field_index(vec_col))
            if col.null_count:
                raise InvalidInputError(f"{path}: row {row + col.to_pylist().index(None)}: missing vector")
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            if len(flat) != rb.num_rows * dim:
                raise InvalidInputError(f"{path}: vectors near row {row} are not all of dimension {dim}")
            vecs = flat.reshape(rb.num_rows, dim)
            if id_col is not None:
                ids = [str(v) for v in rb.column(rb.schema.get_field_index(id_col)).to_pylist()]
            else:
                ids = [str(i) for i in range(row, row + rb.num_rows)]
            meta = None
            if meta_cols:
                cols = {c: rb.column(rb.schema.get_field_index(c)).to_pylist() for c in meta_cols}
                meta = [{c: cols[c][i] for c in meta_cols if cols[c][i] is not None} for i in range(rb.num_rows)]
            row += rb.num_rows
            yield ids, vecs, meta

    return n, dim, gen()


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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_vectors_command(
    file: Path, store_path: Path, db_url: str | None, collection: str, ids_file: Path | None,
    metadata_file: Path | None, id_column: str | None, vector_column: str | None, batch_size: int,
    metric: str, spec: str, as_json: bool,
) -> None:
    """Import precomputed vectors from FILE (.npy, or Parquet with an id and a vector column).

    Streams the file in batches (a .npy is memory-mapped; Parquet is read batch by batch),
    upserting by id. A missing collection is created as vectors-only with the file's dimension;
    other Parquet columns become metadata. Search it with `semindex search --query-vectors`.

    \b
    Examples:
      semindex import-vectors emb.npy --ids-file ids.txt -c papers
      semindex import-vectors emb.parquet --id-column doc_id -c papers
    """
    suffix = file.suffix.lower()
    if suffix == ".npy":
        if id_column or vector_column:
            raise InvalidInputError("--id-column/--vector-column are for Parquet files")
        n, dim, batches = _npy_batches(file, _read_ids(ids_file), batch_size)
    elif suffix in (".parquet", ".pq"):
        if ids_file is not None:
            raise InvalidInputError("--ids-file is for .npy files; Parquet files name an --id-column")
        n, dim, batches = _parquet_batches(file, id_column, vector_column, batch_size)
    else:
        raise InvalidInputError(f"{file}: expected a .npy or .parquet file")
    metadata = _read_metadata(metadata_file)
    if metadata is not None and len(metadata) != n:
        raise InvalidInputError(f"--metadata has {len(metadata)} rows but {file} has {n}")
    store = open_store(store_path, db_url, must_exist=False)
    start = time.perf_counter()
    added = updated = unchanged = 0
    created = False
    try:
        if store.storage.get_record(collection) is None:
            coll = store.create_collection(collection, dimension=dim, metric=metric, index=spec, vectors_only=True)
            created = True
        else:
            coll = store.get_collection(collection)
        before = coll.storage.index.spec
        progress, advance = _progress(n)
        row = 0
        with progress:
            try:
                for ids, vecs, meta in batches:
                    if metadata is not None:
                        extra = metadata[row : row + len(ids)]
                        meta = [{**(m or {}), **e} for m, e in zip(meta or [{}] * len(ids), extra)]
                    stats = coll.add_embeddings(ids, vecs, metadata=meta)
                    added += stats.added
                    updated += stats.updated
                    unchanged += stats.unchanged
                    row += len(ids)
                    if advance is not None:
                        advance(len(ids))
            except (SemindexError, KeyboardInterrupt):
                click.echo(f"stopped after {row} rows (those are committed)", err=True)
                raise
        after = coll.storage.index.spec
        info = coll.info()
    finally:
        store.close()
    secs = time.perf_counter() - start
    summary = {
        "collection": collection, "created": created, "rows": row, "added": added, "updated": updated,
        "unchanged": unchanged, "dimension": dim, "seconds": round(secs, 3), "index_type": info.index_type,
        "index_params": info.index_params,
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(
        f"imported {row} vectors into {collection}{' (new, vectors only)' if created else ''}: added {added}, "
        f"updated {updated}, unchanged {unchanged} in {secs:.1f} s ({row / max(secs, 1e-9):.0f} vectors/s)"
    )
    if after != before:
        click.echo(f"index grew from {before} to {after}{_params(info.index_params)}")


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(total: int) -> tuple[Any, Any]:
    if not stderr_is_tty():
        return _NoProgress(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=Console(stderr=True),
    )
    task = progress.add_task("import", total=total)
    return progress, lambda n: progress.advance(task, n)
