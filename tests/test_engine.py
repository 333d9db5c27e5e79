"""The training engine's fault handling: non-finite values, broken checkpoints, resumed metrics."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lmtune import devices, engine, runs
from lmtune.config import TrainSection
from lmtune.errors import NumericalError, TrainingInterrupted


class Line(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, 4))


def nan_task(bad_batches: set[int]) -> engine.Task:
    """A 4x4 least-squares problem whose loss is NaN on the listed (global) micro-batches."""
    model = Line()
    seen = {"n": 0}

    def batches(epoch: int, first: int):
        for i in range(first, 8):
            yield {"x": torch.full((2, 4), float(epoch * 8 + i + 1))}

    def loss(model, batch):
        index = seen["n"]
        seen["n"] += 1
        value = ((batch["x"] @ model.w) ** 2).mean() * 1e-4
        return (value * float("nan") if index in bad_batches else value), {}

    return engine.Task(
        model=model, batches=batches, batches_per_epoch=8, loss=loss, save=lambda m, p: p.mkdir(exist_ok=True), count=lambda b: 2
    )


def train(task: engine.Task, tmp_path: Path, resume_from: Path | None = None, **train) -> engine.TrainResult:
    cfg = TrainSection(**{"lr": 0.1, "max_steps": 6, "eval_every": None, "save_every": None, "log_every": 1, **train})
    metrics = runs.MetricsLog(tmp_path / "metrics.jsonl")
    try:
        return engine.train(task, cfg, devices.resolve("cpu", "fp32"), tmp_path, metrics, resume_from=resume_from)
    finally:
        metrics.close()


def test_a_nan_loss_stops_the_run_by_default(tmp_path):
    with pytest.raises(NumericalError, match="the loss became nan at step 3"):
        train(nan_task({2}), tmp_path)
    assert not (tmp_path / "final").exists()


def test_nonfinite_skip_skips_the_update_and_counts_it(tmp_path):
    task = nan_task({2})
    result = train(task, tmp_path, nonfinite="skip")
    assert result.steps == 6
    records = [r for r in runs.read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "train"]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 0, 1, 1, 1, 1]
    assert all(r["loss"] == r["loss"] for r in records)  # no NaN reached the log
    assert torch.isfinite(task.model.w).all()


def test_nonfinite_skip_still_stops_after_many_bad_steps_in_a_row(tmp_path):
    with pytest.raises(NumericalError, match="10 steps in a row"):
        train(nan_task(set(range(1, 100))), tmp_path, nonfinite="skip", max_steps=20)


def test_skipped_updates_leave_the_weights_unchanged(tmp_path):
    """A skipped step applies no update: a one-step run whose only batch is bad keeps the initial weights."""
    task = nan_task({0})
    train(task, tmp_path, nonfinite="skip", max_steps=1)
    assert torch.equal(task.model.w, torch.ones(4, 4))


def save(tmp_path: Path, step: int) -> Path:
    model = Line()
    optimizer = torch.optim.AdamW(model.parameters())
    return engine.save_checkpoint(tmp_path, model, optimizer, None, {"step": step, "elapsed_s": 1.0}, keep=5)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: (p / "state.json").unlink(), "missing state.json"),
        (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:40]), "model.safetensors is corrupt"),
        (lambda p: (p / "optimizer.pt").write_bytes(b"\0" * 100), "optimizer.pt is corrupt"),
        (lambda p: (p / "state.json").write_text("{\"step\": "), "state.json is unreadable"),
    ],
)
def test_a_broken_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage, problem):
    older = save(tmp_path, 2)
    newer = save(tmp_path, 4)
    damage(newer)
    assert engine.latest_checkpoint(tmp_path) == older
    assert problem in caplog.text and "step-4" in caplog.text


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    """A kill while saving leaves only a .tmp-step-N dir, which is never taken for a checkpoint."""
    older = save(tmp_path, 2)
    partial = tmp_path / "checkpoints" / ".tmp-step-4"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert engine.latest_checkpoint(tmp_path) == older


def test_truncate_metrics_drops_records_after_the_checkpoint_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"type": "train", "step": s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + "\n" + '{"type": "tra')  # killed mid-write
    assert [r["step"] for r in runs.read_metrics(path)] == [1, 2, 3, 4]
    runs.truncate_metrics(path, 2)
    assert [r["step"] for r in runs.read_metrics(path)] == [1, 2]


@pytest.mark.parametrize("kernel", ["auto", "foreach", "loop"])
def test_every_adamw_kernel_takes_the_same_step(kernel):
    torch.manual_seed(0)
    reference = torch.nn.Linear(8, 4)
    cfg = TrainSection(lr=1e-2, max_steps=1)
    models = [reference, torch.nn.Linear(8, 4)]
    models[1].load_state_dict(reference.state_dict())
    start = reference.weight.detach().clone()
    optimizers = [engine.build_optimizer(models[0], cfg, torch.device("cpu"), kernel="loop"),
                  engine.build_optimizer(models[1], cfg, torch.device("cpu"), kernel=kernel)]
    assert optimizers[1].defaults["fused"] is (kernel == "auto")
    assert len(optimizers[1].param_groups) == 2  # weights decay, the bias does not
    x = torch.randn(16, 8)
    for model, optimizer in zip(models, optimizers):
        for _ in range(3):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(models[1].weight, start)  # the steps moved the weights


def sigint_task(at: int, times: int = 1) -> engine.Task:
    """nan_task with no bad batches, whose loss sends this process SIGINT `times` times at micro-batch `at`."""
    task = nan_task(set())
    inner, seen = task.loss, {"n": 0}

    def loss(model, batch):
        if seen["n"] == at:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        seen["n"] += 1
        return inner(model, batch)

    task.loss = loss
    return task


def test_ctrl_c_stops_after_the_step_and_its_checkpoint_resumes_bitwise(tmp_path):
    """The first Ctrl-C lets the step under way finish and saves it: resuming from that checkpoint gives
    the same weights, bit for bit, as a run that was never interrupted."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3: saved .*step-3"):
        train(sigint_task(at=2), tmp_path / "a")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    checkpoint = tmp_path / "a" / "checkpoints" / "step-3"
    assert engine.checkpoint_step(checkpoint) == 3

    resumed = nan_task(set())
    train(resumed, tmp_path / "a", resume_from=checkpoint)
    straight = nan_task(set())
    train(straight, tmp_path / "b")
    assert torch.equal(resumed.model.w, straight.model.w)
    assert not torch.equal(straight.model.w, torch.ones(4, 4))


