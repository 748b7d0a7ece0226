"""The rows one write transaction changes: documents, their chunks, the change log.

Called inside the transaction that :meth:`CollectionStorage.write` opened (after it bumped
the collection's version, which holds the write lock), so everything here commits or rolls
back together. A document's chunks are replaced whole: an upsert whose content changed
deletes every old chunk and inserts the new ones, so ``text[start:end]`` is always exactly
the chunk the vector was computed from, and no old passage stays searchable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StorageError
from . import schema as s
from .records import DocWrite, WriteResult, chunked, encode_embedding


@dataclass
class Changed:
    """What a write did to the vector side: chunk id -> new vector, and chunk ids removed."""

    upserted: dict[int, np.ndarray] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)


def write_rows(
    conn: Connection,
    collection_id: int,
    version: int,
    by_id: dict[str, DocWrite],
    delete_ids: Sequence[str],
    now: datetime,
    result: WriteResult,
) -> Changed:
    d = s.documents.c
    changed = Changed()
    current: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for part in chunked(list(by_id)):
        for vid, doc_id, h, meta in conn.execute(
            sa.select(d.vid, d.doc_id, d.content_hash, d.metadata).where(
                (d.collection_id == collection_id) & d.doc_id.in_(part)
            )
        ):
            current[doc_id] = (vid, h, meta)
    inserts: list[dict[str, Any]] = []
    rechunk: list[tuple[int, DocWrite]] = []
    for doc_id, doc in by_id.items():
        old = current.get(doc_id)
        if old is None:
            if doc.embedding is None:
                raise StorageError(f"document {doc_id!r} vanished while being indexed; retry the batch")
            inserts.append({
                "collection_id": collection_id, "doc_id": doc_id, "content_hash": doc.content_hash,
                "title": doc.title, "text": doc.text, "metadata": doc.metadata, "updated_at": now,
            })
            continue
        vid, old_hash, old_meta = old
        if doc.embedding is None or old_hash == doc.content_hash:
            if old_hash != doc.content_hash:
                raise StorageError(f"document {doc_id!r} changed while being indexed; retry the batch")
            if old_meta == doc.metadata:
                result.unchanged += 1
            else:
                conn.execute(sa.update(s.documents).where(d.vid == vid).values(metadata=doc.metadata, updated_at=now))
                result.updated += 1
            continue
        conn.execute(
            sa.update(s.documents).where(d.vid == vid).values(
                content_hash=doc.content_hash, title=doc.title, text=doc.text, metadata=doc.metadata, updated_at=now,
            )
        )
        rechunk.append((vid, doc))
        result.updated += 1
    if rechunk:
        changed.removed += _delete_chunks(conn, [vid for vid, _ in rechunk])
    if inserts:
        rows = conn.execute(
            s.documents.insert().returning(d.vid, d.doc_id, sort_by_parameter_order=True), inserts
        ).all()
        rechunk += [(vid, by_id[doc_id]) for vid, doc_id in rows]
        result.added += len(rows)
    if rechunk:
        _insert_chunks(conn, collection_id, rechunk, changed)
    if delete_ids:
        gone = 0
        for part in chunked(list(dict.fromkeys(delete_ids))):
            vids = conn.execute(
                sa.select(d.vid).where((d.collection_id == collection_id) & d.doc_id.in_(part))
            ).scalars().all()
            if vids:
                changed.removed += _delete_chunks(conn, list(vids))
                conn.execute(sa.delete(s.documents).where(d.vid.in_(vids)))
                gone += len(vids)
        result.deleted = gone
    log_rows = [
        {"collection_id": collection_id, "version": version, "op": s.OP_UPSERT, "vid": v} for v in changed.upserted
    ] + [{"collection_id": collection_id, "version": version, "op": s.OP_DELETE, "vid": v} for v in changed.removed]
    if log_rows:
        conn.execute(s.changes.insert(), log_rows)
    return changed


def _delete_chunks(conn: Connection, doc_vids: list[int]) -> list[int]:
    """Delete the chunks of these documents; returns their ids (for the change log and the index)."""
    c = s.chunks.c
    removed: list[int] = []
    for part in chunked(doc_vids):
        ids = conn.execute(sa.select(c.id).where(c.doc_vid.in_(part))).scalars().all()
        if ids:
            conn.execute(sa.delete(s.chunks).where(c.doc_vid.in_(part)))
            removed += [int(i) for i in ids]
    return removed


def _insert_chunks(conn: Connection, collection_id: int, docs: list[tuple[int, DocWrite]], changed: Changed) -> None:
    rows: list[dict[str, Any]] = []
    vecs: list[np.ndarray] = []
    for vid, doc in docs:
        assert doc.embedding is not None
        for ordinal, ((start, end), vec) in enumerate(zip(doc.chunk_spans(), doc.chunk_vectors())):
            rows.append({
                "collection_id": collection_id, "doc_vid": vid, "ordinal": ordinal,
                "start_char": start, "end_char": end, "embedding": encode_embedding(vec),
            })
            vecs.append(vec)
    c = s.chunks.c
    for lo in range(0, len(rows), 1000):
        ids = conn.execute(
            s.chunks.insert().returning(c.id, sort_by_parameter_order=True), rows[lo : lo + 1000]
        ).scalars().all()
        for cid, vec in zip(ids, vecs[lo : lo + 1000]):
            changed.upserted[int(cid)] = vec


def orphan_chunks(conn: Connection, collection_id: int) -> list[int]:
    """Chunks whose document row is gone: only a write behind semindex's back leaves these."""
    c, d = s.chunks.c, s.documents.c
    q = (
        sa.select(c.id)
        .select_from(s.chunks.outerjoin(s.documents, d.vid == c.doc_vid))
        .where((c.collection_id == collection_id) & d.vid.is_(None))
    )
    return [int(i) for i in conn.execute(q).scalars()]


def drop_orphan_chunks(conn: Connection, collection_id: int, version: int) -> list[int]:
    """Delete the orphan chunks under ``version``, logged, so every process drops their vectors."""
    ids = orphan_chunks(conn, collection_id)
    for part in chunked(ids):
        conn.execute(sa.delete(s.chunks).where(s.chunks.c.id.in_(part)))
    if ids:
        conn.execute(s.changes.insert(), [
            {"collection_id": collection_id, "version": version, "op": s.OP_DELETE, "vid": v} for v in ids
        ])
    return ids


def drop_collection_rows(conn: Connection, cid: int, hooks: Sequence[Any]) -> bool:
    """Delete collection ``cid`` and everything keyed by it; False when it is already gone.

    The caller opens ``conn`` with the write lock up front (engine.write_transaction); the
    collection row is updated first, the same order every write takes, so a concurrent write or
    drop waits instead of failing with "database is locked"."""
    c = s.collections.c
    bumped = conn.execute(
        sa.update(s.collections).where(c.id == cid).values(version=c.version + 1).returning(c.id)
    ).first()
    if bumped is None:
        return False
    for hook in hooks:
        hook.on_drop(conn, cid)
    conn.execute(sa.delete(s.changes).where(s.changes.c.collection_id == cid))
    runs = sa.select(s.runs.c.run_id).where(s.runs.c.collection_id == cid)
    conn.execute(sa.delete(s.run_shards).where(s.run_shards.c.run_id.in_(runs)))
    conn.execute(sa.delete(s.runs).where(s.runs.c.collection_id == cid))
    conn.execute(sa.delete(s.chunks).where(s.chunks.c.collection_id == cid))
    conn.execute(sa.delete(s.documents).where(s.documents.c.collection_id == cid))
    conn.execute(sa.delete(s.collections).where(c.id == cid))
    return True
