"""`lmtune finetune` and `lmtune eval` end to end: pretrain tiny -> finetune -> eval, on fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES, invoke, write_config

CHECKPOINT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny BERT pretrained briefly on text that covers the fixtures' vocabulary."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("pretrained")
    config = write_config(
        root / "pretrain.yaml",
        output_dir=str(root / "run"),
        device="cpu",
        model={"preset": "tiny", "hidden_size": 64, "intermediate_size": 128},
        tokenizer={"vocab_size": 256},
        data={"train": [str(FIXTURES / "animals.txt"), str(FIXTURES / "reviews" / "train.jsonl")], "txt_unit": "line", "max_length": 32},
        train={"batch_size": 16, "max_steps": 20, "eval_every": None, "save_every": None},
    )
    result = invoke(CliRunner(), "pretrain", config)
    assert result.exit_code == 0, result.output
    return root / "run" / "final"


def finetune_config(tmp_path: Path, checkpoint: Path, task: str, ext: str = "jsonl", **data) -> Path:
    folder = FIXTURES / task
    return write_config(
        tmp_path / f"{task}.yaml",
        output_dir=str(tmp_path / "run"),
        seed=0,
        device="cpu",
        model={"checkpoint": str(checkpoint)},
        data={
            "train": [str(folder / f"train.{ext}")],
            "validation": [str(folder / f"validation.{ext}")],
            "test": [str(folder / f"test.{ext}")],
            "max_length": 32,
            **data,
        },
        train={"batch_size": 16, "lr": 1.0e-3, "epochs": 3, "eval_every": "epoch", "save_every": None, "log_every": 10},
    )


@pytest.mark.slow
def test_finetune_then_eval_a_learnable_task(tmp_path, runner, pretrained):
    from transformers import AutoModelForSequenceClassification, pipeline

    config = finetune_config(tmp_path, pretrained, "reviews")
    result = invoke(runner, "finetune", config)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "manifest.json", "metrics.jsonl", "best", "final"}
    assert {p.name for p in (run / "best").iterdir()} == CHECKPOINT_FILES
    assert json.loads((run / "manifest.json").read_text())["problem"] == "single_label"

    result = invoke(runner, "eval", config)
    assert result.exit_code == 0, result.output
    out = run / "eval-test"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "predictions.jsonl", "confusion_matrix.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9  # chance is 0.5
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == metrics["n"] == 120
    agree = sum(p["gold"] == p["predicted"] for p in predictions) / len(predictions)
    assert agree == pytest.approx(metrics["accuracy"])
    assert sum(sum(row) for row in metrics["confusion_matrix"]) == 120
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # best/ is an ordinary classifier with the real label names
    model = AutoModelForSequenceClassification.from_pretrained(run / "best")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    classify = pipeline("text-classification", model=str(run / "best"), device="cpu")
    assert classify("a wonderful superb film")[0]["label"] == "positive"
    assert classify("an awful dreadful film")[0]["label"] == "negative"

    # lmtune predict agrees with the pipeline and keeps the input order
    texts = ["an awful dreadful film", "a wonderful superb film", "the trip was grim and nasty"]
    result = invoke(runner, "predict", run / "best", *texts, "--all-scores")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == [classify(t)[0]["label"] for t in texts] == ["negative", "positive", "negative"]
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 for r in rows)

    # predict's default precision is eval's (auto), so it gives eval's accuracy; fp32 and int8 (int8 linear
    # layers) keep the accuracy and nearly every label
    test = FIXTURES / "reviews" / "test.jsonl"
    gold = [json.loads(line)["label"] for line in test.read_text().splitlines()]
    labels = {}
    for precision in ("auto", "fp32", "int8"):
        result = invoke(runner, "predict", run / "best", "--input", test, "--precision", precision)
        assert result.exit_code == 0, result.output
        labels[precision] = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert sum(a == b for a, b in zip(labels["auto"], gold)) / len(gold) == pytest.approx(metrics["accuracy"])
    for precision in ("fp32", "int8"):
        assert sum(a == b for a, b in zip(labels[precision], gold)) / len(gold) >= metrics["accuracy"] - 0.02
        assert sum(a == b for a, b in zip(labels[precision], labels["auto"])) >= len(gold) - 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "ext", "data", "sets", "metric", "threshold"),
    [
        ("multilabel", "jsonl", {}, ["train.epochs=4"], "f1_micro", 0.8),
        ("regression", "jsonl", {}, ["train.epochs=4"], "pearson", 0.8),
        # the label is the sentiment of the second text: at chance unless the pair column reaches the model
        ("pairs", "csv", {"text_column": "first", "text_pair_column": "second"}, ["train.epochs=4"], "accuracy", 0.85),
    ],
)
def test_other_problems_end_to_end(tmp_path, runner, pretrained, task, ext, data, sets, metric, threshold):
    config = finetune_config(tmp_path, pretrained, task, ext, **data)
    result = invoke(runner, "finetune", config, *[arg for s in sets for arg in ("--set", s)])
    assert result.exit_code == 0, result.output
    expected = {"multilabel": "multi_label", "regression": "regression", "pairs": "single_label"}[task]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["problem"] == expected
    result = invoke(runner, "eval", config)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "eval-test" / "metrics.json").read_text())
    assert metrics[metric] >= threshold, metrics


def test_a_fine_tuned_checkpoint_keeps_its_input_length_for_eval_predict_and_pipeline(tmp_path, runner, pretrained):
    """Fine-tuned at data.max_length=8, the checkpoint cuts inputs at 8 tokens wherever it is used, unless
    eval is told another length."""
    from transformers import AutoTokenizer, pipeline

    config = finetune_config(tmp_path, pretrained, "reviews", max_length=8)
    result = invoke(runner, "finetune", config, "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    best = tmp_path / "run" / "best"
    assert AutoTokenizer.from_pretrained(best).model_max_length == 8
    rows = [json.loads(line) for line in (FIXTURES / "reviews" / "test.jsonl").read_text().splitlines()]
    test = tmp_path / "long.jsonl"  # two reviews a line: about 14 tokens, so a cut at 8 drops words
    test.write_text("".join(json.dumps({"text": a["text"] + " " + b["text"], "label": a["label"]}) + "\n"
                            for a, b in zip(rows[::2], rows[1::2])))

    def eval_scores(*sets: str) -> list[list[float]]:
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        args = [a for s in sets for a in ("--set", s)]
        result = invoke(runner, "eval", best, "--data", test, "--output-dir", out, "--precision", "fp32", *args)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["scores"] for line in (out / "predictions.jsonl").read_text().splitlines()]

    own = eval_scores()
    assert own == eval_scores("data.max_length=8")
    assert own != eval_scores("data.max_length=32")  # longer inputs do change the scores

    texts = [json.loads(line)["text"] for line in test.read_text().splitlines()[:5]]
    result = invoke(runner, "predict", best, *texts, "--all-scores", "--precision", "fp32")  # the pipeline's
    assert result.exit_code == 0, result.output
    predicted = [json.loads(line)["scores"] for line in result.stdout.splitlines()]
    classify = pipeline("text-classification", model=str(best), device="cpu", top_k=None)
    for text, scores, row in zip(texts, predicted, own[:5]):
        from_pipeline = {r["label"]: r["score"] for r in classify([text], truncation=True)[0]}
        assert scores == pytest.approx(from_pipeline, abs=1e-5)
        assert scores == pytest.approx(row, abs=1e-5)  # what eval gave the same text


def test_eval_of_a_masked_lm_gives_perplexity(tmp_path, runner, pretrained):
    result = invoke(runner, "eval", pretrained, "--data", FIXTURES / "animals.txt", "--set", "data.txt_unit=line",
                    "--set", "data.max_length=32", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["kind"] == "masked-lm"
    assert 1.0 < metrics["perplexity"] < 256  # better than uniform over the vocabulary


# ----------------------------------------------------------------------------------------------
# Bad input: clear message, exit code 2, nothing written


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("rows", "validation", "extra", "message"),
    [
        ([{"text": "a b", "stars": 1}] * 8, None, [], "its columns are text, stars"),
        ([{"text": "good", "label": "x"}, {"text": "bad", "label": "y"}] * 4, [{"text": "ok", "label": "z"}] * 2, [], "never had: 'z'"),
        ([{"text": "good", "label": "x"}] * 8, None, [], "at least two classes"),
        ([{"text": "good", "label": "x"}, {"text": "bad", "label": 3}] * 4, None, [], "mixes label types"),
        ([{"text": "good", "label": 0.5}, {"text": "bad", "label": "high"}] * 4, None, ["--set", "finetune.problem=regression"], "not a number"),
        ([{"text": "good", "label": None}, {"text": "bad", "label": "y"}] * 4, None, [], "has no label"),
    ],
    ids=["missing-column", "unseen-label", "single-class", "mixed-types", "non-numeric-regression", "missing-label"],
)
def test_bad_labelled_data(tmp_path, runner, pretrained, rows, validation, extra, message):
    data = {"train": [_jsonl(tmp_path / "train.jsonl", rows)], "max_length": 32}
    if validation:
        data["validation"] = [_jsonl(tmp_path / "val.jsonl", validation)]
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"), model={"checkpoint": str(pretrained)},
                          data=data, train={"max_steps": 2})
    result = invoke(runner, "finetune", config, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_checkpoint_that_is_not_a_model(tmp_path, runner):
    (tmp_path / "notamodel").mkdir()
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"),
                          model={"checkpoint": str(tmp_path / "notamodel")},
                          data={"train": [str(FIXTURES / "reviews" / "train.jsonl")]}, train={"max_steps": 2})
    result = invoke(runner, "finetune", config)
    assert result.exit_code == 2
    assert "no config.json" in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_is_refused_quickly_offline(tmp_path, runner):
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"), model={"checkpoint": "some-org/some-model"},
                          data={"train": [str(FIXTURES / "reviews" / "train.jsonl")]}, train={"max_steps": 2})
    result = invoke(runner, "finetune", config)
    assert result.exit_code == 2
    assert "hub is not reachable" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.jsonl", '{"text": "good", "label": "x"}\n{"text": "bad", "label": \n{"text": "ok", "label": "y"}\n', "line 2 is not valid JSON"),
        ("ragged.csv", "text,label\ngood,x\nbad,y,extra\n", "Expected 2 fields in line 3"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, runner, pretrained, name, content, message):
    (tmp_path / name).write_text(content)
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "run"), model={"checkpoint": str(pretrained)},
                          data={"train": [str(tmp_path / name)]}, train={"max_steps": 2})
    result = invoke(runner, "finetune", config)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_modernbert_pretrains_finetunes_and_reloads_without_lmtune(tmp_path, runner):
    """model.arch: modernbert end to end: fill-mask learns the fixture, the classifier learns reviews,
    and both load with plain transformers."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from conftest import SOUNDS

    config = write_config(
        tmp_path / "pretrain.yaml",
        output_dir=str(tmp_path / "mlm"),
        seed=0,
        device="cpu",
        model={"arch": "modernbert", "preset": "tiny", "hidden_size": 64},
        tokenizer={"vocab_size": 256},
        data={"train": [str(FIXTURES / "animals.txt"), str(FIXTURES / "reviews" / "train.jsonl")], "txt_unit": "line", "max_length": 32},
        train={"batch_size": 32, "lr": 3.0e-3, "max_steps": 600, "eval_every": None, "save_every": None, "log_every": 50},
    )
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 0, result.output
    final = tmp_path / "mlm" / "final"
    model = AutoModelForMaskedLM.from_pretrained(final)
    assert type(model).__name__ == "ModernBertForMaskedLM"
    assert model.config.intermediate_size == 384  # the tiny preset's 512, times 2/3 for the gated FFN, to 64
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert "token_type_ids" not in tokenizer("a", "b")  # ModernBERT has no segment embeddings
    fill = pipeline("fill-mask", model=str(final), device="cpu")
    assert fill("the old cow says [MASK] .", top_k=1)[0]["token_str"] in SOUNDS

    ft = finetune_config(tmp_path, final, "reviews")
    result = invoke(runner, "finetune", ft)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "eval", ft)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "eval-test" / "metrics.json").read_text())["accuracy"] >= 0.9
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "best")
    assert type(classifier).__name__ == "ModernBertForSequenceClassification"
    assert classifier.config.classifier_pooling == "mean"


