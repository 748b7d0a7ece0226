"""The LangChain adapter beyond the standard suites: filters, modes, MMR, scores, from_texts, retriever."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

import semindex
from semindex.integrations.langchain import SemindexEmbeddings, SemindexVectorStore

# Hand-made 3-d vectors, so that rankings, MMR and scores are known exactly.
VECTORS = {
    "query": [1.0, 0.0, 0.0],
    "apple pie": [0.9, 0.3, 0.0],  # cosine 0.949 with "query"
    "apple tart": [0.9, 0.32, 0.0],  # 0.942: almost a duplicate of "apple pie"
    "pear crumble": [0.8, -0.5, 0.0],  # 0.848, pointing elsewhere
    "tax law": [0.0, 0.0, 1.0],
    "opposite": [-1.0, 0.0, 0.0],
    "exact": [1.0, 0.0, 0.0],
}


class TableEmbeddings(Embeddings):
    """Vectors from VECTORS (others point at "tax law"); counts the texts it embeds (MMR must not re-embed candidates)."""

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded.extend(texts)
        return [list(VECTORS.get(t, [0.0, 0.0, 1.0])) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class ConstantEmbeddings(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[0.5, 0.5] for _ in texts]

    def embed_query(self, text: str) -> list[float]:
        return [0.5, 0.5]


DOCS = [
    Document(id="pie", page_content="apple pie", metadata={"kind": "dessert", "year": 2020}),
    Document(id="tart", page_content="apple tart", metadata={"kind": "dessert", "year": 2010}),
    Document(id="pear", page_content="pear crumble", metadata={"kind": "dessert", "year": 2022}),
    Document(id="tax", page_content="tax law", metadata={"kind": "law", "year": 2021}),
]


@pytest.fixture
def table() -> TableEmbeddings:
    return TableEmbeddings()


@pytest.fixture
def vs(tmp_path: Path, table: TableEmbeddings) -> Iterator[SemindexVectorStore]:
    with SemindexVectorStore("lc", embedding=table, path=tmp_path / "store") as store:
        store.add_documents(DOCS)
        yield store


@pytest.fixture
def own(tmp_path: Path) -> Iterator[SemindexVectorStore]:
    """embedding=None: the collection's model (the hashing encoder in the fast lane)."""
    with SemindexVectorStore("own", path=tmp_path / "own") as store:
        store.add_texts(
            ["FAISS searches dense vectors quickly", "BM25 ranks documents by term frequency",
             "SQLite is a small embedded SQL database", "Cats sleep most of the day"],
            metadatas=[{"kind": "library", "year": 2017}, {"kind": "method", "year": 1994},
                       {"kind": "library", "year": 2000}, {"kind": "pets", "year": 2024}],
            ids=["faiss", "bm25", "sqlite", "cats"],
        )
        yield store


def ids(docs: list[Document]) -> list[str | None]:
    return [d.id for d in docs]


# -- filters and modes -------------------------------------------------------------


def test_filter_is_applied_before_top_k(vs: SemindexVectorStore) -> None:
    got = vs.similarity_search("query", k=2, filter={"year": {"$gte": 2021}})
    assert ids(got) == ["pear", "tax"]  # k matches even though better vectors fail the filter
    assert vs.similarity_search("query", k=4, filter={"$or": [{"kind": "law"}, {"year": 2010}]}) == [
        Document(id="tart", page_content="apple tart", metadata={"kind": "dessert", "year": 2010}),
        Document(id="tax", page_content="tax law", metadata={"kind": "law", "year": 2021}),
    ]


def test_keyword_and_hybrid_modes_on_a_vectors_only_collection(vs: SemindexVectorStore) -> None:
    assert ids(vs.similarity_search("crumble", k=1, mode="keyword")) == ["pear"]
    assert ids(vs.similarity_search("tax", k=1, mode="hybrid")) == ["tax"]  # first in both lists
    both = vs.similarity_search_with_score("query apple", k=4, mode="hybrid")
    assert ids([d for d, _ in both])[:2] == ["pie", "tart"] and both[0][1] < 0.05  # RRF scores
    assert ids(vs.similarity_search("apple", k=3, mode="keyword", filter={"year": 2010})) == ["tart"]
    with pytest.raises(semindex.InvalidInputError, match="unknown search mode"):
        vs.similarity_search("query", mode="semantic")


