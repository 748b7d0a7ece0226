"""The interface every index family implements, and the search plumbing they share.

`VectorIndex` is the small protocol the store talks to; `_BaseIndex` holds what the
families have in common: FAISS ``SearchParameters`` with an ``IDSelector`` (filters are
applied inside the search, never after it), the sign flip that makes l2 scores
"higher is better", exact rescoring of lossy candidates from the stored vectors
(``refine_source``), and the optional GPU mirror for unfiltered searches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import faiss
import numpy as np

from ...errors import ConfigError, DimensionMismatchError
from .. import exact
from ..atomic import write_index_atomic

log = logging.getLogger(__name__)

METRICS = ("cosine", "dot", "l2")
ANN_KINDS = ("flat", "hnsw", "ivf", "ivfpq", "sq8", "binary")


def faiss_metric(metric: str) -> int:
    if metric in ("cosine", "dot"):
        return int(faiss.METRIC_INNER_PRODUCT)
    if metric == "l2":
        return int(faiss.METRIC_L2)
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
    lossy: bool

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
# lossy codes, and transforms (PCA, OPQ, ITQ, random rotation, L2norm) whose reconstruction is
# not the stored vector: such indexes rescore exactly from SQL and `check` skips their vectors
LOSSY = re.compile(r"(PQ|SQ|LSH|RQ|LSQ|RaBitQ|PCA|ITQ|RR\d|L2norm)", re.IGNORECASE)


def _bad_factory(spec: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.search(r" at \S+:\d+: (.*)$", text)
    why = m.group(1) if m else text
    return (f"bad FAISS factory string {spec!r} ({why}); use auto, flat, hnsw, ivf, ivfpq, sq8, binary or a FAISS "
            "factory string such as 'IVF256,PQ32'")


def no_polysemous(index: Any) -> None:
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


def parse_bytes(text: str | int | float) -> int:
    """A size in bytes, or with a K/M/G/T suffix (binary units): "4G", "512MiB", 1e9."""
    if isinstance(text, (int, float)):
        return int(text)
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        return int(float(t) * mult)
    except ValueError as exc:
        raise ConfigError(f"bad memory size {text!r} (e.g. 4G, 512M)") from exc


def default_memory_budget() -> int:
    """Bytes an index may take: $SEMINDEX_INDEX_MEMORY (bytes, or with a K/M/G suffix), else half
    the machine's RAM. Also the bound on what an index spec may ask for up front."""
    env = os.environ.get("SEMINDEX_INDEX_MEMORY")
    if env:
        try:
            return parse_bytes(env)
        except ConfigError as exc:
            raise ConfigError(f"bad SEMINDEX_INDEX_MEMORY {env!r} (e.g. 4G, 512M)") from exc
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


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


SERIAL_QUERIES = 4  # searches of this many queries or fewer run on one OpenMP thread


@contextlib.contextmanager
def few_query_threads(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for a search of a few queries, in this thread only.

    FAISS parallelises a search over its queries, so one query gains nothing from a thread
    team, and entering the parallel region costs: measured here on 2 busy cores, a single
    query took 2.5x as long with 2 threads as with 1 (1k to 200k flat vectors). A server gets
    its parallelism from concurrent requests instead. ``omp_set_num_threads`` is per calling
    thread, so other threads' batch searches keep every core."""
    if n_queries > SERIAL_QUERIES:
        yield
        return
    before = faiss.omp_get_max_threads()
    if before <= 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


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
    # rescore even at k_factor 1: the codes' own scores are not the metric's (sq8, binary), so
    # callers would see approximate scores; PQ's default k_factor > 1 makes this moot for it
    always_refine = False

    if TYPE_CHECKING:  # every concrete index defines it; not here, so a bare _BaseIndex stays truthy
        def __len__(self) -> int: ...

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
        with few_query_threads(len(queries)):
            return self._raw_search_in(queries, k, sp, sel)

    def _raw_search_in(self, queries: np.ndarray, k: int, sp: Any, sel: Any) -> tuple[np.ndarray, np.ndarray]:
        if sel is None and self._gpu is not None:
            gpu = self._gpu.get(self._gpu_source())
            if gpu is not None:
                if hasattr(gpu, "nprobe") and sp is not None and hasattr(sp, "nprobe"):
                    gpu.nprobe = min(int(sp.nprobe), 2048)  # GPU IVF caps nprobe at 2048
                dist, lab = gpu.search(queries, k)
                return dist, self._gpu_labels(lab)
        found: tuple[np.ndarray, np.ndarray] = self.index.search(queries, k, params=sp)
        return found

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
        refine = self.refine_source is not None and (k_factor > 1 or self.always_refine)
        # the pool to rescore is at least what tuning measured (k=10), whatever k is asked
        kk = max(k, REFINE_MIN_K) * k_factor if refine else k
        if allowed is not None and not self.supports_selector:
            raise ConfigError(f"index {self.spec!r} cannot search a subset; score the candidates exactly")
        sel = _id_selector(allowed) if allowed is not None else self._base_selector()
        sp = self._search_params(sel, exhaustive, over)
        dist, lab = self._raw_search(queries, kk, sp, sel)
        if refine:
            return self._refine(queries, lab, k)
        return self._scores(dist, lab), lab

    def _scores(self, dist: np.ndarray, lab: np.ndarray) -> np.ndarray:
        """FAISS's distances as "higher is better" scores (l2 distances negated)."""
        out: np.ndarray = -dist if self.metric == "l2" else dist
        return out

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
            sc, ids = exact.top_k(queries[qi : qi + 1], vecs[pos[qi][valid]], lab[qi][valid], k, self.metric)
            out_s[qi, : sc.shape[1]] = sc[0]
            out_i[qi, : ids.shape[1]] = ids[0]
        return out_s, out_i

    def save(self, path: Path) -> None:
        write_index_atomic(self.index, path)
