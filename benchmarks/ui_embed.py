"""The search page and the OpenAI-compatible embeddings endpoint, measured in one run.

    python benchmarks/ui_embed.py [--docs 1000] [--store DIR] [--runs 5] [--iters 30] [--iters64 8]

1. Builds a store of the first --docs SciFact documents (../shared/data/scifact) with the
   real default model, or reuses --store, and starts `semindex serve` on it (a subprocess).
2. Page, in Debian's chromium driven by Playwright (no browser download): for --runs fresh
   browser contexts (cold cache), navigate to /, wait until the collection overview is
   shown, type a SciFact query and press Enter; the page marks `semindex:first-result` in
   the Performance timeline when the hits are in the DOM. Reported: navigation -> page ready,
   Enter -> first result, navigation -> first result (the page's time to first result),
   median over runs; then one warm reload (assets from cache). Page weight: bytes over the
   wire for the cold load (HTML + JS + CSS, as the browser counts them) and on disk.
3. /v1/embeddings over HTTP (keep-alive, the server's model) against `semindex.embed` in
   this process (same model, same batch), at batch 1 and 64 (--iters / --iters64 calls), measured
   alternately (in-process, HTTP, in-process, HTTP) so load drift cancels out: p50 latency
   and texts/s of both, and the ratios HTTP / in-process. base64 is what the openai client
   asks for by default; float (JSON numbers) is measured too at batch 64.

The machine's other work shares the CPU: only ratios from the same run are comparable.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CHROMIUM = os.environ.get("SEMINDEX_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def corpus(limit: int) -> list[dict[str, Any]]:
    out = []
    with gzip.open(DATA / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            out.append({"id": rec["_id"], "title": rec.get("title") or None, "text": rec["text"]})
            if len(out) >= limit:
                break
    return out


def queries(n: int) -> list[str]:
    out = []
    with open(DATA / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["text"])
            if len(out) >= n:
                break
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMINDEX_")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "semindex", "serve", "--store", str(store), "--port", str(port),
                             "--no-access-log", "--log-level", "warning"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"semindex serve exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("semindex serve did not become healthy")


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


# -- the page -------------------------------------------------------------------------------------------


def measure_page(base: str, qs: list[str], runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    cold: list[dict[str, float]] = []
    weight: dict[str, int] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for i in range(runs + 1):  # the first run warms the server's search path; not counted
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.goto(base + "/")
            page.wait_for_selector("#overview dd")
            ready = page.evaluate("performance.now()")
            page.fill("input[type=search]", qs[i % len(qs)])
            pressed = page.evaluate("performance.now()")
            page.press("input[type=search]", "Enter")
            page.wait_for_selector("#results[data-state=done]", state="attached")
            first = page.evaluate("performance.getEntriesByName('semindex:first-result')[0].startTime")
            if i > 0:
                cold.append({"ready": ready, "search": first - pressed, "first_result": first})
            if i == 1:
                nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
                res = page.evaluate("JSON.stringify(performance.getEntriesByType('resource'))")
                entries = [json.loads(nav)] + json.loads(res)
                for e in entries:
                    name = e["name"].split("?")[0].rsplit("/", 1)[-1] or "index.html"
                    if name in ("index.html", "app.js", "app.css"):
                        weight[name] = int(e.get("transferSize") or 0)
                # warm: reload in the same context (HTML revalidated, assets from the immutable cache)
                t0 = time.perf_counter()
                page.reload()
                page.wait_for_selector("#overview dd")
                page.fill("input[type=search]", qs[0])
                page.press("input[type=search]", "Enter")
                page.wait_for_selector("#results[data-state=done]", state="attached")
                warm_first = page.evaluate("performance.getEntriesByName('semindex:first-result')[0].startTime")
                warm_wall = (time.perf_counter() - t0) * 1000
                res = json.loads(page.evaluate("JSON.stringify(performance.getEntriesByType('resource'))"))
                warm_bytes = sum(int(e.get("transferSize") or 0) for e in res
                                 if "/ui/" in e["name"])
            ctx.close()
        browser.close()
    static = REPO / "semindex" / "api" / "static"
    disk = {p.name: p.stat().st_size for p in static.iterdir() if p.is_file()}
    return {
        "ready_ms": p50([c["ready"] for c in cold]),
        "search_ms": p50([c["search"] for c in cold]),
        "first_result_ms": p50([c["first_result"] for c in cold]),
        "warm_first_result_ms": warm_first,
        "warm_wall_ms": warm_wall,
        "wire_bytes": weight,
        "warm_asset_wire_bytes": warm_bytes,
        "disk_bytes": disk,
    }


# -- the endpoint -----------------------------------------------------------------------------------------


def measure_embeddings(base: str, texts: list[str], iters: int, iters64: int) -> list[dict[str, Any]]:
    import httpx

    import semindex

    semindex.embed(texts[:64])  # load the model here too
    rows = []
    with httpx.Client(base_url=base, timeout=300) as client:
        for batch, fmt in ((1, "base64"), (64, "base64"), (64, "float")):
            local: list[float] = []
            remote: list[float] = []
            for i in range((iters if batch == 1 else iters64) + 2):
                lo = (i * batch) % max(1, len(texts) - batch)
                chunk = texts[lo : lo + batch]
                t0 = time.perf_counter()
                semindex.embed(chunk)
                t1 = time.perf_counter()
                r = client.post("/v1/embeddings", json={"model": MODEL, "input": chunk, "encoding_format": fmt})
                t2 = time.perf_counter()
                r.raise_for_status()
                if i >= 2:  # two warm-up rounds
                    local.append(t1 - t0)
                    remote.append(t2 - t1)
            rows.append({
                "batch": batch, "format": fmt,
                "inproc_p50_ms": p50(local) * 1000, "http_p50_ms": p50(remote) * 1000,
                "inproc_texts_s": batch * len(local) / sum(local), "http_texts_s": batch * len(remote) / sum(remote),
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--store", type=Path, default=None, help="reuse a store (its 'default' collection)")
    ap.add_argument("--runs", type=int, default=5, help="cold page loads")
    ap.add_argument("--iters", type=int, default=30, help="calls per embeddings measurement at batch 1")
    ap.add_argument("--iters64", type=int, default=8, help="calls per embeddings measurement at batch 64")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import semindex

    tmp = Path(tempfile.mkdtemp(prefix="semindex-ui-bench-"))
    docs = corpus(args.docs)
    store = args.store or tmp / "store"
    if args.store is None:
        t0 = time.perf_counter()
        with semindex.Store(store) as s:
            s.collection().add(docs, batch_size=64)
        print(f"built a store of {len(docs)} SciFact documents in {time.perf_counter() - t0:.0f} s: {store}")
    proc, base = start_server(store, tmp / "serve.log")
    try:
        page = measure_page(base, queries(20), args.runs)
        texts = [d["text"] for d in docs]
        emb = measure_embeddings(base, texts, args.iters, args.iters64)
    finally:
        proc.terminate()
        proc.wait(timeout=120)

    print(f"\n== search page ({args.docs} SciFact docs, {args.runs} cold loads, median) ==")
    print(f"navigation -> page ready (overview shown) : {page['ready_ms']:7.1f} ms")
    print(f"Enter -> first result in the DOM           : {page['search_ms']:7.1f} ms")
    print(f"navigation -> first result (time to first) : {page['first_result_ms']:7.1f} ms   "
          "(includes Playwright typing the query)")
    print(f"warm reload -> first result                : {page['warm_first_result_ms']:7.1f} ms "
          f"(assets over the wire: {page['warm_asset_wire_bytes']} B)")
    wire = page["wire_bytes"]
    print(f"page weight, cold, over the wire           : {sum(wire.values())} B  {wire}")
    print(f"page weight on disk (uncompressed)         : {sum(page['disk_bytes'].values())} B  {page['disk_bytes']}")
    print("\n== /v1/embeddings (HTTP, keep-alive) vs semindex.embed in process ==")
    print(f"{'batch':>5} {'format':>7} {'in-proc p50':>12} {'HTTP p50':>10} {'ratio':>6}   "
          f"{'in-proc/s':>10} {'HTTP/s':>8} {'ratio':>6}")
    for r in emb:
        print(f"{r['batch']:>5} {r['format']:>7} {r['inproc_p50_ms']:>9.1f} ms {r['http_p50_ms']:>7.1f} ms "
              f"{r['http_p50_ms'] / r['inproc_p50_ms']:>6.2f}   {r['inproc_texts_s']:>10.1f} {r['http_texts_s']:>8.1f} "
              f"{r['http_texts_s'] / r['inproc_texts_s']:>6.2f}")
    print("(ratio p50: HTTP / in-process, lower is better; ratio texts/s: HTTP / in-process, higher is better)")


if __name__ == "__main__":
    main()
