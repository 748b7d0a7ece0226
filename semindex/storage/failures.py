"""How low-level failures (database driver errors, a full disk) become semindex errors.

One place, so "the disk is full" reads the same whether SQLite, PostgreSQL or an index
checkpoint hit it, and the user is told what to do rather than shown a driver's text.
"""

from __future__ import annotations

import errno

import sqlalchemy as sa

from ..errors import StorageError


def is_disk_full(msg: str) -> bool:
    low = msg.lower()
    return ("disk" in low and "full" in low) or "no space left" in low or "errno 28" in low


def storage_error(exc: sa.exc.DBAPIError) -> StorageError:
    """SQLite's 'database or disk is full' and PostgreSQL's 'No space left on device' read the same."""
    msg = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    if is_disk_full(str(exc.orig)):
        return StorageError(f"the disk is full: {msg} (free some space, then run the command again)")
    return StorageError(f"database error: {msg}")


def index_write_error(exc: StorageError) -> StorageError:
    """An index checkpoint that could not be written: ENOSPC becomes the same 'disk is full' error."""
    cause = exc.__cause__
    if (isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or is_disk_full(str(exc)):
        return StorageError(f"the disk is full: {exc} (free some space, then run the command again)")
    return exc
