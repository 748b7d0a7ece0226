"""``flat``: exact search; ``sq8``: the same scan over 8-bit scalar-quantized codes (4x smaller),
its candidates rescored exactly; and the wrapper for flat-like FAISS factory strings ("PQ32")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from .base import DEFAULT_K_FACTOR, LOSSY, _BaseIndex, as_ids, as_vectors, faiss_metric, no_polysemous

_FACTORY = {"sq8": "SQ8"}  # named kinds that are a FAISS factory string underneath


class FlatIndex(_BaseIndex):
    """Exact search. IndexIDMap2 so ids can be listed and vectors reconstructed (for `check`).

    ``sq8`` is FAISS's SQ8 (one byte per dimension, per-dimension min/max learnt from the
    first vectors added; the store retrains it as the collection grows, see
    autoindex.outgrown) with ``k_factor`` x k candidates rescored from the stored float32
    vectors, so its top k are exact among the candidates. Also the wrapper for factory strings
    that are neither IVF nor HNSW (e.g. "PQ32"): they are prefixed with IDMap2 and behave the
    same way.
    """

    kind = "flat"

    def __init__(
        self,
        dimension: int,
        metric: str,
        index: Any | None = None,
        *,
        spec: str = "flat",
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spec, dimension, metric, params)
        if spec != "flat":
            self.kind = "sq8" if spec == "sq8" else "factory"
            self.lossy = spec == "sq8" or bool(LOSSY.search(spec))
            self.always_refine = spec == "sq8"
            if self.lossy:
                self.params.setdefault("k_factor", DEFAULT_K_FACTOR)
        if index is None:
            if spec == "flat":
                base = (
                    faiss.IndexFlatL2(dimension) if metric == "l2" else faiss.IndexFlatIP(dimension)
                )
                index = faiss.IndexIDMap2(base)
            else:
                index = faiss.index_factory(dimension, "IDMap2," + _FACTORY.get(spec, spec), faiss_metric(metric))
                no_polysemous(faiss.downcast_index(index.index))
        self.index = index
        if spec not in ("flat", "sq8"):
            self.supports_selector = False  # IndexPQ & co. reject SearchParameters (SQ takes them)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def tunable(self) -> list[str]:
        return ["k_factor"] if self.lossy else []

    def train(self, sample: np.ndarray, n_total: int | None = None) -> None:
        if not self.is_trained:
            self.index.train(as_vectors(sample, self.dimension))
            self.params["trained_on"] = len(sample)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            vectors = as_vectors(vectors, self.dimension)
            if not self.is_trained:
                self.train(vectors)
            self.index.add_with_ids(vectors, as_ids(ids))
            self._touched()

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        if not len(ids) or not self.index.ntotal:
            return 0
        self._touched()
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def ids(self) -> np.ndarray:
        out: np.ndarray = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return out

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        if self.lossy:
            return None
        ids = as_ids(ids)
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for i, vid in enumerate(ids):
            out[i] = self.index.reconstruct(int(vid))
        return out

    def memory_bytes(self) -> int:
        # codes (float32 vectors for flat) plus the int64 id map and its reverse hash map in IDMap2.
        inner = faiss.downcast_index(self.index.index)
        code = 4 * self.dimension if self.spec == "flat" else int(getattr(inner, "code_size", 4 * self.dimension))
        return len(self) * (code + 8 + 16)

    def _gpu_capable(self) -> bool:
        return self.spec == "flat"

    def _gpu_source(self) -> Any:
        return self.index.index  # the bare IndexFlat; labels mapped back below

    def _gpu_labels(self, labels: np.ndarray) -> np.ndarray:
        idmap = faiss.rev_swig_ptr(self.index.id_map.data(), self.index.id_map.size())
        return np.where(labels >= 0, idmap[np.maximum(labels, 0)], -1).astype(np.int64)
