"""`semindex ARGS` with one extra model, ``gated:DIM``: the hashing encoder behind a gate the test opens.

Run as ``python tests/api/gated_serve.py serve --store ...`` with ``$SEMINDEX_GATE_DIR`` set. A call
to encode at least ``GATE_MIN`` texts (a write batch, not a query) first creates ``entered`` in that
folder, then waits until the test creates ``go`` there. So a test knows, without guessing a time,
that a write batch is in flight inside the server, and it decides when the batch may finish.
Without ``$SEMINDEX_GATE_DIR`` (the test process itself) it is the plain hashing encoder.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import semindex
from semindex.indexer.fake import HashEncoder

GATE_MIN = 100
PREFIX = "gated"


class GatedEncoder(HashEncoder):
    def __init__(self, name: str) -> None:
        super().__init__("hash:" + name.partition(":")[2])
        self.name = name

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        gate = os.environ.get("SEMINDEX_GATE_DIR")
        if gate and len(texts) >= GATE_MIN:
            (Path(gate) / "entered").touch()
            while not (Path(gate) / "go").exists():  # the test's signal; polled, nothing is timed
                time.sleep(0.01)
        return super().encode(texts, batch_size=batch_size, normalize=normalize)


def register() -> None:
    """Make ``gated:DIM`` a model name in this process (idempotent)."""
    semindex.register_encoder(PREFIX, lambda name, device: GatedEncoder(name), replace=True)


if __name__ == "__main__":
    register()
    from semindex.cli import main

    sys.argv[0] = "semindex"
    main()
