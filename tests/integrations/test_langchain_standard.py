"""LangChain's own standard suites, unmodified, against the adapter (langchain-tests 1.1.x).

The vector store runs on a vectors-only collection fed by the suite's 6-d fake embedding; the
embeddings suite runs semindex's hashing encoder (fast lane) — the real model is covered in
test_langchain.py's slow tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    VectorStoreIntegrationTests,
)

from semindex.integrations.langchain import SemindexEmbeddings, SemindexVectorStore


class TestSemindexVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:
        store = SemindexVectorStore("lc", embedding=self.get_embeddings(), path=tmp_path / "store")
        try:
            yield store
        finally:
            store.close()


class TestSemindexVectorStoreOwnModel(VectorStoreIntegrationTests):
    """The same suite with embedding=None: the collection encodes texts with its own model."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:
        store = SemindexVectorStore("lc", path=tmp_path / "store")
        try:
            yield store
        finally:
            store.close()


class TestSemindexEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[SemindexEmbeddings]:
        return SemindexEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, str]:
        return {"model": "hash:64"}


@pytest.mark.slow
class TestSemindexEmbeddingsRealModel(EmbeddingsIntegrationTests):
    """The embeddings suite on the real default model (all-MiniLM-L6-v2)."""

    @property
    def embeddings_class(self) -> type[SemindexEmbeddings]:
        return SemindexEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, str]:
        return {}
