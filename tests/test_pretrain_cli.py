"""`lmtune pretrain` end to end through the CLI: real files in, a Hugging Face checkpoint out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import FIXTURES, REPO, SOUNDS, assert_same_weights, invoke, micro_batches_per_step, simulate_crash, tiny_config
from lmtune.config import load_config
from lmtune.runs import read_metrics


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Learning: a real run that must learn the fixture's regularity


@pytest.mark.slow
def test_pretrain_learns_and_reloads_with_plain_transformers(tmp_path, runner):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, pipeline

    config = tiny_config(
        tmp_path,
        model={"arch": "bert", "preset": "tiny"},  # 2 layers x 128
        train={"batch_size": 32, "lr": 2.0e-3, "max_steps": 400, "eval_every": 200, "save_every": 200, "log_every": 20},
    )
    # fp32 on every CPU: in bf16 (what `auto` picks on CPUs with native bf16) the same 400 steps learn
    # the sounds less surely, and a test must give one answer on every machine
    result = invoke(runner, "pretrain", config, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"

    # the exact run-dir layout
    assert files_under(run) == {
        "config.yaml",
        "manifest.json",
        "metrics.jsonl",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/tokenizer_config.json",
        "checkpoints/step-200/model.safetensors",
        "checkpoints/step-200/optimizer.pt",
        "checkpoints/step-200/rng.pt",
        "checkpoints/step-200/state.json",
        "checkpoints/step-200/tokenizer.json",
        "checkpoints/step-200/tokenizer_config.json",
    }

    # the loss falls and the model learned the sounds
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [200, 400]
    assert train[-1]["loss"] < 0.6 * train[0]["loss"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[-1]["eval_masked_accuracy"] > 0.5
    assert train[-1]["tokens_per_s"] > 0

    # plain transformers, no lmtune
    model = AutoModelForMaskedLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert isinstance(model, BertForMaskedLM)
    assert model.config.vocab_size % 64 == 0 and len(tokenizer) <= model.config.vocab_size
    assert model.config.hidden_dropout_prob == 0.0
    fill = pipeline("fill-mask", model=str(run / "final"), device="cpu")
    predictions = fill("the old cow says [MASK] .", top_k=1)
    assert predictions[0]["token_str"] in SOUNDS, predictions

    # the manifest and the resolved config say what ran
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["placement"]["device"] == "cpu"
    assert manifest["placement"]["precision"] == "fp32"
    assert manifest["seed"] == 0 and len(manifest["data"]["fingerprint"]) == 64
    # where the time went: every phase timed, training (which includes the final save) the last
    timings = manifest["timings"]
    assert list(timings) == ["load_s", "tokenizer_s", "model_s", "pack_s", "train_s"]
    assert all(v > 0 for v in timings.values())
    assert load_config(run / "config.yaml").train.max_steps == 400


def test_pretrain_roberta_with_whole_word_masking(tmp_path, runner):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, RobertaForMaskedLM

    config = tiny_config(tmp_path, model={"arch": "roberta", "preset": "tiny", "hidden_size": 64, "intermediate_size": 128})
    result = invoke(runner, "pretrain", config, "--set", "mlm.whole_word=true", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert isinstance(model, RobertaForMaskedLM)
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1
    assert model.config.max_position_embeddings == 514
    ids = tokenizer("the cow says moo")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)


def test_init_from_continues_pretraining_a_checkpoint(tmp_path, runner):
    """model.init_from pretrains a checkpoint further: its weights, tokenizer and sizes, not a new model's,
    and the result reloads with plain transformers."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    (tmp_path / "base").mkdir()
    base_config = tiny_config(tmp_path / "base", train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 60, "log_every": 1})
    assert invoke(runner, "pretrain", base_config, "--precision", "fp32").exit_code == 0
    base = tmp_path / "base" / "run"
    base_losses = [r["loss"] for r in read_metrics(base / "metrics.jsonl") if r["type"] == "train"]

    config = tiny_config(
        tmp_path,
        model={"init_from": str(base / "final")},
        tokenizer={"vocab_size": 8192},  # not used: the checkpoint brings its tokenizer
        train={"batch_size": 16, "lr": 1.0e-3, "max_steps": 6, "log_every": 1},
    )
    result = invoke(runner, "pretrain", config, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    # it starts where the base run ended, far below a new model's first loss
    assert losses[0] < 0.7 * base_losses[0], (losses[:3], base_losses[:3], base_losses[-3:])
    assert abs(losses[0] - base_losses[-1]) < 0.35 * base_losses[-1], (losses[:3], base_losses[-3:])

    model = AutoModelForMaskedLM.from_pretrained(run / "final")
    assert isinstance(model, BertForMaskedLM)
    assert model.config.hidden_size == 64 and model.config.hidden_dropout_prob == 0.0
    assert AutoTokenizer.from_pretrained(run / "final").get_vocab() == AutoTokenizer.from_pretrained(base / "final").get_vocab()
    before = load_file(base / "final" / "model.safetensors")
    after = load_file(run / "final" / "model.safetensors")
    assert before.keys() == after.keys() and not torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["init_from"] == str(base / "final") and manifest["model"]["arch"] == "bert"


def test_init_from_problems_stop_before_the_run_dir(tmp_path, runner):
    from transformers import AutoConfig, BertForSequenceClassification

    missing = tiny_config(tmp_path, model={"init_from": str(tmp_path / "nowhere")})
    result = invoke(runner, "pretrain", missing)
    assert result.exit_code == 2 and "is not a directory" in result.stderr, result.output

    (tmp_path / "base").mkdir()
    base_config = tiny_config(tmp_path / "base", train={"max_steps": 2})
    assert invoke(runner, "pretrain", base_config, "--precision", "fp32").exit_code == 0
    base = tmp_path / "base" / "run" / "final"
    classifier = tmp_path / "classifier"
    config = AutoConfig.from_pretrained(base)
    config.num_labels = 2
    BertForSequenceClassification(config).save_pretrained(classifier)
    shutil.copy(base / "tokenizer.json", classifier)
    shutil.copy(base / "tokenizer_config.json", classifier)
    result = invoke(runner, "pretrain", tiny_config(tmp_path, model={"init_from": str(classifier)}))
    assert result.exit_code == 2 and "is a fine-tuned classifier" in result.stderr, result.output

    result = invoke(runner, "pretrain", tiny_config(tmp_path, model={"init_from": str(base)}, data={"train": [str(FIXTURES / "animals.txt")], "txt_unit": "line", "max_length": 1024}))
    assert result.exit_code == 2 and "1024" in result.stderr, result.output
    assert not (tmp_path / "run").exists()


def test_resume_reaches_bitwise_identical_weights(tmp_path, runner):
    """A run resumed from its step-4 checkpoint ends with exactly the weights of the uninterrupted run."""
    config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 8, "save_every": 4, "keep_last": 5, "eval_every": None})
    assert invoke(runner, "pretrain", config, "--precision", "fp32").exit_code == 0
    run = tmp_path / "run"
    full = load_file(run / "final" / "model.safetensors")

    # simulate a crash right after step 4: the later checkpoint and the final model never got written
    simulate_crash(run, last_saved=4)
    result = invoke(runner, "pretrain", config, "--precision", "fp32", "--resume")
    assert result.exit_code == 0, result.output
    resumed = load_file(run / "final" / "model.safetensors")
    assert_same_weights(full, resumed)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert steps[-1] == 8


