"""Real servers for the API tests: `semindex serve` as a subprocess, or uvicorn in a thread of this process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _serve
from benchmarks._serve import free_port
from tests.support import REPO, SAMPLE, invoke_cli

__all__ = ["KEY", "ServeProcess", "ThreadServer", "cli_store", "free_port", "wait_healthy"]

KEY = "test-key-0123456789"


def wait_healthy(base: str, proc: subprocess.Popen[Any] | None = None, timeout: float = 180) -> None:
    """benchmarks/_serve.py's health poll, failing the test (AssertionError) with the server's log."""
    try:
        _serve.wait_healthy(base, proc, timeout, log=lambda: read_log(proc) if proc is not None else "")
    except _serve.ServerDidNotStart as exc:
        raise AssertionError(str(exc)) from None


def read_log(proc: subprocess.Popen[Any]) -> str:
    log = getattr(proc, "log_path", None)
    return Path(log).read_text(encoding="utf-8", errors="replace") if log else ""


class ServeProcess:
    """`python -m semindex serve --store DIR --port P ...` with its log in a file."""

    def __init__(self, store: Path, *args: str, env: dict[str, str] | None = None,
                 entry: tuple[str, ...] = ("-m", "semindex")) -> None:
        """``entry``: what follows the interpreter, e.g. a script that registers a test encoder first."""
        self.store = store
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = store.parent / f"serve-{self.port}.log"
        # the developer's SEMINDEX_* settings stay out; the test's lane (SEMINDEX_MODEL) goes in
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMINDEX_") or k == "SEMINDEX_MODEL"}
        full_env = {**base_env, "PYTHONPATH": str(REPO), **(env or {})}
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "serve", "--store", str(store), "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.proc.log_path = str(self.log_path)  # type: ignore[attr-defined]

    def wait(self) -> ServeProcess:
        wait_healthy(self.base, self.proc)
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def _prompt_server(config: Any) -> Any:
    """A uvicorn.Server that stops as soon as it is told to.

    uvicorn's loop looks at ``should_exit`` every 0.1 s and its shutdown then sleeps 0.1 s before it
    waits, in 0.1 s steps, for the connections to close: 160 ms per in-process server (55 of them in
    the fast lane, 9 s of worker time). This one wakes on ``stop()`` and polls the connections every
    5 ms; the order of shutdown (stop accepting, close connections, wait, lifespan shutdown) is
    uvicorn's, so the app's own shutdown (the work gate, closing the store) runs as in `serve`."""
    import asyncio

    import uvicorn

    class PromptServer(uvicorn.Server):  # type: ignore[misc]
        loop: asyncio.AbstractEventLoop | None = None
        wake: asyncio.Event | None = None

        async def main_loop(self) -> None:
            self.loop, self.wake = asyncio.get_running_loop(), asyncio.Event()
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 1) % 864000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.1)

        async def shutdown(self, sockets: Any = None) -> None:
            for server in self.servers:
                server.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()
            deadline = time.monotonic() + 60
            while (self.server_state.connections or self.server_state.tasks) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            await self.lifespan.shutdown()

        def exit_now(self) -> None:
            self.should_exit = True
            if self.loop is not None and self.wake is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    self.loop.call_soon_threadsafe(self.wake.set)

    return PromptServer(config)


class ThreadServer:
    """uvicorn.Server running create_app(store) in a background thread of the test process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = _prompt_server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("in-process server did not start")
            time.sleep(0.005)  # uvicorn starts in ~50 ms here: a coarse poll would double that
        return self

    def stop(self) -> None:
        self.server.exit_now()
        self.thread.join(timeout=60)


def cli_store(tmp_path: Path, *db_args: str) -> Path:
    """A store built the way a user builds one: `semindex index samples/sample.jsonl` (plus e.g. --db URL).

    The command runs in process (tests.support.invoke_cli): the server under test is the process."""
    store = tmp_path / "cli-store"
    invoke_cli("index", str(SAMPLE), "--store", str(store), *db_args, check=True)
    return store
