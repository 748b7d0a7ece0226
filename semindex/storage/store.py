"""Keeps SQL and the vector index in step.

The rules, in the order they matter when something goes wrong:

1. A write is one SQL transaction: bump ``collections.version`` (this takes
   the collection's write lock), write rows with their embeddings, append
   the touched vector ids to ``changes`` under that version, commit. Only
   then is the in-memory index updated. A crash before the commit leaves
   nothing; after it, the change log has what the index lacks.
2. The in-memory index records the version it reflects. Before every search
   (and after every write) it is brought forward by replaying ``changes``
   past that version, read in one snapshot with the rows themselves. That is
   also how a process sees what another process committed.
3. The index on disk is a checkpoint (file + manifest naming its version),
   written atomically now and then and on close; opening loads it and
   replays the tail. A missing or unreadable checkpoint is rebuilt from SQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    InvalidNameError,
    StorageError,
)
from . import schema as s
from .filters import compile_filter
from .vectors import (
    Manifest,
    VectorIndex,
    as_vectors,
    build_index,
    faiss_metric,
    load_index,
    write_json_atomic,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CHUNK = 500  # rows per IN (...) list: well under every driver's parameter limit
EXACT_MAX = 4096  # a filter matching at most this many rows is scored exactly from SQL
CHECKPOINT_EVERY_OPS = 50_000  # vector changes before the checkpoint is rewritten


def validate_collection_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def encode_embedding(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def decode_embeddings(blobs: Sequence[bytes], dimension: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dimension), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimension).astype(np.float32)


def chunked(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class WriteHook(Protocol):
    """Something derived from the rows that must change in the *same* transaction (e.g. a keyword index)."""

    def on_write(
        self,
        conn: Connection,
        coll: CollectionStorage,
        upserted: list[tuple[int, DocWrite]],
        deleted_vids: list[int],
    ) -> None: ...

    def on_drop(self, conn: Connection, collection_id: int) -> None: ...


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
    """One row to upsert. ``embedding=None`` means 'content unchanged, update metadata only'."""

    doc_id: str
    text: str
    title: str | None
    metadata: dict[str, Any]
    content_hash: str
    embedding: np.ndarray | None


@dataclass
class StoredDoc:
    vid: int
    id: str
    text: str
    title: str | None
    metadata: dict[str, Any]
    content_hash: str


@dataclass
class WriteResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    version: int = 0
    ids: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    collection: str
    rows: int
    vectors: int
    missing_in_index: list[str] = field(default_factory=list)
    extra_in_index: list[int] = field(default_factory=list)
    bad_embeddings: list[str] = field(default_factory=list)
    mismatched_vectors: list[str] = field(default_factory=list)
    checkpoint: str = "ok"

    @property
    def ok(self) -> bool:
        return not (
            self.missing_in_index
            or self.extra_in_index
            or self.bad_embeddings
            or self.mismatched_vectors
            or self.checkpoint.startswith("unreadable")
        )

    def summary(self) -> str:
        if self.ok:
            return (
                f"{self.collection}: ok ({self.rows} documents, {self.vectors} vectors, "
                f"checkpoint {self.checkpoint})"
            )
        parts = []
        if self.missing_in_index:
            parts.append(f"{len(self.missing_in_index)} rows without a vector (e.g. {self.missing_in_index[:3]})")
        if self.extra_in_index:
            parts.append(f"{len(self.extra_in_index)} vectors without a row (e.g. {self.extra_in_index[:3]})")
        if self.bad_embeddings:
            parts.append(f"{len(self.bad_embeddings)} rows with a malformed embedding (e.g. {self.bad_embeddings[:3]})")
        if self.mismatched_vectors:
            parts.append(
                f"{len(self.mismatched_vectors)} index vectors differ from SQL (e.g. {self.mismatched_vectors[:3]})"
            )
        if self.checkpoint.startswith("unreadable"):
            parts.append(f"checkpoint {self.checkpoint}")
        return f"{self.collection}: DRIFT: " + "; ".join(parts)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and transactions SQLAlchemy controls (the pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let BEGIN below be the only transaction control
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(
                url, connect_args={"timeout": 60, "check_same_thread": False}, pool_pre_ping=False
            )
            _sqlite_setup(engine)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        hint = " (for PostgreSQL: pip install 'semindex[postgres]')" if "postgres" in url else ""
        raise ConfigError(f"cannot use database URL {url!r}: {exc}{hint}") from exc
    return engine


class Storage:
    """A store: one SQL database plus a folder of index checkpoints."""

    def __init__(self, path: str | os.PathLike[str], *, db_url: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create store folder {self.path}: {exc.strerror}") from exc
        if self.path.exists() and not self.path.is_dir():
            raise StorageError(f"store path {self.path} is not a folder")
        self.db_url = db_url or f"sqlite:///{self.path / 'semindex.db'}"
        self.engine = make_engine(self.db_url)
        self.index_root = self.path / "indexes"
        self._collections: dict[str, CollectionStorage] = {}
        self._lock = threading.RLock()
        # Derived tables kept in step inside each write transaction.
        self.hooks: list[WriteHook] = []
        try:
            s.metadata_obj.create_all(self.engine, checkfirst=True)
            self.store_id = self._store_id()
        except sa.exc.OperationalError as exc:
            raise StorageError(f"cannot open database {self._safe_url()}: {exc.orig}") from exc
        except sa.exc.IntegrityError:
            # two processes created the schema at once; the other one won
            self.store_id = self._store_id()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.db_url).render_as_string(hide_password=True)

    def _store_id(self) -> str:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(s.meta_table.c.value).where(s.meta_table.c.key == "store_id")
            ).first()
            if row:
                return str(row[0])
            sid = uuid.uuid4().hex
            conn.execute(
                s.meta_table.insert(),
                [{"key": "store_id", "value": sid}, {"key": "schema_version", "value": str(s.SCHEMA_VERSION)}],
            )
            return sid

    # -- collections -------------------------------------------------------

    def get_record(self, name: str) -> CollectionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.collections).where(s.collections.c.name == name)).first()
        return CollectionRecord.from_row(row) if row else None

    def list_records(self) -> list[CollectionRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s.collections).order_by(s.collections.c.name)).all()
        return [CollectionRecord.from_row(r) for r in rows]

    def create_collection(
        self,
        name: str,
        *,
        model: str | None,
        dimension: int,
        metric: str = "cosine",
        normalize: bool = True,
        index_spec: str = "flat",
        config: Mapping[str, Any] | None = None,
    ) -> CollectionRecord:
        validate_collection_name(name)
        faiss_metric(metric)
        if not isinstance(dimension, int) or dimension <= 0:
            raise ConfigError(f"dimension must be a positive integer, got {dimension!r}")
        build_index(index_spec, dimension, metric)  # validates the spec
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    s.collections.insert().values(
                        name=name,
                        model=model,
                        dimension=dimension,
                        metric=metric,
                        normalize=normalize,
                        index_spec=index_spec,
                        version=0,
                        config=dict(config or {}),
                        created_at=utcnow(),
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise CollectionExistsError(name) from exc
        record = self.get_record(name)
        assert record is not None
        return record

    def open_collection(self, name: str) -> CollectionStorage:
        validate_collection_name(name)
        with self._lock:
            coll = self._collections.get(name)
            if coll is not None and not coll.closed:
                return coll
            record = self.get_record(name)
            if record is None:
                raise CollectionNotFoundError(name)
            coll = CollectionStorage(self, record)
            self._collections[name] = coll
            return coll

    def drop_collection(self, name: str) -> None:
        validate_collection_name(name)
        with self._lock:
            record = self.get_record(name)
            if record is None:
                raise CollectionNotFoundError(name)
            coll = self._collections.pop(name, None)
            if coll is not None:
                coll.closed = True
            with self.engine.begin() as conn:
                for hook in self.hooks:
                    hook.on_drop(conn, record.id)
                conn.execute(sa.delete(s.changes).where(s.changes.c.collection_id == record.id))
                conn.execute(sa.delete(s.documents).where(s.documents.c.collection_id == record.id))
                conn.execute(sa.delete(s.collections).where(s.collections.c.id == record.id))
            shutil.rmtree(self.index_root / f"c{record.id}", ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for coll in list(self._collections.values()):
                coll.close()
            self._collections.clear()
            self.engine.dispose()


class CollectionStorage:
    """One collection's rows and its in-memory vector index, kept in step."""

    def __init__(self, storage: Storage, record: CollectionRecord) -> None:
        self.storage = storage
        self.engine = storage.engine
        self.record = record
        self.id = record.id
        self.dimension = record.dimension
        self.dir = storage.index_root / f"c{record.id}"
        self.closed = False
        self._lock = threading.RLock()
        self._ops_since_checkpoint = 0
        self._checkpoint_version = -1
        self.index: VectorIndex
        self.applied_version: int
        self._load()

    # -- loading, replay, checkpoints -----------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def _load(self) -> None:
        loaded = self._load_checkpoint()
        if loaded is None:
            self._rebuild()
        else:
            self.index, self.applied_version = loaded
            self._checkpoint_version = self.applied_version
            self.sync()

    def _load_checkpoint(self) -> tuple[VectorIndex, int] | None:
        try:
            manifest = Manifest.read(self.manifest_path)
        except StorageError as exc:
            log.warning("%s; rebuilding from SQL", exc)
            return None
        if manifest is None:
            return None
        extra = _read_manifest_extra(self.manifest_path)
        if extra.get("store_id") not in (None, self.storage.store_id):
            log.warning("index checkpoint in %s belongs to another database; rebuilding", self.dir)
            return None
        if manifest.version > self.current_version() or manifest.dimension != self.dimension:
            log.warning("index checkpoint in %s is ahead of the database; rebuilding", self.dir)
            return None
        try:
            index = load_index(self.dir / manifest.file, manifest.spec, self.dimension, self.record.metric)
        except StorageError as exc:
            log.warning("%s; rebuilding from SQL", exc)
            return None
        if len(index) != manifest.count:
            log.warning("index checkpoint %s holds %d vectors, manifest says %d; rebuilding",
                        manifest.file, len(index), manifest.count)
            return None
        return index, manifest.version

    def current_version(self, conn: Connection | None = None) -> int:
        q = sa.select(s.collections.c.version).where(s.collections.c.id == self.id)
        if conn is not None:
            v = conn.execute(q).scalar()
        else:
            with self.engine.connect() as c:
                v = c.execute(q).scalar()
        if v is None:
            raise CollectionNotFoundError(self.record.name)
        return int(v)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one consistent state across several statements."""
        with self.engine.connect() as conn:
            if self.storage.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _rebuild(self) -> None:
        index, version = self._build_from_sql()
        with self._lock:
            self.index = index
            self.applied_version = version
            self._ops_since_checkpoint = len(index) or 1

    def _build_from_sql(self, spec: str | None = None) -> tuple[VectorIndex, int]:
        index = build_index(spec or self.record.index_spec, self.dimension, self.record.metric)
        with self._snapshot() as conn:
            version = self.current_version(conn)
            q = (
                sa.select(s.documents.c.vid, s.documents.c.embedding)
                .where(s.documents.c.collection_id == self.id)
                .order_by(s.documents.c.vid)
                .execution_options(yield_per=20_000)
            )
            for part in conn.execute(q).partitions(20_000):
                vids = np.array([r[0] for r in part], dtype=np.int64)
                index.add(vids, decode_embeddings([r[1] for r in part], self.dimension))
        return index, version

    def sync(self) -> int:
        """Replay committed changes past the index's version; returns how many vectors were touched."""
        with self._lock:
            self._check_open()
            version = self.current_version()
            if version <= self.applied_version:
                return 0
            return self._replay_locked()

    def _replay_locked(self) -> int:
        self.applied_version, touched = self._replay_into(self.index, self.applied_version)
        self._ops_since_checkpoint += touched
        return touched

    def _replay_into(self, index: VectorIndex, from_version: int) -> tuple[int, int]:
        """Apply the change log past ``from_version`` to ``index``; returns (new version, vectors touched)."""
        c, d = s.changes.c, s.documents.c
        with self._snapshot() as conn:
            version = self.current_version(conn)
            if version <= from_version:
                return from_version, 0
            window = (c.collection_id == self.id) & (c.version > from_version) & (c.version <= version)
            touched = np.array(
                conn.execute(sa.select(c.vid).where(window).distinct()).scalars().all(), dtype=np.int64
            )
            rows = conn.execute(
                sa.select(d.vid, d.embedding).where(
                    (d.collection_id == self.id) & d.vid.in_(sa.select(c.vid).where(window))
                )
            ).all()
        index.remove(touched)
        if rows:
            index.add(
                np.array([r[0] for r in rows], dtype=np.int64),
                decode_embeddings([r[1] for r in rows], self.dimension),
            )
        return version, len(touched)

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the index to disk if it changed (or always with force). Returns whether it wrote."""
        with self._lock:
            self._check_open()
            self.sync()
            if not force and self.applied_version == self._checkpoint_version:
                return False
            self.dir.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.dir / ".lock"):
                name = f"index-v{self.applied_version}-{uuid.uuid4().hex[:8]}.faiss"
                self.index.save(self.dir / name)
                manifest = Manifest(
                    version=self.applied_version,
                    file=name,
                    spec=self.index.spec,
                    count=len(self.index),
                    dimension=self.dimension,
                )
                data = manifest.__dict__.copy()
                data["store_id"] = self.storage.store_id
                data["metric"] = self.record.metric
                write_json_atomic(data, self.manifest_path)
                for old in self.dir.glob("index-*.faiss"):
                    if old.name != name:
                        with contextlib.suppress(OSError):
                            old.unlink()
            self._checkpoint_version = self.applied_version
            self._ops_since_checkpoint = 0
            return True

    def _maybe_checkpoint(self) -> None:
        if self._ops_since_checkpoint >= max(CHECKPOINT_EVERY_OPS, len(self.index) // 10):
            self.checkpoint()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self.checkpoint()
            except (StorageError, CollectionNotFoundError) as exc:
                log.warning("could not write the index checkpoint on close: %s", exc)
            self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise StorageError(f"collection {self.record.name!r} is closed")

    # -- reads -------------------------------------------------------------

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

    def get(self, doc_ids: Sequence[str]) -> list[StoredDoc]:
        d = s.documents.c
        found: dict[str, StoredDoc] = {}
        with self.engine.connect() as conn:
            for part in chunked(list(doc_ids)):
                q = sa.select(d.vid, d.doc_id, d.text, d.title, d.metadata, d.content_hash).where(
                    (d.collection_id == self.id) & d.doc_id.in_(part)
                )
                for r in conn.execute(q):
                    found[r.doc_id] = StoredDoc(r.vid, r.doc_id, r.text, r.title, r.metadata, r.content_hash)
        return [found[i] for i in doc_ids if i in found]

    def fetch(self, vids: Iterable[int], conn: Connection | None = None) -> dict[int, StoredDoc]:
        d = s.documents.c
        vids = list(dict.fromkeys(int(v) for v in vids))
        out: dict[int, StoredDoc] = {}
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.engine.connect())
            for part in chunked(vids):
                q = sa.select(d.vid, d.doc_id, d.text, d.title, d.metadata, d.content_hash).where(
                    (d.collection_id == self.id) & d.vid.in_(part)
                )
                for r in conn.execute(q):
                    out[r.vid] = StoredDoc(r.vid, r.doc_id, r.text, r.title, r.metadata, r.content_hash)
        return out

    def list_ids(self, *, offset: int = 0, limit: int = 100) -> list[str]:
        d = s.documents.c
        q = (
            sa.select(d.doc_id)
            .where(d.collection_id == self.id)
            .order_by(d.vid)
            .offset(offset)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def iter_embeddings(self, batch: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(vids, vectors) in batches, straight from SQL: the input of every rebuild."""
        d = s.documents.c
        with self._snapshot() as conn:
            q = (
                sa.select(d.vid, d.embedding)
                .where(d.collection_id == self.id)
                .order_by(d.vid)
                .execution_options(yield_per=batch)
            )
            for part in conn.execute(q).partitions(batch):
                yield (
                    np.array([r[0] for r in part], dtype=np.int64),
                    decode_embeddings([r[1] for r in part], self.dimension),
                )

    # -- search --------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[StoredDoc, float]]]:
        """Top-k rows per query; filters pick candidates in SQL *before* the vector search."""
        queries = as_vectors(queries, self.dimension)
        where = compile_filter(filter, s.documents.c.metadata)
        with self._lock:
            self._check_open()
            self.sync()
            if where is None:
                scores, ids = self.index.search(queries, min(k, max(len(self.index), 1)))
                results = _pairs(scores, ids)
            else:
                results = self._filtered_search(queries, k, where)
            docs = self.fetch({vid for res in results for vid, _ in res})
        return [[(docs[vid], score) for vid, score in res if vid in docs] for res in results]

    def _filtered_search(
        self, queries: np.ndarray, k: int, where: sa.ColumnElement[bool]
    ) -> list[list[tuple[int, float]]]:
        d = s.documents.c
        with self.engine.connect() as conn:
            cand = np.array(
                conn.execute(sa.select(d.vid).where((d.collection_id == self.id) & where)).scalars().all(),
                dtype=np.int64,
            )
            if len(cand) == 0:
                return [[] for _ in range(len(queries))]
            if len(cand) <= EXACT_MAX or not getattr(self.index, "supports_selector", False):
                return self._exact(conn, queries, cand, k)
        scores, ids = self.index.search(queries, min(k, len(cand)), allowed=cand)
        return _pairs(scores, ids)

    def _exact(
        self, conn: Connection, queries: np.ndarray, cand: np.ndarray, k: int
    ) -> list[list[tuple[int, float]]]:
        d = s.documents.c
        vids: list[int] = []
        blobs: list[bytes] = []
        for part in chunked(cand.tolist()):
            for vid, blob in conn.execute(
                sa.select(d.vid, d.embedding).where((d.collection_id == self.id) & d.vid.in_(part))
            ):
                vids.append(vid)
                blobs.append(blob)
        mat = decode_embeddings(blobs, self.dimension)
        if self.record.metric == "l2":
            scores = -(
                (queries**2).sum(1, keepdims=True) - 2 * queries @ mat.T + (mat**2).sum(1)[None, :]
            )
        else:
            scores = queries @ mat.T
        kk = min(k, len(vids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        vid_arr = np.array(vids, dtype=np.int64)
        return [
            [(int(vid_arr[j]), float(scores[qi, j])) for j in top[qi]] for qi in range(len(queries))
        ]

    # -- writes ---------------------------------------------------------------

    def write(self, docs: Sequence[DocWrite], delete_ids: Sequence[str] = ()) -> WriteResult:
        """Upsert ``docs`` and delete ``delete_ids`` in one transaction, then update the index."""
        self._check_open()
        d = s.documents.c
        now = utcnow()
        result = WriteResult()
        # last one wins when an id repeats within a batch
        by_id: dict[str, DocWrite] = {}
        for doc in docs:
            if doc.doc_id in by_id:
                result.updated += 1
            by_id[doc.doc_id] = doc
        for doc in by_id.values():
            if doc.embedding is not None and np.asarray(doc.embedding).shape != (self.dimension,):
                from ..errors import DimensionMismatchError

                raise DimensionMismatchError(
                    f"document {doc.doc_id!r}: embedding has shape {np.asarray(doc.embedding).shape}, "
                    f"collection {self.record.name!r} expects ({self.dimension},)"
                )
        upserted_vecs: dict[int, np.ndarray] = {}
        upserted_docs: list[tuple[int, DocWrite]] = []
        removed: list[int] = []
        try:
            with self.engine.begin() as conn:
                version = self._bump_version(conn)
                result.version = version
                ids = list(by_id)
                current: dict[str, tuple[int, str, dict[str, Any]]] = {}
                for part in chunked(ids):
                    for vid, doc_id, h, meta in conn.execute(
                        sa.select(d.vid, d.doc_id, d.content_hash, d.metadata).where(
                            (d.collection_id == self.id) & d.doc_id.in_(part)
                        )
                    ):
                        current[doc_id] = (vid, h, meta)
                inserts: list[dict[str, Any]] = []
                for doc_id, doc in by_id.items():
                    old = current.get(doc_id)
                    if old is None:
                        if doc.embedding is None:
                            raise StorageError(
                                f"document {doc_id!r} vanished while being indexed; retry the batch"
                            )
                        inserts.append(
                            {
                                "collection_id": self.id,
                                "doc_id": doc_id,
                                "content_hash": doc.content_hash,
                                "title": doc.title,
                                "text": doc.text,
                                "metadata": doc.metadata,
                                "embedding": encode_embedding(doc.embedding),
                                "updated_at": now,
                            }
                        )
                        continue
                    vid, old_hash, old_meta = old
                    if doc.embedding is None or old_hash == doc.content_hash:
                        if old_hash != doc.content_hash:
                            raise StorageError(
                                f"document {doc_id!r} changed while being indexed; retry the batch"
                            )
                        if old_meta == doc.metadata:
                            result.unchanged += 1
                        else:
                            conn.execute(
                                sa.update(s.documents)
                                .where(d.vid == vid)
                                .values(metadata=doc.metadata, updated_at=now)
                            )
                            result.updated += 1
                        continue
                    conn.execute(
                        sa.update(s.documents)
                        .where(d.vid == vid)
                        .values(
                            content_hash=doc.content_hash,
                            title=doc.title,
                            text=doc.text,
                            metadata=doc.metadata,
                            embedding=encode_embedding(doc.embedding),
                            updated_at=now,
                        )
                    )
                    upserted_vecs[vid] = np.asarray(doc.embedding, dtype=np.float32)
                    upserted_docs.append((vid, doc))
                    result.updated += 1
                if inserts:
                    rows = conn.execute(
                        s.documents.insert().returning(d.vid, d.doc_id, sort_by_parameter_order=True),
                        inserts,
                    ).all()
                    for (vid, doc_id) in rows:
                        upserted_vecs[vid] = np.asarray(by_id[doc_id].embedding, dtype=np.float32)
                        upserted_docs.append((vid, by_id[doc_id]))
                    result.added += len(rows)
                if delete_ids:
                    for part in chunked(list(dict.fromkeys(delete_ids))):
                        vids = conn.execute(
                            sa.select(d.vid).where((d.collection_id == self.id) & d.doc_id.in_(part))
                        ).scalars().all()
                        if vids:
                            conn.execute(sa.delete(s.documents).where(d.vid.in_(vids)))
                            removed.extend(vids)
                    result.deleted = len(removed)
                log_rows = [
                    {"collection_id": self.id, "version": version, "op": s.OP_UPSERT, "vid": v}
                    for v in upserted_vecs
                ] + [
                    {"collection_id": self.id, "version": version, "op": s.OP_DELETE, "vid": v}
                    for v in removed
                ]
                if log_rows:
                    conn.execute(s.changes.insert(), log_rows)
                for hook in self.storage.hooks:
                    hook.on_write(conn, self, upserted_docs, removed)
        except sa.exc.OperationalError as exc:
            raise _storage_error(exc) from exc
        except sa.exc.IntegrityError as exc:
            raise StorageError(f"write conflict in collection {self.record.name!r}: {exc.orig}; retry") from exc
        result.ids = list(by_id)
        self._apply(version, upserted_vecs, removed)
        return result

    def delete(self, doc_ids: Sequence[str]) -> int:
        return self.write([], delete_ids=doc_ids).deleted

    def _bump_version(self, conn: Connection) -> int:
        col = s.collections.c
        res = conn.execute(
            sa.update(s.collections).where(col.id == self.id).values(version=col.version + 1).returning(col.version)
        ).first()
        if res is None:
            raise CollectionNotFoundError(self.record.name)
        return int(res[0])

    def _apply(self, version: int, upserted: dict[int, np.ndarray], removed: list[int]) -> None:
        """Bring the in-memory index to ``version`` without a round trip when nobody else wrote."""
        with self._lock:
            if self.closed:
                return
            if version == self.applied_version + 1:
                touched = np.array(list(upserted) + removed, dtype=np.int64)
                self.index.remove(touched)
                if upserted:
                    self.index.add(np.array(list(upserted), dtype=np.int64), np.stack(list(upserted.values())))
                self.applied_version = version
                self._ops_since_checkpoint += len(touched)
            elif version > self.applied_version:
                self._replay_locked()
            self._maybe_checkpoint()

    # -- verification -------------------------------------------------------------

    def check(self, *, sample: int = 256) -> CheckReport:
        """Compare SQL with the checkpoint on disk plus the change log, independently of memory."""
        d = s.documents.c
        with self._lock:
            self._check_open()
            expected_bytes = 4 * self.dimension
            with self._snapshot() as conn:
                version = self.current_version(conn)
                rows = conn.execute(
                    sa.select(d.vid, d.doc_id, sa.func.length(d.embedding)).where(d.collection_id == self.id)
                ).all()
            report = CheckReport(collection=self.record.name, rows=len(rows), vectors=0)
            report.bad_embeddings = [r[1] for r in rows if r[2] != expected_bytes]
            # What a fresh process would end up with: checkpoint + replay.
            probe, probe_version = self._probe_checkpoint(report)
            if probe_version < version:
                self._replay_into(probe, probe_version)
            index_ids = set(probe.ids().tolist())
            live_ids = set(self.index.ids().tolist())
            row_vids = {int(r[0]): r[1] for r in rows}
            report.vectors = len(index_ids)
            for ids in (index_ids, live_ids):
                report.missing_in_index += [row_vids[v] for v in row_vids.keys() - ids]
                report.extra_in_index += sorted(ids - row_vids.keys())
            report.missing_in_index = sorted(set(report.missing_in_index))
            report.extra_in_index = sorted(set(report.extra_in_index))
            # Spot-check that the vectors themselves match SQL.
            common = sorted(index_ids & row_vids.keys())
            if common:
                rng = np.random.default_rng(0)
                pick = rng.choice(np.array(common), size=min(sample, len(common)), replace=False)
                recon = probe.reconstruct(pick)
                if recon is not None:
                    with self.engine.connect() as conn:
                        got = dict(
                            conn.execute(
                                sa.select(d.vid, d.embedding).where(d.vid.in_(pick.tolist()))
                            ).all()
                        )
                    for vid, vec in zip(pick.tolist(), recon):
                        blob = got.get(vid)
                        if blob is None or len(blob) != expected_bytes:
                            continue
                        ref = np.frombuffer(blob, dtype="<f4")
                        if not np.allclose(ref, vec, atol=1e-4):
                            report.mismatched_vectors.append(row_vids[vid])
            return report

    def _probe_checkpoint(self, report: CheckReport) -> tuple[VectorIndex, int]:
        """Load the on-disk checkpoint as a fresh process would, noting its state in ``report``."""
        empty = build_index(self.record.index_spec, self.dimension, self.record.metric)
        try:
            manifest = Manifest.read(self.manifest_path)
        except StorageError as exc:
            report.checkpoint = f"unreadable: {exc}"
            return empty, 0
        if manifest is None:
            report.checkpoint = "none (rebuilt from SQL on open)"
            return empty, 0
        try:
            index = load_index(self.dir / manifest.file, manifest.spec, self.dimension, self.record.metric)
        except StorageError as exc:
            report.checkpoint = f"unreadable: {exc}"
            return empty, 0
        if len(index) != manifest.count:
            report.checkpoint = (
                f"unreadable: {manifest.file} holds {len(index)} vectors, manifest says {manifest.count}"
            )
            return empty, 0
        report.checkpoint = f"v{manifest.version}"
        return index, manifest.version

    def repair(self) -> CheckReport:
        """Rebuild the index from the stored embeddings (no re-encoding) and checkpoint it."""
        with self._lock:
            self._rebuild()
            self.checkpoint(force=True)
            return self.check()

    def reindex(self, spec: str) -> None:
        """Swap in a freshly built index of another type; the collection row records the choice."""
        with self._lock:
            index, version = self._build_from_sql(spec)
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(s.collections).where(s.collections.c.id == self.id).values(index_spec=spec)
                )
            self.record = self.storage.get_record(self.record.name) or self.record
            self.index, self.applied_version = index, version
            self.sync()
            self.checkpoint(force=True)

    def disk_bytes(self) -> int:
        total = 0
        if self.dir.exists():
            for p in self.dir.iterdir():
                with contextlib.suppress(OSError):
                    total += p.stat().st_size
        return total


def _pairs(scores: np.ndarray, ids: np.ndarray) -> list[list[tuple[int, float]]]:
    return [
        [(int(i), float(sc)) for i, sc in zip(row_ids, row_scores) if i >= 0]
        for row_scores, row_ids in zip(scores, ids)
    ]


def _read_manifest_extra(path: Path) -> dict[str, Any]:
    import json

    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _storage_error(exc: sa.exc.OperationalError) -> StorageError:
    msg = str(exc.orig)
    if "disk" in msg.lower() and "full" in msg.lower():
        return StorageError(f"the disk is full: {msg}")
    return StorageError(f"database error: {msg}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
