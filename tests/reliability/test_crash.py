"""Kill -9 during `semindex index`: nothing committed is lost, nothing is duplicated, check passes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO, run_cli, scifact_docs

pytestmark = pytest.mark.slow


def _count(db: Path, table: str = "documents") -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_index_then_check_and_rerun(tmp_path: Path) -> None:
    docs = scifact_docs(700)
    src = tmp_path / "corpus.jsonl"
    with src.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"]}) + "\n")
    store = tmp_path / "store"
    db = store / "semindex.db"
    cmd = [sys.executable, "-m", "semindex", "index", str(src), "--store", str(store), "--commit-every", "64"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = []
    for kill_after in (110, 330):  # two kills at different points, the second on a resumed run
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _count(db) < kill_after and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "indexing finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed = _count(db)
        assert committed >= kill_after
        seen.append(committed)
        check = run_cli("check", "--store", str(store))
        assert check.returncode == 0, check.stderr
        # long SciFact abstracts are chunked: one vector per chunk row, every one of them indexed
        assert f"ok ({committed} documents, {_count(db, 'chunks')} vectors" in check.stdout
    assert seen[1] > seen[0]
    final = run_cli("index", str(src), "--store", str(store), "--commit-every", "64", "--json", check=True)
    stats = json.loads(final.stdout)
    assert stats["unchanged"] >= seen[1] and stats["added"] + stats["unchanged"] == len(docs)
    assert stats["failed"] == 0
    with sqlite3.connect(db) as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT doc_id) FROM documents").fetchone()
    assert n == distinct == len(docs)
    check = run_cli("check", "--store", str(store), check=True)
    assert f"ok ({len(docs)} documents, {_count(db, 'chunks')} vectors" in check.stdout
    # and the index answers: a document's own title finds it
    out = run_cli("search", docs[600]["title"], "--store", str(store), "--json", "-k", "3", check=True)
    assert docs[600]["id"] in [json.loads(line)["id"] for line in out.stdout.splitlines()]
