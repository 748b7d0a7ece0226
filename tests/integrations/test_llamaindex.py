"""The LlamaIndex adapter. LlamaIndex has no standard suite: the filter scenarios mirror
llama-index-core's tests/vector_stores/test_simple.py, then node round trips, deletes, modes,
and an end-to-end VectorStoreIndex + retriever run (no LLM, no network)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings, StorageContext, VectorStoreIndex
from llama_index.core.schema import Document, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import semindex
from semindex.integrations.llamaindex import (
    RESERVED_KEY,
    SemindexEmbedding,
    SemindexVectorStore,
    to_semindex_filter,
)

A = "AF3BE6C4-5F43-4D74-B075-6B0E07900DE8"  # weight 1, rank a
B = "7D9CD555-846C-445C-A9DD-F8924A01411D"  # weight 2, rank c
C = "452D24AB-F185-414C-A352-590B4B9EE51B"  # weight 3, rank c


def nodes() -> list[TextNode]:
    """test_simple.py's three nodes (its list-valued "quality" is left out: no semindex operator reads lists)."""
    return [
        TextNode(text="lorem ipsum", id_=A, embedding=[1.0, 0.0],
                 relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="test-0")},
                 metadata={"weight": 1.0, "rank": "a", "identifier": "6FTR78Yun"}),
        TextNode(text="dolor sit", id_=B, embedding=[0.0, 1.0],
                 relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="test-1")},
                 metadata={"weight": 2.0, "rank": "c", "identifier": "6FTR78Ygl"}),
        TextNode(text="amet consectetur", id_=C, embedding=[1.0, 1.0],
                 relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="test-2")},
                 metadata={"weight": 3.0, "rank": "c", "identifier": "6FTR78Ztl"}),
    ]


@pytest.fixture
def vs(tmp_path: Path) -> Iterator[SemindexVectorStore]:
    store = SemindexVectorStore("li", path=tmp_path / "store")
    store.add(nodes())
    yield store
    store.close()


def ids_for(vs: SemindexVectorStore, filters: MetadataFilters | None = None, k: int = 3, **kw: object) -> list[str]:
    result = vs.query(VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=k, filters=filters, **kw))  # type: ignore[arg-type]
    assert result.ids is not None
    return result.ids


def one(key: str, op: FilterOperator, value: object) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key=key, operator=op, value=value)])  # type: ignore[arg-type]


def test_is_a_llamaindex_vector_store() -> None:
    assert BasePydanticVectorStore.__name__ in [b.__name__ for b in SemindexVectorStore.__mro__]
    assert SemindexVectorStore.model_fields["stores_text"].default is True


# -- test_simple.py's scenarios ----------------------------------------------------------


def test_query_without_filters_returns_all_rows_sorted_by_similarity(vs: SemindexVectorStore) -> None:
    got = ids_for(vs)
    assert sorted(got) == sorted([A, B, C]) and got[0] == C


