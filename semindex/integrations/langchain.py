"""LangChain adapter: a semindex collection as a ``VectorStore``, semindex's models as ``Embeddings``.

    from semindex.integrations.langchain import SemindexVectorStore
    with SemindexVectorStore("notes", path="my-store") as vs:      # the collection's own model
        vs.add_texts(["FAISS searches vectors"], metadatas=[{"year": 2017}])
        vs.as_retriever(search_kwargs={"k": 4, "filter": {"year": {"$gte": 2015}}, "mode": "hybrid"})

Two ways to embed, chosen by ``embedding``:

* ``None``: the collection encodes texts itself with its model (the default model for a new
  one). Nothing is embedded twice, and keyword/hybrid search, rerank and every other
  ``Collection.search`` option work as in the library.
* a LangChain ``Embeddings``: the collection is vectors-only, created on the first write with
  that embedding's dimension. Texts and metadata are still stored, so keyword and hybrid
  search work (hybrid fuses the two rankings here, as semindex does).

Metadata comes back exactly as stored (JSON values: a tuple comes back as a list); nothing
of semindex's own is added to it. Filters are semindex's Mongo-style dicts (README, Filters),
applied before the vector search. Install with ``pip install 'semindex[langchain]'``.
"""

from __future__ import annotations

import inspect
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import missing_extra
from ._fusion import hybrid_hits

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # the extra is not installed
    raise missing_extra("langchain", "langchain-core") from exc

from ..core import MAX_K, Collection, Hit, Store, embed
from ..core import Document as SemindexDocument
from ..errors import CollectionExistsError, ConfigError, InvalidInputError, ModelMismatchError

__all__ = ["SemindexEmbeddings", "SemindexVectorStore"]

MODES = ("dense", "keyword", "hybrid")


