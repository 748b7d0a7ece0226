"""Precomputed vectors from files: ``.npy`` (plus an ids file) or Parquet, and a JSONL of metadata.

These readers are the bring-your-own-vectors counterpart of :mod:`semindex.indexer.readers`:
they stream a file in batches of (ids, float32 vectors, metadata) without loading it whole
(a ``.npy`` is memory-mapped; Parquet is read batch by batch), and they check everything
that can be checked up front (shape, row counts, column names) before the first batch, so a
bad file fails before anything is written. Every problem is an
:class:`~semindex.errors.InvalidInputError` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "NPY_SUFFIXES",
    "PARQUET_SUFFIXES",
    "VectorBatch",
    "VectorFile",
    "load_query_vectors",
    "open_vector_file",
    "read_ids",
    "read_metadata",
]

NPY_SUFFIXES = (".npy",)
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_BATCH_ROWS = 10_000
# Parquet vector columns are found by these names before falling back to the only list column.
_VECTOR_COLUMNS = ("vector", "embedding", "emb")
_ID_COLUMNS = ("id", "_id", "doc_id")

PathArg = str | os.PathLike[str]

# (ids, vectors (rows x dimension, float32), metadata per row or None)
VectorBatch = tuple[list[str], np.ndarray, list[dict[str, Any]] | None]


@dataclass
class VectorFile:
    """An opened vector file: its size, known before any row is read, and its batches (read once)."""

    path: Path
    rows: int
    dimension: int
    batches: Iterator[VectorBatch]


def read_ids(path: PathArg | None) -> list[str] | None:
    """One id per line, in row order; trailing blank lines are ignored, an empty id inside is an error."""
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


def read_metadata(path: PathArg | None) -> list[dict[str, Any]] | None:
    """A JSONL file: one JSON object per vector row (blank lines skipped)."""
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


def open_vector_file(
    path: PathArg,
    *,
    ids_file: PathArg | None = None,
    metadata_file: PathArg | None = None,
    id_column: str | None = None,
    vector_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
) -> VectorFile:
    """Open a ``.npy`` or Parquet file of vectors for a batched import.

    ``.npy``: a 2-d array; ids come from ``ids_file`` (one per line) or are the row numbers.
    Parquet: ``vector_column`` (default: vector/embedding/emb, or the only list column) and
    ``id_column`` (default: id, _id or doc_id, else row numbers); the other columns become
    metadata. ``metadata_file`` (JSONL, one object per row) is merged over that metadata.
    The checks that need no data (options, shapes, row counts) run here, before any batch.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in NPY_SUFFIXES:
        if id_column or vector_column:
            raise InvalidInputError("--id-column/--vector-column are for Parquet files")
        n, dim, batches = _npy_batches(file, read_ids(ids_file), batch_size)
    elif suffix in PARQUET_SUFFIXES:
        if ids_file is not None:
            raise InvalidInputError("--ids-file is for .npy files; Parquet files name an --id-column")
        n, dim, batches = _parquet_batches(file, id_column, vector_column, batch_size)
    else:
        raise InvalidInputError(f"{file}: expected a .npy or .parquet file")
    metadata = read_metadata(metadata_file)
    if metadata is not None:
        if len(metadata) != n:
            raise InvalidInputError(f"--metadata has {len(metadata)} rows but {file} has {n}")
        batches = _with_metadata(batches, metadata)
    return VectorFile(path=file, rows=n, dimension=dim, batches=batches)


def load_query_vectors(path: PathArg) -> np.ndarray:
    """Query vectors from a ``.npy`` (one row per query; a 1-d array is one query), memory-mapped."""
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npy file: {exc}") from exc
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: expected a 2-d array of query vectors, got shape {arr.shape}")
    return arr


def _with_metadata(batches: Iterator[VectorBatch], metadata: list[dict[str, Any]]) -> Iterator[VectorBatch]:
    """Merge the metadata file's rows over each batch's own (Parquet column) metadata."""
    row = 0
    for ids, vecs, meta in batches:
        extra = metadata[row : row + len(ids)]
        merged = [{**(m or {}), **e} for m, e in zip(meta or [{}] * len(ids), extra)]
        row += len(ids)
        yield ids, vecs, merged


def _npy_batches(path: Path, ids: list[str] | None, batch: int) -> tuple[int, int, Iterator[VectorBatch]]:
    try:
        arr = np.load(path, mmap_mode="r")  # nothing is read until a batch is sliced
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npy file: {exc}") from exc
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: expected a 2-d array (rows x dimension), got shape {arr.shape}")
    n, dim = int(arr.shape[0]), int(arr.shape[1])
    if ids is not None and len(ids) != n:
        raise InvalidInputError(f"--ids-file has {len(ids)} ids but {path} has {n} rows")

    def gen() -> Iterator[VectorBatch]:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            part_ids = ids[lo:hi] if ids is not None else [str(i) for i in range(lo, hi)]
            yield part_ids, np.asarray(arr[lo:hi], dtype=np.float32), None

    return n, dim, gen()


def _parquet_batches(
    path: Path, id_col: str | None, vec_col: str | None, batch: int
) -> tuple[int, int, Iterator[VectorBatch]]:
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
        for cand in _VECTOR_COLUMNS:
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
        id_col = next((c for c in _ID_COLUMNS if c in names), None)
    if id_col is not None and id_col not in names:
        raise InvalidInputError(f"{path}: no id column {id_col!r} (columns: {names})")
    n = pf.metadata.num_rows
    first = next(pf.iter_batches(batch_size=1, columns=[vec_col]), None)
    if first is None or first.num_rows == 0:
        raise InvalidInputError(f"{path}: no rows")
    dim = len(first.column(0)[0].as_py())
    meta_cols = [c for c in names if c not in (vec_col, id_col)]
    vector_col: str = vec_col

    def gen() -> Iterator[VectorBatch]:
        row = 0
        for rb in pf.iter_batches(batch_size=batch):
            col = rb.column(rb.schema.get_field_index(vector_col))
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
