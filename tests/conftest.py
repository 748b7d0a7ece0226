"""Shared fixtures: hermetic env, the encoder (fake in the fast lane, real when slow), real stores.

Which encoder a test gets: tests marked ``@pytest.mark.slow`` run with the real default model
(all-MiniLM-L6-v2), everything else with the deterministic hashing encoder ``hash:384``
(semindex/indexer/fake.py), set as the default model through ``$SEMINDEX_MODEL`` so the library,
the CLI (in process or as a subprocess) and the API all pick it up. Collections record the model
they were built with, so a test that asserts the real model's name or ranking quality belongs in
the slow lane; ``fast_model``/``real_model`` say which lane a test is in.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import sample_docs

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


FAKE_MODEL = "hash:384"

# Heavy tests (process kills, chaos, property searches, every index type over many vectors, torch
# cross-encoders): they run in the slow lane, named here by node-id prefix so their files stay as
# their owners wrote them. `make test` runs them; `make test-fast` does not.
SLOW_LANE = (
    "tests/reliability/",
    "tests/search/test_rerank.py",  # cross-encoders: torch
    "tests/storage/test_filters.py::test_property_sql_equals_matches",
    "tests/storage/test_ann.py::test_upsert_delete_filter_and_reopen_on_every_type",
    "tests/indexer/test_multidevice.py::test_bad_devices_are_one_line[flags1-",  # asks torch for CUDA
)
# The fast lane never loads torch: a test that needs one of these (random-weight BERTs saved with
# transformers, so torch, transformers and sentence-transformers: seconds of CPU per worker) is in
# the slow lane. `_fast_lane_loads_no_torch` below fails a fast test that loads torch any other way.
TORCH_FIXTURES = frozenset({"tiny_bert", "tiny_cross_encoder"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW_LANE) or TORCH_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# How pytest-xdist (`--dist loadfile`, scripts/test.sh) hands out files, for a short wall time on 2 cores:
# * the torch users run on one worker, so torch, transformers and the session's tiny BERT are
#   loaded once, not once per worker (seconds of CPU each);
# * the Ray files run on one worker: the first Ray test a worker meets runs every Ray test of the
#   session in one network namespace with one cluster (tests/distributed/conftest.py), so two
#   workers holding Ray files ran the whole Ray suite twice (130 s each);
# * the units with the longest run times go first, so none of them starts last on one worker while
#   the others have nothing left (the rest follow in xdist's order: most tests first).
TORCH_FILES = ("tests/indexer/test_backends.py", "tests/indexer/test_matryoshka.py",
               "tests/indexer/test_multidevice.py")
RAY_DIR = "tests/distributed/"
LONG_FIRST = ("ray", "tests/reliability/test_crash.py", "tests/search/test_eval.py", "torch",
              "tests/storage/test_filters.py", "tests/api/test_read_timeouts.py",
              "tests/storage/test_tuning_recall.py", "tests/api/test_deadlines.py", "tests/api/test_hardening.py",
              "tests/api/test_serve.py", "tests/ui/test_page.py", "tests/storage/test_quantized.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):  # type: ignore[misc]
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            path = str(super()._split_scope(nodeid))
            if path.startswith(RAY_DIR):
                return "ray"
            return "torch" if path in TORCH_FILES else path

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the first call: the queue is complete, nothing is assigned yet
                self.ordered = True
                rank = {scope: i for i, scope in enumerate(LONG_FIRST)}
                units = sorted(self.workqueue.items(), key=lambda kv: rank.get(kv[0], len(rank)))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return Scheduling(config, log)


def uses_real_model(node: pytest.Item | pytest.FixtureRequest) -> bool:
    """Slow tests are the real model's lane; the rest run on the fake encoder."""
    item = node.node if isinstance(node, pytest.FixtureRequest) else node
    return item.get_closest_marker("slow") is not None


