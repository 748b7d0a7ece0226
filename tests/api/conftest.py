"""Fixtures of the API tests (the servers themselves are in tests/api/serving.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.serving import ThreadServer


@pytest.fixture
def thread_server(encoder: Any) -> Iterator[Any]:
    """Factory: thread_server(store, **create_app_kwargs) -> a started ThreadServer; all stopped at the end."""
    from semindex.api import create_app

    started: list[ThreadServer] = []

    def start(store: Any, **kwargs: Any) -> ThreadServer:
        srv = ThreadServer(create_app(store, **kwargs)).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def sample_store(tmp_path: Path, encoder: Any, db_url: str | None) -> Iterator[Any]:
    """A library Store whose "default" collection holds samples/sample.jsonl (SQLite and PostgreSQL)."""
    import semindex
    from tests.support import sample_docs

    store = semindex.Store(tmp_path / "store", db_url=db_url)
    store.collection().add(sample_docs())
    yield store
    store.close()


