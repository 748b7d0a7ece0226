"""Schemathesis against the live /openapi.json: no 5xx, no answer outside the published schema.

Bounded: a fixed number of generated requests per operation, valid ones and
deliberately invalid ones. Half the valid cases are pointed at a collection that
exists ("default", or the vectors-only "vectors"), so the search, filter and upsert
code is what gets fuzzed, not only the 404 path.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

POSITIVE_EXAMPLES = 25
NEGATIVE_EXAMPLES = 15
# 413 (body over the limit) is a rejection too; 5xx never is.
CONFIG = SchemathesisConfig.from_str(
    """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 404, 405, 409, 413, 415, 422]
"""
)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(operation: Any, mode: GenerationMode, examples: int) -> int:
    """Run ``examples`` generated cases of one operation; raises the failures schemathesis found."""
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    calls = 0

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        params = case.path_parameters or {}
        if mode is GenerationMode.POSITIVE and "name" in params and operation.method.upper() != "DELETE":
            if calls % 2 == 0:
                params["name"] = "vectors" if calls % 6 == 0 else "default"
        case.call_and_validate(checks=checks, timeout=120)

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return calls


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(sample_store: Any, thread_server: Any) -> None:
    sample_store.create_collection("vectors", dimension=4)
    # No API key here: auth is tested on its own (test_serve.py), and negative cases that only
    # drop the Authorization header would be made valid again by re-adding it.
    srv = thread_server(sample_store, max_body_bytes=256 * 1024)
    schema = schemathesis.openapi.from_url(f"{srv.base}/openapi.json", config=CONFIG)
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, n in ((GenerationMode.POSITIVE, POSITIVE_EXAMPLES), (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)):
            try:
                ran += _fuzz(operation, mode, n)
            except Exception as exc:  # noqa: BLE001 - collect every operation's failures, then report
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:4000])
    assert not failures, "\n\n".join(failures)
    assert ran >= 100

    # the fuzzing reached the real work, not only the 404 and 422 paths
    metrics = httpx.get(f"{srv.base}/metrics").text
    for route in ("/collections/{name}/search", "/collections/{name}/search/batch", "/collections/{name}/documents"):
        pattern = rf'semindex_http_requests_total\{{method="POST",route="{re.escape(route)}",status="200"\}} (\d+)'
        m = re.search(pattern, metrics)
        assert m and float(m.group(1)) >= 1, (route, metrics[:2000])
    assert httpx.get(f"{srv.base}/health").status_code == 200
    report = sample_store.get_collection("default").check()
    assert report.ok, report.summary()
