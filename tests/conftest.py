"""Shared test set-up: no network, a private datasets cache, tiny configs and a CLI runner."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

# before datasets/transformers are imported anywhere: never touch the network or the user's cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="lmtune-test-datasets-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A script that starts the suite in the background (`pytest &`) hands it an ignored SIGINT, and
# lmtune, like any program, leaves an ignored SIGINT ignored: give the Ctrl-C tests (and the
# processes they start) Python's usual SIGINT again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import yaml  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lmtune.cli import app  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
SOUNDS = {"moo", "woof", "meow", "quack", "baa", "hoot", "roar", "buzz"}


def load_script(name: str):
    """scripts/NAME.py as a module, registered under NAME (dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run the CLI in-process and return the result (exit_code, stdout, stderr)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def micro_batches_per_step(run: Path, per_epoch: int) -> list[int]:
    """How many micro-batches each logged step of `run` read (all processes together), from the
    fractional epoch its train records carry; `per_epoch`: micro-batches in the full steps of an epoch.
    Needs train.log_every=1 and no epoch wrap."""
    from lmtune.runs import read_metrics

    epochs = [r["epoch"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    return [round((b - a) * per_epoch) for a, b in zip([0.0, *epochs], epochs)]


def simulate_crash(run: Path, last_saved: int) -> None:
    """Leave `run` as a crash right after its checkpoint step-`last_saved` would: no final/ model and no
    later checkpoint, so `--resume` starts from step-`last_saved`."""
    shutil.rmtree(run / "final")
    for checkpoint in (run / "checkpoints").glob("step-*"):
        if int(checkpoint.name.removeprefix("step-")) > last_saved:
            shutil.rmtree(checkpoint)


def assert_same_weights(expected: dict, actual: dict) -> None:
    """Two state dicts hold the same tensors under the same names, bit for bit."""
    import torch

    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def assert_same_grads(expected, actual, atol: float) -> None:
    """Every parameter of model `actual` has the gradient of its namesake in model `expected`, to `atol`."""
    import torch

    theirs = dict(expected.named_parameters())
    for name, p in actual.named_parameters():
        assert torch.allclose(p.grad, theirs[name].grad, atol=atol), name


def write_config(path: Path, **sections) -> Path:
    """Write a YAML config file from keyword sections and return its path."""
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def tiny_config(tmp_path: Path, train_files: list[str] | None = None, **overrides) -> Path:
    """A 2-layer, 64-wide BERT on the animals fixture: trains a step in milliseconds."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "device": "cpu",
        "model": {"arch": "bert", "preset": "tiny", "hidden_size": 64, "intermediate_size": 128},
        "tokenizer": {"vocab_size": 128},
        "data": {"train": train_files or [str(FIXTURES / "animals.txt")], "txt_unit": "line", "max_length": 32},
        "train": {"batch_size": 16, "lr": 2.0e-3, "max_steps": 6, "eval_every": None, "save_every": None, "log_every": 2},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    return write_config(tmp_path / "config.yaml", **cfg)
