"""Keyword (BM25) search: exact after every write, safe for any query string, filtered in SQL."""

from __future__ import annotations

from typing import Any

import pytest

from semindex.storage.keyword import fts5_query, query_terms
from tests.support import sample_docs

HOSTILE = [
    '"', "'", '""', "'; DROP TABLE documents; --", "AND", "OR", "NOT", "a AND", "NOT bread", "bread NOT",
    "NEAR(", "NEAR(bread sourdough, 2)", "*", "bread*", "sourd*", "col:val", "title:bread", "text:bread",
    "{title text}:bread", "^", "^bread", "(", ")", "((bread", "bread)", "+", "-bread", "\x00", "bread\x00rye",
    "😀", "🍞 bread 🍞", "日本語", "пшеничный хлеб", "ﬁ", "\u200b", "\\", "%", "_", "[", "]", ":", ".", "a" * 10_000,
    " ".join(["bread"] * 2000), " OR ".join(f"w{i}" for i in range(500)), "\"bread\" \"", "rank:", "bm25(",
]


def kw_ids(coll: Any, q: str, k: int = 10, **kw: Any) -> list[str]:
    return [h.id for h in coll.search(q, k, mode="keyword", **kw)]


def test_query_terms_quote_everything() -> None:
    assert query_terms('Hello, "World"! NEAR(x*) col:val ^y') == ["hello", "world", "near", "x", "col", "val", "y"]
    assert query_terms("the of and") == ["the", "of", "and"]  # only stopwords: keep them
    assert query_terms("the bread") == ["bread"]
    assert query_terms("😀 ... \x00") == []
    assert fts5_query(["a", 'b"c']) == '"a" OR "b""c"'


def test_keyword_finds_by_words(samples: Any) -> None:
    hits = samples.search("sourdough starter", 5, mode="keyword")
    assert hits[0].id == "cook-sourdough"
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_hostile_queries_are_safe(samples: Any, mode: str) -> None:
    for q in HOSTILE:
        hits = samples.search(q, 5, mode=mode)
        assert isinstance(hits, list), q
        if mode == "hybrid":
            assert len(hits) == 5, q  # the dense side always answers


def test_operators_are_words_not_syntax(samples: Any) -> None:
    assert kw_ids(samples, "sourd*") == []  # no prefix query
    assert kw_ids(samples, "😀") == []
    assert kw_ids(samples, "日本語") == []
    # "NOT bread" is the words "not" and "bread", not a negation
    assert "cook-sourdough" in kw_ids(samples, "NOT bread")
    assert "cook-sourdough" in kw_ids(samples, "title:sourdough")


def test_keyword_empty_query_is_rejected_like_dense(samples: Any) -> None:
    from semindex.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        samples.search("   ", 5, mode="keyword")
    with pytest.raises(InvalidInputError):
        samples.search("bread", 5, mode="sparse")


def test_keyword_filters(samples: Any) -> None:
    flt = {"topic": "cooking"}
    cooking = {d["id"] for d in sample_docs() if d["metadata"]["topic"] == "cooking"}
    hits = samples.search("bread rice eggs curry knife water star gravity", 40, mode="keyword", filter=flt)
    assert hits and {h.id for h in hits} <= cooking
    # k caps it; filtering happens before ranking, so k=2 still gives 2
    assert len(samples.search("bread rice eggs curry knife water star gravity", 2, mode="keyword", filter=flt)) == 2
    assert samples.search("sourdough", 10, mode="keyword", filter={"topic": "music"}) == []


