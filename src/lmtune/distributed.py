"""Several processes, one run: the few collective operations lmtune needs, on torch.distributed.

A run launched by `torchrun` (or `accelerate launch`, or `lmtune ... --nproc N`, which starts the N
processes itself with the environment torchrun would give them)
finds RANK, WORLD_SIZE and LOCAL_RANK in its environment. Every process builds the same model from the
same seed; each takes every N-th micro-batch of the one seeded data order, so N processes with
train.grad_accum=A see exactly the micro-batches of one process with grad_accum=N*A. Gradients are
averaged after the backward passes, so the update is the same too. Only rank 0 writes the run dir.

With one process (no WORLD_SIZE), every function here is a no-op.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from lmtune.errors import DeviceError


def launched() -> bool:
    """True when a launcher started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device_type: str) -> None:
    """Join the process group (gloo on the CPU, nccl on CUDA) when launched as one of several."""
    if not launched() or dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and local_rank() >= torch.cuda.device_count():
        raise DeviceError(f"process {local_rank()} has no GPU: {torch.cuda.device_count()} visible, use --nproc at most that")
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (training the tokenizer, filling the caches), the others after it,
    so they reuse its cached results instead of racing to write them."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _tensor(values: list[float], device: torch.device) -> torch.Tensor:
    # gloo reduces CPU tensors, nccl CUDA ones
    return torch.tensor(values, dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")


def _reduce(values: list[float], device: torch.device, op: Any) -> list[float]:
    if not dist.is_initialized():
        return values
    t = _tensor(values, device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each value's maximum over the processes (flags, elapsed seconds)."""
    return _reduce(values, device, dist.ReduceOp.MAX)


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each value's sum over the processes (losses, token counts)."""
    return _reduce(values, device, dist.ReduceOp.SUM)


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag, on every rank."""
    if not dist.is_initialized():
        return flag
    t = _tensor([float(flag)], device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace every gradient with its mean over the processes (one all-reduce of a flat buffer)."""
    if not dist.is_initialized():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = g


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(nproc: int, argv: list[str]) -> int:
    """`lmtune ... --nproc N`: run `lmtune argv` in N local processes with the environment torchrun
    would give them; return rank 0's exit code (or the first failure's). CPU threads are split
    between the processes unless OMP_NUM_THREADS is set."""
    port = _free_port()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    procs = []
    for r in range(nproc):
        env = {
            **os.environ,
            "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": threads,
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "lmtune", *argv], env=env))
    codes: list[int | None] = [None] * nproc
    first_failure = 0
    try:
        while any(c is None for c in codes):
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                first_failure = failed[0]
                # the others fail soon after (their peer is gone) or wait forever: a grace period lets
                # a rank that failed by itself (rank 0 with a config error, say) exit with its own code
                deadline = time.monotonic() + 10
                while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                    time.sleep(0.1)
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                codes = [p.wait() for p in procs]
            time.sleep(0.2)
    except KeyboardInterrupt:  # the terminal sent SIGINT to every process: let them save and exit
        codes = [p.wait() for p in procs]
    rank0 = codes[0] or 0
    code = rank0 if rank0 > 0 else first_failure or next((c for c in codes if c), 0)  # rank 0 speaks for the run
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it
