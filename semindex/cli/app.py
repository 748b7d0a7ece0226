"""The click group, shared options, and the one place errors become exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import SemindexError

if TYPE_CHECKING:  # core is imported when a command runs, so that --help stays fast
    from ..core import Store

F = TypeVar("F", bound=Callable[..., Any])


class SemindexGroup(click.Group):
    """Turns a SemindexError anywhere below into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SemindexError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: everything committed so far is kept", err=True)
            ctx.exit(130)


@click.group(cls=SemindexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semindex")
@click.option("-v", "--verbose", is_flag=True, help="Log what semindex does (to stderr).")
def cli(verbose: bool) -> None:
    """Semantic search over your documents: index files, search them, serve them over HTTP.

    The store is a folder (./semindex-data, or $SEMINDEX_STORE) holding a SQLite
    database and the vector index files; --db puts the metadata in any SQLAlchemy
    database (PostgreSQL) instead.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # Model weights come from local packages or the local cache, never from a download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def store_options(f: F) -> F:
    """--store / --db / --collection, shared by every command that opens a store."""
    f = click.option(
        "--collection", "-c", default="default", show_default=True, help="Collection name."
    )(f)
    return store_location_options(f)


def store_location_options(f: F) -> F:
    """--store / --db alone, for commands that choose the collection otherwise (eval, serve)."""
    f = click.option(
        "--db",
        "db_url",
        envvar="SEMINDEX_DB_URL",
        default=None,
        help="SQLAlchemy URL of the metadata database (default: SQLite inside --store). Env: SEMINDEX_DB_URL.",
    )(f)
    f = click.option(
        "--store",
        "store_path",
        envvar="SEMINDEX_STORE",
        default="semindex-data",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Store folder. Env: SEMINDEX_STORE.",
    )(f)
    return f


def open_store(store_path: Path, db_url: str | None, *, must_exist: bool, device: str | None = None) -> Store:
    """The store the options name; ``must_exist`` refuses to create one (for commands that only read)."""
    from ..core import Store
    from ..errors import NotFoundError

    if must_exist and db_url is None and not Store.exists(store_path):
        raise NotFoundError(f"no store at {store_path} (create one with: semindex index FILE --store {store_path})")
    return Store(store_path, db_url=db_url, device=device)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def main() -> None:
    cli(prog_name="semindex")
