"""Several processes: `--nproc 2` on the CPU (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_weights, micro_batches_per_step, simulate_crash, tiny_config
from lmtune.runs import read_metrics


def lmtune(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmtune", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    config = tiny_config(
        tmp_path, train={"batch_size": 8, "lr": 2.0e-3, "max_steps": 12, "eval_every": 6, "save_every": 6, "log_every": 1}
    )
    one, two = tmp_path / "one", tmp_path / "two"
    # one process accumulating 2 micro-batches of 8 == two processes with 8 each
    single = lmtune("pretrain", config, "--precision", "fp32", "--set", "train.grad_accum=2", "--output-dir", one)
    assert single.returncode == 0, single.stderr
    double = lmtune("pretrain", config, "--precision", "fp32", "--nproc", 2, "--output-dir", two)
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("pretraining done") == 1  # rank 0 reports; the others stay quiet

    def curve(run: Path, kind: str, key: str) -> list[float]:
        return [r[key] for r in read_metrics(run / "metrics.jsonl") if r["type"] == kind]

    assert len(curve(two, "train", "loss")) == 12  # one writer: no duplicated records
    assert curve(one, "train", "loss") == pytest.approx(curve(two, "train", "loss"), rel=1e-4)
    assert curve(one, "eval", "eval_loss") == pytest.approx(curve(two, "eval", "eval_loss"), rel=1e-4)
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-6"]


@pytest.mark.slow
def test_a_ramped_run_in_two_processes_grows_its_steps_together_and_resumes_bitwise(tmp_path):
    """train.batch_ramp with --nproc 2: each process takes one micro-batch a step, then train.grad_accum,
    at the same steps (the engine stops if they ever disagree), and a crash mid-ramp resumes bit for bit."""
    train = {"batch_size": 4, "grad_accum": 2, "batch_ramp": 0.5, "lr": 2.0e-3, "max_steps": 8, "save_every": 2,
             "keep_last": 5, "eval_every": None, "log_every": 1}
    config = tiny_config(tmp_path, train=train)
    run = tmp_path / "run"
    result = lmtune("pretrain", config, "--precision", "fp32", "--nproc", 2)
    assert result.returncode == 0, result.stderr
    announced = re.search(r"(\d+) steps per epoch of 16 sequences \(from 8 in the first 50% of the budget\)", " ".join(result.stderr.split()))
    assert announced, result.stderr
    assert micro_batches_per_step(run, int(announced[1]) * 4) == [2, 2, 2, 2, 4, 4, 4, 4]  # both processes' together
    full = load_file(run / "final" / "model.safetensors")
    simulate_crash(run, last_saved=2)  # step 2 of 8: still on the ramp
    resumed = lmtune("pretrain", config, "--precision", "fp32", "--nproc", 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert_same_weights(full, load_file(run / "final" / "model.safetensors"))


def test_a_failing_process_fails_the_launch_with_its_exit_code(tmp_path):
    config = tiny_config(tmp_path, data={"train": [str(tmp_path / "missing.txt")]})
    result = lmtune("pretrain", config, "--nproc", 2)
    assert result.returncode == 2
    assert "missing.txt" in result.stderr
