"""What `semindex serve` adds to uvicorn: read timeouts for slow clients, and a limit on repeated log lines.

uvicorn closes idle keep-alive sockets, but it has no read timeout: a client that opens a
connection and sends nothing, half a request head or half a body held the socket (and a
``--limit-concurrency`` slot) for as long as it liked, so a few hundred slow sockets shut
everyone else out. :func:`timeout_protocol` is uvicorn's own h11 protocol with two timers:

- the *header* timer runs from the moment a connection opens (or the first byte of the next
  request on a keep-alive connection arrives) until the request head is complete; when it
  fires the connection is closed, after a 408 ``{"error": "request_timeout", ...}`` if part
  of a head had come (a connection that sent nothing is closed silently; nothing has reached
  the app either way);
- the *body* timer runs from the complete head until the whole body has arrived; when it fires
  the client gets 408 ``{"error": "request_timeout", ...}`` and the connection is closed. No
  route has started yet (the body is read in full before the app runs, see
  ``BodyLimitMiddleware``), so nothing is half done.

A timeout bounds the *whole* head or body, not the gap between bytes: a client that trickles
one byte a second would otherwise never time out.

:class:`RepeatLimiter` is a logging filter: a flood (``Too many open files`` from accept every
second, thousands of "Exceeded concurrency limit." or timeout lines) would otherwise fill the
disk. The same line is let through once per interval; the next one let through says how many
were suppressed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_LOG_REPEAT_S",
    "LIMITED_LOGGERS",
    "ReadTimeoutH11Protocol",
    "RepeatLimiter",
    "limit_repeated_logs",
    "timeout_protocol",
]

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_LOG_REPEAT_S = 10.0
# where floods come from: uvicorn's connection and protocol warnings, asyncio's accept errors
# (EMFILE is logged with a traceback once a second), and the API's own 5xx lines
LIMITED_LOGGERS = ("uvicorn.error", "asyncio", "semindex.api")

_Waiting = Literal["head", "body"]


class ReadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a timer for the request head and one for the body.

    Use :func:`timeout_protocol` to get a subclass with the timeouts set; uvicorn builds one
    instance per connection (``uvicorn.Config(http=cls)``). Only public h11 state
    (``their_state``, ``trailing_data``) and uvicorn's documented protocol hooks are read.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._waiting: _Waiting | None = None

    # -- the hooks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state is h11.IDLE:
            self._arm("head")  # the first bytes of the next request on a keep-alive connection
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()  # a pipelined request may be half there already

    # -- the timers -----------------------------------------------------------------

    def _follow(self) -> None:
        """Keep the timer in step with what is still expected from the client."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # between requests: a head is expected only once bytes of it came
            if self._waiting == "body":
                self._disarm()
            if self._read_timer is None and self.conn.trailing_data[0]:
                self._arm("head")
        elif state is h11.SEND_BODY:
            if self._waiting != "body":
                self._arm("body")
        else:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to read for this request
            self._disarm()

    def _arm(self, what: _Waiting) -> None:
        self._disarm()
        seconds = self.header_timeout if what == "head" else self.body_timeout
        self._waiting = what
        self._read_timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = None
        self._waiting = None

    def _timed_out(self) -> None:
        what, self._read_timer, self._waiting = self._waiting, None, None
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_protocol() is not self:
            return
        seconds = self.header_timeout if what == "head" else self.body_timeout
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        self.logger.info("closing the connection from %s: its request %s did not arrive within %g s",
                         client, what, seconds)
        cycle = self.cycle
        if what == "body" and cycle is not None and not cycle.response_started:
            # the app is parked on receive(): tell it the client is gone (its sends become no-ops)
            cycle.disconnected = True
            cycle.message_event.set()
            transport.write(self._response_408(what, seconds))
        elif what == "head" and self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            # part of a head came: say why the connection closes (one that sent nothing gets
            # nothing, as an idle keep-alive close)
            transport.write(self._response_408(what, seconds))
        transport.close()

    @staticmethod
    def _response_408(what: _Waiting, seconds: float) -> bytes:
        """The 408 as bytes, written past h11: it sends nothing before a request head exists, and
        the connection closes right after either way, so h11's state no longer matters."""
        flag = "--body-timeout" if what == "body" else "--header-timeout"
        body = json.dumps({
            "error": "request_timeout",
            "detail": f"the request {what} did not arrive within {seconds:g} s (serve {flag})",
        }).encode("utf-8")
        return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def timeout_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
                     body_timeout: float = DEFAULT_BODY_TIMEOUT_S) -> type[ReadTimeoutH11Protocol]:
    """A :class:`ReadTimeoutH11Protocol` subclass with these timeouts, for ``uvicorn.Config(http=...)``."""
    if header_timeout <= 0 or body_timeout <= 0:
        raise ValueError("read timeouts must be positive")
    attrs = {"header_timeout": float(header_timeout), "body_timeout": float(body_timeout)}
    return type("ReadTimeoutH11Protocol", (ReadTimeoutH11Protocol,), attrs)


class _Seen:
    __slots__ = ("last", "suppressed")

    def __init__(self, last: float) -> None:
        self.last = last
        self.suppressed = 0


class RepeatLimiter(logging.Filter):
    """Lets the same log line through once per ``interval`` seconds and counts the rest.

    "The same line" is the logger, the level, the first line of the unformatted message and
    the exception types involved: the arguments (a client address, a file descriptor) vary
    from line to line of one flood. The next line let through for a key carries how many were
    suppressed since the previous one. At most ``max_keys`` keys are remembered (least
    recently seen forgotten first), so the limiter itself is bounded. ``clock`` is injectable
    for tests. Thread-safe: uvicorn logs from the event loop, routes from worker threads.
    """

    def __init__(self, interval: float = DEFAULT_LOG_REPEAT_S, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[object, ...], _Seen] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(record: logging.LogRecord) -> tuple[object, ...]:
        first_line = str(record.msg).split("\n", 1)[0][:200]
        args = record.args if isinstance(record.args, tuple) else ()
        kinds = tuple(type(a).__name__ for a in args if isinstance(a, BaseException))
        if record.exc_info and record.exc_info[0] is not None:
            kinds += (record.exc_info[0].__name__,)
        return (record.name, record.levelno, first_line, kinds)

    def filter(self, record: logging.LogRecord) -> bool:
        key = self.key(record)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.last < self.interval:
                seen.suppressed += 1
                return False
            suppressed, since = (seen.suppressed, now - seen.last) if seen is not None else (0, 0.0)
            self._seen[key] = _Seen(now)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        if suppressed:
            record.msg = (f"{record.getMessage()} [and {suppressed} more like it in the last "
                          f"{since:.0f} s, not logged]")
            record.args = None
        return True


@contextmanager
def limit_repeated_logs(interval: float = DEFAULT_LOG_REPEAT_S,
                        loggers: Sequence[str] = LIMITED_LOGGERS) -> Iterator[RepeatLimiter]:
    """Install one :class:`RepeatLimiter` on ``loggers`` for the duration (a logger's filters see
    the records logged on it; uvicorn.Config configures its loggers first, so install after it)."""
    limiter = RepeatLimiter(interval)
    targets = [logging.getLogger(name) for name in loggers]
    for lg in targets:
        lg.addFilter(limiter)
    try:
        yield limiter
    finally:
        for lg in targets:
            lg.removeFilter(limiter)