def test_own_model_filters_and_modes(own: SemindexVectorStore) -> None:
    assert own.collection is not None and own.collection.model == "hash:384"
    got = own.similarity_search("embedded SQL database", k=1, filter={"kind": "library"})
    assert ids(got) == ["sqlite"]
    assert ids(own.similarity_search("term frequency", k=1, mode="keyword")) == ["bm25"]
    assert ids(own.similarity_search("dense vectors", k=1, mode="hybrid")) == ["faiss"]
    assert own.similarity_search("cats", k=2, filter={"year": {"$lt": 1990}}) == []


def test_metadata_comes_back_exactly_as_stored(tmp_path: Path, table: TableEmbeddings) -> None:
    meta: dict[str, Any] = {"author": {"name": "Ann", "tags": ["a", "b"]}, "ok": True, "none": None,
                            "n": 3, "x": 1.5, "text": "ünïcødé ✓", "id": "user-field"}
    with SemindexVectorStore("m", embedding=table, path=tmp_path / "s") as store:
        store.add_texts(["apple pie"], [meta], ids=["d"])
        assert store.similarity_search("query", k=1)[0].metadata == meta
        assert store.get_by_ids(["d"])[0].metadata == meta
        assert store.similarity_search("query", k=1, filter={"author.name": "Ann"})[0].id == "d"


# -- writes ---------------------------------------------------------------------------


def test_ids_generated_given_and_from_documents(tmp_path: Path, table: TableEmbeddings) -> None:
    with SemindexVectorStore("w", embedding=table, path=tmp_path / "s") as store:
        got = store.add_documents([Document(page_content="apple pie"), Document(id="mine", page_content="tax law")])
        assert got[1] == "mine" and len(got[0]) == 36  # a uuid4
        assert store.add_texts(["pear crumble"], ids=["p"]) == ["p"]
        assert sorted(ids(store.get_by_ids(got + ["p", "missing"]))) == sorted(got + ["p"])
        with pytest.raises(semindex.InvalidInputError):
            store.add_texts(["a", "b"], metadatas=[{}])


def test_upsert_replaces_text_even_when_the_vector_is_unchanged(tmp_path: Path) -> None:
    with SemindexVectorStore("c", embedding=ConstantEmbeddings(), path=tmp_path / "s") as store:
        store.add_texts(["old text"], [{"v": 1}], ids=["x"])
        store.add_texts(["new text"], [{"v": 2}], ids=["x"])
        assert store.get_by_ids(["x"]) == [Document(id="x", page_content="new text", metadata={"v": 2})]
        store.add_texts(["new text"], [{"v": 2}], ids=["x"])  # identical: nothing to change
        assert store.collection is not None and store.collection.count() == 1


def test_delete_by_ids_and_delete_all(vs: SemindexVectorStore) -> None:
    assert vs.delete(["pie", "nope"]) is True
    assert "pie" not in ids(vs.similarity_search("query", k=4))
    vs.delete()
    assert vs.similarity_search("query", k=4) == []


def test_lazy_vectors_only_collection(tmp_path: Path, table: TableEmbeddings) -> None:
    with SemindexVectorStore("lazy", embedding=table, path=tmp_path / "s") as store:
        assert store.collection is None
        assert store.similarity_search("query") == [] and store.get_by_ids(["a"]) == []
        assert store.max_marginal_relevance_search("query") == [] and store.delete(["a"]) is True
        store.add_texts(["tax law"])
        assert store.collection is not None and store.collection.dimension == 3
        assert store.collection.model is None


def test_wrong_collection_kind_is_a_clear_error(tmp_path: Path, table: TableEmbeddings) -> None:
    with semindex.Store(tmp_path / "s") as store:
        store.create_collection("vecs", dimension=3)
        store.collection("texts")
        with pytest.raises(semindex.ModelMismatchError, match="precomputed vectors"):
            SemindexVectorStore("vecs", store=store)
        with pytest.raises(semindex.ModelMismatchError, match="embedding=None"):
            SemindexVectorStore("texts", embedding=table, store=store)
        with pytest.raises(semindex.ConfigError):
            SemindexVectorStore("texts", store=store, path=tmp_path / "other")


def test_a_store_passed_in_stays_open(tmp_path: Path, table: TableEmbeddings) -> None:
    with semindex.Store(tmp_path / "s") as store:
        with SemindexVectorStore("lc", embedding=table, store=store) as vs:
            vs.add_texts(["tax law"], ids=["t"])
        assert store.get_collection("lc").get("t").text == "tax law"  # still usable


