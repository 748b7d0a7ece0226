"""Readers: every format, every per-record and file-level error, and garbage input."""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semindex.errors import ReadError
from semindex.indexer import readers
from semindex.indexer.readers import (
    Record,
    detect_format,
    estimate_total,
    iter_records,
    read_qrels,
    read_queries,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def write_jsonl(path: Path, rows: list, *, gz: bool = False) -> Path:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read_all(*sources, **kw) -> list[Record | ReadError]:
    return list(iter_records([str(s) for s in sources], **kw))


def records(items) -> list[Record]:
    return [r for r in items if isinstance(r, Record)]


def errors(items) -> list[ReadError]:
    return [r for r in items if isinstance(r, ReadError)]


# --------------------------------------------------------------------------- detect_format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.jsonl.gz", "jsonl"),
        ("a.NDJSON.GZ", "jsonl"),
        ("a.csv", "csv"),
        ("a.tsv", "csv"),
        ("a.parquet", "parquet"),
    ],
)
def test_detect_format_by_extension(tmp_path, name, fmt):
    (tmp_path / name).write_bytes(b"")
    assert detect_format(tmp_path / name) == fmt


def test_detect_format_folders(tmp_path):
    assert detect_format(tmp_path) == "folder"
    (tmp_path / "corpus.jsonl.gz").write_bytes(b"")
    assert detect_format(tmp_path) == "beir"


@pytest.mark.parametrize("name", ["a.json", "a.txt", "a.csv.gz", "noext"])
def test_unknown_extension_raises(tmp_path, name):
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(ReadError, match="unknown file format") as info:
        detect_format(path)
    assert info.value.source == str(path)
    with pytest.raises(ReadError, match="unknown file format"):
        read_all(path)


def test_missing_path_raises(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ReadError, match="no such file") as info:
        read_all(missing)
    assert str(info.value).startswith(f"{missing}: ")


def test_all_sources_checked_before_first_record(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "hello"}])
    it = iter_records([good, tmp_path / "missing.csv"])
    with pytest.raises(ReadError, match="no such file"):
        next(it)


# --------------------------------------------------------------------------- jsonl


def test_jsonl_field_mapping_defaults(tmp_path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": 7, "title": "Seven", "text": "  body seven  ", "lang": "en", "metadata": {"topic": "x"}},
            {"_id": "a", "id": "ignored-as-id", "text": "body a", "title": ""},
            {"text": "no id", "title": 3},
        ],
    )
    a, b, c = read_all(path)
    assert a == Record(
        id="7",
        text="body seven",
        title="Seven",
        metadata={"lang": "en", "topic": "x"},
        source=str(path),
        line=1,
    )
    assert (b.id, b.title, b.metadata, b.line) == ("a", None, {"id": "ignored-as-id"}, 2)
    assert (c.id, c.title, c.metadata) == (None, None, {"title": 3})


def test_jsonl_explicit_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"doc": "d1", "head": "H", "abstract": "A", "body": "B", "year": 2020, "metadata": {"k": 1}},
            {"doc": "d2", "head": None, "abstract": "A2", "body": None, "year": 2021},
        ],
    )
    kw = {"id_field": "doc", "text_fields": ["abstract", "body"], "title_field": "head"}
    first, second = read_all(path, **kw)
    assert (first.id, first.text, first.title) == ("d1", "A\nB", "H")
    assert first.metadata == {"year": 2020, "k": 1}
    assert (second.id, second.text, second.title) == ("d2", "A2", None)
    only = read_all(path, **kw, metadata_fields=["k", "absent"])
    assert only[0].metadata == {"k": 1} and only[1].metadata == {}


def test_jsonl_per_record_errors_are_yielded(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "ok 1"}\n'
        b"{not json\n"
        b"\n"
        b"[1, 2]\n"
        b'{"title": "no text"}\n'
        b'{"text": ""}\n'
        b'{"text": 5}\n'
        b'{"text": "caf\xe9"}\n'
        b'{"id": [1], "text": "list id"}\n'
        b'{"id": true, "text": "bool id"}\n'
        b'{"text": "ok 11"}'
    )
    out = read_all(path)
    assert [r.text for r in records(out)] == ["ok 1", "ok 11"]
    assert records(out)[1].line == 11
    got = {e.line: str(e) for e in errors(out)}
    assert got[2].startswith(f"{path}:2: invalid JSON: ")
    assert got[4] == f"{path}:4: expected a JSON object, got array"
    assert got[5] == f"{path}:5: missing text field 'text'"
    assert "empty text" in got[6]
    assert "must be a string, got int" in got[7]
    assert got[8].startswith(f"{path}:8: invalid UTF-8")
    assert "must be a string or an integer, got list" in got[9]
    assert "got bool" in got[10]
    assert all(e.source == str(path) for e in errors(out))


