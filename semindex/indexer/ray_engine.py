# mypy: disable-error-code="import-untyped"
"""``semindex index --engine ray``: encode on a Ray cluster, commit from one coordinator.

The shape, and why:

* **Plan (coordinator).** The sources are cut into *shards*: byte ranges of a JSONL file
  (cut at line starts), runs of Parquet row groups, or, for every other format (CSV, gzip,
  text folders, BEIR), slices of what semindex's own readers yield, read on the coordinator.
  A shard holds about ``--commit-every`` records, so it is also the unit of one SQL
  transaction. The plan is a pure function of the inputs (paths, sizes, mtimes, field
  options, model), so its hash names the *run*: re-running the same command finds the same
  run and continues it (``--resume`` says so explicitly and fails when there is nothing to
  continue).
* **Encode (Ray actors).** ``ray.data.from_items(shards).map_batches(ShardEncoder,
  compute=ActorPoolStrategy(size=N), num_gpus=G, batch_size=1)``: each actor loads the
  model once, reads its shard through the same field mapping and validation as the local
  path, derives ids and content hashes, and encodes only the records whose (id, hash) the
  store does not already hold (a sorted int64 fingerprint array shipped once through the
  object store, 8 bytes per stored document). It returns (id, hash, text, metadata, vector)
  rows; it never touches SQL, so actors need no database access.
* **Commit (coordinator only).** Each shard's rows land first as
  ``<store>/ray-runs/<run id>/shard-<k>.parquet`` (atomic rename; on a resume, a shard
  whose file is there is not encoded again), then go through the collection's ordinary
  transactional write (version bump, change log, embeddings in SQL, keyword index), in
  shard order, so ids, vector ids and upsert semantics are those of the local path. The
  same transaction inserts the shard's row in ``semindex_run_shards``: a shard is committed
  exactly once, whatever crashes and retries happen around it.
* **Vector index.** The coordinator's collection applies every committed shard to its
  index as the local path does (flat / HNSW / IVF through the same code), so the store is
  consistent at every commit. Once every shard is committed, an IVF / IVF-PQ collection's index
  is rebuilt from the committed vectors with its adds in parallel Ray tasks
  (:mod:`semindex.indexer.sharded_ivf`: the store's own sample, quantizer and tuning; each
  task adds a slice of the stored (global id, vector) rows; the coordinator merges) and
  installed through the store's reindex, i.e. the ordinary atomic checkpoint, so ``check``
  and ``serve`` see an ordinary collection whose top-10 equals a local reindex's. A crash or a
  failure before the install leaves the coordinator-built index in charge. Flat and HNSW stay
  coordinator-built.

Pitfalls handled by default (knobs in :class:`RayOptions`, documented in the README):
the actor pool leaves one CPU free for the driver and Ray's own tasks; a local cluster gets
a bounded object store; GPU actors get whole GPUs (``--gpus-per-actor 1``) unless told
otherwise, and ``CUDA_VISIBLE_DEVICES`` set by Ray picks the device; actors are restarted
and their shard retried when one dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from ..errors import ConfigError, ReadError, SemindexError, StorageError
from ..storage import schema as _schema

log = logging.getLogger(__name__)

RUNS_DIR = "ray-runs"
DEFAULT_OBJECT_STORE = 1 << 30  # a local cluster's object store: 1 GiB, or 20% of RAM if smaller
MIN_RAY = (2, 40)


class RayEngineError(SemindexError):
    """Ray could not be used: the extra is missing, the cluster is unreachable or incompatible."""

    code = "ray_error"
    exit_code = 2


# ---------------------------------------------------------------------------- options, plan


@dataclass
class RayOptions:
    """Everything ``--engine ray`` can be told; the defaults suit one machine and a small cluster alike.

    ``address``: None starts a local cluster in this process (it stops with the run); "auto"
    or "HOST:PORT" or "ray://HOST:10001" joins a running one. ``actors``: encoder actors
    (default: one per GPU when the cluster has GPUs, otherwise one per CPU minus one, so
    the driver and Ray's own tasks keep a core). ``gpus_per_actor``: default 1 on a GPU
    cluster, else 0; fractions must divide 1 (0.5, 0.25) or actors can stay unplaced.
    ``cpus_per_actor``: CPUs each actor reserves (and torch threads on a CPU actor).
    ``shard_size``: records per shard, i.e. per SQL transaction. ``object_store_bytes``:
    a local cluster's object store (spilling starts beyond it). ``actor_setup``:
    "module:function[:arg]" called in each actor before the model loads (register an encoder;
    default ``$SEMINDEX_RAY_ACTOR_SETUP``);
    it may return a callable ``f(shard_index)`` run before each shard (tests use it to
    kill an actor). ``keep_shards``: keep the run folder after a completed run.
    ``shard_index``: after a run that committed something, an IVF / IVF-PQ collection's index is
    rebuilt with its adds in Ray tasks of ``index_shard_rows`` vectors (see
    :mod:`semindex.indexer.sharded_ivf`) and installed as its checkpoint; False keeps the
    coordinator-built index. ``pool_wait_s``: every actor is started (model loaded) before the
    first shard is dispatched; a pool not up within this many seconds is an error, not a hang.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    batch_size: int = 32
    shard_size: int = 512
    resume: bool = False
    object_store_bytes: int | None = None
    num_cpus: int | None = None
    actor_setup: str | None = field(default_factory=lambda: os.environ.get("SEMINDEX_RAY_ACTOR_SETUP") or None)
    keep_shards: bool = False
    shard_index: bool = True
    index_shard_rows: int = 50_000
    pool_wait_s: float = 600.0


@dataclass
class Shard:
    """One unit of encoding and of commit. ``kind``: jsonl (bytes [start, end)), parquet (row
    groups [start, end)) or inline (records read on the coordinator, carried in ``payload``)."""

    index: int
    kind: str
    source: str
    start: int = 0
    end: int = 0
    line: int = 1  # first line (jsonl) or row number (parquet) of the shard, 1-based
    payload: str = ""

    def as_item(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunReport:
    """What a run did and where its time went (the benchmark prints these)."""

    run_id: str
    shards: int = 0
    resumed_shards: int = 0
    reused_files: int = 0
    encoded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    actors: int = 0
    gpus_per_actor: float = 0.0
    nodes: list[str] = field(default_factory=list)
    index: dict[str, Any] | None = None  # the sharded IVF build's reindex report, when there was one


def _reader_fields(reader: Mapping[str, Any]) -> Any:
    """The readers' field-mapping object (its class moved modules once; accept either home)."""
    from . import readers

    cls = getattr(readers, "Fields", None) or getattr(readers, "_Fields")  # noqa: B009
    return cls(
        id_field=reader.get("id_field"),
        text_fields=tuple(reader.get("text_fields") or ()) or ("text",),
        title_field=reader.get("title_field"),
        metadata_fields=tuple(reader.get("metadata_fields") or ()),
    )


def _parquet_required(fields: Any) -> list[str]:
    return [*fields.text_fields, *([fields.id_field] if fields.id_field else [])]


def plan_shards(sources: Sequence[Path | str], reader: Mapping[str, Any], shard_size: int) -> Iterator[Shard]:
    """Cut ``sources`` into shards, deterministically (the same inputs give the same shards)."""
    from .readers import detect_format, iter_records

    index = 0
    for src in sources:
        source = os.fsdecode(os.fspath(src))
        fmt = detect_format(source)
        if fmt == "jsonl" and not source.lower().endswith(".gz"):
            for start, end, line in _jsonl_ranges(source, shard_size):
                yield Shard(index, "jsonl", source, start, end, line)
                index += 1
        elif fmt == "parquet":
            for start, end, row in _parquet_groups(source, reader, shard_size):
                yield Shard(index, "parquet", source, start, end, row)
                index += 1
        else:
            batch: list[Any] = []
            for item in iter_records([source], **reader):
                batch.append(_encode_item(item))
                if len(batch) >= shard_size:
                    yield Shard(index, "inline", source, payload=json.dumps(batch, ensure_ascii=False))
                    index += 1
                    batch = []
            if batch:
                yield Shard(index, "inline", source, payload=json.dumps(batch, ensure_ascii=False))
                index += 1


def _jsonl_ranges(source: str, shard_size: int) -> Iterator[tuple[int, int, int]]:
    """(byte start, byte end, first line) of consecutive runs of ``shard_size`` records.

    Blank lines are carried along but not counted: the local path's commit batches are
    ``--commit-every`` *records*, and a shard is one commit, so counting blank lines would cut
    shards where local batches are not cut (and a batch holding an update gives the last
    vector ids in another order than the local run's)."""
    try:
        fh = open(source, "rb")  # noqa: SIM115 - entered below, once opening errors are mapped
    except OSError as exc:
        raise ReadError(f"cannot open file: {exc.strerror or exc}", source=source) from exc
    with fh:
        start, pos, line, lines_in, records, content = 0, 0, 1, 0, 0, False
        while True:
            raw = fh.readline()
            if not raw:
                break
            if raw.strip():
                if records >= shard_size:  # a full shard ends before this record (blank lines stay in it)
                    yield start, pos, line
                    start, line, lines_in, records = pos, line + lines_in, 0, 0
                records += 1
                content = True
            pos += len(raw)
            lines_in += 1
        if lines_in:
            yield start, pos, line
    if not content:
        raise ReadError("file is empty", source=source)


def _parquet_groups(source: str, reader: Mapping[str, Any], shard_size: int) -> Iterator[tuple[int, int, int]]:
    """(first row group, end row group, first row) runs of at least ``shard_size`` rows.

    A row group is never split: one larger than ``shard_size`` is one shard (and one
    transaction); write Parquet with smaller row groups for smaller transactions.
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
        names = list(pf.schema_arrow.names)
    except Exception as exc:  # pyarrow raises many types for bad files
        raise ReadError(f"invalid parquet file: {exc}", source=source) from exc
    with pf:
        missing = [n for n in _parquet_required(_reader_fields(reader)) if n not in names]
        if missing:
            raise ReadError(
                f"column {missing[0]!r} not in parquet schema (columns: {', '.join(names)})", source=source
            )
        meta = pf.metadata
        if meta.num_rows == 0:
            raise ReadError("file is empty", source=source)
        start, rows, row = 0, 0, 1
        for g in range(meta.num_row_groups):
            rows += meta.row_group(g).num_rows
            if rows >= shard_size:
                yield start, g + 1, row
                start, row, rows = g + 1, row + rows, 0
        if start < meta.num_row_groups and rows:
            yield start, meta.num_row_groups, row


def _encode_item(item: Any) -> list[Any]:
    """A Record or ReadError as JSON (inline shards): ["r", id, text, title, metadata, source, line] / ["e", ...]."""
    if isinstance(item, ReadError):
        return ["e", item.reason, item.source, item.line]
    from .pipeline import jsonable

    try:
        meta = jsonable(item.metadata)
    except SemindexError as exc:
        return ["e", str(exc), item.source, item.line]
    return ["r", item.id, item.text, item.title, meta, item.source, item.line]


def _decode_item(raw: list[Any]) -> Any:
    from .readers import Record

    if raw[0] == "e":
        return ReadError(raw[1], source=raw[2], line=raw[3])
    return Record(id=raw[1], text=raw[2], title=raw[3], metadata=raw[4], source=raw[5], line=raw[6])


def read_shard(shard: Mapping[str, Any], reader: Mapping[str, Any]) -> Iterator[Any]:
    """The Records and ReadErrors of one shard, as the local readers would yield them."""
    kind, source = shard["kind"], shard["source"]
    if kind == "inline":
        for raw in json.loads(shard["payload"]):
            yield _decode_item(raw)
        return
    from . import readers

    to_record = readers._to_record
    fields = _reader_fields(reader)
    if kind == "jsonl":
        with open(source, "rb") as fh:
            fh.seek(int(shard["start"]))
            remaining = int(shard["end"]) - int(shard["start"])
            lineno = int(shard["line"]) - 1
            while remaining > 0:
                raw = fh.readline()
                if not raw:
                    break
                remaining -= len(raw)
                lineno += 1
                item = _json_object(raw, source, lineno)
                if item is None:
                    continue
                yield item if isinstance(item, ReadError) else to_record(item, fields, source, lineno)
        return
    if kind == "parquet":
        import pyarrow.parquet as pq

        names: list[str]
        with pq.ParquetFile(source) as pf:
            names = list(pf.schema_arrow.names)
            columns: list[str] | None = None
            if fields.metadata_fields:
                wanted = {*_parquet_required(fields), *fields.metadata_fields, "_id", "id", "title", "metadata"}
                if fields.title_field:
                    wanted.add(fields.title_field)
                columns = [n for n in names if n in wanted]
            row = int(shard["line"]) - 1
            groups = list(range(int(shard["start"]), int(shard["end"])))
            for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=columns):
                for obj in batch.to_pylist():
                    row += 1
                    yield to_record(obj, fields, source, row)
        return
    raise ConfigError(f"unknown shard kind {kind!r}")


def _json_object(raw: bytes, source: str, lineno: int) -> dict[str, Any] | ReadError | None:
    """One JSONL line as the local reader decodes it (None for a blank line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return ReadError(f"invalid UTF-8 at byte {e.start}", source=source, line=lineno)
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return ReadError(f"invalid JSON: {e.msg} (column {e.colno})", source=source, line=lineno)
    except (ValueError, RecursionError) as e:
        return ReadError(f"invalid JSON: {e}", source=source, line=lineno)
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
        return ReadError(f"expected a JSON object, got {kind}", source=source, line=lineno)
    return value


# ---------------------------------------------------------------------------- the actor side


def fingerprint(doc_id: str, content_hash: str) -> int:
    """8-byte key of (id, content): what the actors test to skip unchanged documents."""
    digest = hashlib.blake2b(f"{doc_id}\x1f{content_hash}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


STARTED_KEY = b"semindex_started"  # schema metadata of an actor's output: when its call began (time.time())
SHARD_SCHEMA_FIELDS = (
    "shard", "ord", "nrows", "kind", "doc_id", "text", "title", "metadata", "content_hash", "vector",
    "error", "source", "line",
)


def encode_shard(
    shard: Mapping[str, Any],
    reader: Mapping[str, Any],
    encoder: Any,
    known: np.ndarray,
    *,
    batch_size: int,
    normalize: bool,
) -> Any:
    """One shard -> a pyarrow table of its rows (kind 'doc' or 'error'; one 'empty' row if none)."""
    import pyarrow as pa

    from .pipeline import _validate, content_hash, derive_id, embedding_input

    cols: dict[str, list[Any]] = {k: [] for k in SHARD_SCHEMA_FIELDS}
    todo: list[int] = []
    texts: list[str] = []

    def add(kind: str, **values: Any) -> int:
        for k in SHARD_SCHEMA_FIELDS[3:]:
            cols[k].append(values.get(k))
        cols["kind"][-1] = kind
        return len(cols["kind"]) - 1

    for item in read_shard(shard, reader):
        err = item if isinstance(item, ReadError) else _validate(item)
        if err is not None:
            add("error", error=err.reason, source=err.source, line=err.line)
            continue
        text, title = item.text, item.title
        if not text.strip() and title:
            text, title = title, None
        h = content_hash(text, title)
        doc_id = item.id if item.id is not None else derive_id(text, title)
        i = add("doc", doc_id=doc_id, text=text, title=title, metadata=json.dumps(item.metadata, ensure_ascii=False),
                content_hash=h, source=item.source, line=item.line)
        key = fingerprint(doc_id, h)
        pos = int(np.searchsorted(known, key))
        if pos >= len(known) or known[pos] != key:
            todo.append(i)
            texts.append(embedding_input(text, title))
    if todo:
        vecs = encoder.encode(texts, batch_size=batch_size, normalize=normalize)
        for i, v in zip(todo, vecs):
            cols["vector"][i] = np.asarray(v, dtype=np.float32).tobytes()
    if not cols["kind"]:
        add("empty")
    n = len(cols["kind"])
    cols["shard"] = [int(shard["index"])] * n
    cols["ord"] = list(range(n))
    cols["nrows"] = [n] * n
    return pa.table({k: cols[k] for k in SHARD_SCHEMA_FIELDS}, schema=shard_schema())


def shard_schema() -> Any:
    import pyarrow as pa

    s, i, b = pa.string(), pa.int64(), pa.binary()
    return pa.schema([
        ("shard", i), ("ord", i), ("nrows", i), ("kind", s), ("doc_id", s), ("text", s), ("title", s),
        ("metadata", s), ("content_hash", s), ("vector", b), ("error", s), ("source", s), ("line", i),
    ])


class ShardEncoder:
    """The Ray Data callable class: the model is loaded once per actor, in ``__init__``."""

    def __init__(
        self,
        model: str,
        reader: dict[str, Any],
        known: list[Any],
        batch_size: int,
        normalize: bool,
        cpus: float,
        setup: str | None,
    ) -> None:
        import ray

        self.before_shard: Callable[[int], None] | None = None
        if setup:
            mod, _, rest = setup.partition(":")
            fn, _, arg = rest.partition(":")
            func = getattr(importlib.import_module(mod), fn)
            hook = func(arg) if arg else func()
            self.before_shard = hook if callable(hook) else None
        gpu_ids = ray.get_gpu_ids()
        device = "cuda" if gpu_ids else "cpu"
        from .encoder import get_encoder

        self.encoder = get_encoder(model, device)
        if device == "cpu" and "torch" in sys.modules:  # a torch model: stay within the actor's CPUs
            sys.modules["torch"].set_num_threads(max(1, int(cpus)))
        self.reader = reader
        self.known = ray.get(known[0]) if known else np.empty(0, dtype=np.int64)
        self.batch_size = batch_size
        self.normalize = normalize

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        started = time.time()
        tables = []
        for i in range(len(batch["index"])):
            shard = {k: _py(v[i]) for k, v in batch.items()}
            if self.before_shard is not None:
                self.before_shard(int(shard["index"]))
            tables.append(
                encode_shard(shard, self.reader, self.encoder, self.known,
                             batch_size=self.batch_size, normalize=self.normalize)
            )
        # when this call started (wall clock), so the driver can time the run from the first
        # shard an actor actually began, not from when the pool was asked for
        return pa.concat_tables(tables).replace_schema_metadata({STARTED_KEY: repr(started)})


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------- runs in SQL

# The run tables live with the rest of the schema (semindex/storage/schema.py), so every store
# has them and dropping a collection drops its runs.

runs_table = _schema.runs
run_shards_table = _schema.run_shards


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------- the coordinator


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayEngineError(
            "--engine ray needs Ray: pip install 'semindex[ray]' (ray[data] >= 2.40)"
        ) from exc
    parts = tuple(int(p) for p in ray.__version__.split(".")[:2] if p.isdigit())
    if parts < MIN_RAY:
        raise RayEngineError(f"--engine ray needs ray >= {'.'.join(map(str, MIN_RAY))}, found {ray.__version__}")
    return ray


@contextlib.contextmanager
def ray_session(ray: Any, opts: RayOptions) -> Iterator[None]:
    """ray.init for the run (and ray.shutdown after); every failure to connect is one line."""
    if ray.is_initialized():
        yield  # the caller (a test, a notebook) owns the connection
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.ERROR}
    if opts.address:
        kwargs["address"] = opts.address
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 8 << 30
        kwargs["object_store_memory"] = opts.object_store_bytes or min(DEFAULT_OBJECT_STORE, total // 5)
        if opts.num_cpus is not None:
            kwargs["num_cpus"] = opts.num_cpus
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if opts.address and opts.address != "auto":
        _probe(opts.address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError) as exc:
        raise RayEngineError(f"cannot reach the Ray cluster at {opts.address}: {_first_line(exc)}") from exc
    except RuntimeError as exc:
        msg = _first_line(exc)
        if "version mismatch" in str(exc).lower():
            raise RayEngineError(f"Ray version mismatch with the cluster at {opts.address}: {msg}") from exc
        raise RayEngineError(f"cannot start or join a Ray cluster ({opts.address or 'local'}): {msg}") from exc
    except Exception as exc:  # ray raises a zoo of types for bad addresses
        raise RayEngineError(f"cannot start or join a Ray cluster ({opts.address or 'local'}): {_first_line(exc)}") from exc
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address``.

    ``ray.init`` keeps retrying an unreachable GCS for minutes before it gives up.
    """
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"invalid Ray address {address!r}: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayEngineError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` running there?)"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


PLAN_VERSION = "records-2"  # JSONL shards count records, not lines (blank lines ride along)


def _plan_hash(coll: Any, sources: Sequence[Path | str], reader: Mapping[str, Any], opts: RayOptions) -> str:
    # PLAN_VERSION: how shards are cut; a run planned another way is not resumed as this one
    parts: list[Any] = [PLAN_VERSION, coll.record.name, coll.record.id, coll.model, opts.shard_size,
                        {k: list(v) if isinstance(v, tuple) else v for k, v in reader.items()}]
    for src in sources:
        p = Path(src).resolve()
        entries = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for q in entries:
            st = q.stat()
            parts.append([str(q), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _known_fingerprints(coll: Any) -> np.ndarray:
    """Sorted fingerprints of every stored (id, content): the actors' 'already indexed' test."""
    from ..storage import schema as s  # read-only; the table every write goes to

    d = s.documents.c
    keys: list[int] = []
    with coll.storage.engine.connect() as conn:
        q = sa.select(d.doc_id, d.content_hash).where(d.collection_id == coll.storage.id)
        for part in conn.execution_options(yield_per=50_000).execute(q).partitions(50_000):
            keys.extend(fingerprint(doc_id, h) for doc_id, h in part)
    arr = np.array(keys, dtype=np.int64)
    arr.sort()
    return arr


def _write_shard_file(table: Any, path: Path, run_id: str) -> str:
    import pyarrow.parquet as pq

    table = table.sort_by("ord").replace_schema_metadata({"semindex_run": run_id})
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return _file_sha(path)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_shard_file(path: Path, run_id: str) -> Any | None:
    """A complete shard file of this run, or None (missing, torn, another run's)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply redone
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"semindex_run") != run_id.encode() or table.num_rows == 0:
        return None
    if int(table.column("nrows")[0].as_py()) != table.num_rows:
        return None
    return table


def ray_index(
    coll: Any,
    sources: Sequence[Path | str],
    opts: RayOptions,
    *,
    reader: Mapping[str, Any] | None = None,
    on_error: str = "fail",
    progress: Callable[[int], None] | None = None,
    stats: Any = None,
    notify: Callable[[str], None] | None = None,
) -> RunReport:
    """Index ``sources`` into ``coll`` (a :class:`semindex.core.Collection`) with Ray actors.

    Fills ``stats`` (an :class:`~semindex.indexer.pipeline.IngestStats`) as the local path
    does, commits shard by shard, and raises the first bad record with ``on_error='fail'``
    after committing everything read before it.
    """
    from .pipeline import IngestStats

    if coll.model is None:
        raise ConfigError(f"collection {coll.name!r} holds precomputed vectors: use import-vectors")
    if coll.record.config.get("truncate_dim"):  # the actors encode with the bare model: full-size vectors
        raise ConfigError(f"collection {coll.name!r} keeps its model's first {coll.record.config['truncate_dim']} "
                          "dims (--dimensions); --engine ray does not truncate yet: index it with the local "
                          "engine (optionally --devices)")
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be fail or skip, got {on_error!r}")
    reader = dict(reader or {})
    stats = stats if stats is not None else IngestStats()
    say = notify or (lambda msg: print(msg, file=sys.stderr))
    ray = _import_ray()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    storage = coll.storage
    engine = storage.engine
    sources = [Path(s) for s in sources]

    base = _plan_hash(coll, sources, reader, opts)
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(runs_table.c.run_id, runs_table.c.status).where(runs_table.c.plan_hash == base)
        ).all()
    unfinished = [r.run_id for r in rows if r.status != "done"]
    if unfinished:
        run_id, resumed = unfinished[0], True
    elif opts.resume:
        raise ConfigError("--resume: there is no interrupted run of this command to continue")
    else:
        run_id, resumed = f"{base}-{len(rows) + 1}", False
        with engine.begin() as conn:
            conn.execute(runs_table.insert().values(
                run_id=run_id, collection_id=storage.id, plan_hash=base, status="running", created_at=_now()))
    report = RunReport(run_id=run_id)
    run_dir = storage.storage.path / RUNS_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    shards = list(plan_shards(sources, reader, opts.shard_size))
    timings["plan"] = time.perf_counter() - t
    report.shards = len(shards)
    (run_dir / "plan.json").write_text(json.dumps(
        {"run_id": run_id, "shards": len(shards), "sources": [str(s) for s in sources], "reader":
         {k: list(v) if isinstance(v, tuple) else v for k, v in reader.items()}}, indent=1))
    with engine.begin() as conn:
        conn.execute(sa.update(runs_table).where(runs_table.c.run_id == run_id).values(shards=len(shards)))
        done_rows = conn.execute(
            sa.select(run_shards_table).where(run_shards_table.c.run_id == run_id)
        ).all()
    committed = {int(r.shard): r for r in done_rows}
    for r in committed.values():  # a resumed run reports the whole run's counts
        stats.added += r.added
        stats.updated += r.updated
        stats.unchanged += r.unchanged
        stats.failed += r.failed
        if progress is not None:
            progress(r.rows)
    report.resumed_shards = len(committed)
    if resumed:
        say(f"resuming run {run_id}: {len(committed)} of {len(shards)} shards already committed")

    ready: dict[int, Path] = {}
    todo: list[Shard] = []
    for sh in shards:
        if sh.index in committed:
            continue
        path = run_dir / f"shard-{sh.index:06d}.parquet"
        if _read_shard_file(path, run_id) is not None:
            ready[sh.index] = path
            report.reused_files += 1
        else:
            todo.append(sh)

    session = contextlib.ExitStack()  # the Ray connection, if the run opens one: encode, then the index
    version_before = storage.current_version()
    ds: Any = None
    next_shard = 0
    order = [sh.index for sh in shards]
    commit_s = 0.0

    def commit_ready() -> None:
        nonlocal next_shard, commit_s
        while next_shard < len(order):
            k = order[next_shard]
            if k in committed:
                next_shard += 1
                continue
            if k not in ready:
                return
            tc = time.perf_counter()
            _commit_shard(coll, run_id, k, ready[k], on_error, stats, progress)
            commit_s += time.perf_counter() - tc
            committed[k] = True
            next_shard += 1

    try:
        commit_ready()
        if todo:
            t = time.perf_counter()
            session.enter_context(ray_session(ray, opts))  # shut down in the finally below
            timings["ray_start"] = time.perf_counter() - t
            report.nodes = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
            res = ray.cluster_resources()
            gpus = float(res.get("GPU", 0))
            cpus = float(res.get("CPU", 1))
            gpa = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
            if gpa > gpus:
                raise ConfigError(f"--gpus-per-actor {gpa:g}: the cluster has {gpus:g} GPUs")
            if opts.actors is not None:
                n_actors = opts.actors
            elif gpa > 0:
                n_actors = max(1, int(gpus // gpa))
            else:
                n_actors = max(1, int((cpus - 1) // max(opts.cpus_per_actor, 0.01)))
            n_actors = min(n_actors, len(todo))
            report.actors, report.gpus_per_actor = n_actors, gpa
            known_ref = ray.put(_known_fingerprints(coll))
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = False
            # every actor constructed (model loaded) before the first shard is dispatched: start-up
            # is not spread over the first shards, and an unplaceable pool fails instead of hanging
            ctx.wait_for_min_actors_s = max(1, int(opts.pool_wait_s))
            with contextlib.suppress(AttributeError):
                ctx.enable_progress_bars = False
            with contextlib.suppress(AttributeError):
                ctx.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            ds = ray.data.from_items([sh.as_item() for sh in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(
                ShardEncoder,
                fn_constructor_kwargs={
                    "model": coll.model, "reader": reader, "known": [known_ref],
                    "batch_size": opts.batch_size, "normalize": bool(coll.record.normalize),
                    "cpus": opts.cpus_per_actor, "setup": opts.actor_setup,
                },
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                num_cpus=opts.cpus_per_actor,
                num_gpus=gpa or None,
                udf_modifying_row_count=True,
            )  # Ray Data restarts a dead actor and retries its shard (max_restarts=-1 by default)
            parts: dict[int, list[Any]] = {}
            t_first: float | None = None
            first_began: float | None = None  # wall clock: the earliest shard start an actor reported
            t_enc = time.perf_counter()
            for table in _pool_errors(ray, ds.iter_batches(batch_size=None, batch_format="pyarrow"), opts, n_actors):
                if t_first is None:
                    t_first = time.perf_counter() - t_enc
                with contextlib.suppress(KeyError, TypeError, ValueError):  # a block without the stamp
                    began = float((table.schema.metadata or {})[STARTED_KEY])
                    first_began = began if first_began is None else min(first_began, began)
                for k in sorted(set(table.column("shard").to_pylist())):
                    import pyarrow.compute as pc

                    piece = table.filter(pc.equal(table.column("shard"), k))
                    parts.setdefault(k, []).append(piece)
                    got = sum(p.num_rows for p in parts[k])
                    if got == int(piece.column("nrows")[0].as_py()):
                        import pyarrow as pa

                        path = run_dir / f"shard-{k:06d}.parquet"
                        _write_shard_file(pa.concat_tables(parts.pop(k)), path, run_id)
                        ready[k] = path
                        report.encoded += 1
                commit_ready()
            timings["first_shard"] = t_first or 0.0
            timings["encode_and_commit"] = time.perf_counter() - t_enc
            if first_began is not None:  # the window from the first shard begun to the last one committed
                timings["first_dispatch_to_last_commit"] = max(0.0, time.time() - first_began)
        commit_ready()
        if next_shard < len(order):
            raise StorageError(f"Ray run {run_id} ended with {len(order) - next_shard} shards not produced; re-run to resume")
        with engine.begin() as conn:
            conn.execute(sa.update(runs_table).where(runs_table.c.run_id == run_id).values(
                status="done", finished_at=_now()))
        if not opts.keep_shards:
            for p in run_dir.glob("*"):
                with contextlib.suppress(OSError):
                    p.unlink()
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        ds = None  # Ray Data's actors go with their dataset: their CPUs are the index tasks' now
        if opts.shard_index and storage.current_version() > version_before:
            t = time.perf_counter()
            report.index = _index_in_ray_tasks(ray, opts, storage, session, say)
            if report.index is not None:
                timings["index_build"] = time.perf_counter() - t
    finally:
        session.close()
        timings["commit"] = commit_s
        timings["total"] = time.perf_counter() - t0
        stats.seconds = timings["total"]
        report.seconds = {k: round(v, 4) for k, v in timings.items()}
    return report


def _pool_errors(ray: Any, batches: Iterator[Any], opts: RayOptions, n_actors: int) -> Iterator[Any]:
    """``batches``, with Ray Data's timeout for an actor pool that never came up as one line."""
    try:
        yield from batches
    except ray.exceptions.GetTimeoutError as exc:
        raise RayEngineError(
            f"the {n_actors} encoder actors did not all start within {opts.pool_wait_s:g} s: the cluster lacks "
            f"the CPUs/GPUs for them ({opts.cpus_per_actor:g} CPU, {opts.gpus_per_actor or 0:g} GPU each); "
            "use fewer --actors"
        ) from exc


def _index_in_ray_tasks(
    ray: Any, opts: RayOptions, storage: Any, session: contextlib.ExitStack, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """After the commits: rebuild an IVF / IVF-PQ collection's index with its adds in Ray tasks.

    The coordinator's own index (built shard by shard as the local path does) stays in use and
    checkpointed until the sharded one is installed, so any failure here costs only the speed-up:
    it is reported as a warning, the run still succeeds, and ``check`` passes either way. Flat,
    HNSW, SQ8 and binary collections are left as the coordinator built them (None).
    """
    from .sharded_ivf import builds_ivf, sharded_reindex

    if not builds_ivf(storage):
        return None
    try:
        if not ray.is_initialized():  # a resumed run with nothing left to encode
            session.enter_context(ray_session(ray, opts))
        rep = sharded_reindex(storage, ray, shard_rows=opts.index_shard_rows)
    except Exception as exc:  # noqa: BLE001 - the rows are committed and the index in use is valid
        say(f"warning: the sharded index build failed ({_first_line(exc)}); the coordinator-built index is kept")
        log.warning("sharded IVF build failed", exc_info=True)
        return None
    if rep is not None:
        params = rep["new"]["params"]
        say(f"vector index: {rep['new']['type']} (nlist={params.get('nlist')}, nprobe={params.get('nprobe')}) "
            f"over {rep['count']} vectors, added in {rep['parts']} Ray tasks, in {rep['seconds']:.1f} s")
    return rep


@contextlib.contextmanager
def ray_index_builder(
    address: str | None = None, *, notify: Callable[[str], None] | None = None
) -> Iterator[Callable[[Any], dict[str, Any] | None]]:
    """A Ray connection held open for building IVF indexes in Ray tasks (``import-vectors --engine ray``).

    Opened before any work, so a missing extra or an unreachable address fails (one line, exit 2)
    before a row is written; yields ``build(collection_storage)``, which rebuilds an IVF / IVF-PQ
    collection's index with its adds in Ray tasks and installs it (None for other families, or
    when the sharded build failed and the index built while importing was kept).
    """
    ray = _import_ray()
    opts = RayOptions(address=address)
    say = notify or (lambda msg: print(msg, file=sys.stderr))
    with contextlib.ExitStack() as session:
        session.enter_context(ray_session(ray, opts))
        yield lambda storage: _index_in_ray_tasks(ray, opts, storage, session, say)


def _commit_shard(
    coll: Any,
    run_id: str,
    k: int,
    path: Path,
    on_error: str,
    stats: Any,
    progress: Callable[[int], None] | None,
) -> None:
    """One shard -> one write transaction that also records the shard as committed."""
    import pyarrow.parquet as pq

    try:
        from ..storage import DocWrite  # the storage package's public name (after its split)
    except ImportError:  # pragma: no cover - the tree before the split
        from ..storage.store import DocWrite  # type: ignore[attr-defined,no-redef,unused-ignore]

    table = pq.read_table(path).sort_by("ord")
    rows = table.to_pylist()
    docs: list[Any] = []
    failed = 0
    error: ReadError | None = None
    errors: list[str] = []
    for r in rows:
        if r["kind"] == "doc":
            vec = r["vector"]
            docs.append(DocWrite(
                doc_id=r["doc_id"], text=r["text"], title=r["title"], metadata=json.loads(r["metadata"]),
                content_hash=r["content_hash"],
                embedding=np.frombuffer(vec, dtype=np.float32).copy() if vec is not None else None,
            ))
        elif r["kind"] == "error":
            err = ReadError(r["error"], source=r["source"], line=r["line"])
            failed += 1
            if on_error == "fail":
                error = err
                break
            errors.append(str(err))
    _encode_stale(coll, docs)
    if error is not None:
        # Commit the good records before the bad one, as the local path does, but do not
        # record the shard: after the line is fixed, a re-run plans anew (the file changed).
        if docs:
            stats.merge(coll.storage.write(docs))
        stats.failed += 1
        raise error
    checksum = _file_sha(path)

    def record(conn: Any, res: Any) -> None:
        """Inside the shard's write transaction, with its counts: the (run_id, shard) primary key
        makes a second commit of the same shard fail and roll back whole, so even two coordinators
        racing cannot commit a shard twice, and a resumed run's summary has every shard's counts."""
        conn.execute(run_shards_table.insert().values(
            run_id=run_id, shard=k, rows=len(rows), added=res.added, updated=res.updated,
            unchanged=res.unchanged, failed=failed, checksum=checksum, committed_at=_now()))

    res = coll.storage.write(docs, in_transaction=record)
    stats.merge(res)
    stats.ids.extend(res.ids)
    stats.failed += failed
    for e in errors:
        if len(stats.errors) < 20:
            stats.errors.append(e)
    if progress is not None:
        progress(len(rows))


def _encode_stale(coll: Any, docs: list[Any]) -> None:
    """Give a vector to rows the actors skipped as 'stored unchanged' that no longer are.

    The actors test against the store as it was when the run started; an id that appears
    twice in the input with different content (or a concurrent writer) changes the store in
    between. Those rows, rare by nature, are encoded here on the coordinator, so the write
    sees exactly what the local path would.
    """
    blank = [d for d in docs if d.embedding is None]
    if not blank:
        return
    stored = coll.storage.existing([d.doc_id for d in blank])
    stale = [d for d in blank if stored.get(d.doc_id, ("",))[0] != d.content_hash]
    if not stale:
        return
    from .pipeline import embedding_input

    vecs = coll.encoder.encode(
        [embedding_input(d.text, d.title) for d in stale], batch_size=32, normalize=bool(coll.record.normalize)
    )
    for d, v in zip(stale, vecs):
        d.embedding = np.asarray(v, dtype=np.float32)