def test_a_batch_ramp_trains_reads_more_data_per_step_late_and_resumes_bitwise(tmp_path, runner):
    """train.batch_ramp: the first steps take one micro-batch, the later ones train.grad_accum (the logged
    epoch advances faster once the ramp is done), and a crash mid-ramp resumes to the same weights."""
    train = {"batch_size": 4, "grad_accum": 3, "batch_ramp": 0.5, "lr": 2.0e-3, "max_steps": 12, "save_every": 3,
             "keep_last": 5, "eval_every": None, "log_every": 1}
    config = tiny_config(tmp_path, train=train)
    result = invoke(runner, "pretrain", config, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "71 steps per epoch of 12 sequences (from 4 in the first 50% of the budget)" in " ".join(result.output.split())
    run = tmp_path / "run"
    assert micro_batches_per_step(run, 71 * 3) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3]  # an epoch: 71 full steps of 3
    full = load_file(run / "final" / "model.safetensors")
    simulate_crash(run, last_saved=3)  # step 3 of 12: still on the ramp
    result = invoke(runner, "pretrain", config, "--precision", "fp32", "--resume")
    assert result.exit_code == 0, result.output
    assert_same_weights(full, load_file(run / "final" / "model.safetensors"))


def test_resume_uses_the_checkpoints_tokenizer_not_the_cache(tmp_path, runner):
    """Resumed with another data.cache_dir, the run takes the checkpoint's tokenizer instead of training a
    new one (tokenizer training is not bit-for-bit deterministic), and still ends with the uninterrupted
    run's weights. A checkpoint without one (an older lmtune's) rebuilds it with a warning."""
    config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 8, "save_every": 4, "keep_last": 5, "eval_every": None})
    first = ["--precision", "fp32", "--set", f"data.cache_dir={tmp_path / 'cache-a'}"]
    assert invoke(runner, "pretrain", config, *first).exit_code == 0
    run = tmp_path / "run"
    full = load_file(run / "final" / "model.safetensors")
    assert (run / "checkpoints" / "step-4" / "tokenizer.json").read_bytes() == (run / "final" / "tokenizer.json").read_bytes()

    simulate_crash(run, last_saved=4)
    other_cache = tmp_path / "cache-b"
    result = invoke(runner, "pretrain", config, "--precision", "fp32", "--resume", "--set", f"data.cache_dir={other_cache}")
    assert result.exit_code == 0, result.output
    assert not (other_cache / "lmtune-tokenizers").exists()  # no tokenizer was trained
    resumed = load_file(run / "final" / "model.safetensors")
    assert_same_weights(full, resumed)

    simulate_crash(run, last_saved=4)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run / "checkpoints" / "step-4" / name).unlink()
    result = invoke(runner, "pretrain", config, *first, "--resume")
    assert result.exit_code == 0, result.output
    assert "holds none" in " ".join(result.output.split()), result.output