def test_missing_explicit_id_field(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "t"}, {"key": None, "text": "t"}, {"key": 1, "text": "t"}]
    )
    out = read_all(path, id_field="key")
    assert [str(e) for e in errors(out)] == [
        f"{path}:1: missing id field 'key'",
        f"{path}:2: id field 'key' is null",
    ]
    assert records(out)[0].id == "1"


def test_jsonl_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "1", "text": "one"}\r\n{"id": "2", "text": "two"}\r\n')
    assert [(r.id, r.text) for r in read_all(path)] == [("1", "one"), ("2", "two")]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_raises(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(ReadError, match="file is empty") as info:
        read_all(path)
    assert info.value.source == str(path)


def test_file_of_only_bad_lines_yields_errors_not_empty(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"nope\n")
    out = read_all(path)
    assert len(out) == 1 and isinstance(out[0], ReadError)


@pytest.mark.parametrize("name", ["docs.jsonl.gz", "docs.ndjson.gz", "docs.ndjson"])
def test_jsonl_variants(tmp_path, name):
    path = write_jsonl(tmp_path / name, [{"text": f"doc {i}"} for i in range(3)], gz=name.endswith(".gz"))
    assert [r.text for r in read_all(path)] == ["doc 0", "doc 1", "doc 2"]


def test_truncated_gzip_raises_after_earlier_records(tmp_path):
    rows = [{"id": i, "text": f"document number {i} " + "x" * 200} for i in range(2000)]
    full = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    seen: list[Record] = []
    with pytest.raises(ReadError, match="corrupt or truncated gzip") as info:
        for item in iter_records([path]):
            assert isinstance(item, Record)
            seen.append(item)
    assert 0 < len(seen) < 2000
    assert info.value.line is not None and info.value.line > len(seen)


def test_garbage_gzip_raises(tmp_path):
    path = tmp_path / "junk.jsonl.gz"
    path.write_bytes(b"this is not gzip at all\n" * 10)
    with pytest.raises(ReadError, match="gzip"):
        read_all(path)


def test_multiple_sources_in_order(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "a1"}, {"text": "a2"}])
    b = tmp_path / "b.csv"
    b.write_text("text\nb1\n")
    assert [(r.text, r.source) for r in read_all(a, b)] == [("a1", str(a)), ("a2", str(a)), ("b1", str(b))]


# --------------------------------------------------------------------------- csv / tsv


def test_csv_rows_and_line_numbers(tmp_path):
    path = tmp_path / "docs.csv"
    lines = [b"id,title,text,year", b'1,First,"multi\r\nline text",2020', b"", b"2,,second,2021", b""]
    path.write_bytes(b"\r\n".join(lines))
    first, second = read_all(path)
    assert (first.id, first.title, first.text, first.line) == ("1", "First", "multi\r\nline text", 2)
    assert first.metadata == {"year": "2020"}
    assert (second.id, second.title, second.line) == ("2", None, 5)


