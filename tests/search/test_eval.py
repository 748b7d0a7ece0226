"""`semindex eval`: indexes a BEIR folder once, then measures it with ir-measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semindex.search.evaluate import measure
from tests.support import SHARED_DATA, invoke_cli, run_cli


def test_measure_by_hand() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}
    run = {"q1": {"d1": 2.0, "d2": 1.0}}  # q2 found nothing: it counts as 0, not left out
    m = measure(qrels, run)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert m["recall@100"] == pytest.approx(0.5)


def _tiny_beir(root: Path) -> Path:
    d = root / "tiny"
    (d / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "d1", "title": "Sourdough", "text": "Bread made with a wild yeast starter."},
        {"_id": "d2", "title": "Risotto", "text": "Rice stirred slowly with stock."},
        {"_id": "d3", "title": "", "text": ""},  # empty: skipped, like cranfield's two
        {"_id": "d4", "title": "Black holes", "text": "Collapsed stars whose gravity traps light."},
    ]
    (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    qs = [{"_id": "1", "text": "wild yeast bread"}, {"_id": "2", "text": "gravity traps light"},
          {"_id": "3", "text": "not in qrels"}]
    (d / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in qs))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td4\t1\n")
    return d


def test_eval_tiny_all_modes(tmp_path: Path) -> None:
    beir = _tiny_beir(tmp_path)
    store = str(tmp_path / "store")
    for mode in ("dense", "keyword", "hybrid"):
        out = invoke_cli("eval", str(beir), "--store", store, "--mode", mode, "--json", check=True)
        res = json.loads(out.stdout)
        assert set(res) >= {"ndcg@10", "recall@100", "mrr@10", "queries", "mode", "queries_per_s"}
        assert res["mode"] == mode and res["queries"] == 2 and res["collection"] == "tiny"
        assert res["ndcg@10"] == pytest.approx(1.0) and res["mrr@10"] == pytest.approx(1.0)
    text = invoke_cli("eval", str(beir), "--store", store, "--mode", "keyword", check=True).stdout
    assert "nDCG@10" in text and "queries/s" in text
    bad = invoke_cli("eval", str(beir), "--store", store, "--split", "train")
    assert bad.returncode != 0 and "train" in bad.stderr


@pytest.mark.slow  # a cross-encoder loads torch
def test_eval_tiny_with_rerank(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    beir = _tiny_beir(tmp_path)
    store = str(tmp_path / "store")
    out = invoke_cli("eval", str(beir), "--store", store, "--mode", "hybrid", "--rerank", str(tiny_cross_encoder),
                     "--rerank-top", "3", "--json", check=True)
    res = json.loads(out.stdout)
    assert res["rerank"] == str(tiny_cross_encoder) and res["queries"] == 2 and res["recall@100"] == 1.0


@pytest.mark.slow
def test_eval_cranfield_dense(tmp_path: Path) -> None:
    cran = SHARED_DATA / "cranfield"
    if not cran.exists():
        pytest.skip("../shared/data/cranfield is not present")
    out = run_cli("eval", str(cran), "--store", str(tmp_path / "store"), "--json", timeout=1800, check=True)
    res = json.loads(out.stdout)
    assert res["queries"] == 225 and res["mode"] == "dense" and res["collection"] == "cranfield"
    assert 0.2 < res["ndcg@10"] < 0.6
    assert 0.5 < res["recall@100"] <= 1.0
    assert 0.3 < res["mrr@10"] <= 1.0
    assert res["queries_per_s"] > 0
    # the collection is reused: a second mode does not index again
    out = run_cli("eval", str(cran), "--store", str(tmp_path / "store"), "--mode", "hybrid", "--json",
                  timeout=600, check=True)
    hyb = json.loads(out.stdout)
    assert "indexing" not in out.stderr
    assert hyb["ndcg@10"] > res["ndcg@10"]
