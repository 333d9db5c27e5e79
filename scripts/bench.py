"""Benchmark lmtune's pretraining step against a Hugging Face `Trainer` reference, on the CPU in bf16.

What it measures, all in one process and on the same data:

* lmtune: `lmtune.engine.train` driven by a `Task` built the way `stages/pretrain.py` builds it
  (`build_mlm` model with pretraining dropout 0, `Masker` masks, `mlm_loss` with the vocabulary head on
  masked positions only, bf16 autocast from `devices.resolve("cpu", "bf16")`, fused AdamW, clipping),
  with evaluation and checkpoints off.
* reference: `transformers.Trainer` + `TrainingArguments(bf16=True, use_cpu=True)` +
  `DataCollatorForLanguageModeling(mlm_probability=0.15)` on a stock `BertForMaskedLM` of the same sizes
  and vocabulary (the default `BertConfig` dropout of 0.1, the head on every position).
* a bf16 matrix-multiply peak (`torch.matmul` on square bf16 matrices), and from it lmtune's model-FLOP
  utilisation (MFU).

Both sides train on the same packed blocks (one WordPiece tokenizer trained on samples/moby-dick/*.txt,
blocks from `lmtune.data.pack_blocks`), with the same batch size, sequence length, precision and number
of measured optimizer steps. Each training run does `--warmup` extra steps first; only the steps after
them are timed (wall clock from the end of the last warmup step to the end of the last step, taken by a
per-step hook on each side: `TrainingDisplay.update` in lmtune, `TrainerCallback.on_step_end` in the
reference). The two sides alternate (ABBA order) for `--repeats` rounds; medians are reported.

On a shared machine other processes' CPU use ruins every number here (with 2 threads on 2 busy cores
a step gets several times slower), so before each round and each run the script waits up to
`--wait-idle` seconds for the CPUs to be idle, and it reports the share of CPU time other processes
used during each run (from /proc/stat minus its own CPU time); a repeat in which that exceeded 5% in
either run is left out of the medians (unless all were). On an idle 2-core machine the default run
takes about 3.5 minutes.

Run it from the repository root:

    .venv/bin/python scripts/bench.py                       # mini preset, 30 steps, 3 repeats
    .venv/bin/python scripts/bench.py --preset tiny --steps 20 --repeats 5 --threads 2 --json bench.json
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "moby-dick" / "*.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "mini", "small"), default="mini", help="model size (default mini)")
    p.add_argument("--steps", type=int, default=30, help="measured optimizer steps per run, both sides (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of every run (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of (lmtune, reference), alternating (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary target (default 8192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wait-idle", type=float, default=60.0,
        help="before each timed run, wait up to this many seconds for other processes to leave the CPUs idle "
        "(0: never wait; default 60)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        p.error("--steps, --warmup and --repeats must be at least 1")
    return args


def quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("lmtune").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# ----------------------------------------------------------------------------------------------
# Is anything else using the CPUs? (A busy machine makes every number here meaningless.)


class ForeignLoad:
    """The share of the machine's CPU time that other processes used between two calls."""

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __init__(self) -> None:
        self.busy, self.own, self.wall = self._busy_s(), self._own_s(), time.perf_counter()

    def share(self) -> float | None:
        busy = self._busy_s()
        if busy is None or self.busy is None:
            return None
        wall = time.perf_counter() - self.wall
        foreign = (busy - self.busy) - (self._own_s() - self.own)
        return max(foreign, 0.0) / (wall * (os.cpu_count() or 1))


def foreign_share(seconds: float = 1.0) -> float | None:
    """Other processes' share of the CPUs over a short sample."""
    probe = ForeignLoad()
    time.sleep(seconds)
    return probe.share()


def wait_until_idle(max_wait: float, threshold: float = 0.10) -> str | None:
    """Wait up to `max_wait` seconds for other processes to use under `threshold` of the CPUs.

    Returns a note when it had to wait or gave up, None when the machine was idle at once.
    """
    t0 = time.perf_counter()
    share = foreign_share()
    while share is not None and share > threshold and time.perf_counter() - t0 < max_wait:
        share = foreign_share(2.0)
    waited = time.perf_counter() - t0
    if share is None or share <= threshold:
        return None if waited < 1.5 else f"waited {waited:.0f} s for the CPUs to be idle"
    return f"other processes still use {100 * share:.0f}% of the CPUs after waiting {waited:.0f} s: measuring anyway"


# ----------------------------------------------------------------------------------------------
# bf16 matmul peak


