"""Inference backends for sentence-transformers models: torch, ONNX Runtime and OpenVINO.

Why: on CPU, ingestion is bound by the model's forward pass, and torch leaves much of
the CPU's speed unused. The same model exported once (``torch.onnx.export`` of the
whole sentence-transformers pipeline: transformer, pooling, normalisation) and run by
OpenVINO gives the same vectors (mean cosine to torch 1.00000) about 1.6-1.9x faster
on a 2-core AVX-512 machine, and in bf16 (on CPUs with native bf16) about 2.8-3.4x at
mean cosine 0.99998; ``benchmarks/backends.py`` prints the current figures.

``backend``: ``torch`` | ``onnx`` | ``openvino`` | ``auto`` (None). ``auto`` is
``openvino`` on CPU when it is installed, else ``torch`` (CUDA/MPS always use torch).
``precision``: ``fp32`` | ``bf16`` (OpenVINO) | ``int8`` (ONNX Runtime, dynamic,
per-channel weights). ``$SEMINDEX_BACKEND`` / ``$SEMINDEX_PRECISION`` set the defaults.

Exported files are cached under ``$SEMINDEX_CACHE`` (default ``~/.cache/semindex``),
keyed by model (name, weight files' size and mtime) + backend + precision + the
library versions that produced them, written to a temporary folder and renamed into
place (atomic: a crash or a concurrent exporter never leaves a half-written model),
and reused by every later load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ...errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32",),
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16"),
}
BACKEND_ENV = "SEMINDEX_BACKEND"
PRECISION_ENV = "SEMINDEX_PRECISION"
CACHE_ENV = "SEMINDEX_CACHE"
EXPORT_FORMAT = 1  # bump when the exported graph or its metadata changes

_threads: int | None = None


# -- options ---------------------------------------------------------------------------------------


def available(backend: str) -> bool:
    """Whether ``backend``'s runtime is importable (torch always is)."""
    if backend == "torch":
        return True
    module = {"onnx": "onnxruntime", "openvino": "openvino"}[backend]
    import importlib.util

    return importlib.util.find_spec(module) is not None


def requested_backend(backend: str | None) -> str | None:
    """``backend`` checked and lower-cased, or ``$SEMINDEX_BACKEND``; None means auto."""
    value = backend if backend is not None else os.environ.get(BACKEND_ENV)
    value = (value or "").strip().lower() or None
    if value in (None, "auto"):
        return None
    if value not in BACKENDS:
        raise ConfigError(f"unknown backend {value!r}: use auto, {', '.join(BACKENDS)}")
    return value


def requested_precision(precision: str | None) -> str | None:
    """``precision`` checked and lower-cased, or ``$SEMINDEX_PRECISION``; None means fp32."""
    value = precision if precision is not None else os.environ.get(PRECISION_ENV)
    value = (value or "").strip().lower() or None
    if value is not None and value not in PRECISIONS:
        raise ConfigError(f"unknown precision {value!r}: use {', '.join(PRECISIONS)}")
    return value


def resolve(backend: str | None, precision: str | None, device: str) -> tuple[str, str]:
    """The (backend, precision) to load for ``device`` (already resolved: cpu, cuda, mps).

    Raises ConfigError for a combination that cannot work (int8 on torch, a backend on
    CUDA, a runtime that is not installed), naming what to install or use instead.
    """
    b = requested_backend(backend)
    p = requested_precision(precision) or "fp32"
    if b is None:
        if device != "cpu":
            b = "torch"
        else:
            b = next((x for x in ("openvino", "onnx", "torch") if p in SUPPORTED[x] and available(x)), None)
            if b is None:
                raise ConfigError(f"precision {p!r} needs a backend that supports it: "
                                  f"{_who_supports(p)} (pip install 'semindex[onnx]' or 'semindex[openvino]')")
    if p not in SUPPORTED[b]:
        raise ConfigError(f"backend {b!r} does not offer precision {p!r} (it offers "
                          f"{', '.join(SUPPORTED[b])}; {p} is offered by {_who_supports(p)})")
    if b != "torch" and device != "cpu":
        raise ConfigError(f"backend {b!r} runs on the CPU only; use --backend torch for device {device!r}")
    if not available(b):
        extra = "onnx" if b == "onnx" else "openvino"
        raise ConfigError(f"backend {b!r} is not installed: pip install 'semindex[{extra}]'")
    return b, p


