"""The keyword (BM25) index: full-text search over the same SQL store, kept exact.

It is a :class:`~semindex.storage.records.WriteHook`: every write transaction that
upserts or deletes rows updates the full-text index *inside that transaction*,
so a committed row is always searchable by its current words and never by its
old ones, and a rolled-back batch leaves nothing behind.

* **SQLite**: one FTS5 table per collection, ``semindex_fts_c<id>(title, text)``
  with ``tokenize='porter unicode61 remove_diacritics 2'`` and
  ``rowid = chunks.id`` (one row per chunk: a long document is several). A table per collection keeps BM25's corpus
  statistics (document frequencies, average length) per collection, so
  several datasets in one store do not skew each other. It is a regular
  (not contentless) FTS5 table so a row can be deleted by rowid alone
  (``contentless_delete`` needs SQLite 3.43). Ranking is FTS5's
  ``bm25(table, w_title, w_text)``; the score exposed is ``-bm25`` (higher is
  better).
* **PostgreSQL**: a side table ``semindex_fts(vid, collection_id, tsv, len)`` with a
  GIN index; ``tsv`` is the title (weight A) and text (weight B) as an ``english``
  tsvector, ``len`` its number of token positions (a generated column, so it is
  right whoever writes the row). Ranking is real BM25 (:data:`PG_K1`, :data:`PG_B`,
  Lucene's ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, title positions weighted
  like SQLite's title column), computed in SQL from per-collection statistics:
  ``semindex_fts_terms(collection_id, term, df)`` and
  ``semindex_fts_stats(collection_id, n, total_len)``. Those are maintained by
  statement-level triggers on ``semindex_fts`` (PL/pgSQL, part of every
  PostgreSQL) from the inserted/deleted rows' lexemes, so they change in the same
  statement, hence the same transaction, as the rows: a rolled-back batch leaves
  them untouched and no writer (semindex or raw SQL) can skew them. A statement
  trigger on ``chunks`` removes the side rows of deleted chunks in bulk (it replaces
  a per-row foreign-key cascade, which would fire the statistics trigger once per
  chunk). Writers to one collection are serialised by the collection's version row
  lock taken first in every write, and statistics rows are keyed by collection, so
  concurrent writers of other collections never touch the same rows. A store made
  with the older ``ts_rank`` layout is upgraded once on open, under an advisory lock.

User text is never full-text syntax. :func:`query_terms` splits it into
Unicode word tokens itself; each token is then a quoted FTS5 string (or a
quoted ``websearch_to_tsquery`` phrase), ORed together and always bound as a
parameter. Any string is safe; one without a word token matches nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError
from . import schema as s
from .filters import compile_filter
from .records import chunked

log = logging.getLogger(__name__)

SQLITE_TOKENIZER = "porter unicode61 remove_diacritics 2"
PG_CONFIG = "english"
PG_TABLE = "semindex_fts"
PG_TERMS = "semindex_fts_terms"  # (collection_id, term) -> df: chunks holding the lexeme
PG_STATS = "semindex_fts_stats"  # collection_id -> (n chunks, total positions)
PG_LAYOUT = "2"  # semindex_meta 'keyword_index': 1 = ts_rank only, 2 = BM25 statistics and triggers
# BM25's constants, as FTS5 hard-codes them (so both backends rank alike).
PG_K1 = 1.2
PG_B = 0.75
MAX_TERMS = 64  # distinct query terms kept (in order of first appearance)
PG_DDL_LOCK_KEY = 7305421001  # pg_advisory_xact_lock key for creating the side table once

# Title and text weights for bm25() (tuned on the scifact *train* split only).
DEFAULT_WEIGHTS: tuple[float, float] = (3.0, 1.0)

# Lucene's English stop set (what Anserini's BM25 baselines use). Dropped from
# queries only, and only when something else is left, so "to be or not to be"
# still finds what it can.
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)

# Letters, marks and digits (what FTS5's unicode61 keeps); '_' and everything else separates.
_TOKEN_RE = re.compile(r"[^\W_]+")


def query_terms(text: str, *, stopwords: frozenset[str] = STOPWORDS, max_terms: int = MAX_TERMS) -> list[str]:
    """The distinct lower-cased word tokens of ``text``: the only part of user text that reaches FTS."""
    if not isinstance(text, str):
        return []
    seen: dict[str, None] = {}
    for tok in _TOKEN_RE.findall(text.lower()):
        if tok not in seen:
            seen[tok] = None
    terms = list(seen)
    kept = [t for t in terms if t not in stopwords]
    return (kept or terms)[:max_terms]


def fts5_query(terms: Sequence[str]) -> str:
    """``"a" OR "b"``: every term an FTS5 string (internal quotes doubled), so no operator survives."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def websearch_query(terms: Sequence[str]) -> str:
    """``"a" or "b"`` for ``websearch_to_tsquery``: quoted terms are never operators."""
    return " or ".join('"' + t.replace('"', " ") + '"' for t in terms)