def matmul_gflops(n: int, reps: int = 10) -> float:
    """Median GFLOP/s of an (n x n) @ (n x n) bf16 matmul (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def matmul_peak() -> dict[str, float]:
    sizes = {f"{n}": matmul_gflops(n) for n in (1024, 2048)}
    return {**sizes, "peak": max(sizes.values())}


# ----------------------------------------------------------------------------------------------
# Model FLOPs


def flops_per_token(model: torch.nn.Module, seq_len: int, head_fraction: float) -> dict[str, float]:
    """Training FLOPs (forward + backward) per input token of a BERT masked LM.

    Convention (Kaplan et al. 2020; PaLM appendix B): a weight used in one multiply-add per token costs
    2 FLOPs forward and 4 backward (gradients for activations and weights), so 6 per parameter per token.

    * encoder: 6 * N_enc, with N_enc every encoder parameter (Q, K, V, output and FFN matrices, their
      biases and the LayerNorms; the embedding tables are lookups, not matmuls, and are excluded).
    * attention scores and mixing, which have no parameters: per layer and token, Q.K^T costs
      2 * seq_len * hidden FLOPs forward and attention-weights @ V another 2 * seq_len * hidden; with
      backward = 2 x forward that is 3 * 4 * seq_len * hidden = 6 * 2 * seq_len * hidden per layer:
      6 * 2 * layers * seq_len * hidden in all (bidirectional: the full seq_len x seq_len square).
    * MLM head: 6 * N_head (transform dense + LayerNorm, tied decoder hidden x vocab matrix, decoder
      bias) on the positions the head runs on: `head_fraction` of the tokens (lmtune: the measured
      masked share, about 0.15; a stock BertForMaskedLM: 1.0, it runs the head everywhere).
    """
    cfg = model.config
    encoder = sum(p.numel() for p in model.base_model.encoder.parameters())
    from lmtune.modeling import mlm_head

    head = mlm_head(model)
    # the decoder weight is tied to the word embeddings; count it once, as hidden x vocab
    head_params = sum(p.numel() for p in head.predictions.transform.parameters())
    head_params += cfg.hidden_size * cfg.vocab_size + cfg.vocab_size
    attention = 6 * 2 * cfg.num_hidden_layers * seq_len * cfg.hidden_size
    per_token = 6 * encoder + attention + 6 * head_params * head_fraction
    return {
        "encoder_params": encoder,
        "head_params": head_params,
        "encoder_flops": 6 * encoder,
        "attention_flops": attention,
        "head_flops": 6 * head_params * head_fraction,
        "head_fraction": head_fraction,
        "per_token": per_token,
    }


# ----------------------------------------------------------------------------------------------
# Shared data


def prepare(args: argparse.Namespace, workdir: Path):
    """Config, placement, tokenizer and packed blocks shared by both sides."""
    from lmtune import config as lcfg
    from lmtune import data, devices
    from lmtune.tokenization import train_tokenizer

    cfg = lcfg.validate(
        {
            "seed": args.seed,
            "device": "cpu",
            "precision": "bf16",
            "model": {"arch": "bert", "preset": args.preset},
            "tokenizer": {"vocab_size": args.vocab},
            "data": {"max_length": args.seq_len, "cache_dir": str(workdir / "datasets-cache")},
            "train": {
                "batch_size": args.batch_size,
                "max_steps": args.warmup + args.steps,
                "eval_every": None,
                "save_every": None,
                "num_threads": args.threads,
            },
        }
    )
    placement = devices.resolve("cpu", "bf16")
    files = sorted(glob.glob(str(CORPUS)))
    if not files:
        sys.exit(f"no text found at {CORPUS}")
    texts, _ = data.load_texts(files, "data.train", txt_unit=cfg.data.txt_unit, cache_dir=cfg.data.cache_dir)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(
        (b["text"] for b in texts.iter(batch_size=1000)), "bert", args.vocab, max_length=args.seq_len
    )
    tok_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    blocks = torch.from_numpy(data.pack_blocks(texts, tokenizer, args.seq_len, num_proc=None, desc="bench"))
    pack_s = time.perf_counter() - t0
    if len(blocks) < 2 * args.batch_size:
        sys.exit(f"only {len(blocks)} blocks of {args.seq_len} tokens: too little text for batch {args.batch_size}")
    info = {
        "files": len(files),
        "texts": len(texts),
        "tokenizer_size": len(tokenizer),
        "blocks": len(blocks),
        "tokens": blocks.numel(),
        "tokenizer_train_s": tok_s,
        "pack_s": pack_s,
    }
    return cfg, placement, tokenizer, blocks, info


# ----------------------------------------------------------------------------------------------
# lmtune side


def make_masker(cfg, tokenizer, vocab_size: int):
    """The Masker that `lmtune pretrain` builds (its builder moved from stages/pretrain.py to data.py)."""
    from lmtune import data

    if hasattr(data, "build_masker"):
        return data.build_masker(tokenizer, vocab_size, cfg.mlm)
    from lmtune.stages import pretrain

    return pretrain.build_masker(cfg, tokenizer, vocab_size)


def run_lmtune(args, cfg, placement, tokenizer, blocks, workdir: Path) -> dict:
    from lmtune import data, engine, runs
    from lmtune.modeling import build_mlm, check_compatible, mlm_loss
    from lmtune.ui import TrainingDisplay

    class StepClock(TrainingDisplay):
        """The engine's display, used as a per-step clock: `update` runs after every optimizer step."""

        def __init__(self) -> None:
            super().__init__(live=False)
            self.times: list[float] = []
            self.losses: list[float] = []

        def start(self, description: str) -> None:
            self.description = description

        def update(self, record, log_line) -> None:
            self.times.append(time.perf_counter())
            if log_line:
                self.losses.append(record["loss"])

    model = build_mlm(cfg.model, tokenizer, cfg.seed)
    check_compatible(model, tokenizer, cfg.data.max_length)
    masker = make_masker(cfg, tokenizer, model.config.vocab_size)
    t = cfg.train
    step_tokens: list[int] = []
    step_masked: list[int] = []

    def batches(epoch: int, first: int):
        return data.block_batches(blocks, t.batch_size, cfg.seed, epoch, masker, start=first)

    def count(batch) -> int:  # called once per micro-batch by the engine (grad_accum is 1 here)
        step_tokens.append(batch["input_ids"].numel())
        step_masked.append(int((batch["labels"] != -100).sum()))
        return batch["input_ids"].numel()

    task = engine.Task(
        model=model,
        batches=batches,
        batches_per_epoch=len(blocks) // t.batch_size,
        loss=mlm_loss,
        save=lambda m, path: runs.save_hf_checkpoint(m, tokenizer, path),  # what pretrain's _save does
        count=count,
        unit="tokens",
        evaluate=None,  # no evaluation, not even the one at the end
    )
    run_dir = Path(tempfile.mkdtemp(prefix="lmtune-", dir=workdir))
    clock = StepClock()
    metrics = runs.MetricsLog(run_dir / "metrics.jsonl")
    try:
        result = engine.train(task, t, placement, run_dir, metrics, clock)
    finally:
        metrics.close()
    w, n = args.warmup, args.steps
    if result.steps != w + n or len(clock.times) != w + n:
        raise RuntimeError(f"lmtune ran {result.steps} steps ({len(clock.times)} timed), expected {w + n}")
    seconds = clock.times[-1] - clock.times[w - 1]
    tokens = sum(step_tokens[w : w + n])
    masked = sum(step_masked[w : w + n])
    out = {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "masked_fraction": masked / tokens,
        "step_ms_median": 1000 * statistics.median(b - a for a, b in zip(clock.times[w - 1 :], clock.times[w:])),
        "last_loss": clock.losses[-1] if clock.losses else None,
        "threads": torch.get_num_threads(),
    }
    del task, model
    gc.collect()
    return out