def test_csv_bad_rows_are_yielded(tmp_path):
    path = tmp_path / "docs.csv"
    lines = [
        b"id,text",
        b"1,good",
        b"2,too,many",
        b"3",
        b"4,bad \xff byte",
        b"5,",
        b",empty id",
        b"8,good again",
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = read_all(path)
    assert [r.id for r in records(out)] == ["1", "8"]
    assert records(out)[1].line == 8
    got = {e.line: str(e) for e in errors(out)}
    assert got[3] == f"{path}:3: row has 3 fields, header has 2"
    assert got[4] == f"{path}:4: row has 1 fields, header has 2"
    assert got[5] == f"{path}:5: invalid UTF-8 in row"
    assert "empty text" in got[6]
    assert "empty id" in got[7]


def test_csv_missing_text_column_raises(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,body\n1,hello\n")
    with pytest.raises(ReadError, match="column 'text' not in header"):
        read_all(path)
    assert [r.text for r in read_all(path, text_fields=["body"])] == ["hello"]


@pytest.mark.parametrize("content", [b"", b"id,text\n", b"\n\n"])
def test_csv_empty_raises(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(ReadError, match="file is empty"):
        read_all(path)


def test_tsv_uses_tab_delimiter(tmp_path):
    path = tmp_path / "docs.tsv"
    path.write_text("id\ttext\tnote\n1\thello, world\tn\n", encoding="utf-8")
    (rec,) = read_all(path)
    assert (rec.id, rec.text, rec.metadata) == ("1", "hello, world", {"note": "n"})


def test_csv_field_over_limit_raises_with_line(tmp_path, monkeypatch):
    old = csv.field_size_limit()
    monkeypatch.setattr(readers, "_CSV_FIELD_LIMIT", 100)
    try:
        csv.field_size_limit(100)
        path = tmp_path / "big.csv"
        path.write_text("text\nshort\n" + "y" * 500 + "\n")
        seen = []
        with pytest.raises(ReadError, match="invalid csv") as info:
            seen.extend(iter_records([path]))
        assert [r.text for r in seen] == ["short"]
        assert info.value.line == 3
    finally:
        csv.field_size_limit(old)


def test_csv_long_field_is_fine(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text\n" + "word " * 100_000 + "\n")
    (rec,) = read_all(path)
    assert len(rec.text) > 400_000


# --------------------------------------------------------------------------- parquet


def write_parquet(path: Path, table: dict, **kw) -> Path:
    pq.write_table(pa.table(table), path, **kw)
    return path


def test_parquet_streams_rows_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_PARQUET_BATCH", 2)
    path = write_parquet(
        tmp_path / "d.parquet",
        {
            "id": [10, 11, 12, 13, 14],
            "text": ["a", "b", None, "d", "e"],
            "title": ["T", None, None, "", "E"],
            "year": [1, 2, 3, 4, 5],
        },
        row_group_size=3,
    )
    out = read_all(path)
    assert [(r.id, r.line, r.title) for r in records(out)] == [
        ("10", 1, "T"),
        ("11", 2, None),
        ("13", 4, None),
        ("14", 5, "E"),
    ]
    assert records(out)[0].metadata == {"year": 1}
    assert [(e.line, e.reason) for e in errors(out)] == [(3, "empty text in field 'text'")]


def test_parquet_metadata_fields_and_missing_column(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"body": ["x"], "a": [1], "b": [2], "c": [3]})
    (rec,) = read_all(path, text_fields=["body"], metadata_fields=["b"])
    assert (rec.id, rec.text, rec.metadata) == (None, "x", {"b": 2})
    with pytest.raises(ReadError, match="column 'text' not in parquet schema"):
        read_all(path)


def test_parquet_empty_raises(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": pa.array([], type=pa.string())})
    with pytest.raises(ReadError, match="file is empty"):
        read_all(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage" * 100,
        b"PAR1" + b"\x00\xff" * 50 + b"PAR1",
        b"PAR1" + b"junk" * 20 + b"\x10\x00\x00\x00PAR1",
    ],
)
def test_garbage_parquet_raises(tmp_path, content):
    path = tmp_path / "junk.parquet"
    path.write_bytes(content)
    with pytest.raises(ReadError, match="parquet") as info:
        read_all(path)
    assert info.value.source == str(path)


def test_truncated_parquet_raises(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": [f"t{i}" for i in range(1000)]})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match="parquet"):
        read_all(path)


def test_parquet_corrupt_page_raises(tmp_path):
    path = write_parquet(
        tmp_path / "d.parquet", {"text": [f"text {i}" for i in range(5000)]}, compression="snappy"
    )
    data = bytearray(path.read_bytes())
    for i in range(200, 2000):  # scribble over column data, keep the footer intact
        data[i] = 0xAB
    path.write_bytes(bytes(data))
    with pytest.raises(ReadError):
        for item in iter_records([path]):
            assert isinstance(item, (Record, ReadError))


# --------------------------------------------------------------------------- folders


def test_folder_of_text_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "two.md").write_text("# Two\n\nmarkdown body\n")
    (tmp_path / "a.txt").write_text("  first file  \n")
    (tmp_path / "b" / "c.TXT").write_text("upper")
    (tmp_path / ".secret.txt").write_text("hidden")
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "ignored.pdf").write_bytes(b"%PDF")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "latin1.txt").write_bytes(b"line one\ncaf\xe9\n")
    out = read_all(tmp_path)
    assert [(r.id, r.text) for r in records(out)] == [
        ("a.txt", "first file"),
        ("b/c.TXT", "upper"),
        ("b/two.md", "# Two\n\nmarkdown body"),
    ]
    rec = records(out)[2]
    assert (rec.title, rec.metadata, rec.line) == (None, {"path": "b/two.md"}, 1)
    assert Path(rec.source) == tmp_path / "b" / "two.md"
    assert [(Path(e.source).name, e.line) for e in errors(out)] == [("empty.txt", 1), ("latin1.txt", 2)]


def test_folder_without_text_files_raises(tmp_path):
    (tmp_path / "notes.pdf").write_bytes(b"x")
    with pytest.raises(ReadError, match="no .txt or .md files"):
        read_all(tmp_path)


# --------------------------------------------------------------------------- BEIR


def test_beir_folder_rules(tmp_path):
    write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": 1, "title": "T1", "text": "body", "metadata": {"url": "u"}, "extra": 5},
            {"_id": "2", "title": "only title", "text": ""},
            {"_id": "3", "title": "", "text": ""},
            {"title": "x", "text": "no id"},
        ],
    )
    out = read_all(tmp_path, id_field="ignored", text_fields=["ignored"])
    assert [(r.id, r.text, r.title, r.metadata) for r in records(out)] == [
        ("1", "body", "T1", {"url": "u", "extra": 5}),
        ("2", "only title", None, {}),
    ]
    assert [(e.line, e.reason) for e in errors(out)] == [
        (3, "empty text and title"),
        (4, "missing id field '_id'"),
    ]
    assert records(out)[0].source == str(tmp_path / "corpus.jsonl")


