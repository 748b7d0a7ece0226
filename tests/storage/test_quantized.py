"""The memory-saving indexes: ``sq8`` (8-bit codes) and ``binary`` (sign bits), both rescored exactly.

What a user relies on: the scores they see are the metric's real scores (not code distances),
filters and deletes behave as on flat, the index file round-trips (binary's thresholds with it),
a damaged file is rebuilt from SQL, and ``auto`` picks them only when a memory budget forces it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import semindex
from semindex.storage import autoindex
from semindex.storage.vectors import BinaryIndex, build_index, load_index
from semindex.storage.vectors.binary import code_bytes

DIM = 48


def embeddings(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Clustered, normalised and deliberately off-centre, as sentence embeddings are."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, dim)) + 1.5  # every dimension mostly positive
    x = centers[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> list[set[int]]:
    return [set(np.argsort(-(x @ v))[:k].tolist()) for v in q]


@pytest.mark.parametrize("spec", ["sq8", "binary"])
def test_scores_are_exact_and_recall_holds_with_rescoring(spec: str) -> None:
    x = embeddings(4000)
    idx = build_index(spec, DIM, "cosine")
    idx.refine_source = lambda ids: x[ids]
    idx.add(np.arange(len(x)), x)
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 100, replace=False)] + 0.05 * rng.standard_normal((100, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, ids = idx.search(q, 10)
    for qi in range(len(q)):  # rescored: the score is the cosine itself, in order
        assert np.allclose(scores[qi], x[ids[qi]] @ q[qi], atol=1e-5)
        assert list(scores[qi]) == sorted(scores[qi], reverse=True)
    truth = exact_top(x, q, 10)
    recall = np.mean([len(t & set(ids[i].tolist())) / 10 for i, t in enumerate(truth)])
    assert recall >= (0.99 if spec == "sq8" else 0.9), recall


def test_binary_codes_are_centred_so_every_bit_carries_information() -> None:
    x = embeddings(2000)  # raw signs would be nearly all 1: useless for ranking
    idx = BinaryIndex(DIM, "cosine")
    idx.train(x)
    bits = np.unpackbits(idx.encode(x), axis=1)[:, :DIM]
    share = bits.mean(axis=0)
    assert np.all((share > 0.4) & (share < 0.6)), share
    assert (x > 0).mean() > 0.85


@pytest.mark.parametrize("dim", [30, 48])  # 30: codes padded to whole bytes
def test_binary_round_trip_filters_deletes_and_bytes_per_vector(tmp_path: Path, dim: int) -> None:
    x = embeddings(1000, dim)
    idx = build_index("binary", dim, "cosine")
    idx.refine_source = lambda ids: x[ids]
    idx.add(np.arange(1000), x)
    assert idx.memory_bytes() == 1000 * (code_bytes(dim) + 24)
    allowed = np.arange(200, 300)
    _, got = idx.search(x[:5], 10, allowed=allowed)
    assert np.isin(got[got >= 0], allowed).all() and (got >= 0).sum() == 50
    assert idx.remove(np.array([0, 1, 2])) == 3 and len(idx) == 997
    path = tmp_path / "b.faiss"
    idx.save(path)
    back = load_index(path, "binary", dim, "cosine", params=idx.params)
    back.refine_source = idx.refine_source
    assert len(back) == 997 and back.is_trained
    s1, i1 = idx.search(x[3:20], 5)
    s2, i2 = back.search(x[3:20], 5)
    assert (i1 == i2).all() and np.allclose(s1, s2)
    assert 0 not in set(back.ids().tolist())


def test_binary_without_a_refine_source_ranks_by_hamming() -> None:
    x = embeddings(500)
    idx = build_index("binary", DIM, "cosine")
    idx.add(np.arange(500), x)
    scores, ids = idx.search(x[:3], 4)
    assert (ids[:, 0] == np.arange(3)).all() and (scores[:, 0] == 0).all()  # itself at Hamming 0
    assert (scores <= 0).all() and scores.shape == (3, 4)
    scores, ids = idx.search(x[:1], 600)  # more than it holds: padded, like every index
    assert (ids[0, 500:] == -1).all() and np.isneginf(scores[0, 500:]).all()


@pytest.mark.parametrize("spec", ["sq8", "binary"])
def test_store_collection_of_each_type_end_to_end(tmp_path: Path, spec: str) -> None:
    x = embeddings(3000)
    with semindex.Store(tmp_path / "s") as store:
        coll = store.create_collection("q", dimension=DIM, index=spec, metric="cosine")
        coll.add_embeddings([f"d{i}" for i in range(3000)], x, metadata=[{"g": i % 5} for i in range(3000)])
        coll.reindex(spec)
        info = coll.info()
        assert info.index_type == spec and info.count == 3000
        assert "k_factor" in info.index_params and "recall@10" in info.index_params
        assert "thresholds" not in info.index_params  # kept in the index file, not in every API answer
        hits = coll.search_vectors(x[7], k=5, filter={"g": 2})[0]
        assert all(h.metadata["g"] == 2 for h in hits) and len(hits) == 5
        top = coll.search_vectors(x[11], k=3)[0]
        assert top[0].id == "d11" and top[0].score == pytest.approx(1.0, abs=1e-5)
        coll.delete(["d11"])
        assert "d11" not in [h.id for h in coll.search_vectors(x[11], k=10)[0]]
        coll.checkpoint()
    with semindex.Store(tmp_path / "s") as store:
        coll = store.get_collection("q")
        assert coll.info().index_type == spec
        assert coll.search_vectors(x[12], k=1)[0][0].id == "d12"
        assert coll.check().ok
    # a damaged index file is rebuilt from the rows in SQL, not trusted and not fatal
    for f in (tmp_path / "s" / "indexes").rglob("*.faiss"):
        f.write_bytes(b"not an index")
    with semindex.Store(tmp_path / "s") as store:
        coll = store.get_collection("q")
        assert coll.search_vectors(x[12], k=1)[0][0].id == "d12"
        assert coll.info().index_type == spec


def test_an_index_trained_on_its_first_small_batch_is_rebuilt_as_the_collection_grows(tmp_path: Path) -> None:
    x = embeddings(6000)
    with semindex.Store(tmp_path / "s") as store:
        coll = store.create_collection("g", dimension=DIM, index="binary")
        coll.add_embeddings(["d0", "d1"], x[:2])  # thresholds learnt from two vectors
        coll.add_embeddings([f"d{i}" for i in range(2, 6000)], x[2:6000])
        assert coll.info().index_type == "binary"
        assert int(coll.info().index_params["built_for"]) >= 4000  # rebuilt from a real sample


def test_auto_picks_the_quantized_scans_only_under_a_tight_budget(tmp_path: Path) -> None:
    assert autoindex.choose_spec(60_000, 384, 8 << 30).spec == "hnsw"
    assert autoindex.choose_spec(60_000, 384, 30 << 20).spec == "sq8"
    assert autoindex.choose_spec(60_000, 384, 6 << 20).spec == "binary"
    assert autoindex.estimate_bytes("binary", 1000, 384) < autoindex.estimate_bytes("sq8", 1000, 384) / 5
    x = embeddings(3000)
    with semindex.Store(tmp_path / "s") as store:
        coll = store.create_collection("a", dimension=DIM, index="auto")
        coll.add_embeddings([f"d{i}" for i in range(3000)], x)
        budget = autoindex.estimate_bytes("sq8", 3000, DIM) + 1000  # flat does not fit, sq8 does
        coll.reindex("auto", memory_budget=budget)
        assert coll.info().index_type == "sq8"
        assert coll.search_vectors(x[5], k=1)[0][0].id == "d5"
