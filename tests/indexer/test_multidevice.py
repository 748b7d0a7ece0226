"""`semindex index --devices`: one encoder worker per device, one writer, results as on one device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.support import SAMPLE, invoke_cli, run_cli


def _rows(store: Path) -> dict[str, tuple[str, str, object, np.ndarray]]:
    """doc_id -> (content_hash, text, metadata, stored vector), in commit (vid) order."""
    import semindex

    with semindex.Store(store) as s:
        coll = s.get_collection("default")
        eng = coll.storage.engine
        with eng.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT doc_id, content_hash, text, metadata FROM documents ORDER BY vid")
            ).all()
        vecs = stored_vectors(eng)
    return {r[0]: (r[1], r[2], r[3], vecs[r[0]]) for r in rows}


def stored_vectors(eng: Any, collection_id: int | None = None) -> dict[str, Any]:
    """doc_id -> its stored vector, from SQL (documents.embedding, or the first chunk's where chunks exist)."""
    import numpy as np
    import sqlalchemy as sa

    where = "" if collection_id is None else f" WHERE d.collection_id = {int(collection_id)}"
    with eng.connect() as conn:
        if "chunks" in sa.inspect(conn).get_table_names():
            q = ("SELECT d.doc_id, c.embedding FROM documents d JOIN chunks c ON c.doc_vid = d.vid"
                 f"{where}{' AND' if where else ' WHERE'} c.ordinal = 0")
        else:
            q = f"SELECT d.doc_id, d.embedding FROM documents d{where}"
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in conn.execute(sa.text(q))}


def _same(a: dict[str, tuple[str, str, object, np.ndarray]], b: dict[str, tuple[str, str, object, np.ndarray]]) -> None:
    assert list(a) == list(b)  # same ids, committed in the same order
    for doc_id in a:
        assert a[doc_id][:3] == b[doc_id][:3]
        np.testing.assert_allclose(a[doc_id][3], b[doc_id][3], atol=1e-5)


def _corpus(path: Path, n: int) -> Path:
    import json

    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"d{i}", "text": f"document {i} about topic {i % 7} and {i % 11}",
                                 "k": i % 3}) + "\n")
    return path


@pytest.mark.slow  # two worker processes each loading the real model
def test_devices_cpu_cpu_matches_single_device_real_model(tmp_path: Path) -> None:
    one = run_cli("index", str(SAMPLE), "--store", str(tmp_path / "one"), check=True)
    two = run_cli("index", str(SAMPLE), "--store", str(tmp_path / "two"), "--devices", "cpu,cpu", check=True)
    assert one.stdout.split(" in ")[0] == two.stdout.split(" in ")[0]  # same added/updated/... counts
    _same(_rows(tmp_path / "one"), _rows(tmp_path / "two"))
    check = run_cli("check", "--store", str(tmp_path / "two"))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow  # worker processes per device: ~30 s even with the hashing encoder
def test_devices_with_fast_encoder_and_rerun_is_unchanged(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "c.jsonl", 1500)
    one = run_cli("index", str(src), "--store", str(tmp_path / "one"), "--model", "hash", "--commit-every", "200",
                  check=True)
    two = run_cli("index", str(src), "--store", str(tmp_path / "two"), "--model", "hash", "--commit-every", "200",
                  "--devices", "cpu,cpu", "--json", check=True)
    assert '"added": 1500' in two.stdout and "added 1500" in one.stdout
    _same(_rows(tmp_path / "one"), _rows(tmp_path / "two"))
    again = run_cli("index", str(src), "--store", str(tmp_path / "two"), "--model", "hash",
                    "--devices", "cpu,cpu", "--json", check=True)
    assert '"unchanged": 1500' in again.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "tpu:3"], "unknown device"),
        (["--devices", "cuda:0,cuda:1"], "CUDA is not available"),
        (["--devices", "all,cpu"], "cannot be combined"),
        (["--actors", "2"], "--actors needs --engine ray"),
    ],
)
def test_bad_devices_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    # in process: the refusal is the CLI's, not the process's (the worker processes are the slow tests')
    proc = invoke_cli("index", str(SAMPLE), "--store", str(tmp_path / "s"), "--model", "hash", *flags)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
