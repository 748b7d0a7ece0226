"""BM25 on PostgreSQL: scores equal a Python reference, statistics stay exact through every write.

The reference takes only PostgreSQL's *tokenisation* (``to_tsvector('english', ...)`` of each
title and text on its own) and computes everything else itself from the chunk rows: document
frequencies, lengths, average length, idf and the BM25 sum. So a statistic the triggers got
wrong, a length counted differently or a mis-weighted title shows up as a score difference.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import semindex
from semindex.storage.keyword import DEFAULT_WEIGHTS, PG_B, PG_K1, pg_lexemes, query_terms


@pytest.fixture
def pg_url(db_url: str | None, backend: str) -> Iterator[str]:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's BM25 (SQLite's is FTS5's own)")
    assert db_url is not None
    yield db_url


CORPUS = [
    {"id": "d1", "title": "Zebra facts", "text": "The quagga was a zebra subspecies that lived in South Africa.",
     "metadata": {"g": "a"}},
    {"id": "d2", "title": "Penguins", "text": "Penguins cannot fly, but penguins swim fast in cold water.",
     "metadata": {"g": "b"}},
    {"id": "d3", "title": None, "text": "Zebras and penguins are both black and white animals.",
     "metadata": {"g": "a"}},
    {"id": "d4", "title": "Cold water swimming", "text": "Swimming in cold water is good for the heart, "
     "say some doctors; others say cold water shocks the heart. Water, water, water.", "metadata": {"g": "b"}},
    {"id": "d5", "title": "Africa", "text": "South Africa has penguins on its beaches and zebras in its parks.",
     "metadata": {"g": "a"}},
]
QUERIES = ["zebra", "penguins swim", "cold water heart", "south africa zebras penguins",
           "water water swimming swim", "the animals", "quagga", "black white heart fly"]


def _fields(conn: Any, text: str | None) -> Counter[str]:
    if not text:
        return Counter()
    rows = conn.execute(sa.text("SELECT lexeme, cardinality(positions) FROM unnest(to_tsvector('english', :t))"),
                        {"t": text})
    return Counter({str(lex): int(n) for lex, n in rows})


def reference(engine: Any, cid: int) -> dict[int, tuple[Counter[str], Counter[str]]]:
    """chunk id -> (title lexeme counts, text lexeme counts), from the rows of ``chunks``/``documents``."""
    out: dict[int, tuple[Counter[str], Counter[str]]] = {}
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT c.id, d.title, substr(d.text, c.start_char + 1, c.end_char - c.start_char) "
            "FROM chunks c JOIN documents d ON d.vid = c.doc_vid WHERE c.collection_id = :c"), {"c": cid}).all()
        for vid, title, text in rows:
            out[int(vid)] = (_fields(conn, title), _fields(conn, text))
    return out


def reference_stats(ref: dict[int, tuple[Counter[str], Counter[str]]]) -> tuple[int, int, dict[str, int]]:
    df: Counter[str] = Counter()
    total = 0
    for title, text in ref.values():
        df.update(set(title) | set(text))
        total += sum(title.values()) + sum(text.values())
    return len(ref), total, dict(df)


def reference_scores(engine: Any, cid: int, query: str,
                     ref: dict[int, tuple[Counter[str], Counter[str]]] | None = None) -> dict[int, float]:
    ref = reference(engine, cid) if ref is None else ref
    n, total, df = reference_stats(ref)
    with engine.connect() as conn:
        qlex = pg_lexemes(conn, query_terms(query))
    wa, wb = DEFAULT_WEIGHTS
    avg = total / max(n, 1)
    scores: dict[int, float] = {}
    for vid, (title, text) in ref.items():
        length = sum(title.values()) + sum(text.values())
        score, hit = 0.0, False
        for lex, qtf in qlex.items():
            tf = wa * title[lex] + wb * text[lex]
            if not tf:
                continue
            hit = True
            idf = math.log(1 + (n - df[lex] + 0.5) / (df[lex] + 0.5))
            score += qtf * idf * tf * (PG_K1 + 1) / (tf + PG_K1 * (1 - PG_B + PG_B * length / avg))
        if hit:
            scores[vid] = score
    return scores


def assert_exact(store: Any, coll: Any) -> None:
    """The maintained statistics equal a recount, and every query's scores equal the reference."""
    engine, cid = store.storage.engine, coll.record.id
    assert store.keyword.pg_statistics(cid) == reference_stats(reference(engine, cid))
    compared = 0
    for q in QUERIES:
        want = reference_scores(engine, cid, q)
        got = dict(store.keyword.search(cid, [q], 1000)[0])
        assert got.keys() == want.keys(), q
        for vid, sc in want.items():
            assert got[vid] == pytest.approx(sc, abs=1e-6), (q, vid)
        compared += len(want)
    assert compared  # some query matched something


