"""A deterministic, torch-free hashing encoder: model id ``hash`` or ``hash:DIM``.

Why it exists: most of semindex (storage, search plumbing, the CLI and the API)
does not care *what* the vectors mean, only that they are vectors of a fixed
dimension, the same for the same text. Loading a transformer to test those parts
costs seconds per process; this encoder costs nothing and never touches torch.

How it encodes: each distinct lower-cased word (``\\w+``, stop words left out,
crudely stemmed) seeds a Gaussian vector from a hash of the word; a text is the
sum of its words' vectors, L2-normalised. Texts
that share words therefore point in similar directions, so ranking tests still
mean something (a bag-of-words model, nothing more). A text without words gets
the vector of its whole string. Same text, same vector, on every machine and run.

It is honest about what it is: the collection records ``hash:DIM``, never the
name of a real model, so its vectors are never mixed with a real model's.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..errors import ConfigError

PREFIX = "hash"
DEFAULT_DIMENSION = 384
MAX_DIMENSION = 4096
_WORD = re.compile(r"\w+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")  # = semindex.indexer.chunking.word_offsets' tokens
WINDOW = 256
# Words that carry no topic: left out so that long texts do not win on "the" and "in".
STOPWORDS = frozenset(
    "a an and are as at be but by can do does for from has have how i in into is it its of on or "
    "that the their then there these this to was were what when where which while who why will with "
    "you your".split()
)
_SUFFIXES = ("ing", "ed", "es", "s", "e")


def _stem(word: str) -> str:
    """Strip up to two suffixes, so "strings" and "string" both become "str" (crude, cheap, stable)."""
    for _ in range(2):
        for suffix in _SUFFIXES:
            if len(word) > len(suffix) + 2 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        else:
            break
    return word


def terms(text: str) -> list[str]:
    """The distinct topic words of a text, crudely stemmed ("pruning" ~ "prune", "holes" ~ "hole")."""
    out: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS:
            continue
        out[_stem(word)] = None
    return list(out)


def canonical_hash_name(name: str) -> str:
    """``hash`` -> ``hash:384``; ``hash:DIM`` checked. The name a collection records."""
    return f"{PREFIX}:{parse_dimension(name)}"


def parse_dimension(name: str) -> int:
    head, _, dim = name.strip().partition(":")
    if head != PREFIX:
        raise ConfigError(f"not a hash model id: {name!r} (use hash or hash:DIM)")
    if not dim:
        return DEFAULT_DIMENSION
    if not dim.isdigit() or not 1 <= int(dim) <= MAX_DIMENSION:
        raise ConfigError(f"invalid hash model id {name!r}: DIM must be an integer in 1..{MAX_DIMENSION}")
    return int(dim)


@lru_cache(maxsize=65536)
def _token_vector(token: str, dimension: int) -> np.ndarray:
    """The fixed random direction of one token (blake2b seed, so stable across processes)."""
    seed = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
    vec = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    vec.setflags(write=False)
    return vec


class HashEncoder:
    """Implements :class:`semindex.indexer.encoder.Encoder` with hashed bags of words."""

    def __init__(self, model: str = PREFIX) -> None:
        self.dimension = parse_dimension(model)
        self.name = f"{PREFIX}:{self.dimension}"
        self.device = "cpu"
        self._lock = threading.Lock()  # lru_cache is thread-safe; kept for parity with the real encoder

    @property
    def max_seq_length(self) -> int:
        """A window like a real model's (256 tokens plus 2 special ones), so chunking and truncation
        behave as they do with the default model. Tokens are words and punctuation marks
        (``semindex.indexer.chunking.word_offsets``, what the chunker counts for this encoder)."""
        return WINDOW + 2

    def embed_one(self, text: str) -> np.ndarray:
        """The unnormalised sum of the text's word vectors (the whole string's when it has no words),
        over the first WINDOW tokens only: what the model does not see does not count."""
        spans = _TOKEN.finditer(text)
        for i, m in enumerate(spans):
            if i == WINDOW - 1:
                text = text[: m.end()]
                break
        tokens = terms(text) or [text]
        out = np.zeros(self.dimension, dtype=np.float32)
        for tok in tokens:
            out += _token_vector(tok, self.dimension)
        return out

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Float32 (n, dim); ``batch_size`` is accepted for interface parity and ignored."""
        vecs = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            vecs[i] = self.embed_one(text)
        if normalize and len(texts):
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            np.divide(vecs, norms, out=vecs, where=norms > 0)
        return vecs
