"""Index specs (issue 11, classes 1, 2 and 12): a spec that can never work is refused before
anything is stored; one that cannot be trained yet never fails a write (rows stored, search exact
until there are enough vectors); a broken stored spec never takes down its store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import semindex
from semindex.errors import IndexSpecError

DIM = 16


def vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("spec", [
    "IVF0,Flat", "HNSW0", "HNSW-1", "HNSW100000", "NSG32", "IVF99999999,Flat", "IVF16,PQ5", "PQ16x40",
    "PCA64,Flat", "PCA8,HNSW32", "IVF16,NSG32", "Refine(Flat)", "IVF16_HNSW32,Flat",
])
def test_a_spec_that_can_never_work_is_refused_at_creation(tmp_path: Path, spec: str) -> None:
    store = semindex.Store(tmp_path / "s")
    with pytest.raises(IndexSpecError) as err:
        store.create_collection("c", dimension=DIM, index=spec)
    assert err.value.http_status == 422 and "\n" not in str(err.value)
    assert store.list_collections() == []
    coll = store.create_collection("ok", dimension=DIM)
    with pytest.raises(IndexSpecError):
        coll.reindex(spec)


def test_absurd_dimension_and_memory_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = semindex.Store(tmp_path / "s")
    with pytest.raises(IndexSpecError):
        store.create_collection("c", dimension=10**7)
    monkeypatch.setenv("SEMINDEX_INDEX_MEMORY", "64M")
    with pytest.raises(IndexSpecError, match="budget"):
        store.create_collection("c", dimension=1024, index="IVF65536,Flat")  # 256 MiB of centroids


@pytest.mark.parametrize("spec", ["PQ16", "IVF64,Flat", "IVF32,PQ8", "OPQ4,IVF16,PQ4", "HNSW16,PQ4", "ivf", "ivfpq", "SQ8"])
def test_an_untrainable_index_never_fails_a_write(tmp_path: Path, spec: str) -> None:
    store = semindex.Store(tmp_path / "s")
    coll = store.create_collection("c", dimension=DIM, index=spec)
    x = vecs(605)
    coll.add_embeddings([f"d{i}" for i in range(5)], x[:5])  # too few to train: stored, exact
    assert coll.count() == 5
    hits = coll.search_vectors(x[2], k=3)
    assert hits[0][0].id == "d2"
    assert coll.check().ok
    for i in range(5, 605, 50):  # grows past the training minimum: the real index takes over
        coll.add_embeddings([f"d{j}" for j in range(i, i + 50)], x[i : i + 50])
    assert coll.count() == 605
    assert not coll.info().index_params.get("pending")
    if spec != "ivfpq":  # trained on its first 5 vectors (1-bit codes) until it grows 4x past 1000
        assert coll.search_vectors(x[300], k=1)[0][0].id == "d300"
    store.close()
    again = semindex.Store(tmp_path / "s").collection("c")
    assert again.count() == 605 and again.check().ok


def test_pca_collection_checks_clean(tmp_path: Path) -> None:
    coll = semindex.Store(tmp_path / "s").create_collection("c", dimension=DIM, index="PCA4,Flat")
    x = vecs(300)
    coll.add_embeddings([f"d{i}" for i in range(300)], x)
    assert coll.check().ok
    assert coll.search_vectors(x[7], k=1)[0][0].id == "d7"  # rescored exactly from SQL


def test_a_broken_stored_spec_never_takes_down_the_store(tmp_path: Path) -> None:
    """A spec committed by an older semindex (IVF0, an absurd nlist): listing, the other
    collections, info, check, delete and reindex keep working."""
    path = tmp_path / "s"
    store = semindex.Store(path)
    good = store.create_collection("good", dimension=DIM)
    good.add_embeddings(["a"], vecs(1))
    bad = store.create_collection("bad", dimension=DIM)
    bad.add_embeddings([f"d{i}" for i in range(5)], vecs(5))
    store.close()
    engine = sa.create_engine(f"sqlite:///{path / 'semindex.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE collections SET index_spec='IVF99999999,Flat' WHERE name='bad'"))
    engine.dispose()
    for f in (path / "indexes").rglob("*"):
        if f.is_file():
            f.unlink()  # no checkpoint: the next open builds from the stored spec
    store = semindex.Store(path)
    assert {c.name for c in store.list_collections()} == {"good", "bad"}
    bad = store.collection("bad")
    assert bad.count() == 5 and bad.info().index_params.get("pending")
    assert bad.search_vectors(vecs(5)[1], k=1)[0][0].id == "d1"
    assert bad.check().ok
    bad.reindex("flat")
    assert bad.info().index_type == "flat"
    store.delete_collection("bad")
    assert [c.name for c in store.list_collections()] == ["good"]


def test_a_checkpoint_never_undoes_another_process_reindex(tmp_path: Path) -> None:
    """`semindex reindex --index hnsw` while `serve` runs: the server's old flat index must not be
    written back over it at shutdown, and the server picks up the new index (issue 11, #11)."""
    path = tmp_path / "s"
    server = semindex.Store(path)
    coll = server.create_collection("c", dimension=DIM, index="flat")
    x = vecs(300)
    coll.add_embeddings([f"d{i}" for i in range(200)], x[:200])
    other = semindex.Store(path)
    other.collection("c").reindex("hnsw")
    other.close()
    coll.add_embeddings([f"d{i}" for i in range(200, 300)], x[200:])  # the server keeps writing
    server.close()  # checkpoints on close
    fresh = semindex.Store(path).collection("c")
    assert fresh.info().index_type == "hnsw"
    assert fresh.count() == 300 and fresh.check().ok
    assert fresh.search_vectors(x[250], k=1)[0][0].id == "d250"
