"""Query -> ranked hits.

Backends implement the batch call; the single-query call is built on it.
Dense search encodes the queries once and asks storage for the top k per
query, with the filter applied before the vector search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..indexer.encoder import Encoder
from ..storage.store import CollectionStorage, StoredDoc

MAX_K = 1000


@dataclass
class Hit:
    """One ranked match. ``score`` is higher-is-better (cosine similarity for the default metric)."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata}
        if self.title is not None:
            out["title"] = self.title
        return out


def to_hit(doc: StoredDoc, score: float) -> Hit:
    return Hit(id=doc.id, score=float(score), text=doc.text, metadata=doc.metadata, title=doc.title)


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return k


def check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise InvalidInputError("queries must be a list of strings, not one string")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str) or not q.strip():
            raise InvalidInputError(f"query #{i} is empty")
    return out


def dense_search(
    storage: CollectionStorage,
    encoder: Encoder,
    queries: Sequence[str],
    k: int,
    filter: Mapping[str, Any] | None = None,
    *,
    normalize: bool = True,
) -> list[list[Hit]]:
    queries = check_queries(queries)
    check_k(k)
    if not queries:
        return []
    vecs = encoder.encode(queries, normalize=normalize)
    return vector_search(storage, vecs, k, filter)


def vector_search(
    storage: CollectionStorage,
    vectors: np.ndarray,
    k: int,
    filter: Mapping[str, Any] | None = None,
) -> list[list[Hit]]:
    check_k(k)
    results = storage.search(np.asarray(vectors, dtype=np.float32), k, filter)
    return [[to_hit(doc, score) for doc, score in res] for res in results]