def test_query_with_filters_returns_multiple_matches(vs: SemindexVectorStore) -> None:
    assert ids_for(vs, MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")])) == [C, B]


def test_query_with_filter_applies_top_k(vs: SemindexVectorStore) -> None:
    assert ids_for(vs, MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")]), k=1) == [C]


def test_query_with_filter_applies_node_id_filter(vs: SemindexVectorStore) -> None:
    f = MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")])
    assert ids_for(vs, f, node_ids=[C]) == [C]
    assert ids_for(vs, None, node_ids=[A, B]) == [A, B] or ids_for(vs, None, node_ids=[A, B]) == [B, A]


def test_query_with_exact_filters_returns_single_match(vs: SemindexVectorStore) -> None:
    f = MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c"), ExactMatchFilter(key="weight", value=2.0)])
    assert ids_for(vs, f) == [B]


def test_query_with_contradictive_filter_returns_no_matches(vs: SemindexVectorStore) -> None:
    f = MetadataFilters(filters=[ExactMatchFilter(key="weight", value=2), ExactMatchFilter(key="weight", value=3)])
    assert ids_for(vs, f) == []


def test_query_with_filter_on_unknown_field_returns_no_matches(vs: SemindexVectorStore) -> None:
    assert ids_for(vs, MetadataFilters(filters=[ExactMatchFilter(key="unknown_field", value="c")])) == []


def test_delete_removes_document_from_query_results(vs: SemindexVectorStore) -> None:
    vs.delete("test-1")
    assert ids_for(vs, k=2) == [C, A]


def test_query_with_filters_with_filter_condition(vs: SemindexVectorStore) -> None:
    pair = [ExactMatchFilter(key="rank", value="c"), ExactMatchFilter(key="weight", value=1.0)]
    assert len(ids_for(vs, MetadataFilters(filters=pair, condition=FilterCondition.OR))) == 3
    assert len(ids_for(vs, MetadataFilters(filters=pair, condition=FilterCondition.AND))) == 0


def test_query_with_not_filter_returns_matches(vs: SemindexVectorStore) -> None:
    f = MetadataFilters(filters=[MetadataFilter(key="rank", operator=FilterOperator.EQ, value="a")],
                        condition=FilterCondition.NOT)
    assert sorted(ids_for(vs, f)) == sorted([B, C])


@pytest.mark.parametrize(
    ("key", "op", "value", "expected"),
    [
        ("weight", FilterOperator.EQ, 1.0, {A}),
        ("weight", FilterOperator.NE, 1.0, {B, C}),
        ("weight", FilterOperator.GT, 1.5, {B, C}),
        ("weight", FilterOperator.GTE, 1.0, {A, B, C}),
        ("weight", FilterOperator.LT, 1.1, {A}),
        ("weight", FilterOperator.LTE, 1.0, {A}),
        ("rank", FilterOperator.IN, ["a", "c"], {A, B, C}),
        ("rank", FilterOperator.NIN, ["c"], {A}),
        ("weight", FilterOperator.EQ, 2, {B}),  # 2 == 2.0, as in test_simple.py
    ],
)
def test_query_with_operator(vs: SemindexVectorStore, key: str, op: FilterOperator, value: object,
                             expected: set[str]) -> None:
    assert set(ids_for(vs, one(key, op, value))) == expected


@pytest.mark.parametrize(
    ("key", "op", "value"),
    [
        ("quality", FilterOperator.CONTAINS, "high"),
        ("identifier", FilterOperator.TEXT_MATCH, "6FTR78Y"),
        ("identifier", FilterOperator.TEXT_MATCH_INSENSITIVE, "6ftr78y"),
        ("quality", FilterOperator.ANY, ["high", "low"]),
        ("quality", FilterOperator.ALL, ["medium", "high"]),
    ],
)
def test_operators_semindex_cannot_express_are_a_clear_error(vs: SemindexVectorStore, key: str,
                                                             op: FilterOperator, value: object) -> None:
    with pytest.raises(semindex.FilterError, match=f"{op.value!r}.*not supported"):
        ids_for(vs, one(key, op, value))


def test_is_empty_and_nested_filters(tmp_path: Path) -> None:
    with SemindexVectorStore("e", path=tmp_path / "s") as store:
        store.add([TextNode(id_="x", text="x", embedding=[1.0, 0.0], metadata={"tag": "t"}),
                   TextNode(id_="y", text="y", embedding=[0.0, 1.0], metadata={"tag": None}),
                   TextNode(id_="z", text="z", embedding=[1.0, 1.0], metadata={})])
        assert set(ids_for(store, one("tag", FilterOperator.IS_EMPTY, None))) == {"y", "z"}
        nested = MetadataFilters(filters=[
            MetadataFilters(filters=[ExactMatchFilter(key="tag", value="t")]),
            MetadataFilters(filters=[MetadataFilter(key="tag", operator=FilterOperator.IS_EMPTY, value=None)],
                            condition=FilterCondition.NOT),
        ], condition=FilterCondition.AND)
        assert ids_for(store, nested) == ["x"]


def test_filter_translation() -> None:
    f = MetadataFilters(filters=[MetadataFilter(key="year", operator=FilterOperator.GTE, value=2020),
                                 MetadataFilter(key="lang", operator=FilterOperator.IN, value=["en", "de"])],
                        condition=FilterCondition.OR)
    assert to_semindex_filter(f) == {"$or": [{"year": {"$gte": 2020}}, {"lang": {"$in": ["en", "de"]}}]}
    assert to_semindex_filter(None) is None and to_semindex_filter(MetadataFilters(filters=[])) is None
    with pytest.raises(semindex.FilterError, match="reserved"):
        to_semindex_filter(MetadataFilters(filters=[ExactMatchFilter(key=f"{RESERVED_KEY}.node_id", value="a")]))


# -- nodes, deletes, modes ------------------------------------------------------------------


def test_nodes_round_trip_with_offsets_relationships_and_exact_metadata(tmp_path: Path) -> None:
    meta = {"title": "Über", "tags": ["a", "b"], "n": 3, "nested": {"k": True}}
    node = TextNode(id_="n1", text="hello world", embedding=[0.3, 0.4], metadata=meta,
                    start_char_idx=10, end_char_idx=21, excluded_llm_metadata_keys=["n"],
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-1"),
                                   NodeRelationship.NEXT: RelatedNodeInfo(node_id="n2")})
    with SemindexVectorStore("rt", path=tmp_path / "s") as store:
        assert store.add([node]) == ["n1"]
        for got in (store.get_nodes(node_ids=["n1"])[0],
                    store.query(VectorStoreQuery(query_embedding=[0.3, 0.4], similarity_top_k=1)).nodes[0]):  # type: ignore[index]
            assert isinstance(got, TextNode)
            assert got.node_id == "n1" and got.text == "hello world" and got.metadata == meta
            assert got.ref_doc_id == "doc-1" and (got.start_char_idx, got.end_char_idx) == (10, 21)
            assert got.next_node is not None and got.next_node.node_id == "n2"
            assert got.excluded_llm_metadata_keys == ["n"]
        assert store.collection is not None
        stored = store.collection.get("n1").metadata
        assert stored[RESERVED_KEY]["ref_doc_id"] == "doc-1" and stored[RESERVED_KEY]["start_char_idx"] == 10


def test_delete_by_ref_doc_removes_every_node_of_the_document(tmp_path: Path) -> None:
    with SemindexVectorStore("d", path=tmp_path / "s") as store:
        src = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc")}
        store.add([TextNode(id_=f"c{i}", text=f"chunk {i}", embedding=[1.0, float(i)], relationships=src)
                   for i in range(5)] + [TextNode(id_="other", text="x", embedding=[0.0, 1.0])])
        store.delete("doc")
        assert [n.node_id for n in store.get_nodes()] == ["other"]


def test_get_nodes_delete_nodes_clear_and_client(vs: SemindexVectorStore) -> None:
    assert isinstance(vs.client, semindex.Store)
    rank_c = MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")])
    assert sorted(n.node_id for n in vs.get_nodes(filters=rank_c)) == sorted([B, C])
    assert [n.node_id for n in vs.get_nodes(node_ids=[A, C], filters=rank_c)] == [C]
    vs.delete_nodes(node_ids=[A, B], filters=rank_c)  # only B matches both
    assert sorted(n.node_id for n in vs.get_nodes()) == sorted([A, C])
    vs.delete_nodes(filters=rank_c)
    assert [n.node_id for n in vs.get_nodes()] == [A]
    vs.clear()
    assert vs.get_nodes() == [] and ids_for(vs) == []
    vs.add([TextNode(id_="new", text="t", embedding=[1.0, 0.0, 0.0])])  # a new dimension after clear
    assert ids_for_vec(vs, [1.0, 0.0, 0.0]) == ["new"]


def ids_for_vec(vs: SemindexVectorStore, vec: list[float]) -> list[str]:
    res = vs.query(VectorStoreQuery(query_embedding=vec, similarity_top_k=5))
    return list(res.ids or [])


def test_doc_ids_restriction(vs: SemindexVectorStore) -> None:
    assert sorted(ids_for(vs, doc_ids=["test-0", "test-2"])) == sorted([A, C])


def test_text_search_hybrid_and_mmr_modes(vs: SemindexVectorStore) -> None:
    text = vs.query(VectorStoreQuery(query_str="dolor", mode=VectorStoreQueryMode.TEXT_SEARCH, similarity_top_k=2))
    assert text.ids == [B]
    hybrid = vs.query(VectorStoreQuery(query_str="lorem", query_embedding=[1.0, 0.0],
                                       mode=VectorStoreQueryMode.HYBRID, similarity_top_k=2))
    assert hybrid.ids is not None and hybrid.ids[0] == A  # first in both lists
    convex = vs.query(VectorStoreQuery(query_str="dolor", query_embedding=[1.0, 0.0], alpha=0.0,
                                       mode=VectorStoreQueryMode.HYBRID, similarity_top_k=1))
    assert convex.ids == [B]  # alpha 0: keyword only
    mmr = vs.query(VectorStoreQuery(query_embedding=[1.0, 0.9], mode=VectorStoreQueryMode.MMR,
                                    similarity_top_k=2, mmr_threshold=0.5))
    assert mmr.ids is not None and mmr.ids[0] == C and len(mmr.ids) == 2
    with pytest.raises(semindex.InvalidInputError, match="not supported"):
        vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0], mode=VectorStoreQueryMode.SVM))
    with pytest.raises(semindex.InvalidInputError, match="query_str"):
        vs.query(VectorStoreQuery(query_embedding=[1.0, 0.0], mode=VectorStoreQueryMode.TEXT_SEARCH))


