"""Long documents -> chunks that fit the model's window, as exact character spans.

Why spans and not strings: a chunk is ``document.text[start:end]``, always, so a hit can
be highlighted in the document, neighbouring chunks can be fetched, and nothing is ever
re-derived from a cleaned copy (the offset bugs of text-splitting libraries come from
``text.find(chunk)``). Tokens are counted with the collection's own tokenizer (its fast
tokenizer's offset mapping), so a chunk never exceeds the window the model truncates at,
which is the silent loss this module exists to prevent.

The rules:

* a document whose tokens (with the title prefixed, as the model sees it) fit the window
  is one chunk spanning the whole text: short documents are stored exactly as before;
* otherwise chunks of at most ``size`` tokens (title included), consecutive chunks sharing
  about ``overlap`` tokens; each end is snapped back to a paragraph break, else a sentence
  end, else a word boundary, searched in the last half of the window so chunks stay long;
  text with none (CJK, a 10k-character "word") is cut at a token boundary;
* a chunk of a split document never starts or ends with whitespace.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .encoder import Encoder

SPECIAL_TOKENS = 2  # [CLS] and [SEP]: what a BERT-family model adds around every input
DEFAULT_OVERLAP_FRACTION = 0.125  # of the chunk size: 32 tokens for a 256-token window
MIN_CHUNK_TOKENS = 16
MAX_WORD_TOKENS = 8  # a word split into more word pieces than this is not worth keeping whole

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?;:\u3002\uff01\uff1f])[\"')\]\u201d\u2019]*\s+")
_SPACE = re.compile(r"\s+")
# CJK characters are one token each (as BERT's tokenizer splits them); other words whole.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD_TOKENS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")

_COPIES: dict[int, tuple[Any, Any, threading.Lock]] = {}
_COPIES_LOCK = threading.Lock()

TokenOffsets = Callable[[str], list[tuple[int, int]]]
"""text -> the (start, end) character span of each token, no special tokens."""


@dataclass(frozen=True)
class ChunkSpec:
    """How a collection chunks. ``size``/``overlap`` in tokens; ``size=None`` means the model's window.

    ``enabled=False`` is the old behaviour: one vector per document, the model truncating
    whatever exceeds its window (the ingest summary counts those documents).
    """

    enabled: bool = True
    size: int | None = None
    overlap: int | None = None

    def resolve(self, window: int) -> tuple[int, int]:
        """(size, overlap) for a model whose window (without special tokens) is ``window``."""
        size = self.size if self.size is not None else window
        if size > window:
            raise ConfigError(f"chunk size {size} exceeds the model's window of {window} tokens")
        if size < MIN_CHUNK_TOKENS:
            raise ConfigError(f"chunk size must be at least {MIN_CHUNK_TOKENS} tokens, got {size}")
        overlap = self.overlap if self.overlap is not None else int(size * DEFAULT_OVERLAP_FRACTION)
        if not 0 <= overlap <= size // 2:
            raise ConfigError(f"chunk overlap must be from 0 to half the chunk size ({size // 2}), got {overlap}")
        return size, overlap

    def as_config(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "size": self.size, "overlap": self.overlap}

    @classmethod
    def from_config(cls, data: Any) -> ChunkSpec:
        """What a collection recorded; collections made before chunking existed record nothing: off."""
        if not isinstance(data, dict):
            return cls(enabled=False)
        return cls(enabled=bool(data.get("enabled", True)), size=data.get("size"), overlap=data.get("overlap"))


def word_offsets(text: str) -> list[tuple[int, int]]:
    """A tokenizer-free stand-in: words and punctuation marks (encoders without a tokenizer)."""
    return [(m.start(), m.end()) for m in _WORD_TOKENS.finditer(text)]


def hf_offsets(tokenizer: Any) -> TokenOffsets:
    """Offsets from a Hugging Face fast tokenizer (``return_offsets_mapping``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("chunking needs a fast (Rust) tokenizer for exact character offsets")
    # A private copy: the encoder's tokenizer keeps padding/truncation state while it runs, so
    # sharing it with another thread yields ragged batches; one copy per tokenizer, one call at a time.
    with _COPIES_LOCK:
        entry = _COPIES.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            entry = (tokenizer, copy.deepcopy(tokenizer), threading.Lock())
            _COPIES[id(tokenizer)] = entry
    _, tokenizer, lock = entry

    def offsets(text: str) -> list[tuple[int, int]]:
        with lock:
            return _offsets(text)

    def _offsets(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                        verbose=False)
        return [(int(s), int(e)) for s, e in enc["offset_mapping"] if e > s]

    return offsets


def prefix_tokens(title: str | None, offsets: TokenOffsets) -> int:
    """Tokens the title adds in front of every chunk's embedding input ("title text")."""
    return len(offsets(title)) if title and title.strip() else 0


def chunk_spans(
    text: str,
    offsets: TokenOffsets,
    *,
    size: int,
    overlap: int,
    reserved: int = 0,
) -> list[tuple[int, int]]:
    """Character spans of ``text``'s chunks: each at most ``size - reserved`` tokens.

    ``reserved``: tokens every chunk's input spends before the text (the title).
    """
    budget = size - reserved
    if budget < MIN_CHUNK_TOKENS // 2:
        # a title that eats the window: give the text a minimal budget rather than nothing
        budget = MIN_CHUNK_TOKENS // 2
    toks = offsets(text)
    if len(toks) <= budget:
        return [(0, len(text))]  # fits: one chunk, exactly the text (short documents stored as before)
    overlap = min(overlap, budget // 2)
    spans: list[tuple[int, int]] = []
    i = 0
    n = len(toks)
    while i < n:
        j = min(i + budget, n)  # tokens [i, j) fit
        start = toks[i][0]
        if j == n:
            spans.append((start, _rstrip(text, start, len(text))))
            break
        end_tok = _snap_end(text, toks, i, j)
        end = toks[end_tok - 1][1]
        spans.append((start, end))
        nxt = max(end_tok - overlap, i + 1)
        i = _sentence_start(text, toks, nxt, end_tok) or _snap_start(text, toks, nxt, i + 1, end_tok)
    return spans


def _rstrip(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _snap_end(text: str, toks: Sequence[tuple[int, int]], i: int, j: int) -> int:
    """The token index (exclusive) to end the chunk [i, j) at: the last paragraph break, else
    sentence end, else word boundary in the window's second half; else j itself."""
    lo_tok = i + max(1, (j - i) // 2)
    lo, hi = toks[lo_tok - 1][1], toks[j - 1][1]
    # the character right after the window: a boundary there counts too
    window = text[lo : min(len(text), hi + 1)] if hi < len(text) else text[lo:hi]
    for pattern in (_PARAGRAPH, _SENTENCE, _SPACE):
        cut = None
        for m in pattern.finditer(window):
            cut = lo + m.start()
        if cut is not None:
            # last token ending at or before the cut
            k = j
            while k > lo_tok and toks[k - 1][1] > cut:
                k -= 1
            if k > i:
                return k
    return j


def _sentence_start(text: str, toks: Sequence[tuple[int, int]], lo: int, hi: int) -> int | None:
    """The first token in [lo, hi) that starts a paragraph or sentence, if any: an overlap that
    begins mid-sentence gives the next chunk a fragment to start with."""
    for k in range(max(lo, 1), hi):
        gap = text[toks[k - 1][1] : toks[k][0]]
        prev = text[toks[k - 1][0] : toks[k - 1][1]]
        if "\n" in gap or (gap and prev in (".", "!", "?", "\u3002", "\uff01", "\uff1f")):
            return k
    return None


def _snap_start(text: str, toks: Sequence[tuple[int, int]], k: int, lo: int, hi: int) -> int:
    """Move a start token back to the beginning of its word (not into the middle of "playing"),
    at most a few tokens: text without spaces (CJK) has no word starts to find."""
    floor = max(lo, k - MAX_WORD_TOKENS)
    j = k
    while j > floor and toks[j][0] == toks[j - 1][1] and not text[toks[j][0] - 1].isspace():
        j -= 1
    if j > floor or (j == floor and (j == 0 or toks[j][0] != toks[j - 1][1] or text[toks[j][0] - 1].isspace())):
        return j
    return k


class Chunker:
    """A collection's chunking: its model's tokenizer and window, its ChunkSpec."""

    def __init__(self, offsets: TokenOffsets, window: int, spec: ChunkSpec) -> None:
        self.offsets = offsets
        self.window = window
        self.spec = spec
        self.size, self.overlap = spec.resolve(window) if spec.enabled else (window, 0)

    def spans(self, text: str, title: str | None) -> list[tuple[int, int]]:
        """The chunks of one document ((0, len(text)) alone when it fits the window or chunking is off)."""
        if not self.spec.enabled:
            return [(0, len(text))]
        return chunk_spans(text, self.offsets, size=self.size, overlap=self.overlap,
                           reserved=prefix_tokens(title, self.offsets))

    def truncates(self, text: str, title: str | None) -> bool:
        """Whether the model would cut this document (what the ingest summary counts when chunking is off)."""
        return prefix_tokens(title, self.offsets) + len(self.offsets(text)) > self.window


def chunker_for(encoder: Encoder, spec: ChunkSpec) -> Chunker:
    """The chunker of a collection whose model is ``encoder``: its own tokenizer when it has a fast one
    (``encoder.tokenizer``), word-level offsets otherwise (the hashing test encoder)."""
    tokenizer = getattr(encoder, "tokenizer", None) or getattr(getattr(encoder, "model", None), "tokenizer", None)
    offsets = hf_offsets(tokenizer) if tokenizer is not None and getattr(tokenizer, "is_fast", False) else word_offsets
    window = max(MIN_CHUNK_TOKENS, int(encoder.max_seq_length) - SPECIAL_TOKENS)
    return Chunker(offsets, window, spec)