def test_resume_with_a_probe_packs_whole_documents_and_ends_bitwise_equal(tmp_path, runner):
    """The probe's truncating calls leave their truncation in the tokenizer a checkpoint saves; a resumed
    run that tokenizes the text again (here with another data.cache_dir, as after the cache was cleared)
    must still pack each document whole (the chapter's paragraphs run past max_length), or it trains on
    other blocks."""
    reviews = FIXTURES / "reviews"
    config = tiny_config(
        tmp_path,
        data={"train": [str(FIXTURES / "corpus" / "chapter-001.txt")], "txt_unit": "paragraph", "max_length": 16},
        train={"batch_size": 4, "lr": 2.0e-3, "max_steps": 8, "eval_every": 2, "save_every": 4, "keep_last": 5, "log_every": 1},
        probe={"train": str(reviews / "train.jsonl"), "validation": str(reviews / "validation.jsonl")},
    )
    first = ["--precision", "fp32", "--set", f"data.cache_dir={tmp_path / 'cache-a'}"]
    assert invoke(runner, "pretrain", config, *first).exit_code == 0
    run = tmp_path / "run"
    full = load_file(run / "final" / "model.safetensors")
    saved = json.loads((run / "checkpoints" / "step-4" / "tokenizer.json").read_text())
    assert saved["truncation"] is not None  # what the resumed run's tokenizer carries

    simulate_crash(run, last_saved=4)
    result = invoke(runner, "pretrain", config, "--precision", "fp32", "--resume", "--set", f"data.cache_dir={tmp_path / 'cache-b'}")
    assert result.exit_code == 0, result.output
    assert_same_weights(full, load_file(run / "final" / "model.safetensors"))


def test_resume_in_bf16_gives_the_same_loss_curve(tmp_path, runner):
    """In bf16 autocast the resumed run logs the loss curve of the uninterrupted one."""
    config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 8, "save_every": 4, "keep_last": 5, "eval_every": None, "log_every": 1})
    assert invoke(runner, "pretrain", config, "--precision", "bf16").exit_code == 0
    run = tmp_path / "run"
    full = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    simulate_crash(run, last_saved=4)
    assert invoke(runner, "pretrain", config, "--precision", "bf16", "--resume").exit_code == 0
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert len(resumed) == 8  # the records of steps 5-8 from the first run were replaced, not repeated
    assert resumed == pytest.approx(full, rel=1e-3)


