"""A full disk (a small tmpfs as the store): one clear error, and a consistent store once space is back."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import semindex
from tests.support import run_cli, scifact_docs


class SmallDisk:
    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.filler = mnt / "filler.bin"

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until the disk is full (then give back ``leave`` bytes)."""
        with self.filler.open("ab", buffering=0) as fh:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):  # down to the last free block
                chunk = b"\1" * size
                try:
                    while True:
                        fh.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        if leave:
            size = self.filler.stat().st_size
            os.truncate(self.filler, max(0, size - leave))

    def free(self, size: str = "64m") -> None:
        """Delete the filler and make the disk bigger."""
        self.filler.unlink(missing_ok=True)
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.mnt)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield SmallDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.slow
def test_cli_index_until_the_disk_is_full_then_resume(small_disk: SmallDisk, tmp_path: Path) -> None:
    docs = scifact_docs(160)
    src = tmp_path / "corpus.jsonl"  # the source is not on the small disk
    rng = np.random.default_rng(0)
    with src.open("w", encoding="utf-8") as fh:
        for d in docs:  # short texts to encode, bulky metadata to store
            blob = "".join(rng.choice(list("abcdefghij"), 6000))
            fh.write(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"][:120], "blob": blob}) + "\n")
    store = small_disk.mnt / "store"
    args = ["--store", str(store), "--commit-every", "16", "--batch-size", "16"]
    with semindex.Store(store) as s:  # a store with one document (in-process: the model is loaded once)
        s.collection().add([{"id": "first", "text": "a first document"}])
    small_disk.fill(leave=300_000)  # room for a few batches, not for the corpus
    proc = run_cli("index", str(src), *args)
    line = _one_error_line(proc)
    assert "disk is full" in line, line
    # still consistent while full, and after space is back
    check = run_cli("check", "--store", str(store))
    assert check.returncode == 0, check.stderr
    small_disk.free()
    check = run_cli("check", "--store", str(store))
    assert check.returncode == 0, check.stderr
    final = run_cli("index", str(src), *args, "--json", check=True)
    stats = json.loads(final.stdout)
    assert stats["failed"] == 0 and stats["added"] + stats["unchanged"] == len(docs)
    check = run_cli("check", "--store", str(store), check=True)
    assert f"ok ({len(docs) + 1} documents, {len(docs) + 1} vectors" in check.stdout


def test_library_writes_and_checkpoints_on_a_full_disk(small_disk: SmallDisk, db_url: str | None) -> None:
    """SQLite on the full disk: the write fails as 'disk is full' and commits nothing. PostgreSQL
    elsewhere: writes go on, the index checkpoint fails as 'disk is full', the old one stays."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3000, 64)).astype(np.float32)
    with semindex.Store(small_disk.mnt / "store", db_url=db_url) as store:
        coll = store.create_collection("v", dimension=64)
        coll.add_embeddings([f"a{i}" for i in range(1000)], vecs[:1000])
        assert coll.checkpoint()
        small_disk.fill()
        if db_url is None:
            with pytest.raises(semindex.StorageError, match="disk is full"):
                coll.add_embeddings([f"b{i}" for i in range(2000)], vecs[1000:])
            assert coll.count() == 1000
        else:
            coll.add_embeddings([f"b{i}" for i in range(2000)], vecs[1000:])
            assert coll.count() == 3000
            with pytest.raises(semindex.StorageError, match="disk is full"):
                coll.checkpoint()
        report = coll.check()
        assert report.ok, report.summary()
        assert coll.search_vectors(vecs[5], k=1)[0][0].id == "a5"
        small_disk.free()
        coll.add_embeddings([f"b{i}" for i in range(2000)], vecs[1000:])
        assert coll.checkpoint() or db_url is not None
        assert coll.count() == 3000
        assert coll.check().ok
        assert coll.search_vectors(vecs[2500], k=1)[0][0].id == "b1500"
