"""The encoder hook: registered encoders, the built-in hashing encoder, names a collection records."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import semindex
from semindex.indexer.encoder import DEFAULT_MODEL, Encoder, canonical_model_name, get_encoder
from semindex.indexer.fake import HashEncoder
from tests.support import REPO


def test_hash_encoder_is_deterministic_normalised_and_fixed_dimension() -> None:
    enc = HashEncoder("hash:64")
    assert (enc.name, enc.dimension) == ("hash:64", 64)
    a = enc.encode(["Black holes form", "baking bread", ""])
    b = HashEncoder("hash:64").encode(["Black holes form", "baking bread", ""])
    assert a.dtype == np.float32 and a.shape == (3, 64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert enc.encode([]).shape == (0, 64)
    assert isinstance(enc, Encoder)


def test_hash_encoder_texts_that_share_words_are_closer() -> None:
    enc = HashEncoder("hash:384")
    q, near, far = enc.encode(["how do black holes form", "black holes form from stars", "a sourdough recipe"])
    assert float(q @ near) > float(q @ far) + 0.2


def test_hash_names_are_canonical_and_validated() -> None:
    assert canonical_model_name("hash") == "hash:384"
    assert canonical_model_name(" hash:32 ") == "hash:32"
    assert get_encoder("hash") is get_encoder("hash:384")
    for bad in ("hash:0", "hash:x", "hash:99999"):
        with pytest.raises(semindex.ConfigError):
            canonical_model_name(bad)


def test_default_model_follows_semindex_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMINDEX_MODEL", raising=False)
    assert canonical_model_name(None) == DEFAULT_MODEL
    monkeypatch.setenv("SEMINDEX_MODEL", "hash:16")
    assert canonical_model_name(None) == "hash:16"


def test_collection_records_the_hash_model_and_mismatch_is_refused(tmp_path: Path) -> None:
    with semindex.Store(tmp_path / "s") as store:
        coll = store.collection("h", model="hash:32")
        coll.add([{"id": "a", "text": "black holes"}, {"id": "b", "text": "bread"}])
        assert (coll.model, coll.dimension) == ("hash:32", 32)
        assert coll.search("black holes", k=1)[0].id == "a"
        with pytest.raises(semindex.ModelMismatchError):
            store.collection("h", model="hash:64")


class _Constant:
    """A user encoder: every text maps to the same unit vector."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dimension = 3

    @property
    def max_seq_length(self) -> int:
        return 10

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        return np.tile(np.array([1, 0, 0], dtype=np.float32), (len(texts), 1))


def test_register_encoder_routes_a_prefix(tmp_path: Path) -> None:
    semindex.register_encoder("const", lambda name, device: _Constant(name))
    try:
        with pytest.raises(semindex.ConfigError):
            semindex.register_encoder("const", lambda name, device: _Constant(name))
        with semindex.Store(tmp_path / "s") as store:
            coll = store.collection("c", model="const:v1")
            coll.add(["anything"])
            assert (coll.model, coll.dimension) == ("const:v1", 3)
    finally:
        semindex.unregister_encoder("const")
    with pytest.raises(semindex.ConfigError):
        semindex.register_encoder("bad:prefix", lambda name, device: _Constant(name))


def test_import_semindex_and_hash_encoding_do_not_load_torch(tmp_path: Path) -> None:
    code = (
        "import sys, semindex\n"
        "from semindex.indexer.encoder import get_encoder\n"
        "get_encoder('hash:8').encode(['x'])\n"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
