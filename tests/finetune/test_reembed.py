"""`semindex reembed`: a collection's stored texts re-encoded with another model (fake encoders: fast)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semindex
from semindex import reembedding
from semindex.errors import CollectionExistsError, InvalidInputError
from tests.support import run_cli, sample_docs


def _state(coll: Any) -> list[tuple[str, str, str | None, str]]:
    ids = coll.ids(limit=1000)
    return sorted((d.id, d.text, d.title, json.dumps(d.metadata, sort_keys=True)) for d in coll.get_many(ids))


@pytest.fixture
def src_store(tmp_path: Path) -> Any:
    s = semindex.Store(tmp_path / "store")
    s.collection("notes", model="hash:16").add(sample_docs())
    yield s
    s.close()


def test_into_copies_documents_and_encodes_with_the_new_model(src_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reembedding, "PAGE", 7)  # several pages
    before = _state(src_store.get_collection("notes"))
    seen: list[int] = []
    res = semindex.reembed(src_store, "notes", "hash:32", into="notes-32", progress=seen.append)
    assert (res.source, res.target, res.model, res.count) == ("notes", "notes-32", "hash:32", 40)
    assert sum(seen) == 40 and len(seen) == 6
    new = src_store.get_collection("notes-32")
    assert new.model == "hash:32" and new.dimension == 32 and new.count() == 40
    assert _state(new) == before  # ids, texts, titles, metadata kept
    old = src_store.get_collection("notes")
    assert old.model == "hash:16" and _state(old) == before  # the source is untouched
    # the new vectors are the new model's
    from semindex.indexer.encoder import get_encoder
    from semindex.indexer.pipeline import embedding_input

    doc = new.get("cook-sourdough")
    q = get_encoder("hash:32").encode([embedding_input(doc.text, doc.title)])
    assert new.search_vectors(q, 1)[0][0].id == "cook-sourdough"
    assert new.search("sourdough bread", 3, filter={"topic": "cooking"})[0].metadata["topic"] == "cooking"


def test_into_an_existing_collection_is_refused(src_store: Any) -> None:
    src_store.collection("taken", model="hash:8")
    with pytest.raises(CollectionExistsError):
        semindex.reembed(src_store, "notes", "hash:32", into="taken")
    assert src_store.get_collection("taken").count() == 0


def test_vectors_only_collection_is_refused(src_store: Any) -> None:
    c = src_store.create_collection("vecs", dimension=4)
    c.add_embeddings(["a"], np.ones((1, 4), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="precomputed vectors"):
        semindex.reembed(src_store, "vecs", "hash:8", into="vecs2")


def test_into_failure_midway_leaves_no_half_collection(src_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reembedding, "PAGE", 10)
    calls = {"n": 0}
    real = semindex.Collection.add

    def flaky(self: Any, docs: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(self, docs, **kw)

    monkeypatch.setattr(semindex.Collection, "add", flaky)
    before = _state(src_store.get_collection("notes"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        semindex.reembed(src_store, "notes", "hash:32", into="half")
    assert "half" not in src_store.collection_names()
    assert _state(src_store.get_collection("notes")) == before


def test_cli_reembed_into(tmp_path: Path) -> None:
    from tests.support import SAMPLE

    store = str(tmp_path / "s")
    assert run_cli("index", str(SAMPLE), "--store", store, "-c", "notes", "--model", "hash:16").returncode == 0
    proc = run_cli("reembed", "--store", store, "-c", "notes", "--model", "hash:256", "--into", "notes-256", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["count"] == 40 and out["target"] == "notes-256" and out["model"] == "hash:256"
    proc = run_cli("search", "sourdough", "--store", store, "-c", "notes-256", "--json", "-k", "1")
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[0])["id"] == "cook-sourdough"


def test_cli_reembed_errors_in_one_line(tmp_path: Path) -> None:
    from tests.support import SAMPLE

    store = str(tmp_path / "s")
    assert run_cli("index", str(SAMPLE), "--store", store, "-c", "notes", "--model", "hash:16").returncode == 0
    for args, needle in ((["-c", "nope", "--into", "x"], "nope"), (["-c", "notes", "--into", "notes"], None)):
        proc = run_cli("reembed", "--store", store, "--model", "hash:8", *args)
        if needle is None:
            continue
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
