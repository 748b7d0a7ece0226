"""The library's front door: `Store` and `Collection`.

This layer joins the parts that must not know each other: storage (SQL +
FAISS, no models), the indexer (models, readers) and search. The CLI and the
HTTP API are thin skins over it, so every behaviour is reachable — and
tested — from Python first.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    DocumentNotFoundError,
    InvalidInputError,
    ModelMismatchError,
    ModelUnavailableError,
    ReadError,
    SemindexError,
    TruncationError,
)
from .indexer import backends
from .indexer.backends import set_threads as set_model_threads
from .indexer.beir import load_split, read_queries
from .indexer.chunking import Chunker, ChunkSpec, chunker_for
from .indexer.encoder import Encoder, SentenceTransformerEncoder, canonical_model_name, get_encoder
from .indexer.pipeline import IngestStats, OnError, ingest, ingest_vectors, to_record
from .indexer.readers import Record, detect_format, estimate_total, iter_records
from .indexer.scale_cli import ray_index_builder as ray_index_builder  # import-vectors --engine ray
from .indexer.scale_cli import scaled_index as scaled_index  # --devices / --engine ray (issue 12)
from .indexer.truncated import check_truncation, truncated
from .indexer.vector_files import VectorFile, load_query_vectors, open_vector_file
from .search.evaluate import QUERY_BATCH, EvalResult, evaluate
from .search.hybrid import DEFAULT_RRF_K, DEFAULT_WEIGHTS
from .search.query_cache import CachedQueryEncoder, CacheStats
from .search.query_cache import configure as configure_query_cache
from .search.query_cache import stats as query_cache_stats
from .search.rerank import installed_cross_encoders as installed_cross_encoders
from .search.searcher import (  # the MMR/context/level bounds: for the CLI and API
    DEFAULT_MMR_FETCH_K,
    DEFAULT_MMR_LAMBDA,
    DEFAULT_RERANK_TOP,
    LEVELS,
    MAX_CONTEXT_CHUNKS,
    MAX_K,
    Hit,
    check_k,
    vector_search,
)
from .search.searcher import search as run_search
from .storage import CheckReport, CollectionRecord, CollectionStorage, KeywordIndex, Storage, StoredDoc
from .storage.checkpoint import format_params
from .storage.engine import store_exists
from .storage.filters import parse_filter_json
from .storage.recall_monitor import enable as enable_recall_checks
from .storage.records import NAME_RE

log = logging.getLogger(__name__)

# The CLI and the HTTP API import from this module only (the layering contract in
# pyproject.toml checks it): what they need from the indexer, search and storage is
# re-exported here, so those packages can move things around behind it.

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_MMR_FETCH_K",
    "DEFAULT_MMR_LAMBDA",
    "DEFAULT_RERANK_TOP",
    "DEFAULT_RRF_K",
    "DEFAULT_STORE",
    "DEFAULT_WEIGHTS",
    "LEVELS",
    "MAX_CONTEXT_CHUNKS",
    "MAX_K",
    "NAME_RE",
    "QUERY_BATCH",
    "CacheStats",
    "ChunkSpec",
    "Collection",
    "CollectionInfo",
    "Document",
    "EvalResult",
    "Hit",
    "IngestStats",
    "Store",
    "VectorFile",
    "VectorImportStats",
    "configure_query_cache",
    "default_store_path",
    "detect_format",
    "enable_recall_checks",
    "estimate_total",
    "evaluate",
    "format_params",
    "installed_cross_encoders",
    "iter_records",
    "load_query_vectors",
    "load_split",
    "open_vector_file",
    "parse_filter",
    "query_cache_stats",
    "ray_index_builder",
    "read_queries",
    "set_model_threads",
]

DEFAULT_STORE = "semindex-data"
DEFAULT_COLLECTION = "default"


def default_store_path() -> str:
    return os.environ.get("SEMINDEX_STORE") or DEFAULT_STORE


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any]
    title: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "text": self.text, "metadata": self.metadata}
        if self.title is not None:
            out["title"] = self.title
        return out


@dataclass
class CollectionInfo:
    name: str
    count: int
    model: str | None
    dimension: int
    metric: str
    index_type: str
    bytes_on_disk: int
    index_bytes: int
    version: int
    index_policy: str = "flat"  # what the collection asked for: auto, flat, hnsw, ivf, ivfpq, sq8, binary or a factory string
    index_params: dict[str, Any] = field(default_factory=dict)  # nlist, nprobe, efSearch, k_factor, recall@10...
    bytes_per_vector: float = 0.0  # index memory / vectors
    index_device: str = "cpu"
    backend: str | None = None  # the inference backend that built its vectors (None: not recorded / no model)
    precision: str | None = None  # fp32, bf16 or int8; vectors of another precision are refused
    chunks: int = 0  # chunks (= vectors) held: more than ``count`` when long documents were split
    chunking: dict[str, Any] | None = None  # {"enabled", "size", "overlap"}; None for vectors-only collections
    truncate_dim: int | None = None  # Matryoshka: vectors are the model's first N dims (= dimension); None: full

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Store:
    """A folder (SQLite + index files), or a SQLAlchemy URL plus a folder for index files.

    >>> with Store("my-store") as store:          # doctest: +SKIP
    ...     docs = store.collection("notes")
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        db_url: str | None = None,
        device: str | None = None,
    ) -> None:
        self.path = Path(path if path is not None else default_store_path())
        self.device = device
        # The one place the storage parts are composed: the keyword index is a write hook of
        # the SQL store (kept exact inside each write transaction) and is handed to search.
        self.storage = Storage(self.path, db_url=db_url or os.environ.get("SEMINDEX_DB_URL") or None)
        self.keyword = KeywordIndex.open(self.storage.engine)
        if self.keyword.supported:
            self.storage.add_hook(self.keyword)
        self._open: dict[str, Collection] = {}

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Checkpoint every open index and release the database."""
        self._open.clear()
        self.storage.close()

    def collection(
        self,
        name: str = DEFAULT_COLLECTION,
        *,
        model: str | None = None,
        create: bool = True,
        metric: str = "cosine",
        index: str = "auto",
        dimension: int | None = None,
        backend: str | None = None,
        precision: str | None = None,
        chunking: ChunkSpec | bool | None = None,
        dimensions: int | None = None,
        allow_truncation: bool = False,
    ) -> Collection:
        """Open ``name``, creating it with ``model`` if missing (and ``create``).

        ``dimensions`` (Matryoshka truncation, see :meth:`create_collection`): a new collection
        records it; opening an existing one with another value is a TruncationError (a ConfigError).

        ``chunking`` (for a new collection): documents longer than the model's window are
        split into chunks that fit (the default: nothing past the window is lost); ``False``
        truncates them as the model does; a :class:`ChunkSpec` sets the size and overlap.

        ``backend`` (torch, onnx, openvino; default auto: openvino on CPU when installed) and
        ``precision`` (fp32, bf16, int8) choose how the model runs; a new collection records
        them, and opening one with another precision than it holds is a ConfigError.

        ``index`` (for a new collection): "auto" (flat while small, then HNSW, IVF, IVF-PQ as
        it grows; see the README), "flat", "hnsw", "ivf", "ivfpq", "sq8", "binary" or a FAISS factory string.

        Opening an existing collection with a different model is a ModelMismatchError:
        vectors from two models are not comparable.
        """
        record = self.storage.get_record(name)
        if record is None:
            if not create:
                raise CollectionNotFoundError(name)
            try:
                return self.create_collection(name, model=model, metric=metric, index=index, dimension=dimension,
                                              backend=backend, precision=precision, chunking=chunking,
                                              dimensions=dimensions, allow_truncation=allow_truncation)
            except CollectionExistsError:
                # another process created it between our look-up and our insert: open theirs
                return self.collection(name, model=model, create=False, metric=metric, index=index,
                                       dimension=dimension, backend=backend, precision=precision,
                                       dimensions=dimensions)
        if model is not None and record.model is not None and canonical_model_name(model) != record.model:
            raise ModelMismatchError(
                f"collection {name!r} was built with model {record.model!r}; "
                f"it cannot be used with {canonical_model_name(model)!r} (create another collection)"
            )
        if model is not None and record.model is None:
            raise ModelMismatchError(
                f"collection {name!r} holds precomputed vectors (no model); search it with vectors"
            )
        if dimension is not None and dimension != record.dimension:
            raise DimensionMismatchError(
                f"collection {name!r} has dimension {record.dimension}, not {dimension}"
            )
        if dimensions is not None and dimensions != record.config.get("truncate_dim"):
            held = (f"{record.dimension}-d vectors (its model's first {record.dimension} dims)"
                    if record.config.get("truncate_dim") else f"its model's full {record.dimension}-d vectors"
                    if record.model is not None else f"precomputed {record.dimension}-d vectors (no model)")
            raise TruncationError(
                f"collection {name!r} holds {held}; it cannot take {dimensions}-d ones: vectors of "
                "different sizes never mix (create another collection, or omit dimensions)"
            )
        coll = self._wrap(name)
        if record.model is not None and (backend is not None or precision is not None):
            coll.use_backend(backend, precision)
        return coll

    def create_collection(
        self,
        name: str,
        *,
        model: str | None = None,
        metric: str = "cosine",
        index: str = "auto",
        dimension: int | None = None,
        vectors_only: bool = False,
        backend: str | None = None,
        precision: str | None = None,
        chunking: ChunkSpec | bool | None = None,
        dimensions: int | None = None,
        allow_truncation: bool = False,
    ) -> Collection:
        """Create a collection. ``vectors_only`` (or a ``dimension`` without a model) is for bring-your-own vectors.

        ``backend`` / ``precision``: how its model runs (see :meth:`collection`); recorded with it.

        ``dimensions=N`` (Matryoshka truncation): every vector of the collection (documents,
        queries, chunks, re-embeddings) is the model's first N dims, re-normalised, so the
        index is N/D the size. Only for models trained for it (MatryoshkaLoss in the model card,
        or a ``semindex.json`` marker; see :mod:`semindex.indexer.truncated`), and N one of the
        sizes the card lists; ``allow_truncation=True`` skips those checks (1 <= N < D still
        holds). Otherwise a TruncationError (a ConfigError), before anything is created.
        """
        config: dict[str, Any] = {}
        if vectors_only or (dimension is not None and model is None):
            if dimension is None:
                raise ConfigError("a vectors-only collection needs a dimension")
            if dimensions is not None:
                raise TruncationError("dimensions (Matryoshka truncation) needs a model; "
                                      "a vectors-only collection takes its vectors as they are")
            model_name, dim, normalize = None, int(dimension), metric == "cosine"
        else:
            enc = get_encoder(model, self.device, backend=backend, precision=precision)
            if dimensions is not None:
                check_truncation(enc, dimensions, allow_truncation=allow_truncation)
            if hasattr(enc, "precision") or isinstance(enc, SentenceTransformerEncoder):
                config = {"backend": getattr(enc, "backend", "torch"), "precision": getattr(enc, "precision", "fp32")}
            if dimensions is not None:
                config["truncate_dim"] = int(dimensions)
                enc = truncated(enc, int(dimensions))
            if dimension is not None and dimension != enc.dimension:
                raise DimensionMismatchError(
                    f"model {enc.name!r} produces {enc.dimension}-d vectors, not {dimension}"
                )
            model_name, dim, normalize = enc.name, enc.dimension, metric == "cosine"
            spec = chunking if isinstance(chunking, ChunkSpec) else ChunkSpec(enabled=chunking is not False)
            chunker_for(enc, spec)  # a size or overlap the model cannot take fails before anything is created
            config["chunking"] = spec.as_config()
        self.storage.create_collection(
            name, model=model_name, dimension=dim, metric=metric, normalize=normalize, index_spec=index,
            config=config,
        )
        coll = self._wrap(name)
        if model_name is not None:
            coll.use_backend(backend, precision)
        return coll

    def get_collection(self, name: str) -> Collection:
        return self.collection(name, create=False)

    @staticmethod
    def exists(path: str | os.PathLike[str], *, db_url: str | None = None) -> bool:
        """Whether ``path`` already holds a store, without creating one.

        Commands that only read (search, info, check) ask first, so a mistyped ``--store``
        is "no store at ..." instead of a new, empty store. With a database URL the
        metadata lives in that database and only the index folder is looked for.
        """
        return store_exists(Path(path), db_url)

    def has_collection(self, name: str) -> bool:
        """Whether collection ``name`` exists; loads no model and creates nothing."""
        return self.storage.get_record(name) is not None

    def warm_up(self, *, default_model: bool = True) -> dict[str, int]:
        """Load the models of every collection (and, with ``default_model``, the default one).

        A server calls this before it accepts requests, so that no request pays for loading
        a model. Returns each collection's document count, for the start-up log.
        """
        if default_model:
            get_encoder(None, self.device)
        counts: dict[str, int] = {}
        for name in self.collection_names():
            try:  # one collection whose model is gone must not stop the others from being served
                coll = self.get_collection(name)
                if coll.model is not None:
                    coll.encoder  # noqa: B018 - loads and caches the model
                counts[name] = coll.count()
            except SemindexError as exc:
                log.warning("collection %r is unavailable: %s", name, exc)
        return counts

    def import_vectors(
        self,
        name: str,
        source: VectorFile | str | os.PathLike[str],
        *,
        metric: str = "cosine",
        index: str = "auto",
        progress: Callable[[int], None] | None = None,
        stats: VectorImportStats | None = None,
        build_index: Callable[[CollectionStorage], dict[str, Any] | None] | None = None,
        **open_options: Any,
    ) -> VectorImportStats:
        """Upsert precomputed vectors from a ``.npy`` or Parquet file into collection ``name``.

        ``source`` is a path (opened with :func:`open_vector_file` and ``open_options``:
        ``ids_file``, ``metadata_file``, ``id_column``, ``vector_column``, ``batch_size``)
        or a :class:`VectorFile` already opened, which lets a caller reject a bad file
        before the store exists. A missing collection is created vectors-only with the
        file's dimension, ``metric`` and ``index``. Each batch is its own transaction:
        ``stats`` (pass one in to read it after an error) counts the rows committed, and
        ``progress`` is called with each batch's row count.

        ``build_index``: called with the collection's storage once every row is committed, when
        the import changed any (``--engine ray`` passes :func:`ray_index_builder`'s, which rebuilds
        an IVF / IVF-PQ index with its adds in Ray tasks); its report lands in ``stats.sharded_index``.
        """
        vf = source if isinstance(source, VectorFile) else open_vector_file(source, **open_options)
        stats = stats if stats is not None else VectorImportStats(collection=name)
        stats.dimension = vf.dimension
        start = time.perf_counter()
        if self.has_collection(name):
            coll = self.get_collection(name)
        else:
            coll = self.create_collection(name, dimension=vf.dimension, metric=metric, index=index,
                                          vectors_only=True)
            stats.created = True
        stats.index_before = coll.index_type
        for ids, vecs, meta in vf.batches:
            res = coll.add_embeddings(ids, vecs, metadata=meta)
            stats.added += res.added
            stats.updated += res.updated
            stats.unchanged += res.unchanged
            stats.rows += len(ids)
            if progress is not None:
                progress(len(ids))
        if build_index is not None and (stats.added or stats.updated):
            stats.sharded_index = build_index(coll.storage)
        stats.index_after = coll.index_type
        stats.seconds = time.perf_counter() - start
        return stats

    def _wrap(self, name: str) -> Collection:
        # through the storage every time: it checks the collection's identity (another process may
        # have deleted and re-created the name), so a stale handle is never served
        storage = self.storage.open_collection(name)
        coll = self._open.get(name)
        if coll is None or coll.storage is not storage:
            coll = Collection(self, storage)
            self._open[name] = coll
        return coll

    def list_collections(self) -> list[CollectionInfo]:
        return [self._wrap(r.name).info() for r in self.storage.list_records()]

    def collection_names(self) -> list[str]:
        return [r.name for r in self.storage.list_records()]

    def delete_collection(self, name: str) -> None:
        self._open.pop(name, None)
        self.storage.drop_collection(name)

    def rename_collection(self, name: str, new_name: str) -> None:
        """Rename a collection in one transaction; its documents, vectors and index stay as they are."""
        self._open.pop(name, None)
        self._open.pop(new_name, None)
        self.storage.rename_collection(name, new_name)

    def swap_collections(self, a: str, b: str) -> None:
        """Exchange two collections' names in one transaction (how ``reembed`` switches in a rebuild)."""
        self._open.pop(a, None)
        self._open.pop(b, None)
        self.storage.swap_collections(a, b)


