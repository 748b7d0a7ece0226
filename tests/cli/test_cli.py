"""The CLI as a user runs it: real files, exit codes and one-line errors.

In process through click's CliRunner (``cli``); the two smoke tests marked below run
`python -m semindex` as a subprocess, as a user does.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from semindex.indexer.encoder import canonical_model_name
from tests.support import SAMPLE, SHARED_DATA, invoke_cli, run_cli, sample_docs


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("cli") / "store"
    proc = invoke_cli("index", str(SAMPLE), "--store", str(store), check=True)
    assert f"added {len(sample_docs())}, updated 0, unchanged 0, failed 0" in proc.stdout
    assert "docs/s" in proc.stdout
    return store


def assert_one_line_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1, proc.stderr
    for needle in needles:
        assert needle in err_lines[0], (needle, err_lines[0])


def test_search_table_and_json(indexed: Path) -> None:
    """Subprocess smoke test: the table as a user's terminal gets it; then JSON and filters in process."""
    proc = run_cli("search", "how do black holes form", "--store", str(indexed), "-k", "3", check=True)
    assert "astro-black-holes" in proc.stdout.splitlines()[3] or "astro-black-holes" in proc.stdout
    first_row = next(line for line in proc.stdout.splitlines() if line.strip().startswith(("│ 1", "┃ 1", "| 1")) or " 1 " in line[:6])
    assert "astro-black-holes" in first_row
    proc = invoke_cli("search", "recipe for sourdough bread", "--store", str(indexed), "-k", "2", "--json", check=True)
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(hits) == 2 and set(hits[0]) == {"id", "score", "text", "metadata", "chunks"}
    assert hits[0]["id"] == "cook-sourdough" and hits[0]["score"] > hits[1]["score"]
    proc = invoke_cli("search", "anything", "--store", str(indexed), "--json", "-k", "20",
                   "--filter", '{"topic": "medicine", "year": {"$gte": 2020}}', check=True)
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert hits and all(h["metadata"]["topic"] == "medicine" and h["metadata"]["year"] >= 2020 for h in hits)


def test_batch_search_queries_file(indexed: Path, tmp_path: Path) -> None:
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text(
        json.dumps({"_id": "q1", "text": "how do black holes form"}) + "\n"
        + json.dumps({"_id": "q2", "text": "pruning roses in winter"}) + "\n",
        encoding="utf-8",
    )
    proc = invoke_cli("search", "--queries", str(qfile), "-k", "4", "--json", "--store", str(indexed), check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["query_id"] for r in rows] == ["q1", "q2"]
    assert rows[0]["hits"][0]["id"] == "astro-black-holes" and rows[1]["hits"][0]["id"] == "garden-roses"
    assert all(len(r["hits"]) == 4 and set(r["hits"][0]) == {"id", "score", "chunks"} for r in rows)


