"""Tests for semindex.storage.filters.

The contract under test: for every valid filter, the rows SQL returns (on
SQLite, and on PostgreSQL when ``SEMINDEX_TEST_PG_URL`` is set) are exactly
the rows :func:`matches` accepts, nothing user-supplied reaches the SQL text,
and invalid filters fail early with a FilterError that says what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool

from semindex.errors import FilterError, InvalidInputError, InvalidNameError
from semindex.storage.filters import (
    MAX_DEPTH,
    InvalidFilterFieldError,
    compile_filter,
    matches,
    parse_filter_json,
    validate_filter,
)

PG_URL = os.environ.get("SEMINDEX_TEST_PG_URL")

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not PG_URL, reason="SEMINDEX_TEST_PG_URL is not set"),
            ],
        ),
    ],
)
def engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        # StaticPool: one in-memory database shared by every connection.
        eng = sa.create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        assert PG_URL is not None
        eng = sa.create_engine(PG_URL)
    yield eng
    eng.dispose()


@contextlib.contextmanager
def temp_table(engine: sa.Engine, column_type: sa.types.TypeEngine[Any] = JSON_TYPE) -> Iterator[sa.Table]:
    """A uniquely named documents table, dropped afterwards (tests may share a database)."""
    md = sa.MetaData()
    table = sa.Table(
        f"filters_{uuid.uuid4().hex[:12]}",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("metadata", column_type, nullable=False),
    )
    md.create_all(engine)
    try:
        yield table
    finally:
        md.drop_all(engine)


def insert_docs(conn: sa.Connection, table: sa.Table, docs: Mapping[int, Any], as_text: bool = False) -> None:
    if docs:
        conn.execute(
            table.insert(),
            [{"id": i, "metadata": json.dumps(m) if as_text else m} for i, m in docs.items()],
        )


def select_ids(conn: sa.Connection, table: sa.Table, spec: Mapping[str, Any] | None) -> set[int]:
    clause = compile_filter(spec, table.c.metadata)
    stmt = sa.select(table.c.id)
    if clause is not None:
        stmt = stmt.where(clause)
    return {row[0] for row in conn.execute(stmt)}


def expected_ids(spec: Mapping[str, Any] | None, docs: Mapping[int, Any]) -> set[int]:
    return {i for i, m in docs.items() if matches(spec, m)}


# --------------------------------------------------------------------------
# Fixed data set

DOCS: dict[int, dict[str, Any]] = {
    1: {
        "year": 2020,
        "lang": "en",
        "score": 0.5,
        "draft": False,
        "tags": ["a", "b"],
        "author": {"name": "Ann", "age": 31},
    },
    2: {"year": 2021, "lang": "de", "score": 1, "draft": True},
    3: {"year": 2021.0, "lang": "en", "score": None},
    4: {"year": "2021", "lang": "EN"},
    5: {"year": True, "lang": ""},
    6: {"year": None},
    7: {},
    8: {"author": {"name": "Bob", "age": None, "address": {"city": "Zürich"}}},
    9: {"author": "Ann"},
    10: {"author": {"name": "ann"}},
    11: {"score": -0.0, "n": 0},
    12: {"score": 1e-300, "n": -1},
    13: {"score": 2**53, "n": 2**53 + 1},
    14: {"lang": "😀", "title": "O'Reilly"},
    15: {"lang": "é", "title": 'say "hi"'},
    16: {"lang": "e\u0301"},
    17: {"title": "x' OR '1'='1"},
    18: {"title": "'); DROP TABLE docs; --"},
    19: {"draft": 0},
    20: {"draft": 1},
    21: {"draft": "true"},
    22: {"draft": None},
    23: {"a": {"b": {"c": 1}}},
    24: {"a": {"b": [1, 2]}},
    25: {"a": {"b": {"c": "1"}}},
    26: {"a": [{"b": 1}]},
    27: {"a": {"0": "zero"}},
    28: {"a": ["zero"]},
    29: {"a.b": 5},
    30: {"a": {"b": None}},
    31: {"a": None},
    32: {"a": 5},
    33: {"tags": []},
    34: {"tags": {}},
    35: {"year": 1999, "lang": "fr", "score": 10},
    36: {"year": 2022, "lang": "en", "score": 9.75},
    37: {"year": 2023, "lang": "en", "score": 100},
    38: {"year": -2020},
    39: {"year": 2020.5},
    40: {"score": "10"},
    41: {"score": "9"},
    42: {"score": "Z"},
    43: {"score": "a"},
    44: {"lang": "en ", "score": "é"},
    45: {"lang": "en", "year": 2020, "draft": False, "author": {"name": "Ann", "age": 45}},
    46: {"n": 1.5, "x-y": "dash"},
    47: {"_": "underscore", "n": 10},
    48: {"n": -10, "year": 2024},
    49: {"big": 10**20},
    50: {"big": 2**63 - 1},
    51: {"empty": ""},
    52: {"nested": {"deep": {"deeper": {"deepest": True}}}},
}

# Hand-checked results: these pin the semantics, not just SQL == Python.
HAND_CHECKED: list[tuple[dict[str, Any], set[int]]] = [
    ({"year": 2021}, {2, 3}),  # 2021.0 too; not "2021", not true
    ({"year": {"$gte": 2021}}, {2, 3, 36, 37, 48}),
    ({"year": {"$gt": 2020, "$lt": 2022}}, {2, 3, 39}),
    ({"lang": "en"}, {1, 3, 36, 37, 45}),  # not "EN", not "en "
    ({"draft": True}, {2}),  # not 1, not "true"
    ({"draft": False}, {1, 45}),  # not 0
    ({"draft": 1}, {20}),
    ({"author.name": "Ann"}, {1, 45}),  # doc 9's author is a string
    ({"author.age": {"$exists": True}}, {1, 8, 45}),  # null counts as present
    ({"author.address.city": "Zürich"}, {8}),
    ({"a.0": "zero"}, {27}),  # an object key, never an array index (doc 28)
    ({"a.b": 5}, set()),  # a dotted *key* is not addressable (doc 29)
    ({"a.b.c": 1}, {23}),
    ({"a.b": None}, set(DOCS) - {23, 24, 25}),  # null or missing, incl. a=5 / a=null / a=[...]
    ({"score": {"$gt": 9}}, {13, 35, 36, 37}),  # strings "10", "9" are not numbers
    ({"score": {"$gt": "9"}}, {42, 43, 44}),  # code-point order: "Z" < "a" < "é"
    ({"score": {"$lt": "a"}}, {40, 41, 42}),
    ({"score": 0}, {11}),  # -0.0 == 0
    ({"n": 2**53}, {13}),  # numbers compare as doubles: 2**53 + 1 reads as 2**53
    ({"big": 1e20}, {49}),
    ({"tags": {"$exists": True}, "$not": {"tags": None}}, {1, 33, 34}),
    ({"lang": {"$in": ["de", "fr"]}}, {2, 35}),
    ({"title": "x' OR '1'='1"}, {17}),
    ({"title": "'); DROP TABLE docs; --"}, {18}),
    ({"$or": [{"year": 1999}, {"n": {"$lte": -10}}]}, {35, 48}),
    ({"$and": [{"lang": "en"}, {"$not": {"year": {"$gte": 2021}}}]}, {1, 45}),
    ({"$not": {"year": {"$gt": 0}}}, set(DOCS) - {1, 2, 3, 35, 36, 37, 39, 45, 48}),
    ({"nested.deep.deeper.deepest": True}, {52}),
    ({"x-y": "dash", "_": {"$exists": False}}, {46}),
    ({"lang": "e\u0301"}, {16}),  # no Unicode normalisation: not "é"
    ({"empty": ""}, {51}),
]

# Every operator over every kind of stored value; checked against matches().
FILTERS: list[dict[str, Any]] = [
    {"year": 2020},
    {"year": 2020.0},
    {"year": "2021"},
    {"year": True},
    {"year": None},
    {"year": {"$eq": None}},
    {"year": {"$ne": None}},
    {"year": {"$ne": 2021}},
    {"year": {"$ne": True}},
    {"year": {"$ne": "2021"}},
    {"year": {"$gt": 2020}},
    {"year": {"$gte": 2020}},
    {"year": {"$lt": 2020}},
    {"year": {"$lte": 2020}},
    {"year": {"$gt": "2020"}},
    {"year": {"$lt": "3"}},
    {"year": {"$gte": -1e308, "$lte": 1e308}},
    {"score": {"$gte": 0}},
    {"score": {"$lt": 1e-299}},
    {"score": {"$gte": ""}},
    {"score": {"$lte": "\U0010ffff"}},
    {"score": {"$in": [0.5, "10", None]}},
    {"score": {"$nin": [0.5, "10", None]}},
    {"score": {"$in": []}},
    {"score": {"$nin": []}},
    {"draft": {"$in": [True, 0]}},
    {"draft": {"$nin": [False, None]}},
    {"draft": {"$exists": True}},
    {"draft": {"$exists": False}},
    {"draft": {"$exists": True, "$ne": None}},
    {"lang": {"$in": ["en", "EN", "é", "😀"]}},
    {"lang": {"$gt": "e"}},
    {"lang": {"$lt": "E"}},
    {"lang": {"$gte": "en", "$lt": "eo"}},
    {"lang": ""},
    {"author": "Ann"},
    {"author": None},
    {"author": {"$exists": True}},
    {"author.name": {"$in": ["Ann", "ann", "Bob"]}},
    {"author.age": {"$gt": 40}},
    {"author.age": None},
    {"author.age": {"$ne": None}},
    {"a": None},
    {"a": {"$ne": 5}},
    {"a.b": {"$exists": True}},
    {"a.b": {"$exists": False}},
    {"a.b.c": {"$in": [1, "1"]}},
    {"a.0": {"$exists": True}},
    {"tags": {"$exists": True}},
    {"tags": {"$ne": "a"}},
    {"tags.0": "a"},
    {"n": {"$gt": -1, "$lte": 10}},
    {"n": {"$in": [0, -1, 1.5, 9007199254740993]}},
    {"big": {"$gt": 9.2e18}},
    {"big": 9223372036854775807},
    {"$and": [{"lang": "en"}, {"year": {"$gte": 2021}}]},
    {"$or": [{"lang": "en"}, {"draft": True}, {"score": {"$gt": 50}}]},
    {"$not": {"lang": "en"}},
    {"$not": {"$or": [{"lang": "en"}, {"year": None}]}},
    {"$not": {"$and": [{"lang": {"$exists": True}}, {"score": {"$gte": 1}}]}},
    {"$not": {"$not": {"draft": False}}},
    {"$and": [{"$or": [{"a": 5}, {"a.b": None}]}, {"$not": {"a": {"$exists": False}}}]},
    {"lang": "en", "$or": [{"year": 2020}, {"draft": {"$ne": False}}]},
    {"$and": [{}]},
    {"$or": [{}, {"lang": "en"}]},
    {"$not": {}},
    {"$or": [{"$not": {}}, {"lang": "de"}]},
]


@pytest.fixture(scope="module", params=["jsonb", "json", "text"])
def docs_table(request: pytest.FixtureRequest, engine: sa.Engine) -> Iterator[sa.Table]:
    """DOCS in a table whose column is the documents-table JSON type, plain JSON, or JSON in TEXT.

    One table per engine and column type for the module: the tests that take it only read it."""
    column_type: sa.types.TypeEngine[Any] = {"jsonb": JSON_TYPE, "json": sa.JSON(), "text": sa.Text()}[
        request.param
    ]
    with temp_table(engine, column_type) as table:
        with engine.begin() as conn:
            insert_docs(conn, table, DOCS, as_text=request.param == "text")
        yield table


# --------------------------------------------------------------------------
# SQL == matches() on fixed data


@pytest.mark.parametrize(("spec", "expected"), HAND_CHECKED, ids=[json.dumps(s) for s, _ in HAND_CHECKED])
def test_hand_checked_results(
    engine: sa.Engine, docs_table: sa.Table, spec: dict[str, Any], expected: set[int]
) -> None:
    assert expected_ids(spec, DOCS) == expected
    with engine.connect() as conn:
        assert select_ids(conn, docs_table, spec) == expected


@pytest.mark.parametrize("spec", FILTERS, ids=[json.dumps(s) for s in FILTERS])
def test_sql_matches_python(engine: sa.Engine, docs_table: sa.Table, spec: dict[str, Any]) -> None:
    with engine.connect() as conn:
        got = select_ids(conn, docs_table, spec)
        negated = select_ids(conn, docs_table, {"$not": spec})
        # Three-valued logic must not leak: the clause is never NULL, so the
        # filter and its negation partition the table.
        clause = compile_filter(spec, docs_table.c.metadata)
        assert clause is not None
        nulls = conn.execute(
            sa.select(sa.func.count()).select_from(docs_table).where(clause.is_(None))
        ).scalar()
    assert got == expected_ids(spec, DOCS)
    assert negated == set(DOCS) - got
    assert nulls == 0


def test_empty_filter_compiles_to_none(engine: sa.Engine, docs_table: sa.Table) -> None:
    assert compile_filter(None, docs_table.c.metadata) is None
    assert compile_filter({}, docs_table.c.metadata) is None
    assert matches(None, {"a": 1}) and matches({}, {})
    with engine.connect() as conn:
        assert select_ids(conn, docs_table, None) == set(DOCS)


def test_clause_brings_its_own_from(engine: sa.Engine, docs_table: sa.Table) -> None:
    """select(count()).where(filter) must infer FROM from the filter's column."""
    spec = {"$or": [{"lang": "en"}, {"draft": True}]}
    clause = compile_filter(spec, docs_table.c.metadata)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(clause)).scalar() == len(
            expected_ids(spec, DOCS)
        )


