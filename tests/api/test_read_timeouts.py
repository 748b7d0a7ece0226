"""Issue 11, class 4: slow clients cannot hold sockets. Raw sockets against a real `semindex serve` on
127.0.0.1 (--header-timeout / --body-timeout of 0.75 s): one that sends nothing, half a head or half a
body is closed (the half body answered 408) within the timeout plus slack, while /health keeps
answering and a normal keep-alive client is unaffected. The log limiter is tested with an injected clock."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from semindex.api.server import RepeatLimiter, limit_repeated_logs, timeout_protocol
from tests.api.serving import ServeProcess

TIMEOUT = 0.75
SLACK = 3 * TIMEOUT + 5  # generous: the box is shared; what matters is "closed", not "never"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    store = tmp_path_factory.mktemp("timeouts") / "s"
    srv = ServeProcess(store, "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
                       "--timeout-keep-alive", "30").wait()
    yield srv
    srv.stop()


def _connect(srv: ServeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=SLACK)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length (what the API sends): (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.strip().lower() == "content-length")
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), body


def _health_ok(srv: ServeProcess) -> None:
    r = httpx.get(f"{srv.base}/health", timeout=TIMEOUT * 3)
    assert r.status_code == 200, r.text


def test_silent_half_head_and_half_body_sockets_are_closed_while_health_answers(served: ServeProcess) -> None:
    silent = [_connect(served) for _ in range(20)]
    half_head = _connect(served)
    half_head.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    half_body = _connect(served)
    half_body.sendall(b"POST /collections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"name\": ")
    _health_ok(served)  # the slow sockets take nothing from the others
    try:
        for sock in silent:  # sent nothing: closed without a word, like an idle keep-alive socket
            data, took = _read_until_closed(sock)
            assert data == b"" and took < SLACK, (data, took)
        for sock, what in ((half_head, "head"), (half_body, "body")):  # sent part of a request: told why
            data, took = _read_until_closed(sock)
            assert took < SLACK
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), data
            assert b"connection: close" in head.lower()
            answer = json.loads(body)
            assert answer["error"] == "request_timeout" and f"request {what}" in answer["detail"], answer
    finally:
        for sock in [*silent, half_head, half_body]:
            sock.close()
    _health_ok(served)
    with httpx.Client(base_url=served.base, timeout=30) as c:  # the half-sent collection was never created
        assert c.get("/collections").json()["collections"] == []


def test_keep_alive_client_is_unaffected_but_a_half_next_request_is_closed(served: ServeProcess) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200
        time.sleep(TIMEOUT * 2)  # idle longer than the header timeout: idle is keep-alive's business (30 s here)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a head in two parts, well within the timeout
        time.sleep(0.1)
        sock.sendall(b"\r\n")
        assert _read_response(sock)[0] == 200
        body = b'{"name": "kept", "dimension": 4}'
        sock.sendall(b"POST /collections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert _read_response(sock)[0] == 201
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and then never the blank line
        data, took = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 408") and took < SLACK, (data, took)
    with httpx.Client(base_url=served.base, timeout=30) as c:  # an ordinary client, several requests on one socket
        for _ in range(3):
            assert c.get("/collections/kept").status_code == 200
        assert c.delete("/collections/kept").status_code == 200


def test_too_many_open_files_is_logged_once_not_thousands_of_times(tmp_path: Path) -> None:
    """With its descriptors used up, the server's accept fails with EMFILE and asyncio logs a
    traceback per attempt: over 20,000 lines in 5 s when measured without the limiter. With it,
    one line, and the server answers again once the sockets are gone."""
    import os
    import resource
    import subprocess
    import sys

    from tests.api.serving import free_port, wait_healthy
    from tests.support import REPO

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMINDEX_") or k == "SEMINDEX_MODEL"}
    env["PYTHONPATH"] = str(REPO)

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))  # the server itself uses about 12

    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "semindex", "serve", "--store", str(tmp_path / "s"),
                                 "--port", str(port), "--header-timeout", "60"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=few_files)
        proc.log_path = str(log_path)  # type: ignore[attr-defined]
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc)
            socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(60)]
            try:
                end = time.monotonic() + 60
                while "out of system resource" not in log_path.read_text():
                    assert time.monotonic() < end and proc.poll() is None, log_path.read_text()
                    time.sleep(0.05)
                time.sleep(1.5)  # asyncio retries accept every second (ACCEPT_RETRY_DELAY), each retry thousands of lines
            finally:
                for sock in socks:
                    sock.close()
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
            assert r.status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    text = log_path.read_text()
    assert text.count("socket.accept() out of system resource") == 1, text[-3000:]
    assert text.count("Too many open files") == 1


def test_timeout_protocol_refuses_nonsense() -> None:
    cls = timeout_protocol(2, 3)
    assert (cls.header_timeout, cls.body_timeout) == (2.0, 3.0)
    with pytest.raises(ValueError, match="positive"):
        timeout_protocol(0, 3)


# -- the log limiter ----------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, _Collect]]:
    lg = logging.getLogger("semindex.test.limiter")
    handler = _Collect()
    lg.addHandler(handler)
    lg.propagate = False
    yield lg, handler
    lg.removeHandler(handler)
    lg.filters.clear()


def test_repeat_limiter_lets_one_line_through_per_interval_and_counts_the_rest(
        logger: tuple[logging.Logger, _Collect]) -> None:
    lg, out = logger
    clock = _Clock()
    lg.addFilter(RepeatLimiter(10, clock=clock))
    for fd in range(500):  # one flood: the same line with different arguments
        lg.error("accept failed on fd %d: %s", fd, OSError(24, "Too many open files"))
        clock.now += 0.01
    lg.warning("Exceeded concurrency limit.")  # another line is not held back by the flood
    assert out.lines == ["accept failed on fd 0: [Errno 24] Too many open files", "Exceeded concurrency limit."]
    clock.now += 10  # past the interval: the next one goes through with the count
    lg.error("accept failed on fd %d: %s", 7, OSError(24, "Too many open files"))
    assert out.lines[-1].startswith("accept failed on fd 7") and "499 more like it" in out.lines[-1]
    lg.error("accept failed on fd %d: %s", 8, OSError(24, "Too many open files"))
    assert len(out.lines) == 3  # suppressed again
    lg.error("accept failed on fd %d: %s", 9, ValueError("other"))  # another exception type: its own line
    assert len(out.lines) == 4


def test_repeat_limiter_is_bounded_in_keys() -> None:
    clock = _Clock()
    limiter = RepeatLimiter(10, clock=clock, max_keys=8)
    for i in range(100):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, f"line {i}", None, None)
        assert limiter.filter(record)
    assert len(limiter._seen) == 8


def test_limit_repeated_logs_covers_asyncio_accept_errors() -> None:
    out = _Collect()
    lg = logging.getLogger("asyncio")
    lg.addHandler(out)
    try:
        with limit_repeated_logs(60):
            for _ in range(50):  # what asyncio logs when accept() hits EMFILE, once a second
                lg.error("socket.accept() out of system resource\nsocket: <fd=6>",
                         exc_info=OSError(24, "Too many open files"))
        lg.error("socket.accept() out of system resource", exc_info=OSError(24, "Too many open files"))
    finally:
        lg.removeHandler(out)
    assert len(out.lines) == 2  # one during the flood; after the limiter is removed, all pass again


def test_serve_refuses_a_zero_timeout(tmp_path: Path) -> None:
    from tests.support import invoke_cli

    proc = invoke_cli("serve", "--store", str(tmp_path / "s"), "--header-timeout", "0")
    assert proc.returncode == 2 and "header-timeout" in proc.stderr, proc.stderr