# ----------------------------------------------------------------------------------------------
# Hugging Face reference side


def run_reference(args, cfg, tokenizer, blocks, hf_dataset, workdir: Path) -> dict:
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from lmtune.config import resolved_model_sizes
    from lmtune.tokenization import round_up

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    step_tokens: list[int] = []
    step_masked: list[int] = []
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=0.15)

    def collate(features):
        batch = collator(features)
        step_tokens.append(batch["input_ids"].numel())
        step_masked.append(int((batch["labels"] != -100).sum()))
        return batch

    sizes = resolved_model_sizes(cfg.model)
    config = BertConfig(  # a standard config: default dropout (0.1), position limit 512, etc.
        vocab_size=round_up(len(tokenizer), 64), pad_token_id=tokenizer.pad_token_id, **sizes
    )
    torch.manual_seed(cfg.seed)
    model = BertForMaskedLM(config)
    t = cfg.train
    targs = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(prefix="hf-", dir=workdir))),
        bf16=True,
        use_cpu=True,
        per_device_train_batch_size=t.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_eps,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type="linear",
        warmup_steps=0.06,  # a fraction of max_steps, like lmtune's default warmup
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_drop_last=True,  # full batches only, as lmtune's training batches
        seed=cfg.seed,
    )
    clock = StepClock()
    trainer = Trainer(model=model, args=targs, data_collator=collate, train_dataset=hf_dataset, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict to stdout

    # check the reference really computes in bf16 (accelerate's autocast): record one Linear's output dtype
    seen: list[torch.dtype] = []
    probe = model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype) if not seen else None
    )
    result = trainer.train()
    probe.remove()
    w, n = args.warmup, args.steps
    if result.global_step != w + n or len(clock.times) != w + n:
        raise RuntimeError(f"reference ran {result.global_step} steps ({len(clock.times)} timed), expected {w + n}")
    shapes_ok = all(x == t.batch_size * args.seq_len for x in step_tokens[: w + n])
    if not shapes_ok:
        raise RuntimeError(f"reference batches are not all {t.batch_size}x{args.seq_len}: {step_tokens}")
    seconds = clock.times[-1] - clock.times[w - 1]
    tokens = sum(step_tokens[w : w + n])
    masked = sum(step_masked[w : w + n])
    out = {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "masked_fraction": masked / tokens,
        "step_ms_median": 1000 * statistics.median(b - a for a, b in zip(clock.times[w - 1 :], clock.times[w:])),
        "last_loss": result.training_loss,
        "compute_dtype": str(seen[0]) if seen else None,
        "threads": torch.get_num_threads(),
    }
    del trainer, model
    gc.collect()
    return out


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import datasets
    import transformers

    started = time.perf_counter()
    load = ForeignLoad()
    with tempfile.TemporaryDirectory(prefix="lmtune-bench-") as tmp:
        workdir = Path(tmp)
        cfg, placement, tokenizer, blocks, data_info = prepare(args, workdir)
        hf_dataset = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
        print(
            f"data: {data_info['files']} files, {data_info['texts']} paragraphs, tokenizer {data_info['tokenizer_size']} "
            f"tokens, {data_info['blocks']} blocks of {args.seq_len} ({data_info['tokens']:,} tokens)",
            flush=True,
        )
        print(
            f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
            f"{placement.device} {placement.precision} ({placement.reason})",
            flush=True,
        )
        print(
            f"preset {args.preset}, batch {args.batch_size} x {args.seq_len}, {args.warmup} warmup + {args.steps} "
            f"measured steps per run, {args.repeats} repeats",
            flush=True,
        )
        rounds = []
        for r in range(args.repeats):
            note = wait_until_idle(args.wait_idle) if args.wait_idle else None
            if note:
                print(f"  ({note})", flush=True)
            round_load = ForeignLoad()
            peak = matmul_peak()
            order = ("lmtune", "reference") if r % 2 == 0 else ("reference", "lmtune")
            row: dict = {"order": order, "matmul_gflops": peak}
            for side in order:
                torch.manual_seed(args.seed)
                note = wait_until_idle(args.wait_idle) if args.wait_idle else None
                if note:
                    print(f"  ({note})", flush=True)
                run_load = ForeignLoad()
                t0 = time.perf_counter()
                if side == "lmtune":
                    row[side] = run_lmtune(args, cfg, placement, tokenizer, blocks, workdir)
                else:
                    row[side] = run_reference(args, cfg, tokenizer, blocks, hf_dataset, workdir)
                share = row[side]["foreign_cpu_share"] = run_load.share()
                print(
                    f"  {side:<9} {row[side]['tokens_per_s']:>9,.0f} tok/s, {row[side]['step_ms_median']:6.0f} ms/step "
                    f"(run of {args.warmup + args.steps} steps took {time.perf_counter() - t0:.0f} s"
                    + ("" if share is None else f"; other processes used {100 * share:.0f}% of the CPUs")
                    + ")",
                    flush=True,
                )
            row["foreign_cpu_share"] = round_load.share()
            rounds.append(row)
            print(
                f"repeat {r + 1}/{args.repeats}: lmtune {row['lmtune']['tokens_per_s']:,.0f} tok/s "
                f"({row['lmtune']['step_ms_median']:.0f} ms/step), reference {row['reference']['tokens_per_s']:,.0f} "
                f"tok/s ({row['reference']['step_ms_median']:.0f} ms/step), bf16 matmul peak {peak['peak']:,.0f} GFLOP/s"
                + ("" if row["foreign_cpu_share"] is None else f", other processes {100 * row['foreign_cpu_share']:.0f}% CPU"),
                flush=True,
            )

        # FLOPs per token, from the built models and the measured masked share
        from lmtune.modeling import build_mlm
        from transformers import BertConfig, BertForMaskedLM

        from lmtune.config import resolved_model_sizes
        from lmtune.tokenization import round_up

        lm_model = build_mlm(cfg.model, tokenizer, cfg.seed)
        ref_model = BertForMaskedLM(
            BertConfig(vocab_size=round_up(len(tokenizer), 64), pad_token_id=tokenizer.pad_token_id, **resolved_model_sizes(cfg.model))
        )
        lm_masked = statistics.median(r["lmtune"]["masked_fraction"] for r in rounds)
        lm_flops = flops_per_token(lm_model, args.seq_len, head_fraction=lm_masked)
        ref_flops = flops_per_token(ref_model, args.seq_len, head_fraction=1.0)

    # a round in which other processes took more than 5% of the CPUs during either run measures them,
    # not us: leave it out of the medians, unless every round was disturbed
    def disturbed(r: dict) -> bool:
        return any((r[side]["foreign_cpu_share"] or 0.0) > 0.05 for side in ("lmtune", "reference"))

    clean = [r for r in rounds if not disturbed(r)] or rounds
    for r in rounds:
        r["used_in_medians"] = any(r is c for c in clean)
    lm_tps = statistics.median(r["lmtune"]["tokens_per_s"] for r in clean)
    ref_tps = statistics.median(r["reference"]["tokens_per_s"] for r in clean)
    peak = statistics.median(r["matmul_gflops"]["peak"] for r in clean)
    lm_mfu = lm_tps * lm_flops["per_token"] / (peak * 1e9)
    ref_mfu = ref_tps * ref_flops["per_token"] / (peak * 1e9)
    total = time.perf_counter() - started
    foreign = load.share()

    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "placement": placement.as_dict(),
        },
        "data": data_info,
        "model": {
            "params": sum(p.numel() for p in lm_model.parameters()),
            "vocab_size": lm_model.config.vocab_size,
            **{k: lm_model.config.to_dict()[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")},
        },
        "flops_per_token": {"lmtune": lm_flops, "reference": ref_flops},
        "rounds": rounds,
        "median": {
            "lmtune_tokens_per_s": lm_tps,
            "reference_tokens_per_s": ref_tps,
            "ratio": lm_tps / ref_tps,
            "bf16_peak_gflops": peak,
            "lmtune_mfu": lm_mfu,
            "reference_mfu": ref_mfu,
            "rounds_used": len(clean),
        },
        "total_s": total,
        "foreign_cpu_share": foreign,
    }

    print()
    print(
        f"model FLOPs per token (fwd+bwd): lmtune {lm_flops['per_token'] / 1e6:.2f} M = encoder "
        f"{lm_flops['encoder_flops'] / 1e6:.2f} M + attention {lm_flops['attention_flops'] / 1e6:.2f} M + head "
        f"{lm_flops['head_flops'] / 1e6:.2f} M (on the measured {lm_masked:.3f} masked share); "
        f"reference {ref_flops['per_token'] / 1e6:.2f} M (head on every token)"
    )
    rows = [
        ("lmtune tokens/s", f"{lm_tps:,.0f}"),
        ("reference (HF Trainer) tokens/s", f"{ref_tps:,.0f}"),
        ("ratio lmtune / reference", f"{lm_tps / ref_tps:.2f}x"),
        ("bf16 matmul peak GFLOP/s", f"{peak:,.0f}"),
        ("lmtune achieved GFLOP/s", f"{lm_tps * lm_flops['per_token'] / 1e9:,.1f}"),
        ("lmtune MFU", f"{100 * lm_mfu:.1f}%"),
        ("reference MFU (its own FLOPs)", f"{100 * ref_mfu:.1f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    left_out = len(rounds) - len(clean)
    print(f"\nmedians over {len(clean)} of {args.repeats} repeats"
          + (f" ({left_out} left out: other processes used over 5% of the CPUs)" if left_out else "")
          + f", {args.steps} measured steps each, preset {args.preset}, "
          f"batch {args.batch_size} x {args.seq_len}, bf16, {torch.get_num_threads()} threads")
    print("-" * (width + vwidth + 3))
    for k, v in rows:
        print(f"{k:<{width}}   {v:>{vwidth}}")
    print("-" * (width + vwidth + 3))
    print(f"total time {total:.0f} s" + ("" if foreign is None else f"; other processes used {100 * foreign:.0f}% of the CPUs meanwhile"))
    if len(clean) == len(rounds) and any(disturbed(r) for r in rounds):
        print("WARNING: other processes competed for the CPUs in every repeat: rerun the benchmark on an idle machine")
    elif foreign is not None and foreign > 0.05:
        print("note: other processes used the CPUs during part of the benchmark; the disturbed repeats are left out")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