class KeywordIndex:
    """Full-text index for every collection of one store; a write hook of that store's `Storage`.

    It needs only the engine and collection ids, never the store itself, so the store can
    take it as one hook among others and search can be handed it explicitly.
    """

    def __init__(self, engine: Engine, *, weights: tuple[float, float] = DEFAULT_WEIGHTS) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.weights = (float(weights[0]), float(weights[1]))
        self._known: set[int] = set()  # collection ids whose SQLite table exists (ids are never reused)

    @property
    def supported(self) -> bool:
        return self.dialect in ("sqlite", "postgresql")

    @classmethod
    def open(cls, engine: Engine) -> KeywordIndex:
        """The index over an existing schema, creating what is missing (backfilling rows once)."""
        index = cls(engine)
        if index.supported:
            index.ensure()
        return index

    # -- schema --------------------------------------------------------------

    @staticmethod
    def table_name(collection_id: int) -> str:
        return f"semindex_fts_c{int(collection_id)}"

    def ensure(self) -> None:
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                ids = conn.execute(sa.select(s.collections.c.id)).scalars().all()
            for cid in ids:
                self._ensure_sqlite(int(cid))
        elif self.dialect == "postgresql":
            self._ensure_pg()

    def _sqlite_exists(self, conn: Connection, cid: int) -> bool:
        return (
            conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table_name(cid),)
            ).first()
            is not None
        )

    def _ensure_sqlite(self, cid: int, conn: Connection | None = None) -> None:
        """Create collection ``cid``'s FTS5 table if missing and fill it from its rows."""
        if cid in self._known:
            return
        if conn is None:
            with self.engine.connect() as c:
                if self._sqlite_exists(c, cid):
                    self._known.add(cid)
                    return
            with self.engine.begin() as c:
                # Take the write lock first, so two processes opening the store at once
                # cannot both decide to backfill (the second waits, then sees the table).
                c.execute(sa.update(s.meta_table).where(s.meta_table.c.key == "store_id")
                          .values(value=s.meta_table.c.value))
                self._create_sqlite(c, cid)
        else:
            self._create_sqlite(conn, cid)
        self._known.add(cid)

    def _create_sqlite(self, conn: Connection, cid: int) -> None:
        if self._sqlite_exists(conn, cid):
            return
        name = self.table_name(cid)
        try:
            conn.exec_driver_sql(
                f"CREATE VIRTUAL TABLE {name} USING fts5(title, text, tokenize='{SQLITE_TOKENIZER}')"
            )
        except sa.exc.OperationalError as exc:
            if "fts5" in str(exc.orig).lower():
                raise ConfigError(f"this SQLite ({exc.orig}) lacks FTS5: keyword search is unavailable") from exc
            raise
        n = conn.exec_driver_sql(
            f"INSERT INTO {name} (rowid, title, text) "
            f"SELECT c.id, coalesce(d.title, ''), {_CHUNK_TEXT} FROM {_CHUNKS_JOIN} WHERE c.collection_id = ?",
            (cid,),
        ).rowcount
        if n:
            log.info("keyword index: backfilled %d rows of collection %d", n, cid)

    def _ensure_pg(self) -> None:
        """Create the side table, its statistics and triggers, or upgrade an older layout, once.

        The usual open is one cheap query. Otherwise, under an advisory lock (two processes
        opening at once upgrade once) and an exclusive lock on the side table (no writer can
        slip a row between the backfill and the recount), it creates what is missing, adds
        any chunk that has no row yet, and recounts every statistic from the rows.
        """
        with self.engine.connect() as conn:
            ready = conn.execute(sa.text(
                f"SELECT to_regclass('{PG_TERMS}') IS NOT NULL AND to_regclass('{PG_TABLE}') IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM semindex_meta WHERE key = 'keyword_index' AND value = :v)"
                " AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'semindex_fts_chunks_gone'"
                "             AND tgrelid = 'chunks'::regclass)"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'semindex_fts_vid_fkey')"
            ), {"v": PG_LAYOUT}).scalar()
        if ready:  # the usual case: no DDL (and none of its table locks) on every open
            return
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_DDL_LOCK_KEY})
            for stmt in _PG_DDL:
                conn.exec_driver_sql(stmt)
            conn.exec_driver_sql(f"LOCK TABLE {PG_TABLE} IN ACCESS EXCLUSIVE MODE")
            cols = set(conn.execute(sa.text(
                "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0"
                " AND NOT attisdropped"), {"t": PG_TABLE}).scalars())
            if "len" not in cols:  # the ts_rank layout: the generated column computes every row's length
                conn.exec_driver_sql(
                    f"ALTER TABLE {PG_TABLE} ADD COLUMN len integer "
                    "GENERATED ALWAYS AS (semindex_tsv_len(tsv)) STORED"
                )
            # a per-row cascade is replaced by the statement trigger on chunks
            conn.exec_driver_sql(f"ALTER TABLE {PG_TABLE} DROP CONSTRAINT IF EXISTS semindex_fts_vid_fkey")
            for stmt in _PG_TRIGGERS:
                conn.exec_driver_sql(stmt)
            conn.exec_driver_sql(
                f"DELETE FROM {PG_TABLE} f WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = f.vid)"
            )
            n = conn.execute(sa.text(
                f"INSERT INTO {PG_TABLE} (vid, collection_id, tsv) "
                f"SELECT c.id, c.collection_id, {_PG_TSV} FROM {_CHUNKS_JOIN} "
                f"WHERE NOT EXISTS (SELECT 1 FROM {PG_TABLE} f WHERE f.vid = c.id)"
            )).rowcount
            if n:
                log.info("keyword index: backfilled %d PostgreSQL rows", n)
            # recount from the rows themselves: exact whatever state the old layout left
            conn.exec_driver_sql(f"DELETE FROM {PG_TERMS}")
            conn.exec_driver_sql(f"DELETE FROM {PG_STATS}")
            conn.exec_driver_sql(
                f"INSERT INTO {PG_TERMS} (collection_id, term, df) SELECT f.collection_id, u.lexeme, count(*) "
                f"FROM {PG_TABLE} f, unnest(f.tsv) u GROUP BY 1, 2"
            )
            conn.exec_driver_sql(
                f"INSERT INTO {PG_STATS} (collection_id, n, total_len) "
                f"SELECT collection_id, count(*), coalesce(sum(len), 0) FROM {PG_TABLE} GROUP BY 1"
            )
            conn.execute(sa.text(
                "INSERT INTO semindex_meta (key, value) VALUES ('keyword_index', :v) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ), {"v": PG_LAYOUT})

    def pg_statistics(self, collection_id: int) -> tuple[int, int, dict[str, int]]:
        """(chunks, total positions, df per lexeme) of a PostgreSQL collection, as ranking reads them."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(f"SELECT n, total_len FROM {PG_STATS} WHERE collection_id = :c"),
                               {"c": int(collection_id)}).first()
            dfs = {str(t): int(df) for t, df in conn.execute(
                sa.text(f"SELECT term, df FROM {PG_TERMS} WHERE collection_id = :c"), {"c": int(collection_id)})}
        return (int(row[0]), int(row[1]), dfs) if row is not None else (0, 0, dfs)

    # -- the write hook ----------------------------------------------------------

    def on_write(
        self,
        conn: Connection,
        collection_id: int,
        upserted: Sequence[int],
        deleted: Sequence[int],
    ) -> None:
        """Keep the full-text rows of these chunks exact inside the write's own transaction."""
        deleted_vids = list(deleted)
        if not upserted and not deleted_vids:
            return
        vids = [int(v) for v in upserted]
        if self.dialect == "sqlite":
            cid = int(collection_id)
            if cid not in self._known:
                if not self._sqlite_exists(conn, cid):
                    # First write to a new collection: creating and backfilling from the rows
                    # (which already hold this transaction's writes) is exact by construction.
                    self._create_sqlite(conn, cid)
                    self._known.add(cid)
                    return
                self._known.add(cid)
            name = self.table_name(cid)
            touched = vids + [int(v) for v in deleted_vids]
            for part in chunked(touched):
                conn.exec_driver_sql(
                    f"DELETE FROM {name} WHERE rowid IN ({','.join('?' * len(part))})", tuple(part)
                )
            for part in chunked(vids):
                conn.exec_driver_sql(
                    f"INSERT INTO {name} (rowid, title, text) SELECT c.id, coalesce(d.title, ''), {_CHUNK_TEXT} "
                    f"FROM {_CHUNKS_JOIN} WHERE c.id IN ({','.join('?' * len(part))})",
                    tuple(part),
                )
        elif self.dialect == "postgresql":
            # Delete then insert (never UPDATE): each statement's trigger moves the statistics by
            # exactly the rows it removed or added. Deleted chunks' rows are usually gone already
            # (the trigger on chunks); deleting them again is a no-op kept for safety.
            touched = vids + [int(v) for v in deleted_vids]
            for part in chunked(touched):
                conn.execute(sa.text(f"DELETE FROM {PG_TABLE} WHERE vid = ANY(:vids)"), {"vids": list(part)})
            for part in chunked(vids):
                conn.execute(
                    sa.text(
                        f"INSERT INTO {PG_TABLE} (vid, collection_id, tsv) "
                        f"SELECT c.id, c.collection_id, {_PG_TSV} FROM {_CHUNKS_JOIN} WHERE c.id = ANY(:vids)"
                    ),
                    {"vids": list(part)},
                )

    def on_drop(self, conn: Connection, collection_id: int) -> None:
        if self.dialect == "sqlite":
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.table_name(collection_id)}")
            self._known.discard(int(collection_id))
        elif self.dialect == "postgresql":
            cid = {"cid": int(collection_id)}
            # the whole collection goes: skip the per-lexeme decrements (this transaction only)
            conn.execute(sa.text("SELECT set_config('semindex.fts_stats', 'off', true)"))
            conn.execute(sa.text(f"DELETE FROM {PG_TABLE} WHERE collection_id = :cid"), cid)
            conn.execute(sa.text(f"DELETE FROM {PG_TERMS} WHERE collection_id = :cid"), cid)
            conn.execute(sa.text(f"DELETE FROM {PG_STATS} WHERE collection_id = :cid"), cid)

    # -- search ------------------------------------------------------------------

    def search(
        self,
        collection_id: int,
        queries: Sequence[str],
        k: int,
        filter: Mapping[str, Any] | None = None,
        *,
        weights: tuple[float, float] | None = None,
        exhaustive: bool = False,
    ) -> list[list[tuple[int, float]]]:
        """Top ``k`` (chunk id, score) per query, best first; only chunks of documents matching
        ``filter``; ties by chunk id. ``exhaustive``: on PostgreSQL, score every matching chunk
        instead of pruning (the same answer, slower: for checks and benchmarks)."""
        if not self.supported:
            raise ConfigError(f"keyword search is not available on {self.dialect}; use SQLite or PostgreSQL")
        where = compile_filter(filter, s.documents.c.metadata)
        w = weights or self.weights
        out: list[list[tuple[int, float]]] = []
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                # one snapshot for the statistics and the (one or two) ranking statements of a query
                conn.execution_options(isolation_level="REPEATABLE READ")
            cid = int(collection_id)
            if self.dialect == "sqlite" and cid not in self._known:
                if not self._sqlite_exists(conn, cid):
                    # nothing was ever written to this collection (its first write creates the table)
                    return [[] for _ in queries]
                self._known.add(cid)
            for q in queries:
                terms = query_terms(q)
                if not terms:
                    out.append([])
                    continue
                if self.dialect == "sqlite":
                    stmt = self._sqlite_stmt(cid, fts5_query(terms), k, where, w)
                    out.append([(int(v), float(sc)) for v, sc in conn.execute(stmt)])
                    continue
                lexemes = pg_lexemes(conn, terms)
                out.append(self._pg_search(conn, cid, lexemes, k, where, w, exhaustive) if lexemes else [])
        return out

    def _pg_search(
        self, conn: Connection, cid: int, lexemes: Mapping[str, int], k: int, where: Any, w: tuple[float, float],
        exhaustive: bool = False,
    ) -> list[tuple[int, float]]:
        """Exact BM25 top ``k`` that scores only the chunks that can still make it (MaxScore).

        A lexeme adds at most ``idf * (k1 + 1)`` to any chunk's score (tf / (tf + K) < 1). So once
        some top ``k`` has a k-th score theta, a chunk holding none of the "essential" lexemes
        (the highest bounds, until the bounds of the others sum below theta) cannot reach it: only
        chunks with an essential lexeme are scored, each with every lexeme of the query. Round one
        takes the highest-bound lexemes that hold ``k`` chunks between them; its theta is a lower
        bound of the true one (its chunks are a subset), so round two, if needed, widens the
        essential set until the rest is bounded below that theta and is exact. A query whose
        common words match most of the collection scores the chunks of its rare ones instead.
        """
        terms = list(lexemes)
        stats = conn.execute(sa.text(
            "SELECT t.term, t.qtf * ln(1 + (st.n - coalesce(ft.df, 0) + 0.5) / (coalesce(ft.df, 0) + 0.5)),"
            " coalesce(ft.df, 0), st.total_len::float8 / greatest(st.n, 1) "
            f"FROM {PG_STATS} st CROSS JOIN unnest(CAST(:terms AS text[]), CAST(:qtfs AS int[])) AS t(term, qtf) "
            f"LEFT JOIN {PG_TERMS} ft ON ft.collection_id = st.collection_id AND ft.term = t.term "
            "WHERE st.collection_id = :cid"
        ), {"terms": terms, "qtfs": [int(lexemes[t]) for t in terms], "cid": cid}).all()
        if not stats:  # an empty collection
            return []
        idf = {str(t): float(v) for t, v, _, _ in stats}
        df = {str(t): int(n) for t, _, n, _ in stats}
        avglen = float(stats[0][3])
        bound = {t: idf[t] * (PG_K1 + 1.0) for t in idf}
        order = sorted(idf, key=lambda t: (-bound[t], t))  # highest bound first
        rest = [0.0] * (len(order) + 1)  # rest[i]: the most lexemes order[i:] can add to any score
        for i in range(len(order) - 1, -1, -1):
            rest[i] = rest[i + 1] + bound[order[i]]
        essential, held = (len(order), 0) if exhaustive else (0, 0)
        while essential < len(order) and (essential == 0 or held < k):
            held += df[order[essential]]
            essential += 1
        while True:
            ranked = [(int(v), float(sc)) for v, sc in
                      conn.execute(self._pg_stmt(cid, idf, avglen, order[:essential], k, where, w))]
            if essential == len(order):
                return ranked
            if len(ranked) < k:  # not k chunks among the essential ones: no theta to prune with
                essential = len(order)
                continue
            theta = ranked[-1][1]
            floor = theta - _PRUNE_MARGIN * max(1.0, abs(theta))
            if rest[essential] < floor:
                return ranked  # no chunk outside can reach the k-th score
            while essential < len(order) and rest[essential] >= floor:
                essential += 1

    def _sqlite_stmt(
        self, cid: int, match: str, k: int, where: Any, w: tuple[float, float]
    ) -> sa.Select[Any]:
        name = self.table_name(cid)
        fts = sa.table(name, sa.column("rowid"))
        fts_ref: sa.ColumnElement[Any] = sa.literal_column(name)
        d, c = s.documents.c, s.chunks.c
        bm25 = sa.func.bm25(fts_ref, sa.literal(float(w[0])), sa.literal(float(w[1])))
        stmt = (
            sa.select(fts.c.rowid, (-bm25).label("score"))
            .select_from(fts.join(s.chunks, c.id == fts.c.rowid).join(s.documents, d.vid == c.doc_vid))
            .where(fts_ref.op("MATCH")(sa.bindparam("match", match)))
            .where(c.collection_id == cid)
        )
        if where is not None:
            stmt = stmt.where(where)
        return stmt.order_by(bm25, fts.c.rowid).limit(int(k))

    def _pg_stmt(
        self, cid: int, idf: Mapping[str, float], avglen: float, essential: Sequence[str], k: int, where: Any,
        w: tuple[float, float],
    ) -> sa.Select[Any]:
        """BM25 of the chunks that hold any ``essential`` lexeme (GIN) and match ``where``, top ``k``.

        score = sum over query lexemes t of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen)),
        tf = w_title * (title positions of t) + w_text * (text positions of t); ``idf`` carries
        qtf(t), the query words that stem to t (FTS5 scores each quoted word as its own phrase, so
        a repeated stem counts again there too). A chunk's tf is read from its tsvector cut down
        to the query's lexemes (setweight + ts_filter, in C) rather than by unnesting all of it,
        which measured 5x slower.
        """
        f = sa.table(PG_TABLE, sa.column("vid"), sa.column("collection_id"), sa.column("tsv"), sa.column("len"))
        d, c = s.documents.c, s.chunks.c
        terms = list(idf)
        q = sa.text(
            "SELECT t.term, t.idf, CAST(:avglen AS float8) AS avglen"
            " FROM unnest(CAST(:terms AS text[]), CAST(:idfs AS float8[])) AS t(term, idf)"
        ).bindparams(terms=terms, idfs=[idf[t] for t in terms], avglen=float(avglen)).columns(
            sa.column("term"), sa.column("idf"), sa.column("avglen")
        ).cte("semindex_q")
        k1, b = float(PG_K1), float(PG_B)
        wa, wb = float(w[0]), float(w[1])
        # setweight(v, 'D', terms) then ts_filter(.., '{d}') keeps only the query's lexemes (the
        # stored vector has only A and B): all their positions (tf over title and text), and
        # the same on the title part (weight A) for the title's extra weight.
        only = "ts_filter(setweight({v}, 'D', (SELECT array_agg(term) FROM semindex_q)), '{{d}}')"
        score: sa.ColumnClause[Any] = sa.literal_column(
            f"(SELECT sum(q.idf * x.tf * {k1 + 1.0!r} / (x.tf + {k1!r} * ({1.0 - b!r} + {b!r} * {PG_TABLE}.len / q.avglen)))"
            " FROM (SELECT y.lexeme, sum(y.tf) AS tf FROM ("
            f"SELECT u.lexeme, {wb!r} * cardinality(u.positions) AS tf"
            f" FROM unnest({only.format(v=PG_TABLE + '.tsv')}) u"
            f" UNION ALL SELECT u.lexeme, {wa - wb!r} * cardinality(u.positions)"
            f" FROM unnest({only.format(v='ts_filter(' + PG_TABLE + '.tsv, ' + repr('{a}') + ')')}) u"
            ") y GROUP BY y.lexeme) x"
            " JOIN semindex_q q ON q.term = x.lexeme)"
        )
        tsq = sa.cast(sa.bindparam("tsq", pg_tsquery(essential)), postgresql.TSQUERY)
        stmt = (
            sa.select(f.c.vid, score.label("score"))
            .add_cte(q)
            .select_from(f.join(s.chunks, c.id == f.c.vid).join(s.documents, d.vid == c.doc_vid))
            .where(f.c.collection_id == cid)
            .where(f.c.tsv.op("@@")(tsq))
            .where(c.collection_id == cid)
        )
        if where is not None:
            stmt = stmt.where(where)
        return stmt.order_by(sa.literal_column("score").desc(), f.c.vid).limit(int(k))


# Relative slack on the MaxScore test (bounds in Python floats, scores summed by PostgreSQL): a
# chunk is skipped only when its bound is below the k-th score by more than rounding could move it.
_PRUNE_MARGIN = 1e-9


def pg_lexemes(conn: Connection, terms: Sequence[str]) -> dict[str, int]:
    """The ``english`` lexemes of the query words, each with how many words stem to it (stop words drop)."""
    rows = conn.execute(
        sa.text(f"SELECT lexeme, cardinality(positions) FROM unnest(to_tsvector('{PG_CONFIG}', :q))"),
        {"q": " ".join(terms)},
    )
    return {str(lex): int(n) for lex, n in rows}


def pg_tsquery(lexemes: Sequence[str]) -> str:
    """``'a' | 'b'``: each lexeme a quoted tsquery operand (quotes doubled, backslashes escaped), ORed."""
    return " | ".join("'" + x.replace("\\", "\\\\").replace("'", "''") + "'" for x in lexemes)


# A chunk's words: its document's title (weight A) and its span of the text (weight B).
_CHUNK_TEXT = "substr(d.text, c.start_char + 1, c.end_char - c.start_char)"
_CHUNKS_JOIN = "chunks c JOIN documents d ON d.vid = c.doc_vid"
_PG_TSV = (
    f"setweight(to_tsvector('{PG_CONFIG}', coalesce(d.title, '')), 'A') || "
    f"setweight(to_tsvector('{PG_CONFIG}', {_CHUNK_TEXT}), 'B')"
)


# Created if missing on open (idempotent). The length is the number of token positions,
# the same count tf is taken from (to_tsvector keeps at most 256 positions per lexeme).
_PG_DDL = (
    "CREATE OR REPLACE FUNCTION semindex_tsv_len(tsvector) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE "
    "AS $$ SELECT coalesce(sum(coalesce(cardinality(positions), 1)), 0)::integer FROM unnest($1) $$",
    f"CREATE TABLE IF NOT EXISTS {PG_TABLE} ("
    " vid BIGINT PRIMARY KEY,"
    " collection_id BIGINT NOT NULL,"
    " tsv tsvector NOT NULL,"
    " len integer GENERATED ALWAYS AS (semindex_tsv_len(tsv)) STORED)",
    f"CREATE INDEX IF NOT EXISTS ix_{PG_TABLE}_tsv ON {PG_TABLE} USING GIN (tsv)",
    f"CREATE INDEX IF NOT EXISTS ix_{PG_TABLE}_collection ON {PG_TABLE} (collection_id)",
    f"CREATE TABLE IF NOT EXISTS {PG_TERMS} ("
    " collection_id BIGINT NOT NULL, term text NOT NULL, df BIGINT NOT NULL,"
    " PRIMARY KEY (collection_id, term))",
    f"CREATE TABLE IF NOT EXISTS {PG_STATS} ("
    " collection_id BIGINT PRIMARY KEY, n BIGINT NOT NULL, total_len BIGINT NOT NULL)",
)

# Statement-level: one aggregate per statement, however many rows it touched. Rows are
# grouped by collection, so a raw statement spanning collections is counted right too.
# Term rows are visited in (collection, term) order so two such statements cannot deadlock.
_PG_TRIGGERS = (
    f"""CREATE OR REPLACE FUNCTION semindex_fts_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  zc bigint[];
  zt text[];
BEGIN
  IF current_setting('semindex.fts_stats', true) = 'off' THEN
    RETURN NULL;
  END IF;
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    WITH g AS (
      SELECT r.collection_id, u.lexeme, count(*) AS c FROM semindex_old r, unnest(r.tsv) u
      GROUP BY 1, 2 ORDER BY 1, 2
    ), upd AS (
      UPDATE {PG_TERMS} t SET df = t.df - g.c FROM g
      WHERE t.collection_id = g.collection_id AND t.term = g.lexeme
      RETURNING t.collection_id, t.term, t.df
    )
    SELECT array_agg(collection_id), array_agg(term) INTO zc, zt FROM upd WHERE df <= 0;
    IF zc IS NOT NULL THEN
      DELETE FROM {PG_TERMS} t USING unnest(zc, zt) AS z(c, term)
      WHERE t.collection_id = z.c AND t.term = z.term AND t.df <= 0;
    END IF;
    UPDATE {PG_STATS} s SET n = s.n - g.n, total_len = s.total_len - g.l
    FROM (SELECT collection_id, count(*) AS n, coalesce(sum(len), 0) AS l FROM semindex_old GROUP BY 1) g
    WHERE s.collection_id = g.collection_id;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO {PG_TERMS} AS t (collection_id, term, df)
    SELECT r.collection_id, u.lexeme, count(*) FROM semindex_new r, unnest(r.tsv) u GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (collection_id, term) DO UPDATE SET df = t.df + EXCLUDED.df;
    INSERT INTO {PG_STATS} AS s (collection_id, n, total_len)
    SELECT collection_id, count(*), coalesce(sum(len), 0) FROM semindex_new GROUP BY 1 ORDER BY 1
    ON CONFLICT (collection_id) DO UPDATE SET n = s.n + EXCLUDED.n, total_len = s.total_len + EXCLUDED.total_len;
  END IF;
  RETURN NULL;
END $$""",
    f"DROP TRIGGER IF EXISTS semindex_fts_ins ON {PG_TABLE}",
    f"CREATE TRIGGER semindex_fts_ins AFTER INSERT ON {PG_TABLE} REFERENCING NEW TABLE AS semindex_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION semindex_fts_count()",
    f"DROP TRIGGER IF EXISTS semindex_fts_del ON {PG_TABLE}",
    f"CREATE TRIGGER semindex_fts_del AFTER DELETE ON {PG_TABLE} REFERENCING OLD TABLE AS semindex_old "
    "FOR EACH STATEMENT EXECUTE FUNCTION semindex_fts_count()",
    f"DROP TRIGGER IF EXISTS semindex_fts_upd ON {PG_TABLE}",
    f"CREATE TRIGGER semindex_fts_upd AFTER UPDATE ON {PG_TABLE} "
    "REFERENCING OLD TABLE AS semindex_old NEW TABLE AS semindex_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION semindex_fts_count()",
    f"""CREATE OR REPLACE FUNCTION semindex_fts_chunks_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {PG_TABLE} f USING semindex_gone g WHERE f.vid = g.id;
  RETURN NULL;
END $$""",
    "DROP TRIGGER IF EXISTS semindex_fts_chunks_gone ON chunks",
    "CREATE TRIGGER semindex_fts_chunks_gone AFTER DELETE ON chunks REFERENCING OLD TABLE AS semindex_gone "
    "FOR EACH STATEMENT EXECUTE FUNCTION semindex_fts_chunks_gone()",
)
