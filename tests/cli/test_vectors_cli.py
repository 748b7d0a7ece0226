"""`semindex import-vectors`, `reindex`, `search --query-vectors` and the index part of `info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semindex.cli import cli

DIM = 16


def vecs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_import_npy_with_ids_search_query_vectors_reindex_and_info(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    x = vecs(1200)
    np.save(tmp_path / "emb.npy", x)
    (tmp_path / "ids.txt").write_text("".join(f"doc{i}\n" for i in range(1200)))
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps({"g": i % 3}) + "\n" for i in range(1200)))
    out = run("import-vectors", str(tmp_path / "emb.npy"), "--ids-file", str(tmp_path / "ids.txt"),
              "--metadata", str(tmp_path / "meta.jsonl"), "--store", store, "-c", "v", "--batch-size", "500")
    assert "imported 1200 vectors into v (new, vectors only): added 1200" in out
    # again: same vectors and metadata, nothing changes
    out = run("import-vectors", str(tmp_path / "emb.npy"), "--ids-file", str(tmp_path / "ids.txt"),
              "--metadata", str(tmp_path / "meta.jsonl"), "--store", store, "-c", "v", "--json")
    summary = json.loads(out)
    assert summary["unchanged"] == 1200 and summary["index_type"] == "flat"

    np.save(tmp_path / "q.npy", x[[7, 42, 99]])
    res = lines(run("search", "--query-vectors", str(tmp_path / "q.npy"), "-k", "3", "--json", "--store", store, "-c", "v"))
    assert [r["query_id"] for r in res] == ["0", "1", "2"]
    assert [r["hits"][0]["id"] for r in res] == ["doc7", "doc42", "doc99"]
    assert all(len(r["hits"]) == 3 and set(r["hits"][0]) == {"id", "score"} for r in res)
    res = lines(run("search", "--query-vectors", str(tmp_path / "q.npy"), "-k", "5", "--filter", '{"g": 1}',
                    "--store", store, "-c", "v"))
    assert all(len(r["hits"]) == 5 for r in res)
    assert res[1]["hits"][0]["id"] != "doc42"  # 42 % 3 == 0: filtered out

    out = run("reindex", "--index", "ivf", "--target-recall", "0.9", "--store", store, "-c", "v")
    assert out.startswith("v: flat -> ivf (nlist=") and "recall@10=" in out and "1200 vectors" in out
    rep = json.loads(run("reindex", "--index", "hnsw", "--json", "--store", store, "-c", "v"))
    assert rep["old"]["type"] == "ivf" and rep["new"]["type"] == "hnsw" and rep["new"]["params"]["efSearch"] >= 10
    info = json.loads(run("info", "--json", "--store", store))["collections"][0]
    assert info["index_type"] == "hnsw" and info["index_policy"] == "hnsw"
    assert info["bytes_per_vector"] > 4 * DIM and info["index_bytes"] > 1200 * 4 * DIM
    assert "efSearch" in info["index_params"]
    text = run("info", "--store", store)
    assert "index: hnsw (M=32, efSearch=" in text and "bytes/vector" in text
    res = lines(run("search", "--query-vectors", str(tmp_path / "q.npy"), "-k", "1", "--store", store, "-c", "v"))
    assert [r["hits"][0]["id"] for r in res] == ["doc7", "doc42", "doc99"]


def test_import_parquet_streams_metadata_columns(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    x = vecs(700, seed=3)
    table = pa.table({
        "id": [f"p{i}" for i in range(700)],
        "vector": pa.array(x.tolist(), type=pa.list_(pa.float32())),
        "year": [2000 + i % 20 for i in range(700)],
    })
    pq.write_table(table, tmp_path / "v.parquet", row_group_size=100)
    summary = json.loads(run("import-vectors", str(tmp_path / "v.parquet"), "--store", store, "--batch-size", "128", "--json"))
    assert summary["added"] == 700 and summary["created"] and summary["dimension"] == DIM
    import semindex

    with semindex.Store(tmp_path / "s") as s:
        coll = s.get_collection("default")
        assert coll.get("p5").metadata == {"year": 2005}
        hits = coll.search_vectors(x[5], k=3, filter={"year": 2005})[0]
        assert hits[0].id == "p5" and all(h.metadata["year"] == 2005 for h in hits)


def test_import_errors_are_clear(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", vecs(10))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    res = CliRunner().invoke(cli, ["import-vectors", str(tmp_path / "e.npy"), "--ids-file", str(tmp_path / "ids.txt"),
                                   "--store", str(tmp_path / "s")])
    assert res.exit_code != 0 and "2 ids but" in res.output
    np.save(tmp_path / "wrong.npy", np.zeros((3, DIM + 1), dtype=np.float32))
    run("import-vectors", str(tmp_path / "e.npy"), "--store", str(tmp_path / "s"))
    res = CliRunner().invoke(cli, ["import-vectors", str(tmp_path / "wrong.npy"), "--store", str(tmp_path / "s")])
    assert res.exit_code != 0 and "dimension" in res.output
    res = CliRunner().invoke(cli, ["reindex", "--index", "Bogus", "--store", str(tmp_path / "s")])
    assert res.exit_code != 0 and "bad FAISS factory string 'Bogus' (could not parse" in res.output


def test_reindex_to_the_quantized_types_and_search_them(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    x = vecs(1500, seed=5)
    np.save(tmp_path / "emb.npy", x)
    run("import-vectors", str(tmp_path / "emb.npy"), "--store", store, "-c", "v")
    np.save(tmp_path / "q.npy", x[[3, 300]])
    for kind, code in (("sq8", DIM), ("binary", DIM // 8)):
        rep = json.loads(run("reindex", "--index", kind, "--json", "--store", store, "-c", "v"))
        assert rep["new"]["type"] == kind and "k_factor" in rep["new"]["params"]
        info = json.loads(run("info", "--json", "--store", store))["collections"][0]
        assert info["index_type"] == kind and info["bytes_per_vector"] == code + 24
        res = lines(run("search", "--query-vectors", str(tmp_path / "q.npy"), "-k", "2", "--json",
                        "--store", store, "-c", "v"))
        assert [r["hits"][0]["id"] for r in res] == ["3", "300"]
        assert abs(res[0]["hits"][0]["score"] - 1.0) < 1e-5  # rescored: the real cosine


def test_import_vectors_engine_ray_without_the_extra_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    np.save(tmp_path / "emb.npy", vecs(50))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    res = CliRunner().invoke(cli, ["import-vectors", str(tmp_path / "emb.npy"), "--store", str(tmp_path / "s"),
                                   "-c", "v", "--index", "ivf", "--engine", "ray"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == ["error: --engine ray needs Ray: pip install 'semindex[ray]' (ray[data] >= 2.40)"]
    assert not (tmp_path / "s").exists()  # checked before the store is opened or created
    res = CliRunner().invoke(cli, ["import-vectors", str(tmp_path / "emb.npy"), "--store", str(tmp_path / "s"),
                                   "-c", "v", "--ray-address", "auto"])
    assert res.exit_code == 2 and "--ray-address needs --engine ray" in res.output
