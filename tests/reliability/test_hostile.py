"""Hostile input: random filter trees, random bytes in every reader, SQL-looking keys, path-like names."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

import semindex
from semindex.cli import cli
from semindex.storage import schema
from semindex.storage.filters import compile_filter, matches
from tests.support import run_cli, sample_docs

SEED = 20261201

# -- random filter trees vs the reference evaluator, through the library, on both backends -------

KEYS = ["a", "b", "c", "n"]
PATHS = ["a", "b", "c", "n", "n.x", "n.y", "missing", "a.x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0, 1e300, -0.0, 2**53 + 1]),
    st.text(alphabet="aAbé1 ", max_size=3),
)
range_operands = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0]), st.text(alphabet="aAbé1", max_size=2))
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.fixed_dictionaries({}, optional={"x": scalars, "y": scalars}),
)
metadata = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)

leaf = st.one_of(
    st.builds(lambda p, v: {p: v}, st.sampled_from(PATHS), scalars),
    st.builds(lambda p, o, v: {p: {o: v}}, st.sampled_from(PATHS), st.sampled_from(["$eq", "$ne"]), scalars),
    st.builds(lambda p, o, v: {p: {o: v}}, st.sampled_from(PATHS),
              st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), range_operands),
    st.builds(lambda p, o, v: {p: {o: v}}, st.sampled_from(PATHS), st.sampled_from(["$in", "$nin"]),
              st.lists(scalars, max_size=4)),
    st.builds(lambda p, v: {p: {"$exists": v}}, st.sampled_from(PATHS), st.booleans()),
    st.just({}),
)
filters = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        inner.map(lambda f: {"$not": f}),
    ),
    max_leaves=8,
)

_names = itertools.count()


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(metas=st.lists(metadata, min_size=1, max_size=20), trees=st.lists(filters, min_size=1, max_size=6))
def test_random_filters_agree_with_the_reference_through_the_library(
    store: semindex.Store, metas: list[dict[str, Any]], trees: list[dict[str, Any]]
) -> None:
    name = f"h{next(_names)}"
    coll = store.create_collection(name, dimension=4)
    ids = [f"d{i}" for i in range(len(metas))]
    vecs = np.random.default_rng(len(metas)).standard_normal((len(metas), 4)).astype(np.float32) + 0.1
    coll.add_embeddings(ids, vecs, metadata=metas)
    q = np.ones((1, 4), dtype=np.float32)
    try:
        for tree in trees:
            expected = {i for i, m in zip(ids, metas) if matches(tree, m)}
            assert coll.count(tree) == len(expected), (tree, metas)
            got = {h.id for h in coll.search_vectors(q, k=len(ids), filter=tree)[0]}
            assert got == expected, (tree, metas)
    finally:
        store.delete_collection(name)


# -- filter keys and values are data, never SQL -------------------------------------------------

EVIL_KEYS = ["a') OR 1=1 --", "$.x", 'a"b', "a'b", "x]", "a b", "", "a..b", "ü", "a.$x", "\x00", "a;DROP TABLE documents"]


def test_filter_keys_cannot_change_the_sql(store: semindex.Store) -> None:
    coll = store.create_collection("evil", dimension=4)
    meta = [{"a": "x' OR 1=1 --"}, {"a": "plain", "a') OR 1=1 --": 1, "$.x": 2}, {"a": 3}]
    coll.add_embeddings(["e0", "e1", "e2"], np.eye(3, 4, dtype=np.float32) + 0.1, metadata=meta)
    for key in EVIL_KEYS:
        with pytest.raises(semindex.FilterError):
            coll.count({key: 1})
        with pytest.raises(semindex.FilterError):
            coll.search_vectors(np.ones(4, dtype=np.float32), k=3, filter={"$or": [{"a": 3}, {key: {"$exists": True}}]})
    # SQL-looking *values* are just strings
    assert coll.count({"a": "x' OR 1=1 --"}) == 1
    assert coll.count({"a": "' OR '1'='1"}) == 0
    assert coll.count({"a": {"$in": ["x' OR 1=1 --", "plain"]}}) == 2
    assert coll.count() == 3  # and nothing was dropped
    # the rendered SQL holds only fixed vocabulary: every key and value is a bound parameter
    expr = compile_filter({"$or": [{"a": "x' OR 1=1 --"}, {"n.x": {"$gte": "zz'zz"}}]}, schema.documents.c.metadata)
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(sa.select(schema.documents.c.vid).where(expr).compile(dialect=dialect))
        assert "OR 1=1" not in sql and "zz'zz" not in sql and '"n"' not in sql


def test_cli_rejects_evil_filter_keys_in_one_line(tmp_path: Path) -> None:
    for key in ["a') OR 1=1 --", "$.x"]:
        proc = run_cli("search", "x", "--store", str(tmp_path / "none"), "--filter", json.dumps({key: 1}))
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


# -- collection names never reach the file system --------------------------------------------------

BAD_NAMES = ["../x", "../../etc/x", "/abs", "/tmp/x", "a/b", "a\\b", "a\x00b", "x" * 65, "y" * 5000,
             "ñame", "名前", ".", "..", ".hidden", "-x", "", " ", "a\nb", "c*"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_bad_collection_names_are_rejected_by_the_library(tmp_path: Path, db_url: str | None) -> None:
    with semindex.Store(tmp_path / "store", db_url=db_url) as store:
        before = _tree(tmp_path)
        for bad in BAD_NAMES:
            with pytest.raises(semindex.InvalidNameError):
                store.collection(bad, dimension=4)
            with pytest.raises(semindex.InvalidNameError):
                store.create_collection(bad, dimension=4)
            with pytest.raises(semindex.InvalidNameError):
                store.get_collection(bad)
            with pytest.raises(semindex.InvalidNameError):
                store.delete_collection(bad)
        assert store.collection_names() == []
        assert _tree(tmp_path) == before


def test_bad_collection_names_are_rejected_by_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps({"id": "1", "text": "hello"}) + "\n", encoding="utf-8")
    store = tmp_path / "store"
    semindex.Store(store).close()  # a store to aim at
    before = _tree(tmp_path)
    runner = CliRunner()
    for bad in BAD_NAMES:
        for args in (["index", str(src)], ["search", "hello"], ["check"], ["delete", "1"]):
            res = runner.invoke(cli, [*args, "--store", str(store), "-c", bad])
            assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (args, bad, res.output)
            errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "collection name" in errors[0], (args, bad, res.stderr)
    for bad in ["../x", "/abs"]:  # and through the real entry point (argv cannot carry NUL at all)
        proc = run_cli("index", str(src), "--store", str(store), "-c", bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
    after = _tree(tmp_path)
    assert {p for p in after - before if not p.startswith("store")} == set()
    with semindex.Store(store) as s:
        assert s.collection_names() == []


# -- random bytes and truncated files in every reader, via the CLI ------------------------------------


def _valid_sources(d: Path) -> dict[str, Path]:
    docs = sample_docs()[:12]
    d.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"_id": x["id"], "title": x["title"], "text": x["text"], "topic": x["metadata"]["topic"]}) + "\n" for x in docs)
    out = {"jsonl": d / "v.jsonl", "gz": d / "v.jsonl.gz", "csv": d / "v.csv", "tsv": d / "v.tsv",
           "parquet": d / "v.parquet"}
    out["jsonl"].write_text(lines, encoding="utf-8")
    out["gz"].write_bytes(gzip.compress(lines.encode()))
    import csv

    for key, delim in (("csv", ","), ("tsv", "\t")):
        with out[key].open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter=delim)
            w.writerow(["id", "title", "text", "topic"])
            for x in docs:
                w.writerow([x["id"], x["title"], x["text"], x["metadata"]["topic"]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [x["id"] for x in docs], "text": [x["text"] for x in docs],
                             "topic": [x["metadata"]["topic"] for x in docs]}), out["parquet"])
    return out


def _hostile_inputs(root: Path) -> list[tuple[str, list[str]]]:
    """(label, CLI args) for random-bytes and truncated versions of every readable format."""
    rng = random.Random(SEED)
    valid = _valid_sources(root / "valid")
    cases: list[tuple[str, list[str]]] = []
    n = 0

    def new(name: str, data: bytes) -> Path:
        nonlocal n
        n += 1
        p = root / f"case{n}" / name
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        return p

    for ext in (".jsonl", ".jsonl.gz", ".csv", ".tsv", ".parquet"):
        for size in (0, 1, 64, 3000):
            p = new(f"random{ext}", rng.randbytes(size))
            cases.append((f"random {size} B {ext}", ["index", str(p)]))
    for key, p in valid.items():
        data = p.read_bytes()
        for cut in sorted(rng.sample(range(1, len(data)), 3)):
            q = new(p.name, data[:cut])
            cases.append((f"{key} cut at {cut}/{len(data)}", ["index", str(q)]))
        flipped = bytearray(data)
        for _ in range(8):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        q = new(p.name, bytes(flipped))
        cases.append((f"{key} with flipped bytes", ["index", str(q)]))
    # a text folder with undecodable and empty files; BEIR folders with a broken corpus
    folder = root / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes(rng.randbytes(500))
    (folder / "b.md").write_bytes(b"\xff\xfe\x00bad")
    (folder / "c.txt").write_bytes(b"")
    (folder / "d.txt").write_text("a fine note about bread", encoding="utf-8")
    cases.append(("text folder with random bytes", ["index", str(folder)]))
    for name, data in (("corpus.jsonl", rng.randbytes(700)), ("corpus.jsonl.gz", valid["gz"].read_bytes()[:40])):
        beir = root / f"beir-{name}"
        beir.mkdir()
        (beir / name).write_bytes(data)
        (beir / "queries.jsonl").write_bytes(rng.randbytes(300))
        (beir / "qrels").mkdir()
        (beir / "qrels" / "test.tsv").write_bytes(rng.randbytes(300))
        cases.append((f"BEIR folder, broken {name}", ["index", str(beir)]))
        cases.append((f"eval on BEIR folder, broken {name}", ["eval", str(beir), "-k", "5"]))
    for i, data in enumerate((rng.randbytes(400), b'{"_id": "q1", "text": "bre', b"\x1f\x8b\x08\x00garbage")):
        q = new(f"queries{i}.jsonl", data)
        cases.append((f"queries file {i}", ["search", "--queries", str(q)]))
    return cases


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_random_and_truncated_files_never_crash_a_reader(tmp_path: Path) -> None:
    cases = _hostile_inputs(tmp_path / "in")
    store = tmp_path / "store"
    runner = CliRunner()
    seed = runner.invoke(cli, ["index", str(tmp_path / "in" / "valid" / "v.jsonl"), "--store", str(store)])
    assert seed.exit_code == 0, seed.output
    outcomes: dict[str, int] = {}
    for label, args in cases:
        for on_error in (["--on-error", "skip"], []) if args[0] == "index" else ([],):
            res = runner.invoke(cli, [*args, "--store", str(store), *on_error], catch_exceptions=True)
            what = f"{label} {' '.join(on_error)}"
            # a SemindexError becomes exit code + one line; anything else would be a bug (traceback)
            assert res.exception is None or isinstance(res.exception, SystemExit), (
                what, "".join(__import__("traceback").format_exception(res.exception)))
            if res.exit_code != 0:
                errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
                assert len(errors) == 1, (what, res.stderr)
            outcomes[what] = res.exit_code
    assert any(code != 0 for code in outcomes.values()) and any(code == 0 for code in outcomes.values())
    # the store is still fine after all of that
    check = runner.invoke(cli, ["check", "--store", str(store)])
    assert check.exit_code == 0, check.output
    # and a couple through the real entry point, as a user would see them
    for label, args in [c for c in cases if c[0].startswith(("random 3000 B .jsonl.gz", "parquet cut"))][:2]:
        proc = run_cli(*args, "--store", str(store), timeout=120)
        assert "Traceback" not in proc.stderr, (label, proc.stderr)
        assert proc.returncode == 0 or len([x for x in proc.stderr.splitlines() if x.startswith("error:")]) == 1
