"""Reading one collection's rows (documents and their chunks): the SQL queries the store's reads, replay and rebuilds share.

No locks, no vector index here: every function is a plain read of the ``documents`` and
``collections`` tables, so it can run in any snapshot the caller chooses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import CollectionNotFoundError
from . import schema as s
from .filters import compile_filter
from .records import ChunkRef, StoredDoc, chunked, decode_embeddings

REBUILD_BATCH = 20_000  # rows per streamed batch when an index is built from SQL


class Rows:
    """The rows of collection ``collection_id`` (named ``name`` in errors)."""

    def __init__(self, engine: Engine, collection_id: int, dimension: int, name: str) -> None:
        self.engine = engine
        self.id = collection_id
        self.dimension = dimension
        self.name = name

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one consistent state across several statements."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _conn(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.engine.connect() as c:
                yield c

    def version(self, conn: Connection | None = None) -> int:
        """The collection's committed version (CollectionNotFoundError once it was dropped)."""
        q = sa.select(s.collections.c.version).where(s.collections.c.id == self.id)
        with self._conn(conn) as c:
            v = c.execute(q).scalar()
        if v is None:
            raise CollectionNotFoundError(self.name)
        return int(v)

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(s.documents).where(s.documents.c.collection_id == self.id)
        where = compile_filter(filter, s.documents.c.metadata)
        if where is not None:
            q = q.where(where)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def existing(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """doc_id -> (content_hash, metadata) for the ids that exist; used to skip unchanged docs."""
        d = s.documents.c
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for part in chunked(list(doc_ids)):
                q = sa.select(d.doc_id, d.content_hash, d.metadata).where(
                    (d.collection_id == self.id) & d.doc_id.in_(part)
                )
                for doc_id, h, meta in conn.execute(q):
                    out[doc_id] = (h, meta)
        return out

    def _docs(self, column: Any, keys: Sequence[Any], conn: Connection | None = None) -> list[StoredDoc]:
        d = s.documents.c
        out: list[StoredDoc] = []
        with self._conn(conn) as c:
            for part in chunked(list(keys)):
                q = sa.select(d.vid, d.doc_id, d.text, d.title, d.metadata, d.content_hash).where(
                    (d.collection_id == self.id) & column.in_(part)
                )
                out += [StoredDoc(r.vid, r.doc_id, r.text, r.title, r.metadata, r.content_hash) for r in c.execute(q)]
        return out

    def get(self, doc_ids: Sequence[str]) -> list[StoredDoc]:
        """The documents with these ids, in the order asked (missing ids left out)."""
        found = {doc.id: doc for doc in self._docs(s.documents.c.doc_id, doc_ids)}
        return [found[i] for i in doc_ids if i in found]

    def fetch(self, vids: Iterable[int], conn: Connection | None = None) -> dict[int, StoredDoc]:
        """vid -> document, for the vids that exist."""
        keys = list(dict.fromkeys(int(v) for v in vids))
        return {doc.vid: doc for doc in self._docs(s.documents.c.vid, keys, conn)}

    def list_ids(self, *, offset: int = 0, limit: int = 100) -> list[str]:
        d = s.documents.c
        q = sa.select(d.doc_id).where(d.collection_id == self.id).order_by(d.vid).offset(offset).limit(limit)
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def count_in(self, conn: Connection) -> int:
        q = sa.select(sa.func.count()).select_from(s.documents).where(s.documents.c.collection_id == self.id)
        return int(conn.execute(q).scalar() or 0)

    def chunk_count(self) -> int:
        q = sa.select(sa.func.count()).select_from(s.chunks).where(s.chunks.c.collection_id == self.id)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def matching_chunks(self, where: sa.ColumnElement[bool]) -> sa.Select[Any]:
        """The chunk ids of documents matching a compiled filter: the pre-filter's candidate set."""
        c, d = s.chunks.c, s.documents.c
        return (
            sa.select(c.id)
            .select_from(s.chunks.join(s.documents, d.vid == c.doc_vid))
            .where((c.collection_id == self.id) & where)
        )

    def chunks(self, chunk_ids: Iterable[int], conn: Connection | None = None) -> dict[int, ChunkRef]:
        """chunk id -> the chunk and its document, for the ids that exist (one read per 500 ids)."""
        c, d = s.chunks.c, s.documents.c
        keys = list(dict.fromkeys(int(v) for v in chunk_ids))
        out: dict[int, ChunkRef] = {}
        with self._conn(conn) as cn:
            for part in chunked(keys):
                q = (
                    sa.select(c.id, c.ordinal, c.start_char, c.end_char, d.vid, d.doc_id, d.text, d.title,
                              d.metadata, d.content_hash)
                    .select_from(s.chunks.join(s.documents, d.vid == c.doc_vid))
                    .where((c.collection_id == self.id) & c.id.in_(part))
                )
                for r in cn.execute(q):
                    doc = StoredDoc(r.vid, r.doc_id, r.text, r.title, r.metadata, r.content_hash)
                    out[int(r.id)] = ChunkRef(int(r.id), doc, int(r.ordinal), int(r.start_char), int(r.end_char))
        return out

    def spans(self, doc_vids: Iterable[int]) -> dict[int, list[tuple[int, int, int]]]:
        """document vid -> its chunks as (chunk id, start, end), in order: for neighbouring context."""
        c = s.chunks.c
        out: dict[int, list[tuple[int, int, int]]] = {}
        with self.engine.connect() as conn:
            for part in chunked(list(dict.fromkeys(int(v) for v in doc_vids))):
                q = (
                    sa.select(c.doc_vid, c.id, c.start_char, c.end_char)
                    .where(c.doc_vid.in_(part))
                    .order_by(c.doc_vid, c.ordinal)
                )
                for vid, cid, start, end in conn.execute(q):
                    out.setdefault(int(vid), []).append((int(cid), int(start), int(end)))
        return out

    def embeddings(self, vids: np.ndarray) -> np.ndarray:
        """The stored float32 vectors of chunks ``vids``, in that order (missing rows are zeros)."""
        d = s.chunks.c
        vids = np.asarray(vids, dtype=np.int64)
        out = np.zeros((len(vids), self.dimension), dtype=np.float32)
        where = {int(v): i for i, v in enumerate(vids.tolist())}
        with self.engine.connect() as conn:
            for part in chunked(vids.tolist()):
                for vid, blob in conn.execute(
                    sa.select(d.id, d.embedding).where((d.collection_id == self.id) & d.id.in_(part))
                ):
                    if len(blob) == 4 * self.dimension:
                        out[where[int(vid)]] = np.frombuffer(blob, dtype="<f4")
        return out


class SQLSource:
    """A collection's rows as an ``autoindex.EmbeddingSource``; the streamed pass records its version."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        self.version: int | None = None

    def count(self) -> int:
        return self.rows.chunk_count()

    def all_ids(self) -> np.ndarray:
        d = s.chunks.c
        with self.rows.engine.connect() as conn:
            ids = conn.execute(sa.select(d.id).where(d.collection_id == self.rows.id).order_by(d.id)).scalars()
            return np.array(ids.all(), dtype=np.int64)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        return self.rows.embeddings(ids)

    def iter_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        d = s.chunks.c
        with self.rows.snapshot() as conn:
            self.version = self.rows.version(conn)
            q = (
                sa.select(d.id, d.embedding)
                .where(d.collection_id == self.rows.id)
                .order_by(d.id)
                .execution_options(yield_per=REBUILD_BATCH)
            )
            for part in conn.execute(q).partitions(REBUILD_BATCH):
                yield (
                    np.array([r[0] for r in part], dtype=np.int64),
                    decode_embeddings([r[1] for r in part], self.rows.dimension),
                )