def test_upsert_replaces_text_and_metadata(vs: SemindexVectorStore) -> None:
    vs.add([TextNode(id_=A, text="changed", embedding=[1.0, 0.0], metadata={"rank": "z"})])  # same vector
    got = vs.get_nodes(node_ids=[A])[0]
    assert got.get_content() == "changed" and got.metadata == {"rank": "z"}
    assert len(vs.get_nodes()) == 3


def test_empty_store_and_bad_input(tmp_path: Path) -> None:
    with SemindexVectorStore("empty", path=tmp_path / "s") as store:
        assert ids_for(store) == [] and store.get_nodes() == []
        store.delete("nothing")
        store.delete_nodes(node_ids=["x"])
        with pytest.raises(semindex.InvalidInputError, match="no embedding"):
            store.add([TextNode(id_="x", text="x")])


def test_collection_with_a_model_is_refused(tmp_path: Path) -> None:
    with semindex.Store(tmp_path / "s") as store:
        store.collection("texts")
        with pytest.raises(semindex.ModelMismatchError, match="vectors-only"):
            SemindexVectorStore("texts", store=store)


async def test_async_defaults(vs: SemindexVectorStore) -> None:
    res = await vs.aquery(VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=1))
    assert res.ids == [C]
    await vs.adelete("test-2")
    assert sorted(n.node_id for n in await vs.aget_nodes()) == sorted([A, B])


