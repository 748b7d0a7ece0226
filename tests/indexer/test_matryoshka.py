"""Matryoshka truncation (issue 13): ``dimensions=N`` keeps a model's first N dims, re-normalised,
for models trained for it, and is refused for the others.

A tiny random-weight sentence-transformers model stands in for a Matryoshka-trained one: its
card says MatryoshkaLoss (that is what is checked; random weights are not "trained", but the
arithmetic under test does not care). The fast ``mrlhash`` encoder (tests/mrl.py) covers the
paths that do not need torch; the real default model, which is not Matryoshka-trained, is slow.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semindex
from semindex.errors import ConfigError, TruncationError
from semindex.indexer import backends
from semindex.indexer.encoder import get_encoder
from semindex.indexer.truncated import MARKER, TruncatedEncoder, matryoshka_support, truncated
from tests.mrl import TRAINED, matryoshka_encoder
from tests.support import sample_docs

# What sentence-transformers writes into a card when the model was trained with MatryoshkaLoss.
CARD = """---
tags:
- sentence-transformers
- loss:MatryoshkaLoss
---
#### MatryoshkaLoss
```json
{
    "loss": "MultipleNegativesRankingLoss",
    "matryoshka_dims": [
        32,
        16,
        8
    ],
    "matryoshka_weights": [1, 1, 1],
    "n_dims_per_step": -1
}
```
"""
TEXTS = [d["title"] + " " + d["text"] for d in sample_docs()]


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny models run on torch: no OpenVINO/ONNX export per test (backends are tested elsewhere)."""
    monkeypatch.setenv(backends.BACKEND_ENV, "torch")
    monkeypatch.delenv(backends.PRECISION_ENV, raising=False)