def test_beir_empty_corpus_raises(tmp_path):
    (tmp_path / "corpus.jsonl").write_bytes(b"")
    with pytest.raises(ReadError, match="file is empty"):
        read_all(tmp_path)


needs_scifact = pytest.mark.skipif(not (SHARED / "scifact").is_dir(), reason="shared scifact data missing")
needs_cranfield = pytest.mark.skipif(
    not (SHARED / "cranfield").is_dir(), reason="shared cranfield data missing"
)


@needs_scifact
def test_scifact_corpus():
    out = read_all(SHARED / "scifact")
    assert len(out) == 5183 and not errors(out)
    first = out[0]
    assert first.id == "4983"
    assert first.title.startswith("Microstructural development of human newborn cerebral white matter")
    assert first.text.startswith("Alterations of the architecture of cerebral white matter")
    assert estimate_total([SHARED / "scifact"]) == 5183


@needs_cranfield
def test_cranfield_corpus_reports_empty_docs():
    out = read_all(SHARED / "cranfield")
    assert len(out) == 1400
    assert len(records(out)) == 1398
    assert [(e.line, e.reason) for e in errors(out)] == [
        (471, "empty text and title"),
        (995, "empty text and title"),
    ]
    assert {r.id for r in records(out)} >= {"1", "1400"}


@needs_scifact
def test_scifact_queries_and_qrels():
    queries = read_queries(SHARED / "scifact" / "queries.jsonl")
    assert queries[0] == ("0", "0-dimensional biomaterials lack inductive properties.")
    assert len(queries) == len({q for q, _ in queries})
    qrels = read_qrels(SHARED / "scifact" / "qrels" / "test.tsv")
    assert len(qrels) == 300
    assert sum(len(d) for d in qrels.values()) == 339
    assert qrels["1"] == {"31715818": 1}  # CRLF file: no "\r" left in ids or scores
    assert set(qrels) <= {q for q, _ in queries}
    assert read_qrels(SHARED / "scifact") == qrels


# --------------------------------------------------------------------------- queries / qrels


def test_read_queries_errors(tmp_path):
    good = write_jsonl(
        tmp_path / "q.jsonl", [{"_id": 1, "text": "first"}, "", {"_id": "b", "text": " second "}]
    )
    assert read_queries(good) == [("1", "first"), ("b", "second")]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": "q", "text": "plain id"}])
    assert read_queries(plain) == [("q", "plain id")]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"_id": "1", "text": "ok"}, "{broken"])
    with pytest.raises(ReadError, match="invalid JSON") as info:
        read_queries(bad)
    assert str(info.value).startswith(f"{bad}:2: ")
    no_text = write_jsonl(tmp_path / "nt.jsonl", [{"_id": "1"}])
    with pytest.raises(ReadError, match="no text"):
        read_queries(no_text)
    with pytest.raises(ReadError, match="no such file"):
        read_queries(tmp_path / "missing.jsonl")


