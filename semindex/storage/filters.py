"""Metadata filters: a small JSON query language compiled to portable SQL.

Documents carry a JSON object of metadata. Callers (CLI ``--filter``, the HTTP
API, the Python API) restrict searches with a Mongo/Chroma-like filter::

    {"year": {"$gte": 2020}, "lang": "en"}
    {"$or": [{"source.kind": "wiki"}, {"tags_count": {"$gt": 3}}]}
    {"$not": {"draft": true}}

The same filter has three implementations that must agree exactly:
:func:`compile_filter` (SQLite json1 and PostgreSQL jsonb), and
:func:`matches`, the pure-Python reference evaluator used by tests and for
post-filtering in memory. The rules are deliberately type-strict so that all
three can agree without depending on any database's coercion rules.

Grammar
-------
* ``{"field": value}`` is equality; several keys in one object are ANDed.
* ``{"field": {"$op": operand, ...}}``; several operators in one object are ANDed.
  Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists``.
* ``{"$and": [f, ...]}`` and ``{"$or": [f, ...]}`` take non-empty lists;
  ``{"$not": f}`` takes one filter. ``{}`` (also nested) matches everything.
* Values are str, int, float, bool or None. Lists only as the operand of
  ``$in``/``$nin`` (at most 1,000 scalars each, 10,000 in the whole filter).
  Range operators accept numbers or strings only. Numbers must be finite;
  strings must not contain NUL or lone surrogates (PostgreSQL cannot store them).
* Field keys are dotted paths into nested objects (``"a.b"``); every segment
  matches ``[A-Za-z0-9_][A-Za-z0-9_-]{0,63}``, at most 32 segments. Anything
  else is rejected with :class:`InvalidFilterFieldError`, so keys never need
  quoting anywhere. Paths only descend through objects: a segment is never
  an array index (``"a.0"`` does not reach into a list).
* At most 32 levels of nesting and 1,000 nodes (conditions, logical operators, ``{}``).

Semantics (``x`` is the value at the field's path; "missing" means the path
does not exist, including when an intermediate value is not an object)
----------------------------------------------------------------------------

================  ==========================================================
filter            matches when
================  ==========================================================
``$eq None``      x is JSON null **or** missing
``$eq True``      x is JSON true (never the number 1; bool is not a number)
``$eq 1``         x is a number equal to 1 (``1 == 1.0``; never true/"1")
``$eq "s"``       x is the string "s" (exact code points)
``$ne v``         NOT (``$eq v``) -- so a missing field matches ``$ne 5``
``$in [..]``      ``$eq`` holds for some item; ``$in []`` matches nothing
``$nin [..]``     NOT (``$in [..]``)
``$gt`` etc.      x and the operand are both numbers, or both strings
                  (compared by code point); otherwise (missing, null, bool,
                  other type) false
``$exists true``  the path exists (even if x is null)
``$exists false`` the path does not exist
``$not f``        NOT f (f's "false" cases, such as missing, become true)
objects, arrays   never equal to any scalar; they exist, and match ``$ne``
================  ==========================================================

Numbers compare as IEEE-754 doubles on every engine (PostgreSQL casts to
``float8``, SQLite to REAL, Python to ``float``), so ints beyond 2**53 compare
with double precision. Stored numbers outside the double range are not
supported (PostgreSQL raises on the cast).

SQL notes
---------
Every user value and every key is a bound parameter; the rendered SQL
contains only fixed vocabulary. Each leaf is built so it is TRUE or FALSE,
never NULL (``coalesce``, ``IS [NOT] NULL``), so SQL three-valued logic
cannot leak into ``$not``/``$ne``/``$nin`` and they behave like Python.
Dialect differences live in three small :class:`ColumnElement` classes
compiled with :func:`sqlalchemy.ext.compiler.compiles`:

* :func:`json_kind` -- canonical type name ``null|true|false|number|string|
  array|object`` or NULL when missing. SQLite ``json_type(col, :path)``
  reports ``true``/``false``/``integer``/``real``/``text``; PostgreSQL
  ``jsonb_typeof(...)`` reports ``boolean`` (value read via a text cast) and
  ``number``/``string``.
* :func:`json_number` -- the value as a double, NULL unless it is a number.
  PostgreSQL casts inside ``CASE WHEN jsonb_typeof(..) = 'number'`` so a
  string is never cast (AND order is not guaranteed; CASE order is).
* :func:`json_string` -- the value as text, NULL unless it is a string;
  ``COLLATE "C"`` on PostgreSQL so ordering is by code point like SQLite's
  BINARY collation and Python.

The column may be JSONB (the documents table), JSON, or TEXT holding JSON
(cast to jsonb on PostgreSQL). Stored keys containing dots are not
addressable: ``"a.b"`` always means key ``b`` inside object ``a``.

Paths: SQLite gets one bound JSON path ``$."a"."b"`` built from validated
segments; PostgreSQL gets chained ``->`` with one bound key each (not ``#>``,
which would treat ``"0"`` as an array index, unlike SQLite and Python).
AND/OR/NOT are rendered by a small skeleton element (see ``_BoolTree``) that
keeps SQLite's parser stack, SQLite's expression-depth limit and Python's
recursion limit safe for every filter the validator accepts.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from semindex.errors import FilterError, InvalidFilterFieldError

__all__ = [
    "COMPARISON_OPERATORS",
    "LOGICAL_OPERATORS",
    "MAX_DEPTH",
    "MAX_IN_ITEMS",
    "MAX_NODES",
    "MAX_PATH_SEGMENTS",
    "MAX_TOTAL_IN_ITEMS",
    "InvalidFilterFieldError",
    "compile_filter",
    "json_kind",
    "json_number",
    "json_string",
    "matches",
    "parse_filter_json",
    "validate_filter",
]

MAX_DEPTH = 32
MAX_NODES = 1000
MAX_IN_ITEMS = 1000
# Bounds the bound-parameter count of one statement (SQLite allows 32,766).
MAX_TOTAL_IN_ITEMS = 10_000
MAX_PATH_SEGMENTS = 32

COMPARISON_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$not"})
_RANGE_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


# --------------------------------------------------------------------------
# Parsed form. Validation produces it once; SQL and Python both walk it, so
# the two cannot disagree about what a filter *says*.

Scalar = str | float | bool | None


@dataclass(frozen=True)
class _All:
    """``{}``: matches every document."""


@dataclass(frozen=True)
class _Bool:
    op: str  # "and" | "or"
    children: tuple[_Node, ...]


@dataclass(frozen=True)
class _Not:
    child: _Node


@dataclass(frozen=True)
class _Cond:
    path: tuple[str, ...]
    op: str
    # Scalar for $eq/$ne/range (numbers normalised to float), a tuple of
    # scalars for $in/$nin, a bool for $exists.
    value: Any


_Node = _All | _Bool | _Not | _Cond
_ALL = _All()


def _show(text: str) -> str:
    """Quote user text for an error message, short enough for one CLI line."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


