"""`semindex index`: bulk ingestion with a progress bar and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import SemindexError
from .app import cli, echo_json, open_store, store_options
from .backend_opts import apply_threads, backend_options
from .progress import progress_bar

if TYPE_CHECKING:
    from ..core import ChunkSpec, Collection, IngestStats, Store


def _summary(stats: IngestStats, truncating: bool = False) -> str:
    """One line; chunks always (a long document makes several), truncated documents when chunking is off."""
    cut = f", {stats.truncated} truncated at the model's window" if truncating else ""
    return (
        f"added {stats.added}, updated {stats.updated}, unchanged {stats.unchanged}, "
        f"failed {stats.failed}, {stats.chunks} chunks{cut} in {stats.seconds:.1f} s "
        f"({stats.docs_per_s:.1f} docs/s)"
    )


def chunk_spec(chunk_tokens: int | None, chunk_overlap: int | None, no_chunking: bool) -> ChunkSpec | None:
    """The ChunkSpec the flags ask for (None: none given, the collection's own or the default)."""
    from ..core import ChunkSpec
    from ..errors import InvalidInputError

    if no_chunking:
        if chunk_tokens is not None or chunk_overlap is not None:
            raise InvalidInputError("--no-chunking cannot be combined with --chunk-tokens or --chunk-overlap")
        return ChunkSpec(enabled=False)
    if chunk_tokens is None and chunk_overlap is None:
        return None
    return ChunkSpec(size=chunk_tokens, overlap=chunk_overlap)


def open_collection(store: Store, name: str, spec: ChunkSpec | None, **opts: object) -> Collection:
    """Create ``name`` with ``spec``, or open it and refuse flags that contradict its recorded chunking.

    Chunking is fixed when a collection is made (its chunks are already stored), so a differing
    flag on an existing collection is an error rather than silently ignored.
    """
    from ..errors import ConfigError

    existed = store.has_collection(name)
    coll = store.collection(name, chunking=spec, **opts)  # type: ignore[arg-type]
    if not existed or spec is None:
        return coll
    have = coll.chunking
    if not have.enabled or not spec.enabled:
        same = have.enabled == spec.enabled
    else:
        window = coll.chunker.window
        want = spec.resolve(window)
        same = want == have.resolve(window)
    if not same:
        recorded = f"{coll.chunker.size} tokens, overlap {coll.chunker.overlap}" if have.enabled else "off"
        raise ConfigError(
            f"collection {name!r} already exists with chunking {recorded}; chunking flags only apply "
            "to a new collection (index into a new --collection, or drop the flags)"
        )
    return coll


@cli.command("index")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_options
@click.option("--model", "-m", default=None, help="Model id or local path (default: all-MiniLM-L6-v2, bundled).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Texts per model forward pass.")
@click.option("--commit-every", default=512, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Documents per transaction: a crash loses at most one such batch.")
@click.option("--id-field", default=None, help="Field holding the document id (default: _id or id; else derived from content).")
@click.option("--text-field", "text_fields", multiple=True, help="Field(s) to embed, joined by newlines (default: text).")
@click.option("--title-field", default=None, help="Field embedded before the text (default: title when present).")
@click.option("--metadata-field", "metadata_fields", multiple=True,
              help="Field(s) to keep as metadata (default: all other fields).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="On a bad record: stop (after committing what came before), or skip and count it.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--devices", default=None,
              help="Encode on several devices of this machine, one worker each: cpu,cpu | cuda:0,cuda:1 | all.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: a Ray cluster (pip install 'semindex[ray]'; see the README).")
@click.option("--ray-address", default=None,
              help="Ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); default: start one here.")
@click.option("--actors", default=None, type=click.IntRange(1, 100_000),
              help="Ray: encoder actors (default: one per GPU, else one per CPU minus one for reads).")
@click.option("--gpus-per-actor", default=None, type=click.FloatRange(0, 64),
              help="Ray: GPUs per encoder actor (default: 1 when the cluster has GPUs, else 0).")
@click.option("--resume", is_flag=True,
              help="Ray: continue the interrupted run of this same command (fails if there is none).")
@click.option("--chunk-tokens", default=None, type=click.IntRange(1, 100_000), metavar="N",
              help="New collection: chunk size in model tokens (default: the model's window).")
@click.option("--chunk-overlap", default=None, type=click.IntRange(0, 100_000), metavar="M",
              help="New collection: tokens shared by consecutive chunks (default: 1/8 of the size).")
@click.option("--no-chunking", is_flag=True,
              help="New collection: one vector per document, truncated at the model's window (the summary counts them).")
@click.option("--dimensions", default=None, type=click.IntRange(1, 65536), metavar="N",
              help="New collection: keep the model's first N dims of every vector (Matryoshka truncation, "
                   "re-normalised). Refused unless the model is trained for it (MatryoshkaLoss in its card, "
                   "N one of its trained sizes). An existing collection must have been made with the same N.")
@click.option("--force-dimensions", is_flag=True,
              help="With --dimensions: truncate even a model that does not declare Matryoshka training "
                   "(its first N dims may retrieve far worse; measure with semindex eval).")
@backend_options
def index_command(
    sources: tuple[Path, ...],
    store_path: Path,
    db_url: str | None,
    collection: str,
    model: str | None,
    device: str | None,
    batch_size: int,
    commit_every: int,
    id_field: str | None,
    text_fields: tuple[str, ...],
    title_field: str | None,
    metadata_fields: tuple[str, ...],
    on_error: str,
    as_json: bool,
    devices: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    resume: bool = False,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    no_chunking: bool = False,
    dimensions: int | None = None,
    force_dimensions: bool = False,
    backend: str | None = None,
    precision: str | None = None,
    torch_threads: int | None = None,
) -> None:
    """Index SOURCE files into a collection (upsert; unchanged documents are skipped).

    SOURCE is a .jsonl / .jsonl.gz, .csv / .tsv, or .parquet file, a folder of .txt/.md
    files, or a BEIR folder (corpus.jsonl[.gz]; title and text are embedded together).

    \b
    Examples:
      semindex index samples/sample.jsonl
      semindex index notes/ --collection notes
      semindex index corpus.csv --id-field doc_id --text-field body --metadata-field author
    """
    from ..core import IngestStats, detect_format, estimate_total, iter_records

    spec = chunk_spec(chunk_tokens, chunk_overlap, no_chunking)
    if force_dimensions and dimensions is None:
        from ..errors import InvalidInputError

        raise InvalidInputError("--force-dimensions needs --dimensions N")
    for src in sources:
        detect_format(src)  # reject a missing or unknown source before any work
    total = estimate_total(list(sources))
    records = iter_records(
        list(sources),
        id_field=id_field,
        text_fields=text_fields,
        title_field=title_field,
        metadata_fields=metadata_fields,
    )
    stats = IngestStats()
    apply_threads(torch_threads)
    store = open_store(store_path, db_url, must_exist=False, device=device)
    try:
        coll = open_collection(store, collection, spec, model=model, backend=backend, precision=precision,
                               dimensions=dimensions, allow_truncation=force_dimensions)
        truncating = not coll.chunking.enabled
        progress_cm, advance = progress_bar(total, "indexing", rate_unit="docs")
        with progress_cm:
            try:
                if engine == "ray" or resume or any(v is not None for v in (devices, ray_address, actors, gpus_per_actor)):
                    from ..core import scaled_index  # --engine ray / --devices (issue 12)

                    scaled_index(
                        coll, list(sources), records, engine=engine, devices=devices, ray_address=ray_address,
                        actors=actors, gpus_per_actor=gpus_per_actor, resume=resume,
                        reader={"id_field": id_field, "text_fields": text_fields, "title_field": title_field,
                                "metadata_fields": metadata_fields},
                        batch_size=batch_size, commit_every=commit_every, on_error=on_error,
                        progress=advance, stats=stats,
                    )
                else:
                    coll.add_records(
                        records,
                        batch_size=batch_size,
                        commit_every=commit_every,
                        on_error=on_error,
                        progress=advance,
                        stats=stats,
                    )
            except (SemindexError, KeyboardInterrupt):
                click.echo(_summary(stats, truncating), err=True)
                raise
    finally:
        store.close()
    if as_json:
        echo_json({**stats.as_dict(), "collection": collection, "errors": stats.errors})
    else:
        click.echo(_summary(stats, truncating))
        for err in stats.errors:
            click.echo(f"skipped: {err}", err=True)
