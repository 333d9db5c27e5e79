"""Unit tests for lmtune.devices: every branch with the machine mocked (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from lmtune import devices
from lmtune.devices import Placement, resolve
from lmtune.errors import ConfigError, DeviceError


class FakeMachine:
    """What torch sees: set the attributes, then `install` patches torch and lmtune.devices."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.gpus: list[tuple[str, tuple[int, int]]] = []  # (name, capability) per GPU
        self.mps = False
        self.cpu_bf16 = False
        self.capability_queries: list[int] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(self.gpus))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.gpus))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: self.gpus[self._index(device)][0])
        monkeypatch.setattr(torch.cuda, "get_device_capability", self._capability)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: self.mps)
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: self.cpu_bf16)

    @staticmethod
    def _index(device) -> int:
        if device is None:
            return 0
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return 0 if device.index is None else device.index

    def _capability(self, device=None):
        index = self._index(device)
        self.capability_queries.append(index)
        return self.gpus[index][1]


AMPERE = ("NVIDIA A100", (8, 0))
TURING = ("Tesla T4", (7, 5))


@pytest.fixture
def machine(monkeypatch):
    return FakeMachine(monkeypatch)


# ----------------------------------------------------------------------------------------------
# auto


def test_auto_prefers_cuda_with_bf16(machine):
    machine.gpus = [AMPERE]
    machine.cpu_bf16 = True
    p = resolve("auto", "auto")
    assert p.device == torch.device("cuda", 0)
    assert p.precision == "bf16"
    assert p.autocast_dtype is torch.bfloat16
    assert not p.needs_grad_scaler
    assert "A100" in p.reason and "bf16" in p.reason


def test_auto_cuda_without_bf16_uses_fp16_with_a_scaler(machine):
    machine.gpus = [TURING]
    p = resolve("auto", "auto")
    assert p.device.type == "cuda"
    assert p.precision == "fp16"
    assert p.autocast_dtype is torch.float16
    assert p.needs_grad_scaler
    assert "scaler" in p.reason


def test_auto_cpu_with_native_bf16(machine):
    machine.cpu_bf16 = True
    p = resolve("auto", "auto")
    assert p.device == torch.device("cpu")
    assert p.precision == "bf16"
    assert p.autocast_dtype is torch.bfloat16
    assert not p.needs_grad_scaler
    assert "no GPU" in p.reason and "bf16" in p.reason


def test_auto_cpu_without_native_bf16_uses_fp32(machine):
    p = resolve("auto", "auto")
    assert p.device == torch.device("cpu")
    assert p.precision == "fp32"
    assert p.autocast_dtype is None
    assert not p.needs_grad_scaler
    assert "lacks native bf16" in p.reason


def test_auto_mps_when_no_cuda(machine):
    machine.mps = True
    machine.cpu_bf16 = True
    p = resolve("auto", "auto")
    assert p.device == torch.device("mps")
    assert p.precision == "fp32"
    assert "MPS" in p.reason


def test_auto_device_with_explicit_precision(machine):
    p = resolve("auto", "fp32")
    assert (p.device.type, p.precision) == ("cpu", "fp32")
    assert "fp32 requested" in p.reason


# ----------------------------------------------------------------------------------------------
# explicit requests


def test_explicit_cuda_without_a_gpu_is_an_error(machine):
    with pytest.raises(DeviceError) as info:
        resolve("cuda", "auto")
    assert "no CUDA GPU" in str(info.value) and "--device cpu" in str(info.value)


def test_explicit_cuda_index_beyond_the_gpus_is_an_error(machine):
    machine.gpus = [AMPERE]
    with pytest.raises(DeviceError) as info:
        resolve("cuda:3", "auto")
    assert "cuda:3" in str(info.value) and "1 GPU" in str(info.value) and "cuda:0" in str(info.value)


def test_explicit_cuda_defaults_to_gpu_zero(machine):
    machine.gpus = [AMPERE, AMPERE]
    p = resolve("cuda", "auto")
    assert p.device == torch.device("cuda", 0)
    assert p.precision == "bf16"


def test_explicit_cuda_index_checks_that_gpu_for_bf16(machine):
    machine.gpus = [AMPERE, TURING]
    p = resolve("cuda:1", "auto")
    assert p.device == torch.device("cuda", 1)
    assert p.precision == "fp16"  # GPU 1 is a Turing card, even though GPU 0 has bf16
    assert machine.capability_queries and set(machine.capability_queries) == {1}