def test_exact_after_upsert_and_delete(store: Any) -> None:
    c = store.collection("kw")
    c.add([
        {"id": "x", "title": "Zebra facts", "text": "The quagga was a zebra subspecies.", "metadata": {"n": 1}},
        {"id": "y", "text": "Penguins cannot fly.", "metadata": {"n": 2}},
    ])
    assert kw_ids(c, "quagga") == ["x"]
    assert kw_ids(c, "zebra") == ["x"]
    # replace x's text and title: its old words no longer find it, the new ones do
    c.add([{"id": "x", "title": "Giraffe facts", "text": "Okapis are related to giraffes.", "metadata": {"n": 1}}])
    assert kw_ids(c, "quagga") == []
    assert kw_ids(c, "zebra") == []
    assert kw_ids(c, "okapi") == ["x"]  # porter stemming: okapis -> okapi
    assert kw_ids(c, "facts") == ["x"]  # a word only in the title
    # metadata-only change keeps the words
    c.add([{"id": "x", "title": "Giraffe facts", "text": "Okapis are related to giraffes.", "metadata": {"n": 9}}])
    assert kw_ids(c, "okapis", filter={"n": 9}) == ["x"]
    assert kw_ids(c, "okapis", filter={"n": 1}) == []
    c.delete("x")
    assert kw_ids(c, "okapi") == []
    assert kw_ids(c, "giraffe") == []
    assert kw_ids(c, "penguins") == ["y"]
    assert [h.id for h in c.search("penguins fly", 5, mode="hybrid")] == ["y"]


def test_collections_do_not_share_words(store: Any) -> None:
    assert store.collection("empty").search("anything", 5, mode="keyword") == []
    a, b = store.collection("a"), store.collection("b")
    a.add([{"id": "1", "text": "alpha beta"}])
    b.add([{"id": "1", "text": "gamma delta"}])
    assert kw_ids(a, "gamma") == [] and kw_ids(b, "gamma") == ["1"]
    store.delete_collection("b")
    b2 = store.collection("b")
    b2.add([{"id": "2", "text": "epsilon"}])
    assert kw_ids(b2, "gamma") == [] and kw_ids(b2, "epsilon") == ["2"]


def test_rolled_back_batch_leaves_no_words(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    c = store.collection("rb")
    c.add([{"id": "1", "text": "kept words"}])
    hook = store.keyword
    boom = RuntimeError("crash after the keyword update, before commit")
    original = hook.on_write

    def failing(*args: Any) -> None:
        original(*args)
        raise boom

    monkeypatch.setattr(hook, "on_write", failing)
    with pytest.raises(RuntimeError):
        c.add([{"id": "1", "text": "replaced"}, {"id": "2", "text": "phantom"}])
    monkeypatch.undo()
    assert kw_ids(c, "phantom") == [] and kw_ids(c, "replaced") == []
    assert kw_ids(c, "kept") == ["1"]


def test_existing_store_is_backfilled_once(tmp_path: Any) -> None:
    import sqlalchemy as sa

    import semindex

    path = tmp_path / "old"
    with semindex.Store(path) as s:
        c = s.collection("old")
        c.add([{"id": "1", "text": "ancient manuscripts"}])
        cid = c.record.id
        with s.storage.engine.begin() as conn:  # a store made before the keyword index existed
            conn.exec_driver_sql(f"DROP TABLE semindex_fts_c{cid}")
    with semindex.Store(path) as s:
        c = s.get_collection("old")
        assert kw_ids(c, "manuscript") == ["1"]
        c.add([{"id": "2", "text": "more manuscripts"}])
        assert sorted(kw_ids(c, "manuscripts")) == ["1", "2"]
        with s.storage.engine.connect() as conn:
            n = conn.execute(sa.text(f"SELECT count(*) FROM semindex_fts_c{cid}")).scalar()
        assert n == 2


def test_existing_postgres_store_is_backfilled(tmp_path: Any, db_url: Any, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("the SQLite case is test_existing_store_is_backfilled_once")
    import semindex

    with semindex.Store(tmp_path / "pg", db_url=db_url) as s:
        s.collection("old").add([{"id": "1", "text": "ancient manuscripts"}])
        with s.storage.engine.begin() as conn:  # as if made before the keyword index existed
            conn.exec_driver_sql("DROP TABLE semindex_fts")
            conn.exec_driver_sql("DELETE FROM semindex_meta WHERE key = 'keyword_index'")
    with semindex.Store(tmp_path / "pg", db_url=db_url) as s:
        c = s.get_collection("old")
        assert kw_ids(c, "manuscript") == ["1"]
        c.delete("1")
        assert kw_ids(c, "manuscript") == []
