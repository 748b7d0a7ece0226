"""semindex: semantic search over your documents.

    import semindex
    with semindex.Store("my-store") as store:
        docs = store.collection()                 # "default", all-MiniLM-L6-v2
        docs.add([{"id": "a", "text": "FAISS is a vector search library", "metadata": {"year": 2017}}])
        for hit in docs.search("similarity search", k=3, filter={"year": {"$gte": 2015}}):
            print(hit.id, hit.score, hit.text)
"""

from __future__ import annotations

from .core import (
    CacheStats,
    Collection,
    CollectionInfo,
    Document,
    Store,
    configure_query_cache,
    embed,
    query_cache_stats,
    set_model_threads,
)
from .errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    ConflictError,
    ConsistencyError,
    DimensionMismatchError,
    DocumentNotFoundError,
    FilterError,
    InvalidInputError,
    InvalidNameError,
    ModelMismatchError,
    NotFoundError,
    ReadError,
    SemindexError,
    StorageError,
)
from .finetuning import FinetuneResult, finetune
from .indexer.chunking import ChunkSpec
from .indexer.encoder import DEFAULT_MODEL, Encoder, register_encoder, unregister_encoder
from .indexer.pipeline import IngestStats
from .reembedding import ReembedResult, reembed
from .search.searcher import ChunkHit, Hit
from .storage import CheckReport

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CacheStats",
    "CheckReport",
    "ChunkHit",
    "ChunkSpec",
    "Collection",
    "CollectionExistsError",
    "CollectionInfo",
    "CollectionNotFoundError",
    "ConfigError",
    "ConflictError",
    "ConsistencyError",
    "DimensionMismatchError",
    "Document",
    "DocumentNotFoundError",
    "Encoder",
    "FilterError",
    "FinetuneResult",
    "Hit",
    "IngestStats",
    "InvalidInputError",
    "InvalidNameError",
    "ModelMismatchError",
    "NotFoundError",
    "ReadError",
    "ReembedResult",
    "SemindexError",
    "StorageError",
    "Store",
    "__version__",
    "configure_query_cache",
    "embed",
    "finetune",
    "query_cache_stats",
    "reembed",
    "register_encoder",
    "set_model_threads",
    "unregister_encoder",
]