# -- scores ------------------------------------------------------------------------------


def test_scores_and_relevance_scores_for_cosine(vs: SemindexVectorStore) -> None:
    vs.add_texts(["opposite", "exact"], ids=["opp", "exact"])
    scored = dict((d.id, s) for d, s in vs.similarity_search_with_score("query", k=10))
    assert scored["exact"] == pytest.approx(1.0) and scored["tax"] == pytest.approx(0.0, abs=1e-6)
    assert scored["pie"] == pytest.approx(0.9 / (0.9**2 + 0.3**2) ** 0.5, rel=1e-5)
    rel = dict((d.id, s) for d, s in vs.similarity_search_with_relevance_scores("query", k=10))
    assert rel["exact"] == pytest.approx(1.0)
    assert rel["pie"] == pytest.approx((1 + scored["pie"]) / 2)
    assert rel["tax"] == pytest.approx(0.5, abs=1e-6)
    assert rel["opp"] == pytest.approx(0.0, abs=1e-6)
    above = vs.similarity_search_with_relevance_scores("query", k=10, score_threshold=0.95)
    assert sorted(ids([d for d, _ in above])) == ["exact", "pie", "tart"]


def test_relevance_scores_for_l2(tmp_path: Path, table: TableEmbeddings) -> None:
    with SemindexVectorStore("l2", embedding=table, path=tmp_path / "s", metric="l2") as store:
        store.add_texts(["exact", "tax law"], ids=["pie", "tax"])
        rel = dict((d.id, s) for d, s in store.similarity_search_with_relevance_scores("query", k=2))
    assert rel["pie"] == pytest.approx(1.0)
    assert rel["tax"] == pytest.approx(1 / (1 + 2**0.5), rel=1e-5)  # distance sqrt(2)


def test_relevance_scores_refuse_modes_without_a_fixed_range(vs: SemindexVectorStore) -> None:
    with pytest.raises(semindex.InvalidInputError, match="dense similarity only"):
        vs.similarity_search_with_relevance_scores("query", mode="hybrid")


# -- MMR ---------------------------------------------------------------------------------


def test_mmr_skips_the_near_duplicate_without_re_embedding(vs: SemindexVectorStore, table: TableEmbeddings) -> None:
    assert ids(vs.similarity_search("query", k=2)) == ["pie", "tart"]
    table.embedded.clear()
    got = vs.max_marginal_relevance_search("query", k=2, fetch_k=4, lambda_mult=0.5)
    assert ids(got) == ["pie", "pear"]
    assert table.embedded == ["query"]  # the candidates' vectors come from the store
    assert ids(vs.max_marginal_relevance_search("query", k=2, lambda_mult=1.0)) == ["pie", "tart"]
    by_vec = vs.max_marginal_relevance_search_by_vector([1.0, 0.0, 0.0], k=2, filter={"kind": "dessert"})
    assert ids(by_vec) == ["pie", "pear"]
    with pytest.raises(semindex.InvalidInputError, match="MMR"):
        vs.max_marginal_relevance_search("query", mode="keyword")


def test_mmr_reads_each_documents_current_vector_after_upserts(vs: SemindexVectorStore) -> None:
    """Re-writing a document gives its vector a new row; MMR must read that one, not a stale or missing one."""
    vs.add_documents([Document(id="pie", page_content="tax law", metadata={})])  # another vector
    vs.add_documents([DOCS[0]])  # and back
    assert ids(vs.max_marginal_relevance_search("query", k=2, fetch_k=4)) == ["pie", "pear"]


def test_mmr_with_the_collections_own_model(own: SemindexVectorStore) -> None:
    got = own.max_marginal_relevance_search("SQL database library", k=2, fetch_k=4)
    assert len(got) == 2 and got[0].id == "sqlite"


# -- from_texts and the retriever ---------------------------------------------------------


def test_from_texts_and_from_documents(tmp_path: Path, table: TableEmbeddings) -> None:
    store = SemindexVectorStore.from_texts(
        ["apple pie", "tax law"], table, [{"a": 1}, {"a": 2}], ids=["p", "t"],
        collection_name="ft", path=tmp_path / "s",
    )
    with store:
        assert store.get_by_ids(["t"]) == [Document(id="t", page_content="tax law", metadata={"a": 2})]
    own = SemindexVectorStore.from_documents(DOCS[:2], None, path=tmp_path / "s2")  # type: ignore[arg-type]
    with own:
        assert own.collection is not None and own.collection.model == "hash:384"
        assert sorted(ids(own.get_by_ids(["pie", "tart"]))) == ["pie", "tart"]


