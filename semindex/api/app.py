"""The FastAPI app factory: routes, error mapping, auth, body limit, metrics, lifecycle.

Errors become HTTP in one place (``_install_error_handlers``): a SemindexError
answers its ``http_status`` with ``{"error": code, "detail": message}``; FastAPI's
request validation answers 422 in the same shape; anything else is a bug,
logged with its traceback and answered 500.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..core import Store
from ..errors import DeadlineExceededError, SemindexError, ShuttingDownError
from .deadline import DeadlineMiddleware
from .metrics import Metrics
from .middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from .openai_compat import router as openai_router
from .routes import health_router, router
from .schemas import ErrorBody
from .ui import router as ui_router

log = logging.getLogger("semindex.api")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
SHUTDOWN_WAIT_S = 120.0

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request (unparseable body, options that cannot work together)"},
    404: {"model": ErrorBody, "description": "Unknown collection or document"},
    409: {"model": ErrorBody, "description": "Collection exists, or opened with another model"},
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    422: {"model": ErrorBody, "description": "Invalid input"},
    500: {"model": ErrorBody, "description": "A bug (logged)"},
    503: {"model": ErrorBody, "description": "Storage unavailable, or shutting down"},
    504: {"model": ErrorBody, "description": "Past the server's --request-timeout; nothing was written"},
}
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key"}
}
_UNION_TAGS = frozenset({"text", "vector", "documents", "embeddings"})  # the Tag()s in schemas.py
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


__all__ = ["DEFAULT_MAX_BODY_BYTES", "ShuttingDownError", "WorkGate", "create_app"]


class WorkGate:
    """Counts requests at work in threads, so shutdown can wait for them before the store closes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    @contextmanager
    def enter(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise ShuttingDownError("the server is shutting down")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @property
    def active(self) -> int:
        """Requests at work in threads now (a 504 answered request winds down here too)."""
        with self._cond:
            return self._active

    def close(self, timeout: float) -> bool:
        """Refuse new work; wait up to ``timeout`` s for the work in flight. True when none is left."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._active == 0, timeout)


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(errors: Any) -> str:
    parts = []
    for err in list(errors)[:8]:
        loc = [str(x) for x in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
            if loc and loc[0] in _UNION_TAGS:  # which kind of body it was read as: not a field
                loc = loc[1:]
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    more = len(list(errors)) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "") if parts else "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SemindexError)
    async def semindex_error(request: Request, exc: SemindexError) -> JSONResponse:
        if exc.http_status >= 500 and not isinstance(exc, DeadlineExceededError):  # that one: DeadlineMiddleware
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return _error(exc.http_status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "validation_error", _validation_detail(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return _error(exc.status_code, code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal server error (logged on the server)")


def _warm_up(store: Store) -> None:
    """Load every model the store's collections use (and the default) once, before serving."""
    for name, count in store.warm_up().items():
        log.info("collection %s: %d documents", name, count)


def create_app(
    store: Store,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_store: bool = False,
    warm_up: bool = True,
    embed_models: Sequence[str] | None = None,
    allow_models: Sequence[str] = (),
    request_timeout: float | None = None,
) -> FastAPI:
    """The semindex HTTP API over ``store``.

    ``api_key``: when set, every endpoint but /health needs ``Authorization: Bearer KEY``.
    ``max_body_bytes``: larger request bodies get 413.
    ``close_store``: close (and checkpoint) the store at shutdown, after the requests
    in flight have finished; ``semindex serve`` sets it.
    ``embed_models``: the models /v1/embeddings serves (default: the default model plus
    every collection's model, looked up per request).
    ``allow_models``: models (bi-encoders for new collections, cross-encoders for ``rerank``)
    requests may name besides the default model and the collections' own; nothing else is loaded.
    ``request_timeout``: seconds a request may take before it is answered 504 (None: no limit);
    a write that has started always finishes, see :mod:`semindex.api.deadline`.
    """
    api_key = api_key or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await run_in_threadpool(_warm_up, store)
        log.info("semindex API ready")
        try:
            yield
        finally:
            drained = await run_in_threadpool(app.state.gate.close, SHUTDOWN_WAIT_S)
            if not drained:
                log.warning("shutting down with requests still running after %.0f s", SHUTDOWN_WAIT_S)
            if close_store:
                await run_in_threadpool(store.close)
                log.info("store closed")

    app = FastAPI(
        title="semindex",
        version=__version__,
        description="Semantic search over your documents: collections, upserts, dense search with filters.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = metrics = Metrics()
    app.state.gate = WorkGate()
    app.state.api_key = api_key
    app.state.embed_models = tuple(embed_models) if embed_models is not None else None
    app.state.allow_models = tuple(m.strip() for m in allow_models)
    app.state.default_model = None  # filled on first use (warm-up has loaded it)

    responses = dict(_ERROR_RESPONSES)
    deps = []
    if api_key is not None:
        from fastapi import Security

        responses.update(_AUTH_RESPONSES)
        deps.append(Security(HTTPBearer(auto_error=False, description="The server's API key")))
    app.include_router(health_router)
    app.include_router(router, responses=responses, dependencies=deps)
    app.include_router(openai_router, responses=responses, dependencies=deps)  # /v1: OpenAI-compatible embeddings
    app.include_router(ui_router)  # the search page at / (public static files; its data calls need the key)
    _install_error_handlers(app)

    # Added innermost first: metrics sees everything, auth runs before the body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key is not None:
        app.add_middleware(AuthMiddleware, api_key=api_key)
    if request_timeout is not None:  # outside auth and the body read: the limit counts from the head
        app.add_middleware(DeadlineMiddleware, seconds=request_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app
