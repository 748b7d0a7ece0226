"""Checks on values that will be stored as JSON or text, shared by every layer that admits input.

A leaf module (imports nothing of semindex), so the HTTP schemas, the ingestion pipeline and
the storage layer can all ask the same questions and cannot drift apart: what the API accepts
is exactly what the store can hold.

* NUL characters: PostgreSQL cannot store them in text or JSON, so they are refused on every
  backend alike (a store must not accept on SQLite what it would refuse on PostgreSQL).
* JSON values: nesting deeper than :data:`MAX_JSON_DEPTH`, NaN/infinity, integers outside the
  64-bit range and lone surrogates cannot round-trip through the metadata column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["INT64", "MAX_JSON_DEPTH", "MAX_TEXT_CHARS", "has_nul", "json_value_problem", "string_problem"]

MAX_JSON_DEPTH = 32
MAX_TEXT_CHARS = 1_000_000  # one document's text (or title): the API's limit, enforced by the store too
INT64 = 2**63


def has_nul(value: Any) -> bool:
    """Whether a string, or any key or string inside a mapping or list, holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def string_problem(s: str, what: str) -> str | None:
    """Why ``s`` cannot be stored (a lone surrogate is not encodable as UTF-8), or None."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} holds a string that is not valid Unicode (lone surrogate)"
    return None


def json_value_problem(value: Any, what: str) -> str | None:
    """The first reason ``value`` cannot be stored as JSON metadata, or None when it can.

    Iterative (no recursion limit to hit on hostile input); ``what`` names the value in the message.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"{what} is nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(v, dict):
            for key, item in v.items():
                if isinstance(key, str) and (problem := string_problem(key, what)):
                    return problem
                stack.append((item, depth + 1))
        elif isinstance(v, list):
            stack.extend((item, depth + 1) for item in v)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not -INT64 <= v < INT64:
                return f"{what} holds an integer outside the 64-bit range"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{what} holds NaN or infinity"
        elif isinstance(v, str) and (problem := string_problem(v, what)):
            return problem
    return None
