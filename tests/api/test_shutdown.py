"""A signal while a write batch is in flight: the batch finishes (or never started), nothing half-applied."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.serving import ServeProcess, cli_store
from tests.support import run_cli

BATCH = 1500  # long enough to encode that the signal lands mid-batch even on a quiet machine

FILLER = " ".join(f"word{j}" for j in range(60))


def _docs(tag: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{tag}-{i}", "text": f"Document {i} of batch {tag}: notes on topic number {i * 7 % 101}. " + FILLER,
         "metadata": {"i": i}}
        for i in range(BATCH)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_write_batch_leaves_the_store_consistent(tmp_path: Path, sig: int) -> None:
    store = cli_store(tmp_path)
    srv = ServeProcess(store).wait()
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
    time.sleep(1.5)  # the request is in: 1,500 documents take many seconds to encode on a CPU
    assert t.is_alive(), "the write finished before the signal; make BATCH larger"
    rc = srv.stop(sig)
    t.join(timeout=300)
    log = srv.log()
    assert rc == 0, log
    assert "shut down cleanly" in log
    # graceful: the request in flight was answered, with its whole batch committed
    assert result.get("status") == 200, (result, log)
    assert result["body"]["added"] == BATCH

    check = run_cli("check", "--store", str(store))
    assert check.returncode == 0, check.stderr + check.stdout
    info = json.loads(run_cli("info", "--store", str(store), "--json", check=True).stdout)
    assert info["collections"][0]["count"] == 40 + BATCH
    # and everything acknowledged is searchable after a restart
    found = run_cli("search", "Document 17 of batch b: notes on topic number 18. " + FILLER, "--store", str(store),
                    "-k", "1", "--json", check=True)
    assert json.loads(found.stdout.splitlines()[0])["id"] == "b-17"
