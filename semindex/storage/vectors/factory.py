"""Spec strings -> index objects: the only place that maps a name to an index family."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss

from ...errors import ConfigError, StorageError
from .base import ANN_KINDS, VectorIndex, _bad_factory, faiss_metric
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .ivf import IVFIndex


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
