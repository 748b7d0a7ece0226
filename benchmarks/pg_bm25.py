#!/usr/bin/env python
"""PostgreSQL BM25 against SQLite FTS5: keyword and hybrid nDCG@10 on the same vectors, and latency at ~100k docs.

One run, one machine:

* quality: each ``--sets`` BEIR folder is indexed once into a SQLite store with the default
  model (the real one: hybrid needs it), then its rows -- texts, titles, chunk spans and the
  very same vectors -- are copied into a PostgreSQL store through the storage API, so the two
  backends differ only in their keyword index. Test split, ``Collection.search_batch``,
  ``semindex.core.evaluate`` (ir-measures), k=100.
* latency: SciFact's rows repeated ``--repeat`` times (ids suffixed) into one more collection
  on each backend by SQL (the PostgreSQL side goes through the keyword triggers like any
  insert), then ``--latency-queries`` test queries, k=10, through ``KeywordIndex.search``
  (the ranking SQL itself): PostgreSQL BM25 (pruned, and exhaustive: every match scored), the old
  PostgreSQL ``ts_rank`` statement, FTS5.

    eval "$(bash scripts/pg.sh start /tmp/pg-bm25)"
    python benchmarks/pg_bm25.py --db "$SEMINDEX_TEST_PG_URL"

SciFact is the development set; Cranfield is held out (measured only, nothing tuned on it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import semindex  # noqa: E402
from semindex.core import evaluate, iter_records, load_split  # noqa: E402
from semindex.storage import schema as s  # noqa: E402
from semindex.storage.keyword import PG_CONFIG, query_terms, websearch_query  # noqa: E402
from semindex.storage.records import DocWrite, decode_embeddings  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def copy_rows(src: Any, dst: Any) -> None:
    """Every document of collection ``src`` (with its chunks and vectors) into ``dst`` in batches."""
    d, c = s.documents.c, s.chunks.c
    stmt = (sa.select(d.doc_id, d.text, d.title, d.metadata, d.content_hash, c.start_char, c.end_char, c.embedding)
            .select_from(s.documents.join(s.chunks, c.doc_vid == d.vid))
            .where(d.collection_id == src.record.id).order_by(d.vid, c.ordinal))
    with src.storage.storage.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    docs: dict[str, DocWrite] = {}
    vecs: dict[str, list[bytes]] = {}
    for doc_id, text, title, meta, h, start, end, emb in rows:
        if doc_id not in docs:
            docs[doc_id] = DocWrite(doc_id, text, title, dict(meta or {}), h, None, [])
            vecs[doc_id] = []
        assert docs[doc_id].spans is not None
        docs[doc_id].spans.append((int(start), int(end)))  # type: ignore[union-attr]
        vecs[doc_id].append(emb)
    batch: list[DocWrite] = []
    for doc_id, doc in docs.items():
        doc.embedding = decode_embeddings(vecs[doc_id], src.dimension)
        batch.append(doc)
        if len(batch) == 500:
            dst.storage.write(batch)
            batch = []
    if batch:
        dst.storage.write(batch)


def quality(sets: list[str], sqlite_store: Any, pg_store: Any) -> list[tuple[str, str, float, float]]:
    out = []
    for name in sets:
        folder = DATA / name
        queries, qrels = load_split(folder, "test")
        lite = sqlite_store.collection(name)
        if lite.count() == 0:
            t0 = time.perf_counter()
            lite.add_records(iter_records([folder]), on_error="skip")
            print(f"# {name}: indexed {lite.count()} docs with the model in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        pg = pg_store.collection(name)
        if pg.count() == 0:
            copy_rows(lite, pg)
        for mode in ("keyword", "hybrid"):
            got = []
            for coll in (lite, pg):
                res = evaluate(lambda texts, c=coll, m=mode: c.search_batch(texts, 100, mode=m), queries, qrels, mode=mode)
                got.append(res.ndcg_at_10)
            out.append((name, mode, got[0], got[1]))
            print(f"{name:10s} {mode:8s} sqlite {got[0]:.4f}  postgresql {got[1]:.4f}  diff {got[1] - got[0]:+.4f}",
                  flush=True)
    return out


def repeat_sql(store: Any, src_name: str, name: str, repeat: int) -> int:
    """Collection ``name``: ``src_name``'s documents and chunks ``repeat`` times, written by SQL."""
    src = store.get_collection(src_name)
    big = store.collection(name)
    if big.count():
        return big.record.id
    eng = store.storage.engine
    p: dict[str, Any] = {"src": src.record.id, "big": big.record.id}
    with eng.begin() as conn:
        for i in range(repeat):
            p["i"] = f"~{i}"
            conn.execute(sa.text(
                "INSERT INTO documents (collection_id, doc_id, content_hash, title, text, metadata, updated_at) "
                "SELECT :big, d.doc_id || :i, d.content_hash, d.title, d.text, d.metadata, d.updated_at "
                "FROM documents d WHERE d.collection_id = :src"), p)
            conn.execute(sa.text(
                "INSERT INTO chunks (collection_id, doc_vid, ordinal, start_char, end_char, embedding) "
                "SELECT :big, nd.vid, c.ordinal, c.start_char, c.end_char, c.embedding "
                "FROM documents od JOIN documents nd ON nd.collection_id = :big AND nd.doc_id = od.doc_id || :i "
                "JOIN chunks c ON c.doc_vid = od.vid WHERE od.collection_id = :src"), p)
        if eng.dialect.name == "postgresql":
            conn.execute(sa.text(
                "INSERT INTO semindex_fts (vid, collection_id, tsv) SELECT c.id, c.collection_id, "
                f"setweight(to_tsvector('{PG_CONFIG}', coalesce(d.title, '')), 'A') || "
                f"setweight(to_tsvector('{PG_CONFIG}', substr(d.text, c.start_char + 1, c.end_char - c.start_char)), 'B') "
                "FROM chunks c JOIN documents d ON d.vid = c.doc_vid WHERE c.collection_id = :big"), p)
    if eng.dialect.name == "sqlite":
        store.keyword._known.discard(big.record.id)
        store.keyword._ensure_sqlite(big.record.id)  # creates and backfills the FTS5 table
    if eng.dialect.name == "postgresql":
        with eng.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return big.record.id


