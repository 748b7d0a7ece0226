"""Cross-encoder reranking: re-score (query, passage) pairs with a sentence-transformers CrossEncoder.

A model is loaded once per (model, device) per process and shared, like the
bi-encoders in :mod:`semindex.indexer.encoder`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..indexer.encoder import choose_device

log = logging.getLogger(__name__)

_cache: OrderedDict[tuple[str, str], Reranker] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 4  # cross-encoders kept loaded (least recently used evicted): a server's memory stays bounded


class Reranker:
    """A loaded CrossEncoder; ``score`` is thread-safe (one call at a time on the model)."""

    def __init__(self, model: str, device: str | None = None) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigError("rerank needs a cross-encoder model id or local path")
        p = Path(model).expanduser()
        self.name = str(p.resolve()) if p.exists() else model.strip()
        self.device = choose_device(device or os.environ.get("SEMINDEX_DEVICE"))
        try:
            import transformers
            from sentence_transformers import CrossEncoder

            transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated upstream
            self.model: Any = CrossEncoder(self.name, device=self.device)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load cross-encoder {self.name!r}: {exc}. Give a local path or a model id "
                "that is already in the Hugging Face cache."
            ) from exc
        self._lock = threading.Lock()

    def score(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32) -> np.ndarray:
        if not pairs:
            return np.empty((0,), dtype=np.float32)
        with self._lock:
            out = self.model.predict([list(p) for p in pairs], batch_size=batch_size, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(pairs), -1)[:, 0]


def installed_cross_encoders(cache_dir: str | Path | None = None) -> list[str]:
    """Hub ids of the cross-encoders in the local Hugging Face cache (``$HF_HUB_CACHE``).

    What an operator has downloaded on purpose, so ``serve`` may offer it for ``rerank``
    without an ``--allow-model`` per model. A cached repo counts when a snapshot's
    ``config.json`` names a ``...ForSequenceClassification`` architecture (what
    sentence-transformers' CrossEncoder loads). Ids only: never a path, and a scan that fails
    (no cache, unreadable files) finds nothing rather than failing the server."""
    import json

    try:
        from huggingface_hub import constants, scan_cache_dir

        # $HF_HUB_CACHE as it is now (huggingface_hub reads it once, at import)
        info = scan_cache_dir(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - no cache or a corrupt one: nothing is installed
        return []
    found: list[str] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            cfg = Path(rev.snapshot_path) / "config.json"
            try:
                archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
            except (OSError, ValueError, AttributeError):
                continue
            if any(str(a).endswith("ForSequenceClassification") for a in archs):
                found.append(repo.repo_id)
                break
    return sorted(found)


def get_reranker(model: str, device: str | None = None) -> Reranker:
    p = Path(model).expanduser() if isinstance(model, str) else None
    key_name = str(p.resolve()) if p is not None and p.exists() else str(model).strip()
    key = (key_name, device or os.environ.get("SEMINDEX_DEVICE") or "auto")
    with _cache_lock:
        r = _cache.get(key)
        if r is None:
            r = Reranker(model, device)
            _cache[key] = r
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(key)
        return r


def passage(title: str | None, text: str) -> str:
    """What the cross-encoder reads for a document: its title and text."""
    return f"{title}\n{text}" if title else text
