"""Encode on several devices of one machine: one worker process per device, one committing writer.

Why a pool of our own rather than sentence-transformers' ``start_multi_process_pool``:

* the same code path serves every registered encoder (the ``hash`` fake included), not just
  SentenceTransformer models, so tests exercise it without torch start-up costs;
* each CPU worker gets its share of the cores (``torch.set_num_threads``); sentence-transformers'
  pool lets every worker take them all, which oversubscribes a small machine;
* a worker that dies surfaces as one :class:`~semindex.errors.EncoderError` line, not a hang.

The pipeline is unchanged: :func:`semindex.indexer.pipeline.ingest` calls ``encode`` on a
:class:`MultiDeviceEncoder` exactly as on a single-device encoder, and the caller's thread stays
the only writer. Each ``encode`` call is split into contiguous chunks handed to whichever worker
is free; the chunks come back in input order, so ids and vectors match the single-device path
(vectors to float rounding: the same model on the same kind of device).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InvalidInputError, ReadError, SemindexError
from .encoder import Encoder, canonical_model_name, choose_device, get_encoder

if TYPE_CHECKING:  # annotations only: the pipeline is imported lazily, in ingest_on_devices
    from .pipeline import IngestStats
    from .readers import Record

# One worker's encoder, set by _init in each worker process.
_worker_encoder: Encoder | None = None


class EncoderWorkerError(SemindexError):
    """A device worker died (out of memory, killed) while encoding."""


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """``"cpu,cpu"``, ``"cuda:0,cuda:1"`` or ``"all"`` -> a checked list of device names.

    ``all`` is every CUDA device when there is one; otherwise two CPU workers (more would
    only split the same cores further).
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    names = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if not names:
        raise ConfigError("--devices needs at least one device, e.g. cpu,cpu or cuda:0,cuda:1 or all")
    if names == ["all"]:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] if n else ["cpu", "cpu"]
    if "all" in names:
        raise ConfigError("--devices all cannot be combined with other devices")
    out = []
    for name in names:
        dev = choose_device(name)
        if dev == "cuda":
            dev = "cuda:0"
        out.append(dev)
    return out


def _init(model: str, devices: Any, threads: int) -> None:
    """Worker start-up: take a device from the queue, load the model once on it."""
    global _worker_encoder
    device = devices.get()
    if device == "cpu":
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # a torch-free encoder (the hash fake) needs no threads setting
            pass
    _worker_encoder = get_encoder(model, device)


def _encode(texts: list[str], batch_size: int, normalize: bool) -> np.ndarray:
    assert _worker_encoder is not None, "worker not initialised"
    return _worker_encoder.encode(texts, batch_size=batch_size, normalize=normalize)


def _describe() -> tuple[int, int]:
    assert _worker_encoder is not None, "worker not initialised"
    return int(_worker_encoder.dimension), int(_worker_encoder.max_seq_length)


class MultiDeviceEncoder:
    """An :class:`~semindex.indexer.encoder.Encoder` spread over one worker process per device.

    Use as a context manager (or call :meth:`close`): the workers hold a model copy each.
    """

    def __init__(self, model: str | None, devices: Sequence[str], *, chunk_size: int | None = None) -> None:
        if not devices:
            raise ConfigError("MultiDeviceEncoder needs at least one device")
        self.name = canonical_model_name(model)
        self.devices = list(devices)
        self.chunk_size = chunk_size
        cpu_workers = sum(1 for d in self.devices if d == "cpu") or 1
        threads = max(1, (os.cpu_count() or 1) // cpu_workers)
        ctx = mp.get_context("spawn")  # CUDA and torch's thread pools do not survive fork
        queue = ctx.Queue()
        for d in self.devices:
            queue.put(d)
        self._pool = cf.ProcessPoolExecutor(
            max_workers=len(self.devices), mp_context=ctx, initializer=_init,
            initargs=(model if model is not None else self.name, queue, threads),
        )
        self._queue = queue
        # Start every worker now (a bad model fails here, once, not mid-run) and learn the dimension.
        try:
            described = list(self._pool.map(_describe_after_pause, [0.05] * len(self.devices)))
        except BrokenProcessPool as exc:
            self.close()
            raise EncoderWorkerError(f"an encoder worker failed to start on {self.devices}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.dimension, self._max_seq_length = described[0]

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    def __enter__(self) -> MultiDeviceEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _chunks(self, n: int, batch_size: int) -> Iterable[tuple[int, int]]:
        size = self.chunk_size or max(batch_size, math.ceil(n / (2 * len(self.devices))))
        for lo in range(0, n, size):
            yield lo, min(n, lo + size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Float32 (n, dim), rows in input order; chunks go to whichever device is free."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        items = list(texts)
        try:
            futures = [
                self._pool.submit(_encode, items[lo:hi], batch_size, normalize)
                for lo, hi in self._chunks(len(items), batch_size)
            ]
            parts = [f.result() for f in futures]
        except BrokenProcessPool as exc:
            raise EncoderWorkerError(
                f"an encoder worker on {self.devices} died while encoding (out of memory or killed)"
            ) from exc
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _describe_after_pause(pause: float) -> tuple[int, int]:
    # One call per worker at start-up: pausing keeps one worker from taking every call, so all of
    # them load their model now rather than at the first real batch.
    import time

    time.sleep(pause)
    return _describe()


def ingest_on_devices(
    coll: Any, records: Iterable[Record | ReadError], devices: Sequence[str], **kwargs: Any
) -> IngestStats:
    """:meth:`semindex.core.Collection.add_records` with the encoding spread over ``devices``."""
    from .pipeline import ingest

    if coll.model is None:
        raise InvalidInputError(
            f"collection {coll.name!r} holds precomputed vectors: add and search with vectors"
        )
    from .truncated import truncated

    with MultiDeviceEncoder(coll.model, devices) as enc:
        # a Matryoshka collection's vectors are its model's first N dims, whichever process encodes them
        return ingest(records, coll.storage, truncated(enc, coll.record.config.get("truncate_dim")),
                      normalize=coll.record.normalize, **kwargs)
