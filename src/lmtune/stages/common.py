"""What every training stage does around its own work: place the run, open and close the run dir."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lmtune import devices, engine, runs
from lmtune.config import Config, to_yaml
from lmtune.devices import Placement
from lmtune.errors import RunDirError
from lmtune.ui import TrainingDisplay

log = logging.getLogger(__name__)


def place_run(cfg: Config, resume: bool, overwrite: bool) -> tuple[Placement, Path, Path | None]:
    """Resolve the device and check the output dir before any work: (placement, out, checkpoint to resume)."""
    placement = devices.resolve(cfg.device, cfg.precision)
    log.info("device: %s, precision: %s (%s)", placement.device, placement.precision, placement.reason)
    out = Path(cfg.output_dir or "")
    if not resume:
        runs.check_output_dir(out, overwrite)
        return placement, out, None
    resume_from = engine.latest_checkpoint(out)
    if resume_from is None:
        raise RunDirError(f"--resume: {out} holds no complete checkpoint to resume: run without --resume")
    return placement, out, resume_from


def open_run(cfg: Config, out: Path, overwrite: bool, resume_from: Path | None, **manifest: Any) -> Path:
    """Create (or reuse, when resuming) the run dir; write config.yaml and manifest.json."""
    run_dir = out if resume_from else runs.prepare_output_dir(out, overwrite)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    runs.write_manifest(run_dir, seed=cfg.seed, resumed_from=str(resume_from) if resume_from else None, **manifest)
    return run_dir


def run_training(
    task: engine.Task, cfg: Config, placement: Placement, run_dir: Path, display: TrainingDisplay | None, resume_from: Path | None
) -> engine.TrainResult:
    """Train with the shared engine, logging to run_dir/metrics.jsonl."""
    metrics = runs.MetricsLog(run_dir / "metrics.jsonl")
    try:
        return engine.train(task, cfg.train, placement, run_dir, metrics, display, resume_from)
    finally:
        metrics.close()
