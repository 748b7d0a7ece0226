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
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    InvalidInputError,
    StorageError,
)
from . import check as checking
from . import exact
from . import schema as s
from .autoindex import (
    DEFAULT_TARGET_RECALL,
    BuildReport,
    ShardedAdd,
    build_from_source,
    default_budget,
    outgrown,
    parse_bytes,
)
from .check import CheckReport
from .checkpoint import (
    folder_bytes,
    format_params,
    jsonable,
    load_checkpoint_index,
    may_write_checkpoint,
    read_manifest,
    write_checkpoint,
)
from .engine import default_db_url, make_engine, open_schema, write_transaction
from .failures import index_write_error, storage_error
from .filters import compile_filter
from .records import (
    ChunkRef,
    CollectionRecord,
    DocWrite,
    StoredDoc,
    WriteHook,
    WriteResult,
    check_storable,
    chunked,
    decode_embeddings,
    utcnow,
    validate_collection_name,
)
from .rows import Rows, SQLSource
from .vectors import VectorIndex, as_vectors, build_index, faiss_metric
from .writes import drop_collection_rows, drop_orphan_chunks, orphan_chunks, write_rows

log = logging.getLogger(__name__)

EXACT_MAX = 4096  # a filter matching at most this many rows is scored exactly from SQL
EXACT_BLOCK = 20_000  # rows per block when scoring a large candidate set exactly
ANN_EXACT_FRACTION = 0.02  # an ANN index is not used for filters matching < 2% of the rows
CHECKPOINT_EVERY_OPS = 50_000  # vector changes before the checkpoint is rewritten