def test_info_delete_check(indexed: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "copy"
    shutil.copytree(indexed, store)
    info = json.loads(invoke_cli("info", "--json", "--store", str(store), check=True).stdout)
    (c,) = info["collections"]
    assert c["name"] == "default" and c["count"] == 40 and c["dimension"] == 384
    assert c["model"] == canonical_model_name(None) and c["index_type"] == "flat"  # this lane's default
    assert c["bytes_on_disk"] > 40 * 384 * 4
    assert "default: 40 documents" in invoke_cli("info", "--store", str(store), check=True).stdout
    proc = invoke_cli("delete", "astro-black-holes", "nope", "--store", str(store), check=True)
    assert "deleted 1 of 2" in proc.stdout
    proc = invoke_cli("check", "--store", str(store), check=True)
    assert proc.stdout.count("\n") == 1 and "ok (39 documents, 39 vectors" in proc.stdout


def test_check_names_drift_and_repair_fixes_it(indexed: Path, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    store = tmp_path / "drift"
    shutil.copytree(indexed, store)
    # Damage behind semindex's back: a row vanishes without a change-log entry.
    with sqlite3.connect(store / "semindex.db") as db:
        db.execute("DELETE FROM documents WHERE doc_id = 'cook-curry'")
    proc = invoke_cli("check", "--store", str(store))
    assert_one_line_error(proc, "DRIFT", "vectors without a row")
    proc = invoke_cli("check", "--repair", "--store", str(store), check=True)
    assert "repaired" in proc.stdout
    assert "ok (39 documents" in invoke_cli("check", "--store", str(store), check=True).stdout
    # A corrupt checkpoint file is reported, and repaired without re-encoding.
    (idx,) = list((store / "indexes").glob("c*/index-*.faiss"))
    idx.write_bytes(b"garbage")
    assert_one_line_error(invoke_cli("check", "--store", str(store)), "checkpoint unreadable")
    invoke_cli("check", "--repair", "--store", str(store), check=True)
    invoke_cli("check", "--store", str(store), check=True)


def test_formats_folder_csv_parquet_beir(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Tea\nGreen tea is steamed, black tea is oxidised.", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Volcanoes erupt when magma rises.", encoding="utf-8")
    csv_file = tmp_path / "docs.csv"
    csv_file.write_text("doc_id,body,author\nc1,The violin has four strings.,ann\nc2,Chess openings.,bob\n",
                        encoding="utf-8")
    pq_file = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["Penguins live in Antarctica.", "Rust is a language."],
                             "lang": ["en", "en"]}), pq_file)
    store = str(tmp_path / "store")
    invoke_cli("index", str(folder), "--store", store, "-c", "notes", check=True)
    invoke_cli("index", str(csv_file), "--store", store, "-c", "notes", "--id-field", "doc_id",
            "--text-field", "body", "--metadata-field", "author", check=True)
    invoke_cli("index", str(pq_file), "--store", store, "-c", "notes", check=True)
    out = invoke_cli("search", "string instrument", "--store", store, "-c", "notes", "--json", "-k", "1", check=True)
    hit = json.loads(out.stdout)
    assert hit["id"] == "c1" and hit["metadata"] == {"author": "ann"}
    out = invoke_cli("search", "volcano magma", "--store", store, "-c", "notes", "--json", "-k", "1", check=True)
    assert json.loads(out.stdout)["id"] == "sub/b.txt"
    info = json.loads(invoke_cli("info", "--json", "--store", store, check=True).stdout)
    assert info["collections"][0]["count"] == 6


def test_beir_folder_embeds_title_and_text(tmp_path: Path) -> None:
    corpus = SHARED_DATA / "cranfield"
    if not corpus.exists():
        pytest.skip("no shared data")
    store = str(tmp_path / "store")
    # Cranfield has two records with neither title nor text (471 and 995): skipped, counted, named.
    proc = invoke_cli("index", str(corpus), "--store", store, "--json", "--on-error", "skip", check=True)
    stats = json.loads(proc.stdout)
    assert stats["added"] == 1398 and stats["failed"] == 2
    assert any("corpus.jsonl:471" in e for e in stats["errors"])
    out = invoke_cli("search", "boundary layer", "--store", store, "--json", "-k", "3", check=True)
    assert len(out.stdout.splitlines()) == 3


