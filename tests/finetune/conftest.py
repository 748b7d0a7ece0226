"""Fixtures for finetune/reembed tests: a tiny BEIR folder made from the samples, PAIRS.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import sample_docs


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 sample documents; each title is a query for its document: 28 train, 6 dev, 6 test."""
    d = tmp_path_factory.mktemp("tiny-beir")
    docs = sample_docs()
    with open(d / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"_id": doc["id"], "title": doc["title"], "text": doc["text"]}) + "\n")
    with open(d / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"_id": f"q{i}", "text": doc["title"].lower()}) + "\n")
    (d / "qrels").mkdir()
    splits = {"train": range(0, 28), "dev": range(28, 34), "test": range(34, 40)}
    for split, idx in splits.items():
        rows = "".join(f"q{i}\t{docs[i]['id']}\t1\n" for i in idx)
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PAIRS.jsonl: title -> text for every sample, half of them with a given negative."""
    d = tmp_path_factory.mktemp("pairs")
    docs = sample_docs()
    p = d / "pairs.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            row = {"query": doc["title"].lower(), "positive": doc["text"]}
            if i % 2:
                row["negative"] = docs[(i + 7) % len(docs)]["text"]
            f.write(json.dumps(row) + "\n")
    return p
