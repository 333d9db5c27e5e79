"""GPU check: `lmtune pretrain` (mini and small presets) and `lmtune finetune` on CUDA in bf16, with
tokens/s, samples/s and model-FLOP utilisation against a bf16 matrix-multiply peak measured in the
same run. Everything runs through the real CLI on files shipped in the repository (the Moby-Dick
sample, the reviews fixture): no network, no data fetching.

    python3 scripts/gpu_check.py                  # what scripts/gpu_check.sh runs
    python3 scripts/gpu_check.py --device cpu --steps 5 --presets tiny   # a dry run of the script itself

Prints one table and writes it as JSON (`--json`, default $OUT/gpu-check.json or /tmp/gpu-check.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "src"))

from bench import flops_per_token, matmul_gflops  # noqa: E402  (scripts/ and src/ are on the path from here on)
from lmtune.runs import read_metrics  # noqa: E402


def lmtune(*args: str) -> None:
    command = [sys.executable, "-m", "lmtune", *args]
    print("+ lmtune " + " ".join(args), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, cwd=REPO, env=env)
    if done.returncode != 0:
        sys.exit(f"lmtune {args[0]} failed with exit code {done.returncode}")


def rates(run_dir: Path, key: str) -> list[float]:
    """Throughput of every logged window but the first (which holds start-up and compilation)."""
    return [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"][1:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--presets", default="mini,small")
    p.add_argument("--steps", type=int, default=300, help="pretraining steps per preset (default 300)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ft-epochs", type=int, default=20, help="fine-tuning epochs on the 400-row reviews fixture")
    p.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "gpu-check.json")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device is visible to torch: run this on a GPU machine (or pass --device cpu for a dry run)")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    n = 8192 if args.device.startswith("cuda") else 1024
    peak = matmul_gflops(n, dtype, device=args.device) / 1000  # TFLOP/s
    print(f"torch {torch.__version__} on {name}: {args.precision} matmul {n}^3 at {peak:.1f} TFLOP/s", flush=True)

    from transformers import AutoModelForMaskedLM

    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results: dict = {"device": name, "torch": torch.__version__, "precision": args.precision, "matmul_peak_tflops": peak, "runs": []}
    rows = []
    seq = 128
    for preset in [x for x in args.presets.split(",") if x]:
        run = out / f"pretrain-{preset}"
        lmtune(
            "pretrain", "configs/pretrain/quickstart.yaml", "--device", args.device, "--precision", args.precision,
            "--output-dir", str(run), "--overwrite", "--set", f"model.preset={preset}", "--set", "train.max_minutes=null",
            "--set", f"train.max_steps={args.steps}", "--set", f"train.batch_size={args.batch_size}",
            "--set", "train.eval_every=null", "--set", "train.save_every=null", "--set", f"train.log_every={max(1, args.steps // 10)}",
            "--set", f"data.max_length={seq}",
        )
        tps = statistics.median(rates(run, "tokens_per_s") or [float("nan")])
        model = AutoModelForMaskedLM.from_pretrained(run / "final")
        flops = flops_per_token(model, seq, head_fraction=0.15)  # mlm.probability of the config: the masked share
        mfu = tps * flops["per_token"] / (peak * 1e12)
        params = sum(x.numel() for x in model.parameters())
        rows.append((f"pretrain {preset} ({params / 1e6:.1f}M params)", f"{tps:,.0f} tokens/s", f"{100 * mfu:.1f}%"))
        results["runs"].append({"stage": "pretrain", "preset": preset, "tokens_per_s": tps, "flops_per_token": flops, "mfu": mfu})

        ft = out / f"finetune-{preset}"
        lmtune(
            "finetune", "configs/finetune/base.yaml",
            "--device", args.device, "--precision", args.precision, "--output-dir", str(ft), "--overwrite",
            "--set", f"model.checkpoint={run / 'final'}", "--set", "data.train=[tests/fixtures/reviews/train.jsonl]",
            "--set", "data.validation=[tests/fixtures/reviews/validation.jsonl]", "--set", "data.test=null",
            "--set", f"train.epochs={args.ft_epochs}", "--set", "train.eval_every=epoch", "--set", "train.log_every=5",
            "--set", "finetune.patience=null",
        )
        sps = statistics.median(rates(ft, "samples_per_s") or [float("nan")])
        evals = [r for r in read_metrics(ft / "metrics.jsonl") if r["type"] == "eval"]
        acc = evals[-1].get("eval_accuracy") if evals else None
        rows.append((f"finetune {preset} on reviews", f"{sps:,.0f} samples/s", "" if acc is None else f"val accuracy {acc:.3f}"))
        results["runs"].append({"stage": "finetune", "preset": preset, "samples_per_s": sps, "validation_accuracy": acc})

    print(f"\n{name}, {args.precision}, matmul peak {peak:.1f} TFLOP/s, batch {args.batch_size} x {seq}")
    for r in rows:
        print(f"  {r[0]:<36} {r[1]:>20}  {r[2]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