def test_checkpoint_code_does_not_run_unless_trusted(tmp_path, runner, pretrained):
    """A checkpoint whose config points at Python code shipped with it is refused by default,
    and the code never runs."""
    import shutil

    checkpoint = tmp_path / "shady"
    shutil.copytree(pretrained, checkpoint)
    marker = tmp_path / "code-ran"
    (checkpoint / "shady_code.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig\nclass ShadyConfig(BertConfig):\n    model_type = 'shady'\n"
    )
    config = json.loads((checkpoint / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "shady_code.ShadyConfig"}
    config["model_type"] = "shady"  # no built-in class to fall back on: only the shipped code could load it
    (checkpoint / "config.json").write_text(json.dumps(config))
    ft = finetune_config(tmp_path, checkpoint, "reviews")
    result = invoke(runner, "finetune", ft)
    assert result.exit_code == 2, result.output
    assert "trust_remote_code" in result.output
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["finetune.select_metric=f1_marco"], "finetune.select_metric 'f1_marco' is not an evaluation metric"),
        (["train.grad_accum=30"], "one step needs 30 (train.grad_accum=30)"),
        (["model.hf_config={hidden_act: gelu}"], "finetune keeps the checkpoint's config"),
    ],
    ids=["misspelled-select-metric", "grad-accum-beyond-the-data", "hf-config"],
)
def test_mistakes_seen_only_in_training_are_refused_before_the_run_dir(tmp_path, runner, pretrained, sets, message):
    config = finetune_config(tmp_path, pretrained, "reviews")  # 400 rows: 25 batches of 16
    result = invoke(runner, "finetune", config, *(a for s in sets for a in ("--set", s)))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_eval_into_a_path_that_cannot_be_a_dir_is_refused(tmp_path, runner, pretrained):
    (tmp_path / "taken").write_text("a file")
    result = invoke(runner, "eval", pretrained, "--data", FIXTURES / "animals.txt", "--output-dir", tmp_path / "taken")
    assert result.exit_code == 2, result.output
    assert "the eval output dir" in result.stderr and "exists and is a file" in result.stderr
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.slow
def test_max_windows_reads_what_lies_past_max_length(tmp_path, runner, pretrained):
    """The sentiment words come after 30 neutral ones: cut at 16 tokens, a classifier is at chance;
    read as windows, it learns the task, keeps its windows in the checkpoint, and eval and predict
    read the same windows."""
    import random

    from transformers import AutoConfig

    neutral = "the a movie film book meal trip day show story was is very quite really".split()
    rng = random.Random(0)
    folder = tmp_path / "long"
    folder.mkdir()
    reviews = {n: [json.loads(line) for line in (FIXTURES / "reviews" / f"{n}.jsonl").read_text().splitlines()]
               for n in ("train", "validation", "test")}
    for name, rows in reviews.items():
        with open(folder / f"{name}.jsonl", "w") as handle:
            for row in rows:
                text = " ".join(rng.choice(neutral) for _ in range(30)) + " " + row["text"]
                handle.write(json.dumps({"text": text, "label": row["label"]}) + "\n")

    def accuracy(run: Path, *sets: str) -> float:
        config = write_config(
            tmp_path / "long.yaml", output_dir=str(run), seed=0, device="cpu", model={"checkpoint": str(pretrained)},
            data={"train": [str(folder / "train.jsonl")], "validation": [str(folder / "validation.jsonl")],
                  "test": [str(folder / "test.jsonl")], "max_length": 16},
            train={"batch_size": 16, "lr": 1.0e-3, "epochs": 4, "eval_every": "epoch", "save_every": None, "log_every": 50},
        )
        args = [a for s in sets for a in ("--set", s)]
        result = invoke(runner, "finetune", config, *args)
        assert result.exit_code == 0, result.output
        result = invoke(runner, "eval", config, *args)
        assert result.exit_code == 0, result.output
        return json.loads((run / "eval-test" / "metrics.json").read_text())["accuracy"]

    assert accuracy(tmp_path / "cut") < 0.7  # 120 test rows, chance 0.5
    windowed = tmp_path / "windows"
    assert accuracy(windowed, "data.max_windows=4") >= 0.9
    assert AutoConfig.from_pretrained(windowed / "best").lmtune_max_windows == 4

    # eval of the checkpoint alone reads its own windows; told one window, it is back at chance
    def checkpoint_eval(*sets: str) -> dict:
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        result = invoke(runner, "eval", windowed / "best", "--data", folder / "test.jsonl", "--output-dir", out,
                        *[a for s in sets for a in ("--set", s)])
        assert result.exit_code == 0, result.output
        return json.loads((out / "metrics.json").read_text())

    own = checkpoint_eval()
    assert own["max_windows"] == 4 and own["accuracy"] >= 0.9
    assert checkpoint_eval("data.max_windows=1")["accuracy"] < 0.7

    # predict gives the scores eval gave, text by text (both in fp32, so to 1e-5 whatever the batching)
    out = tmp_path / "eval-fp32"
    result = invoke(runner, "eval", windowed / "best", "--data", folder / "test.jsonl", "--output-dir", out, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["precision"] == "fp32"
    texts = [json.loads(line)["text"] for line in (folder / "test.jsonl").read_text().splitlines()[:8]]
    result = invoke(runner, "predict", windowed / "best", *texts, "--all-scores", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    predicted = [json.loads(line)["scores"] for line in result.stdout.splitlines()]
    evaluated = [json.loads(line)["scores"] for line in (out / "predictions.jsonl").read_text().splitlines()[:8]]
    for p, e in zip(predicted, evaluated):
        assert p == pytest.approx(e, abs=1e-5)
