"""What every training stage does around its own work: place the run, open and close the run dir."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from lmtune import devices, distributed, engine, runs
from lmtune.config import Config, flat_keys, to_yaml
from lmtune.devices import Placement
from lmtune.errors import ConfigError, RunDirError
from lmtune.ui import TrainingDisplay

log = logging.getLogger(__name__)


# keys a resumed run may change: they bound or report the run, but do not change what it computes
RESUMABLE_CHANGES = {
    "train.max_steps", "train.max_minutes", "train.epochs", "train.log_every", "train.eval_every",
    "train.save_every", "train.keep_last", "train.num_threads", "train.compile", "data.num_proc", "data.cache_dir",
}


def config_drift(cfg: Config, run_dir: Path) -> list[str]:
    """What the new config changes, against the run's config.yaml, beyond the budget and cadence."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    from lmtune.config import validate, yaml_load

    try:
        saved = yaml_load(saved_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RunDirError(
            f"--resume: {saved_path} is not valid YAML ({str(exc).splitlines()[0]}): restore it, or start a new run"
        ) from None
    try:  # keys added to lmtune since the run started compare as their defaults
        saved = validate(saved).model_dump(mode="json")
    except ConfigError:  # a key lmtune no longer has: compare as written, so the change is listed
        pass
    old = flat_keys(saved)
    new = flat_keys(cfg.model_dump(mode="json"))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key)
    ]


def place_run(cfg: Config, resume: bool, overwrite: bool, force: bool = False) -> tuple[Placement, Path, Path | None]:
    """Resolve the device and check the output dir before any work: (placement, out, checkpoint to resume).

    Resuming with a config that changes what training computes is refused (with the diff) unless `force`.
    """
    placement = devices.resolve(cfg.device, cfg.precision)
    if distributed.launched():
        distributed.init(placement.device.type)
        if not distributed.is_main():  # one voice: the other processes only warn
            logging.getLogger("lmtune").setLevel(logging.WARNING)
        if placement.device.type == "cuda":
            placement = dataclasses.replace(placement, device=torch.device("cuda", distributed.local_rank()))
            torch.cuda.set_device(placement.device)
        log.info("distributed: %d processes (%s)", distributed.world_size(), torch.distributed.get_backend())
    log.info("device: %s, precision: %s (%s)", placement.device, placement.precision, placement.reason)
    if cfg.train.compile:
        engine.check_compile(placement)
    out = Path(cfg.output_dir or "")
    if not resume:
        runs.check_output_dir(out, overwrite)
        return placement, out, None
    resume_from = engine.latest_checkpoint(out)
    if resume_from is None:
        raise RunDirError(f"--resume: {out} holds no complete checkpoint to resume: run without --resume")
    drift = config_drift(cfg, out)
    if drift and not force:
        raise RunDirError(
            "--resume: the config changes what this run computes:\n  " + "\n  ".join(drift)
            + "\nundo those changes (only budget and cadence keys such as train.max_steps may change), or add --force"
        )
    if drift:
        log.warning("resuming with a changed config (--force): %s", "; ".join(drift))
    return placement, out, resume_from


def open_run(cfg: Config, out: Path, overwrite: bool, resume_from: Path | None, **manifest: Any) -> Path:
    """Create (or reuse, when resuming) the run dir; write config.yaml and manifest.json (rank 0 only)."""
    if not distributed.is_main():
        return out
    manifest["processes"] = distributed.world_size()
    run_dir = out if resume_from else runs.prepare_output_dir(out, overwrite)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    runs.write_manifest(run_dir, seed=cfg.seed, resumed_from=str(resume_from) if resume_from else None, **manifest)
    return run_dir


def run_training(
    task: engine.Task, cfg: Config, placement: Placement, run_dir: Path, display: TrainingDisplay | None, resume_from: Path | None
) -> engine.TrainResult:
    """Train with the shared engine, logging to run_dir/metrics.jsonl."""
    main = distributed.is_main()
    if resume_from is not None and main:
        runs.truncate_metrics(run_dir / "metrics.jsonl", engine.checkpoint_step(resume_from))
    metrics = runs.MetricsLog(run_dir / "metrics.jsonl" if main else Path(os.devnull))
    try:
        return engine.train(task, cfg.train, placement, run_dir, metrics, display, resume_from)
    finally:
        metrics.close()
