"""OpenAI-compatible embeddings: ``POST /v1/embeddings`` and ``GET /v1/models``.

Why: most application code talks to embedding servers through the OpenAI client
(or a framework wrapping it). Pointing its ``base_url`` at ``semindex serve``
gives the very vectors ``semindex.embed`` returns, from models loaded once.

Rules this module keeps:

* which models are served is the server's choice (``serve --embed-model``; by
  default the default model plus every collection's model), never a name the
  client turns into a path: an id that is not served is a 404 before anything
  touches the file system or loads weights;
* errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
  so OpenAI clients raise their usual exceptions with a readable message;
* everything model-related goes through :mod:`semindex.core` (layering: api -> core);
* work runs in the thread pool inside the app's WorkGate, like every other route.

The bearer key is checked by the app's AuthMiddleware, as for the rest of the API.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import core
from ..errors import SemindexError
from .deadline import deadline_of

router = APIRouter(prefix="/v1", tags=["openai"])

MAX_INPUTS = 2048  # OpenAI's own limit per request
MAX_INPUT_CHARS = 100_000  # per string; the model reads at most its window anyway
MAX_INPUT_TOKENS = 8192  # per token-id array, OpenAI's context limit
MAX_TOTAL_CHARS = 4_000_000  # per request, so one call cannot hold a worker for minutes
_DEFAULT_ALIASES = ("default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})

_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "description": "A served model id (GET /v1/models)."},
        "input": {
            "description": "A string, a list of strings, or token ids of this model's tokenizer.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "array", "items": {"type": "integer"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            ],
        },
        "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1, "description": "The model's dimension, or (for a "
                       "Matryoshka-trained model) one of the sizes it was trained to be cut to."},
        "user": {"type": "string", "description": "Accepted and ignored."},
    },
}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"description": d, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for s, d in ((400, "Invalid request"), (404, "Model not served"), (503, "Shutting down"),
                 (504, "Past the server's --request-timeout"))
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error",
        param: str | None = None, code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _from_semindex(exc: SemindexError, param: str | None = None) -> OpenAIError:
    if exc.http_status >= 500:
        return OpenAIError(exc.http_status, str(exc), type="server_error", code=exc.code)
    return OpenAIError(400, str(exc), param=param, code=exc.code)


def _device(request: Request) -> str | None:
    return request.app.state.store.device  # type: ignore[no-any-return]


def served_models(request: Request) -> list[str]:
    """The ids this server embeds with: ``app.state.embed_models``, or the default plus the collections' models."""
    device = _device(request)
    explicit: Sequence[str] | None = getattr(request.app.state, "embed_models", None)
    if explicit is not None:
        names = [core.model_info(m, device).name for m in explicit]
    else:
        store = request.app.state.store
        names = [core.model_info(None, device).name]
        for name in store.collection_names():
            model = store.get_collection(name).model
            if model is not None:
                names.append(model)
    return list(dict.fromkeys(names))


def _resolve(request: Request, requested: str) -> str:
    """The served id ``requested`` names (exact, or an alias of the default model); else a 404."""
    served = served_models(request)
    if requested in served:
        return requested
    default = core.model_info(None, _device(request)).name
    if requested.strip().lower() in _DEFAULT_ALIASES and default in served:
        return default
    shown = requested if len(requested) <= 200 else requested[:200] + "..."
    raise OpenAIError(
        404,
        f"The model '{shown}' does not exist or is not served here (served: {', '.join(served)})",
        param="model",
        code="model_not_found",
    )


