"""A time limit per request (``serve --request-timeout``) that never leaves a write half applied.

Routes run in worker threads, and a thread cannot be stopped from outside, so the limit has two
halves:

- :class:`DeadlineMiddleware` answers 504 ``{"error": "deadline_exceeded", ...}`` when a request
  is still at work at its deadline, unless a write has begun: a write that has started always
  finishes and is answered, even late (its result is the truth the client needs).
- the routes check their :class:`Deadline` at the points where stopping is safe: before any
  work starts (a request that waited for a thread past its deadline does nothing), right before
  a write (:meth:`Deadline.begin_write`: too late means the write is never started), and between
  the slices of a batch search. Work answered 504 by the middleware stops at its next check; its
  late answer is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DeadlineExceededError
from .middleware import send_error

__all__ = ["DEFAULT_REQUEST_TIMEOUT_S", "STATE_KEY", "Deadline", "DeadlineMiddleware"]

log = logging.getLogger("semindex.api")

DEFAULT_REQUEST_TIMEOUT_S = 60.0
STATE_KEY = "semindex_deadline"  # in the ASGI scope's "state", i.e. request.state.semindex_deadline

_orphans: set[asyncio.Task[None]] = set()  # requests answered 504, still winding down


class Deadline:
    """When one request must be done, and whether it may still stop.

    Shared by the event loop (the middleware) and the worker thread (the route), hence the lock:
    :meth:`cut` and :meth:`begin_write` decide atomically which of "answer 504" and "write" wins.
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.at = clock() + seconds
        self._lock = threading.Lock()
        self._cut = False
        self._writing = False

    def check(self) -> None:
        """DeadlineExceededError once the time is up (and no write has begun: that one finishes)."""
        with self._lock:
            if not self._writing and (self._cut or self.clock() >= self.at):
                raise DeadlineExceededError(self.message())

    def begin_write(self) -> None:
        """Call right before a write: DeadlineExceededError if it is too late to start it; otherwise
        the write is committed to, and the 504 can no longer win."""
        with self._lock:
            if self._writing:
                return
            if self._cut or self.clock() >= self.at:
                raise DeadlineExceededError(self.message())
            self._writing = True

    def cut(self) -> bool:
        """Give up on the request (the middleware, at the deadline): True when nothing stops it
        (no write has begun); from then on every check fails."""
        with self._lock:
            if self._writing:
                return False
            self._cut = True
            return True

    def message(self) -> str:
        return (f"the request did not finish within the server's {self.seconds:g} s limit "
                "(serve --request-timeout); nothing was written. Ask for fewer queries or a smaller k, "
                "or send fewer documents per request")


def deadline_of(scope_state: Any) -> Deadline | None:
    """The request's Deadline from ``request.state`` (None when the app runs without a limit)."""
    value = getattr(scope_state, STATE_KEY, None)
    return value if isinstance(value, Deadline) else None


def _forget(task: asyncio.Task[None]) -> None:
    _orphans.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("a request answered 504 ended with %r", task.exception())


class DeadlineMiddleware:
    """Puts a :class:`Deadline` in each HTTP request's state and answers 504 when it passes.

    The app runs as a task of its own; at the deadline, if the deadline can be cut (no write has
    begun, no response has started), the client gets the 504 at once and the task is left to
    wind down (its sends are dropped); otherwise the middleware waits for it.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = Deadline(self.seconds)
        scope.setdefault("state", {})[STATE_KEY] = deadline
        cut = False
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut:
                return  # the client has its 504; the late answer goes nowhere
            if message["type"] == "http.response.start":
                started = True
                if message.get("status") == 504:
                    log.warning("%s %s: %s", scope.get("method"), scope.get("path"), deadline.message())
            await send(message)

        task: asyncio.Task[None] = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.seconds)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            task.result()  # an exception escapes as it would without this middleware
            return
        if started or not deadline.cut():
            await task  # a write in flight (or an answer already on its way) finishes
            return
        cut = True
        _orphans.add(task)
        task.add_done_callback(_forget)
        log.warning("%s %s: %s", scope.get("method"), scope.get("path"), deadline.message())
        if str(scope.get("path", "")).startswith("/v1/"):  # the OpenAI-compatible routes answer in OpenAI's shape
            await _send_openai_504(send, deadline.message())
        else:
            await send_error(send, 504, DeadlineExceededError.code, deadline.message())


async def _send_openai_504(send: Send, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                 "code": DeadlineExceededError.code}}).encode("utf-8")
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
