"""The small parts of the API that need no server: exposure rule, metrics registries, the shutdown gate."""

from __future__ import annotations

import threading

import pytest

from semindex.api.app import ShuttingDownError, WorkGate
from semindex.api.metrics import Metrics
from semindex.cli.serve_cmd import check_exposure, is_loopback
from semindex.errors import ConfigError


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, None, False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_public_hosts_need_a_key_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="--insecure"):
        check_exposure(host, None, False)
    check_exposure(host, "key", False)
    check_exposure(host, None, True)


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe_request("GET", "/health", 200, 0.01)
    a.documents_indexed("default", 3)
    text_a = a.render([("default", 3)]).decode()
    text_b = b.render([]).decode()
    assert 'semindex_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text_a
    assert 'semindex_documents_indexed_total{collection="default"} 3.0' in text_a
    assert "semindex_http_requests_total{" not in text_b
    # a dropped collection disappears from the gauge at the next scrape
    assert 'collection="default"' not in a.render([]).decode().split("semindex_collection_documents")[-1]


def test_gate_waits_for_work_in_flight_then_refuses_new_work() -> None:
    gate = WorkGate()
    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        with gate.enter():
            entered.set()
            release.wait(60)
            done.set()  # still inside the gate: close() cannot report "drained" before this

    t = threading.Thread(target=work)
    t.start()
    assert entered.wait(60)  # the work is in flight (an event, not a guess at thread start-up time)
    # held by an event, the work cannot finish: close() must time out, and refuse new work from now on
    assert gate.close(timeout=0.01) is False
    with pytest.raises(ShuttingDownError), gate.enter():
        pass
    release.set()
    assert gate.close(timeout=60) and done.is_set()
    with pytest.raises(ShuttingDownError), gate.enter():
        pass
    t.join()