class SemindexEmbeddings(Embeddings):
    """semindex's models (``semindex.embed``: one shared, cached copy per process) as LangChain ``Embeddings``.

    ``model``: a sentence-transformers id or folder (default all-MiniLM-L6-v2, or
    ``$SEMINDEX_MODEL``); rows are L2-normalised unless ``normalize=False``. Vectors are
    lists of Python floats, as LangChain expects (not numpy scalars).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 32,
        normalize: bool = True,
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vecs = embed(list(texts), self.model, self.device, batch_size=self.batch_size, normalize=self.normalize)
        out: list[list[float]] = vecs.tolist()
        return out

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class SemindexVectorStore(VectorStore):
    """A semindex collection behind LangChain's ``VectorStore`` interface.

    ``path``/``db_url`` open a store as ``semindex.Store`` does (closed by :meth:`close`);
    ``store`` uses one you already hold (left open). ``embedding=None`` uses the collection's
    own model (``model`` picks it for a new collection); a LangChain ``Embeddings`` makes or
    opens a vectors-only collection. Searches take ``filter`` (semindex's Mongo-style dict) and
    ``mode`` ("dense", "keyword" or "hybrid"); with ``embedding=None`` any other
    ``Collection.search`` keyword (``rerank``, ``candidates``...) passes through.
    """

    def __init__(
        self,
        collection_name: str = "default",
        embedding: Embeddings | None = None,
        path: str | os.PathLike[str] | None = None,
        db_url: str | None = None,
        store: Store | None = None,
        *,
        model: str | None = None,
        metric: str = "cosine",
    ) -> None:
        if store is not None and (path is not None or db_url is not None):
            raise ConfigError("pass either store or path/db_url, not both")
        if embedding is not None and model is not None:
            raise ConfigError("pass either embedding (a LangChain Embeddings) or model (a semindex model), not both")
        self._owns_store = store is None
        self.store = store if store is not None else Store(path, db_url=db_url)
        self.collection_name = collection_name
        self.embedding = embedding
        self.metric = metric
        self._collection: Collection | None = None
        self._own_embeddings: SemindexEmbeddings | None = None
        try:
            if embedding is None:
                coll = self.store.collection(collection_name, model=model, metric=metric)
                if coll.model is None:
                    raise ModelMismatchError(
                        f"collection {collection_name!r} holds precomputed vectors (no model): "
                        "pass the LangChain Embeddings that made them as embedding="
                    )
                self._collection = coll
            elif self.store.has_collection(collection_name):
                coll = self.store.get_collection(collection_name)
                if coll.model is not None:
                    raise ModelMismatchError(
                        f"collection {collection_name!r} encodes with its model {coll.model!r}; "
                        "open it with embedding=None (vectors of another model are not comparable)"
                    )
                self._collection = coll
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Close the store if this object opened it (a ``store=`` passed in stays open)."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> SemindexVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def collection(self) -> Collection | None:
        """The semindex collection; None for an ``embedding=`` store before its first write."""
        return self._collection

    @property
    def embeddings(self) -> Embeddings:
        if self.embedding is not None:
            return self.embedding
        if self._own_embeddings is None:
            model = self._collection.model if self._collection is not None else None
            self._own_embeddings = SemindexEmbeddings(model, device=self.store.device)
        return self._own_embeddings

    # -- writes --------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Upsert ``texts``: an existing id is replaced (text and metadata); a missing id gets a uuid4."""
        texts_ = list(texts)
        n = len(texts_)
        if metadatas is not None and len(metadatas) != n:
            raise InvalidInputError(f"got {len(metadatas)} metadatas for {n} texts")
        if ids is not None and len(ids) != n:
            raise InvalidInputError(f"got {len(ids)} ids for {n} texts")
        # add_documents passes Document.id, which is None for documents that have none
        given: list[str | None] = list(ids) if ids is not None else [None] * n
        ids_ = [str(i) if i is not None and i != "" else str(uuid.uuid4()) for i in given]
        metas = [dict(m) if m else {} for m in metadatas] if metadatas is not None else [{} for _ in texts_]
        if n == 0:
            return []
        if self.embedding is None:
            coll = self._require_collection()
            coll.add([{"id": i, "text": t, "metadata": m} for i, t, m in zip(ids_, texts_, metas)], **kwargs)
            return ids_
        vecs = np.asarray(self.embedding.embed_documents(texts_), dtype=np.float32)
        coll = self._vectors_collection(int(vecs.shape[1]) if vecs.ndim == 2 else 0)
        self._forget_same_vector_texts(coll, ids_, texts_, vecs)
        coll.add_embeddings(ids_, vecs, metadata=metas, texts=texts_)
        return ids_

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete ``ids`` (missing ones are ignored); ``ids=None`` deletes every document of the collection."""
        coll = self._collection
        if coll is None:
            return True
        if ids is None:
            while batch := coll.ids(limit=1000):
                coll.delete(batch)
            return True
        coll.delete([str(i) for i in ids])
        return True

    # -- reads -----------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        coll = self._collection
        if coll is None or not ids:
            return []
        return [_from_stored(d) for d in coll.get_many([str(i) for i in ids])]

    def similarity_search(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        *,
        mode: str = "dense",
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, mode=mode, **kwargs)]

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        *,
        mode: str = "dense",
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Documents with semindex's score: higher is better (cosine similarity for dense search)."""
        return [(_from_hit(h), h.score) for h in self._search(query, k, filter, mode, kwargs)]

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search_with_score_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        _check_k(k)
        coll = self._collection
        if coll is None:
            return []
        hits = coll.search_vectors(np.asarray(embedding, dtype=np.float32), k, filter=filter, **kwargs)[0]
        return [(_from_hit(h), h.score) for h in hits]

    def _search(
        self, query: str, k: int, filter: Mapping[str, Any] | None, mode: str, kwargs: dict[str, Any]
    ) -> list[Hit]:
        _check_k(k)
        _check_mode(mode)
        coll = self._collection
        if self.embedding is None:
            return self._require_collection().search(query, k, filter=filter, mode=mode, **kwargs)
        if coll is None:
            return []
        if mode == "keyword":
            return coll.search(query, k, filter=filter, mode="keyword", **kwargs)
        qvec = np.asarray(self.embedding.embed_query(query), dtype=np.float32)
        if mode == "dense":
            return coll.search_vectors(qvec, k, filter=filter, **kwargs)[0]
        return hybrid_hits(coll, query, qvec, k, filter, **kwargs)

    # -- relevance scores ----------------------------------------------------------------

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """semindex's dense scores mapped to [0, 1]: cosine (1+s)/2, l2 1/(1+distance), dot a logistic."""
        metric = self._collection.metric if self._collection is not None else self.metric
        if metric == "cosine":
            return _cosine_relevance
        if metric == "l2":
            return _l2_relevance
        return _dot_relevance

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if kwargs.get("mode", "dense") != "dense" or kwargs.get("rerank") is not None:
            raise InvalidInputError(
                "relevance scores (and score_threshold) are defined for dense similarity only: "
                "keyword, hybrid and rerank scores have no fixed range"
            )
        fn = self._select_relevance_score_fn()
        return [(doc, fn(score)) for doc, score in self.similarity_search_with_score(query, k, **kwargs)]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self._similarity_search_with_relevance_scores, query, k, **kwargs)

    # -- MMR ------------------------------------------------------------------------

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Maximal marginal relevance over the top ``fetch_k`` dense hits (stored vectors, no re-encoding)."""
        _check_mmr_mode(kwargs)
        if self.embedding is None:
            coll = self._require_collection()
            if "mmr" in inspect.signature(coll.search).parameters:  # semindex's own MMR, where it has one
                mmr: dict[str, Any] = {"mmr": True, "lambda_mult": lambda_mult, "fetch_k": fetch_k}
                hits = coll.search(query, k, filter=filter, **mmr, **kwargs)
                return [_from_hit(h) for h in hits]
            qvec: list[float] = coll.embed(query).tolist()
        else:
            if self._collection is None:
                return []
            qvec = self.embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(qvec, k, fetch_k, lambda_mult, filter, **kwargs)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        _check_mmr_mode(kwargs)
        _check_k(k)
        _check_k(fetch_k)
        if not 0.0 <= lambda_mult <= 1.0:
            raise InvalidInputError(f"lambda_mult must be between 0 and 1, got {lambda_mult!r}")
        coll = self._collection
        if coll is None:
            return []
        query = np.asarray(embedding, dtype=np.float32)
        hits = coll.search_vectors(query, max(k, fetch_k), filter=filter)[0]
        stored = coll.get_embeddings([h.id for h in hits])
        hits = [h for h in hits if h.id in stored]  # a row deleted meanwhile is left out
        if not hits:
            return []
        chosen = maximal_marginal_relevance(query, [stored[h.id].tolist() for h in hits], lambda_mult, k)
        return [_from_hit(hits[i]) for i in chosen]

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection_name: str = "default",
        path: str | os.PathLike[str] | None = None,
        db_url: str | None = None,
        store: Store | None = None,
        **kwargs: Any,
    ) -> SemindexVectorStore:
        """A store (see the class) holding ``texts``; ``kwargs`` go to the constructor (``model``, ``metric``)."""
        vs = cls(collection_name, embedding, path, db_url, store, **kwargs)
        try:
            vs.add_texts(texts, metadatas, ids=ids)
        except BaseException:
            vs.close()
            raise
        return vs

    # -- helpers -----------------------------------------------------------------------------

    def _require_collection(self) -> Collection:
        if self._collection is None:  # only an embedding= store is created lazily
            raise ConfigError("the collection does not exist yet: add documents first")
        return self._collection

    def _vectors_collection(self, dimension: int) -> Collection:
        """The vectors-only collection, created on the first write with the embedding's dimension."""
        if self._collection is None:
            if dimension < 1:
                raise InvalidInputError("the embedding returned no vectors")
            try:
                self._collection = self.store.create_collection(
                    self.collection_name, dimension=dimension, metric=self.metric, vectors_only=True
                )
            except CollectionExistsError:  # created by someone else since we looked
                self._collection = self.store.get_collection(self.collection_name)
        return self._collection

    @staticmethod
    def _forget_same_vector_texts(
        coll: Collection, ids: Sequence[str], texts: Sequence[str], vecs: np.ndarray
    ) -> None:
        """Delete the rows whose text changes but whose vector does not, so the upsert writes the new text.

        Why: a vectors-only collection treats an identical vector as "unchanged" and keeps the
        old text. An embedding that maps two texts to one vector is rare, but an upsert that
        silently keeps the old text would be wrong.
        """
        existing = {d.id: d.text for d in coll.get_many(list(dict.fromkeys(ids)))}
        if not existing:
            return
        changed = {i: row for row, i in enumerate(ids) if i in existing and existing[i] != texts[row]}
        if not changed:
            return
        stored = coll.get_embeddings(list(changed))
        new = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12) if coll.record.normalize else vecs
        same = [i for i, row in changed.items() if i in stored and np.allclose(stored[i], new[row], atol=1e-6)]
        if same:
            coll.delete(same)


# -- module helpers ----------------------------------------------------------------------------


def _from_hit(hit: Hit) -> Document:
    return Document(page_content=hit.text, metadata=dict(hit.metadata), id=hit.id)


def _from_stored(doc: SemindexDocument) -> Document:
    return Document(page_content=doc.text, metadata=dict(doc.metadata), id=doc.id)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")


def _check_mmr_mode(kwargs: dict[str, Any]) -> None:
    mode = kwargs.pop("mode", "dense")
    if mode != "dense":
        raise InvalidInputError(f"MMR re-ranks dense hits by their vectors; mode {mode!r} is not supported")


def _cosine_relevance(score: float) -> float:
    return min(1.0, max(0.0, (1.0 + score) / 2.0))


def _l2_relevance(score: float) -> float:
    return 1.0 / (1.0 + math.sqrt(max(0.0, -score)))  # semindex's l2 score is -(squared distance)


def _dot_relevance(score: float) -> float:
    return 0.5 * (1.0 + math.tanh(score / 2.0))  # the logistic function, without overflow