BAD_INPUTS = {
    "malformed.jsonl": (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": \n{"id": "c", "text": "ok"}\n', "malformed.jsonl:2"),
    "notext.jsonl": (b'{"id": "a", "text": "fine"}\n{"id": "b", "title": "no body"}\n{"id": "c", "text": "ok"}\n', "notext.jsonl:2"),
    "latin1.jsonl": (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n{"id": "c", "text": "ok"}\n', "latin1.jsonl:2"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_records_fail_or_skip(tmp_path: Path, name: str) -> None:
    data, where = BAD_INPUTS[name]
    src = tmp_path / name
    src.write_bytes(data)
    store = str(tmp_path / "store")
    proc = invoke_cli("index", str(src), "--store", store)
    assert_one_line_error(proc, where)
    assert proc.returncode != 0
    # what came before the bad line was committed and is consistent
    info = json.loads(invoke_cli("info", "--json", "--store", store, check=True).stdout)
    assert info["collections"][0]["count"] == 1
    invoke_cli("check", "--store", store, check=True)
    proc = invoke_cli("index", str(src), "--store", store, "--on-error", "skip", "--json", check=True)
    stats = json.loads(proc.stdout)
    assert (stats["added"], stats["unchanged"], stats["failed"]) == (1, 1, 1)
    assert where in stats["errors"][0]
    assert "skipped:" not in proc.stdout


def test_whole_file_errors_are_one_line(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert_one_line_error(invoke_cli("index", str(empty), "--store", store), "empty.jsonl", "empty")
    unknown = tmp_path / "data.xyz"
    unknown.write_text("hello", encoding="utf-8")
    assert_one_line_error(invoke_cli("index", str(unknown), "--store", store), "data.xyz")
    assert_one_line_error(invoke_cli("index", str(tmp_path / "missing.jsonl"), "--store", store), "missing.jsonl")
    gz = tmp_path / "trunc.jsonl.gz"
    payload = "".join(json.dumps({"text": f"document {i} {i * 7919 % 10007}"}) + "\n" for i in range(2000))
    blob = gzip.compress(payload.encode())
    gz.write_bytes(blob[: len(blob) // 2])
    assert_one_line_error(invoke_cli("index", str(gz), "--store", store), "trunc.jsonl.gz")


def test_bad_options_are_one_line(indexed: Path) -> None:
    store = str(indexed)
    assert_one_line_error(invoke_cli("search", "x", "--store", store, "--filter", "{not json"), "--filter")
    assert_one_line_error(invoke_cli("search", "x", "--store", store, "--filter", '{"a": {"$bogus": 1}}'), "--filter", "$bogus")
    assert_one_line_error(invoke_cli("search", "x", "--store", store, "-c", "missing"), "missing")
    assert_one_line_error(invoke_cli("search", "x", "--store", "/nonexistent/store"), "no store")
    assert_one_line_error(invoke_cli("index", str(SAMPLE), "--store", store, "--model", "/no/such/model"), "model")
    proc = invoke_cli("search", "x", "--store", store, "-k", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # click's own usage error


def test_progress_bar_only_on_a_tty(tmp_path: Path) -> None:
    proc = run_cli("index", str(SAMPLE), "--store", str(tmp_path / "s"), check=True)
    assert "ETA" not in proc.stderr and "\x1b[" not in proc.stderr


@pytest.mark.slow
def test_real_model_end_to_end_as_subprocesses(tmp_path: Path) -> None:
    """The user's first run with the real default model: index, info, search one and many (slow lane)."""
    store = str(tmp_path / "store")
    proc = run_cli("index", str(SAMPLE), "--store", store, check=True)
    assert f"added {len(sample_docs())}, updated 0, unchanged 0, failed 0" in proc.stdout
    (c,) = json.loads(run_cli("info", "--json", "--store", store, check=True).stdout)["collections"]
    assert c["model"] == "sentence-transformers/all-MiniLM-L6-v2" and c["dimension"] == 384
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text(
        json.dumps({"_id": "q1", "text": "how do black holes form"}) + "\n"
        + json.dumps({"_id": "q2", "text": "pruning roses in winter"}) + "\n",
        encoding="utf-8",
    )
    proc = run_cli("search", "--queries", str(qfile), "-k", "4", "--json", "--store", store, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[0]["hits"][0]["id"] == "astro-black-holes" and rows[1]["hits"][0]["id"] == "garden-roses"
    proc = run_cli("search", "recipe for sourdough bread", "--store", store, "-k", "2", "--json", check=True)
    assert json.loads(proc.stdout.splitlines()[0])["id"] == "cook-sourdough"
