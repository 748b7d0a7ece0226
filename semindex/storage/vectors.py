"""The FAISS side: a derived, rebuildable index of the vectors held in SQL.

`VectorIndex` is the small interface the store talks to. Implementations, all
chosen by a spec string through :func:`build_index` (so the store never names
a FAISS class):

* ``flat``  - `FlatIndex`: exact, IndexIDMap2 over IndexFlatIP / IndexFlatL2;
* ``hnsw``  - `HNSWIndex`: IndexHNSWFlat (M=32) under an IndexIDMap; removal is
  a tombstone (the id map entry becomes -1 and an IDSelector skips it);
* ``ivf``   - `IVFIndex`: IVF-Flat with a hash-table DirectMap;
* ``ivfpq`` - `IVFIndex`: IVF-PQ whose candidates are rescored exactly from the
  stored vectors (``refine_source``), so the RAM index stays ~1/10 of flat;
* any FAISS factory string ("IVF256,PQ32", "HNSW48", "PQ16", "OPQ16,IVF1024,PQ16").

Search parameters (nprobe, efSearch, k_factor) live in ``index.params``; the
store tunes them (semindex.storage.autoindex) and records them in the manifest.

Files are written the only way that survives a crash at any instant: to a
temporary file in the same folder, fsynced, renamed over the target, and the
folder fsynced. A reader therefore sees the old file or the new one, never a
torn one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from ..errors import ConfigError, DimensionMismatchError, StorageError

log = logging.getLogger(__name__)

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
        raise DimensionMismatchError(
            f"expected vectors of dimension {dimension}, got shape {tuple(arr.shape)}"
        )
    return arr


class VectorIndex(Protocol):
    """What the store needs from an index. Scores are 'higher is better'."""

    spec: str
    kind: str
    dimension: int
    metric: str
    params: dict[str, Any]
    supports_selector: bool
    refine_source: RefineSource | None

    def __len__(self) -> int: ...
    @property
    def is_trained(self) -> bool: ...
    def train(self, sample: np.ndarray, n_total: int | None = None) -> None: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> int: ...
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        exhaustive: bool = False,
        params: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def ids(self) -> np.ndarray: ...
    def reconstruct(self, ids: np.ndarray) -> np.ndarray | None: ...
    def save(self, path: Path) -> None: ...
    def memory_bytes(self) -> int: ...
    def tombstone_ratio(self) -> float: ...
    def tunable(self) -> list[str]: ...
    def use_device(self, device: str | None) -> str: ...


RefineSource = Callable[[np.ndarray], np.ndarray]
"""vids -> their exact float32 vectors (rows in the same order); what IVF-PQ rescoring reads."""

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
DEFAULT_K_FACTOR = 10
REFINE_MIN_K = 10
LOSSY = re.compile(r"(PQ|SQ|LSH|RQ|LSQ|RaBitQ)", re.IGNORECASE)


def _bad_factory(spec: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.search(r" at \S+:\d+: (.*)$", text)
    why = m.group(1) if m else text
    return (f"bad FAISS factory string {spec!r} ({why}); use auto, flat, hnsw, ivf, ivfpq or a FAISS "
            "factory string such as 'IVF256,PQ32'")


def _no_polysemous(index: Any) -> None:
    """Polysemous training (on by default for PQ) costs ~10 s per PQ and semindex never uses it."""
    index = faiss.downcast_index(index) if hasattr(index, "this") else index
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False


def _selector_keepalive(sel: Any, *refs: Any) -> Any:
    sel._semindex_refs = refs  # the C++ selector points into these numpy buffers
    return sel


def _id_selector(ids: np.ndarray) -> Any:
    arr = as_ids(ids)
    return _selector_keepalive(faiss.IDSelectorBatch(arr), arr)


def default_nlist(n: int) -> int:
    """~4*sqrt(n) cells, at least 39 training points per cell (faiss's minimum), in [1, 65536]."""
    if n <= 0:
        return 1
    return int(max(1, min(65536, round(4 * math.sqrt(n)), n // 39)))


def pq_subquantizers(dimension: int, bytes_per_vector: int | None = None) -> int:
    """The PQ code size m (bytes at 8 bits): a divisor of d, ~d/8 by default (8 dims per sub-vector)."""
    want = bytes_per_vector if bytes_per_vector else max(1, dimension // 8)
    divisors = [m for m in range(1, dimension + 1) if dimension % m == 0 and m <= want]
    return max(divisors) if divisors else 1


class _GPUMirror:
    """A GPU copy of an index, used for unfiltered searches; rebuilt lazily after writes."""

    def __init__(self) -> None:
        self.gpu: Any | None = None
        self.dirty = True
        self.failed = False
        self.res: Any | None = None

    def get(self, cpu_index: Any) -> Any | None:
        if self.failed:
            return None
        if self.gpu is None or self.dirty:
            try:
                if self.res is None:
                    self.res = faiss.StandardGpuResources()
                self.gpu = faiss.index_cpu_to_gpu(self.res, 0, cpu_index)
                self.dirty = False
            except Exception as exc:  # no GPU support in this faiss build, or unsupported type
                log.warning("GPU search unavailable (%s); searching on CPU", exc)
                self.failed = True
                self.gpu = None
                return None
        return self.gpu


def gpu_available() -> bool:
    try:
        return int(faiss.get_num_gpus()) > 0 and hasattr(faiss, "StandardGpuResources")
    except Exception:
        return False


class _BaseIndex:
    """Shared search plumbing: SearchParameters, l2 sign, refinement, GPU mirror."""

    kind = "base"
    supports_selector = True
    lossy = False

    def __init__(self, spec: str, dimension: int, metric: str, params: Mapping[str, Any] | None) -> None:
        self.spec = spec
        self.dimension = dimension
        self.metric = metric
        self.params: dict[str, Any] = dict(params or {})
        self.refine_source: RefineSource | None = None
        self.index: Any = None
        self.mmapped = False
        self._gpu: _GPUMirror | None = None
        self.device = "cpu"

    # -- lifecycle ---------------------------------------------------------

    @property
    def is_trained(self) -> bool:
        return self.index is not None and bool(self.index.is_trained)

    def train(self, sample: np.ndarray, n_total: int | None = None) -> None:
        if not self.is_trained:
            self.index.train(as_vectors(sample, self.dimension))

    def tunable(self) -> list[str]:
        return []

    def tombstone_ratio(self) -> float:
        return 0.0

    def use_device(self, device: str | None) -> str:
        """'auto' (GPU when visible), 'gpu' or 'cpu'. Returns the device searches will use."""
        want = (device or "auto").lower()
        if want in ("gpu", "cuda") or (want == "auto" and gpu_available()):
            if self._gpu_capable() and gpu_available():
                self._gpu = _GPUMirror()
                self.device = "gpu"
                return self.device
            if want in ("gpu", "cuda"):
                log.warning("index %s cannot run on GPU here; using CPU", self.spec)
        self._gpu = None
        self.device = "cpu"
        return self.device

    def _gpu_capable(self) -> bool:
        return False

    def _touched(self) -> None:
        if self._gpu is not None:
            self._gpu.dirty = True

    # -- search ------------------------------------------------------------

    def _search_params(self, sel: Any, exhaustive: bool, over: Mapping[str, Any]) -> Any:
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _base_selector(self) -> Any:
        return None

    def _raw_search(self, queries: np.ndarray, k: int, sp: Any, sel: Any) -> tuple[np.ndarray, np.ndarray]:
        if sel is None and self._gpu is not None:
            gpu = self._gpu.get(self._gpu_source())
            if gpu is not None:
                if hasattr(gpu, "nprobe") and sp is not None and hasattr(sp, "nprobe"):
                    gpu.nprobe = min(int(sp.nprobe), 2048)  # GPU IVF caps nprobe at 2048
                dist, lab = gpu.search(queries, k)
                return dist, self._gpu_labels(lab)
        return self.index.search(queries, k, params=sp)

    def _gpu_source(self) -> Any:
        return self.index

    def _gpu_labels(self, labels: np.ndarray) -> np.ndarray:
        return labels

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        exhaustive: bool = False,
        params: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = as_vectors(queries, self.dimension)
        over = dict(params or {})
        if not len(self) or k <= 0:
            return (np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32),
                    np.full((len(queries), max(k, 0)), -1, dtype=np.int64))
        k_factor = int(over.get("k_factor", self.params.get("k_factor", 1)))
        refine = self.refine_source is not None and k_factor > 1
        # the pool to rescore is at least what tuning measured (k=10), whatever k is asked
        kk = max(k, REFINE_MIN_K) * k_factor if refine else k
        if allowed is not None and not self.supports_selector:
            raise ConfigError(f"index {self.spec!r} cannot search a subset; score the candidates exactly")
        sel = _id_selector(allowed) if allowed is not None else self._base_selector()
        sp = self._search_params(sel, exhaustive, over)
        dist, lab = self._raw_search(queries, kk, sp, sel)
        if refine:
            return self._refine(queries, lab, k)
        scores = -dist if self.metric == "l2" else dist
        return scores, lab

    def _refine(self, queries: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rescore the candidates exactly with their stored vectors (no in-RAM flat copy)."""
        assert self.refine_source is not None
        uniq = np.unique(lab[lab >= 0])
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        if not len(uniq):
            return out_s, out_i
        vecs = np.asarray(self.refine_source(uniq), dtype=np.float32)
        pos = np.searchsorted(uniq, np.where(lab >= 0, lab, uniq[0]))
        for qi in range(len(queries)):
            valid = lab[qi] >= 0
            if not valid.any():
                continue
            cand = vecs[pos[qi][valid]]
            if self.metric == "l2":
                sc = -((cand - queries[qi]) ** 2).sum(1)
            else:
                sc = cand @ queries[qi]
            ids = lab[qi][valid]
            top = np.argsort(-sc, kind="stable")[:k]
            out_s[qi, : len(top)] = sc[top]
            out_i[qi, : len(top)] = ids[top]
        return out_s, out_i

    def save(self, path: Path) -> None:
        write_index_atomic(self.index, path)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, **self.params}


class FlatIndex(_BaseIndex):
    """Exact search. IndexIDMap2 so ids can be listed and vectors reconstructed (for `check`).

    Also the wrapper for factory strings that are neither IVF nor HNSW (e.g. "PQ32", "SQ8"):
    they are prefixed with IDMap2 and behave the same way.
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
            self.kind = "factory"
            self.lossy = bool(LOSSY.search(spec))
            if self.lossy:
                self.params.setdefault("k_factor", DEFAULT_K_FACTOR)
        if index is None:
            if spec == "flat":
                base = (
                    faiss.IndexFlatL2(dimension) if metric == "l2" else faiss.IndexFlatIP(dimension)
                )
                index = faiss.IndexIDMap2(base)
            else:
                index = faiss.index_factory(dimension, "IDMap2," + spec, faiss_metric(metric))
                _no_polysemous(faiss.downcast_index(index.index))
        self.index = index
        if spec != "flat":
            self.supports_selector = False  # IndexPQ & co. reject SearchParameters

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def tunable(self) -> list[str]:
        return ["k_factor"] if self.lossy else []

    def train(self, sample: np.ndarray, n_total: int | None = None) -> None:
        if not self.is_trained:
            self.index.train(as_vectors(sample, self.dimension))
            self.params["trained_on"] = int(len(sample))

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
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

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
        return faiss.rev_swig_ptr(self.index.id_map.data(), n)  # a writable view, no copy

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
            raise ConfigError(_bad_factory(self.spec, exc)) from exc
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError as exc:
            raise ConfigError(f"factory string {self.spec!r} is not an IVF index") from exc
        if self.kind == "ivf":
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        _no_polysemous(ivf)
        self.index = index
        self.params["nlist"] = int(ivf.nlist)

    @property
    def is_trained(self) -> bool:
        return self.index is not None and bool(self.index.is_trained)

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
        self.params["trained_on"] = int(len(sample))
        self.params["built_for"] = int(n_total or len(sample))
        self.params.setdefault("nprobe", max(1, min(int(self.params["nlist"]), 8)))

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
        if ivf.direct_map.type == faiss.DirectMap.NoMap or ivf is not self.index and not isinstance(
            self.index, faiss.IndexIVF
        ):
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


ANN_KINDS = ("flat", "hnsw", "ivf", "ivfpq")


def spec_kind(spec: str) -> str:
    """flat / hnsw / ivf / ivfpq / auto, or 'factory' for a FAISS factory string."""
    if spec in ANN_KINDS or spec == "auto":
        return spec
    return "factory"


def build_index(
    spec: str, dimension: int, metric: str, params: Mapping[str, Any] | None = None
) -> VectorIndex:
    """An empty index for a spec string: flat, hnsw, ivf, ivfpq, auto (flat until trained on
    data; the store resolves 'auto' with :func:`semindex.storage.autoindex.choose_spec`), or any
    FAISS factory string such as "IVF256,PQ32", "HNSW48" or "PQ16"."""
    faiss_metric(metric)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"index type must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in ("flat", "auto"):
        return FlatIndex(dimension, metric, params=params)
    if spec == "hnsw":
        return HNSWIndex(dimension, metric, params=params)
    if spec in ("ivf", "ivfpq"):
        return IVFIndex(dimension, metric, spec=spec, params=params)
    if spec.lower() in ("hnsw", "ivf-flat", "ivf_flat", "ivf-pq", "ivf_pq", "pq"):
        pass
    if not re.match(r"^[A-Za-z0-9_,.=x+-]+$", spec) or not re.search(r"[A-Z]", spec):
        raise ConfigError(
            f"unknown index type {spec!r}; use auto, flat, hnsw, ivf, ivfpq or a FAISS factory "
            "string such as 'IVF256,PQ32'"
        )
    if "IDMap" in spec:
        raise ConfigError(f"factory string {spec!r}: leave out IDMap, semindex adds the id mapping itself")
    if "IVF" in spec:
        return IVFIndex(dimension, metric, spec=spec, params=params)
    if spec.startswith("HNSW"):
        return HNSWIndex(dimension, metric, spec=spec, params=params)
    try:
        return FlatIndex(dimension, metric, spec=spec, params=params)
    except RuntimeError as exc:
        raise ConfigError(_bad_factory(spec, exc)) from exc


MMAP_MIN_BYTES = 256 * 1024 * 1024


def load_index(
    path: Path,
    spec: str,
    dimension: int,
    metric: str,
    params: Mapping[str, Any] | None = None,
    *,
    mmap: bool | None = None,
) -> VectorIndex:
    """Read a checkpoint. IVF indexes above MMAP_MIN_BYTES (or with ``mmap=True``) are memory-
    mapped (faiss.IO_FLAG_MMAP: the inverted lists stay on disk, paged in by the OS) and copied
    into RAM only at the first write. Flat and HNSW files are always read into RAM: faiss 1.15
    ignores IO_FLAG_MMAP for them, and its zero-copy IO_FLAG_MMAP_IFC views abort the process
    on the first add, so semindex never uses that flag."""
    kind = spec_kind(spec)
    want_mmap = False
    if kind in ("ivf", "ivfpq") or (kind == "factory" and "IVF" in spec):
        if mmap is None:
            with contextlib.suppress(OSError):
                want_mmap = path.stat().st_size >= MMAP_MIN_BYTES
        else:
            want_mmap = mmap
    try:
        raw = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if want_mmap else 0)
    except Exception as exc:  # faiss raises RuntimeError with C++ text
        raise StorageError(f"cannot read vector index {path}: {exc}") from exc
    if raw.d != dimension:
        raise StorageError(f"vector index {path} has dimension {raw.d}, expected {dimension}")
    index: Any
    if kind == "flat":
        index = FlatIndex(dimension, metric, index=raw, params=params)
    elif kind == "hnsw" or (kind == "factory" and spec.startswith("HNSW")):
        index = HNSWIndex(dimension, metric, index=raw, spec=spec, params=params)
    elif kind in ("ivf", "ivfpq") or (kind == "factory" and "IVF" in spec):
        index = IVFIndex(dimension, metric, index=raw, spec=spec, params=params)
        index.mmapped = want_mmap
    elif kind == "factory":
        index = FlatIndex(dimension, metric, index=raw, spec=spec, params=params)
    else:
        raise ConfigError(f"unknown index type {spec!r}")
    return index


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
    params: dict[str, Any] = field(default_factory=dict)

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
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"unreadable index manifest {path}: {exc}") from exc

    def write(self, path: Path) -> None:
        write_json_atomic(self.__dict__.copy(), path)