def test_cached_statements_use_new_values(engine: sa.Engine, docs_table: sa.Table) -> None:
    """Same shape, different keys and values: SQLAlchemy's statement cache must not mix them up."""
    specs = [
        {"lang": "en"},
        {"lang": "de"},
        {"title": "x' OR '1'='1"},
        {"author.name": "Ann"},
        {"author.age": "Ann"},
        {"a.b": {"$in": [1, "x"]}},
        {"a.0": {"$in": ["zero", "y"]}},
        {"year": {"$gt": 2020}},
        {"score": {"$gt": 9}},
    ]
    with engine.connect() as conn:
        for _ in range(2):
            for spec in specs:
                assert select_ids(conn, docs_table, spec) == expected_ids(spec, DOCS), spec


# --------------------------------------------------------------------------
# Limits: the largest filters the validator accepts must still run


def _deep(depth: int, last: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"a.b.c": {"$nin": [1, "x", None, True]}}
    for level in range(depth - 1):
        op = ("$and", "$or")[level % 2]
        siblings: list[dict[str, Any]] = [{"n": {"$ne": level}}, {"lang": {"$gte": "e"}}]
        spec = {op: [*siblings, spec] if last else [spec, *siblings]}
    return spec


LARGE_FILTERS = {
    "deep-last": _deep(MAX_DEPTH, last=True),
    "deep-first": _deep(MAX_DEPTH, last=False),
    "deep-not": json.loads('{"$not": ' * (MAX_DEPTH - 1) + '{"lang": "en"}' + "}" * (MAX_DEPTH - 1)),
    "wide-or": {"$or": [{"n": i} for i in range(999)]},
    "wide-and": {"$and": [{"n": {"$ne": i}} for i in range(999)]},
    "wide-nested": {
        "$and": [{"$and": [{"year": {"$ne": i * 20 + j}} for j in range(18)]} for i in range(50)]
    },
    "big-in": {"$or": [{"n": {"$in": [i * 1000 + j for j in range(1000)]}} for i in range(10)]},
}


