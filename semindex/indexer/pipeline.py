"""The batched ingest loop: records -> dedupe -> encode -> one transaction per batch.

Each batch is committed whole before the next is read further, so a crash or
a bad record loses at most the batch in flight, and re-running the same
command skips everything already committed (ids are stable and unchanged
content is recognised by its hash, never re-encoded).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import InvalidInputError, ReadError
from ..storage import CollectionStorage, DocWrite, WriteResult
from ..validation import has_nul
from .chunking import Chunker
from .encoder import Encoder
from .readers import Record

OnError = Literal["fail", "skip"]
MAX_ERRORS_KEPT = 20


def content_hash(text: str, title: str | None) -> str:
    h = hashlib.sha256()
    h.update((title or "").encode("utf-8"))
    h.update(b"\x1f")
    h.update(text.encode("utf-8"))
    return h.hexdigest()


def derive_id(text: str, title: str | None) -> str:
    """Content-derived id: re-reading the same input yields the same ids, so re-runs never duplicate."""
    return content_hash(text, title)[:32]


def embedding_input(text: str, title: str | None) -> str:
    """What the model sees. Title then body, as BEIR's dense baselines encode them."""
    return f"{title} {text}" if title else text


@dataclass
class IngestStats:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    deleted: int = 0
    chunks: int = 0  # chunks encoded (a document too long for the model's window has several)
    truncated: int = 0  # documents the model cut at its window (only when chunking is off)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.added + self.updated + self.unchanged + self.failed

    @property
    def docs_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def merge(self, res: WriteResult) -> None:
        self.added += res.added
        self.updated += res.updated
        self.unchanged += res.unchanged
        self.deleted += res.deleted

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "chunks": self.chunks,
            "truncated": self.truncated,
            "seconds": round(self.seconds, 3),
            "docs_per_s": round(self.docs_per_s, 1),
        }


def to_record(doc: Any, n: int) -> Record:
    """Library input -> Record: a str, a mapping with text/id/title/metadata, or a Record."""
    if isinstance(doc, Record):
        return doc
    if isinstance(doc, str):
        return Record(id=None, text=doc, title=None, metadata={}, source="<input>", line=n)
    if isinstance(doc, Mapping) or hasattr(doc, "text"):
        get = doc.get if isinstance(doc, Mapping) else (lambda k, d=None: getattr(doc, k, d))
        text = get("text")
        if not isinstance(text, str):
            raise InvalidInputError(f"document #{n}: 'text' must be a string, got {type(text).__name__}")
        doc_id = get("id")
        if doc_id is not None and not isinstance(doc_id, (str, int)):
            raise InvalidInputError(f"document #{n}: 'id' must be a string")
        meta = get("metadata") or {}
        if not isinstance(meta, Mapping):
            raise InvalidInputError(f"document #{n}: 'metadata' must be an object")
        title = get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidInputError(f"document #{n}: 'title' must be a string")
        return Record(
            id=None if doc_id is None else str(doc_id),
            text=text,
            title=title or None,
            metadata=dict(meta),
            source="<input>",
            line=n,
        )
    raise InvalidInputError(f"document #{n}: expected a str or a mapping with 'text', got {type(doc).__name__}")


def jsonable(value: Any, where: str = "metadata") -> Any:
    """Metadata as JSON values: parquet and numpy hand us dates, decimals, bytes and numpy scalars."""
    import datetime as dt
    import decimal
    import math

    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return jsonable(float(value), where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    if isinstance(value, np.generic):
        return jsonable(value.item(), where)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), where)
    raise InvalidInputError(f"{where}: {type(value).__name__} values cannot be stored as JSON")