def test_fp16_on_cpu_is_an_error(machine):
    with pytest.raises(DeviceError, match="fp16"):
        resolve("cpu", "fp16")
    with pytest.raises(DeviceError, match="fp16"):
        resolve("auto", "fp16")  # auto lands on the CPU here


def test_fp16_on_cuda_is_allowed(machine):
    machine.gpus = [AMPERE]
    p = resolve("cuda:0", "fp16")
    assert p.precision == "fp16" and p.needs_grad_scaler


def test_bf16_on_a_gpu_without_bf16_is_an_error(machine):
    machine.gpus = [TURING]
    with pytest.raises(DeviceError) as info:
        resolve("cuda", "bf16")
    assert "Tesla T4" in str(info.value) and "fp16" in str(info.value)


def test_bf16_on_a_gpu_with_bf16(machine):
    machine.gpus = [AMPERE]
    p = resolve("cuda", "bf16")
    assert p.precision == "bf16" and p.device.type == "cuda"


def test_mps_not_available_is_an_error(machine):
    with pytest.raises(DeviceError, match="mps"):
        resolve("mps", "auto")


def test_mps_available(machine):
    machine.mps = True
    p = resolve("mps", "auto")
    assert p.device == torch.device("mps") and p.precision == "fp32"


def test_bf16_on_a_cpu_that_emulates_it_warns_in_the_reason(machine):
    p = resolve("cpu", "bf16")
    assert p.precision == "bf16"
    assert "emulated" in p.reason and "slower than fp32" in p.reason
    machine.cpu_bf16 = True
    assert "emulated" not in resolve("cpu", "bf16").reason


def test_on_device_checks_a_precision_for_a_device_already_chosen(machine):
    """`lmtune.stages.predict.predict` takes a loaded model's device and a precision name."""
    cpu = torch.device("cpu")
    assert devices.on_device(cpu, "fp32").autocast_dtype is None
    assert "emulated" in devices.on_device(cpu, "bf16").reason
    with pytest.raises(DeviceError, match="fp16"):
        devices.on_device(cpu, "fp16")
    with pytest.raises(ConfigError, match="precision='int8'"):
        devices.on_device(cpu, "int8")
    machine.gpus = [AMPERE, TURING]
    assert devices.on_device(torch.device("cuda", 0), "bf16").autocast_dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="Tesla T4"):
        devices.on_device(torch.device("cuda", 1), "bf16")


def test_explicit_cpu_ignores_an_available_gpu(machine):
    machine.gpus = [AMPERE]
    p = resolve("cpu", "auto")
    assert p.device == torch.device("cpu")
    assert p.precision == "fp32"


@pytest.mark.parametrize(
    ("device", "precision", "gpus", "mps", "cpu_bf16"),
    [
        ("auto", "auto", [AMPERE], False, False),
        ("auto", "auto", [TURING], False, False),
        ("auto", "auto", [], True, False),
        ("auto", "auto", [], False, True),
        ("auto", "auto", [], False, False),
        ("cpu", "bf16", [], False, False),
        ("cuda:1", "fp32", [AMPERE, TURING], False, False),
        ("mps", "fp16", [], True, False),
    ],
)
def test_reason_is_a_non_empty_sentence(machine, device, precision, gpus, mps, cpu_bf16):
    machine.gpus, machine.mps, machine.cpu_bf16 = gpus, mps, cpu_bf16
    p = resolve(device, precision)
    assert isinstance(p.reason, str) and p.reason.strip()
    assert p.as_dict() == {"device": str(p.device), "precision": p.precision, "reason": p.reason}


# ----------------------------------------------------------------------------------------------
# Placement helpers and the CPU probe


def test_cpu_autocast_context_uses_the_placement_dtype():
    p = Placement(torch.device("cpu"), "bf16", "test")
    with p.autocast():
        out = torch.ones(4, 4) @ torch.ones(4, 4)
    assert out.dtype == torch.bfloat16
    with Placement(torch.device("cpu"), "fp32", "test").autocast():
        out = torch.ones(4, 4) @ torch.ones(4, 4)
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n", False),
        ("", False),
    ],
)
def test_cpu_has_native_bf16_reads_cpuinfo_flags(monkeypatch, text, expected):
    real_read_text = devices.Path.read_text

    def fake_read_text(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            return text
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(devices.Path, "read_text", fake_read_text)
    assert devices.cpu_has_native_bf16() is expected


def test_cpu_has_native_bf16_without_cpuinfo(monkeypatch):
    def missing(self, *args, **kwargs):
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(devices.Path, "read_text", missing)
    assert devices.cpu_has_native_bf16() is False