def for_collection(name: str, config: dict[str, Any], backend: str | None,
                   precision: str | None) -> tuple[str | None, str]:
    """The (backend, precision) to encode with for an existing collection recorded with ``config``.

    A collection's vectors come from one precision: asking for another is a ConfigError
    (int8 or bf16 vectors mixed with fp32 ones would rank by the precision, not the meaning).
    fp32 vectors are the same from every backend (cosine >= 0.9999), so an fp32 collection
    may be read and extended with any backend (auto unless one is asked for); a reduced
    precision stays on the backend that built it. Collections from before backends were
    recorded hold torch fp32 vectors.
    """
    rec_p = str(config.get("precision") or "fp32")
    rec_b = str(config.get("backend") or "torch")
    # only what the caller asked for is checked: $SEMINDEX_BACKEND / $SEMINDEX_PRECISION are
    # defaults for new collections and never override what an existing one holds
    want_p = requested_precision(precision) if precision is not None else None
    want_b = requested_backend(backend) if backend is not None else None
    if want_p is not None and want_p != rec_p:
        raise ConfigError(
            f"collection {name!r} holds {rec_p} vectors (backend {rec_b}); it cannot take {want_p} ones: "
            f"mixing precisions in one collection would skew its ranking (create another collection)"
        )
    if rec_p != "fp32":
        if want_b is not None and want_b != rec_b:
            raise ConfigError(f"collection {name!r} holds {rec_p} vectors from backend {rec_b!r}; "
                              f"backend {want_b!r} would give different ones (create another collection)")
        return rec_b, rec_p
    return want_b, rec_p


def _who_supports(precision: str) -> str:
    return ", ".join(b for b in BACKENDS if precision in SUPPORTED[b])


def default_threads() -> int:
    """CPU threads per model call: the set by :func:`set_threads`, else the cores this process may use."""
    if _threads is not None:
        return _threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> None:
    """Threads per model call for every backend (``--torch-threads``): torch now, ONNX/OpenVINO at load."""
    global _threads
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}")
    _threads = int(n)
    import torch

    torch.set_num_threads(_threads)


# -- the cache -------------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "semindex").expanduser()


