"""The library end to end with the real default model: the RAG user's view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semindex
from semindex.storage import store as store_mod
from tests.support import sample_docs

TARGETED = [
    ("how do black holes form", "astro-black-holes"),
    ("recipe for sourdough bread", "cook-sourdough"),
    ("write-ahead log in sqlite", "db-sqlite-wal"),
    ("how do vaccines work", "med-vaccines"),
    ("offside rule football", "sport-offside"),
    ("git branch merge", "prog-git-branches"),
    ("attract bees to the garden", "garden-bees"),
]


@pytest.fixture
def sample(store: semindex.Store) -> semindex.Collection:
    coll = store.collection()
    stats = coll.add(sample_docs())
    assert stats.added == len(sample_docs())
    return coll


def test_targeted_queries_rank_their_document_first(sample: semindex.Collection) -> None:
    for query, expected in TARGETED:
        hits = sample.search(query, k=5)
        assert hits[0].id == expected, (query, [h.id for h in hits])
        assert hits[0].score > hits[1].score
        assert hits[0].metadata["topic"]
        assert "black" not in query or "black hole" in hits[0].text.lower()


def test_batch_search_matches_single_search(sample: semindex.Collection) -> None:
    queries = [q for q, _ in TARGETED]
    batch = sample.search_batch(queries, k=3)
    assert [r[0].id for r in batch] == [e for _, e in TARGETED]
    single = sample.search(queries[2], k=3)
    assert [h.id for h in single] == [h.id for h in batch[2]]
    assert single[0].score == pytest.approx(batch[2][0].score, abs=1e-5)


def test_collection_records_its_model_and_refuses_another(store: semindex.Store, tiny_bert: Path,
                                                          sample: semindex.Collection) -> None:
    assert sample.model == semindex.DEFAULT_MODEL
    assert sample.dimension == 384 and sample.metric == "cosine"
    # aliases of the default are the same model
    assert store.collection("default", model="all-MiniLM-L6-v2").count() == len(sample_docs())
    with pytest.raises(semindex.ModelMismatchError, match="all-MiniLM-L6-v2"):
        store.collection("default", model=str(tiny_bert))


def test_upsert_replaces_and_unchanged_is_not_reencoded(sample: semindex.Collection,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = sample.encoder.encode

    def spy(texts: Any, **kw: Any) -> Any:
        calls.append(len(texts))
        return real(texts, **kw)

    monkeypatch.setattr(sample.encoder, "encode", spy)
    docs = sample_docs()
    stats = sample.add(docs)
    assert (stats.added, stats.updated, stats.unchanged) == (0, 0, len(docs))
    assert calls == []  # nothing re-encoded

    changed = dict(docs[0], title="Volcanoes", text="Completely new text about volcanoes erupting lava and ash.")
    meta_only = dict(docs[1], metadata={**docs[1]["metadata"], "year": 1999})
    stats = sample.add([changed, meta_only])
    assert (stats.added, stats.updated, stats.unchanged) == (0, 2, 0)
    assert calls == [1]  # only the changed text was encoded
    assert sample.count() == len(docs)
    assert sample.get(docs[1]["id"]).metadata["year"] == 1999
    hits = sample.search("volcano eruption lava", k=1)
    assert hits[0].id == docs[0]["id"]
    assert "volcanoes" in hits[0].text
    # the old content is gone from the index: its query no longer finds it first
    assert sample.search("how do black holes form", k=1)[0].id != docs[0]["id"]


def test_delete_get_count_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with semindex.Store(path) as store:
        coll = store.collection("notes")
        coll.add(sample_docs())
        assert coll.delete(["astro-black-holes", "nope"]) == 1
        with pytest.raises(semindex.DocumentNotFoundError):
            coll.get("astro-black-holes")
        assert coll.count() == len(sample_docs()) - 1
        assert coll.count({"topic": "astronomy"}) == 4
    with semindex.Store(path) as store:
        coll = store.get_collection("notes")
        assert coll.count() == len(sample_docs()) - 1
        hits = coll.search("how do black holes form", k=40)
        assert "astro-black-holes" not in {h.id for h in hits}
        assert len(hits) == len(sample_docs()) - 1
        assert coll.check().ok
        with pytest.raises(semindex.CollectionNotFoundError):
            store.get_collection("missing")


def test_ids_derived_from_content_are_stable(store: semindex.Store) -> None:
    coll = store.collection("anon")
    first = coll.add(["the quick brown fox", "jumps over the lazy dog"])
    again = coll.add(["the quick brown fox", "jumps over the lazy dog"])
    assert first.added == 2 and again.unchanged == 2 and coll.count() == 2
    assert sorted(first.ids) == sorted(again.ids)


def test_filters_in_search(sample: semindex.Collection) -> None:
    hits = sample.search("bread", k=10, filter={"topic": "cooking"})
    assert len(hits) == 5 and {h.metadata["topic"] for h in hits} == {"cooking"}
    assert hits[0].id == "cook-sourdough"
    hits = sample.search("anything", k=10, filter={"$and": [{"topic": {"$in": ["music", "sports"]}},
                                                            {"year": {"$gte": 2020}}]})
    assert hits and all(h.metadata["topic"] in ("music", "sports") and h.metadata["year"] >= 2020 for h in hits)
    assert sample.search("anything", k=5, filter={"topic": "nonexistent"}) == []
    with pytest.raises(semindex.FilterError):
        sample.search("x", filter={"year": {"$near": 3}})


@pytest.mark.parametrize("exact_max", [4096, 0], ids=["exact-scoring", "faiss-idselector"])
def test_filter_at_one_percent_selectivity_returns_k_hits(store: semindex.Store, exact_max: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "EXACT_MAX", exact_max)
    rng = np.random.default_rng(0)
    n, dim = 20_000, 64
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    coll = store.create_collection("vecs", dimension=dim)
    meta = [{"bucket": i % 100, "rare": i % 1000 == 0} for i in range(n)]
    coll.add_embeddings([f"d{i}" for i in range(n)], vecs, metadata=meta)
    q = rng.standard_normal((3, dim)).astype(np.float32)
    res = coll.search_vectors(q, k=50, filter={"bucket": 7})  # 1% = 200 matches
    assert [len(r) for r in res] == [50, 50, 50]
    assert all(h.metadata["bucket"] == 7 for r in res for h in r)
    # ground truth: exact top-50 among the matching rows
    idx = np.array([i for i in range(n) if i % 100 == 7])
    normed = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    truth = [set(f"d{idx[j]}" for j in np.argsort(-(qn[i] @ normed[idx].T))[:50]) for i in range(3)]
    assert [set(h.id for h in r) for r in res] == truth
    # fewer matches than k: all of them
    res = coll.search_vectors(q[:1], k=50, filter={"rare": True})
    assert len(res[0]) == 20


def test_add_embeddings_validates_and_upserts(store: semindex.Store) -> None:
    coll = store.create_collection("byo", dimension=8)
    assert coll.model is None
    v = np.eye(8, dtype=np.float32)
    coll.add_embeddings([f"e{i}" for i in range(8)], v, texts=[f"text {i}" for i in range(8)])
    assert coll.search_vectors(v[3], k=1)[0][0].id == "e3"
    with pytest.raises(semindex.DimensionMismatchError):
        coll.add_embeddings(["x"], np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(semindex.InvalidInputError):
        coll.add_embeddings(["x"], np.full((1, 8), np.nan, dtype=np.float32))
    with pytest.raises(semindex.InvalidInputError):
        coll.search("text query")  # no model
    again = coll.add_embeddings(["e0", "e1"], v[:2])
    assert again.unchanged == 2
    moved = coll.add_embeddings(["e0"], v[5:6])
    assert moved.updated == 1
    assert {h.id for h in coll.search_vectors(v[5], k=2)[0]} == {"e0", "e5"}


def test_plain_bert_checkpoint_with_mean_pooling(store: semindex.Store, tiny_bert: Path) -> None:
    coll = store.collection("bert", model=str(tiny_bert))
    assert coll.dimension == 32
    docs = sample_docs()[:10]
    coll.add(docs)
    hits = coll.search(docs[3]["title"] + " " + docs[3]["text"], k=3)
    assert hits[0].id == docs[3]["id"]  # a document is its own nearest neighbour
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(semindex.ModelMismatchError):
        store.collection("bert", model="all-MiniLM-L6-v2")


def test_invalid_names_and_k(store: semindex.Store, sample: semindex.Collection) -> None:
    for bad in ["../x", "/abs", "a\x00b", "", "x" * 65, ".hidden"]:
        with pytest.raises(semindex.InvalidNameError):
            store.collection(bad)
    for k in [0, 1001, -1]:
        with pytest.raises(semindex.InvalidInputError):
            sample.search("x", k=k)
    with pytest.raises(semindex.InvalidInputError):
        sample.search("   ")


def test_public_api_is_curated() -> None:
    for name in semindex.__all__:
        assert hasattr(semindex, name), name
    assert issubclass(semindex.FilterError, semindex.SemindexError)
