"""Chunked collections through the library: documents in, documents out, chunks in between.

Runs on the hashing encoder (window 256 tokens, like the default model), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import semindex
from semindex import ChunkSpec
from semindex.errors import ConfigError

MODEL = "hash:64"


def long_doc(topic: str, n: int = 700, extra: str = "") -> str:
    """About n/2 sentences, words shared by every document, the topic only near the end."""
    words = " ".join(f"common{i % 50} filler{i % 13}." for i in range(n))
    return f"{words} {extra} The {topic} appears here at the end. {topic} {topic}."


@pytest.fixture
def coll(store: Any) -> Any:
    return store.collection("long", model=MODEL)


def test_a_long_document_is_chunked_and_every_span_slices_back(coll: Any) -> None:
    stats = coll.add([{"id": "a", "title": "A title", "text": long_doc("zebra")},
                      {"id": "b", "text": "a short one about giraffes"}])
    assert (stats.added, coll.count(), len(coll)) == (2, 2, 2)
    assert stats.chunks == coll.chunk_count() > 2
    info = coll.info()
    assert info.count == 2 and info.chunks == stats.chunks and info.chunking["enabled"] is True
    doc = coll.get("a").text
    for h in coll.search("common3 filler4", k=50, level="chunk"):
        c = h.chunks[0]
        if h.id == "a":
            assert doc[c.start : c.end] == h.text
    assert coll.check().ok


def test_search_returns_documents_once_with_their_best_chunk(coll: Any) -> None:
    coll.add([{"id": f"d{i}", "text": long_doc(f"topic{i}")} for i in range(6)])
    hits = coll.search("topic3 appears here", k=3)
    assert len({h.id for h in hits}) == 3 and hits[0].id == "d3"
    best = hits[0].chunks[0]
    assert "topic3" in hits[0].text and hits[0].text == coll.get("d3").text[best.start : best.end]
    assert best.index == max(c.index for c in hits[0].chunks) or best.score >= max(c.score for c in hits[0].chunks)
    assert [c.score for c in hits[0].chunks] == sorted((c.score for c in hits[0].chunks), reverse=True)


def test_k_distinct_documents_even_when_one_document_owns_every_top_chunk(coll: Any) -> None:
    many = " ".join(["needle haystack."] * 2000)  # ~20 chunks, all alike
    coll.add([{"id": "big", "text": many}] + [{"id": f"s{i}", "text": f"needle {i}"} for i in range(5)])
    assert coll.chunk_count() > 20
    for mode in ("dense", "keyword", "hybrid"):
        hits = coll.search("needle haystack", k=4, mode=mode)
        assert len(hits) == 4 and len({h.id for h in hits}) == 4, mode


def test_filters_apply_to_document_metadata_before_the_vector_search(coll: Any) -> None:
    coll.add([{"id": f"d{i}", "text": long_doc("shared", extra=f"tag{i}"), "metadata": {"g": i % 3}}
              for i in range(9)])
    for mode in ("dense", "keyword", "hybrid"):
        hits = coll.search("shared appears", k=3, filter={"g": 1}, mode=mode)
        assert sorted(h.id for h in hits) == ["d1", "d4", "d7"], mode


def test_upsert_replaces_all_chunks_and_delete_removes_them(coll: Any) -> None:
    coll.add([{"id": "a", "text": long_doc("old")}])
    n_old = coll.chunk_count()
    assert coll.search("old appears", k=1)[0].id == "a"
    again = coll.add([{"id": "a", "text": long_doc("old")}])
    assert again.unchanged == 1 and again.chunks == 0  # not re-encoded
    coll.add([{"id": "a", "text": "now short and new"}])
    assert coll.chunk_count() == 1 < n_old
    assert coll.search("old appears", k=5, mode="keyword") == []  # no old passage stays searchable
    assert coll.check().ok
    coll.delete(["a"])
    assert (coll.count(), coll.chunk_count()) == (0, 0) and coll.check().ok


def test_truncation_stays_available_and_is_counted(store: Any) -> None:
    c = store.collection("trunc", model=MODEL, chunking=False)
    stats = c.add([{"id": "a", "text": long_doc("x")}, {"id": "b", "text": "short"}])
    assert (stats.truncated, c.chunk_count(), stats.chunks) == (1, 2, 2)
    assert c.info().chunking == {"enabled": False, "size": None, "overlap": None}


def test_chunk_size_and_overlap_are_configurable_and_checked(store: Any) -> None:
    c = store.collection("small", model=MODEL, chunking=ChunkSpec(size=32, overlap=4))
    c.add([{"id": "a", "text": long_doc("x", n=100)}])
    assert c.chunk_count() >= 6
    with pytest.raises(ConfigError):
        store.collection("toobig", model=MODEL, chunking=ChunkSpec(size=10_000))
    assert not store.has_collection("toobig")


def test_context_mmr_threshold(coll: Any) -> None:
    coll.add([{"id": "a", "text": long_doc("alpha")}, {"id": "b", "text": long_doc("beta")},
              {"id": "c", "text": "alpha alpha alpha"}])
    short, = [x for x in coll.search("alpha appears here", k=3, context_chunks=1) if x.id == "c"]
    assert short.context == short.text == "alpha alpha alpha"  # a one-chunk document is its own context
    h, = [x for x in coll.search("alpha appears here", k=3, context_chunks=1) if x.id == "a"]
    assert h.context is not None and h.text in h.context and len(h.context) > len(h.text)
    assert len(coll.search("alpha", k=2, mmr=True, fetch_k=3, lambda_mult=0.3)) == 2
    assert coll.search("alpha", k=3, score_threshold=2.0) == []
    with pytest.raises(semindex.InvalidInputError):
        coll.search("alpha", k=5, mmr=True, fetch_k=2)


def test_a_schema_1_store_is_upgraded_in_place_without_re_encoding(tmp_path: Path) -> None:
    path = tmp_path / "old"
    with semindex.Store(path) as s:
        c = s.collection("c", model=MODEL, chunking=False)
        c.add([{"id": f"d{i}", "text": f"document number {i} about cats"} for i in range(20)])
        c.checkpoint()
        before = [h.id for h in c.search("number 7 cats", k=5)]
    # turn it into what semindex 0.1 wrote: the embedding on the document row, no chunks table
    db = sqlite3.connect(path / "semindex.db")
    db.executescript("""
        ALTER TABLE documents ADD COLUMN embedding BLOB NOT NULL DEFAULT x'';
        UPDATE documents SET embedding = (SELECT embedding FROM chunks WHERE chunks.doc_vid = documents.vid);
        UPDATE chunks SET id = doc_vid;
        DROP TABLE chunks;
        UPDATE semindex_meta SET value = '1' WHERE key = 'schema_version';
    """)
    db.commit()
    db.close()
    with semindex.Store(path) as s:
        c = s.collection("c")
        assert c.count() == 20 and c.chunk_count() == 20
        assert [h.id for h in c.search("number 7 cats", k=5)] == before
        report = c.check()
        assert report.ok and report.checkpoint.startswith("v")  # the old checkpoint is still valid
        c.add([{"id": "new", "text": "a new document about dogs"}])
        assert c.search("dogs", k=1)[0].id == "new" and c.check().ok
    cols = [r[1] for r in sqlite3.connect(path / "semindex.db").execute("PRAGMA table_info(documents)")]
    assert "embedding" not in cols