def _validate(rec: Record) -> ReadError | None:
    if not rec.text or not rec.text.strip():
        if rec.title and rec.title.strip():
            return None
        return ReadError("record has no text", source=rec.source, line=rec.line)
    if rec.id is not None and (rec.id == "" or len(rec.id) > 512):
        return ReadError("id must be 1-512 characters", source=rec.source, line=rec.line)
    try:
        rec.metadata = jsonable(rec.metadata)
    except InvalidInputError as exc:
        return ReadError(str(exc), source=rec.source, line=rec.line)
    # PostgreSQL cannot store NUL in text or JSON; refuse it per record on every backend alike.
    if has_nul(rec.text) or has_nul(rec.title) or has_nul(rec.id) or has_nul(rec.metadata):
        return ReadError("record contains a NUL character", source=rec.source, line=rec.line)
    return None


def batched(items: Iterable[Record | ReadError], size: int) -> Iterator[list[Record | ReadError]]:
    batch: list[Record | ReadError] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest(
    records: Iterable[Record | ReadError],
    storage: CollectionStorage,
    encoder: Encoder,
    *,
    commit_every: int = 512,
    batch_size: int = 32,
    on_error: OnError = "fail",
    normalize: bool = True,
    progress: Callable[[int], None] | None = None,
    stats: IngestStats | None = None,
    chunker: Chunker | None = None,
) -> IngestStats:
    """Index ``records`` into ``storage``; returns counts. Raises the first bad record with on_error='fail'.

    With 'fail', the good records read before the bad one are committed first,
    so fixing the line and re-running continues where it stopped. Pass ``stats`` to
    keep the partial counts when it raises.
    """
    stats = stats if stats is not None else IngestStats()
    start = time.perf_counter()
    try:
        for batch in read_ahead(batched(records, commit_every)):
            good: list[Record] = []
            error: ReadError | None = None
            for item in batch:
                if isinstance(item, ReadError):
                    err: ReadError | None = item
                else:
                    err = _validate(item)
                if err is not None:
                    if on_error == "fail":
                        error = err
                        break
                    stats.failed += 1
                    if len(stats.errors) < MAX_ERRORS_KEPT:
                        stats.errors.append(str(err))
                    continue
                assert isinstance(item, Record)
                good.append(item)
            reported = 0
            if good:
                def encoded(n: int) -> None:
                    nonlocal reported
                    reported += n
                    if progress is not None:
                        progress(n)

                _write_batch(good, storage, encoder, stats, batch_size=batch_size, normalize=normalize,
                             chunker=chunker, on_encoded=encoded)
            if progress is not None and len(batch) > reported:
                progress(len(batch) - reported)  # unchanged, failed and not-yet-reported records
            if error is not None:
                stats.failed += 1
                raise error
    finally:
        stats.seconds = time.perf_counter() - start
    return stats


def _write_batch(
    recs: list[Record],
    storage: CollectionStorage,
    encoder: Encoder,
    stats: IngestStats,
    *,
    batch_size: int,
    normalize: bool,
    chunker: Chunker | None = None,
    on_encoded: Callable[[int], None] | None = None,
) -> None:
    rows: list[DocWrite] = []
    for rec in recs:
        text, title = rec.text, rec.title
        if not text.strip() and title:
            text, title = title, None
        h = content_hash(text, title)
        rows.append(
            DocWrite(
                doc_id=rec.id if rec.id is not None else derive_id(text, title),
                text=text,
                title=title,
                metadata=dict(rec.metadata),
                content_hash=h,
                embedding=None,
            )
        )
    known = storage.existing([r.doc_id for r in rows])
    todo = [r for r in rows if known.get(r.doc_id, ("",))[0] != r.content_hash]
    # an id repeated inside the batch with different content must be encoded too
    if todo:
        inputs: list[str] = []
        cuts: list[int] = [0]
        for r in todo:
            spans = chunker.spans(r.text, r.title) if chunker is not None else [(0, len(r.text))]
            if chunker is not None and not chunker.spec.enabled and chunker.truncates(r.text, r.title):
                stats.truncated += 1
            r.spans = spans
            inputs += [embedding_input(r.text[s:e], r.title) for s, e in spans]
            cuts.append(len(inputs))
        vecs = _encode(encoder, inputs, cuts, batch_size=batch_size, normalize=normalize, on_encoded=on_encoded)
        for i, r in enumerate(todo):
            r.embedding = vecs[cuts[i] : cuts[i + 1]]
        stats.chunks += len(inputs)
    res = storage.write(rows)
    stats.merge(res)
    stats.ids.extend(res.ids)