@pytest.fixture(scope="module", autouse=True)
def _module_lane(request: pytest.FixtureRequest) -> Iterator[None]:
    """Module-scoped fixtures (a shared indexed store, a server) are built in the module's lane:
    the fake encoder unless the whole module is marked slow."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SEMINDEX_MODEL", raising=False)
        if request.node.get_closest_marker("slow") is None:
            mp.setenv("SEMINDEX_MODEL", FAKE_MODEL)
        yield


@pytest.fixture(autouse=True)
def _fast_lane_loads_no_torch(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fast test that imports torch into the worker fails, naming itself: the lane's speed rests on
    never paying for torch (mark the test slow, or keep torch out of the code path it tests)."""
    had = "torch" in sys.modules
    yield
    if not had and "torch" in sys.modules and not uses_real_model(request):
        pytest.fail(f"{request.node.nodeid} loaded torch in the fast lane: mark it slow", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _one_tls_context() -> Iterator[None]:
    """httpx clients in the tests share one TLS context per set of arguments.

    Every ``httpx.Client`` (and so every ``httpx.get``) builds an SSL context and parses certifi's CA
    bundle, about 20 ms, 160 ms for 8 threads at once, although the tests only speak plain HTTP to
    127.0.0.1: 251 clients cost 9 s of the fast lane's worker time. Nothing here uses TLS, so
    sharing a context changes no behaviour under test; an httpx without this function keeps its own."""
    import functools

    from httpx._transports import default

    original = getattr(default, "create_ssl_context", None)
    if original is None:
        yield
        return
    cached = functools.lru_cache(maxsize=16)(original)

    def shared(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        try:
            return cached(verify=verify, cert=cert, trust_env=trust_env)
        except TypeError:  # an unhashable argument: build it as httpx would
            return original(verify=verify, cert=cert, trust_env=trust_env)

    default.create_ssl_context = shared
    yield
    default.create_ssl_context = original


@pytest.fixture(autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    """FAISS runs on one OpenMP thread in the test's own thread (threads it starts keep the default).

    The lanes run one pytest-xdist worker per core, so a second OpenMP thread per worker has no core
    of its own: its team spins and waits instead of working (measured on 2 cores: the index-building
    modules took half the CPU and a third of the wall time on one thread). Tests about the thread
    count set their own and this puts the test's value back afterwards."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """No test sees the developer's store, database, device or model settings; fast tests get the fake."""
    for var in ("SEMINDEX_STORE", "SEMINDEX_DB_URL", "SEMINDEX_DEVICE", "SEMINDEX_API_KEY", "SEMINDEX_MODEL"):
        monkeypatch.delenv(var, raising=False)
    if not uses_real_model(request):
        monkeypatch.setenv("SEMINDEX_MODEL", FAKE_MODEL)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def encoder(_hermetic_env: None) -> Any:
    """The encoder this test's collections use by default (loaded once per process and cached)."""
    from semindex.indexer.encoder import get_encoder

    return get_encoder()


@pytest.fixture
def default_model(_hermetic_env: None) -> str:
    """The model name a collection created without a model records in this test's lane."""
    from semindex.indexer.encoder import canonical_model_name

    return canonical_model_name(None)


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


@pytest.fixture
def sample(store: Any) -> Any:
    """The store's "default" collection holding samples/sample.jsonl (40 documents), in this test's lane."""
    coll = store.collection()
    stats = coll.add(sample_docs())
    assert stats.added == len(sample_docs())
    return coll


def _save_tiny_bert(folder: Path, *, cross_encoder: bool) -> Path:
    """A random-weight BERT over the samples' vocabulary, with its tokenizer, saved with save_pretrained.

    ``cross_encoder``: a BertForSequenceClassification with one label (what sentence-transformers'
    CrossEncoder loads); otherwise a plain BertModel without a sentence-transformers config (loaded
    with mean pooling).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for doc in sample_docs() for w in (doc["title"] + " " + doc["text"]).lower()
         .replace(".", " ").replace(",", " ").split()}
    )
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256 if cross_encoder else 128,
                     **({"num_labels": 1} if cross_encoder else {}))
    torch.manual_seed(0)
    (BertForSequenceClassification(cfg) if cross_encoder else BertModel(cfg)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight plain BERT checkpoint (no sentence-transformers config), saved locally."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), cross_encoder=False)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight BertForSequenceClassification (num_labels=1) with its tokenizer, saved locally."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-ce"), cross_encoder=True)
