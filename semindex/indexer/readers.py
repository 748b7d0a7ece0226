"""Turn source files (jsonl, csv/tsv, parquet, text folders, BEIR) into :class:`Record` objects.

Readers never decide what to do with a bad record: problems that concern one record
are *yielded* as :class:`~semindex.errors.ReadError` instances so the ingestion
pipeline can fail or skip, while problems that make the whole file unusable
(missing, unknown format, empty, corrupt container) are *raised*. Nothing but a
ReadError ever escapes, whatever bytes a file holds.

BEIR folders (corpus, queries, qrels) are read by :mod:`semindex.indexer.beir`; the
line and JSON plumbing every reader shares is in :mod:`semindex.indexer.source_io`.
``read_queries`` and ``read_qrels`` stay importable from here for existing callers.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ReadError
from .beir import BEIR_CORPUS, beir_corpus_path, read_beir_corpus, read_qrels, read_queries
from .source_io import (
    Fields,
    PathArg,
    Record,
    as_str,
    coerce_id,
    count_lines,
    json_objects,
    open_binary,
)

__all__ = [
    "Record",
    "detect_format",
    "estimate_total",
    "iter_records",
    "read_qrels",
    "read_queries",
]

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_TEXT_SUFFIXES = (".txt", ".md")
_PARQUET_BATCH = 1024
_CSV_FIELD_LIMIT = 1 << 26  # the csv module's 128 KiB default rejects long documents


# --------------------------------------------------------------------------- formats


def detect_format(path: PathArg) -> str:
    """Name the reader for ``path`` ("jsonl", "csv", "parquet", "folder", "beir").

    Raises ReadError for a missing path or an extension no reader handles, so the CLI
    can reject a bad argument before any work starts.
    """
    source = os.fspath(path)
    source = source if isinstance(source, str) else os.fsdecode(source)
    p = Path(source)
    if p.is_dir():
        return "beir" if any((p / name).is_file() for name in BEIR_CORPUS) else "folder"
    if not p.exists():
        raise ReadError("no such file or directory", source=source)
    if not p.is_file():
        raise ReadError("not a regular file", source=source)
    name = p.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    suffix = "".join(p.suffixes[-2:]) if name.endswith(".gz") else p.suffix
    raise ReadError(
        f"unknown file format {suffix or '(no extension)'!r}; expected .jsonl, .ndjson, .jsonl.gz, "
        ".csv, .tsv, .parquet, a folder of .txt/.md files or a BEIR folder",
        source=source,
    )


def iter_records(
    sources: Sequence[PathArg],
    *,
    id_field: str | None = None,
    text_fields: Sequence[str] = (),
    title_field: str | None = None,
    metadata_fields: Sequence[str] = (),
) -> Iterator[Record | ReadError]:
    """Yield every record of every source in order; bad records come out as ReadError.

    All sources are checked (exist, known format) before the first record, so a typo in
    the last path fails before anything was indexed.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    fields = Fields(
        id_field=id_field,
        text_fields=tuple(text_fields) or ("text",),
        title_field=title_field,
        metadata_fields=tuple(metadata_fields),
    )
    plan = [(as_str(s), detect_format(s)) for s in sources]
    for source, fmt in plan:
        if fmt == "jsonl":
            yield from _read_jsonl(source, fields)
        elif fmt == "csv":
            yield from _read_csv(source, fields)
        elif fmt == "parquet":
            yield from _read_parquet(source, fields)
        elif fmt == "beir":
            yield from read_beir_corpus(source, fields)
        else:
            yield from _read_folder(source)


