"""LlamaIndex adapter: a semindex collection as a vector store, semindex's models as an embedding.

    from llama_index.core import StorageContext, VectorStoreIndex
    from semindex.integrations.llamaindex import SemindexEmbedding, SemindexVectorStore

    vector_store = SemindexVectorStore("docs", path="my-store")
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=SemindexEmbedding(),
    )
    nodes = index.as_retriever(similarity_top_k=3).retrieve("a question")

The collection is vectors-only (LlamaIndex embeds the nodes), created on the first ``add``
with the nodes' dimension. Each node is one semindex document: the node id is its id, its
text is the text (so keyword and hybrid queries work), its metadata is the metadata. What
rebuilds the node (ref_doc_id, start/end char offsets, relationships, templates) is kept
under one reserved metadata key, ``_llamaindex``, which is removed again from what comes back:
``node.metadata`` is exactly what was stored. ``MetadataFilters`` become semindex's
Mongo-style filters, applied before the vector search. Install with
``pip install 'semindex[llamaindex]'``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import missing_extra
from ._fusion import hybrid_hits

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as exc:  # the extra is not installed
    raise missing_extra("llamaindex", "llama-index-core") from exc

from ..core import MAX_K, Collection, Hit, Store, embed
from ..errors import CollectionExistsError, ConfigError, FilterError, InvalidInputError, ModelMismatchError
from ..storage.filters import matches

__all__ = ["RESERVED_KEY", "SemindexEmbedding", "SemindexVectorStore", "to_semindex_filter"]

RESERVED_KEY = "_llamaindex"  # node_id, ref_doc_id, node type and the node's JSON (no text, embedding, metadata)
MMR_PREFETCH = 4  # MMR picks similarity_top_k out of this many times as many dense hits


class SemindexEmbedding(BaseEmbedding):
    """semindex's models (``semindex.embed``: one shared, cached copy per process) as a LlamaIndex embedding.

    ``model_name``: a sentence-transformers id or folder; empty means semindex's default
    (all-MiniLM-L6-v2, or ``$SEMINDEX_MODEL``).
    """

    model_name: str = Field(default="", description="semindex model id; empty: the default model")
    device: str | None = Field(default=None, description="cpu, cuda, mps; None: semindex picks")
    normalize: bool = Field(default=True, description="L2-normalise the vectors")

    @classmethod
    def class_name(cls) -> str:
        return "SemindexEmbedding"

    def _embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vecs = embed(texts, self.model_name or None, self.device, batch_size=self.embed_batch_size,
                     normalize=self.normalize)
        out: list[list[float]] = vecs.tolist()
        return out

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(list(texts))


class SemindexVectorStore(BasePydanticVectorStore):
    """A vectors-only semindex collection behind LlamaIndex's vector store interface.

    ``path``/``db_url`` open a store as ``semindex.Store`` does (closed by :meth:`close`);
    ``store`` uses one you already hold (left open). Query modes: DEFAULT (dense), MMR,
    TEXT_SEARCH/SPARSE (semindex's keyword index, needs ``query_str``) and HYBRID (both,
    fused by reciprocal rank fusion, or by ``alpha`` when the query sets it).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str = "default"
    path: str | None = None
    db_url: str | None = None
    metric: str = "cosine"

    _store: Store = PrivateAttr()
    _owns_store: bool = PrivateAttr(default=True)
    _collection: Collection | None = PrivateAttr(default=None)

    def __init__(
        self,
        collection_name: str = "default",
        path: str | os.PathLike[str] | None = None,
        db_url: str | None = None,
        *,
        store: Store | None = None,
        metric: str = "cosine",
    ) -> None:
        if store is not None and (path is not None or db_url is not None):
            raise ConfigError("pass either store or path/db_url, not both")
        super().__init__(  # type: ignore[call-arg]  # pydantic fields; mypy runs without the pydantic plugin
            collection_name=collection_name,
            path=os.fspath(path) if path is not None else None,
            db_url=db_url,
            metric=metric,
        )
        self._owns_store = store is None
        self._store = store if store is not None else Store(path, db_url=db_url)
        try:
            if self._store.has_collection(collection_name):
                coll = self._store.get_collection(collection_name)
                if coll.model is not None:
                    raise ModelMismatchError(
                        f"collection {collection_name!r} encodes with its model {coll.model!r}; "
                        "LlamaIndex embeds the nodes itself, so use a vectors-only collection"
                    )
                self._collection = coll
        except BaseException:
            self.close()
            raise

    @classmethod
    def class_name(cls) -> str:
        return "SemindexVectorStore"

    # -- lifecycle ---------------------------------------------------------------

    @property
    def client(self) -> Store:
        """The semindex ``Store`` underneath."""
        return self._store

    @property
    def collection(self) -> Collection | None:
        """The semindex collection; None before the first ``add`` created it."""
        return self._collection

    def close(self) -> None:
        """Close the store if this object opened it (a ``store=`` passed in stays open)."""
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> SemindexVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert ``nodes`` (each needs its embedding) under their node ids, in one transaction."""
        if not nodes:
            return []
        vectors = []
        for node in nodes:
            if node.embedding is None:
                raise InvalidInputError(f"node {node.node_id!r} has no embedding: embed the nodes first")
            vectors.append(node.embedding)
        vecs = np.asarray(vectors, dtype=np.float32)
        coll = self._vectors_collection(int(vecs.shape[1]) if vecs.ndim == 2 else 0)
        ids = [node.node_id for node in nodes]
        texts = [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes]
        metas = [_to_stored_metadata(node) for node in nodes]
        _forget_same_vector_texts(coll, ids, texts, vecs)
        coll.add_embeddings(ids, vecs, metadata=metas, texts=texts)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        self._delete_where({f"{RESERVED_KEY}.ref_doc_id": ref_doc_id})

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete ``node_ids`` (those matching ``filters`` when both are given); neither: every node."""
        coll = self._collection
        if coll is None:
            return
        where = to_semindex_filter(filters)
        if node_ids is None:
            self._delete_where(where)
        elif where is None:
            coll.delete(list(node_ids))
        else:
            coll.delete([d.id for d in coll.get_many(list(node_ids)) if matches(where, d.metadata)])

    def clear(self) -> None:
        """Drop the collection; the next ``add`` creates it again (with the nodes' dimension)."""
        if self._store.has_collection(self.collection_name):
            self._store.delete_collection(self.collection_name)
        self._collection = None

    # -- reads -----------------------------------------------------------------------

    def get_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
    ) -> list[BaseNode]:
        """The stored nodes with ``node_ids`` and/or matching ``filters`` (neither: all of them)."""
        coll = self._collection
        if coll is None:
            return []
        where = to_semindex_filter(filters)
        if node_ids is not None:
            docs = coll.get_many(list(node_ids))
        else:
            docs = coll.get_many(_ids_where(coll, where))
        return [_to_node(d.id, d.text, d.metadata) for d in docs if where is None or matches(where, d.metadata)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        coll = self._collection
        k = query.similarity_top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"similarity_top_k must be an integer from 1 to {MAX_K}, got {k!r}")
        where = _restrict(to_semindex_filter(query.filters), query.doc_ids, query.node_ids)
        mode = query.mode
        if coll is None:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        if mode in (VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SPARSE):
            top = query.sparse_top_k or k
            hits = coll.search(_query_str(query), top, filter=where, mode="keyword")
        elif mode == VectorStoreQueryMode.HYBRID:
            hits = hybrid_hits(coll, _query_str(query), _query_vector(query), query.hybrid_top_k or k, where,
                               candidates=query.sparse_top_k, alpha=query.alpha)
        elif mode == VectorStoreQueryMode.MMR:
            threshold = kwargs.get("mmr_threshold", query.mmr_threshold)
            hits = _mmr(coll, _query_vector(query), k, where, threshold)
        elif mode == VectorStoreQueryMode.DEFAULT:
            hits = coll.search_vectors(_query_vector(query), k, filter=where)[0]
        else:
            raise InvalidInputError(
                f"query mode {mode.value!r} is not supported: use default, mmr, text_search, sparse or hybrid"
            )
        return VectorStoreQueryResult(
            nodes=[_to_node(h.id, h.text, h.metadata) for h in hits],
            similarities=[h.score for h in hits],
            ids=[h.id for h in hits],
        )

    # -- helpers -------------------------------------------------------------------------

    def _vectors_collection(self, dimension: int) -> Collection:
        if self._collection is None:
            if dimension < 1:
                raise InvalidInputError("the nodes' embeddings are empty")
            try:
                self._collection = self._store.create_collection(
                    self.collection_name, dimension=dimension, metric=self.metric, vectors_only=True
                )
            except CollectionExistsError:  # created by someone else since we looked
                self._collection = self._store.get_collection(self.collection_name)
        return self._collection

    def _delete_where(self, where: Mapping[str, Any] | None) -> None:
        coll = self._collection
        if coll is None:
            return
        while ids := _ids_where(coll, where, limit=MAX_K):
            coll.delete(ids)