@pytest.mark.parametrize("name", list(LARGE_FILTERS))
def test_largest_valid_filters_run(engine: sa.Engine, name: str) -> None:
    spec = LARGE_FILTERS[name]
    validate_filter(spec)
    with temp_table(engine) as table, engine.begin() as conn:
        insert_docs(conn, table, DOCS)
        assert select_ids(conn, table, spec) == expected_ids(spec, DOCS)


# --------------------------------------------------------------------------
# Property: random filters over random metadata

KEYS = ["a", "b", "c", "0"]
# Top-level keys dominate so most conditions reach a value; nested and "0"
# paths exercise missing intermediates and objects-vs-arrays.
PATHS = ["a", "a", "b", "b", "c", "0", "a.b", "a.0", "b.c", "a.b.c", "c.a"]
POOL: list[Any] = [
    0, 1, -1, 2, 1.0, 1.5, -0.0, 2.5, 2**53, 2**53 + 1, 10**20,
    "", "a", "b", "B", "ab", "é", "😀", "1", "true", "null", "Z", "a'b", 'a"b',
    True, False, None,
]  # fmt: skip


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy by weight (``st.one_of`` drops repeated branches, so it cannot weight)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


texts = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=5)
any_scalar = st.one_of(
    st.sampled_from(POOL),
    st.integers(-3, 3),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
# The values where type-strictness bites: null vs missing, bool vs 0/1, 1 vs 1.0 vs "1".
tricky = st.sampled_from([None, True, False, 0, 1, 1.0, -0.0, 0.5, "", "1", "true", "null", "a"])
# Mostly scalars (what paths can reach), some nested objects, a few arrays.
nested_objects = st.recursive(
    st.dictionaries(st.sampled_from(KEYS), any_scalar, max_size=3),
    lambda children: st.dictionaries(st.sampled_from(KEYS), st.one_of(any_scalar, children), max_size=3),
    max_leaves=4,
)
json_values = weighted(
    (2, any_scalar),
    (3, tricky),
    (2, nested_objects),
    (1, st.lists(st.one_of(any_scalar, nested_objects), max_size=3)),
)
metadata_dicts = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)


