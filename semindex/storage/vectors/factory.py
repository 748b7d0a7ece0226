"""Spec strings -> index objects: the only place that maps a name to an index family."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss

from ...errors import IndexSpecError, StorageError
from .base import ANN_KINDS, VectorIndex, _bad_factory, default_memory_budget, faiss_metric
from .binary import BinaryIndex, read_binary
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .ivf import IVFIndex


def spec_kind(spec: str) -> str:
    """flat / hnsw / ivf / ivfpq / sq8 / binary / auto, or 'factory' for a FAISS factory string."""
    if spec in ANN_KINDS or spec == "auto":
        return spec
    return "factory"


MAX_DIMENSION = 65_536
MAX_NLIST = 65_536  # also default_nlist's ceiling: more cells than this never pays
HNSW_M_RANGE = (2, 256)
MAX_PQ_NBITS = 16

# What a factory string may contain, component by component (comma-separated): a closed list,
# so a family semindex cannot keep exact (NSG builds once and cannot grow, Refine keeps a second
# copy, IDMap is semindex's own) is refused at creation instead of failing at the first write.
_TRANSFORM = re.compile(r"^(PCA(?:W|R|WR)?(?P<pca>\d+)|OPQ(?P<opq>\d+)(?:_(?P<opqd>\d+))?|ITQ(?P<itq>\d+)?|RR(?P<rr>\d+)|L2norm)$")
_COARSE = re.compile(r"^(IVF(?P<nlist>\d+)|HNSW(?P<m>\d+))$")
_CODE = re.compile(r"^(Flat|PQ(?P<pq>\d+)(?:x(?P<nbits>\d+))?(?:np)?|SQ(?:4|6|8|fp16|bf16)|LSH)$")


def check_spec(spec: str, dimension: int, budget: int | None = None) -> None:
    """Refuse a factory string that can never work or asks for unbounded memory (ConfigError).

    Every number in it comes from a request, so each is bounded: IVF cells in 1..65536 and
    their centroids within the memory budget, HNSW M in 2..256, PQ sub-quantizers dividing the
    dimension with at most 16 bits, transforms no wider than the vectors. Sizes that are fine but
    need more vectors than the collection holds are not refused: the store searches exactly
    until there are enough to train (see autoindex.build_from_source)."""
    budget = budget or default_memory_budget()
    parts = spec.split(",")
    d = dimension
    fixed = 0  # bytes the empty index allocates up front (centroids, codebooks)
    seen_coarse = False
    for i, part in enumerate(parts):
        t, c, e = _TRANSFORM.match(part), _COARSE.match(part), _CODE.match(part)
        if t and not seen_coarse and i < len(parts) - 1:
            out = t.group("pca") or t.group("rr") or t.group("opqd") or t.group("itq")
            if t.group("opq") is not None and not 1 <= int(t.group("opq")) <= d:
                raise IndexSpecError(f"index {spec!r}: OPQ{t.group('opq')} needs 1..{d} sub-quantizers")
            if out is not None:
                if not 1 <= int(out) <= d:
                    raise IndexSpecError(f"index {spec!r}: {part} must map to 1..{d} dimensions")
                d = int(out)
            fixed += 4 * dimension * dimension
            continue
        if c and not seen_coarse:
            seen_coarse = True
            if c.group("nlist") is not None:
                nlist = int(c.group("nlist"))
                if not 1 <= nlist <= MAX_NLIST:
                    raise IndexSpecError(f"index {spec!r}: IVF needs 1..{MAX_NLIST} cells, got {nlist}")
                fixed += nlist * (4 * d + 64)  # centroids + one inverted list each
            else:
                m = int(c.group("m"))
                lo, hi = HNSW_M_RANGE
                if not lo <= m <= hi:
                    raise IndexSpecError(f"index {spec!r}: HNSW needs M in {lo}..{hi}, got {m}")
                if i > 0:
                    raise IndexSpecError(f"index {spec!r}: a transform before HNSW is not supported")
            continue
        if e and i == len(parts) - 1:
            if e.group("pq") is not None:
                m = int(e.group("pq"))
                nbits = int(e.group("nbits") or 8)
                if not 1 <= m <= d or d % m:
                    raise IndexSpecError(f"index {spec!r}: PQ{m} needs a divisor of the dimension {d}")
                if not 1 <= nbits <= MAX_PQ_NBITS:
                    raise IndexSpecError(f"index {spec!r}: PQ codes take 1..{MAX_PQ_NBITS} bits, got {nbits}")
                fixed += (1 << nbits) * d * 4
            continue
        raise IndexSpecError(
            f"bad FAISS factory string {spec!r} (could not parse {part!r} there); semindex takes optional transforms (PCA, OPQ, "
            "ITQ, RR, L2norm), then IVF<n> or HNSW<M>, then Flat, PQ<m>[x<bits>], SQ<4|6|8|fp16> or LSH"
        )
    if fixed > budget:
        raise IndexSpecError(
            f"index {spec!r} needs ~{fixed >> 20} MiB before holding a vector, over the "
            f"{budget >> 20} MiB index memory budget"
        )


def min_training_points(spec: str, dimension: int) -> int:
    """The fewest vectors FAISS can train ``spec`` on (IVF cells, PQ centroids); 1 when it needs none.

    'ivf' and 'ivfpq' size their cells and code bits from the data, so a couple of vectors do."""
    if spec in ("flat", "hnsw", "auto", "ivf", "sq8", "binary"):
        return 1
    if spec == "ivfpq":
        return 2
    need = 1
    for part in spec.split(","):
        m = _COARSE.match(part)
        if m and m.group("nlist"):
            need = max(need, int(m.group("nlist")))
        e = _CODE.match(part)
        if e and e.group("pq") is not None:
            need = max(need, 1 << int(e.group("nbits") or 8))
        t = _TRANSFORM.match(part)
        if t and t.group("opq") is not None:
            need = max(need, 256)
    return need


def build_index(
    spec: str, dimension: int, metric: str, params: Mapping[str, Any] | None = None
) -> VectorIndex:
    """An empty index for a spec string: flat, hnsw, ivf, ivfpq, sq8, binary, auto (flat until trained on
    data; the store resolves 'auto' with :func:`semindex.storage.autoindex.choose_spec`), or any
    FAISS factory string such as "IVF256,PQ32", "HNSW48" or "PQ16"."""
    faiss_metric(metric)
    if not isinstance(dimension, int) or isinstance(dimension, bool) or not 1 <= dimension <= MAX_DIMENSION:
        raise IndexSpecError(f"dimension must be an integer in 1..{MAX_DIMENSION}, got {dimension!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise IndexSpecError(f"index type must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in ("flat", "auto", "sq8"):
        return FlatIndex(dimension, metric, spec="flat" if spec == "auto" else spec, params=params)
    if spec == "binary":
        return BinaryIndex(dimension, metric, params=params)
    if spec == "hnsw":
        return HNSWIndex(dimension, metric, params=params)
    if spec in ("ivf", "ivfpq"):
        return IVFIndex(dimension, metric, spec=spec, params=params)
    if not re.match(r"^[A-Za-z0-9_,.=x+-]+$", spec) or not re.search(r"[A-Z]", spec):
        raise IndexSpecError(
            f"unknown index type {spec!r}; use auto, flat, hnsw, ivf, ivfpq, sq8, binary or a FAISS factory "
            "string such as 'IVF256,PQ32'"
        )
    if "IDMap" in spec:
        raise IndexSpecError(f"factory string {spec!r}: leave out IDMap, semindex adds the id mapping itself")
    check_spec(spec, dimension)
    if "IVF" in spec:
        return IVFIndex(dimension, metric, spec=spec, params=params)
    if spec.startswith("HNSW"):
        try:
            return HNSWIndex(dimension, metric, spec=spec, params=params)
        except RuntimeError as exc:
            raise IndexSpecError(_bad_factory(spec, exc)) from exc
    try:
        return FlatIndex(dimension, metric, spec=spec, params=params)
    except RuntimeError as exc:
        raise IndexSpecError(_bad_factory(spec, exc)) from exc


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
    if kind == "binary":
        return read_binary(path, dimension, metric, params)
    try:
        raw = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if want_mmap else 0)
    except Exception as exc:  # faiss raises RuntimeError with C++ text
        raise StorageError(f"cannot read vector index {path}: {exc}") from exc
    if raw.d != dimension:
        raise StorageError(f"vector index {path} has dimension {raw.d}, expected {dimension}")
    index: FlatIndex | HNSWIndex | IVFIndex
    if kind in ("flat", "sq8"):
        index = FlatIndex(dimension, metric, index=raw, spec=kind, params=params)
    elif kind == "hnsw" or (kind == "factory" and spec.startswith("HNSW")):
        index = HNSWIndex(dimension, metric, index=raw, spec=spec, params=params)
    elif kind in ("ivf", "ivfpq") or (kind == "factory" and "IVF" in spec):
        index = IVFIndex(dimension, metric, index=raw, spec=spec, params=params)
        index.mmapped = want_mmap
    elif kind == "factory":
        index = FlatIndex(dimension, metric, index=raw, spec=spec, params=params)
    else:
        raise IndexSpecError(f"unknown index type {spec!r}")
    return index
