"""Small text formatters shared by the commands' human-readable output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def params_suffix(params: Mapping[str, Any]) -> str:
    """The tuned index parameters people look at, as " (nlist=.., nprobe=..)"; "" when none.

    Wraps the store's own formatter (``semindex.core.format_params``, the one the
    storage log lines use), so the CLI and the logs never disagree on what is shown.
    """
    from ..core import format_params

    shown = format_params(params)
    return f" {shown}" if shown else ""


def human_bytes(n: int) -> str:
    """1536 -> "1.5 KiB"; whole bytes below 1 KiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