def reachable(doc: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) for every value a filter path can reach in *doc*."""
    for key, value in doc.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, Mapping):
            yield from reachable(value, path + ".")


OPERATORS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]
RANGE_FALLBACK = st.one_of(st.integers(-3, 3), st.sampled_from([1.5, -0.0, "", "a", "Z", "é"]), texts)


def filter_trees(depth: int, docs: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Filters nested at most *depth* logical levels deep, aimed mostly at values present in *docs*."""
    pairs = [(p, v) for doc in docs for p, v in reachable(doc) if not isinstance(v, (Mapping, list))]
    paths = sorted({p for doc in docs for p, _ in reachable(doc)} | set(PATHS))
    anywhere = st.tuples(st.sampled_from(paths), any_scalar)
    # a path that holds a scalar somewhere, with a value of a confusable type
    aimed = st.tuples(st.sampled_from(sorted({p for p, _ in pairs} or paths)), tricky)
    targets = weighted((2, st.sampled_from(pairs)), (3, aimed), (1, anywhere)) if pairs else anywhere
    known_values = st.sampled_from([v for _, v in pairs] + POOL)
    others = weighted((2, known_values), (2, tricky), (1, any_scalar))

    @st.composite
    def field_filter(draw: st.DrawFn) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        for _ in range(draw(st.integers(1, 2))):
            path, value = draw(targets)
            if draw(st.integers(0, 3)) == 0:
                spec[path] = value  # implicit $eq
                continue
            ops: dict[str, Any] = {}
            for op in draw(st.lists(st.sampled_from(OPERATORS), min_size=1, max_size=2, unique=True)):
                operand = value if draw(st.booleans()) else draw(others)
                if op == "$exists":
                    operand = draw(st.booleans())
                elif op in ("$in", "$nin"):
                    operand = draw(st.lists(others, max_size=3)) + ([operand] if draw(st.booleans()) else [])
                elif op not in ("$eq", "$ne") and (operand is None or isinstance(operand, bool)):
                    operand = draw(RANGE_FALLBACK)
                ops[op] = operand
            spec[path] = ops
        return spec

    fields = field_filter()

    def level(d: int) -> st.SearchStrategy[dict[str, Any]]:
        if d == 0:
            return fields
        sub = level(d - 1)
        logical = st.one_of(
            st.lists(sub, min_size=1, max_size=3).map(lambda xs: {"$and": xs}),
            st.lists(sub, min_size=1, max_size=3).map(lambda xs: {"$or": xs}),
            sub.map(lambda x: {"$not": x}),
        )
        mixed = st.tuples(fields, logical).map(lambda pair: {**pair[0], **pair[1]})
        return st.one_of(fields, logical, mixed, st.just({}))

    return level(depth)


