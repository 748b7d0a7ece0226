"""Helpers shared by the tests (imported as tests.support; conftest.py holds the fixtures)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "samples" / "sample.jsonl"


def scifact_docs(n: int | None = None) -> list[dict[str, Any]]:
    path = SHARED_DATA / "scifact" / "corpus.jsonl.gz"
    if not path.exists():
        pytest.skip("../shared/data/scifact is not present")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            out.append({"id": rec["_id"], "title": rec["title"], "text": rec["text"]})
            if n is not None and len(out) >= n:
                break
    return out


def sample_docs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def invoke_cli(*args: str, check: bool = False, env: dict[str, str] | None = None,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `semindex ARGS` in this process with click's CliRunner; same result shape as run_cli.

    Most CLI behaviour (output, exit codes, one-line errors) does not need a process of its own, and
    in process it costs no interpreter start and shares the loaded model. An exception that escapes
    the command is written to stderr as a traceback, as a real process would, so "no Traceback"
    assertions keep their meaning. Signals, TTYs and crashes need run_cli.
    """
    import traceback

    from click.testing import CliRunner

    from semindex.cli import cli

    result = CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        stderr += "".join(traceback.format_exception(*result.exc_info))
    proc = subprocess.CompletedProcess(["semindex", *args], result.exit_code, result.stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"semindex {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_cli(*args: str, check: bool = False, timeout: float = 600, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `semindex ARGS` the way a user does: a separate process, real files (smoke tests, signals)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "semindex", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"semindex {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def clustered(n: int, *, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors from a seeded Gaussian mixture: ``clusters`` centres, noise ``spread``.

    What the index tests search: clustered like embeddings, so IVF cells and HNSW graphs have
    structure, and the same for a given seed on every run."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)
