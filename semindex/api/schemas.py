"""Pydantic models of the HTTP API: what /openapi.json describes and what every request is checked against.

Checks made here are about HTTP input only (shapes, sizes, JSON values that the
storage layer could not hold); the rules about documents, filters and
collections live in the library and come back as SemindexErrors.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from ..core import DEFAULT_MMR_FETCH_K, DEFAULT_MMR_LAMBDA, MAX_CONTEXT_CHUNKS, MAX_K, NAME_RE
from ..validation import json_value_problem, string_problem

MAX_BATCH_DOCUMENTS = 10_000
MAX_BATCH_QUERIES = 1024
MAX_TEXT_CHARS = 1_000_000
MAX_QUERY_CHARS = 100_000
# Vector components beyond this would overflow float32 dot products into inf/NaN scores.
MAX_ABS_COMPONENT = 1e9
# Model ids/paths: one path component at most (longer ones make the OS raise ENAMETOOLONG in the library).
MAX_MODEL_CHARS = 255

COLLECTION_NAME = NAME_RE.pattern  # the store's own rule, so the schema and the store agree
SearchMode = Literal["dense", "keyword", "hybrid"]
NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
NON_BLANK = r"\S"  # JSON Schema patterns search: "holds a non-space character"


def check_json_value(value: Any, what: str) -> Any:
    """Reject JSON values the metadata store cannot hold: deep nesting, NaN, 64-bit overflow, lone surrogates."""
    problem = json_value_problem(value, what)
    if problem is not None:
        raise ValueError(problem)  # pydantic turns it into a 422 naming the field
    return value


def _check_str(s: str, what: str) -> None:
    problem = string_problem(s, what)
    if problem is not None:
        raise ValueError(problem)


def _check_text(s: str, what: str) -> str:
    _check_str(s, what)
    if not s.strip():
        raise ValueError(f"{what} is empty")
    return s


def _check_vector(vec: list[float], what: str) -> list[float]:
    for x in vec:
        if not math.isfinite(x) or abs(x) > MAX_ABS_COMPONENT:
            raise ValueError(f"{what} components must be finite numbers of magnitude at most {MAX_ABS_COMPONENT:g}")
    return vec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors and health ------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable machine code and a human sentence."""

    error: str = Field(examples=["collection_not_found"])
    detail: str = Field(examples=["collection 'docs' does not exist"])


class Health(BaseModel):
    status: Literal["ok"]
    version: str


# -- collections ------------------------------------------------------------------


class ChunkingIn(_Model):
    """How a new collection splits documents longer than its model's window (sizes in model tokens)."""

    enabled: bool = Field(default=True, strict=True, description="false: one vector per document, truncated.")
    size: int | None = Field(default=None, ge=16, le=65536, strict=True,
                             description="Chunk size in tokens (default: the model's window; at most that).")
    overlap: int | None = Field(default=None, ge=0, le=32768, strict=True,
                                description="Tokens shared by consecutive chunks (default: 1/8 of the size).")


class CollectionCreate(_Model):
    name: str = Field(pattern=COLLECTION_NAME, examples=["notes"])
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODEL_CHARS,
        pattern=NO_CONTROL,
        description="Model id or local path (default: all-MiniLM-L6-v2). Omit it and give a dimension "
        "for a vectors-only collection.",
    )
    dimension: int | None = Field(default=None, ge=1, le=65536)
    metric: Literal["cosine", "dot", "l2"] = "cosine"
    index: str = Field(default="auto", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_,.:-]+$")
    chunking: ChunkingIn | Literal[False] | None = Field(
        default=None,
        description="Long documents: split into chunks by default; false truncates them at the model's window "
        "(a size above the window answers 400).",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Matryoshka truncation: keep the model's first N dims of every vector (re-normalised). Only "
        "for models trained for it (MatryoshkaLoss in the model card, at one of its trained sizes); else 422.",
    )
    allow_truncation: bool = Field(
        default=False,
        description="Truncate to `dimensions` even if the model does not declare Matryoshka training.",
    )


