"""Store behaviour through the library: upserts, deletes, reopening, content ids, filters, own vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semindex
from semindex.storage import store as store_mod
from tests.support import sample_docs


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


@pytest.mark.slow  # 20,000 vectors, twice
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