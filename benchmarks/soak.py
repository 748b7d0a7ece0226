"""Soak test: `semindex serve` on PostgreSQL under mixed traffic, SIGKILLed and restarted now and then.

Several client processes send upserts (precomputed vectors, a few ids per request), deletes and
filtered searches to one server on 127.0.0.1, for --minutes (default 10) or --max-requests per
client, whichever comes first. Meanwhile the server is SIGKILLed and restarted --restarts times.
Clients retry a request that failed during a restart until it is acknowledged (upserts and deletes
are idempotent), and keep a journal of what was acknowledged. At the end the store is checked
(`semindex check`) and every id's state in SQL is compared with the last acknowledged write.

    python benchmarks/soak.py                      # 10 minutes, own throwaway PostgreSQL cluster
    python benchmarks/soak.py --minutes 2 --db postgresql+psycopg://user@127.0.0.1:5432/soak

Prints (and with --json, one JSON object): requests served, errors outside restarts (must be 0),
requests retried during restarts, acknowledged writes lost (must be 0), the check result, and
p50/p99 latency per operation. Exit status 1 when errors, losses or the check say something is wrong.
Loopback only: the server listens on 127.0.0.1 and nothing else is contacted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _serve import ServerDidNotStart, free_port, wait_healthy  # benchmarks/_serve.py (this folder)

REPO = Path(__file__).resolve().parents[1]
DIM = 32
COLLECTION = "soak"
RESTART_GRACE_S = 1.0  # failures this soon after a restart still count as restart failures


def vector(key: int) -> list[float]:
    rnd = random.Random(key)
    return [rnd.gauss(0.0, 1.0) for _ in range(DIM)]


# -- the server --------------------------------------------------------------------------------


class Server:
    def __init__(self, store: Path, db: str, log_dir: Path) -> None:
        self.store, self.db, self.log_dir = store, db, log_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.malloc_trim: float | None = None  # the server's $SEMINDEX_MALLOC_TRIM (None: its default)

    def start(self, timeout: float = 300) -> None:
        self.starts += 1
        log = open(self.log_dir / f"serve-{self.starts}.log", "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMINDEX_")}
        env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if self.malloc_trim is not None:
            env["SEMINDEX_MALLOC_TRIM"] = str(self.malloc_trim)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semindex", "serve", "--store", str(self.store), "--db", self.db,
             "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
        )
        try:
            wait_healthy(self.base, self.proc, timeout)
        except ServerDidNotStart as exc:
            raise SystemExit(f"soak: {str(exc).rstrip(':')}; see {log.name}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


# -- a client process ------------------------------------------------------------------------------


def client(cid: int, base: str, deadline: float, max_requests: int, journal: str, restarting: Any,
           last_restart: Any, out: Any, seed: int) -> None:
    """Mixed traffic on ids of its own (c<cid>-<n>), so the last acknowledged write per id is known."""
    import httpx

    rnd = random.Random(seed * 1000 + cid)
    lat: dict[str, list[float]] = {"upsert": [], "delete": [], "search": []}
    served = errors = retried = 0
    error_samples: list[str] = []
    live: list[str] = []
    seq = 0
    with open(journal, "w", encoding="utf-8") as jf, httpx.Client(base_url=base, timeout=60) as http:

        def in_restart() -> bool:
            return bool(restarting.value) or time.time() - last_restart.value < RESTART_GRACE_S

        def send(op: str, method: str, path: str, body: Any, ok: tuple[int, ...] = (200,)) -> Any:
            nonlocal served, errors, retried
            while True:
                t0 = time.perf_counter()
                try:
                    r = http.request(method, path, json=body)
                    status = r.status_code
                except httpx.HTTPError as exc:
                    r, status = None, repr(exc)
                dt = time.perf_counter() - t0
                if status in ok:
                    served += 1
                    if not in_restart():
                        lat[op].append(dt)
                    return r
                if in_restart() or (isinstance(status, str) and time.time() - last_restart.value < 30):
                    retried += 1  # the server is down or coming back: retry the same request
                    time.sleep(0.2)
                    continue
                errors += 1
                if len(error_samples) < 5:
                    error_samples.append(f"{op} {path}: {status} {(r.text[:200] if r is not None else '')}")
                time.sleep(0.2)
                if errors > 1000:
                    return None

        n = 0
        while time.time() < deadline and served < max_requests:
            roll = rnd.random()
            if roll < 0.45 or not live:
                if roll < 0.10 and len(live) >= 3:  # re-upsert (update) some live ids
                    ids = rnd.sample(live, rnd.randint(1, 3))
                else:
                    k = rnd.randint(1, 8)
                    ids = [f"c{cid}-{n + i}" for i in range(k)]
                    n += k
                seq += 1
                k = len(ids)
                body = {"ids": ids, "embeddings": [vector(hash((cid, i, seq)) & 0xFFFFFFFF) for i in range(k)],
                        "metadata": [{"client": cid, "seq": seq, "bucket": rnd.randrange(10)} for _ in ids],
                        "texts": [f"doc {i}" for i in ids]}
                if send("upsert", "POST", f"/collections/{COLLECTION}/documents", body) is not None:
                    jf.write(json.dumps({"op": "up", "ids": ids, "seq": seq}) + "\n")
                    live.extend(i for i in ids if i not in live)
            elif roll < 0.60:
                victim = live.pop(rnd.randrange(len(live)))
                # 404 on a retry means the first attempt was applied before the kill: also acknowledged
                if send("delete", "DELETE", f"/collections/{COLLECTION}/documents/{victim}", None,
                        ok=(200, 404)) is not None:
                    jf.write(json.dumps({"op": "del", "id": victim}) + "\n")
            else:
                body: dict[str, Any] = {"vector": vector(rnd.randrange(1 << 30)), "k": 10}
                if rnd.random() < 0.5:
                    body["filter"] = {"bucket": {"$in": [rnd.randrange(10), rnd.randrange(10)]}}
                send("search", "POST", f"/collections/{COLLECTION}/search", body)
            jf.flush()
    out.put({"client": cid, "served": served, "errors": errors, "retried": retried,
             "error_samples": error_samples, "lat": lat})


# -- verification ---------------------------------------------------------------------------------------


def hostile(base: str, deadline: float, restarting: Any, last_restart: Any, out: Any, seed: int) -> None:
    """The fifth client (issue 11): slow sockets (half a request line, half the headers, half a
    body), random HTTP methods, and oversized asks (absurd index specs, 64-query batches at
    k=1000, string k). It writes nothing the journal tracks; any 5xx outside a restart is counted."""
    import socket
    from urllib.parse import urlparse

    import httpx

    rnd = random.Random(seed * 7919)
    host, port = urlparse(base).hostname or "127.0.0.1", int(urlparse(base).port or 80)
    sent = five = 0
    samples: list[str] = []
    slow: list[socket.socket] = []
    asks: list[tuple[str, str, Any]] = [
        ("POST", "/collections", {"name": "h", "dimension": 4, "index": "IVF99999999,Flat"}),
        ("POST", "/collections", {"name": "h", "dimension": 4, "index": "HNSW-1"}),
        ("POST", f"/collections/{COLLECTION}/search/batch", {"vectors": [vector(1)] * 64, "k": 1000}),
        ("POST", f"/collections/{COLLECTION}/search", {"vector": vector(2), "k": "5"}),
        ("POST", f"/collections/{COLLECTION}/search", {"query": "x", "rerank": "/etc/passwd"}),
        ("POST", f"/collections/{COLLECTION}/documents", {"ids": ["h"], "embeddings": [vector(3)], "texts": ["a" * 1_000_001]}),
    ]
    with httpx.Client(base_url=base, timeout=60) as http:
        while time.time() < deadline:
            kind = rnd.random()
            try:
                if kind < 0.3:  # a socket that stalls mid-request; a few stay open at once
                    s = socket.create_connection((host, port), timeout=5)
                    s.sendall(rnd.choice([b"GET /heal", b"POST /collections HTTP/1.1\r\nHost: x\r\n",
                                          b"POST /collections HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"na"]))
                    slow.append(s)
                    if len(slow) > 32:
                        slow.pop(0).close()
                    continue
                if kind < 0.6:
                    method = "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rnd.randint(1, 12)))
                    r = http.request(method, rnd.choice(["/health", "/collections", f"/x/{rnd.random()}"]))
                else:
                    method, path, body = rnd.choice(asks)
                    r = http.request(method, path, json=body)
                sent += 1
                restart = bool(restarting.value) or time.time() - last_restart.value < RESTART_GRACE_S
                if r.status_code >= 500 and not restart:
                    five += 1
                    if len(samples) < 5:
                        samples.append(f"{method} -> {r.status_code} {r.text[:120]}")
            except (OSError, httpx.HTTPError):
                pass  # a refused or reset connection during a restart, or the server shedding load
            time.sleep(0.02)
    for s in slow:
        s.close()
    out.put({"sent": sent, "5xx": five, "samples": samples})


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares MB per minute through (time s, MB) points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mm = sum(mb for _, mb in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (mb - mm) for t, mb in points) / var if var > 0 else 0.0


def rss_trend(samples: list[tuple[int, float, float]], warmup_s: float = 30.0) -> dict[str, Any] | None:
    """RSS of the server process that lived longest, from ``warmup_s`` after its first sample to its
    last: flat memory means a slope near 0 MB/min once the model and index are loaded. The slope is a
    least-squares fit over every 5 s sample (the whole settled span and its second half, where
    warm-up no longer shows), and the highest RSS of each minute is listed."""
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for pid, t, mb in samples:
        by_pid.setdefault(pid, []).append((t, mb))
    best = max(by_pid.values(), key=lambda v: v[-1][0] - v[0][0], default=None)
    if not best:
        return None
    settled = [(t, mb) for t, mb in best if t >= best[0][0] + warmup_s] or best
    (t0, m0), (t1, m1) = settled[0], settled[-1]
    minutes = (t1 - t0) / 60
    half = [(t, mb) for t, mb in settled if t >= t0 + (t1 - t0) / 2]
    per_minute: dict[int, float] = {}
    for t, mb in best:
        minute = int((t - best[0][0]) // 60)
        per_minute[minute] = max(per_minute.get(minute, 0.0), mb)
    return {"from_mb": m0, "to_mb": m1, "max_mb": max(mb for _, mb in settled), "minutes": round(minutes, 2),
            "mb_per_min": round(_slope(settled), 1), "second_half_mb_per_min": round(_slope(half), 1),
            "max_mb_per_minute": [per_minute[m] for m in sorted(per_minute)]}


def rss_mb(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def expected_state(journals: list[Path]) -> dict[str, int | None]:
    """id -> seq of its last acknowledged upsert, or None when its last acknowledged write deleted it."""
    state: dict[str, int | None] = {}
    for path in journals:
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec["op"] == "up":
                for i in rec["ids"]:
                    state[i] = rec["seq"]
            else:
                state[rec["id"]] = None
    return state


def lost_writes(db: str, state: dict[str, int | None]) -> tuple[int, list[str]]:
    import sqlalchemy as sa

    engine = sa.create_engine(db, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT d.doc_id, d.metadata FROM documents d JOIN collections c ON c.id = d.collection_id "
            "WHERE c.name = :n"), {"n": COLLECTION}).all()
    engine.dispose()
    have = {r[0]: (r[1] if isinstance(r[1], dict) else json.loads(r[1])) for r in rows}
    lost = []
    for doc_id, seq in state.items():
        if seq is None:
            if doc_id in have:
                lost.append(f"{doc_id}: deleted (acknowledged) but present")
        elif doc_id not in have:
            lost.append(f"{doc_id}: acknowledged upsert missing")
        elif have[doc_id].get("seq") != seq:
            lost.append(f"{doc_id}: has seq {have[doc_id].get('seq')}, last acknowledged {seq}")
    return len(lost), lost[:10]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 2)


# -- main -------------------------------------------------------------------------------------------


def start_cluster(tmp: Path) -> tuple[str, Path]:
    pgdir = tmp / "pg"
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cluster runs as the postgres user
    out = subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "start", str(pgdir)], check=True,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
    url = out.strip().split("=", 1)[1]
    return url, pgdir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="How long to run (default 10).")
    ap.add_argument("--clients", type=int, default=4, help="Client processes (default 4).")
    ap.add_argument("--restarts", type=int, default=3, help="SIGKILL + restart the server this many times.")
    ap.add_argument("--max-requests", type=int, default=200_000, help="Per client, at most (default 200000).")
    ap.add_argument("--db", default=os.environ.get("SEMINDEX_DB_URL"),
                    help="PostgreSQL URL (default $SEMINDEX_DB_URL; else a throwaway cluster via scripts/pg.sh).")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="Print the report as one JSON object.")
    ap.add_argument("--malloc-trim", type=float, default=None,
                    help="The server's $SEMINDEX_MALLOC_TRIM (seconds between trims; 0 off; default: its own).")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="semindex-soak-"))
    pgdir = None
    server: Server | None = None
    try:
        db = args.db
        if not db:
            db, pgdir = start_cluster(tmp)
        store = tmp / "store"
        server = Server(store, db, tmp)
        server.malloc_trim = args.malloc_trim
        server.start()
        import httpx

        r = httpx.post(f"{server.base}/collections", json={"name": COLLECTION, "dimension": DIM}, timeout=60)
        if r.status_code not in (201, 409):
            raise SystemExit(f"soak: cannot create the collection: {r.status_code} {r.text}")

        ctx = mp.get_context("spawn")
        restarting = ctx.Value("b", 0)
        last_restart = ctx.Value("d", 0.0)
        results = ctx.Queue()
        t_start = time.time()
        deadline = t_start + args.minutes * 60
        journals = [tmp / f"journal-{i}.jsonl" for i in range(args.clients)]
        procs = [ctx.Process(target=client, args=(i, server.base, deadline, args.max_requests, str(journals[i]),
                                                  restarting, last_restart, results, args.seed))
                 for i in range(args.clients)]
        hostile_out = ctx.Queue()
        bad_client = ctx.Process(target=hostile, args=(server.base, deadline, restarting, last_restart,
                                                       hostile_out, args.seed))
        for p in [*procs, bad_client]:
            p.start()
        rss_start = rss_mb(server.proc.pid if server.proc else None)
        samples: list[tuple[int, float, float]] = []  # (server pid, time, RSS MB) every 5 s
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(5.0):
                pid = server.proc.pid if server.proc else None
                mb = rss_mb(pid)
                if pid is not None and mb is not None:
                    samples.append((pid, time.time(), mb))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rnd = random.Random(args.seed)
        restarts_done = 0
        restart_seconds: list[float] = []
        for i in range(args.restarts):
            at = t_start + (i + 1) * (deadline - t_start) / (args.restarts + 1) + rnd.uniform(-3, 3)
            while time.time() < at and any(p.is_alive() for p in procs):
                time.sleep(0.1)
            if not any(p.is_alive() for p in procs):
                break
            restarting.value = 1
            t0 = time.time()
            server.kill()
            server.start()
            last_restart.value = time.time()
            restarting.value = 0
            restart_seconds.append(round(time.time() - t0, 1))
            restarts_done += 1
        reports = [results.get(timeout=args.minutes * 60 + 600) for _ in procs]
        hostile_report = hostile_out.get(timeout=600)
        rss_end = rss_mb(server.proc.pid if server.proc else None)
        sampling.set()
        memory = rss_trend(samples)
        for p in [*procs, bad_client]:
            p.join(timeout=60)
        elapsed = time.time() - t_start
        stop_status = server.stop()
        check = subprocess.run(
            [sys.executable, "-m", "semindex", "check", "--store", str(store), "--db", db, "--all"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
        )
        state = expected_state(journals)
        n_lost, lost_samples = lost_writes(db, state)
        lat: dict[str, list[float]] = {"upsert": [], "delete": [], "search": []}
        for rep in reports:
            for op, vals in rep["lat"].items():
                lat[op].extend(vals)
        everything = [v for vals in lat.values() for v in vals]
        report = {
            "minutes": round(elapsed / 60, 2),
            "clients": args.clients,
            "restarts": restarts_done,
            "restart_seconds": restart_seconds,
            "requests_served": sum(r["served"] for r in reports),
            "requests_per_s": round(sum(r["served"] for r in reports) / max(elapsed, 1e-9), 1),
            "errors_outside_restarts": sum(r["errors"] for r in reports),
            "retried_during_restarts": sum(r["retried"] for r in reports),
            "acknowledged_ids": len(state),
            "acknowledged_writes_lost": n_lost,
            "lost_samples": lost_samples,
            "error_samples": [s for r in reports for s in r["error_samples"]][:10],
            "check": check.stdout.strip() if check.returncode == 0 else f"FAILED: {check.stderr.strip()}",
            "check_ok": check.returncode == 0,
            "clean_shutdown": stop_status == 0,
            "hostile": hostile_report,
            "server_rss_mb": {"start": rss_start, "end": rss_end},  # first process's start, last one's end
            "server_rss_trend": memory,  # the longest-lived server process, from 30 s after it started
            "latency_ms": {
                op: {"n": len(vals), "p50": pct(vals, 0.50), "p99": pct(vals, 0.99)}
                for op, vals in {**lat, "all": everything}.items()
            },
        }
        if args.json:
            print(json.dumps(report))
        else:
            print(f"soak: {report['minutes']} min, {args.clients} clients, {restarts_done} SIGKILL restarts "
                  f"(back in {restart_seconds} s)")
            print(f"  requests served            {report['requests_served']} ({report['requests_per_s']}/s)")
            print(f"  errors outside restarts    {report['errors_outside_restarts']}")
            print(f"  retried during restarts    {report['retried_during_restarts']}")
            print(f"  acknowledged ids           {report['acknowledged_ids']}")
            print(f"  acknowledged writes lost   {n_lost}")
            print(f"  check                      {report['check']}")
            print(f"  hostile client             {hostile_report['sent']} requests, {hostile_report['5xx']} 5xx")
            for line in hostile_report["samples"]:
                print(f"    {line}")
            print(f"  server RSS                 {rss_start} MB (first process, start) -> {rss_end} MB (last, end)")
            if memory:
                print(f"  server RSS, longest life   {memory['from_mb']} -> {memory['to_mb']} MB over "
                      f"{memory['minutes']} min from 30 s after its start (fit {memory['mb_per_min']:+} MB/min, "
                      f"second half {memory['second_half_mb_per_min']:+} MB/min)")
                print(f"  server RSS, max per minute {memory['max_mb_per_minute']}")
            for op, q in report["latency_ms"].items():
                print(f"  latency {op:<8} n={q['n']:<7} p50 {q['p50']} ms  p99 {q['p99']} ms")
            for s in report["error_samples"] + report["lost_samples"]:
                print(f"  ! {s}")
        bad = report["errors_outside_restarts"] or n_lost or not report["check_ok"] or hostile_report["5xx"]
        return 1 if bad else 0
    finally:
        if server is not None:
            server.kill()
        if pgdir is not None:
            subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "stop", str(pgdir)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