def estimate_total(sources: Sequence[PathArg]) -> int | None:
    """Roughly how many records ``iter_records`` will produce, for a progress bar.

    Counts lines/rows without parsing records; returns None rather than raising when a
    source cannot be counted cheaply (missing, corrupt), since the real read reports that.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    total = 0
    for src in sources:
        try:
            source = as_str(src)
            fmt = detect_format(source)
            if fmt == "jsonl":
                total += count_lines(source)
            elif fmt == "beir":
                total += count_lines(beir_corpus_path(source))
            elif fmt == "csv":
                total += _count_csv_rows(source)
            elif fmt == "parquet":
                import pyarrow.parquet as pq

                with pq.ParquetFile(source) as pf:
                    total += pf.metadata.num_rows
            else:
                total += len(_text_files(source))
        except Exception:  # noqa: BLE001 - an estimate must never break ingestion
            return None
    return total


# --------------------------------------------------------------------------- field mapping



def _to_record(obj: dict[str, Any], fields: Fields, source: str, line: int) -> Record | ReadError:
    """Apply the field mapping to one decoded object (jsonl line, csv row, parquet row)."""
    # id
    id_key: str | None
    if fields.id_field is not None:
        id_key = fields.id_field
        if id_key not in obj:
            return ReadError(f"missing id field {id_key!r}", source=source, line=line)
        if obj[id_key] is None:
            return ReadError(f"id field {id_key!r} is null", source=source, line=line)
    else:
        id_key = "_id" if "_id" in obj else "id" if "id" in obj else None
    doc_id: str | None = None
    if id_key is not None and obj[id_key] is not None:
        coerced = coerce_id(obj[id_key], id_key, source, line)
        if isinstance(coerced, ReadError):
            return coerced
        doc_id = coerced

    # text
    parts: list[str] = []
    for name in fields.text_fields:
        if name not in obj:
            return ReadError(f"missing text field {name!r}", source=source, line=line)
        value = obj[name]
        if value is None:
            continue
        if not isinstance(value, str):
            return ReadError(
                f"text field {name!r} must be a string, got {type(value).__name__}",
                source=source,
                line=line,
            )
        if value.strip():
            parts.append(value.strip())
    if not parts:
        names = ", ".join(repr(n) for n in fields.text_fields)
        return ReadError(f"empty text in field {names}", source=source, line=line)
    text = "\n".join(parts)

    # title
    title: str | None = None
    title_key: str | None = None
    if fields.title_field is not None:
        title_key = fields.title_field
        value = obj.get(title_key)
        if value is not None and not isinstance(value, str):
            return ReadError(
                f"title field {title_key!r} must be a string, got {type(value).__name__}",
                source=source,
                line=line,
            )
        title = (value.strip() or None) if value is not None else None
    elif isinstance(obj.get("title"), str):
        title_key = "title"
        title = obj["title"].strip() or None

    # metadata: a nested "metadata" object is flattened in; explicit top-level fields win
    used = {id_key, title_key, *fields.text_fields}
    merged: dict[str, Any] = {}
    nested = obj.get("metadata")
    if isinstance(nested, dict) and "metadata" not in used:
        merged.update(nested)
    for key, value in obj.items():
        if key in used or (key == "metadata" and isinstance(value, dict)):
            continue
        merged[key] = value
    if fields.metadata_fields:
        merged = {k: merged[k] for k in fields.metadata_fields if k in merged}
    return Record(id=doc_id, text=text, title=title, metadata=merged, source=source, line=line)


def _read_jsonl(source: str, fields: Fields) -> Iterator[Record | ReadError]:
    produced = False
    for item in json_objects(source):
        produced = True
        if isinstance(item, ReadError):
            yield item
        else:
            yield _to_record(item[1], fields, source, item[0])
    if not produced:
        raise ReadError("file is empty", source=source)


# --------------------------------------------------------------------------- csv / tsv


def _has_surrogates(value: str) -> bool:
    """True where surrogateescape smuggled in bytes that were not valid UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_csv(source: str, fields: Fields) -> Iterator[Record | ReadError]:
    """Read csv (or tsv) rows; a row that is bad (field count, UTF-8, mapping) is yielded as ReadError.

    Decoding uses surrogateescape so one row with bad bytes is reported on its own line
    instead of aborting the whole file; csv syntax errors do abort (the parser cannot resync).
    """
    delimiter = "\t" if source.lower().endswith(".tsv") else ","
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open_binary(source) as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            while header == []:
                header = next(reader, None)
        except (csv.Error, OSError) as e:
            raise ReadError(f"invalid csv: {e}", source=source, line=reader.line_num or 1) from e
        if header is None:
            raise ReadError("file is empty", source=source)
        header_line = reader.line_num
        if any(_has_surrogates(h) for h in header):
            raise ReadError("header is not valid UTF-8", source=source, line=header_line)
        header = [h.strip() for h in header]
        required = [*fields.text_fields, *([fields.id_field] if fields.id_field else [])]
        missing = [name for name in required if name not in header]
        if missing:
            raise ReadError(
                f"column {missing[0]!r} not in header (columns: {', '.join(header)})",
                source=source,
                line=header_line,
            )
        produced = False
        prev_end = header_line
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, OSError) as e:
                raise ReadError(f"invalid csv: {e}", source=source, line=prev_end + 1) from e
            start, prev_end = prev_end + 1, reader.line_num
            if not row:
                continue  # blank line
            produced = True
            if len(row) != len(header):
                yield ReadError(
                    f"row has {len(row)} fields, header has {len(header)}", source=source, line=start
                )
                continue
            if any(_has_surrogates(v) for v in row):
                yield ReadError("invalid UTF-8 in row", source=source, line=start)
                continue
            yield _to_record(dict(zip(header, row)), fields, source, start)
    if not produced:
        raise ReadError("file is empty", source=source)


