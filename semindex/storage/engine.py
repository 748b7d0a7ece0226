"""The database connection: engine setup, SQLite pragmas, and creating the schema once.

Every durability promise starts here: SQLite runs in WAL mode with ``synchronous=FULL``
(a committed batch survives power loss), a 60 s busy timeout (concurrent writers wait
rather than fail), and transactions that SQLAlchemy, not pysqlite, begins, so a write
transaction can take the write lock up front (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigError, StorageError
from . import migrate
from . import schema as s
from .failures import storage_error

DB_FILE = "semindex.db"
SCHEMA_LOCK_KEY = 0x53454D49  # pg_advisory_xact_lock key for schema creation ("SEMI")


def default_db_url(folder: Path) -> str:
    """The SQLite database a store folder holds when no URL is given."""
    return f"sqlite:///{folder / DB_FILE}"


def store_exists(folder: Path, db_url: str | None = None) -> bool:
    """Whether ``folder`` already holds a store (without creating one): its SQLite file, or with a
    database URL, the index folder beside it."""
    if db_url:
        return folder.is_dir()
    return (folder / DB_FILE).is_file()


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and transactions SQLAlchemy controls (the pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let BEGIN below be the only transaction control
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        _set_wal(cur)
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        # "BEGIN IMMEDIATE" where a transaction reads before it writes and must not lose
        # the race for the write lock (a deferred one would fail at once with SQLITE_BUSY).
        conn.exec_driver_sql(conn.get_execution_options().get("semindex_begin", "BEGIN"))


def _set_wal(cur: Any) -> None:
    """Switch to WAL once per database file, surviving a race with another process doing the same.

    Changing the journal mode needs an exclusive lock, and SQLite can answer SQLITE_BUSY at once
    (no busy handler) when two processes open a brand-new store together; reading the mode first
    makes every later open a pure read, and the rare collision is retried for up to the busy timeout.
    """
    deadline = time.monotonic() + 60
    delay = 0.01
    while True:
        try:
            mode = cur.execute("PRAGMA journal_mode").fetchone()
            if mode and str(mode[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(
                url, connect_args={"timeout": 60, "check_same_thread": False}, pool_pre_ping=False
            )
            _sqlite_setup(engine)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        hint = " (for PostgreSQL: pip install 'semindex[postgres]')" if "postgres" in url else ""
        raise ConfigError(f"cannot use database URL {url!r}: {exc}{hint}") from exc
    return engine


def safe_url(url: str) -> str:
    """The URL with its password hidden: what error messages may show."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def open_schema(engine: Engine, url: str) -> str:
    """Make sure the schema exists; returns the store's id. Errors name the database, not the driver."""
    try:
        return _retry_locked(lambda: _existing_store_id(engine) or _create_schema(engine))
    except sa.exc.OperationalError as exc:
        err = storage_error(exc)
        if "disk is full" in str(err):
            raise err from exc
        raise StorageError(f"cannot open database {safe_url(url)}: {exc.orig}") from exc
    except sa.exc.DBAPIError as exc:
        raise StorageError(f"cannot open database {safe_url(url)}: {exc.orig}") from exc


def _retry_locked(fn: Callable[[], str]) -> str:
    """Opening a store races other processes opening it (schema creation, WAL switch): a
    "database is locked" there is retried briefly rather than reported as a failure to open."""
    for attempt in range(8):
        try:
            return fn()
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc.orig) or attempt == 7:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _existing_store_id(engine: Engine) -> str | None:
    """The common case, read-only: the schema exists and the store has its id."""
    with engine.connect() as conn:
        if not set(s.metadata_obj.tables) <= set(sa.inspect(conn).get_table_names()):
            return None  # no schema yet, or tables added since this store was made
        row = conn.execute(sa.select(s.meta_table.c.value).where(s.meta_table.c.key == "store_id")).first()
    return str(row[0]) if row else None


def _create_schema(engine: Engine) -> str:
    """Create the tables and the store id, serialised against other processes doing the same.

    PostgreSQL: a transaction-scoped advisory lock (DDL is transactional, so a loser
    sees the winner's tables once the lock is granted). SQLite: BEGIN IMMEDIATE takes
    the write lock before the existence checks, waiting out the busy timeout.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(semindex_begin="BEGIN IMMEDIATE")
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            s.metadata_obj.create_all(conn, checkfirst=True)
            migrate.upgrade(conn)
            return _store_id(conn)


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the write lock from its first statement (SQLite: BEGIN IMMEDIATE,
    waiting out the busy timeout). For DDL-like paths that read before they write (drop): a
    deferred SQLite transaction that read first fails at once with "database is locked" when
    another writer committed meanwhile, whatever the busy timeout."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(semindex_begin="BEGIN IMMEDIATE")
        with conn.begin():
            yield conn


def _store_id(conn: Connection) -> str:
    row = conn.execute(sa.select(s.meta_table.c.value).where(s.meta_table.c.key == "store_id")).first()
    if row:
        return str(row[0])
    sid = uuid.uuid4().hex
    conn.execute(
        s.meta_table.insert(),
        [{"key": "store_id", "value": sid}, {"key": "schema_version", "value": str(s.SCHEMA_VERSION)}],
    )
    return sid
