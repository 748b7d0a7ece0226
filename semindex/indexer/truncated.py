"""Matryoshka truncation: a collection's vectors are the first N dims of its model's, re-normalised.

Why: models trained with Matryoshka representation learning (sentence-transformers'
``MatryoshkaLoss``) pack the most information into the leading dimensions, so the first
N of them are a good N-d embedding: an index N/D the size, searched N/D as fast. For any
other model the leading dims are no better than any others, and cutting them silently
ruins retrieval. So truncation is refused unless the model says it was trained for it.

How a model says so (the first that answers wins):

* a registered encoder (:func:`semindex.indexer.encoder.register_encoder`) has an attribute
  ``matryoshka_dims``: the trained sizes (an empty tuple: trained, sizes not listed);
* its folder holds ``semindex.json`` with ``{"matryoshka_dims": [...]}`` (the marker a user,
  or a training script, writes next to weights it trained with MatryoshkaLoss);
* its model card (``README.md`` in the folder, or in the Hugging Face cache for a hub id)
  names ``MatryoshkaLoss`` / ``Matryoshka2dLoss``, as the cards sentence-transformers writes
  do; the ``matryoshka_dims`` the card lists are the trained sizes.

Which N is accepted: 1 <= N < the model's dimension; when the model lists its trained sizes,
N must be one of them (a size it was never trained at has no quality guarantee). The escape
hatch ``allow_truncation=True`` (``--force-dimensions``) skips both the training check and
the trained-sizes check (N must still be in range), for users who have measured their model.

Every path that encodes for a collection goes through :func:`truncated` (documents, queries,
chunking, re-embedding, the collection's ``embed``), so its vectors always have one size.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TruncationError
from .encoder import Encoder, resolve_model_path

MARKER = "semindex.json"
MARKER_KEY = "matryoshka_dims"
_LOSS = re.compile(r"Matryoshka(?:2d)?Loss")
_DIMS = re.compile(r"[\"']?matryoshka_dims[\"']?\s*[:=]\s*\[([\d\s,]*)\]")


@dataclass(frozen=True)
class MatryoshkaSupport:
    """What a model says about truncation: the sizes it was trained at (empty: not listed) and where."""

    dims: tuple[int, ...]
    source: str


def _dims(values: Any) -> tuple[int, ...]:
    """Trained sizes as positive ints, sorted large to small; anything else in the list is ignored."""
    if not isinstance(values, (list, tuple)):
        return ()
    ok = {int(v) for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    return tuple(sorted(ok, reverse=True))


def _model_files(model: str) -> list[tuple[str, Path]]:
    """(kind, path) of the marker and the model card for ``model``: its folder, or the HF cache."""
    path = Path(resolve_model_path(model))
    if path.is_dir():
        return [("marker", path / MARKER), ("card", path / "README.md")]
    out: list[tuple[str, Path]] = []
    try:  # a hub id: only what is already in the local cache (no download, ever)
        from huggingface_hub import try_to_load_from_cache

        for kind, fname in (("marker", MARKER), ("card", "README.md")):
            found = try_to_load_from_cache(model, fname)
            if isinstance(found, str):
                out.append((kind, Path(found)))
    except (ImportError, ValueError, OSError):  # not a valid repo id: nothing to read
        pass
    return out


def matryoshka_support(encoder: Encoder, model: str) -> MatryoshkaSupport | None:
    """How ``model`` (loaded as ``encoder``) declares Matryoshka training; None when it does not."""
    declared = getattr(encoder, "matryoshka_dims", None)
    if declared is not None:
        return MatryoshkaSupport(_dims(declared), f"encoder {type(encoder).__name__}.matryoshka_dims")
    for kind, path in _model_files(model):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if kind == "marker":
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and MARKER_KEY in data:
                return MatryoshkaSupport(_dims(data[MARKER_KEY]), str(path))
        elif _LOSS.search(text):
            found = _DIMS.search(text)
            dims = _dims([int(x) for x in re.findall(r"\d+", found.group(1))]) if found else ()
            return MatryoshkaSupport(dims, str(path))
    return None


def check_truncation(encoder: Encoder, dimensions: int, *, allow_truncation: bool = False) -> MatryoshkaSupport | None:
    """Raise TruncationError unless ``encoder``'s vectors may be cut to ``dimensions``.

    Returns what the model declares (None when ``allow_truncation`` let an undeclared model through).
    """
    name, full = encoder.name, int(encoder.dimension)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions < full:
        raise TruncationError(
            f"dimensions must be an integer in 1..{full - 1} for model {name!r} ({full}-d vectors); "
            f"got {dimensions!r} (omit it for the full vectors)"
        )
    support = matryoshka_support(encoder, name)
    if allow_truncation:
        return support
    if support is None:
        raise TruncationError(
            f"model {name!r} is not trained for truncation (no MatryoshkaLoss in its model card, no "
            f"{MARKER_KEY} in {MARKER}): its first {dimensions} dims are not a usable embedding. "
            "Use a Matryoshka-trained model, omit dimensions, or force it (allow_truncation / --force-dimensions)"
        )
    if support.dims and dimensions not in support.dims:
        trained = ", ".join(str(d) for d in support.dims)
        raise TruncationError(
            f"model {name!r} was trained for truncation to {trained} dims (per {support.source}), "
            f"not {dimensions}: pick one of those, or force it (allow_truncation / --force-dimensions)"
        )
    return support


class TruncatedEncoder:
    """An :class:`~semindex.indexer.encoder.Encoder` giving the first ``dimensions`` dims of ``inner``'s vectors.

    The inner model encodes unnormalised, the rows are cut, then re-normalised when asked: a
    unit vector cut short is no longer unit length, and cosine search needs it to be. Everything
    else (``model`` and its tokenizer for chunking, ``backend``, ``precision``, ``device``,
    ``one_batch_at_a_time``) is the inner encoder's.
    """

    def __init__(self, inner: Encoder, dimensions: int) -> None:
        if not 1 <= dimensions < int(inner.dimension):
            raise TruncationError(f"cannot truncate {inner.dimension}-d vectors of {inner.name!r} to {dimensions}")
        self.inner = inner
        self.name = inner.name
        self.dimension = int(dimensions)
        self.full_dimension = int(inner.dimension)

    def __getattr__(self, attr: str) -> Any:
        # only reached for attributes this wrapper lacks: the inner encoder's own (model, backend...)
        if attr == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @property
    def max_seq_length(self) -> int:
        return int(self.inner.max_seq_length)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Float32 (n, dimensions): the inner encoder's rows cut to their first ``dimensions``."""
        full = self.inner.encode(texts, batch_size=batch_size, normalize=False)
        out = np.ascontiguousarray(np.asarray(full, dtype=np.float32)[:, : self.dimension])
        if normalize and len(out):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


_wrapped: dict[tuple[int, int], TruncatedEncoder] = {}
_lock = threading.Lock()


def truncated(inner: Encoder, dimensions: int | None) -> Encoder:
    """``inner`` cut to ``dimensions`` (None: ``inner`` itself), one wrapper per (encoder, N) per process.

    The same object every time matters: the query-embedding cache keeps one LRU per encoder
    object, and a fresh wrapper per search would never hit it. The wrapper holds ``inner``, so
    the ``id`` in the key cannot be reused while the entry exists.
    """
    if dimensions is None:
        return inner
    key = (id(inner), int(dimensions))
    with _lock:
        enc = _wrapped.get(key)
        if enc is None or enc.inner is not inner:
            enc = _wrapped[key] = TruncatedEncoder(inner, int(dimensions))
        return enc


__all__ = [
    "MARKER",
    "MARKER_KEY",
    "MatryoshkaSupport",
    "TruncatedEncoder",
    "check_truncation",
    "matryoshka_support",
    "truncated",
]
