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
import errno
import fcntl
import logging
import math
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
    DimensionMismatchError,
    InvalidInputError,
    InvalidNameError,
    StorageError,
)
from . import schema as s
from .autoindex import (
    DEFAULT_TARGET_RECALL,
    BuildReport,
    build_from_source,
    default_budget,
    outgrown,
    parse_bytes,
)
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
EXACT_BLOCK = 20_000  # rows per block when scoring a large candidate set exactly
ANN_EXACT_FRACTION = 0.02  # an ANN index is not used for filters matching < 2% of the rows
CHECKPOINT_EVERY_OPS = 50_000  # vector changes before the checkpoint is rewritten
SCHEMA_LOCK_KEY = 0x53454D49  # pg_advisory_xact_lock key for schema creation ("SEMI")


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


def _check_storable(doc: DocWrite) -> None:
    """Values both backends store alike: no NUL characters (PostgreSQL text and jsonb refuse them)
    and only finite numbers in metadata (NaN is not JSON: SQLite's json functions and jsonb reject it)."""

    def bad(value: Any, depth: int = 0) -> str | None:
        if isinstance(value, str):
            return "a NUL character" if "\x00" in value else None
        if isinstance(value, float):
            return None if math.isfinite(value) else f"the number {value!r}"
        if depth > 64:
            return None
        if isinstance(value, Mapping):
            for k, v in value.items():
                why = bad(str(k), depth + 1) or bad(v, depth + 1)
                if why:
                    return why
        elif isinstance(value, (list, tuple)):
            for v in value:
                why = bad(v, depth + 1)
                if why:
                    return why
        return None

    for what, value in (("id", doc.doc_id), ("text", doc.text), ("title", doc.title), ("metadata", doc.metadata)):
        why = bad(value)
        if why:
            raise InvalidInputError(f"document {doc.doc_id!r}: its {what} contains {why}, which cannot be stored")


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
        # "BEGIN IMMEDIATE" where a transaction reads before it writes and must not lose
        # the race for the write lock (a deferred one would fail at once with SQLITE_BUSY).
        conn.exec_driver_sql(conn.get_execution_options().get("semindex_begin", "BEGIN"))


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
            self.store_id = self._existing_store_id() or self._create_schema()
        except sa.exc.OperationalError as exc:
            err = _storage_error(exc)
            if "disk is full" in str(err):
                raise err from exc
            raise StorageError(f"cannot open database {self._safe_url()}: {exc.orig}") from exc
        except sa.exc.DBAPIError as exc:
            raise StorageError(f"cannot open database {self._safe_url()}: {exc.orig}") from exc
        from .keyword import KeywordIndex  # the BM25 index: a write hook (storage/keyword.py)
        self.keyword = KeywordIndex.attach(self)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.db_url).render_as_string(hide_password=True)

    def _existing_store_id(self) -> str | None:
        """The common case, read-only: the schema exists and the store has its id."""
        with self.engine.connect() as conn:
            if not set(s.metadata_obj.tables) <= set(sa.inspect(conn).get_table_names()):
                return None  # no schema yet, or tables added since this store was made
            row = conn.execute(sa.select(s.meta_table.c.value).where(s.meta_table.c.key == "store_id")).first()
        return str(row[0]) if row else None

    def _create_schema(self) -> str:
        """Create the tables and the store id, serialised against other processes doing the same.

        PostgreSQL: a transaction-scoped advisory lock (DDL is transactional, so a loser
        sees the winner's tables once the lock is granted). SQLite: BEGIN IMMEDIATE takes
        the write lock before the existence checks, waiting out the busy timeout.
        """
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(semindex_begin="BEGIN IMMEDIATE")
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
                s.metadata_obj.create_all(conn, checkfirst=True)
                return self._store_id(conn)

    def _store_id(self, conn: Connection) -> str:
        row = conn.execute(sa.select(s.meta_table.c.value).where(s.meta_table.c.key == "store_id")).first()
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
        validate_collection_name(name)  # before it reaches SQL (PostgreSQL rejects NUL in text)
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
            index = load_index(
                self.dir / manifest.file, manifest.spec, self.dimension, self.record.metric, manifest.params
            )
        except StorageError as exc:
            log.warning("%s; rebuilding from SQL", exc)
            return None
        self._attach(index)
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

    # -- index choice, build and growth (semindex.storage.autoindex) ------------------------

    @property
    def target_recall(self) -> float:
        return float(self.record.config.get("target_recall", DEFAULT_TARGET_RECALL))

    @property
    def memory_budget(self) -> int:
        b = self.record.config.get("memory_budget")
        return parse_bytes(b) if b else default_budget()

    @property
    def index_device(self) -> str:
        return str(self.record.config.get("index_device") or os.environ.get("SEMINDEX_INDEX_DEVICE") or "auto")

    def _attach(self, index: VectorIndex) -> VectorIndex:
        """Wire an index to this collection: exact rescoring reads SQL; GPU search when asked/visible."""
        index.refine_source = self.fetch_embeddings
        index.use_device(self.index_device)
        return index

    def fetch_embeddings(self, vids: np.ndarray) -> np.ndarray:
        """The stored float32 vectors of ``vids``, in that order (missing rows are zeros)."""
        d = s.documents.c
        vids = np.asarray(vids, dtype=np.int64)
        out = np.zeros((len(vids), self.dimension), dtype=np.float32)
        where = {int(v): i for i, v in enumerate(vids.tolist())}
        with self.engine.connect() as conn:
            for part in chunked(vids.tolist()):
                for vid, blob in conn.execute(
                    sa.select(d.vid, d.embedding).where((d.collection_id == self.id) & d.vid.in_(part))
                ):
                    if len(blob) == 4 * self.dimension:
                        out[where[int(vid)]] = np.frombuffer(blob, dtype="<f4")
        return out

    def _build_from_sql(
        self, spec: str | None = None, *, target_recall: float | None = None
    ) -> tuple[VectorIndex, int]:
        index, version, _ = self._build_report(spec, target_recall=target_recall)
        return index, version

    def _build_report(
        self, spec: str | None = None, *, target_recall: float | None = None
    ) -> tuple[VectorIndex, int, BuildReport]:
        """Build from the stored embeddings (never re-encoding): train on a sample, stream every
        row in one snapshot, tune to the target recall. Returns the index and the version it reflects."""
        source = _SQLSource(self)
        index, report = build_from_source(
            spec or self.record.index_spec,
            self.dimension,
            self.record.metric,
            source,
            target_recall=target_recall or self.target_recall,
            budget=self.memory_budget,
            device=self.index_device,
            refine_source=self.fetch_embeddings,
        )
        self._attach(index)
        assert source.version is not None or len(index) == 0
        version = source.version if source.version is not None else self.current_version()
        return index, version, report

    def _maybe_upgrade(self) -> str | None:
        """After a change: rebuild when the index has outgrown its range (auto) or its training
        (IVF), or carries too many HNSW tombstones. Returns what happened, also logged."""
        why = outgrown(self.index, self.record.index_spec, len(self.index), self.dimension, self.memory_budget)
        if why is None:
            return None
        old = f"{self.index.spec} {_fmt_params(self.index.params)}"
        index, version, report = self._build_report()
        self.index, self.applied_version = index, version  # the rebuild read every row up to `version`
        msg = (f"collection {self.record.name!r}: {why}; rebuilt {old} -> {index.spec} "
               f"{_fmt_params(index.params)} in {report.seconds:.1f} s")
        log.warning("%s", msg)
        self.last_index_change = msg
        self._ops_since_checkpoint = max(self._ops_since_checkpoint, CHECKPOINT_EVERY_OPS)
        return msg

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
        if touched:
            self._maybe_upgrade()
        return touched

    def _replay_into(
        self, index: VectorIndex, from_version: int, snapshot: Connection | None = None
    ) -> tuple[int, int]:
        """Apply the change log past ``from_version`` to ``index``; returns (new version, vectors touched).

        ``snapshot``: read inside that open transaction instead of a fresh one (``check`` compares
        rows and the replayed index as of one instant)."""
        c, d = s.changes.c, s.documents.c
        with contextlib.nullcontext(snapshot) if snapshot is not None else self._snapshot() as conn:
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
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                with _file_lock(self.dir / ".lock"):
                    for tmp in self.dir.glob(".*.tmp"):  # left by a process killed mid-write
                        with contextlib.suppress(OSError):
                            tmp.unlink()
                    name = f"index-v{self.applied_version}-{uuid.uuid4().hex[:8]}.faiss"
                    self.index.save(self.dir / name)
                    manifest = Manifest(
                        version=self.applied_version,
                        file=name,
                        spec=self.index.spec,
                        count=len(self.index),
                        dimension=self.dimension,
                        params=_jsonable(self.index.params),
                    )
                    data = manifest.__dict__.copy()
                    data["store_id"] = self.storage.store_id
                    data["metric"] = self.record.metric
                    try:
                        write_json_atomic(data, self.manifest_path)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            (self.dir / name).unlink()  # the old manifest and file stay in charge
                        raise
                    for old in self.dir.glob("index-*.faiss"):
                        if old.name != name:
                            with contextlib.suppress(OSError):
                                old.unlink()
            except StorageError as exc:
                raise _index_write_error(exc) from exc
            except OSError as exc:
                raise _index_write_error(
                    StorageError(f"cannot write the index checkpoint in {self.dir}: {exc.strerror or exc}")
                ) from exc
            self._checkpoint_version = self.applied_version
            self._ops_since_checkpoint = 0
            return True

    def _maybe_checkpoint(self) -> None:
        if self._ops_since_checkpoint >= max(CHECKPOINT_EVERY_OPS, len(self.index) // 10):
            try:
                self.checkpoint()
            except StorageError as exc:
                # The write is committed; the checkpoint is only a shortcut for the next open
                # (which replays the change log instead), so a failed one must not fail the write.
                log.warning("could not write the index checkpoint: %s", exc)

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
                kk = min(k, max(len(self.index), 1))
                scores, ids = self.index.search(queries, kk)
                results = _pairs(scores, ids)
                short = [qi for qi, r in enumerate(results) if len(r) < min(kk, len(self.index))]
                if short:  # an ANN probe that found too few (tiny IVF cells): search those exhaustively
                    scores, ids = self.index.search(queries[short], kk, exhaustive=True)
                    for qi, r in zip(short, _pairs(scores, ids)):
                        results[qi] = r
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
            exact = (
                len(cand) <= EXACT_MAX
                or not getattr(self.index, "supports_selector", False)
                # an ANN index searching a small subset visits mostly rejected nodes / cells
                or (self.index.kind != "flat" and len(cand) < ANN_EXACT_FRACTION * len(self.index))
            )
            if exact:
                return self._exact(conn, queries, cand, k)
        want = min(k, len(cand))
        scores, ids = self.index.search(queries, want, allowed=cand)
        results = _pairs(scores, ids)
        short = [qi for qi, r in enumerate(results) if len(r) < want]
        if short:  # the ANN probe found fewer than k of the matches: score those queries exactly
            with self.engine.connect() as conn:
                for qi, r in zip(short, self._exact(conn, queries[short], cand, k)):
                    results[qi] = r
        return results

    def _exact(
        self, conn: Connection, queries: np.ndarray, cand: np.ndarray, k: int
    ) -> list[list[tuple[int, float]]]:
        d = s.documents.c
        nq = len(queries)
        best_s = np.empty((nq, 0), dtype=np.float32)
        best_i = np.empty((nq, 0), dtype=np.int64)
        cand_list = cand.tolist()
        # blocks of EXACT_BLOCK rows: memory stays bounded however many rows match
        for lo in range(0, len(cand_list), EXACT_BLOCK):
            vids: list[int] = []
            blobs: list[bytes] = []
            for part in chunked(cand_list[lo : lo + EXACT_BLOCK]):
                for vid, blob in conn.execute(
                    sa.select(d.vid, d.embedding).where((d.collection_id == self.id) & d.vid.in_(part))
                ):
                    vids.append(vid)
                    blobs.append(blob)
            if not vids:
                continue
            mat = decode_embeddings(blobs, self.dimension)
            if self.record.metric == "l2":
                scores = -(
                    (queries**2).sum(1, keepdims=True) - 2 * queries @ mat.T + (mat**2).sum(1)[None, :]
                )
            else:
                scores = queries @ mat.T
            best_s = np.concatenate([best_s, scores.astype(np.float32)], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(np.array(vids, dtype=np.int64), (nq, len(vids)))], axis=1)
            if best_s.shape[1] > k:
                part_idx = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s = np.take_along_axis(best_s, part_idx, 1)
                best_i = np.take_along_axis(best_i, part_idx, 1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        return [
            [(int(best_i[qi, j]), float(best_s[qi, j])) for j in order[qi]] for qi in range(nq)
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
                raise DimensionMismatchError(
                    f"document {doc.doc_id!r}: embedding has shape {np.asarray(doc.embedding).shape}, "
                    f"collection {self.record.name!r} expects ({self.dimension},)"
                )
        for doc in by_id.values():
            _check_storable(doc)
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
        except sa.exc.DataError as exc:  # PostgreSQL refusing a value _check_storable did not foresee
            raise InvalidInputError(
                f"collection {self.record.name!r}: the database rejected a value in this batch: "
                f"{str(exc.orig).strip().splitlines()[0]}"
            ) from exc
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
                self._maybe_upgrade()
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
            # One snapshot for everything below, so a writer in another process committing
            # meanwhile cannot make rows and index disagree in the report.
            with self._snapshot() as conn:
                version = self.current_version(conn)
                rows = conn.execute(
                    sa.select(d.vid, d.doc_id, sa.func.length(d.embedding)).where(d.collection_id == self.id)
                ).all()
                report = CheckReport(collection=self.record.name, rows=len(rows), vectors=0)
                report.bad_embeddings = [r[1] for r in rows if r[2] != expected_bytes]
                # What a fresh process would end up with: checkpoint + replay.
                probe, probe_version = self._probe_checkpoint(report)
                if probe_version > version:  # checkpointed by another process after our snapshot
                    report.checkpoint += " (newer than this check's snapshot; compared as rebuilt)"
                    probe = build_index(self.record.index_spec, self.dimension, self.record.metric)
                    probe_version = 0  # replaying the whole log below is a rebuild from SQL
                if probe_version < version:
                    self._replay_into(probe, probe_version, conn)
                if self.applied_version < version:  # the live index, brought to the same instant
                    self.applied_version, touched = self._replay_into(self.index, self.applied_version, conn)
                    self._ops_since_checkpoint += touched
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
                recon, got, pick = None, {}, np.empty(0, dtype=np.int64)
                if common:
                    rng = np.random.default_rng(0)
                    pick = rng.choice(np.array(common), size=min(sample, len(common)), replace=False)
                    recon = probe.reconstruct(pick)
                    if recon is not None:
                        got = dict(
                            conn.execute(sa.select(d.vid, d.embedding).where(d.vid.in_(pick.tolist()))).all()
                        )
            if recon is not None:
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
            index = load_index(
                self.dir / manifest.file, manifest.spec, self.dimension, self.record.metric, manifest.params
            )
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

    def reindex(
        self,
        spec: str | None = None,
        *,
        target_recall: float | None = None,
        memory_budget: str | int | None = None,
        device: str | None = None,
    ) -> dict[str, Any]:
        """Rebuild the index from the stored embeddings (never re-encoding) and swap the checkpoint.

        ``spec``: auto, flat, hnsw, ivf, ivfpq or a FAISS factory string (default: the current
        choice). The collection row records the choice and the tuning target; returns
        ``{"old": {...}, "new": {...}, "seconds": ..., "count": ...}``.
        """
        spec = (spec or self.record.index_spec).strip()
        build_index(spec, self.dimension, self.record.metric)  # a bad spec fails before any work
        if target_recall is not None and not 0 < target_recall <= 1:
            raise ConfigError(f"target recall must be in (0, 1], got {target_recall}")
        with self._lock:
            self._check_open()
            self.sync()
            old = {"type": self.index.spec, "policy": self.record.index_spec, "params": _jsonable(self.index.params)}
            config = dict(self.record.config)
            if target_recall is not None:
                config["target_recall"] = float(target_recall)
            if memory_budget is not None:
                config["memory_budget"] = parse_bytes(memory_budget)
            if device is not None:
                config["index_device"] = device
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(s.collections).where(s.collections.c.id == self.id).values(index_spec=spec, config=config)
                )
            self.record = self.storage.get_record(self.record.name) or self.record
        # Built outside the lock from one SQL snapshot: searches and writes go on meanwhile
        # (against the old index); the swap then replays whatever was committed since.
        index, version, report = self._build_report(spec)
        with self._lock:
            self._check_open()
            self.index, self.applied_version = index, version
            self.sync()
            self.checkpoint(force=True)
            return {
                "collection": self.record.name,
                "old": old,
                "new": {"type": index.spec, "policy": spec, "params": _jsonable(index.params)},
                "count": len(index),
                "seconds": round(report.seconds, 3),
                "reason": report.reason,
            }

    def disk_bytes(self) -> int:
        total = 0
        if self.dir.exists():
            for p in self.dir.iterdir():
                with contextlib.suppress(OSError):
                    total += p.stat().st_size
        return total


class _SQLSource:
    """The collection's rows as an EmbeddingSource; the streamed pass records its version."""

    def __init__(self, coll: CollectionStorage) -> None:
        self.coll = coll
        self.version: int | None = None

    def count(self) -> int:
        return self.coll.count()

    def all_ids(self) -> np.ndarray:
        d = s.documents.c
        with self.coll.engine.connect() as conn:
            return np.array(
                conn.execute(sa.select(d.vid).where(d.collection_id == self.coll.id).order_by(d.vid)).scalars().all(),
                dtype=np.int64,
            )

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        return self.coll.fetch_embeddings(ids)

    def iter_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        d = s.documents.c
        with self.coll._snapshot() as conn:
            self.version = self.coll.current_version(conn)
            q = (
                sa.select(d.vid, d.embedding)
                .where(d.collection_id == self.coll.id)
                .order_by(d.vid)
                .execution_options(yield_per=20_000)
            )
            for part in conn.execute(q).partitions(20_000):
                yield (
                    np.array([r[0] for r in part], dtype=np.int64),
                    decode_embeddings([r[1] for r in part], self.coll.dimension),
                )


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
    return out


def _fmt_params(params: Mapping[str, Any]) -> str:
    keys = ("nlist", "nprobe", "M", "efSearch", "pq_m", "k_factor", "recall@10")
    shown = [f"{k}={params[k]}" for k in keys if k in params]
    return f"({', '.join(shown)})" if shown else ""


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


def _is_disk_full(msg: str) -> bool:
    low = msg.lower()
    return ("disk" in low and "full" in low) or "no space left" in low or "errno 28" in low


def _storage_error(exc: sa.exc.DBAPIError) -> StorageError:
    """SQLite's 'database or disk is full' and PostgreSQL's 'No space left on device' read the same."""
    msg = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    if _is_disk_full(str(exc.orig)):
        return StorageError(f"the disk is full: {msg} (free some space, then run the command again)")
    return StorageError(f"database error: {msg}")


def _index_write_error(exc: StorageError) -> StorageError:
    """An index checkpoint that could not be written: ENOSPC becomes the same 'disk is full' error."""
    cause = exc.__cause__
    if (isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or _is_disk_full(str(exc)):
        return StorageError(f"the disk is full: {exc} (free some space, then run the command again)")
    return exc


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
