"""The progress bar of the long-running commands (index, import-vectors), on stderr.

A bar only when stderr is a terminal: piped or captured output (scripts, CI, tests)
stays exactly the summary lines, with no control characters in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .app import stderr_is_tty

Advance = Callable[[int], None]


def progress_bar(
    total: int | None, label: str, *, rate_unit: str | None = None
) -> tuple[AbstractContextManager[Any], Advance | None]:
    """A context manager to run the work in, and the ``advance(n)`` to call after each batch.

    ``label`` heads the bar ("indexing"); ``rate_unit`` ("docs") adds a percentage and a
    live "<rate> <unit>/s" column. Off a terminal: a no-op context and ``None`` (callers
    pass ``progress=None`` on to the library, which then skips the callback).
    """
    if not stderr_is_tty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if rate_unit is not None:
        columns += [TaskProgressColumn(), TextColumn("{task.fields[rate]}")]
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    progress = Progress(*columns, console=Console(stderr=True))
    task = progress.add_task(label, total=total, rate="")

    def advance(n: int) -> None:
        progress.advance(task, n)
        if rate_unit is not None:
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:.1f} {rate_unit}/s" if speed else "")

    return progress, advance
