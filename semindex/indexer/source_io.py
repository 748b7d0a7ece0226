"""The low-level parts every source reader shares: bytes and lines (gzip-aware), JSON objects, ids.

Both :mod:`semindex.indexer.readers` (document sources) and :mod:`semindex.indexer.beir`
(BEIR corpora, queries and qrels) read through these, so a file's problems are reported
the same way everywhere: a problem with one line is a :class:`~semindex.errors.ReadError`
*yielded* for that line (the caller fails or skips it), a problem with the whole file is
*raised*.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ReadError

PathArg = str | os.PathLike[str]

CHUNK = 1 << 20  # bytes per read when counting lines


@dataclass(slots=True)
class Record:
    """One document as read from a source, before ids are derived or text is embedded."""

    id: str | None  # None -> the pipeline derives an id from the content
    text: str  # never empty
    title: str | None
    metadata: dict[str, Any]
    source: str  # the file path as given
    line: int  # 1-based line (jsonl), row start line (csv), row index + 1 (parquet), 1 (text file)


@dataclass(frozen=True, slots=True)
class Fields:
    """How top-level fields map onto a Record; shared by jsonl, csv and parquet."""

    id_field: str | None
    text_fields: tuple[str, ...]
    title_field: str | None
    metadata_fields: tuple[str, ...]


def as_str(path: PathArg) -> str:
    value = os.fspath(path)
    return value if isinstance(value, str) else os.fsdecode(value)


def coerce_id(value: Any, field: str, source: str, line: int) -> str | ReadError:
    """Ids must be non-empty strings; ints (and integral floats from parquet/pandas) are converted."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        return str(value)
    elif isinstance(value, float) and value.is_integer():
        return str(int(value))
    elif isinstance(value, str):
        if value.strip():
            return value
        return ReadError(f"empty id in field {field!r}", source=source, line=line)
    return ReadError(
        f"id field {field!r} must be a string or an integer, got {type(value).__name__}",
        source=source,
        line=line,
    )


def open_binary(source: str) -> io.BufferedReader | gzip.GzipFile:
    """Open plain or gzip files as bytes; an unopenable file is a file-level error."""
    try:
        if source.lower().endswith(".gz"):
            return gzip.open(source, "rb")
        return open(source, "rb")
    except OSError as e:
        raise ReadError(f"cannot open file: {e.strerror or e}", source=source) from e


def raw_lines(source: str) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw bytes) so decoding errors stay local to one line.

    gzip problems (bad header, truncation, CRC) surface on read; they are raised as one
    ReadError at the line where they happened, after the earlier lines were yielded.
    """
    with open_binary(source) as f:
        lineno = 0
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as e:
                kind = "corrupt or truncated gzip" if source.lower().endswith(".gz") else "cannot read"
                raise ReadError(f"{kind}: {e}", source=source, line=lineno + 1) from e
            if not raw:
                return
            lineno += 1
            yield lineno, raw


def json_lines(source: str) -> Iterator[tuple[int, Any] | ReadError]:
    """Decode each non-blank line to a JSON value, yielding ReadError for lines that do not decode."""
    for lineno, raw in raw_lines(source):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield ReadError(f"invalid UTF-8 at byte {e.start}", source=source, line=lineno)
            continue
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            yield ReadError(f"invalid JSON: {e.msg} (column {e.colno})", source=source, line=lineno)
            continue
        except (ValueError, RecursionError) as e:
            yield ReadError(f"invalid JSON: {e}", source=source, line=lineno)
            continue
        yield lineno, value


def json_objects(source: str) -> Iterator[tuple[int, dict[str, Any]] | ReadError]:
    for item in json_lines(source):
        if isinstance(item, ReadError):
            yield item
            continue
        lineno, value = item
        if not isinstance(value, dict):
            yield ReadError(f"expected a JSON object, got {json_type(value)}", source=source, line=lineno)
            continue
        yield lineno, value


def json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def count_lines(source: str) -> int:
    """Newline count (plus an unterminated last line): an upper bound that ignores blank lines."""
    count = 0
    last = b"\n"
    with open_binary(source) as f:
        while chunk := f.read(CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