@pytest.fixture(scope="module")
def st_model(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """The tiny BERT saved as a sentence-transformers model (modules, mean pooling), 32-d."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path_factory.mktemp("tiny-st")
    SentenceTransformer(str(tiny_bert), device="cpu").save(str(folder), create_model_card=False)
    return folder


@pytest.fixture(scope="module")
def mrl_model(tmp_path_factory: pytest.TempPathFactory, st_model: Path) -> Path:
    """The same model with a card that says MatryoshkaLoss at 32, 16 and 8 dims."""
    folder = tmp_path_factory.mktemp("tiny-mrl") / "model"
    shutil.copytree(st_model, folder)
    (folder / "README.md").write_text(CARD, encoding="utf-8")
    return folder


@pytest.fixture
def mrl_hash() -> Iterator[str]:
    with matryoshka_encoder() as model:
        yield model


def full_vectors(model: Path, texts: list[str]) -> np.ndarray:
    return get_encoder(str(model), "cpu", backend="torch").encode(texts, normalize=False)


def first_dims(vecs: np.ndarray, n: int) -> np.ndarray:
    cut = vecs[:, :n]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True)  # type: ignore[no-any-return]


# -- how a model says it is trained for truncation -------------------------------------------------


def test_card_marker_and_attribute_are_read(mrl_model: Path, st_model: Path, tmp_path: Path, mrl_hash: str) -> None:
    enc = get_encoder(str(mrl_model), "cpu")
    support = matryoshka_support(enc, enc.name)
    assert support is not None and support.dims == (32, 16, 8) and support.source.endswith("README.md")
    assert matryoshka_support(get_encoder(str(st_model), "cpu"), str(st_model)) is None
    marked = tmp_path / "marked"
    shutil.copytree(st_model, marked)
    (marked / MARKER).write_text(json.dumps({"matryoshka_dims": [16, 8]}), encoding="utf-8")
    got = matryoshka_support(get_encoder(str(marked), "cpu"), str(marked))
    assert got is not None and got.dims == (16, 8) and got.source.endswith(MARKER)
    no_dims = tmp_path / "no-dims"
    shutil.copytree(st_model, no_dims)
    (no_dims / "README.md").write_text("Trained with MatryoshkaLoss.\n", encoding="utf-8")
    bare = matryoshka_support(get_encoder(str(no_dims), "cpu"), str(no_dims))
    assert bare is not None and bare.dims == ()
    fake = get_encoder(mrl_hash)
    assert matryoshka_support(fake, fake.name) == matryoshka_support(fake, "anything")
    assert matryoshka_support(fake, fake.name).dims == TRAINED  # type: ignore[union-attr]


# -- an accepted model: N-d unit vectors, the first N dims of the full ones -------------------------


def test_truncated_collection_vectors_search_and_reopen(tmp_path: Path, mrl_model: Path) -> None:
    path = tmp_path / "store"
    with semindex.Store(path) as store:
        coll = store.create_collection("m", model=str(mrl_model), dimensions=16)
        assert coll.dimension == 16 and coll.truncate_dim == 16 and coll.encoder.dimension == 16
        assert coll.info().truncate_dim == 16 and coll.info().dimension == 16
        got = coll.embed(TEXTS)
        assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        assert np.allclose(got, first_dims(full_vectors(mrl_model, TEXTS), 16), atol=1e-5)
        docs = sample_docs()
        coll.add(docs)
        stored = coll.get_embeddings([d["id"] for d in docs])
        assert np.allclose(np.stack([stored[d["id"]] for d in docs]), got, atol=1e-5)
        hits = coll.search(TEXTS[3], k=3)
        assert hits[0].id == docs[3]["id"]
        assert hits[0].score == pytest.approx(float(got[3] @ got[3]), abs=1e-4)
        assert store.collection("m", dimensions=16).dimension == 16  # the same N: fine
        with pytest.raises(TruncationError, match="cannot take 8-d") as exc:
            store.collection("m", dimensions=8)
        assert isinstance(exc.value, ConfigError) and exc.value.http_status == 422
    with semindex.Store(path) as store:  # recorded: a later process truncates too
        coll = store.collection("m")
        assert coll.dimension == 16 and coll.encoder.dimension == 16
        assert np.allclose(coll.embed(TEXTS[:2]), got[:2], atol=1e-5)
        full = store.create_collection("full", model=str(mrl_model))
        assert full.dimension == 32 and full.truncate_dim is None
        with pytest.raises(TruncationError, match="full 32-d vectors"):
            store.collection("full", dimensions=16)


def test_chunked_documents_are_truncated_too(tmp_path: Path, mrl_model: Path) -> None:
    long = " ".join(TEXTS) * 2  # several windows of the tiny model's 128 tokens
    with semindex.Store(tmp_path / "store") as store:
        coll = store.create_collection("m", model=str(mrl_model), dimensions=8)
        stats = coll.add([{"id": "long", "text": long}])
        assert stats.chunks > 1 and coll.chunk_count() == stats.chunks
        hits = coll.search(TEXTS[0], k=1, level="chunk")
        assert hits[0].id == "long" and coll.check().ok


def test_trained_sizes_range_and_escape_hatch(tmp_path: Path, mrl_model: Path) -> None:
    with semindex.Store(tmp_path / "store") as store:
        with pytest.raises(TruncationError, match=r"trained for truncation to 32, 16, 8 dims.*not 12"):
            store.create_collection("a", model=str(mrl_model), dimensions=12)
        for bad in (0, 32, 40):
            with pytest.raises(TruncationError, match=r"integer in 1\.\.31"):
                store.create_collection("a", model=str(mrl_model), dimensions=bad, allow_truncation=True)
        assert not store.has_collection("a")  # nothing was created by a refusal
        forced = store.create_collection("a", model=str(mrl_model), dimensions=12, allow_truncation=True)
        assert forced.dimension == 12 and forced.embed("x").shape == (12,)


def test_model_without_matryoshka_training_is_refused(tmp_path: Path, st_model: Path) -> None:
    with semindex.Store(tmp_path / "store") as store:
        with pytest.raises(TruncationError) as exc:
            store.create_collection("a", model=str(st_model), dimensions=16)
        msg = str(exc.value)
        assert str(st_model) in msg and "not trained for truncation" in msg and "\n" not in msg
        assert store.collection("b", model=str(st_model), dimensions=16, allow_truncation=True).dimension == 16


def test_wrapper_is_shared_and_delegates(mrl_hash: str) -> None:
    inner = get_encoder(mrl_hash)
    a, b = truncated(inner, 16), truncated(inner, 16)
    assert a is b and isinstance(a, TruncatedEncoder)  # one object: the query cache keys on it
    assert truncated(inner, None) is inner and truncated(inner, 32) is not a
    assert a.name == inner.name and a.max_seq_length == inner.max_seq_length and a.device == "cpu"
    assert a.encode([]).shape == (0, 16)
    assert np.allclose(a.encode(TEXTS[:4]), first_dims(inner.encode(TEXTS[:4], normalize=False), 16), atol=1e-6)
    raw = a.encode(TEXTS[:4], normalize=False)  # not re-normalised when not asked
    assert np.allclose(raw, inner.encode(TEXTS[:4], normalize=False)[:, :16])


# -- the fast lane: a registered encoder that declares it, the hashing encoder that does not -----------


def test_registered_encoder_search_and_reembed(store: Any, mrl_hash: str) -> None:
    from semindex.reembedding import reembed

    coll = store.create_collection("m", model=mrl_hash, dimensions=32)
    coll.add(sample_docs())
    assert coll.search("sourdough bread", k=1)[0].id == coll.search_vectors(coll.embed(["sourdough bread"]), k=1)[0][0].id
    plain = store.collection("plain")  # the lane's default model (hash:384), full vectors
    plain.add(sample_docs())
    res = reembed(store, "plain", mrl_hash, into="plain16", dimensions=16)
    out = store.get_collection(res.target)
    assert out.dimension == 16 and out.truncate_dim == 16 and out.count() == len(sample_docs())
    in_place = reembed(store, "plain", mrl_hash, dimensions=32)
    assert store.get_collection(in_place.target).dimension == 32
    with pytest.raises(TruncationError):
        reembed(store, "m", mrl_hash, into="m8", dimensions=8)
    assert not store.has_collection("m8")


def test_embed_with_dimensions(mrl_hash: str) -> None:
    full = semindex.embed(TEXTS[:3], mrl_hash, normalize=False)
    assert np.allclose(semindex.embed(TEXTS[:3], mrl_hash, dimensions=32), first_dims(full, 32), atol=1e-6)
    assert semindex.embed(TEXTS[0], mrl_hash, dimensions=16).shape == (16,)
    assert semindex.embed(TEXTS[:2], mrl_hash, dimensions=64).shape == (2, 64)  # its own size: the full vectors
    with pytest.raises(TruncationError):
        semindex.embed(TEXTS[:2], mrl_hash, dimensions=24)
    with pytest.raises(TruncationError, match="not trained"):
        semindex.embed(TEXTS[:2], dimensions=128)  # the lane's hash:384


def test_hash_encoder_and_vectors_only_are_refused(store: Any) -> None:
    with pytest.raises(TruncationError, match="'hash:384' is not trained for truncation"):
        store.create_collection("h", dimensions=64)
    with pytest.raises(TruncationError, match="needs a model"):
        store.create_collection("v", dimension=8, dimensions=4)
    store.create_collection("v", dimension=8)
    with pytest.raises(TruncationError, match="precomputed 8-d vectors"):
        store.collection("v", dimensions=4)
    store.delete_collection("v")
    assert store.collection_names() == []


def test_devices_workers_truncate_too(tmp_path: Path) -> None:
    """--devices encodes in worker processes with the bare model; the collection's truncation still applies."""
    from tests.indexer.test_multidevice import _rows
    from tests.support import SAMPLE, invoke_cli

    flags = ("--model", "hash:64", "--dimensions", "16", "--force-dimensions")
    invoke_cli("index", str(SAMPLE), "--store", str(tmp_path / "one"), *flags, check=True)
    invoke_cli("index", str(SAMPLE), "--store", str(tmp_path / "two"), *flags, "--devices", "cpu", check=True)
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert list(one) == list(two) and all(v[3].shape == (16,) for v in two.values())
    for doc_id in one:
        np.testing.assert_allclose(one[doc_id][3], two[doc_id][3], atol=1e-5)


def test_ray_engine_refuses_a_truncated_collection(store: Any, mrl_hash: str) -> None:
    from semindex.indexer.ray_engine import RayOptions, ray_index

    coll = store.create_collection("m", model=mrl_hash, dimensions=16)
    with pytest.raises(ConfigError, match="--engine ray does not truncate"):
        ray_index(coll, [], RayOptions())


@pytest.mark.slow
def test_default_model_is_refused(tmp_path: Path) -> None:
    with semindex.Store(tmp_path / "store") as store:
        with pytest.raises(TruncationError, match="all-MiniLM-L6-v2' is not trained for truncation"):
            store.create_collection("d", dimensions=128)
        assert store.collection_names() == []
