"""`semindex finetune` on a tiny random-weight BERT: the written model, its card, determinism, refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import semindex
from semindex.errors import InvalidInputError
from semindex.finetuning import (
    CARD_JSON,
    check_splits,
    held_out_tenth,
    load_training_data,
    pick_negatives,
    read_card,
)
from tests.support import run_cli


def _weights(model_dir: Path) -> bytes:
    files = sorted(model_dir.rglob("*.safetensors")) or sorted(model_dir.rglob("*.bin"))
    assert files, f"no weights in {model_dir}"
    return b"".join(f.read_bytes() for f in files)


# Training tests are marked slow: a tiny random BERT, yet each run costs ~20 s on a loaded 2-core machine.


@pytest.fixture(scope="module")
def trained(tiny_beir: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> semindex.FinetuneResult:
    out = tmp_path_factory.mktemp("ft") / "model"
    events: list[dict[str, object]] = []
    res = semindex.finetune(tiny_beir, out, base=str(tiny_bert), epochs=2, batch_size=8, seed=7,
                            device="cpu", progress=events.append)
    res.events = events  # type: ignore[attr-defined]
    return res


@pytest.mark.slow
def test_writes_a_model_usable_as_model_dir(trained: semindex.FinetuneResult, tmp_path: Path) -> None:
    out = trained.model_path
    assert (out / "config.json").is_file() and (out / "modules.json").is_file()
    with semindex.Store(tmp_path / "s") as store:
        coll = store.collection("c", model=str(out))
        coll.add([{"id": "a", "text": "black holes form when stars collapse"}, {"id": "b", "text": "bread dough"}])
        hits = coll.search("black holes", k=2)
        assert {h.id for h in hits} == {"a", "b"}
        assert coll.model == str(out.resolve())


@pytest.mark.slow
def test_card_names_base_split_steps_seed_and_figures(trained: semindex.FinetuneResult, tiny_bert: Path,
                                                      tiny_beir: Path) -> None:
    card = read_card(trained.model_path)
    assert card["base_model"] == str(tiny_bert.resolve())
    assert card["data"] == str(tiny_beir.resolve())
    assert card["split"] == "train" and card["eval_split"] == "dev"
    assert card["seed"] == 7 and card["epochs"] == 2
    assert card["steps"] == 2 * 4  # 28 pairs / batch 8 -> 4 steps per epoch
    assert [h["epoch"] for h in card["history"]] == [0, 1, 2]
    assert card["best"]["ndcg@10"] == max(h["ndcg@10"] for h in card["history"])
    assert card["train_queries"] == 28 and card["eval_queries"] == 6
    readme = (trained.model_path / "README.md").read_text(encoding="utf-8")
    assert "trained on split: **train**" in readme and "selected on: **dev**" in readme
    assert str(tiny_bert.resolve()) in readme


@pytest.mark.slow
def test_progress_events_carry_loss_and_eval(trained: semindex.FinetuneResult) -> None:
    events = trained.events  # type: ignore[attr-defined]
    steps = [e for e in events if e["event"] == "step"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(steps) == trained.steps and all(isinstance(e["loss"], float) for e in steps)
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and all("ndcg@10" in e for e in epochs)


@pytest.mark.slow
def test_same_seed_same_model(trained: semindex.FinetuneResult, tiny_beir: Path, tiny_bert: Path,
                              tmp_path: Path) -> None:
    # the best epoch is what is written; compare a run that keeps the same epoch count and seed
    again = semindex.finetune(tiny_beir, tmp_path / "again", base=str(tiny_bert), epochs=2, batch_size=8,
                              seed=7, device="cpu")
    assert again.history == trained.history
    assert _weights(again.model_path) == _weights(trained.model_path)


@pytest.mark.slow
def test_another_seed_another_run(trained: semindex.FinetuneResult, tiny_beir: Path, tiny_bert: Path,
                                  tmp_path: Path) -> None:
    other = semindex.finetune(tiny_beir, tmp_path / "b", base=str(tiny_bert), epochs=2, batch_size=8, seed=8,
                              device="cpu")
    # other batches and other negatives: other losses
    assert [h["loss"] for h in other.history[1:]] != [h["loss"] for h in trained.history[1:]]


@pytest.mark.slow
def test_pairs_jsonl_holds_out_a_tenth(tiny_pairs: Path, tiny_bert: Path, tmp_path: Path) -> None:
    res = semindex.finetune(tiny_pairs, tmp_path / "m", base=str(tiny_bert), epochs=1, batch_size=8,
                            device="cpu")
    assert res.eval_split == "held-out tenth of the pairs"
    assert res.eval_queries == 4 and res.train_queries == 36
    card = json.loads((res.model_path / CARD_JSON).read_text(encoding="utf-8"))
    assert card["data"] == str(tiny_pairs.resolve())


@pytest.mark.slow
def test_no_eval_split_holds_out_a_tenth_of_train(tiny_beir: Path, tiny_bert: Path, tmp_path: Path) -> None:
    res = semindex.finetune(tiny_beir, tmp_path / "m", base=str(tiny_bert), epochs=1, batch_size=8,
                            eval_split="nosuch", hard_negatives=0, device="cpu")
    assert res.eval_split == "held-out tenth of train"
    assert (res.train_queries, res.eval_queries) == (26, 2)


# -- data and refusals (no training) ---------------------------------------------------------------------------


@pytest.mark.parametrize("split,eval_split", [("test", "dev"), ("train", "test"), ("TEST", None)])
def test_test_split_is_refused(split: str, eval_split: str | None, tiny_beir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="test split"):
        semindex.finetune(tiny_beir, tmp_path / "m", split=split, eval_split=eval_split)
    assert not (tmp_path / "m").exists()
    check_splits(split, eval_split, i_know=True)  # allowed when the caller says so


def test_nonempty_output_is_refused(tiny_beir: Path, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        semindex.finetune(tiny_beir, tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_pairs_file_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"query": "a", "positive": "b"}\n{"query": "a"}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"p.jsonl:2: 'query' and 'positive'"):
        load_training_data(p)
    p.write_text("not json\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"p.jsonl:1: not JSON"):
        load_training_data(p)


def test_pairs_group_by_query_and_drop_negatives_that_are_positives(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    rows = [{"query": "q", "positive": "x"}, {"query": "q", "positive": "y", "negative": "x"},
            {"query": "r", "positive": "z", "negative": "w"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = load_training_data(p)
    assert len(data.queries) == 2 and len(data.corpus) == 4
    (qid,) = [q for q, t in data.queries.items() if t == "q"]
    assert len(data.qrels[qid]) == 2 and data.given_negatives[qid] == []


def test_pick_negatives_skips_positives_and_the_top() -> None:
    ranked = ["p1", "a", "b", "p2", "c", "d", "e", "f"]
    got = pick_negatives(ranked, {"p1": 1, "p2": 1}, 2, random.Random(0), skip_top=2)
    assert len(got) == 2 and set(got) <= {"c", "d", "e", "f"}
    assert pick_negatives(ranked, {"p1": 1}, 10, random.Random(0), skip_top=5) == ["e", "f"]
    assert got == pick_negatives(ranked, {"p1": 1, "p2": 1}, 2, random.Random(0), skip_top=2)


def test_held_out_tenth_is_seeded_and_disjoint() -> None:
    qids = [f"q{i}" for i in range(50)]
    tr, ev = held_out_tenth(qids, 3)
    assert len(ev) == 5 and not set(tr) & set(ev) and set(tr) | set(ev) == set(qids)
    assert (tr, ev) == held_out_tenth(list(reversed(qids)), 3)
    assert held_out_tenth(qids, 4)[1] != ev


# -- the CLI -----------------------------------------------------------------------------------------------------


def test_cli_refuses_test_split_in_one_line(tiny_beir: Path, tmp_path: Path) -> None:
    proc = run_cli("finetune", str(tiny_beir), "--output", str(tmp_path / "m"), "--split", "test")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--i-know" in lines[0]


def test_cli_bad_pairs_file_in_one_line(tmp_path: Path) -> None:
    p = tmp_path / "pairs.jsonl"
    p.write_text("{}\n", encoding="utf-8")
    proc = run_cli("finetune", str(p), "--output", str(tmp_path / "m"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pairs.jsonl:1" in lines[0]


@pytest.mark.slow
def test_cli_finetune_then_index_with_the_model(tiny_beir: Path, tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    proc = run_cli("finetune", str(tiny_beir), "--output", str(out), "--base", str(tiny_bert), "--epochs", "1",
                   "--batch-size", "8", "--device", "cpu", "--mine", "keyword", "--max-seq-length", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["model_path"] == str(out.resolve()) and res["split"] == "train" and res["steps"] == 4
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 128
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").max_seq_length != 32  # training length is not kept
    assert "epoch 0: nDCG@10" in proc.stderr and "epoch 1: nDCG@10" in proc.stderr
    proc = run_cli("index", str(tiny_beir), "--store", str(tmp_path / "s"), "--model", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["added"] == 40


@pytest.mark.slow
def test_eval_vectors_are_finite(trained: semindex.FinetuneResult) -> None:
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(trained.model_path), device="cpu")
    v = m.encode(["a query", "another"], normalize_embeddings=True)
    assert np.isfinite(v).all() and v.shape[0] == 2