def test_read_qrels_formats_and_errors(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t2\r\n\r\nq2\td1\t0\r\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}
    trec = tmp_path / "trec.txt"
    trec.write_text("1 0 184 2\n1 0 29 -1\n")
    assert read_qrels(trec) == {"1": {"184": 2, "29": -1}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(ReadError, match="not an integer") as info:
        read_qrels(bad)
    assert info.value.line == 2
    short = tmp_path / "short.tsv"
    short.write_text("q1\td1\n")
    with pytest.raises(ReadError, match="expected 3 columns"):
        read_qrels(short)
    empty = tmp_path / "empty.tsv"
    empty.write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(ReadError, match="file is empty"):
        read_qrels(empty)
    with pytest.raises(ReadError, match="no such file"):
        read_qrels(tmp_path / "missing.tsv")


# --------------------------------------------------------------------------- estimate_total


def test_estimate_total(tmp_path):
    jl = write_jsonl(tmp_path / "a.jsonl", [{"text": "1"}, {"text": "2"}, {"text": "3"}])
    gz = write_jsonl(tmp_path / "b.jsonl.gz", [{"text": "1"}, {"text": "2"}], gz=True)
    unterminated = tmp_path / "c.jsonl"
    unterminated.write_text('{"text": "1"}\n{"text": "2"}')
    c = tmp_path / "d.csv"
    c.write_text('text\n"multi\nline"\nsecond\n')
    p = write_parquet(tmp_path / "e.parquet", {"text": ["a"] * 7})
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.txt").write_text("x")
    (folder / "sub" / "y.md").write_text("y")
    assert estimate_total([jl]) == 3
    assert estimate_total([gz]) == 2
    assert estimate_total([unterminated]) == 2
    assert estimate_total([c]) == 2
    assert estimate_total([p]) == 7
    assert estimate_total([folder]) == 2
    assert estimate_total([jl, gz, c, p, folder]) == 16
    assert estimate_total([jl, tmp_path / "missing.jsonl"]) is None
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"junk")
    assert estimate_total([junk]) is None


@pytest.mark.skipif(not SAMPLES.joinpath("sample.jsonl").is_file(), reason="samples/ missing")
def test_sample_corpus_reads_cleanly():
    out = read_all(SAMPLES / "sample.jsonl")
    assert len(out) >= 30 and not errors(out)
    assert len({r.id for r in out}) == len(out)
    assert len({r.metadata["topic"] for r in out}) >= 8
    assert all(r.title and set(r.metadata) == {"topic", "year", "lang"} for r in out)


# --------------------------------------------------------------------------- garbage in


GARBAGE_NAMES = ["g.jsonl", "g.ndjson", "g.jsonl.gz", "g.csv", "g.tsv", "g.parquet", "folder", "beir"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.lists(
            st.sampled_from(
                [b"{", b"}", b'"text"', b":", b",", b"\n", b"\r", b"\xff", b"\x00", b'"', b"[", b"1"]
            )
        ).map(b"".join),
    ),
    name=st.sampled_from(GARBAGE_NAMES),
    compress=st.booleans(),
)
def test_garbage_bytes_only_give_records_or_read_errors(tmp_path_factory, data, name, compress):
    root = tmp_path_factory.mktemp("garbage")
    if name == "folder":
        source = root
        (root / "doc.txt").write_bytes(data)
    elif name == "beir":
        source = root
        (root / "corpus.jsonl").write_bytes(data)
    else:
        source = root / name
        payload = gzip.compress(data) if name.endswith(".gz") and compress else data
        if name.endswith(".gz") and compress and data:
            payload = payload[: max(1, len(payload) * 2 // 3)]  # also exercise truncation
        source.write_bytes(payload)
    start = time.monotonic()
    try:
        for item in iter_records([source]):
            assert isinstance(item, (Record, ReadError))
            if isinstance(item, Record):
                assert item.text.strip()
    except ReadError:
        pass
    estimate_total([source])  # never raises, whatever the bytes
    for reader in (read_queries, read_qrels):
        if source.is_file():
            try:
                reader(source)
            except ReadError:
                pass
    assert time.monotonic() - start < 5
