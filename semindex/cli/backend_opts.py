"""``--backend``, ``--precision`` and ``--torch-threads``: shared by ``index``, ``search`` and ``serve``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

BACKEND_CHOICES = ["auto", "torch", "onnx", "openvino"]
PRECISION_CHOICES = ["fp32", "bf16", "int8"]


def backend_options(func: F) -> F:
    """Add the three options (their values arrive as ``backend``, ``precision``, ``torch_threads``)."""
    func = click.option(
        "--torch-threads", type=click.IntRange(1, 1024), default=None,
        help="CPU threads per model call, for every backend (default: one per core). 1 is often faster "
             "on a machine whose cores are busy with other work.")(func)
    func = click.option(
        "--precision", type=click.Choice(PRECISION_CHOICES), default=None,
        help="Model precision: fp32 (default; exact), bf16 (openvino, CPUs with native bf16), int8 (onnx). "
             "A collection keeps the precision it was built with. Env: SEMINDEX_PRECISION.")(func)
    func = click.option(
        "--backend", type=click.Choice(BACKEND_CHOICES), default=None,
        help="Inference backend: auto (default: openvino on CPU when installed, else torch), torch, onnx, "
             "openvino. The model is exported once and cached (~/.cache/semindex, $SEMINDEX_CACHE). "
             "Env: SEMINDEX_BACKEND.")(func)
    return func


def apply_threads(torch_threads: int | None) -> None:
    """Set the threads for every backend before any model loads."""
    if torch_threads is not None:
        from ..core import set_model_threads

        set_model_threads(torch_threads)


def set_process_defaults(backend: str | None, precision: str | None) -> None:
    """For ``serve``: the backend/precision new collections get (existing ones keep what they hold)."""
    if backend is not None:
        os.environ["SEMINDEX_BACKEND"] = backend
    if precision is not None:
        os.environ["SEMINDEX_PRECISION"] = precision
