"""Helpers for the reliability tests: other processes that write, and looking at a store from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.api.serving import ServeProcess
from tests.support import REPO

DIM = 16


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(extra)
    return env


def vec(i: int, salt: int = 0, dim: int = DIM) -> list[float]:
    """A deterministic unit-ish vector per (id number, writer): lets a test tell who wrote a row."""
    import numpy as np

    rng = np.random.default_rng(i * 7919 + salt * 104729 + 1)
    return rng.standard_normal(dim).astype("float32").tolist()


# A process that writes precomputed vectors through the library, batch by batch, and reports
# each committed batch on stdout ("committed <n>") *after* the commit returned.
WRITER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import semindex
    from tests.reliability._util import vec, DIM
    args = json.loads(sys.argv[1])
    with semindex.Store(args["store"], db_url=args["db"]) as store:
        coll = store.collection(args["collection"], dimension=DIM)
        ids = args["ids"]
        b = args["batch"]
        for lo in range(0, len(ids), b):
            part = ids[lo:lo + b]
            vecs = np.array([vec(int(i[1:]), args["salt"]) for i in part], dtype=np.float32)
            meta = [{"writer": args["salt"], "n": int(i[1:])} for i in part]
            coll.add_embeddings(part, vecs, metadata=meta, texts=[f"{i} by {args['salt']}" for i in part])
            if args.get("delete_every") and (lo // b) % args["delete_every"] == 1:
                coll.delete(part[:1])
            print("committed", lo + len(part), flush=True)
            time.sleep(args.get("pause", 0))
    print("done", flush=True)
    """
)


def start_writer(store: Path, db: str | None, ids: list[str], *, salt: int, batch: int = 10,
                 collection: str = "vecs", pause: float = 0.0, delete_every: int = 0) -> subprocess.Popen[str]:
    args = {"store": str(store), "db": db, "ids": ids, "salt": salt, "batch": batch,
            "collection": collection, "pause": pause, "delete_every": delete_every}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(args)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
    )


def db_url_for(store: Path, db: str | None) -> str:
    return db or f"sqlite:///{store / 'semindex.db'}"


def count_rows(store: Path, db: str | None, collection: str | None = None) -> int:
    """Committed documents, seen from outside any semindex process (0 before the schema exists)."""
    url = db_url_for(store, db)
    if url.startswith("sqlite") and not (store / "semindex.db").exists():
        return 0
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            q = "SELECT count(*) FROM documents"
            params: dict[str, Any] = {}
            if collection is not None:
                q += " WHERE collection_id = (SELECT id FROM collections WHERE name = :n)"
                params["n"] = collection
            return int(conn.execute(sa.text(q), params).scalar() or 0)
    except sa.exc.DBAPIError:
        return 0  # schema not there yet, or SQLite busy for a moment
    finally:
        engine.dispose()


def query_rows(store: Path, db: str | None, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(db_url_for(store, db), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


def db_args(db: str | None) -> list[str]:
    return ["--db", db] if db else []


class Server(ServeProcess):
    """The API tests' `semindex serve` subprocess, quiet, on a --db database when given."""

    def __init__(self, store: Path, db: str | None, *args: str) -> None:
        super().__init__(store, *db_args(db), "--no-access-log", "--log-level", "warning", *args)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
