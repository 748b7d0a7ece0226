"""Give freed memory back to the OS in a long-running server (glibc), so RSS stays flat.

A soak of ``semindex serve`` (benchmarks/soak.py: four writers, filtered searches and a hostile
client asking for 64,000-hit batches) showed RSS rising 8-14 MB a minute while the Python heap,
traced with tracemalloc, stayed between 16 and 62 MB and did not grow. The memory was freed
but kept by glibc's allocator: its mmap threshold adapts upward after large blocks are freed
(up to 32 MiB), so the next big transient buffers (a batch's hits, a response body, a FAISS
result) come from the heap, and a heap fragmented by many threads' small objects is returned
only when its top is free. ``malloc_trim(0)`` every 30 s took back 20-45 MB each time in that
soak, after which RSS held level.

:func:`start` does two things where the C library is glibc (elsewhere it does nothing):

- fixes the mmap and trim thresholds (``mallopt``), which turns the adaptive threshold off:
  blocks of 128 KiB and more stay mapped and unmapped on their own, so they never strand heap
  (a few microseconds of mmap per such block, against milliseconds per request);
- runs ``malloc_trim(0)`` every ``interval`` seconds in a daemon thread (a few ms each; it
  only returns pages that are free).

``$SEMINDEX_MALLOC_TRIM`` sets the interval in seconds (default 30; 0 turns both off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from dataclasses import dataclass

from ..errors import ConfigError

log = logging.getLogger(__name__)

ENV = "SEMINDEX_MALLOC_TRIM"
DEFAULT_INTERVAL_S = 30.0
MMAP_THRESHOLD = 128 << 10  # glibc's initial value, kept: blocks this big are their own mapping
TRIM_THRESHOLD = 8 << 20  # free heap top above this goes back to the OS at once
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> constants
_M_MMAP_THRESHOLD = -3

__all__ = ["DEFAULT_INTERVAL_S", "ENV", "Trimmer", "interval_from_env", "start"]


def interval_from_env() -> float:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"bad ${ENV} {raw!r}: seconds between trims (0 turns it off)")
    return value


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim/mallopt
        return None


@dataclass
class Trimmer:
    """The running trim thread; :meth:`stop` ends it (tests, a server's shutdown)."""

    interval: float
    libc: ctypes.CDLL
    trims: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="semindex-malloc-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.trim_now()

    def trim_now(self) -> None:
        self.libc.malloc_trim(0)
        self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def start(interval: float | None = None) -> Trimmer | None:
    """Fix glibc's thresholds and start trimming every ``interval`` s (None: ``$SEMINDEX_MALLOC_TRIM``).

    Returns None where there is nothing to do (interval 0, or not glibc)."""
    interval = interval_from_env() if interval is None else interval
    if interval <= 0:
        return None
    libc = _glibc()
    if libc is None:
        log.debug("not glibc: freed memory is left to the C library's own policy")
        return None
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return Trimmer(interval, libc)
