"""Fixtures for the search tests: one read-only collection of the 40 sample documents per backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import sample_docs


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sample_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The samples in a store, shared by the read-only tests of a module (encoded once per backend)."""
    import semindex
    from tests.conftest import fresh_pg_database

    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(fresh_pg_database("search")) if request.param == "postgresql" else None
        s = semindex.Store(Path(tmp_path_factory.mktemp("search")) / "store", db_url=db_url)
        stack.callback(s.close)
        s.collection("samples").add(sample_docs())
        yield s


@pytest.fixture
def samples(sample_store: Any) -> Any:
    return sample_store.collection("samples")


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight BertForSequenceClassification (num_labels=1) with its tokenizer, saved locally."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-ce")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for doc in sample_docs() for w in (doc["title"] + " " + doc["text"]).lower()
         .replace(".", " ").replace(",", " ").split()}
    )
    (d / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(d / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d
