"""Actor-side hooks for the Ray tests (``RayOptions.actor_setup = "tests.distributed.hooks:NAME:ARG"``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def kill_once(marker: str) -> Callable[[int], None]:
    """Kill this actor's process (as the OOM killer would) at its first shard >= 2, once per marker."""

    def before_shard(shard: int) -> None:
        if shard >= 2:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(137)

    return before_shard


def slow(seconds: str) -> Callable[[int], None]:
    """Sleep before every shard: a slow encoder, so a driver can be killed mid-run."""

    def before_shard(shard: int) -> None:
        time.sleep(float(seconds))

    return before_shard


def touch(path: str) -> None:
    Path(path).touch()
