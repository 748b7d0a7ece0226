"""A torch-free Matryoshka test encoder for the fast lane (tests of truncation in the library, CLI and API).

``mrlhash`` / ``mrlhash:DIM`` is the hashing encoder declaring ``matryoshka_dims``, the attribute a
registered encoder uses to say it is trained for truncation (see semindex/indexer/truncated.py).
It is a stand-in: the hashing encoder's leading dims are as good as any others, not trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from semindex.indexer.encoder import register_encoder, unregister_encoder
from semindex.indexer.fake import HashEncoder

PREFIX = "mrlhash"
MODEL = f"{PREFIX}:64"
TRAINED = (64, 32, 16)


class MatryoshkaHash(HashEncoder):
    """HashEncoder that declares Matryoshka training at TRAINED sizes; records ``mrlhash:DIM``."""

    matryoshka_dims = TRAINED

    def __init__(self, model: str) -> None:
        super().__init__("hash:" + model.partition(":")[2])
        self.name = f"{PREFIX}:{self.dimension}"


@contextmanager
def matryoshka_encoder() -> Iterator[str]:
    """Register ``mrlhash`` for the duration; yields the model id to use (``mrlhash:64``)."""
    register_encoder(PREFIX, lambda name, device: MatryoshkaHash(name),
                     canonical=lambda name: MatryoshkaHash(name).name, replace=True)
    try:
        yield MODEL
    finally:
        unregister_encoder(PREFIX)