def test_second_run_reuses_the_tokenization_cache(tmp_path, runner):
    cache = tmp_path / "cache"
    config = tiny_config(tmp_path, data={"train": [str(FIXTURES / "animals.txt")], "txt_unit": "line", "max_length": 32, "cache_dir": str(cache)})
    assert invoke(runner, "pretrain", config).exit_code == 0
    first = files_under(cache)
    assert any("cache-" in name for name in first)  # map results were cached
    assert any("lmtune-blocks-" in name and name.endswith(".npy") for name in first)  # the packed blocks too
    assert invoke(runner, "pretrain", config, "--output-dir", tmp_path / "run2").exit_code == 0
    assert files_under(cache) == first  # nothing recomputed


def test_pretrain_on_mixed_formats_and_directories(tmp_path, runner):
    config = tiny_config(
        tmp_path,
        data={"train": [str(FIXTURES / "corpus"), str(FIXTURES / "corpus-chapter1.jsonl")], "text_column": "body", "max_length": 32},
        tokenizer={"vocab_size": 256},
    )
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["files"] == 4


def test_module_entry_point_and_exit_code_in_a_subprocess(tmp_path):
    config = tiny_config(tmp_path, data={"train": [str(tmp_path / "missing.txt")]})
    proc = subprocess.run([sys.executable, "-m", "lmtune", "pretrain", str(config)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "missing.txt does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# Bad input: a clear message, exit code 2, nothing written


def _bad_latin1(tmp_path: Path) -> str:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    return str(path)


def _empty(tmp_path: Path) -> str:
    path = tmp_path / "empty.txt"
    path.write_text("")
    return str(path)


def _textless_dir(tmp_path: Path) -> str:
    folder = tmp_path / "notext"
    folder.mkdir()
    (folder / "image.png").write_bytes(b"\x89PNG")
    return str(folder)


def _binary(tmp_path: Path) -> str:
    path = tmp_path / "blob.txt"
    path.write_bytes(b"text\x00\x01\x02")
    return str(path)


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda tmp: str(tmp / "nope.txt"), "does not exist"),
        (_empty, "is empty"),
        (_textless_dir, "holds no"),
        (_bad_latin1, "not UTF-8"),
        (_binary, "looks binary"),
        (lambda tmp: str(tmp / "*.jsonl"), "matches no"),
    ],
    ids=["missing", "empty", "dir-without-text", "latin1", "binary", "glob-no-match"],
)
def test_bad_data_files(tmp_path, runner, make_file, message):
    config = tiny_config(tmp_path, data={"train": [make_file(tmp_path)], "txt_unit": "line", "max_length": 32})
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lrr=1"], "Did you mean 'train.lr'"),
        (["--set", "tokenizer.vocab_size=10"], "tokenizer.vocab_size=10"),
        (["--set", "data.max_length=1024"], "position limit of 512"),
        (["--set", "model.num_attention_heads=3"], "not divisible"),
        (["--set", "train.lr=[oops"], "not valid YAML"),
        (["--set", "train.batch_size=0"], "train.batch_size"),
        (["--precision", "fp16"], "fp16"),
        (["--device", "cuda"], "no CUDA"),
        (["--device", "tpu"], "device"),
        (["--set", "train.max_steps=null"], "nothing bounds the run"),
        (["--set", "train.batch_ramp=0.5"], "set grad_accum above 1"),
        (["--set", "train.batch_ramp=0.5", "--set", "train.grad_accum=2", "--set", "train.epochs=1"], "not epochs"),
    ],
)
def test_bad_config_or_flags(tmp_path, runner, args, message):
    config = tiny_config(tmp_path)
    result = invoke(runner, "pretrain", config, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_existing_run_is_refused_and_left_untouched(tmp_path, runner):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 2
    assert "--overwrite" in result.stderr
    assert files_under(run) == {"precious.txt"}

    # --overwrite replaces runs, never a dir that holds something else (tests/test_runs.py)
    result = invoke(runner, "pretrain", config, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "not an lmtune run dir" in result.stderr
    assert files_under(run) == {"precious.txt"}


def test_resume_without_checkpoint_is_refused(tmp_path, runner):
    result = invoke(runner, "pretrain", tiny_config(tmp_path), "--resume")
    assert result.exit_code == 2
    assert "no complete checkpoint" in result.stderr


def test_too_little_text_for_one_batch(tmp_path, runner):
    small = tmp_path / "small.txt"
    small.write_text("the cow says moo .\nthe dog says woof .\n" * 3)
    config = tiny_config(tmp_path, data={"train": [str(small)], "txt_unit": "line", "max_length": 32})
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 2
    assert "train.batch_size" in result.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# The other commands


def test_version_and_help(runner):
    from lmtune import __version__

    result = invoke(runner, "--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"lmtune {__version__}"
    listed = invoke(runner, "--help").stdout
    for command in ("pretrain", "finetune", "eval", "predict", "config"):
        assert command in listed


def test_config_show_prints_the_resolved_config(tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("train: {lr: 0.001, max_steps: 10}\ndata: {train: [corpus/*.txt]}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noutput_dir: runs/x\ntrain: {batch_size: 8}\n")
    result = invoke(runner, "config", "show", "child.yaml", "--set", "train.lr=3e-4")
    assert result.exit_code == 0, result.output
    import yaml

    shown = yaml.safe_load(result.stdout)
    assert shown["train"] == {**shown["train"], "lr": 3e-4, "max_steps": 10, "batch_size": 8}
    assert shown["output_dir"] == str(tmp_path / "runs" / "x")
    assert shown["data"]["train"] == [str(tmp_path / "corpus" / "*.txt")]


def test_config_validate_reports_each_file(tmp_path, runner):
    good = tiny_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\ntrain: {max_steps: 1, lrr: 2}\ndata: {train: [a.txt]}\n")
    assert invoke(runner, "config", "validate", good).exit_code == 0
    result = invoke(runner, "config", "validate", good, bad)
    assert result.exit_code == 2
    assert "ok: " in result.stdout and "train.lrr" in result.stderr


def test_every_shipped_config_validates(runner):
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs
    result = invoke(runner, "config", "validate", *configs)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, runner):
    import signal
    import time

    config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 1.0e-3, "max_steps": 100000, "save_every": None, "eval_every": None, "log_every": 1})
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmtune", "pretrain", str(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    saved_step = int(checkpoints[0].name.split("-")[1])
    assert saved_step >= 3

    result = invoke(runner, "pretrain", config, "--resume", "--set", f"train.max_steps={saved_step + 2}")
    assert result.exit_code == 0, result.output
    steps = [r["step"] for r in read_metrics(metrics) if r["type"] == "train"]
    assert steps[-1] == saved_step + 2


def test_resume_refuses_config_drift_unless_forced(tmp_path, runner):
    config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 4, "save_every": 2, "eval_every": None})
    assert invoke(runner, "pretrain", config).exit_code == 0
    result = invoke(runner, "pretrain", config, "--resume", "--set", "train.lr=0.1")
    assert result.exit_code == 2
    assert "train.lr: 0.002 -> 0.1" in result.stderr and "--force" in result.stderr
    # budget changes are fine
    assert invoke(runner, "pretrain", config, "--resume", "--set", "train.max_steps=6").exit_code == 0
    result = invoke(runner, "pretrain", config, "--resume", "--set", "train.lr=0.1", "--set", "train.max_steps=8", "--force")
    assert result.exit_code == 0, result.output