class Storage:
    """A store: one SQL database plus a folder of index checkpoints.

    ``hooks``: derived tables kept in step inside every write transaction (the keyword
    index is one). The store never creates its own; whoever composes the parts passes them
    (``semindex.core.Store``), or adds them with :meth:`add_hook` once the schema exists.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        db_url: str | None = None,
        hooks: Sequence[WriteHook] = (),
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        if self.path.exists() and not self.path.is_dir():
            raise StorageError(f"store path {self.path} is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create store folder {self.path}: {exc.strerror}") from exc
        self.db_url = db_url or default_db_url(self.path)
        self.engine = make_engine(self.db_url)
        self.index_root = self.path / "indexes"
        self._collections: dict[str, CollectionStorage] = {}
        self._lock = threading.RLock()
        self.hooks: list[WriteHook] = list(hooks)
        self.store_id = open_schema(self.engine, self.db_url)

    def add_hook(self, hook: WriteHook) -> None:
        self.hooks.append(hook)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

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
                )  # read back in the same transaction: a concurrent delete may follow the commit
                row = conn.execute(sa.select(s.collections).where(s.collections.c.name == name)).one()
        except sa.exc.IntegrityError as exc:
            raise CollectionExistsError(name) from exc
        return CollectionRecord.from_row(row)

    def open_collection(self, name: str) -> CollectionStorage:
        validate_collection_name(name)
        with self._lock:
            record = self.get_record(name)  # each time: another process may have re-created the name
            coll = self._collections.pop(name, None)
            if coll is not None and (record is None or record.id != coll.id):
                coll.closed = coll.dropped = True  # that collection is gone (no checkpoint into its folder)
            elif coll is not None and not coll.closed:
                self._collections[name] = coll
                return coll
            if record is None:
                raise CollectionNotFoundError(name)
            coll = self._collections[name] = CollectionStorage(self, record)
            return coll

    def drop_collection(self, name: str) -> None:
        validate_collection_name(name)
        with self._lock:
            record = self.get_record(name)
            if record is None:
                raise CollectionNotFoundError(name)
            try:
                with write_transaction(self.engine) as conn:
                    if not drop_collection_rows(conn, record.id, self.hooks):
                        raise CollectionNotFoundError(name)  # dropped by another process meanwhile
            except sa.exc.OperationalError as exc:
                raise storage_error(exc) from exc
            if (coll := self._collections.pop(name, None)) is not None:
                coll.closed = coll.dropped = True
            shutil.rmtree(self.index_root / f"c{record.id}", ignore_errors=True)

    def rename_collection(self, name: str, new_name: str) -> None:
        """Give collection ``name`` the free name ``new_name`` in one UPDATE (rows, index files and
        keyword rows are keyed by the collection's id, so nothing else moves)."""
        validate_collection_name(new_name)
        with self._lock:
            record = self.get_record(name)
            if record is None:
                raise CollectionNotFoundError(name)
            if self.get_record(new_name) is not None:
                raise CollectionExistsError(new_name)
            self._forget(name, new_name)
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.update(s.collections).where(s.collections.c.id == record.id)
                                 .values(name=new_name))
            except sa.exc.IntegrityError as exc:  # another process took the name first
                raise CollectionExistsError(new_name) from exc

    def swap_collections(self, a: str, b: str) -> None:
        """Exchange the names of collections ``a`` and ``b`` in one transaction, so every reader
        sees either the old pair or the new one: how an in-place rebuild is switched in."""
        if a == b:
            raise InvalidInputError("cannot swap a collection with itself")
        with self._lock:
            ra, rb = self.get_record(a), self.get_record(b)
            if ra is None or rb is None:
                raise CollectionNotFoundError(a if ra is None else b)
            self._forget(a, b)
            c = s.collections.c
            with self.engine.begin() as conn:
                # through a third name, since UNIQUE(name) is checked per statement; "~" is not
                # allowed in collection names, so no collection can already hold it
                conn.execute(sa.update(s.collections).where(c.id == ra.id).values(name=f"~swap-{ra.id}"))
                conn.execute(sa.update(s.collections).where(c.id == rb.id).values(name=a))
                conn.execute(sa.update(s.collections).where(c.id == ra.id).values(name=b))

    def _forget(self, *names: str) -> None:
        """Close this process's open handles of ``names``: they carry the old name; the next open reloads."""
        for n in names:
            coll = self._collections.pop(n, None)
            if coll is not None:
                coll.close()

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
        self.rows = Rows(storage.engine, record.id, record.dimension, record.name)
        self.last_index_change: str | None = None  # what the last automatic rebuild did, for `info`
        self.closed = False
        self.dropped = False  # closed because the collection was deleted: callers get "not found"
        self._lock = threading.RLock()
        self._ops_since_checkpoint = 0
        self._checkpoint_version = -1
        self.index: VectorIndex
        self.applied_version: int
        self._load()

    # -- loading, replay, checkpoints -----------------------------------------

    def _load(self) -> None:
        loaded = self._load_checkpoint()
        if loaded is None:
            self._rebuild()
        else:
            self.index, self.applied_version = loaded
            self._checkpoint_version = self.applied_version
            self.sync()

    def _load_checkpoint(self) -> tuple[VectorIndex, int] | None:
        """The on-disk checkpoint when it can be trusted for this database; None means rebuild."""
        try:
            manifest = read_manifest(self.dir)
            if manifest is None:
                return None
            if manifest.store_id not in (None, self.storage.store_id):
                log.warning("index checkpoint in %s belongs to another database; rebuilding", self.dir)
                return None
            if manifest.version > self.current_version() or manifest.dimension != self.dimension:
                log.warning("index checkpoint in %s is ahead of the database; rebuilding", self.dir)
                return None
            index = load_checkpoint_index(self.dir, manifest, self.dimension, self.record.metric)
        except StorageError as exc:
            log.warning("%s; rebuilding from SQL", exc)
            return None
        self._attach(index)
        return index, manifest.version

    def current_version(self, conn: Connection | None = None) -> int:
        return self.rows.version(conn)

    def _snapshot(self) -> contextlib.AbstractContextManager[Connection]:
        return self.rows.snapshot()

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
        if (gen := self.record.config.get("generation")) is not None:  # its reindex (a checkpoint keeps its own)
            index.params.setdefault("generation", gen)
        return index

    def fetch_embeddings(self, vids: np.ndarray) -> np.ndarray:
        """The stored float32 vectors of ``vids``, in that order (missing rows are zeros)."""
        return self.rows.embeddings(vids)

    def _build_from_sql(
        self, spec: str | None = None, *, target_recall: float | None = None
    ) -> tuple[VectorIndex, int]:
        index, version, _ = self._build_report(spec, target_recall=target_recall)
        return index, version

    def _build_report(
        self, spec: str | None = None, *, target_recall: float | None = None, add_batches: ShardedAdd | None = None
    ) -> tuple[VectorIndex, int, BuildReport]:
        """Build from the stored embeddings (never re-encoding): train on a sample, stream every
        row in one snapshot, tune to the target recall. Returns the index and the version it reflects."""
        source = SQLSource(self.rows)
        index, report = build_from_source(
            spec or self.record.index_spec,
            self.dimension,
            self.record.metric,
            source,
            target_recall=target_recall or self.target_recall,
            budget=self.memory_budget,
            device=self.index_device,
            refine_source=self.fetch_embeddings,
            add_batches=add_batches,
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
        old = f"{self.index.spec} {format_params(self.index.params)}"
        index, version, report = self._build_report()
        self.index, self.applied_version = index, version  # the rebuild read every row up to `version`
        msg = (f"collection {self.record.name!r}: {why}; rebuilt {old} -> {index.spec} "
               f"{format_params(index.params)} in {report.seconds:.1f} s")
        log.warning("%s", msg)
        self.last_index_change = msg
        self._ops_since_checkpoint = max(self._ops_since_checkpoint, CHECKPOINT_EVERY_OPS)
        return msg

    def sync(self) -> int:
        """Replay committed changes past the index's version; returns how many vectors were touched."""
        with self._lock:
            self.check_open()
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
        c, ch = s.changes.c, s.chunks.c
        with contextlib.nullcontext(snapshot) if snapshot is not None else self._snapshot() as conn:
            version = self.current_version(conn)
            if version <= from_version:
                return from_version, 0
            window = (c.collection_id == self.id) & (c.version > from_version) & (c.version <= version)
            touched = np.array(
                conn.execute(sa.select(c.vid).where(window).distinct()).scalars().all(), dtype=np.int64
            )
            rows = conn.execute(
                sa.select(ch.id, ch.embedding).where(
                    (ch.collection_id == self.id) & ch.id.in_(sa.select(c.vid).where(window))
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
            self.check_open()
            self.sync()
            if not may_write_checkpoint(self):
                return False
            if not force and self.applied_version == self._checkpoint_version:
                return False
            try:
                write_checkpoint(
                    self.dir,
                    self.index,
                    version=self.applied_version,
                    store_id=self.storage.store_id,
                    metric=self.record.metric,
                )
            except StorageError as exc:
                raise index_write_error(exc) from exc
            except OSError as exc:
                raise index_write_error(
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

    def check_open(self) -> None:
        """Raise StorageError when this collection was closed or dropped (by this process)."""
        if self.dropped:
            raise CollectionNotFoundError(self.record.name)
        if self.closed:
            raise StorageError(f"collection {self.record.name!r} is closed")

    # -- reads -------------------------------------------------------------

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """Documents (not chunks) in the collection, optionally only those matching ``filter``."""
        return self.rows.count(filter)

    def chunk_count(self) -> int:
        return self.rows.chunk_count()

    def existing(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """doc_id -> (content_hash, metadata) for the ids that exist; used to skip unchanged docs."""
        return self.rows.existing(doc_ids)

    def get(self, doc_ids: Sequence[str]) -> list[StoredDoc]:
        return self.rows.get(doc_ids)

    def fetch(self, vids: Iterable[int], conn: Connection | None = None) -> dict[int, StoredDoc]:
        return self.rows.fetch(vids, conn)

    def list_ids(self, *, offset: int = 0, limit: int = 100) -> list[str]:
        return self.rows.list_ids(offset=offset, limit=limit)

    # -- search --------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[ChunkRef, float]]]:
        """Top-k chunks per query; filters pick candidates in SQL *before* the vector search.

        Chunks, not documents: the search layer groups them into documents (over-fetching
        until it has k distinct ones) or returns them as they are."""
        queries = as_vectors(queries, self.dimension)
        where = compile_filter(filter, s.documents.c.metadata)
        with self._lock:
            self.check_open()
            self.sync()
            if where is None:
                kk = min(k, max(len(self.index), 1))
                scores, ids = self.index.search(queries, kk)
                results = exact.pairs(scores, ids)
                short = [qi for qi, r in enumerate(results) if len(r) < min(kk, len(self.index))]
                if short:  # an ANN probe that found too few (tiny IVF cells): search those exhaustively
                    scores, ids = self.index.search(queries[short], kk, exhaustive=True)
                    for qi, r in zip(short, exact.pairs(scores, ids)):
                        results[qi] = r
            else:
                results = self._filtered_search(queries, k, where)
            refs = self.rows.chunks({cid for res in results for cid, _ in res})
        return [[(refs[cid], score) for cid, score in res if cid in refs] for res in results]

    def _filtered_search(
        self, queries: np.ndarray, k: int, where: sa.ColumnElement[bool]
    ) -> list[list[tuple[int, float]]]:
        with self.engine.connect() as conn:
            cand = np.array(conn.execute(self.rows.matching_chunks(where)).scalars().all(), dtype=np.int64)
            if len(cand) == 0:
                return [[] for _ in range(len(queries))]
            scan_exactly = (
                len(cand) <= EXACT_MAX
                or not getattr(self.index, "supports_selector", False)
                # an ANN index searching a small subset visits mostly rejected nodes / cells
                or (self.index.kind != "flat" and len(cand) < ANN_EXACT_FRACTION * len(self.index))
            )
            if scan_exactly:
                return self._exact(conn, queries, cand, k)
        want = min(k, len(cand))
        scores, ids = self.index.search(queries, want, allowed=cand)
        results = exact.pairs(scores, ids)
        short = [qi for qi, r in enumerate(results) if len(r) < want]
        if short:  # the ANN probe found fewer than k of the matches: score those queries exactly
            with self.engine.connect() as conn:
                for qi, r in zip(short, self._exact(conn, queries[short], cand, k)):
                    results[qi] = r
        return results

    def _exact(
        self, conn: Connection, queries: np.ndarray, cand: np.ndarray, k: int
    ) -> list[list[tuple[int, float]]]:
        """Score ``cand`` exactly from the stored embeddings, EXACT_BLOCK rows at a time."""
        d = s.chunks.c
        best = exact.TopK(len(queries), k)
        cand_list = cand.tolist()
        for lo in range(0, len(cand_list), EXACT_BLOCK):
            vids: list[int] = []
            blobs: list[bytes] = []
            for part in chunked(cand_list[lo : lo + EXACT_BLOCK]):
                for vid, blob in conn.execute(
                    sa.select(d.id, d.embedding).where((d.collection_id == self.id) & d.id.in_(part))
                ):
                    vids.append(vid)
                    blobs.append(blob)
            if vids:
                mat = decode_embeddings(blobs, self.dimension)
                best.push(exact.scores(queries, mat, self.record.metric), np.array(vids, dtype=np.int64))
        return exact.pairs(*best.result())

    # -- writes ---------------------------------------------------------------

    def write(self, docs: Sequence[DocWrite], delete_ids: Sequence[str] = (), *,
              in_transaction: Callable[[Connection, WriteResult], None] | None = None) -> WriteResult:
        """Upsert ``docs`` and delete ``delete_ids`` in one transaction, then update the index.
        ``in_transaction`` runs last inside it, with the counts (a Ray shard's exactly-once record)."""
        self.check_open()
        result = WriteResult()
        # last one wins when an id repeats within a batch, and it counts once (as added or updated)
        by_id: dict[str, DocWrite] = {}
        for doc in docs:
            by_id[doc.doc_id] = doc
        for doc in by_id.values():
            self._check_write(doc)
        try:
            with self.engine.begin() as conn:
                version = self._bump_version(conn)
                result.version = version
                changed = write_rows(conn, self.id, version, by_id, delete_ids, utcnow(), result)
                for hook in self.storage.hooks:
                    hook.on_write(conn, self.id, list(changed.upserted), changed.removed)
                if in_transaction is not None:
                    in_transaction(conn, result)
        except sa.exc.OperationalError as exc:
            raise storage_error(exc) from exc
        except sa.exc.IntegrityError as exc:
            raise StorageError(f"write conflict in collection {self.record.name!r}: {exc.orig}; retry") from exc
        except sa.exc.DataError as exc:  # PostgreSQL refusing a value check_storable did not foresee
            raise InvalidInputError(
                f"collection {self.record.name!r}: the database rejected a value in this batch: "
                f"{str(exc.orig).strip().splitlines()[0]}"
            ) from exc
        result.ids = list(by_id)
        self._apply(version, changed.upserted, changed.removed)
        return result

    def _check_write(self, doc: DocWrite) -> None:
        """Shapes and spans before any SQL: a bad batch is refused whole, nothing written."""
        check_storable(doc)
        if doc.embedding is None:
            return
        vecs = doc.chunk_vectors()
        spans = doc.chunk_spans()
        if vecs.ndim != 2 or vecs.shape[1] != self.dimension or len(vecs) != len(spans) or not len(vecs):
            raise DimensionMismatchError(
                f"document {doc.doc_id!r}: embedding has shape {np.asarray(doc.embedding).shape} for "
                f"{len(spans)} chunk(s), collection {self.record.name!r} expects ({self.dimension},) per chunk"
            )
        n = len(doc.text)
        for start, end in spans:
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= n):
                raise InvalidInputError(f"document {doc.doc_id!r}: chunk span ({start}, {end}) is outside its text")

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
        """Compare SQL with the checkpoint on disk plus the change log, independently of memory.

        The rows compared are chunks (a document has one or more); the report names documents."""
        d, ch = s.documents.c, s.chunks.c
        with self._lock:
            self.check_open()
            # One snapshot for everything below, so a writer in another process committing
            # meanwhile cannot make rows and index disagree in the report.
            with self._snapshot() as conn:
                version = self.current_version(conn)
                rows = conn.execute(
                    sa.select(ch.id, d.doc_id, sa.func.length(ch.embedding))
                    .select_from(s.chunks.join(s.documents, d.vid == ch.doc_vid))
                    .where(ch.collection_id == self.id)
                ).all()
                n_docs = self.rows.count_in(conn)
                report = CheckReport(collection=self.record.name, rows=n_docs, vectors=0, chunks=len(rows))
                report.bad_embeddings = [r[1] for r in rows if r[2] != 4 * self.dimension]
                # What a fresh process would end up with: checkpoint + replay.
                probe, probe_version, report.checkpoint = checking.probe_checkpoint(
                    self.dir, self.record.index_spec, self.dimension, self.record.metric
                )
                if probe_version > version:  # checkpointed by another process after our snapshot
                    report.checkpoint += " (newer than this check's snapshot; compared as rebuilt)"
                    probe = build_index(self.record.index_spec, self.dimension, self.record.metric)
                    probe_version = 0  # replaying the whole log below is a rebuild from SQL
                if probe_version < version:
                    self._replay_into(probe, probe_version, conn)
                if self.applied_version < version:  # the live index, brought to the same instant
                    self.applied_version, touched = self._replay_into(self.index, self.applied_version, conn)
                    self._ops_since_checkpoint += touched
                row_vids = {int(r[0]): r[1] for r in rows}
                common = checking.compare_ids(report, row_vids, [probe, self.index])
                pick = checking.pick_sample(common, sample)
                recon = probe.reconstruct(pick) if len(pick) else None
                blobs: dict[int, bytes] = {}
                if recon is not None:
                    blobs = {
                        int(v): b
                        for v, b in conn.execute(sa.select(ch.id, ch.embedding).where(ch.id.in_(pick.tolist())))
                    }
            checking.compare_vectors(report, pick, recon, blobs, row_vids, self.dimension)
            return report

    def repair(self) -> CheckReport:
        """Rebuild the index from the stored embeddings (no re-encoding) and checkpoint it.

        Chunks whose document is gone (a row deleted behind semindex's back) are deleted first,
        through a logged write, so every process drops their vectors too."""
        with self._lock:
            self._drop_orphan_chunks()
            self._rebuild()
            self.checkpoint(force=True)
            return self.check()

    def _drop_orphan_chunks(self) -> int:
        with self.engine.begin() as conn:
            if not orphan_chunks(conn, self.id):
                return 0
            ids = drop_orphan_chunks(conn, self.id, self._bump_version(conn))
            for hook in self.storage.hooks:
                hook.on_write(conn, self.id, [], ids)
        log.warning("collection %r: removed %d chunks whose document was gone", self.record.name, len(ids))
        return len(ids)

    def reindex(
        self, spec: str | None = None, *, target_recall: float | None = None, memory_budget: str | int | None = None,
        device: str | None = None, add_batches: ShardedAdd | None = None,
    ) -> dict[str, Any]:
        """Rebuild the index from the stored embeddings (never re-encoding) and swap the checkpoint.

        ``spec``: auto, flat, hnsw, ivf, ivfpq, sq8, binary or a FAISS factory string (default: the current
        choice). The collection row records the choice and the tuning target; returns
        ``{"old": {...}, "new": {...}, "seconds": ..., "count": ...}``.

        ``add_batches`` installs an IVF index filled elsewhere (Ray tasks: ``autoindex.ShardedAdd``) with
        this build's sample, quantizer and tuning, its ids checked against the rows, through the atomic
        checkpoint: a failure before the swap keeps the index in use. The report adds "sharded"."""
        spec = (spec or self.record.index_spec).strip()
        build_index(spec, self.dimension, self.record.metric)  # a bad spec fails before any work
        if target_recall is not None and not 0 < target_recall <= 1:
            raise ConfigError(f"target recall must be in (0, 1], got {target_recall}")
        with self._lock:
            self.check_open()
            self.sync()
            old = {"type": self.index.spec, "policy": self.record.index_spec, "params": jsonable(self.index.params)}
            config = dict(self.record.config)
            config["generation"] = uuid.uuid4().hex  # other processes see the reindex by this (see _current_generation)
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
        try:
            index, version, report = self._build_report(spec, add_batches=add_batches)
        except BaseException:  # the index in use stays, and is this generation's to checkpoint now
            with self._lock:
                self.index.params["generation"] = config["generation"]
            raise
        with self._lock:
            self.check_open()
            self.index, self.applied_version = index, version
            self.sync()
            self.checkpoint(force=True)
            out = {"collection": self.record.name, "old": old,
                   "new": {"type": index.spec, "policy": spec, "params": jsonable(index.params)},
                   "count": len(index), "seconds": round(report.seconds, 3), "reason": report.reason}
            if add_batches is not None:
                out.update(sharded=report.sharded, timings={k: round(v, 3) for k, v in report.timings.items()})
            return out

    def disk_bytes(self) -> int:
        return folder_bytes(self.dir)