@dataclass
class _Parsed:
    model: str
    texts: list[str] | None
    token_ids: list[list[int]] | None
    encoding_format: str
    dimensions: int | None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse(raw: bytes) -> _Parsed:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise OpenAIError(400, f"unknown parameter: {unknown[0]!r}", param=unknown[0], code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise OpenAIError(400, "'model' is required: a served model id (see GET /v1/models)", param="model")
    if "input" not in body:
        raise OpenAIError(400, "'input' is required: a string, a list of strings or of token-id lists", param="input")
    texts, token_ids = _parse_input(body["input"])
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise OpenAIError(400, f"encoding_format must be 'float' or 'base64', not {fmt!r}", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise OpenAIError(400, f"dimensions must be a positive integer, not {dims!r}", param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise OpenAIError(400, "user must be a string", param="user")
    return _Parsed(model, texts, token_ids, fmt, dims)


def _parse_input(value: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """str | [str] | [int] | [[int]] -> texts or token-id lists, with the size limits applied."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise OpenAIError(400, "'input' must be a non-empty string or a non-empty list", param="input")
    if all(_is_int(x) for x in value):
        value = [value]  # one token-id array
    if len(value) > MAX_INPUTS:
        raise OpenAIError(400, f"'input' holds {len(value)} items; at most {MAX_INPUTS} per request", param="input")
    if all(isinstance(x, str) for x in value):
        total = 0
        for i, s in enumerate(value):
            if not s.strip():
                raise OpenAIError(400, f"input[{i}] is empty", param="input")
            if len(s) > MAX_INPUT_CHARS:
                raise OpenAIError(400, f"input[{i}] has {len(s)} characters; at most {MAX_INPUT_CHARS}", param="input")
            total += len(s)
        if total > MAX_TOTAL_CHARS:
            raise OpenAIError(400, f"'input' holds {total} characters; at most {MAX_TOTAL_CHARS} per request",
                              param="input")
        return list(value), None
    if all(isinstance(x, list) for x in value):
        for i, ids in enumerate(value):
            if not ids:
                raise OpenAIError(400, f"input[{i}] is an empty token list", param="input")
            if len(ids) > MAX_INPUT_TOKENS:
                raise OpenAIError(400, f"input[{i}] has {len(ids)} tokens; at most {MAX_INPUT_TOKENS}", param="input")
            if not all(_is_int(t) for t in ids):
                raise OpenAIError(400, f"input[{i}] must be a list of integer token ids", param="input")
        return None, [list(ids) for ids in value]
    raise OpenAIError(
        400, "'input' must be a string, a list of strings, a list of token ids or a list of token-id lists",
        param="input",
    )


def _encode(vec: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return vec.astype(np.float64).tolist()  # type: ignore[no-any-return]


EMBED_SLICE = 32  # inputs per model call: a search waiting for the same model waits one slice


def _embed_in_slices(request: Request, texts: list[str], name: str, device: str | None,
                     dimensions: int | None = None) -> np.ndarray:
    """``core.embed`` EMBED_SLICE inputs at a time, checking the request's deadline between slices:
    2,048 inputs in one call held the model (one call at a time) from every search meanwhile.
    Each input's vector does not depend on the others of its call."""
    deadline = deadline_of(request.state)
    parts = []
    for start in range(0, len(texts), EMBED_SLICE):
        if deadline is not None and start:
            deadline.check()
        parts.append(core.embed(texts[start : start + EMBED_SLICE], name, device, dimensions=dimensions))
    return np.concatenate(parts) if parts else core.embed(texts, name, device, dimensions=dimensions)


def _embeddings(request: Request, req: _Parsed) -> dict[str, Any]:
    with request.app.state.gate.enter():
        deadline = deadline_of(request.state)
        if deadline is not None:
            deadline.check()  # it waited for a worker thread past its deadline: do nothing
        name = _resolve(request, req.model)
        device = _device(request)
        info = core.model_info(name, device)
        dims = req.dimensions if req.dimensions is not None and req.dimensions != info.dimension else None
        if dims is not None:  # a Matryoshka-trained model may give its first N dims; any other refuses
            try:
                core.check_dimensions(name, dims, device)
            except SemindexError as exc:
                raise OpenAIError(
                    400,
                    f"model '{name}' produces {info.dimension}-dimensional embeddings and cannot shorten them "
                    f"to {dims}; omit 'dimensions' or pass {info.dimension} ({exc})",
                    param="dimensions",
                ) from exc
        texts = req.texts
        if texts is None:
            try:
                texts = core.decode_tokens(req.token_ids or [], name, device)
            except SemindexError as exc:
                raise _from_semindex(exc, "input") from exc
        vecs = _embed_in_slices(request, list(texts), name, device, dims)
        tokens = sum(core.count_tokens(texts, name, device))
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vecs)]
    return {"object": "list", "data": data, "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _json(obj: Any) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, media_type="application/json")


@router.post(
    "/embeddings",
    summary="Embeddings (OpenAI-compatible)",
    response_class=Response,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}},
    responses={200: {"description": "OpenAI's embeddings response: object, data[{object, index, embedding}], "
                     "model, usage{prompt_tokens, total_tokens}"}, **_ERRORS},
)
async def create_embeddings(request: Request) -> Response:
    """Embed ``input`` with a served ``model``; ``usage.prompt_tokens`` counts the tokens the model read.

    Token-id inputs must be ids of the model's own tokenizer (decoded with it); ``dimensions``
    is the model's dimension, or for a Matryoshka-trained model one of its trained sizes (its
    first N dims, re-normalised: what a collection made with ``dimensions=N`` stores).
    """
    try:
        req = _parse(await request.body())
        return _json(await run_in_threadpool(_embeddings, request, req))
    except OpenAIError as exc:
        return exc.response()
    except SemindexError as exc:
        return _from_semindex(exc).response()


def _model_obj(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "semindex"}


def _list_models(request: Request) -> list[str]:
    with request.app.state.gate.enter():
        return served_models(request)


@router.get("/models", summary="Served embedding models (OpenAI-compatible)", response_class=Response,
            responses={200: {"description": "{object: list, data: [{id, object: model, created, owned_by}]}"}})
async def list_models(request: Request) -> Response:
    try:
        names = await run_in_threadpool(_list_models, request)
    except SemindexError as exc:
        return _from_semindex(exc).response()
    return _json({"object": "list", "data": [_model_obj(n) for n in names]})


@router.get("/models/{model_id:path}", summary="One served model (OpenAI-compatible)", response_class=Response,
            responses={200: {"description": "{id, object: model, created, owned_by}"}, **_ERRORS})
async def get_model(request: Request, model_id: str) -> Response:
    def work() -> str:
        with request.app.state.gate.enter():
            return _resolve(request, model_id)

    try:
        return _json(_model_obj(await run_in_threadpool(work)))
    except OpenAIError as exc:
        return exc.response()
    except SemindexError as exc:
        return _from_semindex(exc).response()