def test_probe_reports_linear_probe_accuracy_at_each_evaluation(tmp_path, runner):
    """With a probe section, every evaluation fits a logistic regression on frozen features of the
    labelled reviews, and logs its held-out accuracy (broken features, all equal, would score chance)."""
    reviews = FIXTURES / "reviews"
    config = tiny_config(
        tmp_path,
        model={"arch": "modernbert", "preset": "tiny", "hidden_size": 64},
        tokenizer={"vocab_size": 256},
        data={"train": [str(reviews / "train.jsonl")], "max_length": 32},
        train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 60, "eval_every": 30, "save_every": None, "log_every": 10},
        probe={"train": str(reviews / "train.jsonl"), "validation": str(reviews / "validation.jsonl")},
    )
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 0, result.output
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60]
    assert all(0.0 <= r["eval_probe_accuracy"] <= 1.0 and "eval_probe_macro_f1" in r for r in evals)
    assert evals[-1]["eval_probe_accuracy"] >= 0.75  # two balanced classes: chance is 0.5
    assert "probe_accuracy" in result.output


def test_probe_problems_are_config_errors(tmp_path, runner):
    config = tiny_config(tmp_path, train={"max_steps": 4, "eval_every": None}, probe={"train": []})
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 2
    assert "probe.train is empty" in result.output and "train.eval_every is null" in result.output
    regression = FIXTURES / "regression" / "train.jsonl"
    config = tiny_config(tmp_path, train={"max_steps": 4, "eval_every": 2}, probe={"train": str(regression)})
    result = invoke(runner, "pretrain", config)
    assert result.exit_code == 2 and "one class label per row" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_sigkill_mid_training_then_resume_ends_bitwise_equal(tmp_path):
    """A process killed with SIGKILL, then resumed, ends with the weights of an uninterrupted run,
    and its metrics log holds every step once."""
    import signal
    import time

    config = tiny_config(
        tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 300, "save_every": 10, "keep_last": 2, "eval_every": None, "log_every": 1}
    )
    cmd = [sys.executable, "-m", "lmtune", "pretrain", str(config), "--precision", "fp32", "--output-dir"]
    full = subprocess.run([*cmd, str(tmp_path / "full")], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count('"train"') >= 25:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"

    result = subprocess.run([*cmd, str(killed), "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    a, b = load_file(tmp_path / "full" / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert_same_weights(a, b)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 301))


@pytest.mark.slow
def test_compiled_encoder_trains_like_the_eager_one_and_saves_plain_weights(tmp_path, runner):
    """train.compile gives the eager run's loss curve (to rounding) and a checkpoint with the usual keys."""
    curves, weights = {}, {}
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 6, "log_every": 1, "eval_every": None,
                                              "save_every": None, "compile": compiled})
        result = invoke(runner, "pretrain", config, "--precision", "fp32", "--output-dir", out)
        assert result.exit_code == 0, result.output
        curves[compiled] = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]
        weights[compiled] = load_file(out / "final" / "model.safetensors")
    assert len(curves[True]) == 6 and curves[True][-1] < curves[True][0]
    assert curves[True] == pytest.approx(curves[False], rel=1e-3)
    assert weights[True].keys() == weights[False].keys()
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(tmp_path / "run-True" / "final")  # loads with no lmtune


