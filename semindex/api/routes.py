"""The endpoints. Each one parses HTTP, calls the library (semindex.core) and shapes the answer.

Routes that touch the store are plain ``def``: FastAPI runs them in its thread
pool, so encoding, vector search and SQL never block the event loop. Every one
runs inside the app's WorkGate (the router's ``_gated`` dependency), which lets a
shutdown wait for writes in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from .. import __version__
from ..core import ChunkSpec, Collection, CollectionInfo, Hit, Store
from ..errors import DocumentNotFoundError, InvalidInputError, ResponseTooLargeError
from .deadline import Deadline, deadline_of
from .metrics import CONTENT_TYPE, Metrics
from .schemas import (
    COLLECTION_NAME,
    BatchSearchRequest,
    BatchSearchResponse,
    ChunkOut,
    CollectionCreate,
    CollectionDeleted,
    CollectionList,
    CollectionOut,
    DocumentDeleted,
    DocumentIds,
    DocumentOut,
    DocumentsUpsert,
    Health,
    HitOut,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResult,
    VectorBatchSearch,
    VectorSearch,
)


def _gated(request: Request) -> Iterator[None]:
    """Run the route inside the app's WorkGate: shutdown waits for it; once shutting down, 503.

    ``scope="function"`` ends it when the route returns, before the response is sent, so a
    slow client cannot hold up a shutdown. A request whose deadline passed while it waited for
    a worker thread is refused (504) here, before it does anything.
    """
    with request.app.state.gate.enter():
        deadline = _deadline(request)
        if deadline is not None:
            deadline.check()
        yield


def _deadline(request: Request) -> Deadline | None:
    return deadline_of(request.state)


def _begin_write(request: Request) -> None:
    """Right before a route's write: 504 if its deadline has passed (the write is never started);
    otherwise the write is committed to and finishes however long it takes."""
    deadline = _deadline(request)
    if deadline is not None:
        deadline.begin_write()


health_router = APIRouter()
router = APIRouter(dependencies=[Depends(_gated, scope="function")])  # every route here touches the store

CollectionName = Annotated[str, Path(description="Collection name.", pattern=COLLECTION_NAME)]
DocId = Annotated[str, Path(description="Document id (may contain '/').", max_length=2000)]


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _coll(request: Request, name: str) -> Collection:
    return _store(request).get_collection(name)


def _check_model(request: Request, model: str | None, what: str) -> None:
    """Refuse a model the server does not serve (422), before anything touches the file system.

    Served: the operator's ``serve --allow-model`` list, the default model, every collection's
    own model and the cross-encoders in the server's Hugging Face cache (hub ids, scanned once
    per server). A request never names an arbitrary folder or hub id to load: that disclosed
    which paths exist and cached whatever it loaded for the life of the process. The answer
    depends on no path on the server, only on which public hub ids its operator has cached."""
    if model is None:
        return
    m = model.strip()
    state = request.app.state
    allowed: set[str] = set(getattr(state, "allow_models", ()) or ())
    if m in allowed:
        return
    if getattr(state, "default_model", None) is None:
        from ..core import model_info  # the default model is loaded by warm-up already

        state.default_model = model_info(None).name
    allowed.add(state.default_model)
    if getattr(state, "installed_rerankers", None) is None:  # scanned once per server
        from ..core import installed_cross_encoders

        state.installed_rerankers = tuple(installed_cross_encoders())
    allowed.update(state.installed_rerankers)
    store = _store(request)
    for name in store.collection_names():
        with contextlib.suppress(Exception):  # a broken collection must not fail another's request
            cm = store.get_collection(name).model
            if cm:
                allowed.add(cm)
    if m not in allowed:
        shown = m if len(m) <= 80 else m[:77] + "..."
        raise InvalidInputError(
            f"{what} {shown!r} is not served here; the server's operator can allow it with "
            "`semindex serve --allow-model NAME`"
        )


def _info(info: CollectionInfo) -> CollectionOut:
    return CollectionOut(**info.as_dict())


MAX_RESPONSE_BYTES = 32 << 20  # text + title + metadata of every hit of one search answer


def _chunks(h: Hit) -> list[ChunkOut]:
    return [ChunkOut(index=c.index, start=c.start, end=c.end, score=c.score) for c in h.chunks]


def _hits(hits: list[Hit], include_text: bool = True) -> SearchResponse:
    if not include_text:  # ids, scores, metadata and offsets only: what a caller that fetches text itself needs
        return SearchResponse(hits=[HitOut(id=h.id, score=h.score, text="", title=None, metadata=h.metadata,
                                           chunks=_chunks(h)) for h in hits])
    return SearchResponse(
        hits=[HitOut(id=h.id, score=h.score, text=h.text, title=h.title, metadata=h.metadata, chunks=_chunks(h),
                     context=h.context) for h in hits]
    )


def _bound_response(results: list[list[Hit]], include_text: bool) -> None:
    """Refuse (413) an answer over MAX_RESPONSE_BYTES before it is serialised: k x queries x text
    is otherwise unbounded (64 copies of one vector once returned 336 MB from a 917-byte request)."""
    import json

    total = 0
    for hits in results:
        for h in hits:
            total += len(h.id) + 64
            if include_text:
                total += len(h.text.encode("utf-8", "replace")) + len((h.title or "").encode("utf-8", "replace"))
                total += len((h.context or "").encode("utf-8", "replace"))
            total += 64 * len(h.chunks)
            if h.metadata:
                total += len(json.dumps(h.metadata, ensure_ascii=False, default=str))
            if total > MAX_RESPONSE_BYTES:
                raise ResponseTooLargeError(
                    f"the answer would exceed {MAX_RESPONSE_BYTES >> 20} MiB of hits; ask for a smaller k or "
                    "fewer queries, or for ids and scores only with \"include_text\": false"
                )


# -- health and metrics ----------------------------------------------------------


@health_router.api_route("/health", methods=["GET", "HEAD"], response_model=Health, tags=["service"],
                         summary="Liveness (no auth)")
async def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get(
    "/metrics",
    tags=["service"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    store = _store(request)
    sizes = []
    live = []
    for name in store.collection_names():
        coll = store.get_collection(name)
        sizes.append((name, coll.count()))
        rec = coll.index_params.get("live_recall@10")
        if isinstance(rec, (int, float)):
            live.append((name, float(rec)))
    return Response(_metrics(request).render(sizes, live), media_type=CONTENT_TYPE)


# -- collections ------------------------------------------------------------------


@router.get("/collections", response_model=CollectionList, tags=["collections"])
def list_collections(request: Request) -> CollectionList:
    return CollectionList(collections=[_info(i) for i in _store(request).list_collections()])


@router.post(
    "/collections", response_model=CollectionOut, status_code=status.HTTP_201_CREATED, tags=["collections"]
)
def create_collection(request: Request, body: CollectionCreate) -> CollectionOut:
    """Create a collection with a model (default all-MiniLM-L6-v2), or a vectors-only one: a dimension and no model."""
    _check_model(request, body.model, "model")
    chunking = body.chunking if body.chunking is None or body.chunking is False else ChunkSpec(
        enabled=body.chunking.enabled, size=body.chunking.size, overlap=body.chunking.overlap)
    _begin_write(request)
    coll = _store(request).create_collection(
        body.name, model=body.model, dimension=body.dimension, metric=body.metric, index=body.index,
        chunking=chunking, dimensions=body.dimensions, allow_truncation=body.allow_truncation,
    )
    return _info(coll.info())


@router.get("/collections/{name}", response_model=CollectionOut, tags=["collections"])
def get_collection(request: Request, name: CollectionName) -> CollectionOut:
    return _info(_coll(request, name).info())


@router.delete("/collections/{name}", response_model=CollectionDeleted, tags=["collections"])
def delete_collection(request: Request, name: CollectionName) -> CollectionDeleted:
    _begin_write(request)
    _store(request).delete_collection(name)
    return CollectionDeleted(name=name, deleted=True)


# -- documents ----------------------------------------------------------------------


@router.post("/collections/{name}/documents", response_model=UpsertResult, tags=["documents"])
def upsert_documents(
    request: Request,
    name: CollectionName,
    body: UpsertRequest,
) -> UpsertResult:
    """Upsert documents (encoded with the collection's model) or precomputed embeddings, in one transaction.

    An existing id is replaced; unchanged content is not re-encoded. The write is
    visible to searches once this response has returned.
    """
    coll = _coll(request, name)
    if not isinstance(body, DocumentsUpsert) and coll.model is not None:
        raise InvalidInputError(
            f"collection {name!r} encodes its documents with {coll.model!r}; send documents with "
            "text (vectors from elsewhere would not match its queries), or use a vectors-only collection"
        )
    if isinstance(body, DocumentsUpsert):
        docs = [d.model_dump(exclude_none=True) for d in body.documents]
        _begin_write(request)
        stats = coll.add(docs, commit_every=len(docs))
    else:
        _begin_write(request)
        stats = coll.add_embeddings(
            body.ids,
            np.asarray(body.embeddings, dtype=np.float32),
            metadata=body.metadata,
            texts=body.texts,
        )
    _metrics(request).documents_indexed(name, stats.added + stats.updated)
    return UpsertResult(ids=stats.ids, added=stats.added, updated=stats.updated, unchanged=stats.unchanged)


@router.get("/collections/{name}/documents", response_model=DocumentIds, tags=["documents"])
def list_documents(
    request: Request,
    name: CollectionName,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DocumentIds:
    """Document ids in insertion order, a page at a time."""
    coll = _coll(request, name)
    return DocumentIds(ids=coll.ids(offset=offset, limit=limit), offset=offset, count=coll.count())


@router.get("/collections/{name}/documents/{doc_id:path}", response_model=DocumentOut, tags=["documents"])
def get_document(request: Request, name: CollectionName, doc_id: DocId) -> DocumentOut:
    doc = _coll(request, name).get(doc_id)
    return DocumentOut(id=doc.id, text=doc.text, title=doc.title, metadata=doc.metadata)


@router.delete("/collections/{name}/documents/{doc_id:path}", response_model=DocumentDeleted, tags=["documents"])
def delete_document(request: Request, name: CollectionName, doc_id: DocId) -> DocumentDeleted:
    coll = _coll(request, name)
    _begin_write(request)
    if coll.delete(doc_id) == 0:
        raise DocumentNotFoundError(doc_id, name)
    return DocumentDeleted(id=doc_id, deleted=True)


# -- search -------------------------------------------------------------------------


@router.post("/collections/{name}/search", response_model=SearchResponse, tags=["search"])
def search(request: Request, name: CollectionName, body: SearchRequest) -> SearchResponse:
    """Top-k documents for a text ``query`` (or a query ``vector``); ``filter`` narrows the candidates first."""
    coll = _coll(request, name)
    if isinstance(body, VectorSearch):
        hits = coll.search_vectors(np.asarray([body.vector], dtype=np.float32), body.k, filter=body.filter)[0]
    else:
        _check_model(request, body.rerank, "rerank model")
        hits = coll.search(body.query, body.k, filter=body.filter, mode=body.mode, rerank=body.rerank,
                           fusion=body.fusion, alpha=body.alpha, **body.chunk_options())
    _bound_response([hits], body.include_text)
    return _hits(hits, body.include_text)


MAX_BATCH_HITS = 100_000  # queries x k (x fetch_k with mmr) of one batch search
SEARCH_SLICE = 32  # queries encoded and searched together; another request's query waits at most one slice


def _bound_batch(queries: int, per_query: int) -> None:
    """422 for a batch whose queries x k exceeds MAX_BATCH_HITS: 1,024 queries x k=1000 once held a
    worker (and the model) for two minutes. Checked before any work."""
    if queries * per_query > MAX_BATCH_HITS:
        raise InvalidInputError(
            f"the batch asks for {queries} queries x {per_query} hits = {queries * per_query:,}; at most "
            f"{MAX_BATCH_HITS:,} per request: send fewer queries per request or a smaller k"
        )


def _in_slices(request: Request, n: int, run: Callable[[int, int], list[list[Hit]]]) -> list[list[Hit]]:
    """``run(start, stop)`` over slices of SEARCH_SLICE queries, checking the deadline between them.

    The model serves one call at a time, so a batch encoded whole made a single query wait for
    all of it; slice by slice, another request's query takes its turn between two slices. Each
    query's hits do not depend on the other queries of its batch, so the answer is the same.
    """
    deadline = _deadline(request)
    results: list[list[Hit]] = []
    for start in range(0, n, SEARCH_SLICE):
        if deadline is not None and start:
            deadline.check()  # answered 504 already, or about to be: stop here
        results.extend(run(start, min(n, start + SEARCH_SLICE)))
    return results


@router.post("/collections/{name}/search/batch", response_model=BatchSearchResponse, tags=["search"])
def search_batch(request: Request, name: CollectionName, body: BatchSearchRequest) -> BatchSearchResponse:
    """Many queries in one call: one result list per query, in order. At most 100,000 hits
    (queries x k) per request; queries are encoded SEARCH_SLICE at a time."""
    coll = _coll(request, name)
    results: list[list[Any]]
    if isinstance(body, VectorBatchSearch):
        _bound_batch(len(body.vectors), body.k)
        vectors = np.asarray(body.vectors, dtype=np.float32)
        results = _in_slices(request, len(vectors), lambda a, b: coll.search_vectors(
            vectors[a:b], body.k, filter=body.filter))
    else:
        _check_model(request, body.rerank, "rerank model")
        _bound_batch(len(body.queries), max(body.k, body.fetch_k or 0))
        queries = body.queries
        results = _in_slices(request, len(queries), lambda a, b: coll.search_batch(
            queries[a:b], body.k, filter=body.filter, mode=body.mode, rerank=body.rerank, fusion=body.fusion,
            alpha=body.alpha, **body.chunk_options()))
    _bound_response(results, body.include_text)
    return BatchSearchResponse(results=[_hits(r, body.include_text) for r in results])
