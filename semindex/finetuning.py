"""`semindex finetune`: adapt the embedding model to a user's own relevance data.

Why it is built this way:

* Training data is what search teams already hold: a BEIR folder (corpus, queries,
  qrels/SPLIT.tsv) or PAIRS.jsonl lines ``{"query", "positive", "negative"?}``.
* The loss is sentence-transformers' MultipleNegativesRankingLoss: every other
  passage in the batch is a negative for free, and each query also brings
  ``hard_negatives`` passages that semindex's OWN hybrid search (dense + BM25, in a
  temporary store holding the corpus, encoded with the base model) ranks high but
  the qrels do not mark relevant. The first ``skip_top`` such passages are skipped:
  unlabelled passages ranked above the positives are often relevant ones the
  annotators missed, and teaching the model to push them away hurts.
* Each epoch is scored with semindex's own metrics (search/evaluate.py) over the
  eval split (or a held-out tenth of the training queries), by a real semindex
  search over a pool of candidate documents, and the best epoch (the base model
  counts as epoch 0) is what gets written. The pool (positives plus the base
  model's top hybrid hits per eval query) keeps that evaluation to seconds rather
  than a re-encoding of the whole corpus each epoch.
* A test split is never trained or selected on unless the caller says ``i_know``,
  and the model card names the split used.
* ``seed`` fixes the held-out tenth, the negatives, the batch order and dropout,
  so a run is repeatable on the same machine and thread count.

This module sits above core (it uses Store/Collection search) and below cli.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core import Collection, Store
from .errors import ConfigError, InvalidInputError, ReadError
from .indexer.encoder import canonical_model_name, choose_device, resolve_model_path
from .indexer.pipeline import embedding_input
from .search.evaluate import EvalResult, evaluate

DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 32
DEFAULT_HARD_NEGATIVES = 1
DEFAULT_SEED = 42
DEFAULT_LR = 3e-5
MINE_DEPTH = 30  # hard negatives are drawn from the top MINE_DEPTH hybrid hits
SKIP_TOP = 3  # ... after skipping this many non-positive hits at the very top
MAX_POSITIVES = 3  # pairs per query at most (highest grade first): a query with 40 positives should not dominate
EVAL_POOL = 30  # candidates per eval query in the per-epoch evaluation pool
MAX_EVAL_QUERIES = 300
CARD_JSON = "semindex-finetune.json"

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainingData:
    """Queries, their graded positives and the corpus they point into, ready for training."""

    corpus: dict[str, tuple[str | None, str]]  # doc id -> (title, text)
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade > 0}
    given_negatives: dict[str, list[str]] = field(default_factory=dict)  # query id -> doc ids (PAIRS "negative")
    source: str = ""
    kind: str = "beir"  # "beir" or "pairs"


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote and how each epoch scored on the eval queries."""

    model_path: Path
    base_model: str
    data: str
    split: str
    eval_split: str
    seed: int
    epochs: int
    steps: int
    train_pairs: int
    train_queries: int
    eval_queries: int
    hard_negatives: int
    best_epoch: int
    history: list[dict[str, Any]]  # one per epoch (0 = the base model): ndcg@10, recall@100, mrr@10, loss
    seconds: float
    device: str

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch]

    @property
    def base(self) -> dict[str, Any]:
        return self.history[0]

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["model_path"] = str(self.model_path)
        out["best"] = self.best
        out["base"] = self.base
        return out


# -- data ------------------------------------------------------------------------------------------


def load_training_data(data: str | os.PathLike[str], split: str = "train") -> TrainingData:
    """A BEIR folder's ``split`` (queries with a positive qrel) or a PAIRS.jsonl file."""
    p = Path(data)
    if p.is_dir():
        return _load_beir(p, split)
    if p.is_file():
        return _load_pairs(p)
    raise InvalidInputError(f"{data}: no such BEIR folder or PAIRS.jsonl file")


