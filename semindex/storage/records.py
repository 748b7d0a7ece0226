"""What a stored row is: the records passed between the store and its callers, and their encoding.

A leaf module (no SQL, no FAISS) so the indexer, search and write hooks can name these
types without importing the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
from sqlalchemy.engine import Connection

from ..errors import InvalidInputError, InvalidNameError
from ..validation import MAX_TEXT_CHARS, has_nul, json_value_problem

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Collection names: safe in a URL path, a file name and a SQL identifier suffix."""
CHUNK = 500  # rows per IN (...) list: well under every driver's parameter limit


def validate_collection_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def chunked(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def encode_embedding(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def decode_embeddings(blobs: Sequence[bytes], dimension: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dimension), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimension).astype(np.float32)


@dataclass(frozen=True)
class CollectionRecord:
    id: int
    name: str
    model: str | None
    dimension: int
    metric: str
    normalize: bool
    index_spec: str
    version: int
    config: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> CollectionRecord:
        m = row._mapping
        return cls(
            id=int(m["id"]),
            name=m["name"],
            model=m["model"],
            dimension=int(m["dimension"]),
            metric=m["metric"],
            normalize=bool(m["normalize"]),
            index_spec=m["index_spec"],
            version=int(m["version"]),
            config=dict(m["config"] or {}),
            created_at=m["created_at"],
        )


@dataclass
class DocWrite:
    """One document to upsert. ``embedding=None`` means 'content unchanged, update metadata only'.

    ``embedding``: one vector ``(d,)`` for a document stored as a single chunk spanning its
    whole text, or ``(n, d)`` for ``n`` chunks whose character ``spans`` are given
    (``text[start:end]`` is each chunk's text).
    """

    doc_id: str
    text: str
    title: str | None
    metadata: dict[str, Any]
    content_hash: str
    embedding: np.ndarray | None
    spans: list[tuple[int, int]] | None = None

    def chunk_spans(self) -> list[tuple[int, int]]:
        return list(self.spans) if self.spans is not None else [(0, len(self.text))]

    def chunk_vectors(self) -> np.ndarray:
        """The embeddings as ``(n_chunks, d)`` float32."""
        assert self.embedding is not None
        arr = np.asarray(self.embedding, dtype=np.float32)
        return arr.reshape(1, -1) if arr.ndim == 1 else arr


@dataclass
class StoredDoc:
    vid: int
    id: str
    text: str
    title: str | None
    metadata: dict[str, Any]
    content_hash: str


@dataclass(frozen=True)
class ChunkRef:
    """A chunk as search sees it: its vector id, its document, and where in the text it lies."""

    chunk_id: int
    doc: StoredDoc
    ordinal: int
    start: int
    end: int

    @property
    def text(self) -> str:
        return self.doc.text[self.start : self.end]


@dataclass
class WriteResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    version: int = 0
    ids: list[str] = field(default_factory=list)


class WriteHook(Protocol):
    """Something derived from the rows that must change in the *same* transaction (e.g. a keyword index).

    Hooks are passed to `Storage` by whoever composes the parts (``semindex.core``); the
    store calls them inside each write transaction, after the rows are written, so a
    rolled-back batch leaves the derived data untouched too. They receive chunk ids: the
    rows of ``chunks`` (joined to their documents) that were written or removed.
    """

    def on_write(
        self,
        conn: Connection,
        collection_id: int,
        upserted: Sequence[int],
        deleted: Sequence[int],
    ) -> None: ...

    def on_drop(self, conn: Connection, collection_id: int) -> None: ...


def check_storable(doc: DocWrite) -> None:
    """Values both backends store alike (the same rules as the API's schemas: semindex/validation.py):
    no NUL characters (PostgreSQL text and jsonb refuse them), and metadata that round-trips as JSON
    (finite numbers, 64-bit integers, bounded nesting, valid Unicode)."""
    for what, value in (("id", doc.doc_id), ("text", doc.text), ("title", doc.title), ("metadata", doc.metadata)):
        if has_nul(value):
            raise InvalidInputError(
                f"document {doc.doc_id!r}: its {what} contains a NUL character, which cannot be stored"
            )
    for what, value in (("text", doc.text), ("title", doc.title)):
        # every write path (documents, vectors-only adds with texts, the CLI, the library) ends here,
        # so one limit holds for all of them; a larger text only makes every search answer larger
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise InvalidInputError(
                f"document {doc.doc_id!r}: its {what} has {len(value):,} characters, over the "
                f"{MAX_TEXT_CHARS:,} limit; split it into several documents"
            )
    problem = json_value_problem(doc.metadata, "its metadata")
    if problem:
        raise InvalidInputError(f"document {doc.doc_id!r}: {problem}, which cannot be stored")
