"""CLI side of chunking (issue 10): index flags and summary, search chunk options, info, bad input.

Behaviour runs on the fast hashing encoder (the lane default, a 256-token window like the
default model, word-level tokens); one end-to-end run on the real model is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import invoke_cli

SENT = "The pump impeller grinds when the filter clogs and the motor overheats quickly. "
LONG = "\n\n".join([
    "Installation. Download the archive, unpack it and run the installer as root. " * 30,
    "Cleaning. Wipe the filter every week and descale the tank with vinegar monthly. " * 30,
    SENT * 30,
])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def index(tmp_path: Path, rows: list[dict[str, Any]], *flags: str, name: str = "docs.jsonl",
          check: bool = True) -> Any:
    src = write_jsonl(tmp_path / name, rows)
    return invoke_cli("index", str(src), "--store", str(tmp_path / "store"), *flags, check=check)


def docs() -> list[dict[str, Any]]:
    return [{"id": "manual", "text": LONG}, {"id": "short", "text": "A short note about sourdough bread."}]


def search_json(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    out = invoke_cli("search", *args, "--json", "--store", str(tmp_path / "store"), check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_index_summary_counts_chunks_and_json(tmp_path: Path) -> None:
    out = index(tmp_path, docs(), "--json")
    stats = json.loads(out.stdout)
    assert stats["added"] == 2 and stats["chunks"] > 3 and stats["truncated"] == 0
    text = index(tmp_path, docs(), "--collection", "t2").stdout
    assert f"{stats['chunks']} chunks" in text and "truncated" not in text


def test_no_chunking_counts_truncated(tmp_path: Path) -> None:
    out = index(tmp_path, docs(), "--no-chunking")
    assert "2 chunks, 1 truncated at the model's window" in out.stdout
    stats = json.loads(index(tmp_path, docs(), "--no-chunking", "--collection", "t2", "--json").stdout)
    assert stats["chunks"] == 2 and stats["truncated"] == 1


def test_chunk_tokens_and_overlap(tmp_path: Path) -> None:
    small = json.loads(index(tmp_path, docs(), "--chunk-tokens", "64", "--chunk-overlap", "8", "--json").stdout)
    default = json.loads(index(tmp_path, docs(), "--collection", "d", "--json").stdout)
    assert small["chunks"] > default["chunks"]
    info = json.loads(invoke_cli("info", "--json", "--store", str(tmp_path / "store"), check=True).stdout)
    by_name = {c["name"]: c for c in info["collections"]}
    assert by_name["default"]["chunking"] == {"enabled": True, "size": 64, "overlap": 8}
    assert by_name["default"]["chunks"] == small["chunks"] and by_name["default"]["count"] == 2
    text = invoke_cli("info", "--store", str(tmp_path / "store"), check=True).stdout
    assert f"2 documents, {small['chunks']} chunks (chunks of 64 tokens, overlap 8)" in text
    # the same flags again on the existing collection are fine (an upsert), unchanged docs skipped
    again = json.loads(index(tmp_path, docs(), "--chunk-tokens", "64", "--chunk-overlap", "8", "--json").stdout)
    assert again["unchanged"] == 2


@pytest.mark.parametrize("flags", [("--no-chunking",), ("--chunk-tokens", "32"), ("--chunk-overlap", "3")])
def test_existing_collection_with_other_chunking_is_one_line_error(tmp_path: Path, flags: tuple[str, ...]) -> None:
    index(tmp_path, docs())
    out = index(tmp_path, docs(), *flags, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "already exists with chunking" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (("--no-chunking", "--chunk-tokens", "64"), "cannot be combined"),
    (("--chunk-tokens", "100000"), "exceeds the model's window"),
    (("--chunk-tokens", "64", "--chunk-overlap", "60"), "overlap"),
])
def test_bad_chunk_flags(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    out = index(tmp_path, docs(), *flags, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr and message in out.stderr
    assert not (tmp_path / "store").exists() or "default" not in invoke_cli(
        "info", "--store", str(tmp_path / "store")).stdout


def test_search_json_carries_chunks_and_context(tmp_path: Path) -> None:
    index(tmp_path, docs())
    full = LONG
    hits = search_json(tmp_path, "pump impeller grinds motor overheats", "-k", "2", "--context-chunks", "1")
    assert [h["id"] for h in hits][0] == "manual" and len({h["id"] for h in hits}) == 2
    top = hits[0]
    best = top["chunks"][0]
    assert top["text"] == full[best["start"]:best["end"]] and "impeller" in top["text"]
    assert top["text"] in top["context"]
    chunks = search_json(tmp_path, "pump impeller", "-k", "5", "--level", "chunk")
    assert len(chunks) == 5 and sum(h["id"] == "manual" for h in chunks) >= 4
    for h in chunks:
        c = h["chunks"][0]
        assert h["text"] == (full if h["id"] == "manual" else docs()[1]["text"])[c["start"]:c["end"]]


def test_search_threshold_and_mmr(tmp_path: Path) -> None:
    index(tmp_path, docs())
    everything = search_json(tmp_path, "pump impeller", "-k", "2")
    cut = search_json(tmp_path, "pump impeller", "-k", "2", "--score-threshold", str(everything[0]["score"] - 1e-6))
    assert [h["id"] for h in cut] == ["manual"]
    assert search_json(tmp_path, "pump impeller", "-k", "2", "--score-threshold", "1.5") == []
    mmr = search_json(tmp_path, "pump impeller", "-k", "2", "--mmr", "--fetch-k", "5", "--lambda-mult", "0.3")
    assert {h["id"] for h in mmr} == {"manual", "short"}


@pytest.mark.parametrize("args, message", [
    (("--fetch-k", "5"), "need --mmr"),
    (("--lambda-mult", "0.4"), "need --mmr"),
    (("--lambda-mult", "2", "--mmr"), "lambda-mult"),
    (("--level", "paragraph"), "level"),
    (("--context-chunks", "99"), "context-chunks"),
    (("--score-threshold", "nan"), "finite"),
])
def test_bad_search_options(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    index(tmp_path, docs())
    out = invoke_cli("search", "pump", *args, "--store", str(tmp_path / "store"))
    assert out.returncode != 0 and "Traceback" not in out.stderr and message in out.stderr


def test_batch_lines_carry_chunks_with_document_ids(tmp_path: Path) -> None:
    index(tmp_path, docs())
    queries = write_jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "pump impeller"},
                                                 {"_id": "q2", "text": "sourdough bread"}])
    lines = search_json(tmp_path, "--queries", str(queries), "-k", "2")
    assert [line["query_id"] for line in lines] == ["q1", "q2"]
    for line in lines:
        assert sorted(h["id"] for h in line["hits"]) == ["manual", "short"]  # document ids, once each
        for h in line["hits"]:
            assert h["chunks"] and {"index", "start", "end", "score"} <= set(h["chunks"][0])
    chunk_lines = search_json(tmp_path, "--queries", str(queries), "-k", "4", "--level", "chunk")
    assert sum(h["id"] == "manual" for h in chunk_lines[0]["hits"]) >= 3


BAD = [
    {"id": "empty", "text": ""},
    {"id": "spaces", "text": " \n\t  \n "},
    {"id": "bigword", "text": "x" * 10_000},
    {"id": "cjk", "text": "长文档没有空格" * 700},
    {"id": "emoji", "text": "🚀🔥 launch " * 600 + "👍🏽" * 50},
    {"id": "nul", "text": "before\x00after " * 400},
]


def test_bad_input_never_a_traceback_and_offsets_slice_back(tmp_path: Path) -> None:
    out = index(tmp_path, BAD, "--on-error", "skip", "--json", check=False)
    assert "Traceback" not in out.stderr
    stats = json.loads(out.stdout)
    kept = {r["id"]: r["text"] for r in BAD}
    store = str(tmp_path / "store")
    for q in ("launch", "长文档", "before after", "xxxx"):
        res = invoke_cli("search", q, "-k", "10", "--level", "chunk", "--json", "--store", store)
        assert res.returncode == 0 and "Traceback" not in res.stderr
        for line in res.stdout.splitlines():
            h = json.loads(line)
            c = h["chunks"][0]
            assert h["text"] == kept[h["id"]][c["start"]:c["end"]] and h["text"].strip()
    # empty, whitespace-only and NUL are refused by name; the 10k-character word, CJK and emoji chunk
    assert stats["added"] == 3 and stats["failed"] == 3 and stats["chunks"] > 3
    assert [e.split(": ", 1)[1] for e in stats["errors"]] == [
        "empty text in field 'text'", "empty text in field 'text'", "record contains a NUL character"]
    for row in BAD[:2] + BAD[5:]:  # without --on-error skip: one line, non-zero
        strict = index(tmp_path, [row], "--collection", "strict", name="one.jsonl", check=False)
        assert strict.returncode != 0 and "Traceback" not in strict.stderr
        assert strict.stderr.strip().splitlines()[-1].startswith("error")


@pytest.mark.slow
def test_real_model_end_to_end(tmp_path: Path) -> None:
    """The default model (its own tokenizer's offsets): index, info, search with chunks and context."""
    stats = json.loads(index(tmp_path, docs(), "--json").stdout)
    assert stats["added"] == 2 and stats["chunks"] >= 4
    hits = search_json(tmp_path, "the pump is noisy, what should I check?", "-k", "1", "--context-chunks", "1")
    best = hits[0]["chunks"][0]
    assert hits[0]["id"] == "manual" and hits[0]["text"] == LONG[best["start"]:best["end"]]
    assert "impeller" in hits[0]["text"] and hits[0]["text"] in hits[0]["context"]
    info = json.loads(invoke_cli("info", "--json", "--store", str(tmp_path / "store"), check=True).stdout)
    assert info["collections"][0]["chunks"] == stats["chunks"]
