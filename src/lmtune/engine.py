"""The one training loop, shared by pretraining and fine-tuning.

It owns device placement, mixed precision (autocast, a gradient scaler for fp16), gradient
accumulation, clipping, AdamW with warmup and decay, the run budget (epochs, steps or wall-clock
minutes: first reached wins, and the LR schedule follows whichever is binding), periodic evaluation,
metric logging, resumable checkpoints and the final save. It knows nothing about MLM or labels: a
stage hands it a `Task` (model, batches, loss, evaluation, save).

Data order and masks are pure functions of (seed, epoch, batch index), so a checkpoint needs only its
place in the data (epoch and micro-batch) to go on: resuming replays no batch and skips none.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from lmtune import distributed
from lmtune.config import TrainSection
from lmtune.devices import Placement
from lmtune.errors import ConfigError, DataError, DeviceError, LmtuneError, NumericalError, TrainingInterrupted
from lmtune.runs import MetricsLog
from lmtune.ui import TrainingDisplay

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
MAX_SKIPPED_IN_A_ROW = 10  # with train.nonfinite: skip, this many bad updates in a row still stop the run


@dataclass
class Task:
    """What a stage hands the engine."""

    model: torch.nn.Module
    batches: Callable[[int, int], Iterator[Batch]]  # (epoch, first batch index) -> that epoch's micro-batches
    batches_per_epoch: int  # micro-batches in one epoch
    loss: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    save: Callable[[torch.nn.Module, Path], None]  # writes a Hugging Face checkpoint dir
    count: Callable[[Batch], int]  # units of work in a micro-batch (tokens or samples), for throughput
    unit: str = "tokens"
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    select_metric: str | None = None  # keep best/ by this evaluation metric (without the eval_ prefix)
    greater_is_better: bool = True
    patience: int | None = None  # stop after this many evaluations without improvement
    param_groups: list[dict[str, Any]] | None = None  # custom groups: params, weight_decay, lr_scale
    save_assets: Callable[[Path], None] | None = None  # writes what else a checkpoint needs (the tokenizer)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    stopped_by: str
    last_eval: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------------------
# Optimizer and schedule


def default_param_groups(params: list[torch.nn.Parameter], weight_decay: float, lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices decay, biases and normalisation weights (1-d tensors) do not."""
    trainable = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay, "lr_scale": lr_scale},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0, "lr_scale": lr_scale},
    ]


def check_compile(placement: Placement) -> None:
    """train.compile on the CPU needs the C++ compiler torch's inductor builds kernels with: fail before
    any work when there is none."""
    if placement.device.type != "cpu":
        return
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in candidates if c):
        raise DeviceError(
            "train.compile: torch.compile on the CPU needs a C++ compiler (g++ or clang++, or one named by $CXX) "
            "and none is on PATH: install one, or set train.compile: false"
        )


def build_optimizer(
    model: torch.nn.Module,
    cfg: TrainSection,
    device: torch.device,
    groups: list[dict[str, Any]] | None = None,
    kernel: Literal["auto", "foreach", "loop"] = "auto",
) -> torch.optim.Optimizer:
    """AdamW over `groups` (default: `default_param_groups` of the whole model).

    `kernel` auto is the fused one on CPUs and CUDA (one kernel for all parameters: faster than the
    loop); foreach and loop are torch's other two, for comparison (scripts/bench.py).
    """
    groups = [g for g in (groups or default_param_groups(list(model.parameters()), cfg.weight_decay)) if g["params"]]
    if kernel == "auto":
        choice: dict[str, bool] = {"fused": device.type in ("cpu", "cuda")}
    else:
        choice = {"fused": False, "foreach": kernel == "foreach"}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, **choice)


