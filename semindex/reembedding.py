"""`semindex reembed`: a collection's stored texts re-encoded with another model.

A collection keeps every document's text, title and metadata, so moving to a new
(e.g. fine-tuned) model needs no access to the original sources. The new vectors
always go into a collection of their own first:

* ``into=NEW``: that collection is the result; the source is not touched;
* in place: a temporary collection is filled, and only when every document is in
  it does one storage transaction swap it with the original (the old one is then
  dropped). A crash before the swap leaves the original exactly as it was (plus a
  stale temporary collection, which the next reembed of that collection removes).

Sits above core (Store/Collection), below cli.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core import Collection, Store
from .errors import CollectionExistsError, InvalidInputError
from .indexer.encoder import canonical_model_name

PAGE = 512
TMP_SUFFIX = ".reembed"


@dataclass
class ReembedResult:
    source: str
    target: str
    model: str
    count: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def temp_name(name: str) -> str:
    """The in-place build's collection: a name no user picks by accident, still a valid name."""
    return (name[: 64 - len(TMP_SUFFIX)] + TMP_SUFFIX) if len(name) + len(TMP_SUFFIX) > 64 else name + TMP_SUFFIX


def copy_reencoded(src: Collection, dst: Collection, *, batch_size: int = 32,
                   progress: Callable[[int], None] | None = None) -> int:
    """Every document of ``src`` (id, text, title, metadata) added to ``dst``, which encodes them."""
    n = 0
    offset = 0
    while True:
        ids = src.ids(offset=offset, limit=PAGE)
        if not ids:
            return n
        offset += len(ids)
        docs = src.get_many(ids)
        dst.add([d.as_dict() for d in docs], batch_size=batch_size, commit_every=PAGE)
        n += len(docs)
        if progress is not None:
            progress(len(docs))


def reembed(
    store: Store,
    collection: str,
    model: str,
    *,
    into: str | None = None,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
    dimensions: int | None = None,
    allow_truncation: bool = False,
) -> ReembedResult:
    """Re-encode ``collection`` with ``model`` into ``into`` (new), or in place when ``into`` is None.

    ``dimensions`` / ``allow_truncation``: Matryoshka truncation of the new vectors (see
    :meth:`semindex.Store.create_collection`); None gives the new model's full vectors, whatever
    the source held, since a truncation belongs to the model it was checked against.
    """
    t0 = time.perf_counter()
    src = store.get_collection(collection)
    if src.model is None:
        raise InvalidInputError(
            f"collection {collection!r} holds precomputed vectors; there is no model to re-encode its texts with"
        )
    if into is not None and into == collection:
        into = None
    target = into if into is not None else temp_name(collection)
    if into is not None and target in store.collection_names():
        raise CollectionExistsError(target)
    if into is None and target in store.collection_names():
        store.delete_collection(target)  # what an interrupted in-place reembed left behind
    dst = store.create_collection(target, model=model, metric=src.metric, index=src.record.index_spec,
                                  dimensions=dimensions, allow_truncation=allow_truncation)
    try:
        n = copy_reencoded(src, dst, batch_size=batch_size, progress=progress)
        dst.checkpoint()
    except BaseException:
        if into is not None:
            store.delete_collection(target)  # --into: leave nothing half-built behind
        raise
    if into is None:
        swap_in(store, target, collection)
        target = collection
    return ReembedResult(source=collection, target=target, model=canonical_model_name(model), count=n,
                         seconds=round(time.perf_counter() - t0, 3))


def swap_in(store: Store, new: str, old: str) -> None:
    """Make ``new`` answer to the name ``old`` (one storage transaction swaps the two names), then
    drop the previous collection, which now carries the temporary name. A crash between the
    two steps leaves the new collection in place and the old one under the temporary name,
    which the next reembed of ``old`` removes."""
    store.swap_collections(new, old)
    store.delete_collection(new)