# -- filters ------------------------------------------------------------------------------

_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}


def to_semindex_filter(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` as semindex's Mongo-style filter (None: no filter).

    ==, !=, >, >=, <, <=, in, nin and is_empty (missing or null) map directly, and AND, OR,
    NOT and nested ``MetadataFilters`` combine them. The operators on list values and
    substrings (contains, any, all, text_match, text_match_insensitive) have no semindex
    equivalent and raise a FilterError, rather than being applied after the top-k.
    """
    if filters is None or not filters.filters:
        return None
    parts = [_one_filter(f) for f in filters.filters]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT:  # LlamaIndex: none of the filters matches
        return {"$not": parts[0] if len(parts) == 1 else {"$or": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$or" if condition == FilterCondition.OR else "$and": parts}


def _one_filter(f: MetadataFilter | MetadataFilters) -> dict[str, Any]:
    if isinstance(f, MetadataFilters):
        nested = to_semindex_filter(f)
        return nested if nested is not None else {}
    if f.key == RESERVED_KEY or f.key.startswith(RESERVED_KEY + "."):
        raise FilterError(f"{RESERVED_KEY!r} is reserved for the node data this adapter stores")
    if f.operator == FilterOperator.IS_EMPTY:
        return {"$or": [{f.key: {"$exists": False}}, {f.key: {"$eq": None}}]}
    op = _OPS.get(f.operator)
    if op is None:
        raise FilterError(
            f"filter operator {f.operator.value!r} (on {f.key!r}) is not supported by semindex: "
            "use ==, !=, >, >=, <, <=, in, nin or is_empty"
        )
    value: Any = f.value
    if op in ("$in", "$nin") and not isinstance(value, list):
        value = [value]
    return {f.key: {op: value}}


def _restrict(where: dict[str, Any] | None, doc_ids: list[str] | None, node_ids: list[str] | None) -> dict[str, Any] | None:
    """``where`` narrowed to ``doc_ids`` (source documents) and ``node_ids``.

    An empty list restricts nothing: LlamaIndex's retriever sends ``node_ids=[]`` for a store
    that keeps the text (as other stores, e.g. Chroma's, read it).
    """
    parts = [where] if where is not None else []
    if doc_ids:
        parts.append({f"{RESERVED_KEY}.ref_doc_id": {"$in": list(doc_ids)}})
    if node_ids:
        parts.append({f"{RESERVED_KEY}.node_id": {"$in": list(node_ids)}})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _ids_where(coll: Collection, where: Mapping[str, Any] | None, limit: int | None = None) -> list[str]:
    """Ids of the documents matching ``where`` (all of them, or at most ``limit``)."""
    if where is None:
        out: list[str] = []
        while page := coll.ids(offset=len(out), limit=1000):
            out.extend(page)
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out
    total = coll.count(where)
    if total == 0:
        return []
    want = total if limit is None else min(total, limit)
    if want <= MAX_K:  # a filtered search returns every match when k covers them
        probe = np.ones((1, coll.dimension), dtype=np.float32)
        return [h.id for h in coll.search_vectors(probe, want, filter=where)[0]]
    found: list[str] = []  # more than a search returns: scan the metadata
    offset = 0
    while page := coll.ids(offset=offset, limit=1000):
        offset += len(page)
        found.extend(d.id for d in coll.get_many(page) if matches(where, d.metadata))
    return found if limit is None else found[:limit]


# -- nodes ----------------------------------------------------------------------------------


def _to_stored_metadata(node: BaseNode) -> dict[str, Any]:
    """The node's own metadata plus, under RESERVED_KEY, what rebuilds the node."""
    flat = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
    content = json.loads(flat["_node_content"])
    content["metadata"] = {}  # kept once, as the document's metadata
    meta = dict(node.metadata)
    meta[RESERVED_KEY] = {
        "node_id": node.node_id,
        "ref_doc_id": node.ref_doc_id,
        "start_char_idx": getattr(node, "start_char_idx", None),
        "end_char_idx": getattr(node, "end_char_idx", None),
        "node_type": flat["_node_type"],
        "node_content": json.dumps(content, ensure_ascii=False),
    }
    return meta


def _to_node(node_id: str, text: str, metadata: Mapping[str, Any]) -> BaseNode:
    """A stored document back as the node it was; its metadata without RESERVED_KEY."""
    user = {k: v for k, v in metadata.items() if k != RESERVED_KEY}
    reserved = metadata.get(RESERVED_KEY)
    if not isinstance(reserved, Mapping) or "node_content" not in reserved:  # written by something else
        from llama_index.core.schema import TextNode

        return TextNode(id_=node_id, text=text, metadata=user)
    content = json.loads(reserved["node_content"])
    content["metadata"] = user
    node = metadata_dict_to_node(
        {"_node_content": json.dumps(content, ensure_ascii=False), "_node_type": reserved.get("node_type")},
        text=text,
    )
    node.id_ = node_id
    return node


def _forget_same_vector_texts(coll: Collection, ids: Sequence[str], texts: Sequence[str], vecs: np.ndarray) -> None:
    """Delete rows whose text changes but whose vector does not, so the upsert writes the new text.

    A vectors-only collection treats an identical vector as unchanged and keeps the old text.
    """
    existing = {d.id: d for d in coll.get_many(list(dict.fromkeys(ids)))}
    changed = {i: row for row, i in enumerate(ids) if i in existing and existing[i].text != texts[row]}
    if not changed:
        return
    stored = coll.get_embeddings(list(changed))
    new = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12) if coll.record.normalize else vecs
    same = [i for i, row in changed.items() if i in stored and np.allclose(stored[i], new[row], atol=1e-6)]
    if same:
        coll.delete(same)


def _query_vector(query: VectorStoreQuery) -> np.ndarray:
    if query.query_embedding is None:
        raise InvalidInputError(f"a {query.mode.value!r} query needs query_embedding")
    return np.asarray(query.query_embedding, dtype=np.float32)


def _query_str(query: VectorStoreQuery) -> str:
    if not query.query_str or not query.query_str.strip():
        raise InvalidInputError(f"a {query.mode.value!r} query needs query_str")
    return query.query_str


def _mmr(
    coll: Collection, qvec: np.ndarray, k: int, where: Mapping[str, Any] | None, threshold: float | None
) -> list[Hit]:
    """LlamaIndex's MMR over the top ``k * MMR_PREFETCH`` dense hits, with their stored vectors."""
    hits = coll.search_vectors(qvec, min(MAX_K, k * MMR_PREFETCH), filter=where)[0]
    stored = coll.get_embeddings([h.id for h in hits])
    hits = [h for h in hits if h.id in stored]
    if not hits:
        return []
    q = qvec / max(float(np.linalg.norm(qvec)), 1e-12) if coll.record.normalize else qvec
    scores, chosen = get_top_k_mmr_embeddings(
        q.tolist(), [stored[h.id].tolist() for h in hits], similarity_top_k=k,
        embedding_ids=[h.id for h in hits], mmr_threshold=threshold,
    )
    by_id = {h.id: h for h in hits}
    return [replace(by_id[i], score=float(s)) for s, i in zip(scores, chosen)]
