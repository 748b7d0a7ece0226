"""BEIR folders: the corpus, the queries and the relevance judgements (qrels) of each split.

A BEIR folder holds ``corpus.jsonl[.gz]`` (``_id``, ``title``, ``text``, ``metadata``),
``queries.jsonl[.gz]`` and ``qrels/<split>.tsv``. The corpus is read like any other
document source (bad records are yielded as ReadErrors, for the pipeline to fail or
skip); queries and qrels are evaluation inputs, where the first bad line raises, since a
silently dropped query would change the measured figures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, ReadError
from .source_io import Fields, PathArg, Record, as_str, coerce_id, json_objects, raw_lines

__all__ = [
    "BEIR_CORPUS",
    "beir_corpus_path",
    "load_split",
    "qrels_path",
    "read_beir_corpus",
    "read_qrels",
    "read_queries",
]

BEIR_CORPUS = ("corpus.jsonl", "corpus.jsonl.gz")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def beir_corpus_path(folder: str) -> str:
    """The corpus file of a BEIR folder (corpus.jsonl, or its gzip)."""
    for name in BEIR_CORPUS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ReadError("no corpus.jsonl or corpus.jsonl.gz in BEIR folder", source=folder)


def read_beir_corpus(folder: str, fields: Fields) -> Iterator[Record | ReadError]:
    """BEIR has a fixed schema (_id, title, text, metadata); only ``metadata_fields`` applies.

    A document with empty text but a title (Cranfield has some) is kept with the title as
    its text, because dropping it would break qrels that point at it.
    """
    source = beir_corpus_path(folder)
    produced = False
    for item in json_objects(source):
        produced = True
        if isinstance(item, ReadError):
            yield item
            continue
        line, obj = item
        if "_id" not in obj or obj["_id"] is None:
            yield ReadError("missing id field '_id'", source=source, line=line)
            continue
        doc_id = coerce_id(obj["_id"], "_id", source, line)
        if isinstance(doc_id, ReadError):
            yield doc_id
            continue
        text, title = obj.get("text"), obj.get("title")
        if text is not None and not isinstance(text, str):
            yield ReadError(
                f"text field 'text' must be a string, got {type(text).__name__}", source=source, line=line
            )
            continue
        if title is not None and not isinstance(title, str):
            yield ReadError(
                f"title field 'title' must be a string, got {type(title).__name__}", source=source, line=line
            )
            continue
        text = (text or "").strip()
        title = (title or "").strip() or None
        if not text:
            if title is None:
                yield ReadError("empty text and title", source=source, line=line)
                continue
            text, title = title, None
        metadata: dict[str, Any] = {}
        nested = obj.get("metadata")
        if isinstance(nested, dict):
            metadata.update(nested)
        for key, value in obj.items():
            if key not in ("_id", "text", "title") and not (key == "metadata" and isinstance(value, dict)):
                metadata[key] = value
        if fields.metadata_fields:
            metadata = {k: metadata[k] for k in fields.metadata_fields if k in metadata}
        yield Record(id=doc_id, text=text, title=title, metadata=metadata, source=source, line=line)
    if not produced:
        raise ReadError("file is empty", source=source)


def read_queries(path: PathArg) -> list[tuple[str, str]]:
    """Read BEIR ``queries.jsonl`` (or a BEIR folder) as [(query id, text)] in file order.

    Evaluation needs every query, so the first bad line raises instead of being skipped.
    """
    source = as_str(path)
    if os.path.isdir(source):
        for name in ("queries.jsonl", "queries.jsonl.gz"):
            if os.path.isfile(os.path.join(source, name)):
                source = os.path.join(source, name)
                break
        else:
            raise ReadError("no queries.jsonl in folder", source=source)
    elif not os.path.exists(source):
        raise ReadError("no such file or directory", source=source)
    queries: list[tuple[str, str]] = []
    for item in json_objects(source):
        if isinstance(item, ReadError):
            raise item
        line, obj = item
        key = "_id" if "_id" in obj else "id"  # plain {"id", "text"} query files work too
        if obj.get(key) is None:
            raise ReadError("missing query id field '_id'", source=source, line=line)
        qid = coerce_id(obj[key], key, source, line)
        if isinstance(qid, ReadError):
            raise qid
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ReadError("query has no text", source=source, line=line)
        queries.append((qid, text.strip()))
    if not queries:
        raise ReadError("file is empty", source=source)
    return queries


def read_qrels(path: PathArg, split: str = "test") -> dict[str, dict[str, int]]:
    """Read BEIR qrels (``query-id\\tcorpus-id\\tscore``) as {query id: {doc id: grade}}.

    The header is optional and TREC's 4-column ``qid 0 docid grade`` is accepted too, since
    both appear in the wild. A BEIR folder means its ``qrels/SPLIT.tsv`` (see :func:`qrels_path`).
    """
    source = as_str(path)
    if os.path.isdir(source):
        source = str(qrels_path(source, split))
    elif not os.path.isfile(source):
        raise ReadError("no such file or directory", source=source)
    qrels: dict[str, dict[str, int]] = {}
    for lineno, raw in raw_lines(source):
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise ReadError(f"invalid UTF-8 at byte {e.start}", source=source, line=lineno) from e
        text = text.rstrip("\r\n").strip()
        if not text:
            continue
        parts = text.split("\t") if "\t" in text else text.split()
        parts = [p.strip() for p in parts]
        if lineno == 1 and parts and parts[0].lower() in ("query-id", "query_id", "qid", "query"):
            continue
        if len(parts) == 3:
            qid, did, grade = parts
        elif len(parts) == 4:
            qid, _, did, grade = parts
        else:
            raise ReadError(
                f"expected 3 columns (query-id, corpus-id, score), got {len(parts)}",
                source=source,
                line=lineno,
            )
        try:
            score = int(grade)
        except ValueError:
            try:
                as_float = float(grade)
            except ValueError:
                as_float = float("nan")
            if not as_float.is_integer():
                raise ReadError(f"score {grade!r} is not an integer", source=source, line=lineno) from None
            score = int(as_float)
        if not qid or not did:
            raise ReadError("empty query or corpus id", source=source, line=lineno)
        qrels.setdefault(qid, {})[did] = score
    if not qrels:
        raise ReadError("file is empty", source=source)
    return qrels


def qrels_path(folder: PathArg, split: str) -> Path:
    """``folder/qrels/<split>.tsv``; a split name that is not a plain file name, or a missing file, is an error."""
    if not _SPLIT_NAME.fullmatch(split) or ".." in split:
        raise InvalidInputError(f"invalid split name {split!r}")
    p = Path(folder) / "qrels" / f"{split}.tsv"
    if not p.is_file():
        have = sorted(x.stem for x in (Path(folder) / "qrels").glob("*.tsv"))
        raise InvalidInputError(
            f"no qrels for split {split!r} in {folder} (have: {', '.join(have) or 'none'})"
        )
    return p


def load_split(folder: PathArg, split: str) -> tuple[list[tuple[str, str]], dict[str, dict[str, int]]]:
    """The split's queries (those with qrels, in file order) and its qrels."""
    qrels = read_qrels(qrels_path(folder, split))
    queries = [(qid, text) for qid, text in read_queries(folder) if qid in qrels]
    if not queries:
        raise InvalidInputError(f"no query in {folder} has qrels in split {split!r}")
    return queries, qrels