class CollectionOut(BaseModel):
    """``semindex.CollectionInfo`` over HTTP: the same fields (a test keeps them in step), all always set."""

    name: str
    count: int
    model: str | None
    dimension: int
    metric: str
    index_type: str = Field(description="The index in use now (with the auto policy it changes as the collection grows).")
    bytes_on_disk: int
    index_bytes: int
    version: int
    index_policy: str = Field(description="What the collection asked for: auto, flat, hnsw, ivf, ivfpq, sq8, binary or a FAISS factory string.")
    index_params: dict[str, Any] = Field(description="Tuned parameters: nlist, nprobe, efSearch, k_factor, recall@10...")
    bytes_per_vector: float
    index_device: str
    backend: str | None = Field(description="The inference backend that built its vectors (torch, onnx, openvino).")
    precision: str | None = Field(description="fp32, bf16 or int8; vectors of another precision are refused.")
    chunks: int = Field(description="Chunks (vectors) held: more than count when long documents were split.")
    chunking: dict[str, Any] | None = Field(
        description="How long documents are split: {enabled, size, overlap} in tokens; null for vectors-only."
    )
    truncate_dim: int | None = Field(
        description="Matryoshka truncation: its vectors are the model's first N dims, re-normalised (N = "
        "dimension); null: the model's full vectors.",
    )


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class CollectionDeleted(BaseModel):
    name: str
    deleted: bool


# -- documents ----------------------------------------------------------------------


class DocumentIn(_Model):
    id: str | None = Field(default=None, min_length=1, max_length=512, description="Derived from the content when omitted.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, pattern=NON_BLANK)
    title: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _check_text(v, "text")

    @field_validator("id", "title")
    @classmethod
    def _strings(cls, v: str | None) -> str | None:
        if v is not None:
            _check_str(v, "id/title")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_value(v, "metadata") if v is not None else v


class DocumentsUpsert(_Model):
    """Documents to encode with the collection's model and upsert, all in one transaction."""

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_BATCH_DOCUMENTS)


class EmbeddingsUpsert(_Model):
    """Precomputed vectors (for collections created with a dimension and no model), one per id."""

    ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_DOCUMENTS)
    embeddings: list[list[float]] = Field(min_length=1, max_length=MAX_BATCH_DOCUMENTS)
    metadata: list[dict[str, Any] | None] | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _shapes(self) -> EmbeddingsUpsert:
        n = len(self.ids)
        for i in self.ids:
            if not 1 <= len(i) <= 512:
                raise ValueError("ids must be 1-512 characters")
            _check_str(i, "ids")
        if len(self.embeddings) != n:
            raise ValueError(f"got {n} ids but {len(self.embeddings)} embeddings")
        for field, vals in (("metadata", self.metadata), ("texts", self.texts)):
            if vals is not None and len(vals) != n:
                raise ValueError(f"{field} must have one entry per id ({n}), got {len(vals)}")
        width = len(self.embeddings[0])
        for row in self.embeddings:
            if len(row) != width:
                raise ValueError("embeddings must all have the same length")
            _check_vector(row, "embeddings")
        if self.metadata is not None:
            check_json_value(self.metadata, "metadata")
        if self.texts is not None:
            for t in self.texts:
                _check_str(t, "texts")
        return self


class UpsertResult(BaseModel):
    ids: list[str] = Field(description="The ids written, in input order (derived ones included).")
    added: int
    updated: int
    unchanged: int


class DocumentOut(BaseModel):
    id: str
    text: str
    title: str | None = None
    metadata: dict[str, Any]


class DocumentIds(BaseModel):
    ids: list[str]
    offset: int
    count: int = Field(description="Documents in the collection.")


class DocumentDeleted(BaseModel):
    id: str
    deleted: bool


# -- search -----------------------------------------------------------------------


class _VectorCommon(_Model):
    k: int = Field(default=10, ge=1, le=MAX_K, strict=True)  # "5" and true are refused, not coerced
    include_text: bool = Field(
        default=True, strict=True,
        description="false: hits carry id, score and metadata only (text empty, no title): smaller answers.",
    )
    filter: dict[str, Any] | None = Field(
        default=None,
        description='Metadata filter, e.g. {"year": {"$gte": 2020}, "topic": {"$in": ["a", "b"]}}; '
        "applied before ranking.",
    )

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_value(v, "filter") if v is not None else v


