"""Inference backends (torch, ONNX Runtime, OpenVINO): same vectors, cached exports, recorded choices.

Tests export a tiny random-weight BERT (the ``tiny_bert`` fixture, which puts them in the slow
lane: it needs torch) or the real all-MiniLM-L6-v2, held to the thresholds the README states.
Tests of a backend skip with one line when its runtime is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semindex
from semindex.errors import ConfigError
from semindex.indexer import backends
from semindex.indexer import encoder as encoder_mod
from tests.support import SAMPLE, invoke_cli, sample_docs

HAVE = {b: importlib.util.find_spec(m) is not None for b, m in (("onnx", "onnxruntime"), ("openvino", "openvino"))}
EXPORTED = [
    pytest.param(b, marks=pytest.mark.skipif(not HAVE[b], reason=f"{b} runtime not installed (pip install 'semindex[{b}]')"))
    for b in ("onnx", "openvino")
]
needs_ort = pytest.mark.skipif(not HAVE["onnx"], reason="onnxruntime not installed (pip install 'semindex[onnx]')")
TEXTS = [d["title"] + " " + d["text"] for d in sample_docs()]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One export cache for this module's tiny models (the real model uses the user's cache)."""
    root = tmp_path_factory.getbasetemp() / "semindex-cache"
    monkeypatch.setenv(backends.CACHE_ENV, str(root))
    for var in (backends.BACKEND_ENV, backends.PRECISION_ENV):
        monkeypatch.delenv(var, raising=False)
    return root


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


def torch_vectors(model: str, texts: list[str]) -> np.ndarray:
    return encoder_mod.get_encoder(model, "cpu", backend="torch").encode(texts)


@pytest.mark.slow  # exports a model (torch.onnx.export, OpenVINO conversion): tens of seconds
@pytest.mark.parametrize("backend", EXPORTED)
def test_fp32_vectors_match_torch(tiny_bert: Path, backend: str) -> None:
    enc = encoder_mod.get_encoder(str(tiny_bert), "cpu", backend=backend, precision="fp32")
    assert enc.dimension == 32 and enc.backend == backend
    got, want = enc.encode(TEXTS, batch_size=8), torch_vectors(str(tiny_bert), TEXTS)
    assert got.shape == want.shape and got.dtype == np.float32
    assert cosines(got, want).min() >= 0.999
    raw = enc.encode(TEXTS[:3], normalize=False)  # the exported graph is the whole pipeline; order kept
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), got[:3], atol=1e-5)


@pytest.mark.slow
@needs_ort
def test_onnx_int8_close_to_torch(tiny_bert: Path) -> None:
    enc = encoder_mod.get_encoder(str(tiny_bert), "cpu", backend="onnx", precision="int8")
    cos = cosines(enc.encode(TEXTS), torch_vectors(str(tiny_bert), TEXTS))
    assert cos.mean() >= 0.95  # random tiny weights; the real model is held to 0.98 (slow test)


@pytest.mark.slow  # an OpenVINO conversion, like the fp32 export above: seconds of CPU
@pytest.mark.skipif(not HAVE["openvino"], reason="openvino not installed (pip install 'semindex[openvino]')")
def test_openvino_bf16_close_to_torch(tiny_bert: Path) -> None:
    enc = encoder_mod.get_encoder(str(tiny_bert), "cpu", backend="openvino", precision="bf16")
    assert cosines(enc.encode(TEXTS), torch_vectors(str(tiny_bert), TEXTS)).min() >= 0.99


