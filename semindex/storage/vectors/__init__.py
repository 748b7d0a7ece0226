"""The FAISS side: a derived, rebuildable index of the vectors held in SQL.

`VectorIndex` (``base.py``) is the small interface the store talks to. The families,
one module each, all chosen by a spec string through :func:`build_index`
(``factory.py``), so the store never names a FAISS class:

* ``flat``  - `FlatIndex` (``flat.py``): exact, IndexIDMap2 over IndexFlatIP / IndexFlatL2;
* ``hnsw``  - `HNSWIndex` (``hnsw.py``): IndexHNSWFlat (M=32) under an IndexIDMap; removal is
  a tombstone (the id map entry becomes -1 and an IDSelector skips it);
* ``ivf``   - `IVFIndex` (``ivf.py``): IVF-Flat with a hash-table DirectMap;
* ``ivfpq`` - `IVFIndex`: IVF-PQ whose candidates are rescored exactly from the
  stored vectors (``refine_source``), so the RAM index stays ~1/20 of flat;
* ``sq8``   - `FlatIndex` over FAISS SQ8 codes (1 byte per dimension), candidates rescored exactly;
* ``binary`` - `BinaryIndex` (``binary.py``): sign bits around per-dimension medians (d/8 bytes),
  Hamming search, candidates rescored exactly;
* any FAISS factory string ("IVF256,PQ32", "HNSW48", "PQ16", "OPQ16,IVF1024,PQ16").

Search parameters (nprobe, efSearch, k_factor) live in ``index.params``; the
store tunes them (semindex.storage.autoindex) and records them in the checkpoint
manifest (semindex.storage.checkpoint), which also owns the atomic file writes.

A new index family: a module here with a `_BaseIndex` subclass, one branch in
`build_index` and one in `load_index`.
"""

from .base import (
    ANN_KINDS,
    HNSW_M,
    METRICS,
    RefineSource,
    VectorIndex,
    as_ids,
    as_vectors,
    default_memory_budget,
    default_nlist,
    faiss_metric,
    gpu_available,
    no_polysemous,
    parse_bytes,
    pq_subquantizers,
)
from .binary import BinaryIndex
from .factory import MMAP_MIN_BYTES, build_index, check_spec, load_index, min_training_points, spec_kind
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .ivf import IVFIndex

__all__ = [
    "ANN_KINDS",
    "HNSW_M",
    "METRICS",
    "MMAP_MIN_BYTES",
    "BinaryIndex",
    "FlatIndex",
    "HNSWIndex",
    "IVFIndex",
    "RefineSource",
    "VectorIndex",
    "as_ids",
    "as_vectors",
    "build_index",
    "check_spec",
    "default_memory_budget",
    "default_nlist",
    "faiss_metric",
    "gpu_available",
    "load_index",
    "min_training_points",
    "no_polysemous",
    "parse_bytes",
    "pq_subquantizers",
    "spec_kind",
]