def test_retriever_search_kwargs(vs: SemindexVectorStore) -> None:
    r = vs.as_retriever(search_kwargs={"k": 2, "filter": {"kind": "dessert"}, "mode": "dense"})
    assert ids(r.invoke("query")) == ["pie", "tart"]
    kw = vs.as_retriever(search_kwargs={"k": 1, "mode": "keyword"})
    assert ids(kw.invoke("crumble")) == ["pear"]
    mmr = vs.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4})
    assert ids(mmr.invoke("query")) == ["pie", "pear"]
    thr = vs.as_retriever(search_type="similarity_score_threshold",
                          search_kwargs={"score_threshold": 0.97, "k": 4})
    assert ids(thr.invoke("query")) == ["pie", "tart"]


async def test_async_variants(vs: SemindexVectorStore) -> None:
    got = await vs.asimilarity_search("query", k=1, filter={"kind": "law"})
    assert ids(got) == ["tax"]
    assert ids(await vs.amax_marginal_relevance_search("query", k=2, fetch_k=4)) == ["pie", "pear"]
    assert ids(await vs.aget_by_ids(["tax"])) == ["tax"]
    rel = await vs.asimilarity_search_with_relevance_scores("query", k=1)
    assert ids([d for d, _ in rel]) == ["pie"] and rel[0][1] == pytest.approx((1 + 0.9 / (0.9**2 + 0.3**2) ** 0.5) / 2)
    r = vs.as_retriever(search_kwargs={"k": 1, "mode": "keyword"})
    assert ids(await r.ainvoke("crumble")) == ["pear"]
    await vs.adelete(["tax"])
    assert await vs.aget_by_ids(["tax"]) == []


def test_on_both_backends(store: semindex.Store, table: TableEmbeddings) -> None:
    with SemindexVectorStore("lc", embedding=table, store=store) as vs:
        vs.add_documents(DOCS)
        assert ids(vs.similarity_search("query", k=1, filter={"year": {"$gt": 2020}})) == ["pear"]
        assert ids(vs.similarity_search("crumble", k=1, mode="keyword")) == ["pear"]
        vs.delete(["pear"])
        assert vs.get_by_ids(["pear"]) == []


# -- embeddings, packaging ------------------------------------------------------------------


def test_embeddings_are_python_floats_from_the_shared_model() -> None:
    emb = SemindexEmbeddings("hash:32")
    vecs = emb.embed_documents(["apple pie", "apple pie", "tax law"])
    assert type(vecs[0][0]) is float and len(vecs[0]) == 32
    assert vecs[0] == vecs[1] == emb.embed_query("apple pie")
    assert emb.embed_documents([]) == []


def test_importing_semindex_does_not_import_langchain() -> None:
    code = "import sys, semindex; assert 'langchain_core' not in sys.modules and 'llama_index' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "langchain_core" or name.startswith("langchain_core."):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]  # None blocks the import
    monkeypatch.delitem(sys.modules, "semindex.integrations.langchain")
    with pytest.raises(ImportError, match=r"pip install 'semindex\[langchain\]'"):
        import semindex.integrations.langchain  # noqa: F401


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_path_with_the_real_model(tmp_path: Path) -> None:
    with SemindexVectorStore("real", path=tmp_path / "s") as vs:
        assert vs.collection is not None and "MiniLM" in (vs.collection.model or "")
        vs.add_texts(["FAISS is a library for efficient similarity search of dense vectors",
                      "Sourdough bread needs a long, slow fermentation",
                      "The French Revolution began in 1789"],
                     metadatas=[{"topic": "cs"}, {"topic": "food"}, {"topic": "history"}])
        assert vs.similarity_search("nearest neighbour search over embeddings", k=1)[0].metadata == {"topic": "cs"}
        assert vs.similarity_search("baking", k=1, mode="hybrid")[0].metadata == {"topic": "food"}
        rel = vs.similarity_search_with_relevance_scores("when did the revolution in France start", k=3)
        assert rel[0][0].metadata == {"topic": "history"} and all(0 <= s <= 1 for _, s in rel)
        emb = vs.embeddings.embed_query("FAISS is a library for efficient similarity search of dense vectors")
        assert len(emb) == 384 and vs.similarity_search_by_vector(emb, k=1)[0].metadata == {"topic": "cs"}
