"""The run directory: creating it safely, the resolved config, the manifest and the metrics log.

Layout (DESIGN.md): config.yaml, manifest.json, metrics.jsonl, final/, checkpoints/step-N/.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune import __version__
from lmtune.errors import RunDirError


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse an output dir that already holds something, unless `overwrite` (checked before any work)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output_dir {path} exists and is a file: choose another --output-dir")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"output_dir {path} already exists and is not empty: pass --overwrite to replace it, "
                "or choose another --output-dir"
            )
        check_replaceable(path)


# What lmtune writes into a run dir (DESIGN.md's layout, eval's default eval-* dirs, atomic-write leftovers)
RUN_ENTRIES = ("manifest.json", "config.yaml", "metrics.jsonl", "final", "best", "checkpoints")
RUN_ENTRY_PREFIXES = ("eval-", ".tmp-", ".old-")


def is_run_dir(path: Path) -> bool:
    """True when `path` holds an lmtune run: a manifest.json that lmtune wrote, or nothing but the
    entries lmtune writes (a run that stopped before its manifest). A dir that merely has a config.yaml
    among other things is not one."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if isinstance(manifest, dict) and "lmtune" in manifest:
            return True
    except (OSError, ValueError):
        pass
    names = [p.name for p in path.iterdir()]
    return bool(names) and all(n in RUN_ENTRIES or n.startswith(RUN_ENTRY_PREFIXES) for n in names)


def check_replaceable(path: Path) -> None:
    """--overwrite deletes the output dir: refuse unless it is empty or holds an lmtune run, and never
    the filesystem root, the home dir, the working dir or one of its parents."""
    resolved = path.resolve()
    protected = {Path(resolved.anchor), Path.home().resolve(), *Path.cwd().resolve().parents, Path.cwd().resolve()}
    if resolved in protected:
        raise RunDirError(f"--overwrite would delete {resolved}, which holds more than a run: choose a dedicated --output-dir")
    if resolved.is_dir() and any(resolved.iterdir()) and not is_run_dir(resolved):
        raise RunDirError(
            f"--overwrite would delete {resolved}, which is not an lmtune run dir (no manifest.json written by lmtune, "
            "and files lmtune does not write): choose another --output-dir or empty it yourself"
        )


def check_writable_dir(path: Path, what: str) -> None:
    """A clear RunDirError, before any work, when `path` cannot be a dir to write in; creates nothing."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {path} exists and is a file: choose another")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"cannot create {what} {path}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise RunDirError(f"{what} {path} is not writable: choose another")


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create `path` (and its parents) if needed; a clear RunDirError when that is not possible."""
    check_writable_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {what} {path}: {exc.strerror}") from None
    return path


def prepare_output_dir(path: Path, overwrite: bool) -> Path:
    """Create the run dir (emptying it first when `overwrite`)."""
    check_output_dir(path, overwrite)
    if path.is_dir() and overwrite:
        shutil.rmtree(path)
    return ensure_writable_dir(path, "output_dir")


def git_sha() -> str | None:
    """The commit of the working directory's git repository, if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_manifest(run_dir: Path, **fields: Any) -> None:
    """manifest.json: versions, seed, device, precision, data fingerprint, git sha, plus `fields`."""
    import datasets
    import tokenizers
    import torch
    import transformers

    manifest = {
        "lmtune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_sha": git_sha(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    _write_manifest(run_dir / "manifest.json", manifest)


def update_manifest(run_dir: Path, **fields: Any) -> None:
    """Merge `fields` into an existing manifest.json."""
    path = run_dir / "manifest.json"
    _write_manifest(path, {**json.loads(path.read_text()), **fields})


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically (a temp file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


class PhaseClock:
    """Wall-clock seconds per named phase of a stage (reading the data, training the tokenizer, ...),
    for manifest.json's `timings` and the closing log line."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def summary(self) -> str:
        return ", ".join(f"{name.removesuffix('_s')} {value:.1f} s" for name, value in self.seconds.items())


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl, flushed at once (a crash loses nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._handle.write(json.dumps(clean) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file (a last line cut short by a crash is left out)."""
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step` (written after the checkpoint a run resumes from), so the log of a
    resumed run reads as if it had never stopped."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def save_hf_checkpoint(model: Any, tokenizer: Any, path: Path) -> None:
    """Save a Hugging Face checkpoint (safetensors weights, config, tokenizer) atomically: written to a
    temporary sibling dir, then renamed over `path`, so a crash never leaves a half-written one."""
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = path.with_name(f".old-{path.name}")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
