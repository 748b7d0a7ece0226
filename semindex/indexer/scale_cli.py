"""The scale-out branches of ``semindex index`` (``--devices``, ``--engine ray``), kept out of the CLI.

The CLI module stays a thin skin: it parses flags and calls :func:`scaled_index`, which
chooses the engine and checks that the flags make sense together, so every combination
fails with one clear line (a :class:`~semindex.errors.ConfigError`) before any work starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ReadError

if TYPE_CHECKING:  # annotations only: both engines are imported lazily, when one is chosen
    from .pipeline import IngestStats
    from .ray_engine import RunReport
    from .readers import Record


def scaled_index(
    coll: Any,
    sources: list[Path],
    records: Iterable[Record | ReadError],
    *,
    engine: str,
    devices: str | None,
    ray_address: str | None,
    actors: int | None,
    gpus_per_actor: float | None,
    resume: bool,
    reader: Mapping[str, Any],
    batch_size: int,
    commit_every: int,
    on_error: str,
    progress: Callable[[int], None] | None,
    stats: IngestStats | None,
) -> IngestStats | RunReport:
    """Index ``sources`` into ``coll`` on several local devices or on a Ray cluster."""
    if engine != "ray":
        for flag, value in (("--ray-address", ray_address), ("--actors", actors),
                            ("--gpus-per-actor", gpus_per_actor), ("--resume", resume or None)):
            if value is not None:
                raise ConfigError(f"{flag} needs --engine ray")
        from .multidevice import ingest_on_devices, parse_devices

        assert devices is not None
        return ingest_on_devices(
            coll, records, parse_devices(devices), batch_size=batch_size, commit_every=commit_every,
            on_error=on_error, progress=progress, stats=stats,
        )
    if devices:
        raise ConfigError("--devices is for the local engine; with --engine ray use --actors and --gpus-per-actor")
    from .ray_engine import RayOptions, ray_index

    opts = RayOptions(
        address=ray_address, actors=actors, gpus_per_actor=gpus_per_actor, batch_size=batch_size,
        shard_size=commit_every, resume=resume,
    )
    return ray_index(coll, sources, opts, reader=dict(reader), on_error=on_error, progress=progress, stats=stats)


@contextlib.contextmanager
def ray_index_builder(address: str | None = None) -> Iterator[Callable[[Any], dict[str, Any] | None]]:
    """``import-vectors --engine ray``: see :func:`semindex.indexer.ray_engine.ray_index_builder`
    (imported here lazily, so ``semindex.core`` does not load the Ray engine until it is used)."""
    from .ray_engine import ray_index_builder as builder

    with builder(address) as build:
        yield build
