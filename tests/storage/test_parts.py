"""The storage parts on their own: exact scoring, checkpoints, write hooks, no import cycle."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from semindex.errors import StorageError
from semindex.storage import DocWrite, Storage, exact, schema
from semindex.storage.check import probe_checkpoint
from semindex.storage.checkpoint import (
    MANIFEST,
    Manifest,
    format_params,
    load_checkpoint_index,
    read_manifest,
    write_checkpoint,
)
from semindex.storage.vectors import build_index

STORAGE = Path(__file__).resolve().parents[2] / "semindex" / "storage"


def _vecs(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_blocked_top_k_equals_one_shot_sort(metric: str) -> None:
    q, x = _vecs(5, seed=1), _vecs(1000, seed=2)
    ids = np.arange(1000, 2000, dtype=np.int64)
    full = exact.scores(q, x, metric)
    want = np.argsort(-full, axis=1, kind="stable")[:, :10]
    acc = exact.TopK(len(q), 10)
    for lo in range(0, 1000, 128):  # blocks smaller and not a divisor of the total
        acc.push(full[:, lo : lo + 128], ids[lo : lo + 128])
    got_s, got_i = acc.result()
    assert (got_i == ids[want]).all()
    assert np.allclose(got_s, np.take_along_axis(full, want, 1))
    assert (np.diff(got_s, axis=1) <= 0).all()


def test_l2_scores_are_negative_squared_distances() -> None:
    q, x = _vecs(3), _vecs(7, seed=3) * 3
    ref = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    assert np.allclose(exact.scores(q, x, "l2"), ref, atol=1e-4)


def test_top_k_with_fewer_candidates_than_k() -> None:
    s, i = exact.top_k(_vecs(2), _vecs(3, seed=4), np.array([7, 8, 9]), 10, "dot")
    assert s.shape == (2, 3) and set(i[0].tolist()) == {7, 8, 9}


def test_checkpoint_round_trip_and_one_loader_for_open_and_check(tmp_path: Path) -> None:
    index = build_index("flat", 8, "cosine")
    index.add(np.arange(20, dtype=np.int64), _vecs(20))
    name = write_checkpoint(tmp_path, index, version=7, store_id="abc", metric="cosine")
    manifest = read_manifest(tmp_path)
    assert manifest == Manifest(version=7, file=name, spec="flat", count=20, dimension=8,
                                params={}, store_id="abc", metric="cosine")
    loaded = load_checkpoint_index(tmp_path, manifest, 8, "cosine")
    assert sorted(loaded.ids().tolist()) == list(range(20))
    probe, version, status = probe_checkpoint(tmp_path, "flat", 8, "cosine")
    assert (len(probe), version, status) == (20, 7, "v7")
    # a second checkpoint replaces the first file; only one index file remains
    write_checkpoint(tmp_path, index, version=8, store_id="abc", metric="cosine")
    assert len(list(tmp_path.glob("index-*.faiss"))) == 1 and read_manifest(tmp_path).version == 8


def test_a_manifest_that_lies_about_its_count_is_unreadable(tmp_path: Path) -> None:
    index = build_index("flat", 8, "cosine")
    index.add(np.arange(5, dtype=np.int64), _vecs(5))
    write_checkpoint(tmp_path, index, version=1, store_id="s", metric="cosine")
    data = json.loads((tmp_path / MANIFEST).read_text())
    data["count"] = 6
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(StorageError, match="holds 5 vectors, manifest says 6"):
        load_checkpoint_index(tmp_path, read_manifest(tmp_path), 8, "cosine")  # type: ignore[arg-type]
    probe, version, status = probe_checkpoint(tmp_path, "flat", 8, "cosine")
    assert (len(probe), version) == (0, 0) and status.startswith("unreadable: ")
    (tmp_path / MANIFEST).write_text("{not json")
    assert probe_checkpoint(tmp_path, "flat", 8, "cosine")[2].startswith("unreadable: ")


def test_no_checkpoint_probes_as_a_rebuild(tmp_path: Path) -> None:
    probe, version, status = probe_checkpoint(tmp_path / "none", "hnsw", 8, "cosine")
    assert (len(probe), version, status) == (0, 0, "none (rebuilt from SQL on open)")


def test_format_params_shows_the_tuned_knobs_only() -> None:
    assert format_params({"nlist": 64, "nprobe": 8, "trained_on": 5000}) == "(nlist=64, nprobe=8)"
    assert format_params({}) == ""


class _Recorder:
    """A WriteHook that records what each write transaction passed it."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, list[int], list[int]]] = []
        self.drops: list[int] = []

    def on_write(self, conn: Connection, collection_id: int, upserted: Sequence[int],
                 deleted: Sequence[int]) -> None:
        # inside the transaction: the upserted chunks are visible through its connection
        n = conn.execute(sa.select(sa.func.count()).select_from(schema.chunks)
                         .where(schema.chunks.c.id.in_(list(upserted)))).scalar()
        assert n == len(upserted)
        self.writes.append((collection_id, list(upserted), list(deleted)))

    def on_drop(self, conn: Connection, collection_id: int) -> None:
        self.drops.append(collection_id)


