"""The FAISS side: a derived, rebuildable index of the vectors held in SQL.

`VectorIndex` is the small interface the store talks to; `FlatIndex` is the
exact implementation (IndexIDMap2 over IndexFlatIP / IndexFlatL2). Other
index types plug in through :func:`build_index` by their spec string, so the
store never names a FAISS class.

Files are written the only way that survives a crash at any instant: to a
temporary file in the same folder, fsynced, renamed over the target, and the
folder fsynced. A reader therefore sees the old file or the new one, never a
torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from ..errors import ConfigError, StorageError

METRICS = ("cosine", "dot", "l2")


def faiss_metric(metric: str) -> int:
    if metric in ("cosine", "dot"):
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def as_ids(ids: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def as_vectors(vectors: Any, dimension: int) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dimension:
        from ..errors import DimensionMismatchError

        raise DimensionMismatchError(
            f"expected vectors of dimension {dimension}, got shape {tuple(arr.shape)}"
        )
    return arr


class VectorIndex(Protocol):
    """What the store needs from an index. Scores are 'higher is better'."""

    spec: str
    dimension: int
    metric: str

    def __len__(self) -> int: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> int: ...
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def ids(self) -> np.ndarray: ...
    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None: ...
    def save(self, path: Path) -> None: ...
    def memory_bytes(self) -> int: ...


class FlatIndex:
    """Exact search. IndexIDMap2 so ids can be listed and vectors reconstructed (for `check`)."""

    supports_selector = True

    def __init__(self, dimension: int, metric: str, index: Any | None = None) -> None:
        self.spec = "flat"
        self.dimension = dimension
        self.metric = metric
        if index is None:
            base = (
                faiss.IndexFlatL2(dimension) if metric == "l2" else faiss.IndexFlatIP(dimension)
            )
            index = faiss.IndexIDMap2(base)
        self.index = index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(as_vectors(vectors, self.dimension), as_ids(ids))

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        if not len(ids) or not self.index.ntotal:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = as_vectors(queries, self.dimension)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(as_ids(allowed)))
        scores, ids = self.index.search(queries, k, params=params)
        if self.metric == "l2":
            scores = -scores
        return scores, ids

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        ids = as_ids(ids)
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for i, vid in enumerate(ids):
            out[i] = self.index.reconstruct(int(vid))
        return out

    def save(self, path: Path) -> None:
        write_index_atomic(self.index, path)

    def memory_bytes(self) -> int:
        # float32 vectors plus the int64 id map (and its reverse map in IDMap2).
        return len(self) * (4 * self.dimension + 8 + 16)


def build_index(spec: str, dimension: int, metric: str) -> VectorIndex:
    """An empty index for a spec string (only 'flat' so far)."""
    faiss_metric(metric)
    if spec == "flat":
        return FlatIndex(dimension, metric)
    raise ConfigError(f"unknown index type {spec!r}; supported: flat")


def load_index(path: Path, spec: str, dimension: int, metric: str) -> VectorIndex:
    try:
        raw = faiss.read_index(str(path))
    except Exception as exc:  # faiss raises RuntimeError with C++ text
        raise StorageError(f"cannot read vector index {path}: {exc}") from exc
    if raw.d != dimension:
        raise StorageError(f"vector index {path} has dimension {raw.d}, expected {dimension}")
    if spec == "flat":
        return FlatIndex(dimension, metric, index=raw)
    raise ConfigError(f"unknown index type {spec!r}")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_index_atomic(index: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        try:
            faiss.write_index(index, tmp)
        except RuntimeError as exc:  # faiss reports ENOSPC etc. as RuntimeError
            raise OSError(str(exc)) from exc

    _atomic_write(path, write)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)

    _atomic_write(path, write)


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint on disk claims: which file, and the collection version it reflects."""

    version: int
    file: str
    spec: str
    count: int
    dimension: int

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
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"unreadable index manifest {path}: {exc}") from exc

    def write(self, path: Path) -> None:
        write_json_atomic(self.__dict__.copy(), path)
