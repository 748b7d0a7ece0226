"""Exact top-k scoring in numpy: the one implementation behind every exact answer.

Three places need exact scores and used to carry their own copy: the store scoring a
filtered candidate set from SQL in blocks, lossy indexes rescoring their candidates
(``refine``), and auto-tuning's ground truth. Scores are "higher is better" for every
metric (negative squared distance for l2), as everywhere in semindex.
"""

from __future__ import annotations

import numpy as np


def scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """(n_queries, n_vectors) scores; l2 as -||q - v||^2 expanded, so no (nq, n, d) temporary."""
    q = np.asarray(queries, dtype=np.float32)
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "l2":
        out: np.ndarray = -((q**2).sum(1, keepdims=True) - 2 * q @ v.T + (v**2).sum(1)[None, :])
        return out
    return q @ v.T


class TopK:
    """The best ``k`` (score, id) per query over blocks pushed one after another.

    Memory stays at k + one block per query however many blocks go through, which is
    what lets a filter matching millions of rows be scored exactly.
    """

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.empty((n_queries, 0), dtype=np.float32)
        self.ids = np.empty((n_queries, 0), dtype=np.int64)

    def push(self, block_scores: np.ndarray, block_ids: np.ndarray) -> None:
        """Add a block: ``block_scores`` is (n_queries, n); ``block_ids`` is (n,) or (n_queries, n)."""
        nq = self.scores.shape[0]
        ids = np.asarray(block_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = np.broadcast_to(ids, (nq, len(ids)))
        self.scores = np.concatenate([self.scores, np.asarray(block_scores, dtype=np.float32)], axis=1)
        self.ids = np.concatenate([self.ids, ids], axis=1)
        if self.scores.shape[1] > self.k:
            part = np.argpartition(-self.scores, self.k - 1, axis=1)[:, : self.k]
            self.scores = np.take_along_axis(self.scores, part, 1)
            self.ids = np.take_along_axis(self.ids, part, 1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, <= k), best first; ties keep their push order."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.ids, order, 1)


def top_k(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` of ``vectors`` (labelled ``ids``) for each query, best first."""
    acc = TopK(len(queries), k)
    if len(ids):
        acc.push(scores(queries, vectors, metric), ids)
    return acc.result()


def pairs(scores: np.ndarray, ids: np.ndarray) -> list[list[tuple[int, float]]]:
    """FAISS-shaped (scores, ids) rows as (id, score) lists, the padding ids (-1) dropped."""
    return [
        [(int(i), float(sc)) for i, sc in zip(row_ids, row_scores) if i >= 0]
        for row_scores, row_ids in zip(scores, ids)
    ]
