"""Files written so that a crash at any instant leaves the old content or the new, never a torn one.

Write to a temporary file in the same folder, fsync it, rename it over the target, fsync the
folder. A leaf module: the index families (``vectors``) and the checkpoint logic both use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss

from ..errors import StorageError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_index_atomic(index: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        try:
            faiss.write_index(index, tmp)
        except RuntimeError as exc:  # faiss reports ENOSPC etc. as RuntimeError
            raise OSError(str(exc)) from exc

    _atomic_write(path, write)


def write_bytes_atomic(path: Path, parts: list[bytes | memoryview]) -> None:
    """Raw bytes (written part by part, no joined copy) to ``path``, crash-safe."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)

    _atomic_write(path, write)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)

    _atomic_write(path, write)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