@needs_ort
def test_second_load_reuses_the_export(tiny_bert: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = encoder_mod.canonical_model_name(str(tiny_bert))
    first = backends.build_encoder(name, str(tiny_bert), "onnx", "int8")
    entries = sorted(p.name for p in _cache.iterdir())
    assert any("-onnx-fp32-" in e for e in entries) and any("-onnx-int8-" in e for e in entries)
    assert not any(e.startswith(".") for e in entries)  # no temporary folder left behind

    def no_export(*a: Any, **k: Any) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(backends, "_export_onnx", no_export)
    monkeypatch.setattr("semindex.indexer.backends.onnx._quantize", no_export)
    second = backends.build_encoder(name, str(tiny_bert), "onnx", "int8")
    assert second.folder == first.folder
    assert np.allclose(second.encode(TEXTS[:4]), first.encode(TEXTS[:4]))
    assert sorted(p.name for p in _cache.iterdir()) == entries


def test_cache_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "entry"

    def broken(tmp: Path) -> None:
        (tmp / "model.onnx").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        backends.build_cached(target, broken)
    assert list(tmp_path.iterdir()) == []
    backends.build_cached(target, lambda tmp: (tmp / "meta.json").write_text("{}"))
    assert json.loads((target / "meta.json").read_text()) == {}
    backends.build_cached(target, lambda tmp: pytest.fail("rebuilt a complete entry"))


def test_cache_key_follows_model_backend_and_versions(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = backends.cache_dir_for("m", str(tiny_bert), "onnx", "fp32")
    assert a == backends.cache_dir_for("m", str(tiny_bert), "onnx", "fp32")
    assert a != backends.cache_dir_for("m", str(tiny_bert), "onnx", "int8")
    assert a != backends.cache_dir_for("m", str(tiny_bert), "openvino", "fp32")
    monkeypatch.setattr(backends, "_versions", lambda b: {"torch": "0.0"})
    assert a != backends.cache_dir_for("m", str(tiny_bert), "onnx", "fp32")


def test_resolve_refuses_what_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not offer precision 'int8'"):
        backends.resolve("torch", "int8", "cpu")
    with pytest.raises(ConfigError, match="unknown backend"):
        backends.resolve("tensorrt", None, "cpu")
    with pytest.raises(ConfigError, match="unknown precision"):
        backends.resolve(None, "fp8", "cpu")
    with pytest.raises(ConfigError, match="CPU only"):
        backends.resolve("onnx", "fp32", "cuda")
    assert backends.resolve(None, None, "cuda") == ("torch", "fp32")
    monkeypatch.setattr(backends, "available", lambda b: b == "torch")
    with pytest.raises(ConfigError, match=r"pip install 'semindex\[openvino\]'"):
        backends.resolve("openvino", None, "cpu")
    assert backends.resolve(None, None, "cpu") == ("torch", "fp32")  # auto falls back to torch
    monkeypatch.setenv(backends.BACKEND_ENV, "torch")
    assert backends.resolve(None, None, "cpu") == ("torch", "fp32")


@needs_ort
def test_collection_records_backend_and_refuses_mixing(tiny_bert: Path, store: Any, db_url: str | None) -> None:
    model = str(tiny_bert)
    q = store.collection("q", model=model, backend="onnx", precision="int8")
    assert q.record.config["backend"] == "onnx" and q.record.config["precision"] == "int8"
    assert (q.backend, q.precision) == ("onnx", "int8")
    q.add(sample_docs()[:10])
    with pytest.raises(ConfigError, match="holds int8 vectors"):
        store.collection("q", precision="fp32")
    with pytest.raises(ConfigError, match="backend 'torch' would give different ones"):
        store.collection("q", backend="torch")
    f = store.collection("f", model=model, backend="torch")
    assert (f.backend, f.precision) == ("torch", "fp32")
    f.add(sample_docs()[:10])
    with pytest.raises(ConfigError, match="holds fp32 vectors"):
        store.collection("f", precision="int8")
    # fp32 vectors agree across backends: an fp32 collection may be extended with another one
    store.collection("f", backend="onnx").add(sample_docs()[10:12])
    assert store.collection("f").count() == 12
    # reopened from disk, the recorded choice holds (and unrecorded collections count as torch fp32)
    again = semindex.Store(store.path, db_url=db_url)
    try:
        with pytest.raises(ConfigError):
            again.collection("q", precision="fp32")
        assert again.collection("q").encoder.precision == "int8"
    finally:
        again.close()


def test_progress_moves_per_encoded_batch(tiny_bert: Path, store: Any) -> None:
    coll = store.collection("p", model=str(tiny_bert), backend="torch")
    calls: list[int] = []
    docs = sample_docs()
    coll.add_records((semindex.core.to_record(d, i) for i, d in enumerate(docs)), batch_size=8,
                     commit_every=512, progress=calls.append)
    assert len(docs) == 40 and calls == [8] * 5  # one call per model batch, not one per commit


def test_read_ahead_keeps_order_and_raises_reader_errors() -> None:
    from semindex.indexer.pipeline import read_ahead

    assert list(read_ahead(iter([[1], [2], [3]]))) == [[1], [2], [3]]  # type: ignore[list-item]

    def broken() -> Any:
        yield [1]
        raise OSError("disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for b in read_ahead(broken()):
            got.append(b)
    assert got == [[1]]


@needs_ort
def test_cli_flags(tiny_bert: Path, tmp_path: Path) -> None:
    st = str(tmp_path / "s")
    proc = invoke_cli("index", str(SAMPLE), "--store", st, "--model", str(tiny_bert), "--backend", "onnx",
                      "--precision", "int8", "--torch-threads", "1", "--json", check=True)
    assert json.loads(proc.stdout.splitlines()[-1])["added"] == len(sample_docs())
    proc = invoke_cli("search", "black holes", "--store", st, "--json", "--backend", "onnx", "--torch-threads", "1",
                      check=True)
    assert proc.stdout.strip()
    proc = invoke_cli("search", "black holes", "--store", st, "--precision", "fp32")
    assert proc.returncode == 2 and "holds int8 vectors" in proc.stderr and "Traceback" not in proc.stderr
    proc = invoke_cli("index", str(SAMPLE), "--store", st, "--collection", "t", "--model", str(tiny_bert),
                      "--backend", "torch", "--precision", "int8")
    assert proc.returncode == 2 and "does not offer precision 'int8'" in proc.stderr
    for cmd in ("index", "search", "serve"):
        out = invoke_cli(cmd, "--help", check=True).stdout
        assert "--backend" in out and "--precision" in out and "--torch-threads" in out


# -- the real model (slow: exports all-MiniLM-L6-v2 once into the user's cache) -------------------


@pytest.fixture
def real_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backends.CACHE_ENV, raising=False)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "precision", "mean", "minimum"), [
    pytest.param("openvino", "fp32", 0.9999, 0.999, marks=EXPORTED[1].marks),
    pytest.param("openvino", "bf16", 0.999, 0.998, marks=EXPORTED[1].marks),
    pytest.param("onnx", "fp32", 0.9999, 0.999, marks=EXPORTED[0].marks),
    pytest.param("onnx", "int8", 0.98, 0.95, marks=EXPORTED[0].marks),
])
def test_real_model_matches_torch(real_cache: None, backend: str, precision: str, mean: float,
                                  minimum: float) -> None:
    enc = encoder_mod.get_encoder(None, "cpu", backend=backend, precision=precision)
    cos = cosines(enc.encode(TEXTS), torch_vectors(semindex.DEFAULT_MODEL, TEXTS))
    assert cos.mean() >= mean and cos.min() >= minimum, (cos.mean(), cos.min())


@pytest.mark.slow
@pytest.mark.skipif(not HAVE["openvino"], reason="openvino not installed (pip install 'semindex[openvino]')")
def test_default_is_openvino_fp32_on_cpu(real_cache: None, store: Any) -> None:
    coll = store.collection("d", model=semindex.DEFAULT_MODEL)
    assert (coll.backend, coll.precision) == ("openvino", "fp32")
    coll.add(sample_docs())
    assert coll.search("how do black holes form", k=1)[0].id == "astro-black-holes"
