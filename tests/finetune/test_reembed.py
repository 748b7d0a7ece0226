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
from tests.support import invoke_cli, sample_docs


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
    assert invoke_cli("index", str(SAMPLE), "--store", store, "-c", "notes", "--model", "hash:16").returncode == 0
    proc = invoke_cli("reembed", "--store", store, "-c", "notes", "--model", "hash:256", "--into", "notes-256", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["count"] == 40 and out["target"] == "notes-256" and out["model"] == "hash:256"
    proc = invoke_cli("search", "sourdough", "--store", store, "-c", "notes-256", "--json", "-k", "1")
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[0])["id"] == "cook-sourdough"


def test_cli_reembed_errors_in_one_line(tmp_path: Path) -> None:
    from tests.support import SAMPLE

    store = str(tmp_path / "s")
    assert invoke_cli("index", str(SAMPLE), "--store", store, "-c", "notes", "--model", "hash:16").returncode == 0
    for args, needle in ((["-c", "nope", "--into", "x"], "nope"), (["-c", "notes", "--into", "notes"], None)):
        proc = invoke_cli("reembed", "--store", store, "--model", "hash:8", *args)
        if needle is None:
            continue
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


# -- in place: a temporary collection, then one transaction swaps it in ----------------------------------------


def test_in_place_reencodes_and_keeps_documents(src_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reembedding, "PAGE", 9)
    before = _state(src_store.get_collection("notes"))
    res = semindex.reembed(src_store, "notes", "hash:32")
    assert (res.source, res.target, res.count) == ("notes", "notes", 40)
    assert src_store.collection_names() == ["notes"]  # no temporary collection left
    coll = src_store.get_collection("notes")
    assert coll.model == "hash:32" and coll.dimension == 32 and _state(coll) == before
    assert coll.check().ok
    assert coll.search("sourdough starter", 1, mode="hybrid")[0].id == "cook-sourdough"


def test_in_place_failure_midway_leaves_the_original(src_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reembedding, "PAGE", 10)
    real = semindex.Collection.add
    calls = {"n": 0}

    def flaky(self: Any, docs: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return real(self, docs, **kw)

    before = _state(src_store.get_collection("notes"))
    monkeypatch.setattr(semindex.Collection, "add", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        semindex.reembed(src_store, "notes", "hash:32")
    monkeypatch.setattr(semindex.Collection, "add", real)
    coll = src_store.get_collection("notes")
    assert coll.model == "hash:16" and _state(coll) == before
    # the next run clears the half-built temporary collection and finishes
    semindex.reembed(src_store, "notes", "hash:32")
    assert src_store.collection_names() == ["notes"] and src_store.get_collection("notes").model == "hash:32"


SLOW_REEMBED = r"""
import sys, time
from semindex.indexer.encoder import register_encoder
from semindex.indexer.fake import HashEncoder

class Slow(HashEncoder):
    def encode(self, texts, **kw):
        time.sleep(0.2)  # slow enough for the test to kill the process between two commits
        return super().encode(texts, **kw)

register_encoder("slow", lambda name, device: Slow("hash:" + name.split(":")[1]), canonical=lambda n: n)
from semindex.cli import main
sys.argv = ["semindex", *sys.argv[1:]]
main()
"""


def test_kill_mid_reembed_leaves_the_original_then_a_rerun_completes(tmp_path: Path) -> None:
    """SIGKILL a real `semindex reembed` (in place) after it has committed part of the new
    collection: the original must read back exactly, and a second run must finish the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support import REPO

    store_dir = tmp_path / "s"
    docs = [{"id": f"d{i}", "title": f"t{i}", "text": f"document {i} about topic {i % 7}", "metadata": {"i": i}}
            for i in range(3000)]
    with semindex.Store(store_dir) as store:
        store.collection("notes", model="hash:16").add(docs)
    with semindex.Store(store_dir) as store:
        coll = store.get_collection("notes")
        before = sorted((d.id, d.text, d.title) for d in coll.get_many(coll.ids(limit=5000)))
    script = tmp_path / "slow_reembed.py"
    script.write_text(SLOW_REEMBED, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), "reembed", "--store", str(store_dir), "-c", "notes",
                             "--model", "slow:24", "--batch-size", "64"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with semindex.Store(store_dir) as store:
                if "notes.reembed" in store.collection_names() and store.get_collection("notes.reembed").count() > 0:
                    break
            assert proc.poll() is None, proc.communicate()[1].decode()
            time.sleep(0.05)
        else:
            pytest.fail("reembed never committed a first batch")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with semindex.Store(store_dir) as store:
        coll = store.get_collection("notes")
        assert coll.model == "hash:16" and coll.count() == 3000
        assert sorted((d.id, d.text, d.title) for d in coll.get_many(coll.ids(limit=5000))) == before
        assert coll.check().ok
        assert 0 < store.get_collection("notes.reembed").count() < 3000  # really killed midway
        semindex.reembed(store, "notes", "hash:24")
        assert store.collection_names() == ["notes"]
        coll = store.get_collection("notes")
        assert coll.model == "hash:24" and coll.count() == 3000 and coll.check().ok
        assert sorted((d.id, d.text, d.title) for d in coll.get_many(coll.ids(limit=5000))) == before


def test_rename_and_swap_collections(store: Any) -> None:
    store.collection("a", model="hash:16").add([{"id": "x", "text": "alpha text"}])
    store.collection("b", model="hash:32").add([{"id": "y", "text": "beta text"}, {"id": "z", "text": "gamma"}])
    store.swap_collections("a", "b")
    assert (store.get_collection("a").model, store.get_collection("a").count()) == ("hash:32", 2)
    assert (store.get_collection("b").model, store.get_collection("b").count()) == ("hash:16", 1)
    assert store.get_collection("a").search("beta", 1, mode="hybrid")[0].id == "y"
    assert store.get_collection("b").search("alpha", 1, mode="keyword")[0].id == "x"
    store.rename_collection("b", "c")
    assert sorted(store.collection_names()) == ["a", "c"]
    assert store.get_collection("c").get("x").text == "alpha text"
    with pytest.raises(CollectionExistsError):
        store.rename_collection("a", "c")
    with pytest.raises(semindex.CollectionNotFoundError):
        store.rename_collection("nope", "d")
    with pytest.raises(semindex.CollectionNotFoundError):
        store.swap_collections("a", "nope")
    with pytest.raises(semindex.InvalidNameError):
        store.rename_collection("a", "bad name!")
    with pytest.raises(InvalidInputError):
        store.swap_collections("a", "a")
    # renamed collections survive a reopen of the store
    path, url = store.path, store.storage.db_url
    store.close()
    with semindex.Store(path, db_url=url if not url.startswith("sqlite") else None) as again:
        assert sorted(again.collection_names()) == ["a", "c"]
        assert again.get_collection("a").count() == 2 and again.get_collection("a").check().ok
