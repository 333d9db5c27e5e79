"""scripts/baseline.py --predictions and scripts/results.py paired: TF-IDF's test predictions written in
`lmtune eval`'s layout, and the text-by-text comparison of a model's seeds against them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_script, read_jsonl

REVIEWS = Path(__file__).parent / "fixtures" / "reviews"

results = load_script("results")


@pytest.fixture(scope="module")
def tfidf(tmp_path_factory) -> tuple[Path, dict]:
    """baseline.py on the reviews fixture: its predictions dir and its --json result."""
    out = tmp_path_factory.mktemp("baseline")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "baseline.py"), str(REVIEWS), "--json", str(out / "results.json"),
         "--predictions", str(out / "predictions")],
        check=True, capture_output=True,
    )
    return out / "predictions", json.loads((out / "results.json").read_text())[0]


def test_baseline_predictions_follow_the_test_split_and_its_scores(tfidf):
    predictions_dir, result = tfidf
    rows = read_jsonl(predictions_dir / "reviews.jsonl")
    test = read_jsonl(REVIEWS / "test.jsonl")
    assert [(r["text"], r["gold"]) for r in rows] == [(t["text"], t["label"]) for t in test]
    accuracy = sum(r["predicted"] == r["gold"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(result["test_accuracy"])
    assert accuracy > 0.7  # the fixture's sentiment words are easy for bag-of-words


def test_mcnemar_exact():
    assert results.mcnemar_exact(0, 0) == 1.0
    assert results.mcnemar_exact(3, 3) == 1.0
    assert results.mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)
    assert results.mcnemar_exact(6, 0) == results.mcnemar_exact(0, 6)
    assert results.mcnemar_exact(2, 10) == pytest.approx(0.03857421875)  # 2 * P(X <= 2), X ~ Binomial(12, 1/2)


def _write_run(root: Path, seed: int, rows: list[dict]) -> Path:
    path = root / "reviews" / "model" / f"seed-{seed}" / "eval-test" / "predictions.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_paired_counts_each_side_per_seed(tfidf, tmp_path, monkeypatch, capsys):
    reference = read_jsonl(tfidf[0] / "reviews.jsonl")
    labels = sorted({r["gold"] for r in reference})
    wrong_label = {label: next(x for x in labels if x != label) for label in labels}
    for r in reference[:3]:  # bag-of-words reads the fixture perfectly: make it miss three texts
        r["predicted"] = wrong_label[r["gold"]]
    predictions_dir = tmp_path / "baseline"
    predictions_dir.mkdir()
    (predictions_dir / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference), encoding="utf-8")
    tfidf_right = [i for i, r in enumerate(reference) if r["predicted"] == r["gold"]]
    tfidf_wrong = [i for i, r in enumerate(reference) if r["predicted"] != r["gold"]]
    assert len(tfidf_right) >= 5 and len(tfidf_wrong) == 3
    # seed 0: right on every text TF-IDF misses, wrong on 5 it gets right; seed 1: TF-IDF's own answers
    seed0 = [dict(r, predicted=r["gold"]) for r in reference]
    for i in tfidf_right[:5]:
        seed0[i]["predicted"] = wrong_label[seed0[i]["gold"]]
    results_root = tmp_path / "results"
    _write_run(results_root, 0, seed0)
    _write_run(results_root, 1, reference)
    monkeypatch.setattr(results, "RESULTS", results_root)
    monkeypatch.setattr(results, "BASELINE_PREDICTIONS", predictions_dir)
    results.paired(type("Args", (), {"tasks": ["reviews"], "models": ["model"]})())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| reviews")]
    n, only_ours = len(reference), len(tfidf_wrong)
    assert lines == [
        f"| reviews | model | 0 | {n} | {only_ours} | 5 | {results.mcnemar_exact(only_ours, 5):.3f} |",
        f"| reviews | model | 1 | {n} | 0 | 0 | 1.000 |",
    ]


def test_paired_refuses_predictions_of_other_texts(tfidf, tmp_path, monkeypatch):
    predictions_dir, _ = tfidf
    reference = read_jsonl(predictions_dir / "reviews.jsonl")
    _write_run(tmp_path / "results", 0, list(reversed(reference)))
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(results, "BASELINE_PREDICTIONS", predictions_dir)
    with pytest.raises(SystemExit, match="do not hold the same test texts"):
        results.paired(type("Args", (), {"tasks": ["reviews"], "models": ["model"]})())


def test_average_is_the_mean_of_the_final_weights_and_the_last_checkpoints(tmp_path, monkeypatch):
    """results.py average: a loadable masked LM whose every weight is the mean of final/ and the newest
    checkpoints before it, its tied embeddings still tied."""
    import argparse

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    from conftest import tiny_config

    monkeypatch.setattr(results, "PRETRAINED", tmp_path / "runs" / "cpu-hour")
    run = tmp_path / "runs" / "cpu-hour+t"
    config = tiny_config(tmp_path, output_dir=str(run), train__max_steps=7, train__save_every=2, train__keep_last=10)
    subprocess.run([sys.executable, "-m", "lmtune", "pretrain", str(config)], check=True, capture_output=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]

    results.average(argparse.Namespace(tag="t", last=3))  # final/ (step 7), step-6 and step-4
    averaged = AutoModelForMaskedLM.from_pretrained(tmp_path / "runs" / "cpu-hour+t-lawa3" / "final")
    weights = {name: p.detach() for name, p in averaged.named_parameters()}
    final = load_file(run / "final" / "model.safetensors")
    step4, step6 = (load_file(run / "checkpoints" / s / "model.safetensors") for s in ("step-4", "step-6"))
    untied = [name for name in weights if name in final and name in step4]
    assert len(untied) > 10
    for name in untied:
        torch.testing.assert_close(weights[name], (final[name] + step4[name] + step6[name]) / 3)
    assert not torch.equal(weights[untied[0]], final[untied[0]])  # the steps moved the weights: the mean differs
    embeddings = averaged.get_input_embeddings().weight
    assert averaged.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()  # still tied

    with pytest.raises(SystemExit, match="4 checkpoints before its last step; it has 3"):
        results.average(argparse.Namespace(tag="t", last=5))  # more weights than the run kept: refused
    assert not (tmp_path / "runs" / "cpu-hour+t-lawa5").exists()


def test_adapt_continues_a_model_on_one_tasks_training_text(tmp_path, monkeypatch):
    """results.py adapt: the model pretrained further on data/TEXT/train.jsonl alone, registered as
    MODEL+adaptN-TEXT, with its own tokenizer kept."""
    import argparse

    from transformers import AutoTokenizer

    from conftest import FIXTURES, tiny_config

    base = tmp_path / "base"
    config = tiny_config(tmp_path, output_dir=str(base), train__max_steps=4)
    subprocess.run([sys.executable, "-m", "lmtune", "pretrain", str(config)], check=True, capture_output=True)
    text = tmp_path / "data" / "tweets" / "train.jsonl"
    text.parent.mkdir(parents=True)
    lines = (FIXTURES / "animals.txt").read_text().splitlines()
    text.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines if line.strip()))
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results, "ADAPTED", tmp_path / "adapted")
    (tmp_path / "recipe").mkdir()
    recipe = tiny_config(tmp_path / "recipe", model={"arch": "bert"})  # the recipe's config: its sizes are the base's
    monkeypatch.setattr(results, "PRETRAIN_CONFIG", recipe)
    monkeypatch.setitem(results.MODELS, "lmtune-30-run", (base / "final", "", "a base"))

    results.adapt(argparse.Namespace(model="lmtune-30-run", text="tweets", minutes=1, lr=1e-3, set=["train.max_steps=3"]))
    out = tmp_path / "adapted" / "lmtune-30-run+adapt1-tweets"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["init_from"] == str(base / "final")
    from lmtune.config import load_config

    assert load_config(out / "config.yaml").data.train == [str(text)]  # the task's text alone
    assert AutoTokenizer.from_pretrained(out / "final").get_vocab() == AutoTokenizer.from_pretrained(base / "final").get_vocab()
    assert results._adapted_what(out.name) == "lmtune-30-run, then 1 more minutes of pretraining on data/tweets/train.jsonl"
    assert results._adapted_what("lmtune-30-run+adapt5-recipe") == "lmtune-30-run, then 5 more minutes of pretraining on the recipe's own data"


def _finetuned(results_root: Path, variant: str, seed: int, accuracy: float, overrides: tuple[str, ...] = ()) -> None:
    """A finished fine-tuning run of spam under results_root/spam/VARIANT/seed-N: the config it would have
    written (the shipped configs/finetune/spam.yaml with `overrides`) and its test metrics."""
    from lmtune.config import load_config, to_yaml

    run = results_root / "spam" / variant / f"seed-{seed}"
    (run / "eval-test").mkdir(parents=True)
    cfg = load_config(
        REPO / "configs" / "finetune" / "spam.yaml", [f"model.checkpoint=/models/{variant.partition('@')[0]}", *overrides],
        cwd=REPO, values={"output_dir": str(run), "seed": seed},
    )
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "eval-test" / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "f1_macro": accuracy - 0.01}))


def test_summary_pools_the_shipped_configs_runs_of_each_budget(tmp_path, monkeypatch, capsys):
    root = tmp_path / "results"
    _finetuned(root, "a", 0, 0.90)
    _finetuned(root, "a", 1, 0.92)
    _finetuned(root, "b@again", 0, 0.94)  # a tagged run with the shipped config still counts
    _finetuned(root, "b@lr", 0, 0.50, ("train.lr=1.0e-3",))  # another config does not
    _finetuned(root, "c@lr", 0, 0.99, ("train.lr=1.0e-3",))  # nor does a model with no shipped-config run
    _finetuned(root, "random", 0, 0.80)
    _finetuned(root, "random@more", 0, 0.85, ("train.epochs=5",))  # the better no-pretraining setting is shown
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps([{"task": "spam", "test_accuracy": 0.95, "test_f1_macro": 0.94}]))
    monkeypatch.setattr(results, "RESULTS", root)
    monkeypatch.setattr(results, "BASELINES", baselines)
    results.summary(type("Args", (), {"tasks": ["spam"], "budget": ["15 min=a,b", "30 min=c"]})())
    out = capsys.readouterr().out
    assert "| task | TF-IDF | no pretraining | lmtune 15 min | lmtune 30 min |" in out
    row = next(line for line in out.splitlines() if line.startswith("| spam"))
    assert row == "| spam | 0.9500 / 0.9400 | 0.8500 / 0.8400 | 0.9200 ± 0.0200 / 0.9100 ± 0.0200 (3 runs, 2 pretrainings) |  |"
    assert "spam, no pretraining: its best setting, train.epochs=5.0 (2 measured)" in out
    assert "spam, 30 min: no run with the shipped config for c" in out


def test_summary_refuses_a_budget_without_models():
    with pytest.raises(SystemExit, match="LABEL=MODEL"):
        results.summary(type("Args", (), {"tasks": ["spam"], "budget": ["60"]})())
