"""`semindex serve`: the HTTP API (semindex.api) under uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from .app import cli, open_store, store_location_options
from .backend_opts import BACKEND_CHOICES, PRECISION_CHOICES, apply_threads, set_process_defaults

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # same as semindex.api.DEFAULT_MAX_BODY_BYTES (not imported: keeps --help fast)


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    if api_key or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve on {host} without an API key: anyone who can reach it could read and change "
        "the store; set --api-key (or $SEMINDEX_API_KEY), or pass --insecure"
    )


@cli.command("serve")
@store_location_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--api-key", envvar="SEMINDEX_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health. Env: SEMINDEX_API_KEY.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--max-body-bytes", default=DEFAULT_MAX_BODY_BYTES, show_default=True,
              type=click.IntRange(1024, None), help="Larger request bodies are refused with 413.")
@click.option("--device", default=None, help="Model device: auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--torch-threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads per model call (default: torch's, one per core). 1 is often faster on a "
                   "machine whose cores are busy with other work.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default=None,
              help="Inference backend for new collections and the embeddings endpoint: auto (default: openvino "
                   "on CPU when installed), torch, onnx, openvino. Existing collections keep the precision they "
                   "hold. Env: SEMINDEX_BACKEND.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="fp32 (default), bf16 (openvino) or int8 (onnx), for new collections. Env: SEMINDEX_PRECISION.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log one line per request.")
@click.option("--embed-model", "embed_models", multiple=True, metavar="MODEL",
              help="A model POST /v1/embeddings serves (repeat for more; loaded at start-up). "
                   "Default: the default model plus every collection's model.")
@click.option("--allow-model", "allow_models", multiple=True, metavar="MODEL",
              help="A model requests may name (a new collection's model, or a rerank cross-encoder); repeat "
                   "for more. Always allowed: the default model, each collection's own, and the cross-encoders in "
                   "the server's Hugging Face cache. Nothing else is loaded.")
@click.option("--limit-concurrency", default=256, show_default=True, type=click.IntRange(1, None),
              help="Connections (and tasks) at once; more are answered 503 at once instead of queueing.")
@click.option("--timeout-keep-alive", default=5, show_default=True, type=click.IntRange(1, 3600),
              help="Seconds an idle keep-alive connection is held open.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a connection has to send a complete request head (from when it opens, or from the "
                   "first byte of its next request); then it is closed.")
@click.option("--body-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a request has for its whole body to arrive; then it is answered 408 and closed.")
@click.option("--request-timeout", default=60.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="Seconds a request may take; past it, 504 deadline_exceeded. A write that has started "
                   "always finishes (and is answered); one that has not is never started.")
@click.option("--recall-check/--no-recall-check", default=True, show_default=True,
              help="Check ANN recall@10 on a sample of real queries in the background (exactly, from SQL) and "
                   "raise efSearch / nprobe / k_factor when it falls below the index's target.")
@click.option("--query-cache", type=click.IntRange(0, 10_000_000), default=None,
              help="Query embeddings kept per model for exact repeats (default 4096, $SEMINDEX_QUERY_CACHE; "
                   "0 turns the cache off).")
def serve_command(
    store_path: Path,
    db_url: str | None,
    host: str,
    port: int,
    api_key: str | None,
    insecure: bool,
    max_body_bytes: int,
    device: str | None,
    torch_threads: int | None,
    backend: str | None,
    precision: str | None,
    log_level: str,
    access_log: bool,
    embed_models: tuple[str, ...],
    allow_models: tuple[str, ...],
    limit_concurrency: int,
    timeout_keep_alive: int,
    header_timeout: float,
    body_timeout: float,
    request_timeout: float,
    recall_check: bool,
    query_cache: int | None,
) -> None:
    """Serve the store over HTTP (JSON; docs at /docs, schema at /openapi.json).

    Models are loaded once at start-up. SIGTERM or Ctrl-C stops accepting
    connections, lets the requests in flight finish, then checkpoints the index
    and closes the store.

    \b
    Examples:
      semindex index samples/sample.jsonl && semindex serve
      curl -s localhost:8000/collections/default/search -d '{"query": "black holes", "k": 3}' \\
           -H 'content-type: application/json'
      SEMINDEX_API_KEY=s3cret semindex serve --host 0.0.0.0 --port 8080
    """
    import uvicorn

    from ..api import create_app, memory
    from ..api.server import limit_repeated_logs, timeout_protocol

    if api_key is not None and api_key.strip() != api_key:
        # clients send the key trimmed (a header value cannot keep surrounding spaces), so an
        # untrimmed one would lock everyone out; a blank one would pass the public-host check
        if not api_key.strip():
            raise ConfigError("--api-key is blank; set a real key (or no key on a loopback host)")
        api_key = api_key.strip()
    api_key = api_key or None
    check_exposure(host, api_key, insecure)
    check_port_free(host, port)  # before loading anything: a busy port is one clear line
    logging.getLogger("semindex").setLevel(log_level.upper())
    apply_threads(torch_threads)  # torch and the exported backends alike
    set_process_defaults(backend, precision)
    from ..core import configure_query_cache, enable_recall_checks

    enable_recall_checks(recall_check)
    if query_cache is not None:
        configure_query_cache(query_cache)
    trim_interval = memory.interval_from_env()  # a bad value is one line before anything loads
    store = open_store(store_path, db_url, must_exist=False, device=device)
    trimmer = memory.start(trim_interval)  # freed memory back to the OS, so RSS stays flat
    try:
        served = None
        if embed_models:
            from ..core import model_info

            served = [model_info(m, device).name for m in embed_models]  # fail fast on a model that cannot load
        app = create_app(store, api_key=api_key, max_body_bytes=max_body_bytes, close_store=True,
                         embed_models=served, allow_models=allow_models, request_timeout=request_timeout)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=60,
            lifespan="on",
            limit_concurrency=limit_concurrency,  # a flood of sockets gets 503s, not "Too many open files"
            timeout_keep_alive=timeout_keep_alive,
            h11_max_incomplete_event_size=64 * 1024,  # request line + headers
            http=timeout_protocol(header_timeout, body_timeout),  # uvicorn has no read timeouts of its own
        )
        server = _server(config)
        click.echo(f"semindex: serving {store.path} on http://{host}:{port} "
                   f"({'API key required' if api_key else 'no API key'})", err=True)
        try:
            with limit_repeated_logs():  # after uvicorn.Config, which configures its loggers
                server.run()
        except SystemExit as exc:  # uvicorn exits 3 (our "not found" code) when it cannot start
            raise ConfigError(f"the server did not start on {host}:{port} (see the log above)") from exc
        if not server.started:
            raise ConfigError(f"the server did not start on {host}:{port} (see the log above)")
    finally:
        if trimmer is not None:
            trimmer.stop()
        store.close()
    click.echo("semindex: shut down cleanly", err=True)


def check_port_free(host: str, port: int) -> None:
    """ConfigError (exit 2, one line) when ``host:port`` cannot be bound, e.g. another server
    holds it; bound the way uvicorn binds (SO_REUSEADDR), then released at once."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              "(another server there? pick another --port)") from exc


_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _server(config: Any) -> Any:
    """A uvicorn.Server that exits normally (status 0) after a graceful shutdown on SIGTERM/SIGINT.

    Plain uvicorn re-raises the captured signal once it has shut down, which would
    kill the process with that signal instead of returning. ``capture_signals`` is the
    documented hook for this; it is replaced whole (route the signals to uvicorn's public
    ``handle_exit``, restore the old handlers after) rather than wrapped, so nothing here
    depends on uvicorn's private attributes.
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield  # signals can only be handled in the main thread
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)
