"""`semindex.embed`, `Collection.embed` and `semindex embed` (documents -> .npy / Parquet, streamed, atomic)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import semindex
from semindex.cli import cli
from semindex.cli.embed_cmd import ids_path_for, write_vectors
from tests.support import SAMPLE, sample_docs

FAST = "hash:64"  # the torch-free test encoder: same text, same vector


def run(*args: str, code: int = 0) -> Any:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


def inputs() -> tuple[list[str], list[str]]:
    """The ids and embedding inputs (title then text) `index` would use for the sample corpus."""
    docs = sample_docs()
    return [d["id"] for d in docs], [f"{d['title']} {d['text']}" if d.get("title") else d["text"] for d in docs]


# -- the library --------------------------------------------------------------------------------


def test_embed_is_the_collection_encoding_and_shares_the_model(store: Any, encoder: Any) -> None:
    texts = ["how do black holes form", "baking bread at home"]
    vecs = semindex.embed(texts)
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    coll = store.collection("docs")
    np.testing.assert_allclose(coll.embed(texts), vecs, atol=1e-6)
    np.testing.assert_allclose(semindex.embed(texts[0]), vecs[0], atol=1e-6)  # one string -> one vector
    # what a collection stores is what embed returns: searching with the vector finds the document
    coll.add([{"id": "bh", "text": texts[0]}, {"id": "bread", "text": texts[1]}])
    assert coll.search_vectors(semindex.embed([texts[1]]), k=1)[0][0].id == "bread"
    assert "embed" in semindex.__all__


def test_embed_rejects_what_is_not_text() -> None:
    with pytest.raises(semindex.InvalidInputError, match="text #1 must be a string"):
        semindex.embed(["ok", 3], model=FAST)  # type: ignore[list-item]
    with pytest.raises(semindex.InvalidInputError, match="batch_size"):
        semindex.embed(["ok"], model=FAST, batch_size=0)
    assert semindex.embed([], model=FAST).shape == (0, 64)


# -- the command --------------------------------------------------------------------------------


def test_embed_npy_with_ids_round_trips_into_import_vectors(tmp_path: Path) -> None:
    out = tmp_path / "emb.npy"
    res = run("embed", str(SAMPLE), "--output", str(out), "--model", FAST, "--batch-size", "7")
    assert "embedded 40 documents" in res.output
    ids, texts = inputs()
    arr = np.load(out)
    assert arr.shape == (40, 64) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, semindex.embed(texts, model=FAST), atol=1e-6)
    assert ids_path_for(out) == tmp_path / "emb.ids.txt"
    assert ids_path_for(out).read_text(encoding="utf-8").splitlines() == ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ids.txt", "emb.npy"]  # no temp files left

    store = str(tmp_path / "store")
    run("import-vectors", str(out), "--ids-file", str(ids_path_for(out)), "--store", store, "-c", "v")
    with semindex.Store(store) as s:
        coll = s.get_collection("v")
        assert coll.count() == 40
        assert coll.search_vectors(arr[5], k=1)[0][0].id == ids[5]


@pytest.mark.slow
def test_embed_parquet_with_the_real_model_equals_semindex_embed(tmp_path: Path, encoder: Any) -> None:
    out = tmp_path / "emb.parquet"
    summary = json.loads(run("embed", str(SAMPLE), "-o", str(out), "--json").output.strip().splitlines()[-1])
    assert summary["rows"] == 40 and summary["dimension"] == 384
    table = pq.read_table(out)
    assert table.column_names == ["id", "vector"]
    ids, texts = inputs()
    assert table.column("id").to_pylist() == ids
    vecs = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vecs, semindex.embed(texts), atol=1e-5)

    store = str(tmp_path / "store")
    run("import-vectors", str(out), "--store", store, "-c", "p")
    with semindex.Store(store) as s:
        hit = s.get_collection("p").search_vectors(semindex.embed(["how do black holes form"]), k=1)[0][0]
        assert hit.id == "astro-black-holes"


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n', encoding="utf-8")
    out = tmp_path / "out.npy"
    res = run("embed", str(src), "-o", str(out), "--model", FAST, code=2)
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{src}:2" in errors[0]
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]  # no output, no temp files

    res = run("embed", str(src), "-o", str(out), "--model", FAST, "--on-error", "skip")
    assert "skipped 1" in res.output and np.load(out).shape == (1, 64)

    for args, message in [
        (["embed", str(tmp_path / "missing.jsonl"), "-o", str(out)], "no such file"),
        (["embed", str(src), "-o", str(tmp_path / "out.csv")], "expected a .npy or .parquet"),
        (["embed", str(src), "-o", str(tmp_path / "nodir" / "x.npy"), "--model", FAST], "no such directory"),
    ]:
        res = run(*args, code=2)
        assert message in res.output and "Traceback" not in res.output


def _batches(n_batches: int, rows: int, dim: int, fail_after: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    rng = np.random.default_rng(0)
    for b in range(n_batches):
        if fail_after is not None and b == fail_after:
            raise semindex.ReadError("broken record", source="x.jsonl", line=b * rows + 1)
        yield [f"d{b}-{i}" for i in range(rows)], rng.standard_normal((rows, dim)).astype(np.float32)


@pytest.mark.parametrize("name", ["big.npy", "big.parquet"])
def test_streaming_writer_many_batches_and_atomic_failure(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    assert write_vectors(out, 8, _batches(300, 50, 8)) == 15_000
    if name.endswith(".npy"):
        arr = np.load(out, mmap_mode="r")  # the header's row count was fixed up at the end
        assert arr.shape == (15_000, 8)
        ids = ids_path_for(out).read_text(encoding="utf-8").splitlines()
    else:
        pf = pq.ParquetFile(out)
        assert pf.metadata.num_rows == 15_000 and pf.num_row_groups == 300  # one row group per batch
        arr = np.asarray(pf.read().column("vector").to_pylist(), dtype=np.float32)
        ids = pf.read().column("id").to_pylist()
    assert ids[0] == "d0-0" and ids[-1] == "d299-49" and len(ids) == 15_000
    np.testing.assert_allclose(arr[:50], next(_batches(1, 50, 8))[1])
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    with pytest.raises(semindex.ReadError):  # a failure mid-stream leaves the previous output as it was
        write_vectors(out, 8, _batches(10, 50, 8, fail_after=4))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_npy_refuses_ids_with_line_breaks(tmp_path: Path) -> None:
    with pytest.raises(semindex.InvalidInputError, match="line break"):
        write_vectors(tmp_path / "x.npy", 2, iter([(["a\nb"], np.zeros((1, 2), np.float32))]))
    assert list(tmp_path.iterdir()) == []
