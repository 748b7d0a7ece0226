"""Shared fixtures: hermetic env, the real default model, real stores, the CLI as a subprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import sample_docs

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's store, database or device settings."""
    for var in ("SEMINDEX_STORE", "SEMINDEX_DB_URL", "SEMINDEX_DEVICE", "SEMINDEX_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def encoder() -> Any:
    from semindex.indexer.encoder import get_encoder

    return get_encoder()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    import semindex

    s = semindex.Store(tmp_path / "store")
    yield s
    s.close()








@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight plain BERT checkpoint (no sentence-transformers config), saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for doc in sample_docs() for w in (doc["title"] + " " + doc["text"]).lower().replace(".", " ").replace(",", " ").split()}
    )
    (d / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(d / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d
