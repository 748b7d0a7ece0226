"""A signal while a write batch is in flight: the batch finishes (or never started), nothing half-applied.

The server runs with the ``gated`` test encoder (tests/api/gated_serve.py): the test waits until the
server says the batch is being encoded, sends the signal, waits until the server says it is shutting
down, and only then lets the batch finish. So the signal always lands mid-batch, on any machine.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import semindex
from tests.api import gated_serve
from tests.api.serving import ServeProcess
from tests.support import invoke_cli, sample_docs

BATCH = 300  # >= gated_serve.GATE_MIN: the write batch waits at the gate; queries do not
MODEL = "gated:64"

FILLER = " ".join(f"word{j}" for j in range(60))


def _docs(tag: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{tag}-{i}", "text": f"Document {i} of batch {tag}: notes on topic number {i * 7 % 101}. " + FILLER,
         "metadata": {"i": i}}
        for i in range(BATCH)
    ]


def _wait_for(what: str, ready: Any, srv: ServeProcess, timeout: float = 120) -> None:
    """Wait until ``ready()``: a state the server reports (a file it made, a line it logged)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if srv.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server never reached {what!r}:\n{srv.log()}")
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_write_batch_leaves_the_store_consistent(tmp_path: Path, sig: int) -> None:
    gated_serve.register()
    gate = tmp_path / "gate"
    gate.mkdir()
    store = tmp_path / "store"
    with semindex.Store(store) as s:
        s.collection("default", model=MODEL).add(sample_docs())
    srv = ServeProcess(store, env={"SEMINDEX_GATE_DIR": str(gate)},
                       entry=(str(Path(gated_serve.__file__)),)).wait()
    result: dict[str, Any] = {}

    def write() -> None:
        try:
            r = httpx.post(f"{srv.base}/collections/default/documents", json={"documents": _docs("b")}, timeout=300)
            result["status"] = r.status_code
            result["body"] = r.json()
        except httpx.HTTPError as exc:  # pragma: no cover - would mean the shutdown was not graceful
            result["error"] = repr(exc)

    t = threading.Thread(target=write)
    t.start()
    _wait_for("write batch at the gate", (gate / "entered").exists, srv)
    assert t.is_alive()
    srv.proc.send_signal(sig)
    _wait_for("shutting down", lambda: "Shutting down" in srv.log(), srv)
    (gate / "go").touch()
    srv.proc.wait(timeout=120)  # no second signal: that would ask uvicorn to force-quit
    rc = srv.stop()
    t.join(timeout=300)
    log = srv.log()
    assert rc == 0, log
    assert "shut down cleanly" in log
    # graceful: the request in flight was answered, with its whole batch committed
    assert result.get("status") == 200, (result, log)
    assert result["body"]["added"] == BATCH

    check = invoke_cli("check", "--store", str(store))  # in process: `gated` is registered here too
    assert check.returncode == 0, check.stderr + check.stdout
    info = json.loads(invoke_cli("info", "--store", str(store), "--json", check=True).stdout)
    assert info["collections"][0]["count"] == 40 + BATCH
    # and everything acknowledged is searchable after a restart
    found = invoke_cli("search", "Document 17 of batch b: notes on topic number 18. " + FILLER, "--store", str(store),
                    "-k", "1", "--json", check=True)
    assert json.loads(found.stdout.splitlines()[0])["id"] == "b-17"
