"""`semindex embed`: documents -> a vector file (.npy + .ids.txt, or Parquet), streamed, no store.

Why a file and not a collection: to compute embeddings once (on a GPU box, say) and
use them elsewhere — another tool, or `semindex import-vectors` on another machine.

* Streaming: records are read, embedded and written a batch at a time, so memory
  stays flat on a corpus larger than RAM. A ``.npy`` is written with a fixed-size
  header holding a placeholder shape, rows appended, and the header rewritten with
  the real row count at the end (the row count of a stream is not known up front);
  Parquet goes through one ``pyarrow.parquet.ParquetWriter`` row group per batch.
* Atomic: everything is written to temporary files next to the output and renamed
  over it only when complete, so a failed or interrupted run never leaves a
  truncated file under the output's name (the ``.ids.txt`` is renamed before the
  ``.npy``, so a ``.npy`` never appears without its ids).
* Ids: the ones ``semindex index`` would store (given, else derived from the
  content): a ``.ids.txt`` beside a ``.npy`` (one per line, row order), or the
  Parquet ``id`` column beside ``vector`` — exactly what ``import-vectors`` reads.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Literal, cast

import click
import numpy as np

from ..errors import InvalidInputError, SemindexError
from .app import cli, echo_json

_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER_BYTES = 128  # magic + version + length + dict; room for a 20-digit row count


def ids_path_for(npy: Path) -> Path:
    """``out.npy`` -> ``out.ids.txt``: where the row ids of a .npy output go."""
    return npy.with_name(npy.name[: -len(npy.suffix)] + ".ids.txt")


def _npy_header(rows: int, dim: int) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    room = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
    body = text.encode("latin-1").ljust(room - 1, b" ") + b"\n"
    if len(body) != room:  # pragma: no cover - a shape with more than ~20 digits per side
        raise InvalidInputError(f"shape ({rows}, {dim}) does not fit a .npy header")
    return _NPY_MAGIC + len(body).to_bytes(2, "little") + body


class _NpyWriter:
    """Appends float32 rows to a .npy (and ids to a .ids.txt); ``close`` fixes the header's row count."""

    def __init__(self, tmp: Path, ids_tmp: Path, dim: int) -> None:
        self.dim = dim
        self.rows = 0
        self.fh: IO[bytes] = open(tmp, "wb")  # noqa: SIM115 - closed in close()
        self.ids: IO[str] = open(ids_tmp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self.fh.write(_npy_header(0, dim))

    def write(self, ids: list[str], vecs: np.ndarray) -> None:
        for i in ids:
            if "\n" in i or "\r" in i:
                raise InvalidInputError(
                    f"id {i[:60]!r} contains a line break: it cannot go in a .ids.txt (write Parquet instead)"
                )
        self.fh.write(np.ascontiguousarray(vecs, dtype="<f4").tobytes())
        self.ids.write("".join(i + "\n" for i in ids))
        self.rows += len(ids)

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(_npy_header(self.rows, self.dim))
        for f in (self.fh, self.ids):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def abort(self) -> None:
        for f in (self.fh, self.ids):
            with contextlib.suppress(OSError):
                f.close()


class _ParquetWriter:
    """One row group per batch: ``id`` (string) and ``vector`` (fixed-size list of float32)."""

    def __init__(self, tmp: Path, dim: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.dim = dim
        self.rows = 0
        self.type = pa.list_(pa.float32(), dim)
        self.schema = pa.schema([("id", pa.string()), ("vector", self.type)])
        self.writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        self.path = tmp

    def write(self, ids: list[str], vecs: np.ndarray) -> None:
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        self.writer.write_table(pa.Table.from_arrays([pa.array(ids, pa.string()), vectors], schema=self.schema))
        self.rows += len(ids)

    def close(self) -> None:
        self.writer.close()
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_vectors(output: Path, dim: int, batches: Iterable[tuple[list[str], np.ndarray]]) -> int:
    """Stream ``batches`` into ``output`` (.npy + .ids.txt, or .parquet) atomically; returns the row count."""
    suffix = output.suffix.lower()
    if suffix not in (".npy", ".parquet", ".pq"):
        raise InvalidInputError(f"--output {output}: expected a .npy or .parquet file name")
    if output.is_dir():
        raise InvalidInputError(f"--output {output} is a directory")
    if not output.parent.is_dir():
        raise InvalidInputError(f"--output {output}: no such directory {output.parent}")
    renames = [(_tmp(output), output)]
    writer: _NpyWriter | _ParquetWriter
    if suffix == ".npy":
        ids_out = ids_path_for(output)
        renames.insert(0, (_tmp(ids_out), ids_out))
        writer = _NpyWriter(renames[1][0], renames[0][0], dim)
    else:
        writer = _ParquetWriter(renames[0][0], dim)
    try:
        for ids, vecs in batches:
            writer.write(ids, vecs)
        writer.close()
        for tmp, final in renames:
            os.replace(tmp, final)
        _fsync_dir(output.parent)
    except BaseException:
        writer.abort()
        for tmp, _ in renames:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    return writer.rows


@cli.command("embed")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path),
              help="FILE.npy (ids go to FILE.ids.txt) or FILE.parquet (columns id, vector).")
