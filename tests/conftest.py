"""Shared fixtures: hermetic env, the real default model, real stores, the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import sample_docs

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's store, database or device settings."""
    for var in ("SEMINDEX_STORE", "SEMINDEX_DB_URL", "SEMINDEX_DEVICE", "SEMINDEX_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def encoder() -> Any:
    from semindex.indexer.encoder import get_encoder

    return get_encoder()


# -- backends: every test that takes `store` (or `db_url`) runs on SQLite and on PostgreSQL ------
#
# PostgreSQL runs when $SEMINDEX_TEST_PG_URL points at a server (`.ci/run` starts a throwaway
# cluster and always sets it; by hand: eval "$(bash scripts/pg.sh start /tmp/pg)"). Each test
# gets a database of its own, created from that URL's server and dropped afterwards.

PG_URL_VAR = "SEMINDEX_TEST_PG_URL"
BACKENDS = ["sqlite", "postgresql"]


def pg_admin_url() -> str | None:
    return os.environ.get(PG_URL_VAR) or None


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "t") -> Iterator[str]:
    """CREATE DATABASE with a random name on the test server; yields its URL; drops it after."""
    import sqlalchemy as sa

    base = pg_admin_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need ${PG_URL_VAR} (set by .ci/run)")
    url = sa.engine.make_url(base)
    name = f"semindex_{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" or "postgresql"; the PostgreSQL run is skipped only when no server is configured."""
    if request.param == "postgresql" and pg_admin_url() is None:
        pytest.skip(f"PostgreSQL tests need ${PG_URL_VAR} (set by .ci/run)")
    return str(request.param)


@pytest.fixture
def db_url(backend: str) -> Iterator[str | None]:
    """The --db URL for this backend: None (SQLite inside the store folder) or a fresh PG database."""
    if backend == "sqlite":
        yield None
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def store(tmp_path: Path, db_url: str | None) -> Iterator[Any]:
    import semindex

    s = semindex.Store(tmp_path / "store", db_url=db_url)
    yield s
    s.close()








@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight plain BERT checkpoint (no sentence-transformers config), saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for doc in sample_docs() for w in (doc["title"] + " " + doc["text"]).lower().replace(".", " ").replace(",", " ").split()}
    )
    (d / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(d / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d
