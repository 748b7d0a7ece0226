"""Recall measured on the queries users actually send, and the index re-tuned when it falls short.

Tuning (autoindex) promises a recall@10 on query-like vectors; real queries can still be
harder. A long-running process (``semindex serve``) therefore samples its own unfiltered
queries (one in ``every``), and a background thread answers them twice: with the index, at
its current settings, and exactly, by a scan of the stored embeddings in SQL. The rolling
recall@10 over the last ``window`` checked queries is kept in the index's params
(``live_recall@10``, ``live_checked``, shown by ``info`` and /metrics). When it is below the
index's target after ``min_checks`` queries, the index's search knob is raised one step
(efSearch or nprobe x1.5, or the rescoring factor x2, up to their ceilings), the window
restarts, and the change is logged and kept in the params (``live_raised``).

Cost: one exact scan per ``batch`` sampled queries (scored together), on a daemon thread, at
most one scan at a time; queries arriving while a scan runs are dropped, never queued, so a
busy server does not build up a backlog. Exact indexes (flat) are never checked.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import exact
from .rows import SQLSource

if TYPE_CHECKING:
    from .store import CollectionStorage

log = logging.getLogger(__name__)

K = 10
DEFAULT_EVERY = 20
DEFAULT_WINDOW = 200
MIN_CHECKS = 40
BATCH = 8
KNOB_CEILING = {"efSearch": 4096, "k_factor": 64}


class RecallMonitor:
    """One per collection storage; ``offer`` is called with every unfiltered batch of query vectors."""

    def __init__(self, storage: CollectionStorage, *, every: int = DEFAULT_EVERY, window: int = DEFAULT_WINDOW,
                 min_checks: int = MIN_CHECKS, batch: int = BATCH,
                 on_check: Callable[[float], None] | None = None) -> None:
        self._storage = weakref.ref(storage)
        self.every, self.window, self.min_checks, self.batch = max(1, every), window, min_checks, batch
        self.on_check = on_check
        self._seen = 0
        self._pending: list[np.ndarray] = []
        self._recalls: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._busy = False
        self.idle = threading.Event()  # set while no check runs (tests and shutdown wait on it)
        self.idle.set()
        self.checked = 0
        self.raised: list[str] = []

    # -- the search path: cheap, never blocks on the check ------------------------------------

    def offer(self, queries: np.ndarray) -> None:
        storage = self._storage()
        if storage is None or storage.index.kind == "flat" or not len(storage.index):
            return
        start: list[np.ndarray] | None = None
        with self._lock:
            for q in np.asarray(queries, dtype=np.float32).reshape(len(queries), -1):
                self._seen += 1
                if self._seen % self.every == 0:
                    self._pending.append(q.copy())
            if len(self._pending) >= self.batch and not self._busy:
                start, self._pending, self._busy = self._pending[: self.batch], [], True
                self.idle.clear()
            elif len(self._pending) > 4 * self.batch:  # a scan is running: drop, never queue up
                del self._pending[: -self.batch]
        if start is not None:
            threading.Thread(target=self._check, args=(np.stack(start),), daemon=True,
                             name="semindex-recall-check").start()

    # -- the background check ----------------------------------------------------------------

    def _check(self, queries: np.ndarray) -> None:
        try:
            storage = self._storage()
            if storage is None or storage.closed:
                return
            with storage._lock:  # the index is not safe to search while a write changes it
                _, got = storage.index.search(queries, K)
            best = exact.TopK(len(queries), K)
            for ids, vecs in SQLSource(storage.rows).iter_batches():
                best.push(exact.scores(queries, vecs, storage.index.metric), ids)
            _, truth = best.result()
            for t, g in zip(truth.tolist(), got.tolist()):
                t = [i for i in t if i >= 0]
                if t:
                    self._recalls.append(len(set(t) & set(g)) / len(t))
            self.checked += len(queries)
            self._maybe_raise(storage)
        except Exception as exc:  # noqa: BLE001 - a failed check (store closed, collection dropped) is not an error
            log.debug("recall check skipped: %s", exc)
        finally:
            with self._lock:
                self._busy = False
                self.idle.set()

    def recall(self) -> float | None:
        return float(np.mean(self._recalls)) if self._recalls else None

    def _maybe_raise(self, storage: CollectionStorage) -> None:
        rec = self.recall()
        if rec is None:
            return
        with storage._lock:
            params = storage.index.params
            params["live_recall@10"] = round(rec, 4)
            params["live_checked"] = int(self.checked)
            target = float(params.get("target_recall", 0.95) or 0.95)
            if self.on_check is not None:
                self.on_check(rec)
            if len(self._recalls) < self.min_checks or rec >= target:
                return
            knob = raise_knob(storage.index.params, storage.index.tunable())
            if knob is None:
                return
            self._recalls.clear()
            self.raised.append(knob)
            params["live_raised"] = ", ".join(self.raised[-5:])
        log.warning("collection %r: live recall@10 %.3f < target %.2f on %d real queries; raised %s",
                    storage.record.name, rec, target, self.min_checks, knob)


def raise_knob(params: dict[str, Any], tunable: list[str]) -> str | None:
    """One step more thorough for the index's main knob; 'name old->new', or None at its ceiling."""
    for name in ("efSearch", "nprobe", "k_factor"):
        if name not in tunable:
            continue
        old = int(params.get(name, 1) or 1)
        ceiling = int(params.get("nlist", 1) or 1) if name == "nprobe" else KNOB_CEILING[name]
        new = min(ceiling, max(old + 1, int(old * (2 if name == "k_factor" else 1.5))))
        if new > old:
            params[name] = new
            return f"{name} {old}->{new}"
    return None


_monitors: weakref.WeakKeyDictionary[Any, RecallMonitor] = weakref.WeakKeyDictionary()
_monitors_lock = threading.Lock()
_enabled = threading.Event()


def enable(on: bool = True) -> None:
    """Turn live recall checks on for this process (``serve`` does; a script or CLI run does not)."""
    if on:
        _enabled.set()
    else:
        _enabled.clear()


def offer(storage: CollectionStorage, queries: np.ndarray) -> None:
    """The search layer's hook: sample these query vectors for ``storage``'s monitor (if enabled)."""
    if not _enabled.is_set():
        return
    with _monitors_lock:
        mon = _monitors.get(storage)
        if mon is None:
            mon = _monitors[storage] = RecallMonitor(storage, every=DEFAULT_EVERY, window=DEFAULT_WINDOW,
                                                     min_checks=MIN_CHECKS, batch=BATCH)
    mon.offer(queries)


def monitor_of(storage: CollectionStorage) -> RecallMonitor | None:
    with _monitors_lock:
        return _monitors.get(storage)
