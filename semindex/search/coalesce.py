"""Concurrent query encodes share one model call (dynamic batching, no added wait).

A server answering many clients at once called the model once per request: eight
concurrent single-query searches were eight model calls of one short text each, and on a
CPU a call of one text is mostly fixed cost (measured with the default OpenVINO MiniLM on
these 2 cores: 1 text per call ~37 queries/s, 16 texts per call ~150 queries/s). Here the
first caller for an encoder runs at once, alone: nobody waits for a batch to fill, so a
lone query is exactly as fast as before. Callers that arrive while a call is running queue;
when it ends, the queue goes to the model as *one* batch, run by the first caller in it
(leadership passes to a thread that needs the answer anyway, so no caller ever runs
another's batch after its own result is ready).

A batch takes at most ``MAX_BATCH_TEXTS`` texts (the rest waits for the next round), so a
single query queued behind a big batch waits for one bounded call. Texts are grouped by
their ``normalize`` flag, so one call never mixes the two. If a shared call fails, each
caller in it retries its own texts alone: a bad input fails only its own request.

Ingestion does not come through here (it already encodes in large batches).
``$SEMINDEX_QUERY_BATCHING=0`` turns sharing off (every caller runs its own model call, as
before), for comparisons and for encoders that must never see another caller's texts.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from ..indexer.encoder import Encoder

MAX_BATCH_TEXTS = 64
ENV = "SEMINDEX_QUERY_BATCHING"

__all__ = ["MAX_BATCH_TEXTS", "encode"]


class _Ticket:
    __slots__ = ("done", "error", "lead", "normalize", "result", "texts")

    def __init__(self, texts: Sequence[str], normalize: bool) -> None:
        self.texts = list(texts)
        self.normalize = normalize
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.lead: list[_Ticket] | None = None  # set when this caller must run the group


class _Lane:
    """One encoder's queue: at most one coalesced model call runs at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = False
        self.pending: list[_Ticket] = []

    def next_group(self) -> list[_Ticket] | None:
        """Under the lock: the tickets of the next call (same normalize flag, bounded), or None."""
        if not self.pending:
            self.busy = False
            return None
        flag = self.pending[0].normalize
        group: list[_Ticket] = []
        rest: list[_Ticket] = []
        texts = 0
        for ticket in self.pending:
            fits = not group or texts + len(ticket.texts) <= MAX_BATCH_TEXTS
            if ticket.normalize == flag and fits:
                group.append(ticket)
                texts += len(ticket.texts)
            else:
                rest.append(ticket)
        self.pending = rest
        return group


_lanes: weakref.WeakKeyDictionary[Encoder, _Lane] = weakref.WeakKeyDictionary()
_lanes_lock = threading.Lock()


def _lane(encoder: Encoder) -> _Lane:
    with _lanes_lock:
        lane = _lanes.get(encoder)
        if lane is None:
            lane = _lanes[encoder] = _Lane()
        return lane


def encode(encoder: Encoder, texts: Sequence[str], *, normalize: bool = True) -> np.ndarray:
    """``encoder.encode(texts, normalize=...)``, sharing the model call with concurrent callers."""
    if not texts or os.environ.get(ENV, "1").strip() in ("0", "off", "false", "no"):
        return np.asarray(encoder.encode(texts, normalize=normalize), dtype=np.float32)
    lane = _lane(encoder)
    ticket = _Ticket(texts, normalize)
    with lane.lock:
        if lane.busy:
            lane.pending.append(ticket)
            group: list[_Ticket] | None = None
        else:
            lane.busy = True
            group = [ticket]
    if group is None:
        ticket.done.wait()
        if ticket.lead is None:  # answered by another caller's call
            if ticket.error is not None:
                raise ticket.error
            assert ticket.result is not None
            return ticket.result
        group = ticket.lead
    try:
        _run(encoder, group)
    finally:
        _hand_off(lane)
    if ticket.error is not None:
        raise ticket.error
    assert ticket.result is not None
    return ticket.result


def _run(encoder: Encoder, group: list[_Ticket]) -> None:
    """One model call for ``group``; on failure of a shared call, each text list alone."""
    texts = [t for ticket in group for t in ticket.texts]
    try:
        vectors = np.asarray(encoder.encode(texts, normalize=group[0].normalize), dtype=np.float32)
    except BaseException as exc:
        if len(group) == 1:
            group[0].error = exc
            return
        for ticket in group:
            try:
                ticket.result = np.asarray(encoder.encode(ticket.texts, normalize=ticket.normalize),
                                           dtype=np.float32)
            except BaseException as own:
                ticket.error = own
        _wake(group[1:])
        return
    start = 0
    for ticket in group:
        # a copy per caller: a view would tie every caller's rows to the whole batch
        ticket.result = vectors[start:start + len(ticket.texts)].copy()
        start += len(ticket.texts)
    _wake(group[1:])


def _wake(tickets: list[_Ticket]) -> None:
    for ticket in tickets:
        ticket.done.set()


def _hand_off(lane: _Lane) -> None:
    """Give the queued callers' call to the first of them, or mark the lane idle."""
    with lane.lock:
        group = lane.next_group()
    if group is not None:
        group[0].lead = group
        group[0].done.set()