def _load_beir(folder: Path, split: str) -> TrainingData:
    from .indexer.beir import load_split
    from .indexer.readers import detect_format, iter_records

    if detect_format(folder) != "beir":
        raise InvalidInputError(f"{folder} is not a BEIR folder (no corpus.jsonl or corpus.jsonl.gz)")
    queries, qrels = load_split(folder, split)
    corpus: dict[str, tuple[str | None, str]] = {}
    for rec in iter_records([folder]):
        if isinstance(rec, ReadError) or rec.id is None:
            continue
        text, title = rec.text, rec.title
        if not text.strip() and title:
            text, title = title, None
        if text.strip():
            corpus[rec.id] = (title, text)
    pos = {q: {d: g for d, g in rel.items() if g > 0 and d in corpus} for q, rel in qrels.items()}
    qs = {q: t for q, t in queries if pos.get(q)}
    if not qs:
        raise InvalidInputError(f"no query of split {split!r} in {folder} has a positive that is in the corpus")
    return TrainingData(corpus=corpus, queries=qs, qrels={q: pos[q] for q in qs}, source=str(folder), kind="beir")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _load_pairs(path: Path) -> TrainingData:
    corpus: dict[str, tuple[str | None, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negs: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{n}: not JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise InvalidInputError(f"{path}:{n}: expected an object with query and positive")
            q, pos, neg = obj.get("query"), obj.get("positive"), obj.get("negative")
            if not isinstance(q, str) or not q.strip() or not isinstance(pos, str) or not pos.strip():
                raise InvalidInputError(f"{path}:{n}: 'query' and 'positive' must be non-empty strings")
            if neg is not None and (not isinstance(neg, str) or not neg.strip()):
                raise InvalidInputError(f"{path}:{n}: 'negative' must be a non-empty string when given")
            qid = "q" + _digest(q.strip())
            queries[qid] = q.strip()
            did = "d" + _digest(pos)
            corpus[did] = (None, pos)
            qrels.setdefault(qid, {})[did] = 1
            if neg is not None:
                nid = "d" + _digest(neg)
                corpus.setdefault(nid, (None, neg))
                negs.setdefault(qid, []).append(nid)
    if not queries:
        raise InvalidInputError(f"{path}: no pairs")
    # a given negative that is also some positive of the same query is not a negative
    negs = {q: [d for d in ds if d not in qrels[q]] for q, ds in negs.items()}
    return TrainingData(corpus=corpus, queries=queries, qrels=qrels, given_negatives=negs,
                        source=str(path), kind="pairs")


def check_splits(split: str, eval_split: str | None, *, i_know: bool) -> None:
    """Training or selecting on a test split makes every later test figure a lie: refuse unless asked."""
    if i_know:
        return
    for what, s in (("--split", split), ("--eval-split", eval_split)):
        if s is not None and s.lower().startswith("test"):
            raise InvalidInputError(
                f"{what} {s} would train or select the model on a test split, which makes test figures "
                "meaningless; use train/dev (or pass --i-know / i_know=True if you really mean it)"
            )


def check_train_extra() -> None:
    """The trainer's own dependencies are an extra (most users never train): say how to get them."""
    import importlib.util

    missing = [m for m in ("datasets", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"semindex finetune needs {', '.join(missing)}: pip install 'semindex[train]'")


def held_out_tenth(qids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """(train, eval) query ids: a seeded tenth (at least one, capped) held out for model selection."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, len(order) // 10), MAX_EVAL_QUERIES)
    if len(order) < 2:
        raise InvalidInputError("finetune needs at least two training queries (one is held out for evaluation)")
    return sorted(order[n_eval:]), sorted(order[:n_eval])


# -- hard negatives -----------------------------------------------------------------------------------


def build_mining_collection(store: Store, data: TrainingData, base: str | None, *, batch_size: int = 32) -> Collection:
    """The corpus in a semindex collection encoded with ``base``: what mining and the eval pool search.
    (Keyword mining passes the torch-free ``hash`` encoder: only the full-text index is used.)"""
    coll = store.create_collection("mine", model=base, index="flat")
    coll.add(
        ({"id": did, "text": text, **({"title": title} if title else {})} for did, (title, text) in data.corpus.items()),
        batch_size=batch_size,
    )
    return coll


def candidate_lists(coll: Collection, queries: Mapping[str, str], depth: int, mode: str = "hybrid") -> dict[str, list[str]]:
    """Top ``depth`` doc ids of semindex's ``mode`` search per query (hybrid falls back to dense
    when the store has no full-text search)."""
    from .errors import ConfigError as _CE

    qids = list(queries)
    out: dict[str, list[str]] = {}
    for lo in range(0, len(qids), 256):
        part = qids[lo : lo + 256]
        texts = [queries[q] for q in part]
        try:
            res = coll.search_batch(texts, depth, mode=mode)
        except _CE:
            if mode != "hybrid":
                raise
            mode = "dense"
            res = coll.search_batch(texts, depth, mode=mode)
        for q, hits in zip(part, res):
            out[q] = [h.id for h in hits]
    return out


def pick_negatives(
    ranked: Sequence[str],
    positives: Mapping[str, int] | set[str],
    n: int,
    rng: random.Random,
    *,
    skip_top: int = SKIP_TOP,
) -> list[str]:
    """``n`` hard negatives: non-positive hits after the first ``skip_top`` of them, drawn at random
    (seeded) from the rest of the list; fewer when the list runs short."""
    pool = [d for d in ranked if d not in positives][skip_top:]
    if len(pool) <= n:
        return list(pool)
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), n))]


# -- evaluation ----------------------------------------------------------------------------------------


class PoolEvaluator:
    """nDCG@10/recall@100/MRR@10 of a model on the eval queries, by semindex search over a document pool.

    The pool is the eval queries' positives plus the base model's top ``EVAL_POOL`` hybrid
    hits for each; every epoch encodes it with the current weights into a vectors-only
    collection of a temporary store and runs semindex's dense search and metrics on it.
    """

    def __init__(self, store: Store, data: TrainingData, eval_qids: Sequence[str],
                 candidates: Mapping[str, Sequence[str]], *, batch_size: int = 64) -> None:
        self.store = store
        self.queries = [(q, data.queries[q]) for q in eval_qids]
        self.qrels = {q: dict(data.qrels[q]) for q in eval_qids}
        pool: dict[str, None] = {}
        for q in eval_qids:
            for d in list(data.qrels[q]) + list(candidates.get(q, []))[:EVAL_POOL]:
                pool[d] = None
        self.doc_ids = list(pool)
        self.texts = [embedding_input(data.corpus[d][1], data.corpus[d][0]) for d in self.doc_ids]
        self.batch_size = batch_size
        self._round = 0

    def __call__(self, model: Any) -> EvalResult:
        vecs = np.asarray(model.encode(self.texts, batch_size=self.batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
        name = f"eval-{self._round}"
        self._round += 1
        coll = self.store.create_collection(name, dimension=int(vecs.shape[1]), metric="cosine", index="flat")
        try:
            coll.add_embeddings(self.doc_ids, vecs)

            def run(texts: list[str]) -> list[list[Any]]:
                q = np.asarray(model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
                return coll.search_vectors(q, min(100, len(self.doc_ids)))

            return evaluate(run, self.queries, self.qrels, mode="dense")
        finally:
            self.store.delete_collection(name)


def _figures(r: EvalResult) -> dict[str, Any]:
    return {"ndcg@10": round(r.ndcg_at_10, 4), "recall@100": round(r.recall_at_100, 4), "mrr@10": round(r.mrr_at_10, 4)}


# -- training ---------------------------------------------------------------------------------------------


def finetune(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    base: str | None = None,
    split: str = "train",
    eval_split: str | None = "dev",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    hard_negatives: int = DEFAULT_HARD_NEGATIVES,
    learning_rate: float = DEFAULT_LR,
    device: str | None = None,
    seed: int = DEFAULT_SEED,
    i_know: bool = False,
    overwrite: bool = False,
    mine_collection: Collection | None = None,
    mine: str = "hybrid",
    max_seq_length: int | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tune ``base`` (default all-MiniLM-L6-v2) on ``data`` and write the best epoch to ``output``.

    ``data``: a BEIR folder (train on qrels/``split``.tsv) or a PAIRS.jsonl file.
    ``eval_split``: the BEIR split that picks the best epoch; when the folder has none (or
    ``data`` is PAIRS.jsonl, or ``eval_split`` is None) a seeded tenth of the training
    queries is held out instead. ``hard_negatives``: mined negatives per pair (0 = in-batch
    only). ``mine_collection``: an existing collection of the same corpus (ids as in the
    data), encoded with ``base``, to mine from instead of encoding the corpus again.
    ``mine``: the search that mines negatives and the eval pool: "hybrid" (default; the corpus
    is encoded once with ``base``), "dense", or "keyword" (BM25 only: no corpus encoding, the
    cheap choice on a CPU). ``max_seq_length``: truncate training passages to this many
    tokens (faster on a CPU); the written model keeps the base's length for use.
    ``progress``: called with {"event": "step"|"epoch"|"phase", ...} for a progress bar.
    Returns a :class:`FinetuneResult`; ``output`` works as ``--model DIR`` / ``model=DIR``.
    """
    t0 = time.perf_counter()
    check_splits(split, eval_split, i_know=i_know)
    check_train_extra()
    for name, v, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 2), ("hard_negatives", hard_negatives, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InvalidInputError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidInputError(f"learning_rate must be a positive number, got {learning_rate!r}")
    out = Path(output)
    if mine not in ("hybrid", "dense", "keyword"):
        raise InvalidInputError(f"mine must be hybrid, dense or keyword, got {mine!r}")
    if max_seq_length is not None and (isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int)
                                       or max_seq_length < 8):
        raise InvalidInputError(f"max_seq_length must be an integer >= 8, got {max_seq_length!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"{out} exists and is not empty (choose another --output)")
    dev = choose_device(device or os.environ.get("SEMINDEX_DEVICE"))
    base_name = canonical_model_name(base)
    say = progress or (lambda _e: None)

    train_data = load_training_data(data, split)
    eval_name: str
    if train_data.kind == "beir" and eval_split is not None and (Path(data) / "qrels" / f"{eval_split}.tsv").is_file():
        eval_data = load_training_data(data, eval_split)
        train_qids = sorted(train_data.queries)
        eval_qids = sorted(eval_data.queries)
        if len(eval_qids) > MAX_EVAL_QUERIES:
            eval_qids = sorted(random.Random(seed).sample(eval_qids, MAX_EVAL_QUERIES))
        for q in eval_qids:  # one data object holds both; a query id in both splits keeps its train qrels
            train_data.queries.setdefault(q, eval_data.queries[q])
            train_data.qrels.setdefault(q, eval_data.qrels[q])
        eval_name = eval_split
    else:
        train_qids, eval_qids = held_out_tenth(sorted(train_data.queries), seed)
        eval_name = f"held-out tenth of {split}" if train_data.kind == "beir" else "held-out tenth of the pairs"

    import transformers

    transformers.set_seed(seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="semindex-finetune-") as tmp:
        tmpd = Path(tmp)
        with Store(tmpd / "store", db_url="sqlite:///" + str(tmpd / "store.db"), device=dev) as store:
            if mine_collection is None:
                say({"event": "phase", "phase": f"indexing {len(train_data.corpus)} documents for mining"})
                mining = build_mining_collection(store, train_data, "hash:64" if mine == "keyword" else base_name)
            else:
                mining = mine_collection
            say({"event": "phase", "phase": "mining hard negatives"})
            need = {q: train_data.queries[q] for q in (train_qids if hard_negatives else [])}
            need.update({q: train_data.queries[q] for q in eval_qids})
            cands = candidate_lists(mining, need, MINE_DEPTH, mine)
            anchors, positives, negatives = _pairs(train_data, train_qids, cands, hard_negatives, rng)
            evaluator = PoolEvaluator(store, train_data, eval_qids, cands)

            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(resolve_model_path(base), device=dev)
            use_len: int | None = model.max_seq_length
            if max_seq_length is not None:
                model.max_seq_length = max_seq_length if use_len is None else min(use_len, max_seq_length)
            result = _train(
                model, anchors, positives, negatives, evaluator, tmpd, out,
                epochs=epochs, batch_size=batch_size, lr=learning_rate, seed=seed, device=dev, say=say,
                overwrite=overwrite, use_len=use_len,
            )
            steps, history, best_epoch = result
    res = FinetuneResult(
        model_path=out.resolve(), base_model=base_name, data=str(Path(data).resolve()), split=split,
        eval_split=eval_name, seed=seed, epochs=epochs, steps=steps, train_pairs=len(anchors),
        train_queries=len(train_qids), eval_queries=len(eval_qids), hard_negatives=hard_negatives,
        best_epoch=best_epoch, history=history, seconds=round(time.perf_counter() - t0, 1), device=dev,
    )
    write_card(res)
    return res


def _pairs(
    data: TrainingData, qids: Sequence[str], cands: Mapping[str, Sequence[str]], n_neg: int, rng: random.Random
) -> tuple[list[str], list[str], list[list[str]]]:
    """(query, positive, [negatives]) rows: at most MAX_POSITIVES per query, highest grade first;
    given (PAIRS) negatives first, then mined ones, every row with exactly ``n_neg`` negatives."""
    anchors: list[str] = []
    positives: list[str] = []
    negatives: list[list[str]] = []
    for q in qids:
        pos = sorted(data.qrels[q].items(), key=lambda kv: -kv[1])[:MAX_POSITIVES]
        for did, _ in pos:
            negs: list[str] = []
            if n_neg:
                given = [d for d in data.given_negatives.get(q, []) if d not in data.qrels[q]]
                mined = pick_negatives(cands.get(q, []), data.qrels[q], n_neg, rng)
                negs = list(dict.fromkeys(given + mined))[:n_neg]
                if len(negs) < n_neg:  # a short list: fill from random corpus documents that are not positives
                    ids = list(data.corpus)
                    while len(negs) < n_neg and len(ids) > len(data.qrels[q]) + len(negs):
                        d = ids[rng.randrange(len(ids))]
                        if d not in data.qrels[q] and d not in negs:
                            negs.append(d)
                if len(negs) < n_neg:
                    continue
            title, text = data.corpus[did]
            anchors.append(data.queries[q])
            positives.append(embedding_input(text, title))
            negatives.append([embedding_input(data.corpus[d][1], data.corpus[d][0]) for d in negs])
    if not anchors:
        raise InvalidInputError("no training pair could be built (too few documents for the hard negatives asked)")
    return anchors, positives, negatives


def _train(
    model: Any,
    anchors: list[str],
    positives: list[str],
    negatives: list[list[str]],
    evaluator: PoolEvaluator,
    tmpd: Path,
    out: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    say: Progress,
    overwrite: bool,
    use_len: int | None,
) -> tuple[int, list[dict[str, Any]], int]:
    from datasets import Dataset  # type: ignore[import-untyped]
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    columns: dict[str, list[str]] = {"anchor": anchors, "positive": positives}
    for i in range(len(negatives[0]) if negatives else 0):
        columns[f"negative_{i + 1}"] = [row[i] for row in negatives]
    dataset = Dataset.from_dict(columns)
    batch_size = min(batch_size, len(anchors))
    steps_per_epoch = max(1, math.ceil(len(anchors) / batch_size))
    total = steps_per_epoch * epochs
    stage = tmpd / "best"
    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "ndcg": -1.0}

    def score(epoch: int, loss: float | None) -> None:
        train_len = model.max_seq_length
        model.max_seq_length = use_len  # evaluate (and save) at the length the model is used with
        try:
            r = evaluator(model)
            fig = {"epoch": epoch, **_figures(r), "loss": None if loss is None else round(loss, 4)}
            history.append(fig)
            if r.ndcg_at_10 > best["ndcg"]:
                best.update(epoch=epoch, ndcg=r.ndcg_at_10)
                if stage.exists():
                    shutil.rmtree(stage)
                model.save(str(stage), create_model_card=False)
        finally:
            model.max_seq_length = train_len
        say({"event": "epoch", **fig, "best_epoch": best["epoch"], "total_steps": total})

    say({"event": "phase", "phase": f"evaluating the base model on {len(evaluator.queries)} queries"})
    score(0, None)

    losses: list[float] = []

    class _Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                say({"event": "step", "step": int(state.global_step), "total_steps": total, "loss": float(logs["loss"])})

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            epoch = int(round(state.epoch or 0))
            score(epoch, losses[-1] if losses else None)

    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmpd / "trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=0.1,  # a float is a ratio of the total steps (transformers v5)
        weight_decay=0.01,
        seed=seed,
        data_seed=seed,
        batch_sampler="no_duplicates",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        fp16=device.startswith("cuda"),
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model), callbacks=[_Progress()],
    )
    for cb in (PrinterCallback, ProgressCallback):  # our progress events replace the trainer's printing
        trainer.remove_callback(cb)
    trainer.train()
    steps = int(trainer.state.global_step)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(stage), str(out))
    return steps, history, int(best["epoch"])


