"""Starting a `semindex serve` process and waiting until it answers: one helper for benchmarks and tests.

Why here: benchmark scripts run as ``python benchmarks/X.py`` on a checkout without the test suite's
imports, so the helper cannot live in tests/; the tests import it as ``benchmarks._serve`` (the repo
root is on their path). It polls ``GET /health``; the loop ends when the server answers 200, when the
process exits (its log is the error), or at the deadline.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ServerDidNotStart", "free_port", "wait_healthy"]


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer /health in time; the message says which, with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    base: str,
    proc: subprocess.Popen[Any] | None = None,
    timeout: float = 180,
    *,
    log: Callable[[], str] = lambda: "",
    interval: float = 0.1,
) -> None:
    """Return once ``GET {base}/health`` answers 200; raise ServerDidNotStart otherwise.

    ``proc``: the server process, so an early exit fails at once instead of at the deadline;
    ``log``: what to quote when it fails (the server's log so far).
    """
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:  # one client for the polls: each new one builds a TLS context (~20 ms)
        while True:
            if proc is not None and proc.poll() is not None:
                raise ServerDidNotStart(f"the server exited with {proc.returncode}:\n{log()}")
            try:
                if client.get(f"{base}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerDidNotStart(f"the server at {base} did not become healthy in {timeout:.0f} s:\n{log()}")
            time.sleep(interval)
