"""``binary``: one sign bit per dimension (32x smaller than float32), Hamming search, exact rescoring.

A vector's code is the sign of each dimension after subtracting a per-dimension threshold
learnt from a sample (its median). Sentence embeddings are far from zero-mean: a dimension
that is positive for nearly every text carries no information as a raw sign bit, while the
median splits the collection in half on every dimension, so each bit is worth the most it can
be. The index file is FAISS's binary index behind a small header holding the thresholds
(``MAGIC``, d, float32[d]), so one file round-trips the whole index.

Hamming distance only ranks candidates: ``k_factor`` x k of them are rescored exactly from
the stored float32 vectors in SQL (``refine_source``), so the scores callers see are real
cosine / dot / l2 scores and the ranking of the survivors is exact. Without a refine source
(an index used alone) the score is minus the Hamming distance.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ...errors import ConfigError, StorageError
from ..atomic import write_bytes_atomic
from .base import DEFAULT_K_FACTOR, _BaseIndex, as_ids, as_vectors

MAGIC = b"SEMINDEX-BINARY1"


def code_bytes(dimension: int) -> int:
    """Bytes per code: one bit per dimension, padded to whole bytes (FAISS wants d % 8 == 0)."""
    return (dimension + 7) // 8


class BinaryIndex(_BaseIndex):
    """IndexBinaryIDMap2 over IndexBinaryFlat: exhaustive Hamming scan of d/8-byte codes."""

    kind = "binary"
    lossy = True
    always_refine = True

    def __init__(
        self,
        dimension: int,
        metric: str,
        index: Any | None = None,
        *,
        spec: str = "binary",
        params: Mapping[str, Any] | None = None,
        thresholds: np.ndarray | None = None,
    ) -> None:
        super().__init__(spec, dimension, metric, params)
        self.params.setdefault("k_factor", DEFAULT_K_FACTOR)
        if index is None:
            index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(8 * code_bytes(dimension)))
        self.index = index
        self._thresholds: np.ndarray | None = None
        if thresholds is not None:
            arr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
            if arr.shape != (dimension,):
                raise StorageError(f"binary index thresholds have {arr.shape[0]} values, expected {dimension}")
            self._thresholds = arr

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return self._thresholds is not None

    def tunable(self) -> list[str]:
        return ["k_factor"]

    def train(self, sample: np.ndarray, n_total: int | None = None) -> None:
        if self.is_trained:
            return
        sample = as_vectors(sample, self.dimension)
        if not len(sample):
            raise ConfigError("a binary index needs at least one vector to learn its thresholds")
        self._thresholds = np.ascontiguousarray(np.median(sample, axis=0), dtype=np.float32)
        self.params["trained_on"] = len(sample)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Sign bits of (vector - threshold), packed 8 per byte: the codes FAISS stores."""
        assert self._thresholds is not None
        bits = as_vectors(vectors, self.dimension) > self._thresholds
        return np.ascontiguousarray(np.packbits(bits, axis=1))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            vectors = as_vectors(vectors, self.dimension)
            if not self.is_trained:
                self.train(vectors)
            self.index.add_with_ids(self.encode(vectors), as_ids(ids))

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        if not len(ids) or not self.index.ntotal:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def ids(self) -> np.ndarray:
        out: np.ndarray = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return out

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        return None  # sign bits cannot give the stored vector back; `check` skips lossy indexes

    def memory_bytes(self) -> int:
        # codes, plus the int64 id map and its reverse hash map in IDMap2 (as FlatIndex counts them)
        return len(self) * (code_bytes(self.dimension) + 8 + 16)

    def _raw_search_in(self, queries: np.ndarray, k: int, sp: Any, sel: Any) -> tuple[np.ndarray, np.ndarray]:
        found: tuple[np.ndarray, np.ndarray] = self.index.search(self.encode(queries), k, params=sp)
        return found

    def _scores(self, dist: np.ndarray, lab: np.ndarray) -> np.ndarray:
        """Without a refine source (an index used alone): minus the Hamming distance; -inf past the end."""
        return np.where(lab >= 0, -dist.astype(np.float32), -np.inf).astype(np.float32)

    def save(self, path: Path) -> None:
        thresholds = self._thresholds if self._thresholds is not None else np.empty(0, dtype=np.float32)
        header = MAGIC + np.array([len(thresholds)], dtype="<u4").tobytes() + thresholds.astype("<f4").tobytes()
        body = faiss.serialize_index_binary(self.index)  # a uint8 array: written as is, no copy
        write_bytes_atomic(path, [header, memoryview(body)])


def read_binary(path: Path, dimension: int, metric: str, params: Mapping[str, Any] | None) -> BinaryIndex:
    """The index :meth:`BinaryIndex.save` wrote (StorageError when the file is not one)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise StorageError(f"cannot read vector index {path}: {exc.strerror or exc}") from exc
    head = len(MAGIC) + 4
    if len(data) < head or data[: len(MAGIC)].tobytes() != MAGIC:
        raise StorageError(f"{path} is not a semindex binary index")
    d = int(np.frombuffer(data[len(MAGIC) : head].tobytes(), dtype="<u4")[0])
    if d not in (0, dimension):
        raise StorageError(f"binary index {path} has {d} thresholds, expected {dimension}")
    thresholds = np.frombuffer(data[head : head + 4 * d].tobytes(), dtype="<f4").copy() if d else None
    try:
        raw = faiss.deserialize_index_binary(np.ascontiguousarray(data[head + 4 * d :]))
    except RuntimeError as exc:
        raise StorageError(f"cannot read binary index {path}: {exc}") from exc
    if raw.d != 8 * code_bytes(dimension):
        raise StorageError(f"binary index {path} holds {raw.d}-bit codes, expected {8 * code_bytes(dimension)}")
    if raw.ntotal and thresholds is None:
        raise StorageError(f"binary index {path} holds codes but no thresholds")
    return BinaryIndex(dimension, metric, index=raw, params=params, thresholds=thresholds)
