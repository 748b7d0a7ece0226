"""Ray tests run inside a network namespace that has only loopback.

Ray talks over the machine's non-loopback address even when told 127.0.0.1, and tests must
send nothing but loopback traffic. So every test marked ``ray`` is executed, all together in
one pytest process, under ``unshare -n`` (tests/distributed/netns.sh brings ``lo`` up and starts a
PostgreSQL inside the namespace too); the outer pytest reports each inner result as its own.
Inside, one session-wide Ray cluster (``num_cpus=2``) serves every test, and its nodes are
asserted to be 127.0.0.1 only. Fixtures here are inert in the outer process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fresh_pg_database, pg_admin_url

REPO = Path(__file__).resolve().parents[2]
IN_NETNS = os.environ.get("SEMINDEX_NETNS") == "1"
_results: dict[str, dict[str, str]] | None = None
_inner_log = ""


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace (unshare -n needs root): {probe.stderr.strip()}"
    return None


def _run_in_netns(session: pytest.Session) -> dict[str, dict[str, str]]:
    global _inner_log
    ids = [it.nodeid for it in session.items if it.get_closest_marker("ray")]
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "report.json"
        proc = subprocess.run(
            ["unshare", "-n", "bash", str(REPO / "tests/distributed/netns.sh"), str(report), *ids],
            cwd=REPO, capture_output=True, text=True, timeout=1500,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        _inner_log = (proc.stdout + proc.stderr)[-6000:]
        return json.loads(report.read_text()) if report.exists() else {}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Outer process: report the namespace run's result for this test instead of running it."""
    global _results
    if IN_NETNS or not pyfuncitem.get_closest_marker("ray"):
        return None
    why = _can_unshare()
    if why:
        pytest.skip(why)
    if _results is None:
        _results = _run_in_netns(pyfuncitem.session)
    res = _results.get(pyfuncitem.nodeid)
    if res is None:
        pytest.fail(f"not run inside the network namespace; its output:\n{_inner_log}", pytrace=False)
    if res["outcome"] == "skipped":
        pytest.skip(res["text"])
    if res["outcome"] == "failed":
        pytest.fail(res["text"], pytrace=False)
    return True


_inner: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Inner process: remember each test's outcome for the outer one."""
    if not (IN_NETNS and os.environ.get("SEMINDEX_NETNS_REPORT")):
        return
    cur = _inner.get(report.nodeid)
    if report.failed:
        _inner[report.nodeid] = {"outcome": "failed", "text": report.longreprtext[-4000:]}
    elif report.skipped and (cur is None or cur["outcome"] != "failed"):
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _inner[report.nodeid] = {"outcome": "skipped", "text": str(text)}
    elif report.when == "call" and report.passed and cur is None:
        _inner[report.nodeid] = {"outcome": "passed", "text": ""}


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("SEMINDEX_NETNS_REPORT")
    if IN_NETNS and path:
        Path(path).write_text(json.dumps(_inner))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster for every test (inside the namespace); None in the outer process."""
    if not IN_NETNS:
        yield None
        return
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 << 20, log_to_driver=False,
             logging_level="ERROR")
    nodes = {n["NodeManagerAddress"] for n in ray.nodes()}
    assert nodes == {"127.0.0.1"}, f"Ray must use loopback only, nodes at {nodes}"
    yield ray
    ray.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def ray_db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the store folder) or a fresh database on the namespace's PostgreSQL."""
    if not IN_NETNS:
        yield None
        return
    if request.param == "sqlite":
        yield None
        return
    if pg_admin_url() is None:
        pytest.skip("no PostgreSQL binaries for a server inside the namespace (scripts/pg.sh install)")
    with fresh_pg_database("ray") as url:
        yield url
