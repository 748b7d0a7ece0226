"""``hnsw``: a graph index (IndexHNSWFlat); removal is a tombstone in the id map."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from ...errors import StorageError
from .base import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    LOSSY,
    _BaseIndex,
    _selector_keepalive,
    as_ids,
    as_vectors,
    faiss_metric,
    no_polysemous,
)


class HNSWIndex(_BaseIndex):
    """IndexIDMap over IndexHNSWFlat (M=32). HNSW cannot remove: removal is a tombstone.

    A removed or replaced vector keeps its graph node, but its entry in the id map is set to -1
    and every search excludes -1 through an IDSelector, so results stay exact k and never show
    a dead vector. The id map (tombstones included) is part of the FAISS file, so a checkpoint
    round-trips them. When tombstones pass ~20% of the nodes the store rebuilds from SQL.
    """

    kind = "hnsw"

    def __init__(
        self,
        dimension: int,
        metric: str,
        index: Any | None = None,
        *,
        spec: str = "hnsw",
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spec, dimension, metric, params)
        if index is None:
            if spec == "hnsw":
                m = int(self.params.get("M", HNSW_M))
                inner = faiss.IndexHNSWFlat(dimension, m, faiss_metric(metric))
            else:
                inner = faiss.index_factory(dimension, spec, faiss_metric(metric))
                if hasattr(inner, "storage"):  # HNSW over PQ codes: the PQ is the storage index
                    no_polysemous(inner.storage)
            inner.hnsw.efConstruction = int(self.params.get("efConstruction", HNSW_EF_CONSTRUCTION))
            index = faiss.IndexIDMap(inner)
        self.index = index
        hnsw = faiss.downcast_index(index.index).hnsw
        self.params.setdefault("M", int(hnsw.nb_neighbors(1)))
        self.params.setdefault("efSearch", int(hnsw.efSearch))
        self.params.setdefault("efConstruction", int(hnsw.efConstruction))
        self.lossy = bool(LOSSY.search(spec))
        view = self._idmap()
        self._dead = int((view < 0).sum()) if len(view) else 0
        self._max_vid = int(view.max()) if len(view) else -1

    def _idmap(self) -> np.ndarray:
        n = self.index.id_map.size()
        if not n:
            return np.empty(0, dtype=np.int64)
        view: np.ndarray = faiss.rev_swig_ptr(self.index.id_map.data(), n)  # a writable view, no copy
        return view

    def __len__(self) -> int:
        return int(self.index.ntotal) - self._dead

    def tunable(self) -> list[str]:
        return ["efSearch"]

    def tombstone_ratio(self) -> float:
        total = int(self.index.ntotal)
        return self._dead / total if total else 0.0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        if len(ids):
            vectors = as_vectors(vectors, self.dimension)
            if not self.is_trained:
                self.index.train(vectors)
            self.index.add_with_ids(vectors, ids)
            self._max_vid = max(self._max_vid, int(ids.max()))

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        # vids only grow: a vid above every one we hold cannot be here (skips the scan for inserts)
        ids = ids[ids <= self._max_vid]
        if not len(ids) or not self.index.ntotal:
            return 0
        view = self._idmap()
        mask = np.isin(view, ids)
        mask &= view >= 0
        n = int(mask.sum())
        if n:
            view[mask] = -1
            self._dead += n
        return n

    def _base_selector(self) -> Any:
        if not self._dead:
            return None
        dead = np.array([-1], dtype=np.int64)
        return _selector_keepalive(faiss.IDSelectorNot(faiss.IDSelectorBatch(dead)), dead)

    def _search_params(self, sel: Any, exhaustive: bool, over: Mapping[str, Any]) -> Any:
        ef = int(over.get("efSearch", self.params.get("efSearch", 64)))
        if exhaustive:
            ef = max(ef * 4, 512)
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = ef
        if sel is not None:
            sp.sel = sel
        sp._semindex_sel = sel
        return sp

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
               exhaustive: bool = False, params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        ef = int((params or {}).get("efSearch", self.params.get("efSearch", 64)))
        if ef < k:  # efSearch is the result-list size: never below k
            params = {**(params or {}), "efSearch": k}
        return super().search(queries, k, allowed, exhaustive=exhaustive, params=params)

    def ids(self) -> np.ndarray:
        view = self._idmap()
        return view[view >= 0].copy()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        if self.lossy:  # an HNSW over PQ/SQ codes decodes an approximation, not the stored vector
            return None
        ids = as_ids(ids)
        view = self._idmap()
        live = np.nonzero(view >= 0)[0]
        order = np.argsort(view[live], kind="stable")
        sorted_vids = view[live][order]
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for i, vid in enumerate(ids):
            j = np.searchsorted(sorted_vids, vid)
            if j >= len(sorted_vids) or sorted_vids[j] != vid:
                raise StorageError(f"vector {vid} is not in the index")
            out[i] = self.index.index.reconstruct(int(live[order[j]]))
        return out

    def memory_bytes(self) -> int:
        total = int(self.index.ntotal)
        m = int(self.params.get("M", HNSW_M))
        inner = faiss.downcast_index(self.index.index)
        code = int(getattr(getattr(inner, "storage", None), "code_size", 4 * self.dimension) or 4 * self.dimension)
        # codes + level-0 links (2M int32) + upper levels (~M/(M-1) share, small) + offsets/levels + id map
        return total * (code + 2 * m * 4 + 4 * m // 8 + 12 + 8)