@click.option("--model", "-m", default=None, help="Model id or local path (default: all-MiniLM-L6-v2, bundled).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Texts per model forward pass.")
@click.option("--id-field", default=None, help="Field holding the document id (default: _id or id; else derived from content).")
@click.option("--text-field", "text_fields", multiple=True, help="Field(s) to embed, joined by newlines (default: text).")
@click.option("--title-field", default=None, help="Field embedded before the text (default: title when present).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="On a bad record: stop (no output is written), or skip it and count it.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def embed_command(
    sources: tuple[Path, ...],
    output: Path,
    model: str | None,
    device: str | None,
    batch_size: int,
    id_field: str | None,
    text_fields: tuple[str, ...],
    title_field: str | None,
    on_error: str,
    as_json: bool,
) -> None:
    """Embed SOURCE files into a vector file, without a store (same readers and ids as `index`).

    The vectors are L2-normalised float32, one row per document, in reading order.
    The output appears only once it is complete. Load it back with `import-vectors`.

    \b
    Examples:
      semindex embed samples/sample.jsonl --output emb.npy        # + emb.ids.txt
      semindex embed ../shared/data/scifact --output scifact.parquet --device cuda
      semindex import-vectors emb.npy --ids-file emb.ids.txt -c papers
    """
    from ..core import detect_format, embed_records, estimate_total, iter_records, model_info
    from .progress import progress_bar

    if output.suffix.lower() not in (".npy", ".parquet", ".pq"):
        raise InvalidInputError(f"--output {output}: expected a .npy or .parquet file name")
    for src in sources:
        detect_format(src)  # reject a missing or unknown source before loading the model
    total = estimate_total(list(sources))
    info = model_info(model, device)
    records = iter_records(list(sources), id_field=id_field, text_fields=text_fields, title_field=title_field)
    skipped: list[str] = []
    start = time.perf_counter()
    progress_cm, advance = progress_bar(total, "embedding", rate_unit="docs")
    with progress_cm:
        batches = embed_records(records, model, device, batch_size=batch_size, progress=advance, skipped=skipped,
                                on_error=cast(Literal["fail", "skip"], on_error))
        try:
            rows = write_vectors(output, info.dimension, batches)
        except (SemindexError, KeyboardInterrupt):
            click.echo(f"nothing written to {output}", err=True)
            raise
    secs = time.perf_counter() - start
    summary: dict[str, Any] = {
        "output": str(output), "rows": rows, "dimension": info.dimension, "model": info.name,
        "skipped": len(skipped), "seconds": round(secs, 3),
    }
    if output.suffix.lower() == ".npy":
        summary["ids"] = str(ids_path_for(output))
    if as_json:
        echo_json({**summary, "errors": skipped[:20]})
        return
    where = f"{output} (ids in {summary['ids']})" if "ids" in summary else str(output)
    click.echo(f"embedded {rows} documents with {info.name} ({info.dimension}-d) into {where} "
               f"in {secs:.1f} s ({rows / max(secs, 1e-9):.1f} docs/s)" + (f", skipped {len(skipped)}" if skipped else ""))
    for err in skipped[:20]:
        click.echo(f"skipped: {err}", err=True)