def _doc(i: str, vec: np.ndarray) -> DocWrite:
    return DocWrite(doc_id=i, text=f"text {i}", title=None, metadata={}, content_hash=f"h{i}", embedding=vec)


def test_hooks_are_passed_in_and_called_inside_each_write(tmp_path: Path) -> None:
    hook = _Recorder()
    storage = Storage(tmp_path / "s", hooks=[hook])
    try:
        rec = storage.create_collection("c", model=None, dimension=8)
        coll = storage.open_collection("c")
        v = _vecs(2)
        coll.write([_doc("a", v[0]), _doc("b", v[1])])
        coll.delete(["a"])
        storage.drop_collection("c")
    finally:
        storage.close()
    (c1, up1, del1), (c2, up2, del2) = hook.writes
    assert (c1, len(up1), del1) == (rec.id, 2, []) and (c2, up2) == (rec.id, [])
    assert len(del2) == 1 and del2[0] in up1 and hook.drops == [rec.id]


def test_a_storage_without_hooks_has_no_keyword_tables(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "s")
    try:
        storage.create_collection("c", model=None, dimension=8)
        storage.open_collection("c").write([_doc("a", _vecs(1)[0])])
        names = sa.inspect(storage.engine).get_table_names()
    finally:
        storage.close()
    assert not [n for n in names if n.startswith("semindex_fts")]


def _imports(path: Path, level: int = 1) -> set[str]:
    """The storage modules ``path`` imports (``level``: how deep ``path`` sits below storage/)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            out.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return out


def test_storage_modules_import_each_other_without_cycles() -> None:
    """Sibling imports inside semindex/storage form a DAG (TYPE_CHECKING imports included)."""
    graph: dict[str, set[str]] = {}
    for p in STORAGE.glob("*.py"):
        if p.stem != "__init__":
            graph[p.stem] = {m for m in _imports(p) if m != p.stem}
    graph["vectors"] = set().union(*(_imports(p, level=2) for p in (STORAGE / "vectors").glob("*.py")))
    assert {"atomic", "exact"} <= graph["vectors"]  # the scan sees the package's imports

    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> Any:
        if state.get(n) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, n]))
        if state.get(n) == 2 or n not in graph:
            return
        state[n] = 1
        for m in graph[n]:
            visit(m, [*path, n])
        state[n] = 2

    for n in graph:
        visit(n, [])


def test_no_storage_module_is_a_god_module() -> None:
    sizes = {p.relative_to(STORAGE).as_posix(): len(p.read_text().splitlines()) for p in STORAGE.rglob("*.py")}
    assert max(sizes.values()) < 900, sizes  # filters.py (one grammar, two compilers) is the largest
    assert sizes["store.py"] < 800
