"""Pure ASGI middlewares: request metrics, API-key auth, and the request body limit.

They answer before any route runs (so an unauthenticated or oversized request
costs no parsing), and they write the same JSON error body as the exception
handlers: {"error": code, "detail": message}.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics
from .ui import PUBLIC_PATHS

# /health, and the search page with its two static files (no data in them: its API calls send the key).
OPEN_PATHS = frozenset({"/health"}) | PUBLIC_PATHS
_CONVERTER = re.compile(r":[a-z]+}")


async def send_error(send: Send, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return bytes(v)
    return None


class _Duplicate(Exception):
    pass


def duplicate_key(raw: bytes) -> str | None:
    """The first key repeated within one JSON object of ``raw``, or None (also for a body that is
    not JSON: the route's own parsing answers that). Checked on bodies with a filter, whose
    conditions a duplicate would silently drop (FastAPI keeps the last)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in items:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except _Duplicate as exc:
        return str(exc.args[0])
    except (ValueError, RecursionError):
        return None
    return None


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by Content-Length up front, and by counting what actually arrives.

    The body is read (at most ``max_bytes``) before the app runs and replayed to it,
    so a chunked upload without Content-Length is bounded too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body is larger than the limit of {self.max_bytes} bytes"
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_error(send, 400, "bad_request", "invalid Content-Length header")
                return
            if declared > self.max_bytes:
                await send_error(send, 413, "body_too_large", too_big, {"connection": "close"})
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nothing to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await send_error(send, 413, "body_too_large", too_big, {"connection": "close"})
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        dup = duplicate_key(raw) if b'"filter"' in raw else None
        if dup is not None:
            await send_error(send, 422, "invalid_filter",
                             f"the request repeats the JSON key {dup[:80]!r} in one object; the last one "
                             "would silently win, so it is refused (as the CLI's --filter does)")
            return
        buffered: dict[str, Any] | None = {"type": "http.request", "body": raw, "more_body": False}

        async def replay() -> Message:
            nonlocal buffered
            if buffered is not None:
                msg, buffered = buffered, None
                return msg
            return await receive()

        await self.app(scope, replay, send)


class AuthMiddleware:
    """With a key set, every path but /health needs ``Authorization: Bearer KEY`` (compared in constant time)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        detail = "invalid API key" if header else "missing API key: send 'Authorization: Bearer KEY'"
        await send_error(send, 401, "unauthorized", detail, {"www-authenticate": "Bearer"})


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The method as a metrics label: a standard one, else "other". A client picks the method
    string freely, so labelling it as sent lets anyone grow /metrics without bound."""
    return method if method in KNOWN_METHODS else "other"


class MetricsMiddleware:
    """Counts every request by method, route template and status, and times it. Every label is
    from a closed set: the standard methods (else "other"), the app's route templates (else
    "unmatched"), and the status the app answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return _CONVERTER.sub("}", str(route.path))
        for r in self.routes:
            try:
                match, _ = r.matches(scope)
            except Exception:  # noqa: BLE001 - labelling must never fail a request
                continue
            if match == Match.FULL:
                return _CONVERTER.sub("}", str(getattr(r, "path", "unmatched")))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(
                method_label(str(scope.get("method", ""))), self._template(scope), status,
                time.perf_counter() - start
            )
