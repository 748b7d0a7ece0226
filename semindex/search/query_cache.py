"""An LRU of query embeddings: the same query text is encoded once, not once per request.

Exact repeats are common behind UIs (a search box re-sent on every keystroke pause, a
page refresh, pagination, several users asking the same thing), and encoding is most of a
dense query's cost on a CPU (milliseconds, against microseconds for a flat scan of a small
collection). Keys are the text and the normalisation flag, one LRU per encoder object: a
cache can never return a vector from another model, backend or precision, and an encoder
that is dropped takes its entries with it (weak keys).

Only short texts are cached (``MAX_CACHED_CHARS``): a long query is rare to repeat and
would make the cache's memory depend on what clients send. The size is process-wide:
``$SEMINDEX_QUERY_CACHE`` (entries; 0 turns it off), :func:`configure`, or
``semindex serve --query-cache N``. Hits and misses are counted for ``/metrics``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..indexer.encoder import Encoder
from . import coalesce

DEFAULT_SIZE = 4096  # 4096 x 384 float32 = 6 MiB per encoder
MAX_CACHED_CHARS = 2048
ENV = "SEMINDEX_QUERY_CACHE"


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    max_entries: int


def _env_size() -> int:
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return DEFAULT_SIZE
    try:
        size = int(raw)
    except ValueError as exc:
        raise ConfigError(f"bad ${ENV} {raw!r}: a number of entries (0 turns the cache off)") from exc
    if size < 0:
        raise ConfigError(f"bad ${ENV} {raw!r}: a number of entries (0 turns the cache off)")
    return size


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.size: int | None = None  # None: read $SEMINDEX_QUERY_CACHE at first use
        self.hits = 0
        self.misses = 0
        self.per_encoder: weakref.WeakKeyDictionary[Encoder, OrderedDict[tuple[bool, str], np.ndarray]] = (
            weakref.WeakKeyDictionary()
        )

    def max_entries(self) -> int:
        if self.size is None:
            self.size = _env_size()
        return self.size


_state = _State()


def configure(size: int) -> None:
    """Entries kept per encoder (0 turns the cache off and empties it)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"query cache size must be a whole number >= 0, got {size!r}")
    with _state.lock:
        _state.size = size
        for lru in _state.per_encoder.values():
            while len(lru) > size:
                lru.popitem(last=False)


def stats() -> CacheStats:
    with _state.lock:
        entries = sum(len(lru) for lru in _state.per_encoder.values())
        return CacheStats(_state.hits, _state.misses, entries, _state.max_entries())


def clear() -> None:
    """Drop every entry and reset the counters (tests; after swapping a model folder's weights)."""
    with _state.lock:
        _state.per_encoder.clear()
        _state.hits = _state.misses = 0


def encode_queries(encoder: Encoder, texts: Sequence[str], *, normalize: bool = True) -> np.ndarray:
    """``encoder.encode(texts)``, answering repeats from the cache and encoding the rest in one call
    (shared with concurrent callers' queries, see :mod:`semindex.search.coalesce`)."""
    size = _state.max_entries()
    if size == 0 or not texts:
        return coalesce.encode(encoder, texts, normalize=normalize)
    out: list[np.ndarray | None] = [None] * len(texts)
    todo: dict[str, list[int]] = {}  # distinct uncached texts -> their positions
    with _state.lock:
        lru = _state.per_encoder.get(encoder)
        if lru is None:
            lru = _state.per_encoder.setdefault(encoder, OrderedDict())
        for i, text in enumerate(texts):
            vec = lru.get((normalize, text)) if len(text) <= MAX_CACHED_CHARS else None
            if vec is not None:
                lru.move_to_end((normalize, text))
                out[i] = vec
                _state.hits += 1
            else:
                todo.setdefault(text, []).append(i)
                _state.misses += 1
    if todo:
        fresh = coalesce.encode(encoder, list(todo), normalize=normalize)
        with _state.lock:
            for row, (text, where) in enumerate(todo.items()):
                vec = fresh[row].copy()  # a row of its own: a view would keep the whole batch alive
                vec.setflags(write=False)  # shared by later hits: nobody may change it in place
                for i in where:
                    out[i] = vec
                if len(text) <= MAX_CACHED_CHARS and _state.max_entries() > 0:
                    lru[(normalize, text)] = vec
                    lru.move_to_end((normalize, text))
            while len(lru) > _state.max_entries():
                lru.popitem(last=False)
    return np.stack([v for v in out if v is not None]).astype(np.float32, copy=False)


class CachedQueryEncoder:
    """An Encoder whose ``encode`` goes through the query cache; what search is handed."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension

    @property
    def max_seq_length(self) -> int:
        return self.inner.max_seq_length

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        return encode_queries(self.inner, texts, normalize=normalize)