def ts_rank_search(engine: Any, cid: int, query: str, k: int) -> list[Any]:
    """The ranking PostgreSQL used before BM25 (ts_rank, normalisation 1), for the same rows."""
    terms = query_terms(query)
    with engine.connect() as conn:
        return conn.execute(sa.text(
            f"SELECT f.vid, ts_rank(f.tsv, websearch_to_tsquery('{PG_CONFIG}', :m), 1) AS r FROM semindex_fts f "
            "JOIN chunks c ON c.id = f.vid JOIN documents d ON d.vid = c.doc_vid "
            f"WHERE f.collection_id = :c AND f.tsv @@ websearch_to_tsquery('{PG_CONFIG}', :m) "
            "ORDER BY r DESC, f.vid LIMIT :k"), {"m": websearch_query(terms), "c": cid, "k": k}).all()


def latency(sqlite_store: Any, pg_store: Any, repeat: int, nq: int) -> None:
    queries, _ = load_split(DATA / "scifact", "test")
    texts = [t for _, t in queries[:nq]]
    lite_id = repeat_sql(sqlite_store, "scifact", "scifact-x", repeat)
    pg_id = repeat_sql(pg_store, "scifact", "scifact-x", repeat)
    n = pg_store.get_collection("scifact-x").count()
    runs = {
        "sqlite fts5 bm25": lambda q: sqlite_store.keyword.search(lite_id, [q], 10),
        "postgresql bm25": lambda q: pg_store.keyword.search(pg_id, [q], 10),
        "postgresql bm25 exhaustive": lambda q: pg_store.keyword.search(pg_id, [q], 10, exhaustive=True),
        "postgresql ts_rank (old)": lambda q: ts_rank_search(pg_store.storage.engine, pg_id, q, 10),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm caches
        fn(texts[0])
    differ = 0
    for q in texts:  # interleaved, so a noisy neighbour hurts all alike
        answers = {}
        for name, fn in runs.items():
            t0 = time.perf_counter()
            answers[name] = fn(q)
            times[name].append(time.perf_counter() - t0)
        pruned, full = answers["postgresql bm25"][0], answers["postgresql bm25 exhaustive"][0]
        differ += [round(sc, 9) for _, sc in pruned] != [round(sc, 9) for _, sc in full]
    print(f"latency at {n} documents ({repeat}x SciFact), {len(texts)} test queries, k=10, one thread"
          f" (pruned top 10 != exhaustive top 10 for {differ} queries):")
    base = statistics.median(times["sqlite fts5 bm25"])
    for name, ts in times.items():
        p50, p95 = statistics.median(ts), float(np.percentile(ts, 95))
        print(f"  {name:26s} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  p50/sqlite {p50 / base:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=os.environ.get("SEMINDEX_TEST_PG_URL"), help="PostgreSQL URL (an empty database)")
    ap.add_argument("--work", type=Path, default=None, help="keep the SQLite store here (re-runs encode nothing)")
    ap.add_argument("--sets", default="scifact,cranfield")
    ap.add_argument("--repeat", type=int, default=20, help="SciFact copies for the latency corpus (20: ~104k docs)")
    ap.add_argument("--latency-queries", type=int, default=50)
    args = ap.parse_args()
    if not args.db:
        sys.exit("give --db postgresql+psycopg://... (or set SEMINDEX_TEST_PG_URL)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        with semindex.Store(work / "sqlite") as lite, semindex.Store(work / "pg", db_url=args.db) as pg:
            sets = [x for x in args.sets.split(",") if x]
            if sets:
                quality(sets, lite, pg)
            if args.repeat > 0:
                if "scifact" not in sets:
                    quality(["scifact"], lite, pg)
                latency(lite, pg, args.repeat, args.latency_queries)


if __name__ == "__main__":
    main()