@dataclass(frozen=True)
class Budget:
    """What bounds the run; `progress` is the binding fraction done, in [0, 1]."""

    max_steps: int | None
    max_seconds: float | None

    @classmethod
    def from_config(cls, cfg: TrainSection, steps_per_epoch: int) -> Budget:
        limits = [s for s in (cfg.max_steps, cfg.epochs and math.ceil(cfg.epochs * steps_per_epoch)) if s]
        return cls(min(limits) if limits else None, cfg.max_minutes * 60 if cfg.max_minutes else None)

    def progress(self, steps: int, seconds: float) -> float:
        parts = []
        if self.max_steps:
            parts.append(steps / self.max_steps)
        if self.max_seconds:
            parts.append(seconds / self.max_seconds)
        return max(parts)


def grad_accum_at(cfg: TrainSection, progress: float) -> int:
    """Micro-batches (per process) in the next optimizer step: train.grad_accum, or on a batch ramp
    1, 2, ... train.grad_accum, each for an equal share of the first train.batch_ramp of the budget."""
    if not cfg.batch_ramp or progress >= cfg.batch_ramp:
        return cfg.grad_accum
    return 1 + int((cfg.grad_accum - 1) * progress / cfg.batch_ramp)


def lr_factor(cfg: TrainSection, budget: Budget, step: int, progress: float) -> float:
    """Warmup then decay, as a function of the binding progress (steps or wall-clock)."""
    if cfg.warmup_steps is not None:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        start = cfg.warmup_steps / budget.max_steps if budget.max_steps else 0.0
    else:
        fraction = 0.06 if cfg.warmup is None else cfg.warmup
        warm = min(1.0, max(progress, 1e-3) / fraction) if fraction else 1.0
        start = fraction
    q = min(max((progress - start) / max(1.0 - start, 1e-9), 0.0), 1.0)
    if cfg.scheduler == "linear":
        decay = 1.0 - q
    elif cfg.scheduler == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * q))
    else:
        decay = 1.0
    return warm * decay


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """A run's checkpoints/step-N dirs, oldest first (half-written .tmp-step-N dirs excluded)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint dir cannot be resumed from (missing, truncated or corrupt files), or None."""
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"]), float(state["elapsed_s"])
    except (ValueError, KeyError, TypeError):
        return "state.json is unreadable"
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
            for key in weights.keys():
                weights.get_slice(key)
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        return f"model.safetensors is corrupt ({exc})"
    for name in ("optimizer.pt", "rng.pt", "scaler.pt"):
        if (path / name).is_file() and not zipfile.is_zipfile(path / name):
            return f"{name} is corrupt"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that is complete and intact; broken newer ones are skipped with a warning."""
    for path in reversed(checkpoint_dirs(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was saved at."""
    return int(json.loads((path / "state.json").read_text())["step"])


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, state: dict[str, Any], keep: int,
    assets: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoints/step-N atomically (a temp dir renamed into place) and keep the newest `keep`.
    `assets` writes the stage's own files into it first (pretraining: the tokenizer it must resume with)."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"step-{state['step']}"
    tmp = root / f".tmp-step-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    if assets is not None:
        assets(tmp)
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scaler and RNG from a checkpoint dir; return its state.json."""
    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


# ----------------------------------------------------------------------------------------------
# The loop


def _evaluate(task: Task, placement: Placement) -> dict[str, float]:
    assert task.evaluate is not None
    task.model.eval()
    with torch.inference_mode(), placement.autocast():
        metrics = task.evaluate(task.model)
    task.model.train()
    return {f"eval_{k}": float(v) for k, v in metrics.items()}


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _StopRequest:
    """Ctrl-C (SIGINT) while training: the first one asks the loop to stop after the optimizer step
    under way, where a checkpoint is consistent; a second one raises KeyboardInterrupt at once. Only
    Python's default handler is taken over, and only in the main thread (where signals arrive)."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if self._installed:
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    def restore(self) -> None:
        """Python's default handler again (after training)."""
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def train(
    task: Task,
    cfg: TrainSection,
    placement: Placement,
    run_dir: Path,
    metrics: MetricsLog,
    display: TrainingDisplay | None = None,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train `task.model` until the budget in `cfg` is spent; write checkpoints, best/ and final/.

    Raises:
        DataError: when the data cannot fill a single optimizer step.
        NumericalError: when the loss stops being finite.
    """
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0  # with several processes, only rank 0 evaluates, writes and displays
    display = display if display is not None and main else TrainingDisplay(live=False)
    model = task.model.to(placement.device)
    model.train()
    if cfg.compile:  # in place: the state dict keeps its keys, so checkpoints load without lmtune
        getattr(model, "base_model", model).compile()
    params = list(model.parameters())
    if cfg.num_threads and placement.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads)
    per_step = cfg.grad_accum * world  # micro-batches of the data order consumed by one full optimizer step
    ensure_training_possible(task.batches_per_epoch, cfg, "the training data")
    steps_per_epoch = task.batches_per_epoch // per_step
    budget = Budget.from_config(cfg, steps_per_epoch)
    optimizer = build_optimizer(model, cfg, placement.device, task.param_groups)
    eval_interval = steps_per_epoch if cfg.eval_every == "epoch" else cfg.eval_every
    scaler = torch.amp.GradScaler(placement.device.type) if placement.needs_grad_scaler else None

    step, elapsed_before, epoch, position = 0, 0.0, 0, 0  # position: micro-batches of this epoch's order consumed
    skipped, skipped_in_a_row, bad_value = 0, 0, None  # updates skipped for non-finite values (train.nonfinite)
    best: dict[str, Any] | None = None
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer, scaler)
        step, elapsed_before, best = state["step"], state["elapsed_s"], state.get("best")
        skipped = state.get("skipped_steps", 0)
        # checkpoints from before the batch ramp carry only the step: every step then took per_step micro-batches
        epoch = state.get("epoch", step // steps_per_epoch)
        position = state.get("position", (step % steps_per_epoch) * per_step)
        display.message(f"resumed from {resume_from} at step {step}")
    bad_evals = 0 if best is None else best.get("bad_evals", 0)

    start = time.perf_counter()
    window_start, window_units, window_loss, window_steps = start, 0, 0.0, 0
    last_eval: dict[str, float] = {}
    eval_seconds = 0.0
    stopped_by = "budget"
    display.start(
        f"training on {placement.device} in {placement.precision}"
        + (f" in {world} processes" if world > 1 else "")
        + f": {steps_per_epoch} steps per epoch of {cfg.batch_size * per_step} sequences"
        + (f" (from {cfg.batch_size * world} in the first {cfg.batch_ramp:.0%} of the budget)" if cfg.batch_ramp else "")
        + (f", at most {budget.max_steps} steps" if budget.max_steps else "")
        + (f", at most {budget.max_seconds / 60:g} minutes" if budget.max_seconds else "")
    )

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    def checkpoint_state() -> dict[str, Any]:
        best_state = None if best is None else {**best, "bad_evals": bad_evals}
        return {
            "step": step, "elapsed_s": elapsed(), "best": best_state, "skipped_steps": skipped, "epoch": epoch, "position": position,
        }

    def run_eval() -> bool:
        """Evaluate, log, keep best/; return True when early stopping says stop."""
        nonlocal last_eval, best, bad_evals, eval_seconds
        t0 = time.perf_counter()
        last_eval = _evaluate(task, placement)
        record = {"type": "eval", "step": step, "elapsed_s": round(elapsed(), 3), **last_eval}
        metrics.write(record)
        display.evaluation(record)
        stop = False
        if task.select_metric:
            key = f"eval_{task.select_metric}"
            if key not in last_eval:
                names = ", ".join(k.removeprefix("eval_") for k in last_eval)
                raise ConfigError(f"the selection metric {task.select_metric!r} is not among the evaluation metrics: {names}")
            value = last_eval[key]
            if best is None or math.isnan(best["value"]):
                better = True
            elif math.isnan(value):
                better = False
            else:
                better = value > best["value"] if task.greater_is_better else value < best["value"]
            if better:
                best = {"metric": task.select_metric, "value": value, "step": step}
                bad_evals = 0
                task.save(model, run_dir / "best")
            else:
                bad_evals += 1
                stop = task.patience is not None and bad_evals >= task.patience
        eval_seconds += time.perf_counter() - t0
        return stop

    # from the checkpoint's clock, not this process's: every process must pick the same first step size
    progress = budget.progress(step, elapsed_before)
    done = progress >= 1.0
    stream: Iterator[Batch] | None = None
    try:
        stop_request = _StopRequest()
        while not done:
            accum = grad_accum_at(cfg, progress)  # the same in every process: progress comes from the agreed clock
            if position + accum * world > task.batches_per_epoch:  # the epoch's tail cannot fill this step
                epoch, position, stream = epoch + 1, 0, None
                continue
            if stream is None:  # this process's share: every world-th micro-batch of the epoch's order
                stream = itertools.islice(task.batches(epoch, position), rank, None, world)
            for batch in itertools.islice(stream, accum):
                batch = _to_device(batch, placement.device)
                if bad_value is None:  # after a non-finite loss the step's other micro-batches are skipped too
                    with placement.autocast():
                        loss, _ = task.loss(model, batch)
                    value = loss.item()
                    if math.isfinite(value):
                        scaled = loss / accum
                        (scaler.scale(scaled) if scaler else scaled).backward()
                        window_loss += value / accum
                    else:
                        bad_value = f"the loss became {value}"
                window_units += task.count(batch)
            position += accum * world
            clock = elapsed()
            stop_now = stop_request.requested
            if world > 1:  # every process must agree on skipping, the clock (the LR) and stopping
                bad_anywhere, clock, stop_anywhere, most, minus_least = distributed.max_over_ranks(
                    [float(bad_value is not None), clock, float(stop_now), float(accum), -float(accum)], placement.device
                )
                if most != -minus_least:  # the gradients would average different amounts of data: never go on
                    raise RuntimeError(
                        f"at step {step + 1} the processes took steps of {-minus_least:g} to {most:g} micro-batches: "
                        "they must agree on train.batch_ramp's stage"
                    )
                stop_now = bool(stop_anywhere)
                if bad_anywhere and bad_value is None:
                    bad_value = "a non-finite loss in another process"
                if bad_value is None:
                    distributed.average_gradients(params)
            progress = budget.progress(step + 1, clock)
            lr = cfg.lr * lr_factor(cfg, budget, step, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if scaler:
                scaler.unscale_(optimizer)
            norm = None
            if bad_value is None and cfg.max_grad_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            elif bad_value is None and not scaler:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if norm is not None and not scaler and not torch.isfinite(norm):  # fp16's scaler skips overflows itself
                bad_value = f"the gradient norm became {norm.item()}"
            if bad_value is not None:
                skipped += 1
                where = f"{bad_value} at step {step + 1}"
                if cfg.nonfinite == "stop" or skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW - 1:
                    why = "" if cfg.nonfinite == "stop" else f" ({MAX_SKIPPED_IN_A_ROW} steps in a row)"
                    raise NumericalError(
                        f"{where}{why}: lower train.lr (now {cfg.lr:g}), keep train.max_grad_norm set, or use "
                        "precision fp32/bf16 instead of fp16; the last checkpoint in checkpoints/ is intact"
                    )
                skipped_in_a_row += 1
                display.message(f"{where}: skipped that update (train.nonfinite: skip; {skipped} so far)")
                optimizer.zero_grad(set_to_none=True)
            elif scaler:
                scaler.step(optimizer)
                scaler.update()
                skipped_in_a_row = 0
            else:
                optimizer.step()
                skipped_in_a_row = 0
            optimizer.zero_grad(set_to_none=True)
            bad_value = None
            step += 1
            window_steps += 1
            progress = budget.progress(step, clock if world > 1 else elapsed())
            done = progress >= 1.0
            log_now = step % cfg.log_every == 0 or done
            if log_now and world > 1:
                loss_sum, units_sum = distributed.sum_over_ranks([window_loss, float(window_units)], placement.device)
                window_loss, window_units = loss_sum / world, int(units_sum)
            now = time.perf_counter()
            rate = window_units / max(now - window_start, 1e-9)
            record = {
                "type": "train",
                "step": step,
                "epoch": round(epoch + position / (steps_per_epoch * per_step), 4),
                "loss": window_loss / max(window_steps, 1),
                "lr": lr,
                f"{task.unit}_per_s": rate,
                "elapsed_s": round(elapsed(), 3),
                "progress": min(progress, 1.0),
                "eta_s": (elapsed() - eval_seconds) * (1 - progress) / progress if 0 < progress < 1 else 0.0,
                "max_steps": budget.max_steps,
            }
            if skipped:
                record["skipped_steps"] = skipped
            display.update(record, log_now)
            if log_now:
                if main:
                    metrics.write({k: v for k, v in record.items() if k != "max_steps"})
                window_start, window_units, window_loss, window_steps = now, 0, 0.0, 0
            paused = time.perf_counter()  # evaluation and saving do not count against throughput
            if task.evaluate and eval_interval and step % eval_interval == 0 and not done:
                stop = run_eval() if main else False
                if distributed.broadcast_flag(stop, placement.device):
                    done, stopped_by = True, "early stopping"
            if cfg.save_every and step % cfg.save_every == 0 and not done and main:
                save_checkpoint(run_dir, model, optimizer, scaler, checkpoint_state(), cfg.keep_last, task.save_assets)
            window_start += time.perf_counter() - paused
            if stop_now and not done:  # Ctrl-C: this step is complete, so its checkpoint is consistent
                display.close()
                if not main:
                    raise TrainingInterrupted(f"interrupted at step {step}")
                where = save_checkpoint(run_dir, model, optimizer, scaler, checkpoint_state(), cfg.keep_last, task.save_assets)
                raise TrainingInterrupted(f"interrupted at step {step}: saved {where}; continue with the same command plus --resume")
    except KeyboardInterrupt:  # a second Ctrl-C, in the middle of a step: its state is not saved
        display.close()
        last = latest_checkpoint(run_dir)
        kept = f"the last checkpoint, {last}, is intact; continue from it with --resume" if last else "no checkpoint was saved"
        raise TrainingInterrupted(f"interrupted in the middle of step {step + 1}, before it could stop cleanly: {kept}") from None
    finally:
        stop_request.restore()

    if main:
        if task.evaluate and stopped_by != "early stopping":  # in-loop evaluations skip the last step
            run_eval()
        display.close()
        task.save(model, run_dir / "final")
    distributed.barrier()
    return TrainResult(steps=step, seconds=elapsed(), stopped_by=stopped_by, last_eval=last_eval, best=best)


def ensure_training_possible(batches_per_epoch: int, cfg: TrainSection, what: str) -> None:
    """A clear error when the data cannot fill one optimizer step (train.grad_accum batches on each
    process). The stages call it before they create the run dir; `train` calls it again."""
    world = distributed.world_size()
    if batches_per_epoch < cfg.grad_accum * world:
        needed = f"{cfg.grad_accum * world} (train.grad_accum={cfg.grad_accum}" + (f" x {world} processes)" if world > 1 else ")")
        raise DataError(
            f"{what} gives {batches_per_epoch} batch(es) of train.batch_size={cfg.batch_size} an epoch, and one step needs "
            f"{needed}: add data, or lower train.batch_size or train.grad_accum (or data.max_length when pretraining)"
        )


__all__ = ["Task", "TrainResult", "train", "latest_checkpoint", "ensure_training_possible", "LmtuneError"]
