"""Fixtures for the search tests: one read-only collection of the 40 sample documents per backend.

(tiny_cross_encoder is in tests/conftest.py, next to tiny_bert: one builder for both.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import sample_docs


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sample_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The samples in a store, shared by the read-only tests of a module (encoded once per backend)."""
    import semindex
    from tests.conftest import fresh_pg_database

    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(fresh_pg_database("search")) if request.param == "postgresql" else None
        s = semindex.Store(Path(tmp_path_factory.mktemp("search")) / "store", db_url=db_url)
        stack.callback(s.close)
        s.collection("samples").add(sample_docs())
        yield s


@pytest.fixture
def samples(sample_store: Any) -> Any:
    return sample_store.collection("samples")