class _Parser:
    """One validation pass; counts nodes and $in items across the whole filter."""

    def __init__(self) -> None:
        self.nodes = 0
        self.in_items = 0

    def _count(self, suffix: str) -> None:
        """Count one node (a condition, a logical operator or an empty ``{}``)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise FilterError(f"filter has more than {MAX_NODES} conditions and operators{suffix}")

    def filter(self, spec: object, where: str, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise FilterError(f"filter is nested more than {MAX_DEPTH} levels deep{_in(where)}")
        if not isinstance(spec, Mapping):
            raise FilterError(f"a filter must be an object, got {_type_name(spec)}{_in(where)}")
        parts: list[_Node] = []
        for key, value in spec.items():
            if not isinstance(key, str):
                raise InvalidFilterFieldError(
                    f"filter keys must be strings, got {_type_name(key)}{_in(where)}"
                )
            if key.startswith("$"):
                parts.append(self.logical(key, value, where, depth))
            else:
                parts.extend(self.field(key, value, where))
        if not parts:
            self._count(_in(where))
            return _ALL
        return parts[0] if len(parts) == 1 else _Bool("and", tuple(parts))

    def logical(self, key: str, value: object, where: str, depth: int) -> _Node:
        here = f"{where}.{key}" if where else key
        if key in LOGICAL_OPERATORS:
            self._count(_in(where))
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)):
                raise FilterError(
                    f"{key} expects a non-empty list of filters, got {_type_name(value)}{_in(where)}"
                )
            if not value:
                raise FilterError(f"{key} expects a non-empty list of filters, got an empty list{_in(where)}")
            children = tuple(self.filter(item, f"{here}[{i}]", depth + 1) for i, item in enumerate(value))
            return _Bool(key[1:], children)
        if key == "$not":
            return _Not(self.filter(value, here, depth + 1))
        if key in COMPARISON_OPERATORS:
            raise FilterError(
                f"operator {_show(key)} must be applied to a field, e.g. "
                f'{{"year": {{"{key}": ...}}}}{_in(where)}'
            )
        raise FilterError(f"unknown operator {_show(key)}{_in(where)}; logical operators are $and, $or, $not")

    def field(self, key: str, value: object, where: str) -> list[_Node]:
        path = _parse_path(key, where)
        at = f" at field {_show(key)}{_in(where)}"
        if not isinstance(value, Mapping):
            return [self.condition(path, "$eq", value, at)]
        if not value:
            raise FilterError(f'empty operator object{at}; use {{"$exists": true}} to test presence')
        conds: list[_Node] = []
        for op, operand in value.items():
            if not isinstance(op, str) or not op.startswith("$"):
                shown = _show(op) if isinstance(op, str) else _type_name(op)
                raise FilterError(
                    f"expected a value or an operator object{at}, got an object with key {shown}; "
                    "objects cannot be compared, use a dotted path such as 'a.b' for nested fields"
                )
            if op not in COMPARISON_OPERATORS:
                raise FilterError(f"unknown operator {_show(op)}{at}")
            conds.append(self.condition(path, op, operand, at))
        return conds

    def condition(self, path: tuple[str, ...], op: str, operand: object, at: str) -> _Cond:
        self._count(at)
        if op == "$exists":
            if not isinstance(operand, bool):
                raise FilterError(f"$exists expects true or false, got {_type_name(operand)}{at}")
            return _Cond(path, op, operand)
        if op in ("$in", "$nin"):
            if not isinstance(operand, (list, tuple)):
                raise FilterError(f"{op} expects a list, got {_type_name(operand)}{at}")
            if len(operand) > MAX_IN_ITEMS:
                raise FilterError(f"{op} accepts at most {MAX_IN_ITEMS} values, got {len(operand)}{at}")
            self.in_items += len(operand)
            if self.in_items > MAX_TOTAL_IN_ITEMS:
                raise FilterError(f"filter has more than {MAX_TOTAL_IN_ITEMS} $in/$nin values in total{at}")
            items: dict[tuple[str, Scalar], Scalar] = {}
            for i, item in enumerate(operand):
                v = _scalar(item, f"{op}[{i}]", at)
                # keyed by type too: True == 1.0 in Python but not in filters
                items.setdefault((type(v).__name__, v), v)
            return _Cond(path, op, tuple(items.values()))
        v = _scalar(operand, op, at)
        if op in _RANGE_OPERATORS and (v is None or isinstance(v, bool)):
            raise FilterError(f"{op} expects a number or a string, got {_type_name(v)}{at}")
        return _Cond(path, op, v)


def _in(where: str) -> str:
    return f" (in {where})" if where else ""


def _scalar(value: object, what: str, at: str) -> Scalar:
    """Normalise one filter value: numbers become float, str subclasses str."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise FilterError(f"{what} number is out of range{at}") from None
        if not math.isfinite(number):
            raise FilterError(f"{what} number must be finite{at}")
        return number
    if isinstance(value, str):
        if "\x00" in value:
            raise FilterError(f"{what} string must not contain NUL characters{at}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FilterError(f"{what} string is not valid Unicode{at}") from None
        return str.__str__(value)
    if isinstance(value, (list, tuple)):
        raise FilterError(f"{what} got a list{at}; lists are only allowed with $in/$nin")
    if isinstance(value, Mapping):
        raise FilterError(f"{what} got an object{at}; values must be strings, numbers, booleans or null")
    raise FilterError(f"{what} got unsupported type {_type_name(value)}{at}")


def _parse_path(key: str, where: str) -> tuple[str, ...]:
    segments = tuple(key.split("."))
    if len(segments) > MAX_PATH_SEGMENTS:
        raise InvalidFilterFieldError(
            f"field {_show(key)} has more than {MAX_PATH_SEGMENTS} path segments{_in(where)}"
        )
    for segment in segments:
        if not _SEGMENT_RE.fullmatch(segment):
            raise InvalidFilterFieldError(
                f"invalid field name {_show(key)}{_in(where)}: each dot-separated part must be 1-64 "
                "letters, digits, '_' or '-', not starting with '-'"
            )
    return segments


def _parse(spec: Mapping[str, Any] | None) -> _Node:
    if spec is None:
        return _ALL
    return _Parser().filter(spec, "", 1)


# --------------------------------------------------------------------------
# Public API


def validate_filter(spec: Mapping[str, Any] | None) -> None:
    """Raise :class:`FilterError` naming the bad part if *spec* is not a valid filter.

    Edges (CLI, HTTP) call this early so a typo is a 422 with a clear message
    instead of an empty result or a database error.
    """
    _parse(spec)


def compile_filter(
    spec: Mapping[str, Any] | None, column: sa.ColumnElement[Any]
) -> sa.ColumnElement[bool] | None:
    """Compile *spec* into a boolean SQL expression over the JSON *column*.

    Returns None for ``None`` or ``{}`` so callers can skip the WHERE clause.
    The expression renders on SQLite and PostgreSQL; all values and keys are
    bound parameters.
    """
    node = _parse(spec)
    if node is _ALL:
        return None
    return _to_sql(node, column)


def matches(spec: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> bool:
    """Evaluate *spec* against one metadata dict in Python, with the SQL semantics.

    The reference implementation: tests assert SQL results equal it, and
    in-memory paths (e.g. filtering vector-index hits) can use it directly.
    """
    return _eval(_parse(spec), metadata)


def parse_filter_json(text: str) -> dict[str, Any]:
    """Parse a ``--filter``/query-string JSON filter and validate it.

    Rejects NaN/Infinity and duplicate keys, which :func:`json.loads` would
    silently accept (a duplicate key would otherwise drop a condition).
    """

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise FilterError(f"--filter has duplicate key {_show(key)}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise FilterError(f"--filter is not valid JSON: {name} is not allowed")

    try:
        spec = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as err:
        raise FilterError(f"--filter is not valid JSON: {err}") from None
    except RecursionError:
        raise FilterError("--filter is not valid JSON: nested too deeply") from None
    if not isinstance(spec, dict):
        raise FilterError(f"--filter must be a JSON object, got {_type_name(spec)}")
    validate_filter(spec)
    return spec


# --------------------------------------------------------------------------
# Python evaluator

_MISSING: Any = object()


def _lookup(metadata: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = metadata
    for segment in path:
        if not isinstance(current, Mapping) or segment not in current:
            return _MISSING
        current = current[segment]
    return current


def _as_number(value: Any) -> float | None:
    """The value as a double if it is a JSON number (bool is not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # huge ints: SQLite also reads them as +-inf
        return math.inf if value > 0 else -math.inf


def _py_eq(actual: Any, value: Scalar) -> bool:
    if value is None:
        return actual is _MISSING or actual is None
    if isinstance(value, bool):
        return isinstance(actual, bool) and actual == value
    if isinstance(value, float):
        number = _as_number(actual)
        return number is not None and number == value
    return isinstance(actual, str) and actual == value


def _eval(node: _Node, metadata: Mapping[str, Any]) -> bool:
    if isinstance(node, _All):
        return True
    if isinstance(node, _Bool):
        results = (_eval(child, metadata) for child in node.children)
        return all(results) if node.op == "and" else any(results)
    if isinstance(node, _Not):
        return not _eval(node.child, metadata)
    actual = _lookup(metadata, node.path)
    op, value = node.op, node.value
    if op == "$exists":
        return bool((actual is not _MISSING) == value)
    if op == "$eq":
        return _py_eq(actual, value)
    if op == "$ne":
        return not _py_eq(actual, value)
    if op == "$in":
        return any(_py_eq(actual, item) for item in value)
    if op == "$nin":
        return not any(_py_eq(actual, item) for item in value)
    compare = _RANGE_OPERATORS[op]
    if isinstance(value, str):
        return isinstance(actual, str) and bool(compare(actual, value))
    number = _as_number(actual)
    return number is not None and bool(compare(number, value))


# --------------------------------------------------------------------------
# SQL building blocks


def _lit(word: str) -> ColumnElement[str]:
    """A fixed SQL string constant from this module's own vocabulary (never user data)."""
    assert word.isalpha() and word.islower(), word
    return sa.literal_column(f"'{word}'", sa.String())


def _sqlite_json_path(path: tuple[str, ...]) -> str:
    # Segments are validated to [A-Za-z0-9_-], so quoting them is safe; the
    # result is still passed as a bound parameter, never inlined.
    return "$" + "".join(f'."{segment}"' for segment in path)


class _JsonPathElement(ColumnElement[Any]):
    """Base for "value at a JSON path" expressions; subclasses differ only in rendering.

    Both dialects' parameters are created up front and are part of the cache
    key, so a cached compiled statement is reused safely for other paths of
    the same length.
    """

    inherit_cache = True
    # Not ClassVar: SQLAlchemy declares _traverse_internals an instance attribute, and mypy refuses
    # a class variable over it; it is still read per class, hence the RUF012 waiver.
    _traverse_internals: list[tuple[str, InternalTraversal]] = [  # noqa: RUF012
        ("column", InternalTraversal.dp_clauseelement),
        ("sqlite_path", InternalTraversal.dp_clauseelement),
        ("keys", InternalTraversal.dp_clauseelement_tuple),
    ]

    def __init__(self, column: ColumnElement[Any], path: tuple[str, ...]) -> None:
        # Public builders can be called directly, so the path is checked here
        # too: a quote in a segment would silently address another JSON path.
        _parse_path(".".join(path), "")
        self.column = column
        self.path = path
        self.sqlite_path = sa.bindparam(None, _sqlite_json_path(path), type_=sa.String())
        self.keys = tuple(sa.bindparam(None, segment, type_=sa.String()) for segment in path)

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects


class _JsonKind(_JsonPathElement):
    inherit_cache = True
    type = sa.String()


class _JsonNumber(_JsonPathElement):
    inherit_cache = True
    type = sa.Double()


class _JsonString(_JsonPathElement):
    inherit_cache = True
    type = sa.String()


def json_kind(column: ColumnElement[Any], path: tuple[str, ...]) -> ColumnElement[str]:
    """``'null'|'true'|'false'|'number'|'string'|'array'|'object'``, NULL if the path is missing."""
    return _JsonKind(column, path)


def json_number(column: ColumnElement[Any], path: tuple[str, ...]) -> ColumnElement[float]:
    """The value as a double precision number; NULL unless it is a JSON number."""
    return _JsonNumber(column, path)


def json_string(column: ColumnElement[Any], path: tuple[str, ...]) -> ColumnElement[str]:
    """The value as text (code-point ordered); NULL unless it is a JSON string."""
    return _JsonString(column, path)


@compiles(_JsonPathElement)
def _compile_unsupported(element: _JsonPathElement, compiler: SQLCompiler, **kw: Any) -> str:
    raise sa.exc.CompileError(
        f"metadata filters support SQLite and PostgreSQL, not {compiler.dialect.name!r}"
    )


# SQLite (json1) ----------------------------------------------------------


def _sqlite_type(element: _JsonPathElement) -> ColumnElement[Any]:
    return sa.func.json_type(element.column, element.sqlite_path)


def _sqlite_value(element: _JsonPathElement) -> ColumnElement[Any]:
    return sa.func.json_extract(element.column, element.sqlite_path)


@compiles(_JsonKind, "sqlite")
def _kind_sqlite(element: _JsonKind, compiler: SQLCompiler, **kw: Any) -> str:
    kind = _sqlite_type(element)
    expr = sa.case(
        (_lit("integer"), _lit("number")),
        (_lit("real"), _lit("number")),
        (_lit("text"), _lit("string")),
        value=kind,
        else_=kind,  # null, true, false, array, object -- or NULL when missing
    )
    return compiler.process(expr, **kw)


@compiles(_JsonNumber, "sqlite")
def _number_sqlite(element: _JsonNumber, compiler: SQLCompiler, **kw: Any) -> str:
    # CAST to REAL so ints compare as doubles, like PostgreSQL's float8 and Python's float.
    expr = sa.case(
        (
            _sqlite_type(element).in_([_lit("integer"), _lit("real")]),
            sa.cast(_sqlite_value(element), sa.REAL()),
        ),
    )
    return compiler.process(expr, **kw)


@compiles(_JsonString, "sqlite")
def _string_sqlite(element: _JsonString, compiler: SQLCompiler, **kw: Any) -> str:
    # json_extract's result carries no collation, so comparisons use BINARY
    # (UTF-8 byte order == code-point order).
    expr = sa.case((_sqlite_type(element) == _lit("text"), _sqlite_value(element)))
    return compiler.process(expr, **kw)


# PostgreSQL (jsonb) ------------------------------------------------------


def _pg_root(element: _JsonPathElement, compiler: SQLCompiler) -> tuple[ColumnElement[Any], str]:
    """The column as a JSON value and the matching typeof function.

    The documents table uses JSONB; a plain JSON column works with the
    ``json_*`` functions; anything else (TEXT holding JSON) is cast to jsonb.
    """
    impl = element.column.type.dialect_impl(compiler.dialect)
    if isinstance(impl, postgresql.JSONB):
        return element.column, "jsonb_typeof"
    if isinstance(impl, sa.JSON):
        return element.column, "json_typeof"
    return sa.cast(element.column, postgresql.JSONB()), "jsonb_typeof"


def _pg_get(root: ColumnElement[Any], keys: tuple[Any, ...]) -> ColumnElement[Any]:
    # Chained "->" with text keys: on an array (or scalar) "-> text" is NULL,
    # matching SQLite paths and Python, whereas "#>" would index arrays.
    for key in keys:
        root = root.op("->", return_type=postgresql.JSONB())(key)
    return root


def _pg_value_and_text(
    element: _JsonPathElement, compiler: SQLCompiler
) -> tuple[ColumnElement[Any], Any, ColumnElement[str]]:
    root, typeof = _pg_root(element, compiler)
    value = _pg_get(root, element.keys)
    text = _pg_get(root, element.keys[:-1]).op("->>", return_type=sa.Text())(element.keys[-1])
    return value, getattr(sa.func, typeof)(value), text


@compiles(_JsonKind, "postgresql")
def _kind_pg(element: _JsonKind, compiler: SQLCompiler, **kw: Any) -> str:
    value, kind, _ = _pg_value_and_text(element, compiler)
    expr = sa.case(
        (_lit("boolean"), sa.cast(value, sa.Text())),  # 'true' / 'false'
        value=kind,
        else_=kind,  # null, number, string, array, object -- or NULL when missing
    )
    return compiler.process(expr, **kw)


@compiles(_JsonNumber, "postgresql")
def _number_pg(element: _JsonNumber, compiler: SQLCompiler, **kw: Any) -> str:
    # The CASE guard, not an AND, guarantees the cast never sees a string.
    _, kind, text = _pg_value_and_text(element, compiler)
    expr = sa.case((kind == _lit("number"), sa.cast(text, sa.Double())))
    return compiler.process(expr, **kw)


@compiles(_JsonString, "postgresql")
def _string_pg(element: _JsonString, compiler: SQLCompiler, **kw: Any) -> str:
    # "C" orders by byte = code point, like SQLite BINARY and Python; the
    # database's default collation (e.g. ICU/en_US) would not.
    _, kind, text = _pg_value_and_text(element, compiler)
    expr = sa.collate(sa.case((kind == _lit("string"), text)), "C")
    return compiler.process(expr, **kw)


# Filter -> SQL ------------------------------------------------------------


def _never_null(expr: ColumnElement[bool]) -> ColumnElement[bool]:
    return sa.func.coalesce(expr, sa.false(), type_=sa.Boolean())


def _eq_sql(column: ColumnElement[Any], path: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
    if value is None:
        return sa.func.coalesce(json_kind(column, path), _lit("null")) == _lit("null")
    if isinstance(value, bool):
        return sa.func.coalesce(json_kind(column, path), _lit("missing")) == _lit(str(value).lower())
    if isinstance(value, float):
        return _never_null(json_number(column, path) == sa.bindparam(None, value, type_=sa.Double()))
    return _never_null(json_string(column, path) == sa.bindparam(None, value, type_=sa.String()))


def _in_sql(
    column: ColumnElement[Any], path: tuple[str, ...], values: tuple[Scalar, ...]
) -> ColumnElement[bool]:
    numbers = [v for v in values if isinstance(v, float)]
    strings = [v for v in values if isinstance(v, str)]
    kinds = [
        _lit("null" if v is None else str(v).lower()) for v in values if v is None or isinstance(v, bool)
    ]
    parts: list[ColumnElement[bool]] = []
    if numbers:
        parts.append(_never_null(json_number(column, path).in_(numbers)))
    if strings:
        parts.append(_never_null(json_string(column, path).in_(strings)))
    if kinds:
        # missing reads as 'null', which is in the list exactly when None is
        parts.append(sa.func.coalesce(json_kind(column, path), _lit("null")).in_(kinds))
    if not parts:
        return sa.false()
    return sa.or_(*parts)


def _cond_sql(cond: _Cond, column: ColumnElement[Any]) -> ColumnElement[bool]:
    op, value = cond.op, cond.value
    if op == "$exists":
        kind = json_kind(column, cond.path)
        return kind.is_not(None) if value else kind.is_(None)
    if op == "$eq":
        return _eq_sql(column, cond.path, value)
    if op == "$ne":
        return sa.not_(_eq_sql(column, cond.path, value))
    if op == "$in":
        return _in_sql(column, cond.path, value)
    if op == "$nin":
        return sa.not_(_in_sql(column, cond.path, value))
    compare = _RANGE_OPERATORS[op]
    if isinstance(value, str):
        return _never_null(
            compare(json_string(column, cond.path), sa.bindparam(None, value, type_=sa.String()))
        )
    return _never_null(compare(json_number(column, cond.path), sa.bindparam(None, value, type_=sa.Double())))


# Boolean skeleton -----------------------------------------------------------
#
# AND/OR/NOT are rendered by _BoolTree rather than nested and_()/or_()/not_():
#
# * SQLite's LALR parser has a fixed stack (~100 entries). A parenthesised
#   group costs about one entry in first position of a list but three after
#   an AND/OR, so NOT is pushed down to the leaves (De Morgan -- exact here
#   because every leaf is TRUE or FALSE) and the costliest child goes first.
#   Reordering is safe for the same reason.
# * SQLite caps expression-tree depth at 1,000 and "a OR b OR ..." is a
#   left-deep tree, so lists longer than _GROUP become parenthesised groups.
# * SQLAlchemy's compiler spends ~25 Python frames per nested boolean group;
#   a 32-level filter came close to the default recursion limit. Here each
#   level is one frame, and leaves are compiled one at a time.
#
# A shape is ("leaf", index, cost) | ("true"|"false", None, 0) |
# ("and"|"or", (shape, ...), cost); it is part of the cache key, the leaf
# expressions (with their bound parameters) are traversed normally.

_Shape = tuple[str, Any, int]
_GROUP = 16
_TRUE: _Shape = ("true", None, 0)
_FALSE: _Shape = ("false", None, 0)


class _BoolTree(ColumnElement[bool]):
    """AND/OR skeleton over independently compiled leaf predicates."""

    inherit_cache = True
    # Not ClassVar: SQLAlchemy declares _traverse_internals an instance attribute, and mypy refuses
    # a class variable over it; it is still read per class, hence the RUF012 waiver.
    _traverse_internals: list[tuple[str, InternalTraversal]] = [  # noqa: RUF012
        ("shape", InternalTraversal.dp_plain_obj),
        ("leaves", InternalTraversal.dp_clauseelement_tuple),
    ]
    type = sa.Boolean()

    def __init__(self, shape: _Shape, leaves: tuple[ColumnElement[bool], ...]) -> None:
        self.shape = shape
        self.leaves = leaves

    @property
    def _from_objects(self) -> list[Any]:
        seen: dict[Any, None] = {}
        for leaf in self.leaves:
            seen.update(dict.fromkeys(leaf._from_objects))
        return list(seen)


@compiles(_BoolTree)
def _compile_tree(element: _BoolTree, compiler: SQLCompiler, **kw: Any) -> str:
    def render(shape: _Shape) -> str:
        kind, payload, _ = shape
        if kind == "leaf":
            return compiler.process(element.leaves[payload], **kw)
        if kind in ("true", "false"):
            return compiler.process(sa.true() if kind == "true" else sa.false(), **kw)
        separator = " AND " if kind == "and" else " OR "
        return "(" + separator.join(render(child) for child in payload) + ")"

    sql = render(element.shape)
    # Always parenthesised, so callers may compose freely: SQLAlchemy renders
    # ``clause.is_(None)`` over a bare ``NOT x`` as ``NOT x IS NULL``, which
    # PostgreSQL reads as ``NOT (x IS NULL)``.
    return sql if element.shape[0] in ("and", "or") else f"({sql})"


def _group(kind: str, items: list[_Shape]) -> _Shape:
    """One AND/OR list, costliest first, split into groups of at most _GROUP."""
    items.sort(key=lambda shape: shape[2], reverse=True)
    while len(items) > _GROUP:
        step = -(-len(items) // _GROUP)
        items = [_group(kind, items[i : i + step]) for i in range(0, len(items), step)]
    cost = max(shape[2] + (1 if i == 0 else 3) for i, shape in enumerate(items))
    return (kind, tuple(items), cost)


def _build(
    node: _Node, column: ColumnElement[Any], negate: bool, leaves: list[ColumnElement[bool]]
) -> _Shape:
    if isinstance(node, _All):
        return _FALSE if negate else _TRUE
    if isinstance(node, _Not):
        return _build(node.child, column, not negate, leaves)
    if isinstance(node, _Bool):
        kind = "and" if (node.op == "and") != negate else "or"
        identity, absorbing = (_TRUE, _FALSE) if kind == "and" else (_FALSE, _TRUE)
        items: list[_Shape] = []
        for child in node.children:
            shape = _build(child, column, negate, leaves)
            if shape == absorbing:
                return absorbing
            if shape[0] == kind:  # (a AND b) AND c -> a AND b AND c
                items.extend(shape[1])
            elif shape != identity:
                items.append(shape)
        if not items:
            return identity
        return items[0] if len(items) == 1 else _group(kind, items)
    expr = _cond_sql(node, column)
    if negate:
        expr = sa.not_(expr)
    leaves.append(expr.self_group(against=operators.and_))  # an $in's OR needs parentheses
    return ("leaf", len(leaves) - 1, 0)


def _to_sql(node: _Node, column: ColumnElement[Any]) -> ColumnElement[bool]:
    leaves: list[ColumnElement[bool]] = []
    shape = _build(node, column, False, leaves)
    if shape == _TRUE:
        return sa.true()
    if shape == _FALSE:
        return sa.false()
    return _BoolTree(shape, tuple(leaves))