def test_scores_equal_the_reference(tmp_path: Path, pg_url: str) -> None:
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.collection("bm")
        coll.add(CORPUS)
        assert_exact(store, coll)
        # ranking is by that score, ties by chunk id
        ranked = store.keyword.search(coll.record.id, ["cold water heart"], 10)[0]
        assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
        assert coll.search("cold water heart", 1, mode="keyword")[0].id == "d4"
        # idf: a word in one chunk outweighs one in four
        assert coll.search("quagga penguins", 1, mode="keyword")[0].id == "d1"


def test_statistics_exact_after_upserts_deletes_and_rollbacks(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.collection("bm")
        coll.add(CORPUS)
        coll.add([{"id": "d1", "title": "Horses", "text": "Horses are not zebras, said the horse."},  # new words
                  {"id": "d2", "title": "Penguins", "text": CORPUS[1]["text"], "metadata": {"g": "z"}}])  # meta only
        assert_exact(store, coll)
        coll.delete(["d3", "missing"])
        assert_exact(store, coll)
        assert "quagga" not in store.keyword.pg_statistics(coll.record.id)[2]  # df 0: the row goes

        original = store.keyword.on_write

        def failing(*args: Any) -> None:
            original(*args)
            raise RuntimeError("crash after the keyword update, before commit")

        before = store.keyword.pg_statistics(coll.record.id)
        monkeypatch.setattr(store.keyword, "on_write", failing)
        with pytest.raises(RuntimeError):
            coll.add([{"id": "d9", "text": "phantom words everywhere"}, {"id": "d4", "text": "replaced"}])
        with pytest.raises(RuntimeError):
            coll.delete(["d5"])
        monkeypatch.undo()
        assert store.keyword.pg_statistics(coll.record.id) == before
        assert_exact(store, coll)

        # a write behind semindex's back (raw SQL) is counted too: the triggers see every row
        with store.storage.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM documents WHERE doc_id = 'd5'"))
        assert_exact(store, coll)

        # a dropped collection leaves no statistics; its successor starts from zero
        other = store.collection("other")
        other.add([{"id": "o", "text": "zebra"}])
        oid = other.record.id
        store.delete_collection("other")
        assert store.keyword.pg_statistics(oid) == (0, 0, {})
        assert_exact(store, coll)


def test_collections_keep_their_own_statistics(tmp_path: Path, pg_url: str) -> None:
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        a, b = store.collection("a"), store.collection("b")
        a.add(CORPUS)
        b.add([{"id": "x", "text": "zebra zebra zebra"}, {"id": "y", "text": "an unrelated line"}])
        assert_exact(store, a)
        assert_exact(store, b)
        assert store.keyword.pg_statistics(b.record.id)[:2] == (2, 5)


def test_concurrent_writers_keep_statistics_exact(tmp_path: Path, pg_url: str) -> None:
    """Two stores (two engines, as two processes would be) writing one collection at once."""
    with semindex.Store(tmp_path / "s", db_url=pg_url) as first:
        coll = first.collection("bm")
        coll.add(CORPUS)
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            with semindex.Store(tmp_path / f"w{tag}", db_url=pg_url) as s:
                c = s.get_collection("bm")
                for i in range(12):
                    c.add([{"id": f"{tag}{i}", "text": f"shared words {tag} number {i} zebra water"},
                           {"id": f"{tag}-keep{i % 3}", "text": f"rewritten {tag} {i} penguins"}])
                    if i % 4 == 3:
                        c.delete([f"{tag}{i - 1}", "d1" if tag == "p" else "d2"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("p", "q")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.get_collection("bm")
        assert coll.count() == 5 - 2 + 2 * (12 - 3 + 3)
        assert_exact(store, coll)


def test_top_k_scores_only_what_can_rank_and_equals_the_exhaustive_ranking(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MaxScore: a query mixing words in most chunks with rare ones scores the rare ones' chunks
    first and stops when the common words' bounds cannot reach the k-th score; the top k is the
    exhaustive ranking's, for every k, filter and query shape tried."""
    import random

    from semindex.storage.keyword import KeywordIndex

    rng = random.Random(13)
    common = ["water", "cells", "study", "effect", "results", "patients", "protein", "growth"]
    rare = ["quagga", "narwhal", "okapi", "axolotl", "pangolin", "tapir"]
    docs = []
    for i in range(240):
        words = rng.choices(common, k=rng.randint(3, 30))
        if i % 9 == 0:
            words += rng.choices(rare, k=rng.randint(1, 3))
        rng.shuffle(words)
        docs.append({"id": f"d{i}", "title": rng.choice(["", "", rng.choice(common + rare)]), "text": " ".join(words),
                     "metadata": {"g": "ab"[i % 2]}})
    queries = ["quagga water", "okapi narwhal cells study", "pangolin results effect growth patients",
               "water cells", "tapir", "axolotl axolotl protein", "water quagga okapi tapir study"]
    rounds: list[int] = []
    original = KeywordIndex._pg_stmt

    def counting(self: KeywordIndex, cid: int, idf: Any, avglen: float, essential: Any, *rest: Any) -> Any:
        rounds.append(len(essential))
        return original(self, cid, idf, avglen, essential, *rest)

    monkeypatch.setattr(KeywordIndex, "_pg_stmt", counting)
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.collection("bm", chunking=False)
        coll.add(docs)
        engine, cid = store.storage.engine, coll.record.id
        ref = reference(engine, cid)
        with engine.connect() as conn:
            g_of = {int(v): g for v, g in conn.execute(sa.text(
                "SELECT c.id, d.metadata ->> 'g' FROM chunks c JOIN documents d ON d.vid = c.doc_vid"
                " WHERE c.collection_id = :c"), {"c": cid})}
            n_lex = {q: len(pg_lexemes(conn, query_terms(q))) for q in queries}
        pruned = 0
        for q in queries:
            want_all = reference_scores(engine, cid, q, ref)
            for k in (1, 3, 10):
                for flt in (None, {"g": "a"}):
                    want = sorted(((sc, v) for v, sc in want_all.items() if flt is None or g_of[v] == flt["g"]),
                                  key=lambda p: (-p[0], p[1]))[:k]
                    rounds.clear()
                    got = store.keyword.search(cid, [q], k, filter=flt)[0]
                    assert [round(sc, 6) for _, sc in got] == [round(sc, 6) for sc, _ in want], (q, k, flt)
                    for v, sc in got:  # each chunk returned carries its exhaustive score
                        assert sc == pytest.approx(want_all[v], abs=1e-6), (q, k, v)
                    pruned += rounds[-1] < n_lex[q]
        assert pruned >= 10  # most of these queries never scored the common words' chunks
        assert len(coll.search("quagga water", 3, mode="keyword")) == 3


def test_filter_applies_before_ranking_and_k_results_come_back(tmp_path: Path, pg_url: str) -> None:
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.collection("bm")
        # the best-scoring chunks (word repeated, short) are all in group "b"
        docs = [{"id": f"b{i}", "text": "needle needle needle", "metadata": {"g": "b"}} for i in range(20)]
        docs += [{"id": f"a{i}", "text": "a needle in a long haystack " + "hay " * i, "metadata": {"g": "a"}}
                 for i in range(8)]
        coll.add(docs)
        hits = coll.search("needle", 5, mode="keyword", filter={"g": "a"})
        assert [h.id for h in hits] == ["a0", "a1", "a2", "a3", "a4"]  # shorter first: length normalisation
        assert len(coll.search("needle", 8, mode="keyword", filter={"g": "a"})) == 8
        assert len(coll.search("needle", 50, mode="keyword")) == 28
        assert coll.search("needle", 5, mode="keyword", filter={"g": "c"}) == []
        hybrid = coll.search("needle", 5, mode="hybrid", filter={"g": "a"})
        assert len(hybrid) == 5 and all(h.id.startswith("a") for h in hybrid)


def _make_old_style(engine: Any) -> None:
    """The layout of the ts_rank releases: no statistics, no length, a per-row FK cascade."""
    with engine.begin() as conn:
        for stmt in (
            "DROP TRIGGER IF EXISTS semindex_fts_chunks_gone ON chunks",
            "DROP TABLE IF EXISTS semindex_fts_terms",
            "DROP TABLE IF EXISTS semindex_fts_stats",
            "DROP TRIGGER IF EXISTS semindex_fts_ins ON semindex_fts",
            "DROP TRIGGER IF EXISTS semindex_fts_del ON semindex_fts",
            "DROP TRIGGER IF EXISTS semindex_fts_upd ON semindex_fts",
            "ALTER TABLE semindex_fts DROP COLUMN len",
            "ALTER TABLE semindex_fts ADD CONSTRAINT semindex_fts_vid_fkey "
            "FOREIGN KEY (vid) REFERENCES chunks(id) ON DELETE CASCADE",
            "UPDATE semindex_meta SET value = '1' WHERE key = 'keyword_index'",
        ):
            conn.exec_driver_sql(stmt)


def test_old_style_store_is_upgraded_on_open(tmp_path: Path, pg_url: str) -> None:
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.collection("bm")
        coll.add(CORPUS)
        _make_old_style(store.storage.engine)
    # an old-style row written after the layout change but before the upgrade
    eng = sa.create_engine(pg_url)
    with eng.begin() as conn:
        conn.exec_driver_sql("DELETE FROM semindex_fts WHERE vid = (SELECT min(vid) FROM semindex_fts)")
    eng.dispose()
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:
        coll = store.get_collection("bm")
        assert_exact(store, coll)  # the missing row was backfilled, statistics recounted
        coll.delete(["d4"])
        coll.add([{"id": "d6", "text": "after the upgrade: zebra water"}])
        assert_exact(store, coll)
        with store.storage.engine.connect() as conn:
            fk = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_constraint WHERE conname = 'semindex_fts_vid_fkey'").scalar()
            layout = conn.exec_driver_sql("SELECT value FROM semindex_meta WHERE key = 'keyword_index'").scalar()
        assert (fk, layout) == (0, "2")
    with semindex.Store(tmp_path / "s", db_url=pg_url) as store:  # a second open does nothing more
        assert_exact(store, store.get_collection("bm"))
