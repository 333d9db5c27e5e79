"""Resolve `device` and `precision` into what torch will use, and say why.

`auto` picks CUDA when present (bf16 where the GPU supports it, else fp16 with a gradient scaler),
else MPS, else the CPU with bf16 autocast where the CPU has native bf16 instructions, else fp32.
An explicit request that cannot be met is a `DeviceError`, never a silent fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.errors import ConfigError, DeviceError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where and in which precision a run computes."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    reason: str  # one sentence: why this device and precision

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return None if self.precision == "fp32" else _DTYPES[self.precision]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.precision == "fp16"

    def autocast(self) -> torch.autocast:
        """An autocast context for this placement (disabled in fp32)."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def as_dict(self) -> dict[str, str]:
        return {"device": str(self.device), "precision": self.precision, "reason": self.reason}


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cuda_supports_bf16(device: torch.device) -> bool:
    """bf16 needs compute capability 8.0 (Ampere) or newer."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def _resolve_device(requested: str) -> tuple[torch.device, str]:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0), f"CUDA is available ({torch.cuda.get_device_name(0)})"
        if torch.backends.mps.is_available():
            return torch.device("mps"), "Apple MPS is available"
        return torch.device("cpu"), "no GPU found"
    if re.fullmatch(r"cuda(:\d+)?", requested):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={requested!r} but torch sees no CUDA GPU (torch {torch.__version__}): "
                "use --device cpu or --device auto, or install a CUDA build of torch"
            )
        device = torch.device(requested if ":" in requested else "cuda:0")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={requested!r} but only {torch.cuda.device_count()} GPU(s) exist: "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
        return device, "requested"
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device='mps' but Apple MPS is not available here: use --device cpu or auto")
        return torch.device("mps"), "requested"
    if requested == "cpu":
        return torch.device("cpu"), "requested"
    raise DeviceError(f"device={requested!r} is not a device: use auto, cpu, cuda, cuda:N or mps")


def resolve(device: str = "auto", precision: str = "auto") -> Placement:
    """Resolve a requested device and precision.

    Raises:
        DeviceError: when an explicit request cannot be met on this machine.
    """
    dev, why = _resolve_device(device)
    kind = dev.type
    if precision == "auto":
        if kind == "cuda":
            if cuda_supports_bf16(dev):
                return Placement(dev, "bf16", f"{why}; the GPU supports bf16")
            return Placement(dev, "fp16", f"{why}; the GPU lacks bf16, so fp16 with a gradient scaler")
        if kind == "mps":
            return Placement(dev, "fp32", f"{why}; fp32 is the safe default on MPS")
        if cpu_has_native_bf16():
            return Placement(dev, "bf16", f"{why}; the CPU has native bf16 instructions, so bf16 autocast")
        return Placement(dev, "fp32", f"{why}; the CPU lacks native bf16, so fp32")
    note = check_precision(dev, precision)
    where = "device requested" if why == "requested" else why
    return Placement(dev, precision, f"{where}; precision {precision} requested{note}")


def on_device(device: torch.device, precision: str) -> Placement:
    """The placement for an explicit precision on a device already chosen (a loaded model's)."""
    return Placement(device, precision, f"{device}; precision {precision} requested{check_precision(device, precision)}")


def check_precision(device: torch.device, precision: str) -> str:
    """Refuse an explicit precision `device` cannot compute in; returns a warning note ("" if none).

    Raises:
        ConfigError: not a precision.
        DeviceError: fp16 on the CPU, or bf16 on a GPU without it.
    """
    if precision not in _DTYPES:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(_DTYPES)}")
    kind = device.type
    if precision == "fp16" and kind == "cpu":
        raise DeviceError(
            "precision='fp16' is not supported on the CPU: use --precision bf16 (or fp32), or a CUDA device"
        )
    if precision == "bf16" and kind == "cuda" and not cuda_supports_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise DeviceError(f"precision='bf16' but {name} does not support bf16: use --precision fp16 or fp32")
    if precision == "bf16" and kind == "cpu" and not cpu_has_native_bf16():
        return (
            " (this CPU has no native bf16 instructions, so bf16 matrix multiplies are emulated: "
            "a matrix multiply measured over 100x slower than fp32 on an AVX2 CPU, see docs/PERFORMANCE.md; use fp32 or auto)"
        )
    return ""
