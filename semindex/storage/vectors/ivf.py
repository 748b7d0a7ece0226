"""``ivf`` / ``ivfpq`` and IVF factory strings: inverted lists trained on a sample."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from ...errors import IndexSpecError, StorageError
from .base import (
    DEFAULT_K_FACTOR,
    LOSSY,
    _bad_factory,
    _BaseIndex,
    as_ids,
    as_vectors,
    default_nlist,
    faiss_metric,
    gpu_available,
    no_polysemous,
    pq_subquantizers,
)

log = logging.getLogger(__name__)


class IVFIndex(_BaseIndex):
    """IVF families: 'ivf' (IVF-Flat), 'ivfpq' (IVF-PQ + exact rescoring), IVF factory strings.

    Built lazily: the number of cells is chosen when it is trained (``train(sample, n_total)``),
    ~4*sqrt(n). IVF-Flat keeps a hash-table DirectMap (fast removal, reconstruct for `check`).
    IVF-PQ keeps no DirectMap (it would cost ~50 bytes per vector, as much as the codes):
    removal scans the inverted lists' ids, which is a few ms per million vectors.
    Refinement: ``k_factor`` x k candidates are rescored exactly with their stored float32
    vectors, fetched through ``refine_source`` (the store reads them from SQL, where they live
    anyway), so no flat copy is kept in RAM.
    """

    def __init__(
        self,
        dimension: int,
        metric: str,
        index: Any | None = None,
        *,
        spec: str = "ivf",
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(spec, dimension, metric, params)
        self.kind = spec if spec in ("ivf", "ivfpq") else "factory"
        self.lossy = spec == "ivfpq" or bool(LOSSY.search(spec))
        if self.lossy:
            self.params.setdefault("k_factor", DEFAULT_K_FACTOR)
        self.index = index
        if index is not None:
            ivf = faiss.extract_index_ivf(index)
            self.params["nlist"] = int(ivf.nlist)
            self.params.setdefault("nprobe", int(ivf.nprobe))
        elif self.kind == "factory":
            self._make(None)  # validates the string now

    def _factory(self, nlist: int, n_train: int) -> str:
        if self.kind == "ivf":
            return f"IVF{nlist},Flat"
        if self.kind == "ivfpq":
            m = int(self.params.get("pq_m") or pq_subquantizers(self.dimension))
            nbits = int(self.params.get("pq_nbits") or max(1, min(8, int(math.log2(max(2, n_train // 39))))))
            self.params["pq_m"], self.params["pq_nbits"] = m, nbits
            return f"IVF{nlist},PQ{m}x{nbits}"
        return self.spec

    def _make(self, n_total: int | None, n_train: int = 0) -> None:
        nlist = int(self.params.get("nlist") or default_nlist(n_total or 0))
        try:
            index = faiss.index_factory(self.dimension, self._factory(nlist, n_train), faiss_metric(self.metric))
        except RuntimeError as exc:
            raise IndexSpecError(_bad_factory(self.spec, exc)) from exc
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError as exc:
            raise IndexSpecError(f"factory string {self.spec!r} is not an IVF index") from exc
        if self.kind == "ivf":
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        no_polysemous(ivf)
        self.index = index
        self.params["nlist"] = int(ivf.nlist)

    def train(self, sample: np.ndarray, n_total: int | None = None, *, gpu: bool | None = None) -> None:
        """Train the coarse quantizer (and PQ) on ``sample``; nlist from ``n_total`` when not fixed."""
        sample = as_vectors(sample, self.dimension)
        if self.kind != "factory":
            self.params.pop("pq_nbits", None)
            cap = max(1, len(sample) // 39)  # >= 39 training points per cell
            self.params["nlist"] = min(default_nlist(n_total or len(sample)), cap)
        self._make(n_total, len(sample))
        ivf = faiss.extract_index_ivf(self.index)
        use_gpu = gpu if gpu is not None else (self.device == "gpu" or (self._gpu is None and gpu_available()))
        if use_gpu and gpu_available():
            try:
                ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(self.dimension))
            except Exception as exc:
                log.warning("training on GPU failed to start (%s); training on CPU", exc)
        self.index.train(sample)
        with contextlib.suppress(Exception):
            ivf.clustering_index = None
        self.params["trained_on"] = len(sample)
        self.params["built_for"] = int(n_total or len(sample))
        self.params.setdefault("nprobe", max(1, min(int(self.params["nlist"]), 8)))

    def export_trained(self) -> Any:
        """A copy of this trained, still empty index, without its DirectMap: what shard workers fill.

        Every shard adds to the same frozen quantizer (and PQ codebooks), so the merged lists
        equal one process's adds. The DirectMap is left out because FAISS cannot merge indexes
        that carry one; :meth:`adopt` rebuilds it from the merged lists."""
        if self.index is None or not self.index.is_trained:
            raise StorageError(f"index {self.spec!r} is not trained yet: nothing to export")
        if self.index.ntotal:
            raise StorageError(f"index {self.spec!r} already holds {self.index.ntotal} vectors; export it empty")
        copy = faiss.clone_index(self.index)
        faiss.extract_index_ivf(copy).set_direct_map_type(faiss.DirectMap.NoMap)
        return copy

    def adopt(self, filled: Any) -> None:
        """Take ``filled`` (built elsewhere from :meth:`export_trained`) as this index's contents.

        Refused (StorageError) unless it is an IVF index of this dimension and metric over the
        very same quantizer: an index trained on other data would search wrong cells silently."""
        if self.index is None or not self.index.is_trained:
            raise StorageError(f"index {self.spec!r} is not trained: there is no quantizer to check against")
        try:
            ivf = faiss.extract_index_ivf(filled)
        except (RuntimeError, TypeError) as exc:
            raise StorageError(f"a prebuilt index for {self.spec!r} must be an IVF index: {exc}") from exc
        mine = faiss.extract_index_ivf(self.index)
        if int(filled.d) != self.dimension or int(filled.metric_type) != int(self.index.metric_type):
            raise StorageError(
                f"prebuilt index has dimension {filled.d} and metric {filled.metric_type}, "
                f"expected {self.dimension} and {self.index.metric_type}"
            )
        if int(ivf.nlist) != int(mine.nlist) or int(ivf.code_size) != int(mine.code_size) or not np.array_equal(
            faiss.serialize_index(ivf.quantizer), faiss.serialize_index(mine.quantizer)
        ):
            raise StorageError("prebuilt index was not filled from this index's trained quantizer")
        if self.kind == "ivf":
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # rebuilt from the merged lists
        self.index = filled
        self.mmapped = False
        self._touched()

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def tunable(self) -> list[str]:
        return ["nprobe", "k_factor"] if self.lossy else ["nprobe"]

    def _materialize(self) -> None:
        """An index loaded memory-mapped is read-only; copy its lists into RAM before a write."""
        if not self.mmapped:
            return
        ivf = faiss.extract_index_ivf(self.index)
        old = ivf.invlists
        new = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        for lst in range(ivf.nlist):
            n = old.list_size(lst)
            if n:
                new.add_entries(lst, n, old.get_ids(lst), old.get_codes(lst))
        ivf.replace_invlists(new, True)
        new.this.disown()
        self.mmapped = False

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        if not len(ids):
            return
        vectors = as_vectors(vectors, self.dimension)
        if self.index is None or not self.index.is_trained:
            self.train(vectors, len(vectors))  # first add to an untrained index trains on it
        self._materialize()
        self.index.add_with_ids(vectors, ids)
        self._touched()

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        if not len(ids) or self.index is None or not self.index.ntotal:
            return 0
        self._materialize()
        self._touched()
        ivf = faiss.extract_index_ivf(self.index)
        if ivf.direct_map.type == faiss.DirectMap.Hashtable:
            sel = faiss.IDSelectorArray(ids)
        else:
            sel = faiss.IDSelectorBatch(ids)
        return int(self.index.remove_ids(sel))

    def _search_params(self, sel: Any, exhaustive: bool, over: Mapping[str, Any]) -> Any:
        nlist = int(self.params.get("nlist", 1))
        nprobe = nlist if exhaustive else int(over.get("nprobe", self.params.get("nprobe", 8)))
        sp = faiss.SearchParametersIVF()
        sp.nprobe = max(1, min(nprobe, nlist))
        sp.max_codes = 0
        if sel is not None:
            sp.sel = sel
        sp._semindex_sel = sel
        return sp

    def ids(self) -> np.ndarray:
        if self.index is None:
            return np.empty(0, dtype=np.int64)
        ivf = faiss.extract_index_ivf(self.index)
        invl = ivf.invlists
        parts = []
        for lst in range(ivf.nlist):
            n = invl.list_size(lst)
            if n:
                parts.append(faiss.rev_swig_ptr(invl.get_ids(lst), n).astype(np.int64))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None:
        if self.lossy or self.index is None:
            return None
        ivf = faiss.extract_index_ivf(self.index)
        if ivf.direct_map.type == faiss.DirectMap.NoMap or (ivf is not self.index and not isinstance(
            self.index, faiss.IndexIVF
        )):
            return None
        ids = as_ids(ids)
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        for i, vid in enumerate(ids):
            out[i] = self.index.reconstruct(int(vid))
        return out

    def memory_bytes(self) -> int:
        if self.index is None:
            return 0
        ivf = faiss.extract_index_ivf(self.index)
        n = int(self.index.ntotal)
        per = int(ivf.code_size) + 8  # code + id in the inverted list
        if ivf.direct_map.type == faiss.DirectMap.Hashtable:
            per += 48  # std::unordered_map node + bucket
        fixed = int(ivf.nlist) * self.dimension * 4  # coarse centroids
        if self.lossy:
            fixed += 256 * self.dimension * 4  # PQ codebooks (or residual tables)
        return n * per + fixed

    def _gpu_capable(self) -> bool:
        return self.kind in ("ivf",) and isinstance(self.index, faiss.IndexIVFFlat)
