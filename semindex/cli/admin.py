"""`semindex info`, `delete` and `check`: looking after a store."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConsistencyError
from .app import cli, echo_json, open_store, store_options
from .format import human_bytes as _human
from .format import params_suffix


@cli.command("info")
@store_options
@click.option("--json", "as_json", is_flag=True, help='Print {"collections": [...]} as JSON.')
def info_command(store_path: Path, db_url: str | None, collection: str, as_json: bool) -> None:
    """List the collections: count, model, dimension, index type, bytes on disk."""
    store = open_store(store_path, db_url, must_exist=True)
    try:
        infos = store.list_collections()
    finally:
        store.close()
    if as_json:
        echo_json({"store": str(store_path), "collections": [i.as_dict() for i in infos]})
        return
    if not infos:
        click.echo(f"{store_path}: no collections")
        return
    for i in infos:
        click.echo(
            f"{i.name}: {i.count} documents, {i.chunks} chunks{_chunking(i.chunking)}, "
            f"model {i.model or '(vectors only)'}, dimension {i.dimension}{_truncation(i.truncate_dim)}, "
            f"metric {i.metric}, index {i.index_type} ({_human(i.index_bytes)} in memory), "
            f"{_human(i.bytes_on_disk)} on disk"
        )
        policy = f"auto -> {i.index_type}" if i.index_policy == "auto" else i.index_type
        click.echo(
            f"  index: {policy}{params_suffix(i.index_params)}, {i.bytes_per_vector:.0f} bytes/vector, "
            f"{_human(i.index_bytes)} total, search on {i.index_device}"
        )


def _truncation(n: int | None) -> str:
    """' (Matryoshka: the model's first N dims)' for a truncated collection, else nothing."""
    return f" (Matryoshka: the model's first {n} dims)" if n else ""


def _chunking(cfg: dict[str, object] | None) -> str:
    """' (chunking 256/32 tokens)', ' (truncated at the window)', or nothing for vectors-only collections."""
    if cfg is None:
        return ""
    if not cfg.get("enabled"):
        return " (no chunking: truncated at the model's window)"
    size = cfg.get("size") or "window"
    overlap = cfg.get("overlap")
    return f" (chunks of {size} tokens, overlap {'1/8' if overlap is None else overlap})"


@cli.command("delete")
@click.argument("ids", nargs=-1, required=True)
@store_options
def delete_command(ids: tuple[str, ...], store_path: Path, db_url: str | None, collection: str) -> None:
    """Delete documents by ID from a collection."""
    store = open_store(store_path, db_url, must_exist=True)
    try:
        n = store.get_collection(collection).delete(list(ids))
    finally:
        store.close()
    click.echo(f"deleted {n} of {len(ids)} ids from {collection}")


@cli.command("check")
@store_options
@click.option("--all", "all_collections", is_flag=True, help="Check every collection (default: only --collection).")
@click.option("--repair", is_flag=True, help="Rebuild the vector index from the embeddings stored in SQL (no re-encoding).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_command(
    store_path: Path, db_url: str | None, collection: str, all_collections: bool, repair: bool, as_json: bool
) -> None:
    """Verify that SQL rows, stored embeddings and the vector index agree (counts and ids).

    Exits 0 with a one-line summary when they do; non-zero, naming the drift, when not.
    """
    store = open_store(store_path, db_url, must_exist=True)
    bad = []
    try:
        names = store.collection_names() if all_collections else [collection]
        for name in names:
            coll = store.get_collection(name)
            report = coll.check()
            if not report.ok and repair:
                click.echo(report.summary(), err=True)
                report = coll.repair()
                click.echo(f"repaired {name}: " + report.summary())
            if as_json:
                echo_json({"collection": name, "ok": report.ok, **report.__dict__})
            elif report.ok:
                click.echo(report.summary())
            if not report.ok:
                bad.append(report.summary())
    finally:
        store.close()
    if bad:
        raise ConsistencyError("; ".join(bad))
