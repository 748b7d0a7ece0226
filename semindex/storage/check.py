"""``check``: does what a fresh process would load agree with SQL?

The report compares three things as of one SQL snapshot: the rows (the truth), the
on-disk checkpoint plus the change-log replay (what the next process will have), and
the live in-memory index. It never trusts memory alone, because a bug or a crash that
corrupts the checkpoint would otherwise stay invisible until the next restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StorageError
from .checkpoint import load_checkpoint_index, read_manifest
from .vectors import VectorIndex, build_index

VECTOR_ATOL = 1e-4  # float32 round trips through FAISS are exact; this only absorbs rescaling noise


@dataclass
class CheckReport:
    collection: str
    rows: int  # documents
    vectors: int
    chunks: int = -1  # chunk rows in SQL (a document has one or more); -1 where not counted
    missing_in_index: list[str] = field(default_factory=list)
    extra_in_index: list[int] = field(default_factory=list)
    bad_embeddings: list[str] = field(default_factory=list)
    mismatched_vectors: list[str] = field(default_factory=list)
    checkpoint: str = "ok"

    @property
    def ok(self) -> bool:
        return not (
            self.missing_in_index
            or self.extra_in_index
            or self.bad_embeddings
            or self.mismatched_vectors
            or self.checkpoint.startswith("unreadable")
        )

    def summary(self) -> str:
        if self.ok:
            return (
                f"{self.collection}: ok ({self.rows} documents, {self.vectors} vectors, "
                f"checkpoint {self.checkpoint})"
            )  # vectors == chunks when ok; documents < vectors only for chunked documents
        parts = []
        if self.missing_in_index:
            parts.append(f"{len(self.missing_in_index)} documents with a chunk without a vector (e.g. {self.missing_in_index[:3]})")
        if self.extra_in_index:
            parts.append(f"{len(self.extra_in_index)} vectors without a row (e.g. {self.extra_in_index[:3]})")
        if self.bad_embeddings:
            parts.append(f"{len(self.bad_embeddings)} documents with a malformed chunk embedding (e.g. {self.bad_embeddings[:3]})")
        if self.mismatched_vectors:
            parts.append(
                f"{len(self.mismatched_vectors)} index vectors differ from SQL (e.g. {self.mismatched_vectors[:3]})"
            )
        if self.checkpoint.startswith("unreadable"):
            parts.append(f"checkpoint {self.checkpoint}")
        return f"{self.collection}: DRIFT: " + "; ".join(parts)


def probe_checkpoint(folder: Path, spec: str, dimension: int, metric: str) -> tuple[VectorIndex, int, str]:
    """Load the on-disk checkpoint as a fresh process would: (index, its version, status text).

    No checkpoint, or an unreadable one, gives an empty index at version 0, so replaying
    the whole change log over it is a rebuild from SQL, which is what opening would do.
    """
    try:
        manifest = read_manifest(folder)
        if manifest is None:
            return empty_probe(dimension, metric), 0, "none (rebuilt from SQL on open)"
        index = load_checkpoint_index(folder, manifest, dimension, metric)
    except StorageError as exc:
        return empty_probe(dimension, metric), 0, f"unreadable: {exc}"
    return index, manifest.version, f"v{manifest.version}"


def empty_probe(dimension: int, metric: str) -> VectorIndex:
    """What the change log is replayed into when there is no checkpoint to start from: an exact
    index, which any spec can be compared with (a trainable one could not take the replay before
    it is trained, and a broken stored spec must not make `check` fail)."""
    return build_index("flat", dimension, metric)


def compare_ids(
    report: CheckReport,
    row_vids: Mapping[int, str],
    indexes: Sequence[VectorIndex],
) -> list[int]:
    """Rows without a vector and vectors without a row, in any of ``indexes``; returns the vids
    the first index (the probe) shares with SQL, for the vector spot-check."""
    first: set[int] = set()
    missing: set[str] = set()
    extra: set[int] = set()
    for i, index in enumerate(indexes):
        ids = set(index.ids().tolist())
        if i == 0:
            first = ids
            report.vectors = len(ids)
        missing.update(row_vids[v] for v in row_vids.keys() - ids)
        extra.update(ids - row_vids.keys())
    report.missing_in_index = sorted(missing)
    report.extra_in_index = sorted(extra)
    return sorted(first & row_vids.keys())


def pick_sample(common: Sequence[int], sample: int) -> np.ndarray:
    """A fixed-seed sample of vids, so two checks of the same store look at the same vectors."""
    if not common:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(0)
    return rng.choice(np.array(common, dtype=np.int64), size=min(sample, len(common)), replace=False)


def compare_vectors(
    report: CheckReport,
    pick: np.ndarray,
    reconstructed: np.ndarray | None,
    blobs: Mapping[int, bytes],
    row_vids: Mapping[int, str],
    dimension: int,
) -> None:
    """Index vectors that differ from the stored embedding (lossy indexes cannot reconstruct: skipped)."""
    if reconstructed is None:
        return
    expected = 4 * dimension
    for vid, vec in zip(pick.tolist(), reconstructed):
        blob = blobs.get(vid)
        if blob is None or len(blob) != expected:
            continue  # counted as a bad embedding already
        if not np.allclose(np.frombuffer(blob, dtype="<f4"), vec, atol=VECTOR_ATOL):
            report.mismatched_vectors.append(row_vids[vid])