def test_a_second_ctrl_c_interrupts_at_once_and_saves_nothing(tmp_path):
    with pytest.raises(TrainingInterrupted, match="in the middle of step 3, before it could stop cleanly: no checkpoint was saved"):
        train(sigint_task(at=2, times=2), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def recording_task() -> tuple[engine.Task, list[float]]:
    """nan_task with no bad batches that records, micro-batch by micro-batch, which batch the loss saw
    (epoch * 8 + index + 1)."""
    task = nan_task(set())
    inner, seen = task.loss, []

    def loss(model, batch):
        seen.append(float(batch["x"][0, 0]))
        return inner(model, batch)

    task.loss = loss
    return task, seen


def test_a_batch_ramp_grows_the_step_in_equal_stages_and_wraps_epochs_whole(tmp_path):
    """grad_accum=4 ramped over the first half of 6 steps: 1, 2, 3 micro-batches, then 4. A step the rest
    of an epoch cannot fill starts the next epoch, as a full-size step always has."""
    assert [engine.grad_accum_at(TrainSection(grad_accum=4, batch_ramp=0.5, max_steps=6), s / 6) for s in range(6)] == [1, 2, 3, 4, 4, 4]
    task, seen = recording_task()
    result = train(task, tmp_path, grad_accum=4, batch_ramp=0.5)
    assert result.steps == 6
    # epoch 0: 1 | 2 3 | 4 5 6, its last 2 batches too few for 4; epoch 1: 9-12 | 13-16; epoch 2: 17-20
    assert seen == [1, 2, 3, 4, 5, 6, *range(9, 17), *range(17, 21)]
    records = [r for r in runs.read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "train"]
    assert [r["epoch"] for r in records] == [0.125, 0.375, 0.75, 1.5, 2.0, 2.5]


def test_a_ramped_run_resumes_bitwise_after_ctrl_c(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ramp = {"grad_accum": 4, "batch_ramp": 0.5}
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3"):
        train(sigint_task(at=4), tmp_path / "a", **ramp)  # micro-batch 4 is in step 3 (1 + 2 + 3)
    checkpoint = tmp_path / "a" / "checkpoints" / "step-3"
    assert json.loads((checkpoint / "state.json").read_text())["position"] == 6
    resumed, seen = recording_task()
    train(resumed, tmp_path / "a", resume_from=checkpoint, **ramp)
    assert seen == [*range(9, 21)]  # no batch replayed, none skipped
    straight = nan_task(set())
    train(straight, tmp_path / "b", **ramp)
    assert torch.equal(resumed.model.w, straight.model.w)


def test_a_checkpoint_without_its_data_position_resumes_from_its_step(tmp_path):
    """Checkpoints written before the batch ramp carry only the step; they resume where they stopped."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run = {"grad_accum": 2, "max_steps": 8}
    with pytest.raises(TrainingInterrupted, match="interrupted at step 5"):
        train(sigint_task(at=8), tmp_path / "a", **run)
    checkpoint = tmp_path / "a" / "checkpoints" / "step-5"
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state.pop("epoch"), state.pop("position")) == (1, 2)  # 8 batches an epoch: steps 1-4, then 5-8
    (checkpoint / "state.json").write_text(json.dumps(state))
    resumed, seen = recording_task()
    train(resumed, tmp_path / "a", resume_from=checkpoint, **run)
    assert seen == [11, 12, 13, 14, 15, 16]
    straight = nan_task(set())
    train(straight, tmp_path / "b", **run)
    assert torch.equal(resumed.model.w, straight.model.w)
