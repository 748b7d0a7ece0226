"""The library end to end: the RAG user's view.

Ranking quality and the recorded model name need the real default model (slow lane); the
rest runs on the fake encoder. Store mechanics (upserts, deletes, reopening) are in
tests/storage/test_store.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import semindex
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


@pytest.mark.slow
def test_targeted_queries_rank_their_document_first(sample: semindex.Collection) -> None:
    for query, expected in TARGETED:
        hits = sample.search(query, k=5)
        assert hits[0].id == expected, (query, [h.id for h in hits])
        assert hits[0].score > hits[1].score
        assert hits[0].metadata["topic"]
        assert "black" not in query or "black hole" in hits[0].text.lower()


@pytest.mark.slow
def test_batch_search_matches_single_search(sample: semindex.Collection) -> None:
    queries = [q for q, _ in TARGETED]
    batch = sample.search_batch(queries, k=3)
    assert [r[0].id for r in batch] == [e for _, e in TARGETED]
    single = sample.search(queries[2], k=3)
    assert [h.id for h in single] == [h.id for h in batch[2]]
    assert single[0].score == pytest.approx(batch[2][0].score, abs=1e-5)


def test_batch_search_is_single_search_repeated(sample: semindex.Collection) -> None:
    """Fast-lane twin of the test above without the ranking-quality part."""
    queries = [q for q, _ in TARGETED]
    batch = sample.search_batch(queries, k=3)
    for query, hits in zip(queries, batch):
        single = sample.search(query, k=3)
        assert [h.id for h in single] == [h.id for h in hits]
        assert [h.score for h in single] == pytest.approx([h.score for h in hits], abs=1e-5)


@pytest.mark.slow
def test_collection_records_its_model_and_refuses_another(store: semindex.Store, tiny_bert: Path,
                                                          sample: semindex.Collection) -> None:
    assert sample.model == semindex.DEFAULT_MODEL
    assert sample.dimension == 384 and sample.metric == "cosine"
    # aliases of the default are the same model
    assert store.collection("default", model="all-MiniLM-L6-v2").count() == len(sample_docs())
    with pytest.raises(semindex.ModelMismatchError, match="all-MiniLM-L6-v2"):
        store.collection("default", model=str(tiny_bert))


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


@pytest.mark.slow  # loads torch and transformers
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