def subfilters(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """*spec* and every filter nested in it, down to single conditions.

    Checking each one keeps a wrong leaf from hiding behind an AND/OR sibling.
    """
    yield spec
    for key, value in spec.items():
        if key in ("$and", "$or"):
            for child in value:
                yield from subfilters(child)
        elif key == "$not":
            yield from subfilters(value)
        elif len(spec) > 1:
            yield {key: value}
        if isinstance(value, Mapping) and not key.startswith("$") and len(value) > 1:
            yield from ({key: {op: operand}} for op, operand in value.items())


@st.composite
def docs_and_filter(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    docs = draw(st.lists(metadata_dicts, min_size=2, max_size=16))
    return docs, draw(filter_trees(4, docs))


PROBE_VALUES: list[Any] = [None, True, False, 0, 1, 1.5, "", "1", "a", "Z", "é"]


def probes(docs: list[dict[str, Any]], spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The drawn filter, its parts, and a fixed battery of single conditions on the docs' paths.

    The battery puts every confusable value (null/missing, bool/0/1, "1"/1)
    against every operator on paths that really occur, which random trees
    reach only rarely.
    """
    out = list(subfilters(spec))
    paths = sorted({p for doc in docs for p, _ in reachable(doc)})[:3] + ["zz.missing"]
    for path in paths:
        out.append({path: {"$exists": True}})
        out.append({path: {"$in": PROBE_VALUES}})
        for value in PROBE_VALUES:
            out.append({path: value})
            if value is not None and not isinstance(value, bool):
                out.append({path: {"$gt": value}})
                out.append({path: {"$lte": value}})
    return out


def test_property_sql_equals_matches(engine: sa.Engine) -> None:
    with temp_table(engine) as table:

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(case=docs_and_filter())
        def check(case: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
            docs, spec = case
            by_id = dict(enumerate(docs))
            specs = probes(docs, spec)
            # One query evaluates every probe on every row; a NULL would come back as None.
            columns = [
                sa.true().label(f"p{i}") if clause is None else clause.label(f"p{i}")
                for i, clause in enumerate(compile_filter(s, table.c.metadata) for s in specs)
            ]
            with engine.connect() as conn:
                trans = conn.begin()
                try:
                    insert_docs(conn, table, by_id)
                    rows = conn.execute(sa.select(table.c.id, *columns)).all()
                finally:
                    trans.rollback()
            assert len(rows) == len(docs)
            for row in rows:
                for sub, got in zip(specs, row[1:]):
                    assert got in (True, False), (sub, by_id[row[0]], got)
                    assert bool(got) == matches(sub, by_id[row[0]]), (sub, by_id[row[0]])

        check()


# --------------------------------------------------------------------------
# Injection: keys are rejected, values are data

BAD_KEYS = [
    "a') OR 1=1 --",
    "$.x",
    'x" OR "1"="1',
    "a..b",
    "",
    ".a",
    "a.",
    "-a",
    "a b",
    "a\nb",
    "a\n",
    "é",
    "a" * 65,
    "a;b",
    "a'b",
    "a\\b",
    "a[0]",
    "a.*",
    "$",
    "a.$b",
    "a\x00",
    ".".join(["a"] * 33),
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_rejected(engine: sa.Engine, key: str) -> None:
    for spec in ({key: 1}, {"$and": [{"ok": 1}, {key: {"$gt": 1}}]}, {"$not": {key: {"$exists": True}}}):
        with pytest.raises(FilterError):
            validate_filter(spec)
        with pytest.raises(FilterError):
            compile_filter(spec, sa.column("metadata", JSON_TYPE))
        with pytest.raises(FilterError):
            matches(spec, {})


def test_bad_key_error_is_also_a_name_error() -> None:
    with pytest.raises(InvalidFilterFieldError) as info:
        validate_filter({"$or": [{"a') OR 1=1 --": 1}]})
    err = info.value
    assert (
        isinstance(err, FilterError)
        and isinstance(err, InvalidNameError)
        and isinstance(err, InvalidInputError)
    )
    assert err.code == "invalid_filter" and err.http_status == 422
    assert "a') OR 1=1 --" in str(err) and "$or[0]" in str(err)


HOSTILE_VALUES = [
    "zq1' OR '1'='1",
    "zq2'); DROP TABLE docs; --",
    'zq3" OR "1"="1',
    "zq4 $.title",
    "zq5 %(param_1)s",
    "zq6 ? :name %s",
    "zq7\\' --",
    "zq8' || (SELECT 1) || '",
    "zq9 */ /*",
    "zq10\u2028é😀",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
def test_hostile_values_match_literally(engine: sa.Engine, value: str) -> None:
    docs = {1: {"title": value}, 2: {"title": value + "x"}, 3: {"title": "other"}, 4: {}}
    specs_and_expected = [
        ({"title": value}, {1}),
        ({"title": {"$ne": value}}, {2, 3, 4}),
        ({"title": {"$in": [value, "nope"]}}, {1}),
        ({"title": {"$gte": value, "$lte": value}}, {1}),
        ({"$not": {"title": {"$nin": [value]}}}, {1}),
    ]
    with temp_table(engine) as table:
        with engine.begin() as conn:
            insert_docs(conn, table, docs)
        with engine.connect() as conn:
            for spec, expected in specs_and_expected:
                assert expected_ids(spec, docs) == expected
                assert select_ids(conn, table, spec) == expected
            assert sa.inspect(conn).has_table(table.name)  # nothing was dropped


@pytest.mark.parametrize(
    "dialect", [sqlite.dialect(), postgresql.psycopg.dialect()], ids=["sqlite", "postgresql"]
)
def test_no_user_value_or_key_in_sql_text(dialect: sa.Dialect) -> None:
    column = sa.Table("docs", sa.MetaData(), sa.Column("metadata", JSON_TYPE)).c.metadata
    spec = {
        "zqkeyone.zqkeytwo": {"$in": HOSTILE_VALUES, "$ne": "zqne'--"},
        "zqkeythree": {"$gt": "zqgt\"'", "$lt": 123456789.25, "$exists": True},
        "$or": [{"zqkeyfour": "zqeq;"}, {"$not": {"zqkeyfive": 987654321}}],
    }
    sql = str(sa.select(sa.literal(1)).where(compile_filter(spec, column)).compile(dialect=dialect))
    for needle in [*HOSTILE_VALUES, "zq", "123456789", "987654321"]:
        assert needle not in sql
    assert '"' not in sql.replace('COLLATE "C"', "")  # no quoted JSON path or key inlined


# --------------------------------------------------------------------------
# Errors

ERRORS: list[tuple[Any, str]] = [
    ({"year": {"$foo": 1}}, "unknown operator '$foo' at field 'year'"),
    ({"$and": [{"a": 1}, {"b": {"$bad": 1}}]}, "unknown operator '$bad' at field 'b' (in $and[1])"),
    ({"$foo": 1}, "unknown operator '$foo'"),
    ({"$gt": 1}, "operator '$gt' must be applied to a field"),
    ({"year": {"$in": 5}}, "$in expects a list, got int at field 'year'"),
    ({"year": {"$nin": "abc"}}, "$nin expects a list, got str"),
    ({"year": {"$in": [[1]]}}, "$in[0] got a list"),
    ({"year": {"$in": [{"a": 1}]}}, "$in[0] got an object"),
    ({"year": {"$in": list(range(1001))}}, "$in accepts at most 1000 values, got 1001"),
    ({"$and": []}, "$and expects a non-empty list of filters, got an empty list"),
    ({"$or": {"a": 1}}, "$or expects a non-empty list of filters, got object"),
    ({"$not": [{"a": 1}]}, "a filter must be an object, got list (in $not)"),
    ({"$and": [1]}, "a filter must be an object, got int (in $and[0])"),
    ({"year": {"$gt": True}}, "$gt expects a number or a string, got bool at field 'year'"),
    ({"year": {"$gte": None}}, "$gte expects a number or a string, got null"),
    ({"year": {"$lt": [1]}}, "$lt got a list at field 'year'"),
    ({"year": {"$lte": {"x": 1}}}, "$lte got an object"),
    ({"year": [2020, 2021]}, "lists are only allowed with $in/$nin"),
    ({"year": {"from": 2020}}, "use a dotted path"),
    ({"year": {}}, "empty operator object at field 'year'"),
    ({"year": {"$exists": 1}}, "$exists expects true or false, got int"),
    ({"year": float("nan")}, "number must be finite"),
    ({"year": float("inf")}, "number must be finite"),
    ({"year": 10**400}, "number is out of range"),
    ({"title": "a\x00b"}, "must not contain NUL"),
    ({"title": "\ud800"}, "not valid Unicode"),
    ({"title": b"bytes"}, "unsupported type bytes"),
    ({1: 2}, "filter keys must be strings"),
    ([{"a": 1}], "a filter must be an object, got list"),
    ("year", "a filter must be an object, got str"),
    ({"a..b": 1}, "invalid field name 'a..b'"),
    (json.loads('{"$not": ' * MAX_DEPTH + "{}" + "}" * MAX_DEPTH), "nested more than 32 levels deep"),
    ({"$or": [{"n": i} for i in range(1000)]}, "more than 1000 conditions and operators"),
    ({"$or": [{"n": {"$in": list(range(1000))}} for _ in range(11)]}, "more than 10000 $in/$nin values"),
]


@pytest.mark.parametrize(("spec", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_invalid_filters_raise_filter_error(spec: Any, message: str) -> None:
    for call in (
        lambda: validate_filter(spec),
        lambda: compile_filter(spec, sa.column("metadata", JSON_TYPE)),
        lambda: matches(spec, {"year": 2020}),
    ):
        with pytest.raises(FilterError) as info:
            call()
        assert message in str(info.value)


def test_limits_are_inclusive() -> None:
    validate_filter(json.loads('{"$not": ' * (MAX_DEPTH - 1) + '{"a": 1}' + "}" * (MAX_DEPTH - 1)))
    validate_filter({"$or": [{"n": i} for i in range(999)]})  # 999 conditions + $or
    validate_filter({"n": {"$in": list(range(1000))}})
    validate_filter({".".join(["a"] * 32): 1, "b" * 64: 1, "0-_x": {"$exists": False}})


def test_parse_filter_json_accepts_valid_filters() -> None:
    text = '{"year": {"$gte": 2020}, "$or": [{"lang": "en"}, {"draft": null}]}'
    assert parse_filter_json(text) == {"year": {"$gte": 2020}, "$or": [{"lang": "en"}, {"draft": None}]}
    assert parse_filter_json("{}") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "--filter is not valid JSON: "),
        ("year=2020", "--filter is not valid JSON: "),
        ("", "--filter is not valid JSON: "),
        ('{"a": NaN}', "--filter is not valid JSON: NaN is not allowed"),
        ('{"a": -Infinity}', "--filter is not valid JSON: -Infinity is not allowed"),
        ("[" * 100_000, "--filter is not valid JSON"),
        ('[{"a": 1}]', "--filter must be a JSON object, got list"),
        ('"a"', "--filter must be a JSON object, got str"),
        ("null", "--filter must be a JSON object, got null"),
        ('{"a": 1, "a": 2}', "--filter has duplicate key 'a'"),
        ('{"a": {"$foo": 1}}', "unknown operator '$foo' at field 'a'"),
    ],
)
def test_parse_filter_json_errors(text: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter_json(text)
    assert message in str(info.value)


def test_unsupported_dialect_is_a_compile_error() -> None:
    from sqlalchemy.dialects import mysql

    clause = compile_filter({"a": 1}, sa.column("metadata", sa.JSON()))
    with pytest.raises(sa.exc.CompileError, match="SQLite and PostgreSQL"):
        str(clause.compile(dialect=mysql.dialect()))  # type: ignore[union-attr]


def test_path_builders_validate_their_segments() -> None:
    from semindex.storage.filters import json_kind, json_number, json_string

    column = sa.column("metadata", JSON_TYPE)
    for build in (json_kind, json_number, json_string):
        build(column, ("a", "b-c", "0"))
        with pytest.raises(InvalidFilterFieldError):
            build(column, ("a", 'b"c'))
        with pytest.raises(InvalidFilterFieldError):
            build(column, ())