# -- embedding and end to end -----------------------------------------------------------------


def test_embedding_is_semindex_embed() -> None:
    emb = SemindexEmbedding(model_name="hash:32")
    q = emb.get_query_embedding("apple pie")
    assert len(q) == 32 and type(q[0]) is float
    assert emb.get_text_embedding_batch(["apple pie", "tax law"])[0] == q


CORPUS = [
    Document(id_="bread", text="Sourdough bread rises slowly. The starter ferments flour and water.",
             metadata={"topic": "food"}),
    Document(id_="faiss", text="FAISS searches dense vectors. Inverted lists make vector search fast.",
             metadata={"topic": "cs"}),
    Document(id_="rome", text="Rome was founded on seven hills. The empire grew around the Mediterranean.",
             metadata={"topic": "history"}),
]


def run_index(tmp_path: Path, embed_model: SemindexEmbedding) -> None:
    Settings.llm = None  # retrieval only: no LLM anywhere
    vector_store = SemindexVectorStore("e2e", path=tmp_path / "store")
    ctx = StorageContext.from_defaults(vector_store=vector_store)
    index = VectorStoreIndex.from_documents(CORPUS, storage_context=ctx, embed_model=embed_model)
    retriever = index.as_retriever(similarity_top_k=1)
    got = retriever.retrieve("vector search with inverted lists")
    assert got[0].node.ref_doc_id == "faiss" and got[0].node.metadata == {"topic": "cs"}
    node = got[0].node
    assert isinstance(node, TextNode) and node.start_char_idx is not None and node.end_char_idx is not None
    assert CORPUS[1].text[node.start_char_idx:node.end_char_idx] == node.text
    filtered = index.as_retriever(similarity_top_k=3, filters=MetadataFilters(
        filters=[ExactMatchFilter(key="topic", value="food")])).retrieve("vector search")
    assert [n.node.ref_doc_id for n in filtered] == ["bread"]
    index.delete_ref_doc("faiss")
    assert all(n.node.ref_doc_id != "faiss" for n in retriever.retrieve("vector search with inverted lists"))
    vector_store.close()
    with SemindexVectorStore("e2e", path=tmp_path / "store") as reopened:  # persisted: a new process sees it
        again = VectorStoreIndex.from_vector_store(reopened, embed_model=embed_model)
        assert again.as_retriever(similarity_top_k=1).retrieve("seven hills empire")[0].node.ref_doc_id == "rome"


def test_vector_store_index_end_to_end(tmp_path: Path) -> None:
    run_index(tmp_path, SemindexEmbedding(model_name="hash:128"))  # the fast bag-of-words encoder


@pytest.mark.slow
def test_vector_store_index_with_the_real_model(tmp_path: Path) -> None:
    emb = SemindexEmbedding()
    assert len(emb.get_query_embedding("x")) == 384
    run_index(tmp_path, emb)


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "llama_index" or name.startswith("llama_index."):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]  # None blocks the import
    monkeypatch.delitem(sys.modules, "semindex.integrations.llamaindex")
    with pytest.raises(ImportError, match=r"pip install 'semindex\[llamaindex\]'"):
        import semindex.integrations.llamaindex  # noqa: F401


def test_on_both_backends(store: semindex.Store) -> None:
    vs = SemindexVectorStore("li", store=store)
    vs.add(nodes())
    assert ids_for(vs, MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")])) == [C, B]
    assert ids_for(vs, doc_ids=["test-0"]) == [A]
    text = vs.query(VectorStoreQuery(query_str="dolor", mode=VectorStoreQueryMode.TEXT_SEARCH, similarity_top_k=1))
    assert text.ids == [B]
    vs.delete("test-1")
    assert sorted(n.node_id for n in vs.get_nodes()) == sorted([A, C])
    vs.close()  # leaves the store (passed in) open
    assert store.get_collection("li").count() == 2
