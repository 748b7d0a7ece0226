"""CLI side of Matryoshka truncation (issue 13): ``index --dimensions N`` / ``--force-dimensions``,
``reembed --dimensions``, what ``info`` shows, one-line refusals. Fast lane: the ``mrlhash``
encoder declares Matryoshka training (tests/mrl.py); the lane's ``hash:384`` does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mrl import matryoshka_encoder
from tests.support import SAMPLE, invoke_cli


@pytest.fixture
def mrl() -> Iterator[str]:
    with matryoshka_encoder() as model:
        yield model


def cli(tmp_path: Path, *args: str, check: bool = False) -> Any:
    return invoke_cli(*args, "--store", str(tmp_path / "store"), check=check)


def infos(tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = cli(tmp_path, "info", "--json", check=True)
    return {c["name"]: c for c in json.loads(out.stdout)["collections"]}


def one_line_error(out: Any, code: int = 2) -> str:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return str(lines[0])


def test_index_search_info_with_dimensions(tmp_path: Path, mrl: str) -> None:
    cli(tmp_path, "index", str(SAMPLE), "--model", mrl, "--dimensions", "32", check=True)
    info = infos(tmp_path)["default"]
    assert info["dimension"] == 32 and info["truncate_dim"] == 32 and info["model"] == mrl
    text = cli(tmp_path, "info", check=True).stdout
    assert "dimension 32 (Matryoshka: the model's first 32 dims)" in text
    hits = cli(tmp_path, "search", "sourdough bread", "--json", "-k", "1", check=True).stdout
    assert len(hits.splitlines()) == 1 and json.loads(hits)["id"]
    again = cli(tmp_path, "index", str(SAMPLE), "--dimensions", "32", check=True)  # same N: an upsert
    assert "unchanged 40" in again.stdout
    msg = one_line_error(cli(tmp_path, "index", str(SAMPLE), "--dimensions", "16"))
    assert "holds 32-d vectors" in msg and "cannot take 16-d" in msg


def test_refusals_are_one_line(tmp_path: Path, mrl: str) -> None:
    msg = one_line_error(cli(tmp_path, "index", str(SAMPLE), "--dimensions", "64"))  # the lane's hash:384
    assert "'hash:384' is not trained for truncation" in msg and "--force-dimensions" in msg
    msg = one_line_error(cli(tmp_path, "index", str(SAMPLE), "--model", mrl, "--dimensions", "24"))
    assert "trained for truncation to 64, 32, 16 dims" in msg and "not 24" in msg
    msg = one_line_error(cli(tmp_path, "index", str(SAMPLE), "--model", mrl, "--dimensions", "64"))
    assert "1..63" in msg
    msg = one_line_error(cli(tmp_path, "index", str(SAMPLE), "--force-dimensions"))
    assert "--force-dimensions needs --dimensions" in msg
    assert not (tmp_path / "store").exists() or infos(tmp_path) == {}


def test_force_dimensions_and_reembed(tmp_path: Path, mrl: str) -> None:
    cli(tmp_path, "index", str(SAMPLE), "--dimensions", "48", "--force-dimensions", check=True)
    assert infos(tmp_path)["default"]["dimension"] == 48
    out = cli(tmp_path, "reembed", "--collection", "default", "--model", mrl, "--into", "small",
              "--dimensions", "16", "--json", check=True)
    assert json.loads(out.stdout)["count"] == 40
    small = infos(tmp_path)["small"]
    assert small["dimension"] == 16 and small["truncate_dim"] == 16
    msg = one_line_error(cli(tmp_path, "reembed", "--collection", "default", "--model", mrl, "--into", "x",
                             "--dimensions", "8"))
    assert "not 8" in msg and "x" not in infos(tmp_path)


def test_eval_measures_a_truncated_collection(tmp_path: Path, mrl: str) -> None:
    from tests.search.test_eval import _tiny_beir

    beir = str(_tiny_beir(tmp_path))
    out = cli(tmp_path, "eval", beir, "--model", mrl, "--dimensions", "32", "--json", check=True)
    assert json.loads(out.stdout)["ndcg@10"] > 0.5
    assert infos(tmp_path)["tiny"]["truncate_dim"] == 32
    msg = one_line_error(cli(tmp_path, "eval", beir, "--dimensions", "16"))
    assert "cannot take 16-d" in msg
