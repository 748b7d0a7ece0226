"""Many processes opening one brand-new store at the same instant all succeed (schema creation,
the switch to WAL and the schema upgrade race each other; none may answer "database is locked")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO

CHILD = """
import sys, semindex
with semindex.Store(sys.argv[1]) as s:
    c = s.collection("c", model="hash:16")
    c.add([{"id": sys.argv[2], "text": "text " + sys.argv[2]}])
"""


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(3):
        store = tmp_path / f"s{round_}"
        procs = [
            subprocess.Popen([sys.executable, "-c", CHILD, str(store), f"d{i}"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(6)
        ]
        results = [p.communicate(timeout=300) for p in procs]
        errors = [err for p, (_, err) in zip(procs, results) if p.returncode != 0]
        assert not errors, errors[0]
        import semindex

        with semindex.Store(store) as s:
            assert s.collection("c").count() == 6