def test_compile_without_a_cpp_compiler_is_refused_before_the_run_dir(tmp_path, runner, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    config = tiny_config(tmp_path, train={"max_steps": 2, "compile": True})
    result = invoke(runner, "pretrain", config, "--device", "cpu")
    assert result.exit_code == 2
    assert "C++ compiler" in result.stderr and "train.compile: false" in result.stderr
    assert not (tmp_path / "run").exists()


def test_resume_of_a_run_whose_config_predates_a_key(tmp_path, runner):
    """A config.yaml written before lmtune had a key (here train.compile) resumes: the key compares as its default."""
    config = tiny_config(tmp_path, train={"batch_size": 16, "lr": 2.0e-3, "max_steps": 4, "save_every": 2, "eval_every": None})
    assert invoke(runner, "pretrain", config).exit_code == 0
    saved = tmp_path / "run" / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    assert raw["train"].pop("compile") is False
    saved.write_text(yaml.safe_dump(raw))
    result = invoke(runner, "pretrain", config, "--resume", "--set", "train.max_steps=6")
    assert result.exit_code == 0, result.output
    result = invoke(runner, "pretrain", config, "--resume", "--set", "train.max_steps=8", "--set", "train.lr=0.1")
    assert result.exit_code == 2, result.output
    assert "train.lr: 0.002 -> 0.1" in result.stderr

    saved.write_text("train: {lr: 0.002,\n")  # damaged: a clear refusal, not a traceback
    result = invoke(runner, "pretrain", config, "--resume")
    assert result.exit_code == 2 and "is not valid YAML" in result.stderr, result.output