def _encode(
    encoder: Encoder,
    inputs: list[str],
    cuts: list[int],
    *,
    batch_size: int,
    normalize: bool,
    on_encoded: Callable[[int], None] | None,
) -> np.ndarray:
    """Vectors for ``inputs`` (document ``i`` owns ``inputs[cuts[i]:cuts[i+1]]``), in their order.

    An encoder that runs one batch at a time gets one model batch per call, longest inputs
    first across the whole commit batch (least padding), and ``on_encoded`` hears after each
    batch how many more documents have all their inputs encoded: the progress bar moves per
    model batch, not per commit. Any other encoder (one that spreads a call over several
    workers) gets everything in one call.
    """
    if not getattr(encoder, "one_batch_at_a_time", False) or len(inputs) <= batch_size:
        vecs = encoder.encode(inputs, batch_size=batch_size, normalize=normalize)
        if on_encoded is not None:
            on_encoded(len(cuts) - 1)
        return vecs
    owner = np.repeat(np.arange(len(cuts) - 1), np.diff(cuts))
    left = np.diff(cuts).copy()
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    out: np.ndarray | None = None
    for lo in range(0, len(order), batch_size):
        part = order[lo : lo + batch_size]
        vecs = encoder.encode([inputs[i] for i in part], batch_size=batch_size, normalize=normalize)
        if out is None:
            out = np.empty((len(inputs), vecs.shape[1]), dtype=vecs.dtype)
        out[part] = vecs
        docs = owner[part]
        np.subtract.at(left, docs, 1)
        if on_encoded is not None:
            done = int(np.count_nonzero(left[np.unique(docs)] == 0))
            if done:
                on_encoded(done)
    assert out is not None
    return out


_DONE = object()


def read_ahead(batches: Iterator[list[Record | ReadError]], depth: int = 1) -> Iterator[list[Record | ReadError]]:
    """``batches``, read by a producer thread up to ``depth`` batches ahead of the consumer.

    Reading, decompressing and parsing the next commit batch then overlaps with encoding
    the current one (the model and the tokenizer release the GIL). An exception in the
    reader is raised in the consumer at the point it occurred; when the consumer stops
    early (an error, Ctrl-C) the producer is told to stop at its next batch.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in batches:
                if not put(b):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(exc)

    worker = threading.Thread(target=produce, name="semindex-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def ingest_vectors(
    storage: CollectionStorage,
    ids: list[str],
    vectors: np.ndarray,
    *,
    metadata: list[dict[str, Any]] | None = None,
    texts: list[str] | None = None,
    normalize: bool = False,
    commit_every: int = 10_000,
) -> IngestStats:
    """Precomputed vectors. Their content hash is the vector's bytes, so re-adding the same one is a no-op."""
    stats = IngestStats()
    start = time.perf_counter()
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise InvalidInputError(f"expected {len(ids)} vectors as a 2-d array, got shape {vectors.shape}")
    if metadata is not None and len(metadata) != len(ids):
        raise InvalidInputError("metadata must have one entry per id")
    if texts is not None and len(texts) != len(ids):
        raise InvalidInputError("texts must have one entry per id")
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    for lo in range(0, len(ids), commit_every):
        hi = min(lo + commit_every, len(ids))
        rows = [
            DocWrite(
                doc_id=str(ids[i]),
                text=(texts[i] if texts is not None else "") or "",
                title=None,
                metadata=jsonable(dict(metadata[i])) if metadata is not None and metadata[i] else {},
                content_hash=hashlib.sha256(vectors[i].tobytes()).hexdigest(),
                embedding=vectors[i],
            )
            for i in range(lo, hi)
        ]
        res = storage.write(rows)
        stats.merge(res)
        stats.ids.extend(res.ids)
    stats.seconds = time.perf_counter() - start
    return stats