class Collection:
    """Documents, their vectors and the search over them. Thread-safe."""

    def __init__(self, store: Store, storage: CollectionStorage) -> None:
        self.store = store
        self.storage = storage
        self._backend: str | None = None  # asked for by the caller; None: auto (see use_backend)
        self._precision: str | None = None

    @property
    def backend(self) -> str | None:
        """The inference backend that built this collection's vectors (None: not recorded, i.e. torch
        for a model built before backends were recorded, or no model)."""
        return self.record.config.get("backend")

    @property
    def precision(self) -> str | None:
        """fp32, bf16 or int8 as recorded; vectors of another precision are refused."""
        return self.record.config.get("precision")

    def use_backend(self, backend: str | None = None, precision: str | None = None) -> None:
        """Encode with ``backend`` / ``precision`` from now on; checked against what the collection holds.

        An fp32 collection runs on any backend (their fp32 vectors agree); a bf16 or int8 one
        only on the backend and precision that built it. A mismatch is a ConfigError.
        """
        backends.for_collection(self.name, self.record.config, backend, precision)
        self._backend, self._precision = backend, precision

    # -- description -------------------------------------------------------

    @property
    def record(self) -> CollectionRecord:
        return self.storage.record

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def model(self) -> str | None:
        return self.record.model

    @property
    def dimension(self) -> int:
        return self.record.dimension

    @property
    def metric(self) -> str:
        return self.record.metric

    def info(self) -> CollectionInfo:
        self.storage.sync()
        return CollectionInfo(
            name=self.name,
            count=self.count(),
            model=self.model,
            dimension=self.dimension,
            metric=self.metric,
            index_type=self.storage.index.spec,
            bytes_on_disk=self.storage.disk_bytes(),
            index_bytes=self.storage.index.memory_bytes(),
            version=self.storage.applied_version,
            index_policy=self.record.index_spec,
            index_params=self.index_params,
            bytes_per_vector=round(self.storage.index.memory_bytes() / max(len(self.storage.index), 1), 1),
            index_device=getattr(self.storage.index, "device", "cpu"),
            backend=self.backend,
            precision=self.precision,
            chunks=self.storage.chunk_count(),
            chunking=self.chunking.as_config() if self.model is not None else None,
            truncate_dim=self.truncate_dim,
        )

    @property
    def index_type(self) -> str:
        """The vector index in use now ("flat", "hnsw", a FAISS factory string...); with the
        "auto" policy it changes as the collection grows."""
        return self.storage.index.spec

    @property
    def index_params(self) -> dict[str, Any]:
        """The index's tuned parameters (nlist, nprobe, efSearch, k_factor, recall@10,
        live_recall@10...), as ``info().index_params`` has them, without info's other reads."""
        return dict(self.storage.index.params)

    @property
    def encoder(self) -> Encoder:
        if self.model is None:
            raise InvalidInputError(
                f"collection {self.name!r} holds precomputed vectors: add and search with vectors"
            )
        backend, precision = backends.for_collection(self.name, self.record.config, self._backend, self._precision)
        try:
            enc = get_encoder(self.model, self.store.device, backend=backend, precision=precision)
        except ConfigError as exc:  # its model was there when it was built: a server-side problem
            raise ModelUnavailableError(f"collection {self.name!r}: its model cannot be loaded ({exc})") from exc
        return truncated(enc, self.truncate_dim)  # every encode for it has the collection's size

    @property
    def truncate_dim(self) -> int | None:
        """Matryoshka truncation: its vectors are the model's first N dims (None: the full vectors)."""
        value = self.record.config.get("truncate_dim")
        return int(value) if value is not None else None

    @property
    def chunking(self) -> ChunkSpec:
        """How this collection splits long documents (collections made before chunking existed: off)."""
        return ChunkSpec.from_config(self.record.config.get("chunking"))

    @property
    def chunker(self) -> Chunker:
        return chunker_for(self.encoder, self.chunking)

    def chunk_count(self) -> int:
        """Chunks (vectors) held: equal to :meth:`count` unless some documents were split."""
        return self.storage.chunk_count()

    def embed(self, texts: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """The vectors this collection would store for ``texts`` (its model, its normalisation).

        For RAG code that embeds with the same model elsewhere (a query, a reranking step)
        without a second copy of the model in memory: it uses the shared model cache.
        """
        return _embed_with(self.encoder, texts, batch_size=batch_size, normalize=self.record.normalize)

    def __len__(self) -> int:
        return self.count()

    # -- writes -----------------------------------------------------------------

    def add(
        self,
        documents: Iterable[str | Mapping[str, Any] | Record | Document],
        *,
        batch_size: int = 32,
        commit_every: int = 512,
        on_error: OnError = "fail",
    ) -> IngestStats:
        """Upsert documents: str, or mappings with ``text`` and optional ``id``, ``title``, ``metadata``.

        An id that exists is replaced; one whose content is unchanged is not re-encoded.
        Documents without an id get one derived from their content.
        """
        records = (to_record(d, i + 1) for i, d in enumerate(documents))
        return ingest(
            records,
            self.storage,
            self.encoder,
            commit_every=commit_every,
            batch_size=batch_size,
            on_error=on_error,
            normalize=self.record.normalize,
            chunker=self.chunker,
        )

    upsert = add

    def add_records(self, records: Iterable[Record | ReadError], **kwargs: Any) -> IngestStats:
        """Reader output (Records and ReadErrors) straight into the pipeline; what the CLI uses."""
        kwargs.setdefault("chunker", self.chunker)
        return ingest(records, self.storage, self.encoder, normalize=self.record.normalize, **kwargs)

    def add_embeddings(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        texts: Sequence[str] | None = None,
    ) -> IngestStats:
        """Bring your own vectors (float32, one row per id). Normalised when the metric is cosine."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise DimensionMismatchError(
                f"collection {self.name!r} expects vectors of dimension {self.dimension}, "
                f"got shape {tuple(vectors.shape)}"
            )
        if not np.isfinite(vectors).all():
            raise InvalidInputError("vectors contain NaN or infinity")
        return ingest_vectors(
            self.storage,
            [str(i) for i in ids],
            vectors,
            metadata=[dict(m) if m else {} for m in metadata] if metadata is not None else None,
            texts=list(texts) if texts is not None else None,
            normalize=self.record.normalize,
        )

    def delete(self, ids: Sequence[str] | str) -> int:
        """Delete by id; returns how many existed."""
        if isinstance(ids, str):
            ids = [ids]
        return self.storage.delete([str(i) for i in ids])

    # -- reads ------------------------------------------------------------------

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return self.storage.count(filter)

    def get(self, id: str) -> Document:
        docs = self.get_many([id])
        if not docs:
            raise DocumentNotFoundError(id, self.name)
        return docs[0]

    def get_many(self, ids: Sequence[str]) -> list[Document]:
        return [_doc(d) for d in self.storage.get([str(i) for i in ids])]

    def ids(self, *, offset: int = 0, limit: int = 100) -> list[str]:
        return self.storage.list_ids(offset=offset, limit=limit)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        mode: str = "dense",
        rerank: str | None = None,
        rerank_top: int = DEFAULT_RERANK_TOP,
        hybrid_weights: Sequence[float] = DEFAULT_WEIGHTS,
        rrf_k: float = DEFAULT_RRF_K,
        candidates: int | None = None,
        fusion: str = "rrf",
        alpha: float | None = None,
        level: str = "document",
        score_threshold: float | None = None,
        mmr: bool = False,
        lambda_mult: float = 0.5,
        fetch_k: int | None = None,
        context_chunks: int = 0,
    ) -> list[Hit]:
        """Top-k documents for ``query``; ``filter`` narrows the candidates before ranking.

        ``mode``: "dense" (vectors), "keyword" (BM25 over title and text) or "hybrid"
        (the top ``candidates`` — default max(k, 100) — of both, fused by reciprocal rank
        fusion with ``hybrid_weights`` (dense, keyword) and ``rrf_k``). ``rerank``: a
        cross-encoder model id or path that re-scores the top ``rerank_top``; the hits then
        carry its scores. ``fusion="convex"`` fuses hybrid's two lists by
        ``alpha * dense + (1 - alpha) * keyword`` on per-query min-max normalised scores instead.

        Long documents are searched chunk by chunk and returned once each (scored by their best
        chunk), with ``hit.chunks`` (offsets of the matching chunks) and ``hit.text`` the best
        chunk's passage; ``level="chunk"`` returns chunks instead. ``mmr`` re-selects the k hits
        from the top ``fetch_k`` (default 20) by maximal marginal relevance (``lambda_mult``:
        1 = relevance only); ``score_threshold`` drops hits scoring below it;
        ``context_chunks=n`` adds the best chunk with n neighbours each side as ``hit.context``.
        """
        return self.search_batch(
            [query], k, filter=filter, mode=mode, rerank=rerank, rerank_top=rerank_top,
            hybrid_weights=hybrid_weights, rrf_k=rrf_k, candidates=candidates, fusion=fusion, alpha=alpha,
            level=level, score_threshold=score_threshold, mmr=mmr, lambda_mult=lambda_mult, fetch_k=fetch_k,
            context_chunks=context_chunks,
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        mode: str = "dense",
        rerank: str | None = None,
        rerank_top: int = DEFAULT_RERANK_TOP,
        hybrid_weights: Sequence[float] = DEFAULT_WEIGHTS,
        rrf_k: float = DEFAULT_RRF_K,
        candidates: int | None = None,
        fusion: str = "rrf",
        alpha: float | None = None,
        level: str = "document",
        score_threshold: float | None = None,
        mmr: bool = False,
        lambda_mult: float = 0.5,
        fetch_k: int | None = None,
        context_chunks: int = 0,
    ) -> list[list[Hit]]:
        """:meth:`search` for many queries at once (encoded in one batch; repeats of earlier
        queries come from the query-embedding cache, see :func:`configure_query_cache`)."""
        return run_search(
            self.storage,
            lambda: CachedQueryEncoder(self.encoder),
            queries,
            k,
            filter,
            mode=mode,
            normalize=self.record.normalize,
            rerank=rerank,
            rerank_top=rerank_top,
            hybrid_weights=hybrid_weights,
            rrf_k=rrf_k,
            candidates=candidates,
            device=self.store.device,
            fusion=fusion,
            alpha=alpha,
            keyword=self.store.keyword,
            level=level,
            score_threshold=score_threshold,
            mmr=mmr,
            lambda_mult=lambda_mult,
            fetch_k=fetch_k,
            context_chunks=context_chunks,
        )

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, *, filter: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Search with query vectors (n, dim) instead of text."""
        check_k(k)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise DimensionMismatchError(
                f"collection {self.name!r} expects query vectors of dimension {self.dimension}, "
                f"got shape {tuple(vectors.shape)}"
            )
        if self.record.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vector_search(self.storage, vectors, k, filter)

    # -- maintenance --------------------------------------------------------------

    def check(self) -> CheckReport:
        return self.storage.check()

    def repair(self) -> CheckReport:
        return self.storage.repair()

    def checkpoint(self) -> bool:
        return self.storage.checkpoint()

    def reindex(
        self,
        index: str | None = None,
        *,
        target_recall: float | None = None,
        memory_budget: str | int | None = None,
        device: str | None = None,
    ) -> dict[str, Any]:
        """Rebuild the vector index from the stored embeddings (no re-encoding), optionally as
        another type (auto, flat, hnsw, ivf, ivfpq, sq8, binary, or a FAISS factory string such as
        "IVF256,PQ32"), tuned to ``target_recall`` (recall@10, default 0.95).
        Returns {"old": {type, params}, "new": {type, params}, "count", "seconds"}."""
        return self.storage.reindex(index, target_recall=target_recall, memory_budget=memory_budget, device=device)

    def get_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``ids`` (as searched: normalised when the metric is cosine), by id.

        Ids that do not exist are left out. What a client-side step such as the adapters'
        MMR needs without re-encoding texts (an adapter's embedding may be a paid API).
        Vectors live on chunk rows: a document's is its first chunk's (its only one unless
        the collection chunks it; vectors-only collections never do).
        """
        docs = self.storage.get([str(i) for i in ids])
        if not docs:
            return {}
        spans = self.storage.rows.spans([d.vid for d in docs])  # doc vid -> [(chunk id, start, end)], in order
        first = [(d.id, spans[d.vid][0][0]) for d in docs if spans.get(d.vid)]
        vecs = self.storage.fetch_embeddings(np.asarray([cid for _, cid in first], dtype=np.int64))
        return {doc_id: vecs[i] for i, (doc_id, _) in enumerate(first)}


@dataclass
class VectorImportStats:
    """What :meth:`Store.import_vectors` did; the counts are of committed rows."""

    collection: str
    created: bool = False  # the collection was made for this import (vectors only)
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    dimension: int = 0
    seconds: float = 0.0
    index_before: str = ""
    index_after: str = ""  # differs from index_before when the auto policy moved on
    sharded_index: dict[str, Any] | None = None  # the Ray-task IVF build's report (--engine ray), if one ran

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_filter(text: str) -> dict[str, Any]:
    """A metadata filter from its JSON text (what ``--filter`` takes), checked like any filter.

    Raises FilterError naming what is wrong, before any store is opened.
    """
    return parse_filter_json(text)


def _doc(d: StoredDoc) -> Document:
    return Document(id=d.id, text=d.text, metadata=d.metadata, title=d.title)


# -- embeddings without a store: semindex.embed and what the OpenAI-compatible endpoint needs --------


def embed(
    texts: str | Sequence[str],
    model: str | None = None,
    device: str | None = None,
    *,
    batch_size: int = 32,
    normalize: bool = True,
    dimensions: int | None = None,
) -> np.ndarray:
    """Embed ``texts`` with ``model`` (default: all-MiniLM-L6-v2) as float32 ``(n, dim)``.

    A single string gives one ``(dim,)`` vector. The model is loaded once per process
    and shared with every Store and Collection (and the server), so calling this in a
    loop costs no reloading. Rows are L2-normalised unless ``normalize=False``.
    ``dimensions=N`` gives the first N dims (re-normalised) of a Matryoshka-trained model,
    as a collection made with ``dimensions=N`` stores them; the model's own size is the
    full vector; anything else is a TruncationError (see :meth:`Store.create_collection`).
    """
    return _embed_with(_embed_encoder(model, device, dimensions), texts, batch_size=batch_size,
                       normalize=normalize)


def check_dimensions(model: str | None, dimensions: int, device: str | None = None) -> None:
    """Raise TruncationError unless ``embed(..., model, dimensions=dimensions)`` can answer.

    For callers that must refuse a request before doing any work (the OpenAI-compatible endpoint).
    """
    _embed_encoder(model, device, dimensions)


def _embed_encoder(model: str | None, device: str | None, dimensions: int | None) -> Encoder:
    enc = get_encoder(model, device)
    if dimensions is None or dimensions == enc.dimension:
        return enc
    check_truncation(enc, dimensions)
    return truncated(enc, dimensions)


def _embed_with(enc: Encoder, texts: str | Sequence[str], *, batch_size: int, normalize: bool) -> np.ndarray:
    single = isinstance(texts, str)
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InvalidInputError(f"text #{i} must be a string, got {type(t).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    vecs = enc.encode(items, batch_size=batch_size, normalize=normalize)
    return vecs[0] if single else vecs


@dataclass(frozen=True)
class ModelInfo:
    """What a server needs to describe a model: its recorded name, vector size and window."""

    name: str
    dimension: int
    max_seq_length: int
    has_tokenizer: bool


def model_info(model: str | None = None, device: str | None = None) -> ModelInfo:
    """Load (or find in the cache) ``model`` and describe it. Raises ConfigError when it cannot load."""
    enc = get_encoder(model, device)
    return ModelInfo(enc.name, enc.dimension, int(enc.max_seq_length), _tokenizer(enc) is not None)


def _tokenizer(enc: Encoder) -> Any:
    """The Hugging Face tokenizer behind a sentence-transformers encoder; None for other encoders."""
    return getattr(getattr(enc, "model", None), "tokenizer", None)


def count_tokens(texts: Sequence[str], model: str | None = None, device: str | None = None) -> list[int]:
    """Tokens the model reads per text: its tokenizer's ids, special tokens included, cut at its window.

    Encoders without a tokenizer (the ``hash`` test encoder) count words and punctuation marks.
    """
    enc = get_encoder(model, device)
    tok = _tokenizer(enc)
    if tok is None:
        return [len(_WORDISH.findall(t)) for t in texts]
    if not texts:
        return []
    ids = tok(list(texts), add_special_tokens=True, truncation=True, max_length=int(enc.max_seq_length))["input_ids"]
    return [len(x) for x in ids]


def decode_tokens(
    token_ids: Sequence[Sequence[int]], model: str | None = None, device: str | None = None
) -> list[str]:
    """Token-id inputs back to text with the model's own tokenizer (ids of another tokenizer are refused)."""
    enc = get_encoder(model, device)
    tok = _tokenizer(enc)
    if tok is None:
        raise InvalidInputError(f"model {enc.name!r} has no tokenizer: send text, not token ids")
    vocab = len(tok)
    out = []
    for i, ids in enumerate(token_ids):
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidInputError(
                f"input #{i}: token id {bad!r} is not in the vocabulary of {enc.name!r} (0..{vocab - 1}); "
                "token ids must come from this model's tokenizer, not another model's (e.g. tiktoken)"
            )
        out.append(str(tok.decode(list(ids), skip_special_tokens=True)))
    return out



def embed_records(
    records: Iterable[Record | ReadError],
    model: str | None = None,
    device: str | None = None,
    *,
    batch_size: int = 32,
    read_batch: int = 1024,
    on_error: OnError = "fail",
    progress: Callable[[int], None] | None = None,
    skipped: list[str] | None = None,
) -> Iterable[tuple[list[str], np.ndarray]]:
    """Reader output (Records and ReadErrors, as ``iter_records`` yields) -> ``(ids, vectors)`` batches.

    What ``semindex embed`` streams to a file: the same ids (given, else derived from the
    content) and the same embedding input (title then text) as ``index`` would store, read
    ``read_batch`` records at a time so memory stays flat whatever the corpus size.
    A bad record raises (``on_error="fail"``) or is skipped and described in ``skipped``.
    """
    from .indexer.pipeline import derive_id, embedding_input

    enc = get_encoder(model, device)
    ids: list[str] = []
    texts: list[str] = []
    seen = 0

    def flush() -> tuple[list[str], np.ndarray]:
        out = (list(ids), enc.encode(texts, batch_size=batch_size, normalize=True))
        ids.clear()
        texts.clear()
        return out

    for item in records:
        err = item if isinstance(item, ReadError) else None
        if not isinstance(item, ReadError) and not ((item.text and item.text.strip()) or (item.title and item.title.strip())):
            err = ReadError("record has no text", source=item.source, line=item.line)
        seen += 1
        if err is not None:
            if on_error == "fail":
                raise err
            if skipped is not None:
                skipped.append(str(err))
        elif not isinstance(item, ReadError):  # always true once err is None; narrows item to Record
            ids.append(item.id if item.id is not None else derive_id(item.text, item.title))
            texts.append(embedding_input(item.text, item.title))
        if seen >= read_batch:
            if ids:
                yield flush()
            if progress is not None:
                progress(seen)
            seen = 0
    if ids:
        yield flush()
    if progress is not None and seen:
        progress(seen)

_WORDISH = re.compile(r"\w+|[^\w\s]")