def _versions(backend: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", "transformers", "sentence-transformers", "onnx"]
    names.append("onnxruntime" if backend == "onnx" else "openvino")
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = "-"
    return out


def _weights_id(path: str) -> list[Any]:
    """Size and mtime of a local model's weight files, so retrained weights are exported again."""
    p = Path(path)
    if not p.is_dir():
        return [path]
    files = sorted(q for q in p.rglob("*") if q.suffix in (".safetensors", ".bin", ".json") and q.is_file())
    return [[str(q.relative_to(p)), q.stat().st_size, int(q.stat().st_mtime)] for q in files]


def cache_dir_for(name: str, path: str, backend: str, artifact: str) -> Path:
    """Where (model, backend, artifact, versions) is cached; the folder may not exist yet."""
    key = {"model": name, "weights": _weights_id(path), "backend": backend, "artifact": artifact,
           "versions": _versions(backend), "format": EXPORT_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.rsplit("/", 1)[-1])[:40]
    return cache_root() / f"{slug}-{backend}-{artifact}-{digest}"


def build_cached(target: Path, build: Callable[[Path], None]) -> Path:
    """``target`` if it is complete, else ``build(tmp)`` into a temporary folder renamed onto it.

    The rename is atomic; when another process wins the race its copy is kept and ours dropped.
    """
    if (target / "meta.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        if not (tmp / "meta.json").is_file():
            raise RuntimeError(f"export to {tmp} wrote no meta.json")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- export ----------------------------------------------------------------------------------------


def export_onnx(name: str, path: str) -> Path:
    """The model's whole sentence-transformers pipeline as ONNX (cached); returns its folder.

    The graph takes ``input_ids`` and ``attention_mask`` (batch and sequence axes dynamic)
    and returns the sentence embedding exactly as ``SentenceTransformer.encode`` computes it.
    The tokenizer is saved next to it, so later loads need neither torch nor the original model.
    """
    return build_cached(cache_dir_for(name, path, "onnx", "fp32"), lambda tmp: _export_onnx(path, tmp))


def _export_onnx(path: str, out: Path) -> None:
    import warnings

    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    st = SentenceTransformer(path, device="cpu")
    st.eval()
    tok = st.tokenizer
    type_ids = "token_type_ids" in getattr(tok, "model_input_names", ())

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mods = torch.nn.ModuleList(list(st))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            f: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if type_ids:
                f["token_type_ids"] = torch.zeros_like(input_ids)
            for m in self.mods:
                f = m(f)
            return f["sentence_embedding"]

    example = tok(["an example sentence", "another, slightly longer, example sentence"],
                  padding=True, return_tensors="pt")
    args = (example["input_ids"], example["attention_mask"])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "embedding": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pipeline().eval(), args, str(out / "model.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    tok.save_pretrained(str(out / "tokenizer"))
    dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else \
        st.get_sentence_embedding_dimension()
    if not dim:
        raise ValueError(f"model {path!r} does not report an embedding dimension")
    if st.max_seq_length is None:
        raise ValueError(f"model {path!r} does not report a max sequence length")
    meta = {"dimension": int(dim), "max_seq_length": int(st.max_seq_length), "source": path}
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def copy_meta(src: Path, dst: Path) -> None:
    """A derived artifact (int8 ONNX, OpenVINO IR) shares the exported tokenizer and metadata."""
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    shutil.copy2(src / "meta.json", dst / "meta.json")


# -- the encoder -----------------------------------------------------------------------------------

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ExportedEncoder:
    """An exported model behind the :class:`~semindex.indexer.encoder.Encoder` protocol.

    ``encode`` sorts its texts by length (less padding), and tokenizes the next batch in a
    helper thread while the runtime computes the current one (both release the GIL).
    ``model.tokenizer`` is there for code written against the sentence-transformers encoder
    (token counting, chunking).
    """

    one_batch_at_a_time = True  # the pipeline may call encode per model batch (progress per batch)

    def __init__(self, name: str, folder: Path, runner: Runner, *, backend: str, precision: str,
                 device: str = "cpu") -> None:
        from transformers import AutoTokenizer

        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.name = name
        self.backend = backend
        self.precision = precision
        self.device = device
        self.folder = folder
        self.dimension = int(meta["dimension"])
        self._max_len = int(meta["max_seq_length"])
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.model = SimpleNamespace(tokenizer=self.tokenizer, max_seq_length=self._max_len)
        self._run = runner
        self._lock = threading.Lock()
        # A fast tokenizer holds padding/truncation state while it runs: two threads (concurrent
        # requests, the chunker) calling it at once get ragged batches. One call at a time.
        self._tok_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="semindex-tokenize")

    @property
    def max_seq_length(self) -> int:
        return self._max_len

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._tok_lock:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self._max_len,
                                 return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Float32 (n, dim), in the order of ``texts``."""
        n = len(texts)
        out = np.empty((n, self.dimension), dtype=np.float32)
        if n == 0:
            return out
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        parts = [order[lo : lo + batch_size] for lo in range(0, n, batch_size)]
        with self._lock:
            for part, (ids, mask) in zip(parts, self._prefetch([[texts[i] for i in p] for p in parts])):
                out[part] = self._run(ids, mask)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _prefetch(self, batches: list[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Tokenized batches, the next one prepared while the caller runs the current one."""
        fut = self._pool.submit(self._tokenize, batches[0])
        for i in range(len(batches)):
            cur = fut.result()
            if i + 1 < len(batches):
                fut = self._pool.submit(self._tokenize, batches[i + 1])
            yield cur


def build_encoder(name: str, path: str, backend: str, precision: str) -> ExportedEncoder:
    """Load (exporting on first use) ``name`` for ``backend`` at ``precision``; backend != torch."""
    try:
        if backend == "onnx":
            from .onnx import load

            return load(name, path, precision)
        from .openvino import load as load_ov

        return load_ov(name, path, precision)
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise ConfigError(f"cannot load model {name!r} with backend {backend!r} ({precision}): {exc}") from exc


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "SUPPORTED",
    "ExportedEncoder",
    "available",
    "build_encoder",
    "cache_root",
    "default_threads",
    "export_onnx",
    "for_collection",
    "requested_backend",
    "requested_precision",
    "resolve",
    "set_threads",
]
