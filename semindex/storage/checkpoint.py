"""Index checkpoints on disk: the FAISS file, its manifest, and the only safe way to write them.

A checkpoint is derived data (SQL is the source of truth): a FAISS file plus a
``manifest.json`` naming that file and the collection version it reflects. Opening a
collection loads it and replays the SQL change log past that version; a missing or
unreadable one is rebuilt from SQL.

Files are written the only way that survives a crash at any instant: to a temporary
file in the same folder, fsynced, renamed over the target, and the folder fsynced. A
reader therefore sees the old file or the new one, never a torn one (``atomic.py``). The
manifest is renamed into place after its index file, so it never names a file that is not
whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StorageError
from .atomic import file_lock, write_json_atomic
from .vectors import VectorIndex, load_index

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint on disk claims: which file, and the collection version it reflects.

    ``store_id`` ties the checkpoint to its database, so an index folder copied next to
    another database (or a database restored from backup) is rebuilt rather than trusted.
    """

    version: int
    file: str
    spec: str
    count: int
    dimension: int
    params: dict[str, Any] = field(default_factory=dict)
    store_id: str | None = None
    metric: str | None = None

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                version=int(data["version"]),
                file=str(data["file"]),
                spec=str(data["spec"]),
                count=int(data["count"]),
                dimension=int(data["dimension"]),
                params=dict(data.get("params") or {}),
                store_id=data.get("store_id"),
                metric=data.get("metric"),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"unreadable index manifest {path}: {exc}") from exc

    def write(self, path: Path) -> None:
        write_json_atomic(asdict(self), path)


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None when it has none; StorageError when it is unreadable."""
    return Manifest.read(folder / MANIFEST)


def load_checkpoint_index(folder: Path, manifest: Manifest, dimension: int, metric: str) -> VectorIndex:
    """The index a manifest names, checked against the manifest's count (StorageError otherwise).

    The one loader behind both opening a collection and ``check``'s independent probe.
    """
    index = load_index(folder / manifest.file, manifest.spec, dimension, metric, manifest.params)
    if len(index) != manifest.count:
        raise StorageError(f"{manifest.file} holds {len(index)} vectors, manifest says {manifest.count}")
    return index


def write_checkpoint(folder: Path, index: VectorIndex, *, version: int, store_id: str, metric: str) -> str:
    """Write ``index`` as the folder's checkpoint for ``version``; returns the file name.

    Serialised across processes by a file lock; the previous file is removed only after
    the new manifest is in place, so a crash leaves the old checkpoint or the new one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        for tmp in folder.glob(".*.tmp"):  # left by a process killed mid-write
            with contextlib.suppress(OSError):
                tmp.unlink()
        name = f"index-v{version}-{uuid.uuid4().hex[:8]}.faiss"
        index.save(folder / name)
        manifest = Manifest(
            version=version,
            file=name,
            spec=index.spec,
            count=len(index),
            dimension=index.dimension,
            params=jsonable(index.params),
            store_id=store_id,
            metric=metric,
        )
        try:
            manifest.write(folder / MANIFEST)
        except BaseException:
            with contextlib.suppress(OSError):
                (folder / name).unlink()  # the old manifest and file stay in charge
            raise
        for old in folder.glob("index-*.faiss"):
            if old.name != name:
                with contextlib.suppress(OSError):
                    old.unlink()
    return name


def folder_bytes(folder: Path) -> int:
    """What a collection's index folder takes on disk (0 when it has none yet)."""
    total = 0
    if folder.exists():
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
    return total


def jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Index parameters as plain JSON values (numpy scalars converted, anything else dropped)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.floating):
            v = float(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
    return out


def format_params(params: Mapping[str, Any]) -> str:
    """The tuned parameters people look at, as "(nlist=.., nprobe=..)"; "" when there are none."""
    keys = ("nlist", "nprobe", "M", "efSearch", "pq_m", "k_factor", "recall@10")
    shown = [f"{k}={params[k]}" for k in keys if k in params]
    return f"({', '.join(shown)})" if shown else ""


def may_write_checkpoint(coll: Any) -> bool:
    """Whether collection storage ``coll`` may write its index as the checkpoint now.

    Another process's ``reindex`` records a new generation in the collection row, then writes its
    index. Until that index is on disk, writing ours would undo the reindex (False); once it is,
    ``coll`` loads and replays it, so a running server picks up the new index (True)."""
    fresh = coll.storage.get_record(coll.record.name)
    if fresh is None or fresh.id != coll.id:
        return True  # dropped or replaced: the write path reports that
    gen = fresh.config.get("generation")
    if gen is None or gen == coll.index.params.get("generation"):
        return True
    coll.record = fresh
    try:
        manifest = read_manifest(coll.dir)
    except StorageError:
        manifest = None
    if manifest is None or manifest.params.get("generation") != gen:
        log.info("collection %r is being reindexed elsewhere; not writing the old index", fresh.name)
        return False
    loaded = coll._load_checkpoint()
    if loaded is None:
        return False
    coll.index, coll.applied_version = loaded
    coll._checkpoint_version = coll.applied_version
    coll.last_index_change = f"picked up {coll.index.spec} written by another process's reindex"
    coll._replay_locked()
    return True