# -- the model card -----------------------------------------------------------------------------------------


def write_card(res: FinetuneResult) -> None:
    """README.md (for people) and semindex-finetune.json (for programs) next to the weights."""
    d = res.model_path
    meta = res.as_dict()
    (d / CARD_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    rows = "\n".join(
        f"| {h['epoch']} | {h['ndcg@10']:.4f} | {h['recall@100']:.4f} | {h['mrr@10']:.4f} | "
        f"{'' if h['loss'] is None else h['loss']} |" for h in res.history
    )
    card = f"""# Fine-tuned with `semindex finetune`

- base model: `{res.base_model}`
- data: `{res.data}`
- trained on split: **{res.split}** ({res.train_queries} queries, {res.train_pairs} pairs, {res.hard_negatives} mined hard negative(s) per pair)
- model selected on: **{res.eval_split}** ({res.eval_queries} queries)
- epochs: {res.epochs}, steps: {res.steps}, seed: {res.seed}, device: {res.device}
- kept: epoch {res.best_epoch} (epoch 0 is the base model)

Per-epoch figures on the selection queries (semindex dense search over a pool of the
queries' positives and the base model's top {EVAL_POOL} hybrid hits; not a test-set figure):

| epoch | nDCG@10 | recall@100 | MRR@10 | last loss |
|---|---|---|---|---|
{rows}

Use it: `semindex index DOCS --model {d}` or `semindex reembed --collection C --model {d} --into C2`.
"""
    (d / "README.md").write_text(card, encoding="utf-8")


def read_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(model_dir) / CARD_JSON
    if not p.is_file():
        raise ConfigError(f"{model_dir} has no {CARD_JSON} (not written by semindex finetune)")
    out: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    return out
