"""``CollectionStorage.write(in_transaction=...)``: a caller's record committed with the rows or not at all.

The Ray engine records each shard as committed (with its added/updated counts) this way; a
separate statement after the write left a window where a killed driver had the shard marked
committed with zero counts, so the resumed run's summary came out one shard short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import semindex
from semindex.storage import DocWrite


def docs(*ids: str) -> list[DocWrite]:
    rng = np.random.default_rng(0)
    return [DocWrite(doc_id=i, text=f"text {i}", title=None, metadata={}, content_hash=f"h-{i}",
                     embedding=rng.standard_normal(8).astype(np.float32)) for i in ids]


def test_the_callback_sees_the_counts_inside_the_write_transaction(tmp_path: Path) -> None:
    with semindex.Store(tmp_path / "s") as store:
        coll = store.collection("c", dimension=8)
        seen: list[tuple[int, int, int, int]] = []

        def record(conn: Any, res: Any) -> None:
            stored = conn.execute(sa.text("SELECT count(*) FROM documents")).scalar()
            seen.append((res.added, res.updated, res.unchanged, int(stored)))

        coll.storage.write(docs("a", "b"), in_transaction=record)
        coll.storage.write(docs("b", "c"), in_transaction=record)
        assert seen == [(2, 0, 0, 2), (1, 0, 1, 3)]  # counts known, the rows visible, before the commit


def test_a_failing_callback_rolls_the_write_back(tmp_path: Path) -> None:
    with semindex.Store(tmp_path / "s") as store:
        coll = store.collection("c", dimension=8)
        coll.storage.write(docs("a"))
        version = coll.storage.current_version()

        def refuse(conn: Any, res: Any) -> None:
            raise RuntimeError("the caller's record could not be written")

        with pytest.raises(RuntimeError):
            coll.storage.write(docs("b", "c"), in_transaction=refuse)
        assert coll.count() == 1 and coll.storage.current_version() == version
        assert [h.id for h in coll.search_vectors(docs("b")[0].embedding, k=5)[0]] == ["a"]