class _SearchCommon(_VectorCommon):
    mode: SearchMode = "dense"
    rerank: str | None = Field(
        default=None, min_length=1, max_length=MAX_MODEL_CHARS, pattern=NO_CONTROL, description="Cross-encoder model id."
    )
    fusion: Literal["rrf", "convex"] = Field(
        default="rrf", description="Hybrid fusion: reciprocal rank fusion, or a convex combination of min-max scores."
    )
    alpha: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Dense share for fusion=convex (default: tuned on SciFact train)."
    )
    level: Literal["document", "chunk"] = Field(
        default="document",
        description="document: one hit per document, scored by its best chunk; chunk: one hit per chunk.",
    )
    score_threshold: float | None = Field(
        default=None, allow_inf_nan=False, description="Drop hits scoring below this."
    )
    mmr: bool = Field(default=False, strict=True, description="Re-select the k hits by maximal marginal relevance.")
    lambda_mult: float | None = Field(
        default=None, ge=0.0, le=1.0, allow_inf_nan=False,
        description=f"With mmr: 1 = relevance only, 0 = diversity only (default {DEFAULT_MMR_LAMBDA}).",
    )
    fetch_k: int | None = Field(
        default=None, ge=1, le=MAX_K, strict=True,
        description=f"With mmr: the candidates it chooses from (default {DEFAULT_MMR_FETCH_K}).",
    )
    context_chunks: int = Field(
        default=0, ge=0, le=MAX_CONTEXT_CHUNKS, strict=True,
        description="Return the best chunk with this many neighbours each side as the hit's context.",
    )

    @model_validator(mode="after")
    def _mmr_options(self) -> _SearchCommon:
        if not self.mmr and (self.lambda_mult is not None or self.fetch_k is not None):
            raise ValueError("lambda_mult and fetch_k need mmr: true")
        return self

    def chunk_options(self) -> dict[str, Any]:
        """The chunk/RAG keywords of Collection.search, as asked."""
        return {
            "level": self.level, "score_threshold": self.score_threshold, "mmr": self.mmr,
            "lambda_mult": DEFAULT_MMR_LAMBDA if self.lambda_mult is None else self.lambda_mult,
            "fetch_k": self.fetch_k, "context_chunks": self.context_chunks,
        }


QueryText = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NON_BLANK)]
QueryVector = Annotated[list[float], Field(min_length=1, max_length=65536)]


class TextSearch(_SearchCommon):
    """A text query, encoded with the collection's model (or matched by keywords in keyword/hybrid mode)."""

    query: QueryText

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _check_text(v, "query")


class VectorSearch(_VectorCommon):
    """A query embedding of the collection's dimension (dense search)."""

    vector: QueryVector

    @field_validator("vector")
    @classmethod
    def _vector(cls, v: list[float]) -> list[float]:
        return _check_vector(v, "vector")


class TextBatchSearch(_SearchCommon):
    queries: list[QueryText] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)

    @field_validator("queries")
    @classmethod
    def _queries(cls, v: list[str]) -> list[str]:
        for i, q in enumerate(v):
            _check_text(q, f"query #{i}")
        return v


class VectorBatchSearch(_VectorCommon):
    vectors: list[QueryVector] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)

    @field_validator("vectors")
    @classmethod
    def _vectors(cls, v: list[list[float]]) -> list[list[float]]:
        width = len(v[0])
        for row in v:
            if len(row) != width:
                raise ValueError("vectors must all have the same length")
            _check_vector(row, "vectors")
        return v


def _tag_by_key(keys: tuple[str, ...], tag: str, default: str) -> Discriminator:
    """Pick the union member by the presence of one of ``keys``, so errors speak about the body that was meant."""

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            return tag if any(k in value for k in keys) else default
        return tag if any(hasattr(value, k) for k in keys) else default

    return Discriminator(pick)


SearchRequest = Annotated[
    Annotated[TextSearch, Tag("text")] | Annotated[VectorSearch, Tag("vector")],
    _tag_by_key(("vector",), "vector", "text"),
    Body(),
]
BatchSearchRequest = Annotated[
    Annotated[TextBatchSearch, Tag("text")] | Annotated[VectorBatchSearch, Tag("vector")],
    _tag_by_key(("vectors",), "vector", "text"),
    Body(),
]
UpsertRequest = Annotated[
    Annotated[DocumentsUpsert, Tag("documents")] | Annotated[EmbeddingsUpsert, Tag("embeddings")],
    _tag_by_key(("embeddings", "ids"), "embeddings", "documents"),
    Body(),
]


class ChunkOut(BaseModel):
    """A matching chunk: the document's ``text[start:end]`` (character offsets); ``index`` is its ordinal."""

    index: int
    start: int
    end: int
    score: float


class HitOut(BaseModel):
    id: str
    score: float = Field(description="Higher is better (cosine similarity for the default metric).")
    text: str = Field(description="The passage: the best chunk's text (the whole text of a short document).")
    title: str | None = None
    metadata: dict[str, Any]
    chunks: list[ChunkOut] = Field(default_factory=list, description="The document's matching chunks, best first.")
    context: str | None = Field(default=None, description="The best chunk with its neighbours (context_chunks).")


class SearchResponse(BaseModel):
    hits: list[HitOut]


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