def _count_csv_rows(source: str) -> int:
    delimiter = "\t" if source.lower().endswith(".tsv") else ","
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open(source, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = sum(1 for row in csv.reader(f, delimiter=delimiter) if row)
    return max(rows - 1, 0)


# --------------------------------------------------------------------------- parquet


def _read_parquet(source: str, fields: Fields) -> Iterator[Record | ReadError]:
    """Stream a parquet file batch by batch; any pyarrow failure becomes a raised ReadError."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
        names = list(pf.schema_arrow.names)
    except Exception as e:  # pyarrow raises many types for bad files
        raise ReadError(f"invalid parquet file: {e}", source=source) from e
    with pf:
        required = [*fields.text_fields, *([fields.id_field] if fields.id_field else [])]
        missing = [name for name in required if name not in names]
        if missing:
            raise ReadError(
                f"column {missing[0]!r} not in parquet schema (columns: {', '.join(names)})",
                source=source,
            )
        columns: list[str] | None = None
        if fields.metadata_fields:
            wanted = {*required, *fields.metadata_fields, "_id", "id", "title", "metadata"}
            if fields.title_field:
                wanted.add(fields.title_field)
            columns = [n for n in names if n in wanted]
        row_index = 0
        try:
            batches = pf.iter_batches(batch_size=_PARQUET_BATCH, columns=columns)
        except Exception as e:
            raise ReadError(f"invalid parquet file: {e}", source=source) from e
        while True:
            try:
                batch = next(batches, None)
                rows = batch.to_pylist() if batch is not None else None
            except Exception as e:
                raise ReadError(f"corrupt parquet data: {e}", source=source, line=row_index + 1) from e
            if rows is None:
                break
            for row in rows:
                row_index += 1
                yield _to_record(row, fields, source, row_index)
    if row_index == 0:
        raise ReadError("file is empty", source=source)


# --------------------------------------------------------------------------- text folders


def _text_files(folder: str) -> list[str]:
    """Relative posix paths of visible .txt/.md files, sorted so ids and order are reproducible."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(_TEXT_SUFFIXES):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            found.append(Path(rel).as_posix())
    return sorted(found)


def _read_folder(folder: str) -> Iterator[Record | ReadError]:
    files = _text_files(folder)
    if not files:
        raise ReadError("folder has no .txt or .md files", source=folder)
    for rel in files:
        path = os.path.join(folder, *rel.split("/"))
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            yield ReadError(f"cannot read file: {e.strerror or e}", source=path, line=1)
            continue
        try:
            text = raw.decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            yield ReadError(f"invalid UTF-8 at byte {e.start}", source=path, line=line)
            continue
        if not text:
            yield ReadError("empty text", source=path, line=1)
            continue
        yield Record(id=rel, text=text, title=None, metadata={"path": rel}, source=path, line=1)


