"""Benchmark lmtune against Hugging Face references on the CPU: pretraining, fine-tuning, prediction,
the whole pretraining pipeline, and the levers behind lmtune's pretraining speed.

Five benchmarks, chosen with `--what` (default the first four), each reported as lmtune / reference.
Training runs in `--precision` on both sides; `auto` is what `lmtune` itself picks on this CPU: bf16
autocast where the CPU has native bf16 instructions (AVX512-BF16/AMX), else fp32 (on an AVX2-only CPU
bf16 is emulated and far slower: the `levers` benchmark measures it).

* pretrain: tokens/s of one optimizer step of masked-LM pretraining.
  - lmtune: `lmtune.engine.train` driven by a `Task` built the way `stages/pretrain.py` builds it
    (`build_mlm` model of `--arch` with pretraining dropout 0, `use_attention(model, "auto", cpu)`,
    `Masker` masks, `mlm_loss` with the vocabulary head on masked positions only, the precision from
    `devices.resolve`, fused AdamW, clipping), with evaluation and checkpoints off.
  - reference: `transformers.Trainer` + `TrainingArguments(bf16=<precision is bf16>, use_cpu=True)` +
    `DataCollatorForLanguageModeling(mlm_probability=0.15)` on the stock model of the same arch and
    sizes (`BertForMaskedLM` with BertConfig's defaults: dropout 0.1; `ModernBertForMaskedLM` with
    ModernBertConfig's default `sparse_prediction=False`; the head on every position).
  - plus a matrix-multiply peak in the same precision (`torch.matmul` on square matrices) and lmtune's
    model-FLOP utilisation (MFU) against it.
  Both train on the same packed blocks (a WordPiece tokenizer trained on samples/moby-dick/*.txt, blocks
  from `lmtune.data.pack_blocks`).
* finetune: samples/s of one optimizer step of text-classifier fine-tuning, in `--precision`.
  - data: `--data` (default the Moby-Dick sample split into sentences, 3,000-odd, labelled `whale`
    when the sentence contains "whale", else `other`); longer texts are truncated at `--seq-len`.
  - checkpoint: a freshly initialised (not pretrained) `BertForMaskedLM` of `--preset` size (standard
    `BertConfig`: dropout 0.1) with a WordPiece tokenizer trained by `lmtune.tokenization.train_tokenizer`
    on the same text (`model_max_length` = `--seq-len`), saved to a temporary dir. Both sides load it as a
    classifier with a new 2-way head (and pooler), seeded alike, and check that their initial weights match.
  - lmtune: the pieces `stages/finetune.py` uses: `load_for_finetuning`, `check_compatible`,
    `use_attention(model, "auto", cpu)` (with it lmtune.fastdropout; `--torch-dropout` undoes that), `data.encode_rows` (no padding), `length_grouped_batches` +
    `pad_batch` (each batch padded to its longest row), `classification_loss`, `engine.train` (the
    precision, fused AdamW, clipping) with evaluation and checkpoints off.
  - reference: `Trainer(bf16=<as lmtune>, use_cpu=True)` on `AutoModelForSequenceClassification` from the same
    dir, the rows tokenized run_glue.py-style (`truncation=True, max_length`, no padding) and batched by
    `DataCollatorWithPadding` in the default random order (no length grouping; `--ref-sampling
    group_by_length` switches on the Trainer's `LengthGroupedSampler` for comparison).
* predict: texts/s of classifying `--predict-texts` sentences end to end (texts in, labels out), the
  model already loaded, both in the order given; the reference in fp32.
  - lmtune: `lmtune.stages.predict.predict` (length-sorted batches) on `load_classifier`'s model, in
    `--predict-precision` as `lmtune predict --precision` runs it (auto, its default: bf16 autocast on a
    CPU with native bf16, else fp32; fp32; bf16; or int8: the model through `quantize_int8`),
    `--batch-size` texts per batch. The table adds the reference's GFLOP/s against the fp32 matmul
    peak measured after the rounds, and the ratio an fp32 lmtune at that peak would reach.
  - reference: `transformers.pipeline("text-classification", model=dir, device="cpu",
    batch_size=--batch-size)` called with `truncation=True, max_length=--seq-len`.
  - the classifier: the one lmtune fine-tuned in the first finetune run (or, with `--what predict` alone,
    the fresh classifier). The script reports how often the two sides agree on the top label.

* pipeline: `lmtune pretrain` end to end in its own process (fresh caches: read the text files, train
  the tokenizer, tokenize and pack, train `--pipe-steps` steps, evaluate, save), against the same
  pipeline built from the libraries as a user of run_mlm.py would: `datasets.load_dataset("text")`,
  a `tokenizers` WordPiece trained with `train_from_iterator`, run_mlm.py's tokenize + `group_texts`
  with `datasets.map`, then Trainer, evaluate and save_model, also in its own process. Reports each
  phase, the whole process's wall time and its peak resident memory (its `ru_maxrss`). Needs `--corpus`
  (default data/corpus, 22 MB: `scripts/fetch_data.py corpus`).
* levers: lmtune's pretraining step as shipped against the same step with one change (`--levers`:
  SDPA or eager attention, foreach or for-loop AdamW, 1 thread, torch.compile of the encoder, dropout 0.1, the
  head on every position, blocks of half the length in batches twice the size, bf16/fp32), alternating, with
  the final losses side by side.

`--data` picks the finetune/predict texts: the bundled Moby-Dick sentences (default) or the train split
of a task fetched by `scripts/fetch_data.py` (tweets, bbc-news, spam) with its own labels.

Training runs do `--warmup` (or `--ft-warmup`) untimed steps first; only the steps after them are timed
(wall clock from the end of the last warmup step to the end of the last step, taken by a per-step hook on
each side: `TrainingDisplay.update` in lmtune, `TrainerCallback.on_step_end` in the reference). Each
benchmark alternates the two sides (ABBA order) for `--repeats` rounds (`--predict-repeats` for predict,
after one untimed pass per side; `--pipe-repeats` for pipeline); medians are reported.

On a shared machine other processes' CPU use ruins every number here (with 2 threads on 2 busy cores
a step gets several times slower), so before each round and each run the script waits up to
`--wait-idle` seconds for the CPUs to be idle, and it reports the share of CPU time other processes
used during each run (from /proc/stat minus its own CPU time); a repeat in which that exceeded 5% in
either run is left out of the medians (unless all were) and replaced by an extra repeat, at most
`--retries` per benchmark. On an idle 2-core AVX2 machine in fp32 the default run (four benchmarks) takes
about 30 minutes, most of it the reference sides; `--what` and fewer `--steps`/`--repeats` shorten it.

Run it from the repository root:

    .venv/bin/python scripts/bench.py                       # pretrain, finetune, predict, pipeline; mini preset
    .venv/bin/python scripts/bench.py --what finetune,predict --data tweets --seq-len 64
    .venv/bin/python scripts/bench.py --what pipeline --preset small --arch modernbert --pipe-steps 20
    .venv/bin/python scripts/bench.py --what levers --arch modernbert --steps 20 --repeats 2
    .venv/bin/python scripts/bench.py --what finetune,predict --json bench.json
    .venv/bin/python scripts/bench.py --what pretrain --preset tiny --steps 20 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import gc
import glob
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "samples" / "moby-dick" / "*.txt"
BENCHMARKS = ("pretrain", "finetune", "predict", "pipeline", "levers")
DEFAULT = ("pretrain", "finetune", "predict", "pipeline")
# the speed targets of the performance issue: lmtune / reference
TARGETS = {"pretrain": 2.5, "finetune": 1.5, "predict": 2.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--what", default=",".join(DEFAULT),
        help=f"comma-separated benchmarks to run, from {','.join(BENCHMARKS)} (default {','.join(DEFAULT)})",
    )
    p.add_argument(
        "--levers", default="sdpa,foreach,threads1,compile,dropout,fullhead,bf16,fp32",
        help=f"levers: the changes to measure, from {','.join(LEVERS)} (bf16/fp32: whichever is not the shipped precision)",
    )
    p.add_argument("--preset", choices=("tiny", "mini", "small"), default="mini", help="model size (default mini)")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="training precision on both sides; auto: what `lmtune pretrain` picks on this CPU (bf16 only where the "
        "CPU has native bf16 instructions, else fp32)",
    )
    p.add_argument(
        "--arch", choices=("bert", "modernbert"), default="bert",
        help="pretrain: the architecture on both sides (default bert; the reference is the stock HF model of that arch)",
    )
    p.add_argument(
        "--data", default="moby-dick",
        help="finetune/predict: moby-dick (the bundled sample's sentences, whale/other) or a task fetched by "
        "scripts/fetch_data.py (tweets, bbc-news, spam: its train split)",
    )
    p.add_argument("--steps", type=int, default=30, help="pretrain: measured optimizer steps per run, both sides (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="pretrain: untimed steps at the start of every run (default 5)")
    p.add_argument(
        "--compile", action="store_true",
        help="pretrain: lmtune's side with train.compile: true (the encoder compiled; compilation falls in the untimed warmup steps)",
    )
    p.add_argument("--ft-steps", type=int, default=40, help="finetune: measured optimizer steps per run (default 40)")
    p.add_argument("--ft-warmup", type=int, default=5, help="finetune: untimed steps at the start of every run (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="pretrain and finetune: rounds of (lmtune, reference), alternating (default 3)")
    p.add_argument("--predict-texts", type=int, default=2000, help="predict: texts classified per run (default 2000)")
    p.add_argument("--predict-repeats", type=int, default=4, help="predict: rounds of (lmtune, reference), alternating (default 4)")
    p.add_argument(
        "--predict-precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
        help="predict: lmtune's side as `lmtune predict --precision` runs it (default auto, its default: bf16 on a "
        "CPU with native bf16, else fp32; the reference is always fp32, as pipeline() runs by default)",
    )
    p.add_argument(
        "--ref-sampling", choices=("random", "group_by_length"), default="random",
        help="finetune: the reference Trainer's train_sampling_strategy (default random, the Trainer's default)",
    )
    p.add_argument(
        "--torch-dropout", action="store_true",
        help="finetune: lmtune's side with PyTorch's own CPU dropout instead of lmtune.fastdropout (to measure it)",
    )
    p.add_argument(
        "--retries", type=int, default=2,
        help="extra repeats per benchmark, run only to replace repeats that other processes disturbed (default 2)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step / texts per batch (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence; the truncation length for finetune/predict (default 128)")
    p.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary target (default 8192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wait-idle", type=float, default=60.0,
        help="before each timed run, wait up to this many seconds for other processes to leave the CPUs idle "
        "(0: never wait; default 60)",
    )
    p.add_argument(
        "--corpus", default=str(REPO / "data" / "corpus"),
        help="pipeline: a directory of .txt files (default data/corpus, the 22 MB public-domain corpus of scripts/fetch_data.py)",
    )
    p.add_argument("--pipe-steps", type=int, default=50, help="pipeline: training steps on each side (default 50)")
    p.add_argument("--pipe-repeats", type=int, default=1, help="pipeline: rounds of (lmtune, reference) (default 1)")
    p.add_argument("--pipe-validation", type=float, default=0.01, help="pipeline: held-out share of the paragraphs (default 0.01)")
    p.add_argument("--pipe-eval-batches", type=int, default=10, help="pipeline: validation batches in the final evaluation (default 10)")
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = [w for w in what if w not in BENCHMARKS]
    if unknown or not what:
        p.error(f"--what: {', '.join(unknown) or 'nothing'} is not among {', '.join(BENCHMARKS)}")
    args.what = [w for w in BENCHMARKS if w in what]  # fixed order, no duplicates
    if args.retries < 0:
        p.error("--retries must be at least 0")
    if min(args.steps, args.warmup, args.repeats, args.ft_steps, args.ft_warmup, args.predict_repeats) < 1:
        p.error("--steps, --warmup, --ft-steps, --ft-warmup, --repeats and --predict-repeats must be at least 1")
    if args.predict_texts < args.batch_size:
        p.error("--predict-texts must be at least --batch-size")
    if min(args.pipe_steps, args.pipe_repeats, args.pipe_eval_batches) < 1 or not 0 < args.pipe_validation < 1:
        p.error("--pipe-steps, --pipe-repeats and --pipe-eval-batches must be at least 1; --pipe-validation in (0, 1)")
    if "pipeline" in args.what and not any(Path(args.corpus).rglob("*.txt")):
        p.error(
            f"--corpus {args.corpus}: no .txt files there for the pipeline benchmark: run "
            "`.venv/bin/python scripts/fetch_data.py corpus` (the 22 MB public-domain corpus), point --corpus at a "
            "directory of .txt files, or leave pipeline out of --what"
        )
    bad_levers = [n.strip() for n in args.levers.split(",") if n.strip() and n.strip() not in LEVERS]
    if "levers" in args.what and bad_levers:
        p.error(f"--levers: {', '.join(bad_levers)} not among {', '.join(LEVERS)}")
    if ("finetune" in args.what or "predict" in args.what) and args.data != "moby-dick":
        if not (REPO / "data" / args.data / "train.jsonl").is_file():
            p.error(f"--data {args.data}: data/{args.data}/train.jsonl is missing: run `.venv/bin/python scripts/fetch_data.py {args.data}`")
    from lmtune import devices

    args.precision_reason = devices.resolve("cpu", args.precision).reason
    args.precision = devices.resolve("cpu", args.precision).precision
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
# matmul peak, in the precision the benchmark trains in


def matmul_gflops(n: int, dtype: torch.dtype, reps: int = 10, device: str = "cpu") -> float:
    """Median GFLOP/s of an (n x n) @ (n x n) matmul in `dtype` on `device` (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(3):
        torch.matmul(a, b)
    rates = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def matmul_peak(precision: str) -> dict[str, float | None]:
    """The matmul rate in `precision` (fp32 or bf16) at two sizes, and the share of the CPUs other
    processes used meanwhile."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    probe = ForeignLoad()
    sizes = {f"{n}": matmul_gflops(n, dtype) for n in (1024, 2048)}
    return {**sizes, "peak": max(sizes.values()), "foreign_cpu_share": probe.share()}


def best_peak(peaks: list[dict]) -> float:
    """The fastest of the peak measurements taken while other processes left the CPUs idle (all of them
    when none was): a busy machine lowers the peak and would inflate the MFU."""
    quiet = [p["peak"] for p in peaks if (p["foreign_cpu_share"] or 0.0) <= 0.05]
    return max(quiet or [p["peak"] for p in peaks])


# ----------------------------------------------------------------------------------------------
# Model FLOPs


def encoder_params(model: torch.nn.Module) -> int:
    """Parameters of the base model that take part in matmuls: all but the embedding block (token table,
    positions, its LayerNorm), which is lookups."""
    base = model.base_model
    embedding_block = getattr(base, "embeddings", None) or base.get_input_embeddings()
    excluded = {id(p) for p in embedding_block.parameters()}
    return sum(p.numel() for p in base.parameters() if id(p) not in excluded)


def forward_flops(model: torch.nn.Module, lengths: list[int], batch_size: int) -> float:
    """Forward FLOPs of classifying texts of these token `lengths`, batched in this order and padded per
    batch: 2 per encoder parameter per token, plus attention's 4 * seq_len * hidden per layer and token
    (scores and mixing over the padded batch length). The classification head is left out; a BERT's
    pooler, part of the base model, is counted as if it ran at every token (about 2% over for BERT
    mini), which makes the reference's GFLOP/s slightly high and the fp32 ceiling slightly low."""
    cfg, n = model.config, encoder_params(model)
    total = 0.0
    for i in range(0, len(lengths), batch_size):
        batch = lengths[i : i + batch_size]
        longest = max(batch)
        total += len(batch) * longest * (2 * n + 4 * cfg.num_hidden_layers * longest * cfg.hidden_size)
    return total


def flops_per_token(model: torch.nn.Module, seq_len: int, head_fraction: float) -> dict[str, float]:
    """Training FLOPs (forward + backward) per input token of a BERT or ModernBERT masked LM.

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
    from lmtune.modeling import mlm_head

    base = model.base_model
    embeddings = base.get_input_embeddings()
    encoder = encoder_params(model)
    head = mlm_head(model)
    # the decoder weight is tied to the word embeddings; count it once, as hidden x vocab (+ its bias)
    tied = id(embeddings.weight)
    head_params = sum(p.numel() for p in head.parameters() if id(p) != tied)
    if any(id(p) == tied for p in head.parameters()):
        head_params += cfg.hidden_size * cfg.vocab_size
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
            "precision": args.precision,
            "model": {"arch": args.arch, "preset": args.preset},
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
    placement = devices.resolve("cpu", args.precision)
    files = sorted(glob.glob(str(CORPUS)))
    if not files:
        sys.exit(f"no text found at {CORPUS}")
    texts, _ = data.load_texts(files, "data.train", txt_unit=cfg.data.txt_unit, cache_dir=cfg.data.cache_dir)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(
        (b["text"] for b in texts.iter(batch_size=1000)), args.arch, args.vocab, max_length=args.seq_len
    )
    tok_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    blocks = torch.from_numpy(np.array(data.pack_blocks(texts, tokenizer, args.seq_len, num_proc=None, desc="bench")))
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


def lmtune_step_clock():
    """The engine's display, used as a per-step clock: `update` runs after every optimizer step."""
    from lmtune.ui import TrainingDisplay

    class StepClock(TrainingDisplay):
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

    return StepClock()


def train_with_engine(task, t, placement, workdir: Path, prefix: str):
    """engine.train on `task` in a fresh temp run dir, timed per step; (result, clock, run_dir)."""
    from lmtune import engine, runs

    run_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    clock = lmtune_step_clock()
    metrics = runs.MetricsLog(run_dir / "metrics.jsonl")
    try:
        result = engine.train(task, t, placement, run_dir, metrics, clock)
    finally:
        metrics.close()
    return result, clock, run_dir


def timed_window(who: str, steps_ran: int, times: list[float], w: int, n: int) -> tuple[float, float]:
    """Seconds and median step milliseconds of the n steps after w warmup steps (checking that
    exactly w + n steps ran and were timed)."""
    if steps_ran != w + n or len(times) != w + n:
        raise RuntimeError(f"{who} ran {steps_ran} steps ({len(times)} timed), expected {w + n}")
    seconds = times[-1] - times[w - 1]
    return seconds, 1000 * statistics.median(b - a for a, b in zip(times[w - 1 :], times[w:]))


def make_masker(cfg, tokenizer, vocab_size: int):
    """The Masker that `lmtune pretrain` builds (its builder moved from stages/pretrain.py to data.py)."""
    from lmtune import data

    if hasattr(data, "build_masker"):
        return data.build_masker(tokenizer, vocab_size, cfg.mlm)
    from lmtune.stages import pretrain

    return pretrain.build_masker(cfg, tokenizer, vocab_size)


def full_head_loss(model, batch):
    """The stock forward: Hugging Face's own MLM loss, with the vocabulary head on every position."""
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    return out.loss, {}


def run_lmtune(args, cfg, placement, tokenizer, blocks, workdir: Path, variant: dict | None = None) -> dict:
    """lmtune's pretraining step as `lmtune pretrain` runs it; `variant` changes one lever (for --what levers):
    attention (eager | sdpa), optimizer (fused | foreach | loop AdamW), threads, compile (the encoder),
    dropout, full_head (the head on every position), precision, half_blocks (each block cut in two and
    twice the batch size: the same tokens a step, as the first phase of a short-then-long curriculum)."""
    from lmtune import data, devices, engine, runs
    from lmtune.modeling import build_mlm, check_compatible, mlm_loss, use_attention

    variant = variant or {}
    if "dropout" in variant:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dropout": variant["dropout"]})})
    if "precision" in variant:
        placement = devices.resolve("cpu", variant["precision"])
    model = build_mlm(cfg.model, tokenizer, cfg.seed)
    check_compatible(model, tokenizer, cfg.data.max_length)
    attention = use_attention(model, variant.get("attention", cfg.model.attention), placement.device, placement.precision)  # as stages/pretrain.py does
    if variant.get("full_head"):  # ModernBERT's own switch (read once at init); BERT always runs the head everywhere
        model.config.sparse_prediction = False
        if hasattr(model, "sparse_prediction"):
            model.sparse_prediction = False
    masker = make_masker(cfg, tokenizer, model.config.vocab_size)
    t = cfg.train
    if variant.get("compile"):
        t = t.model_copy(update={"compile": True})  # engine.train compiles the encoder, as train.compile does
    if "threads" in variant:
        t = t.model_copy(update={"num_threads": variant["threads"]})
    if variant.get("half_blocks"):
        if blocks.shape[1] % 2:
            sys.exit(f"--levers half: blocks of {blocks.shape[1]} tokens do not halve; pick an even --seq-len")
        blocks = blocks.reshape(-1, blocks.shape[1] // 2)
        t = t.model_copy(update={"batch_size": 2 * t.batch_size})
    threads_before = torch.get_num_threads()
    build_optimizer = engine.build_optimizer
    build_optimizer_variant = None
    if variant.get("optimizer") in ("foreach", "loop"):
        build_optimizer_variant = functools.partial(build_optimizer, kernel=variant["optimizer"])

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
        loss=full_head_loss if variant.get("full_head") else mlm_loss,
        save=lambda m, path: runs.save_hf_checkpoint(m, tokenizer, path),  # what pretrain's _save does
        count=count,
        unit="tokens",
        evaluate=None,  # no evaluation, not even the one at the end
    )
    try:
        if build_optimizer_variant is not None:
            engine.build_optimizer = build_optimizer_variant
        result, clock, run_dir = train_with_engine(task, t, placement, workdir, "lmtune-")
        threads = torch.get_num_threads()
    finally:
        engine.build_optimizer = build_optimizer
        torch.set_num_threads(threads_before)
    w, n = args.warmup, args.steps
    seconds, step_ms = timed_window("lmtune", result.steps, clock.times, w, n)
    tokens = sum(step_tokens[w : w + n])
    masked = sum(step_masked[w : w + n])
    out = {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "masked_fraction": masked / tokens,
        "step_ms_median": step_ms,
        "last_loss": clock.losses[-1] if clock.losses else None,
        "attention": attention,
        "threads": threads,
    }
    del task, model
    shutil.rmtree(run_dir, ignore_errors=True)
    gc.collect()
    return out


# ----------------------------------------------------------------------------------------------
# Hugging Face reference side


def trainer_step_clock():
    """A Trainer callback that records the time at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepClock()


def reference_mlm(cfg, tokenizer) -> torch.nn.Module:
    """The stock Hugging Face masked LM of cfg.model's arch and sizes, as `run_mlm.py` would build it:
    BERT with BertConfig's defaults (dropout 0.1, the head on every position); ModernBERT with lmtune's
    sizes and global attention but ModernBertConfig's default `sparse_prediction=False` (head everywhere)."""
    from transformers import BertConfig, BertForMaskedLM, ModernBertForMaskedLM

    from lmtune.config import resolved_model_sizes
    from lmtune.modeling import modernbert_config
    from lmtune.tokenization import round_up

    sizes = resolved_model_sizes(cfg.model)
    if cfg.model.arch == "modernbert":
        config = modernbert_config(cfg.model, tokenizer, sizes, dropout=0.0)  # ModernBertConfig's default dropout
        config.sparse_prediction = False
        return ModernBertForMaskedLM(config)
    config = BertConfig(  # a standard config: default dropout (0.1), position limit 512, etc.
        vocab_size=round_up(len(tokenizer), 64), pad_token_id=tokenizer.pad_token_id, **sizes
    )
    return BertForMaskedLM(config)


def first_linear(model: torch.nn.Module) -> torch.nn.Module:
    """The first Linear layer of the encoder, whose output dtype shows the compute precision."""
    return next(m for m in model.base_model.modules() if isinstance(m, torch.nn.Linear))


def run_reference(args, cfg, tokenizer, blocks, hf_dataset, workdir: Path) -> dict:
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from lmtune.config import resolved_model_sizes
    from lmtune.tokenization import round_up

    step_tokens: list[int] = []
    step_masked: list[int] = []
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=0.15)

    def collate(features):
        batch = collator(features)
        step_tokens.append(batch["input_ids"].numel())
        step_masked.append(int((batch["labels"] != -100).sum()))
        return batch

    torch.manual_seed(cfg.seed)
    model = reference_mlm(cfg, tokenizer)
    t = cfg.train
    targs = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(prefix="hf-", dir=workdir))),
        bf16=args.precision == "bf16",
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
    clock = trainer_step_clock()
    trainer = Trainer(model=model, args=targs, data_collator=collate, train_dataset=hf_dataset, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict to stdout

    # check the reference really computes in the precision asked (accelerate's autocast): record one Linear's output dtype
    seen: list[torch.dtype] = []
    probe = first_linear(model).register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype) if not seen else None
    )
    result = trainer.train()
    probe.remove()
    w, n = args.warmup, args.steps
    seconds, step_ms = timed_window("reference", result.global_step, clock.times, w, n)
    shapes_ok = all(x == t.batch_size * args.seq_len for x in step_tokens[: w + n])
    if not shapes_ok:
        raise RuntimeError(f"reference batches are not all {t.batch_size}x{args.seq_len}: {step_tokens}")
    tokens = sum(step_tokens[w : w + n])
    masked = sum(step_masked[w : w + n])
    out = {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "masked_fraction": masked / tokens,
        "step_ms_median": step_ms,
        "last_loss": result.training_loss,
        "compute_dtype": str(seen[0]) if seen else None,
        "attention": model.config._attn_implementation,
        "threads": torch.get_num_threads(),
    }
    del trainer, model
    gc.collect()
    return out




# ----------------------------------------------------------------------------------------------
# Classification data and checkpoint, shared by the finetune and predict benchmarks

SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z\"'\u201c\u2018\u2014(])")


def moby_dick_sentences() -> tuple[list[str], list[str]]:
    """(paragraphs, sentences) of the sample: paragraphs split at blank lines, sentences at . ! ? ;
    followed by a capital or an opening quote; sentences under 3 words are dropped."""
    files = sorted(glob.glob(str(CORPUS)))
    if not files:
        sys.exit(f"no text found at {CORPUS}")
    paragraphs = []
    for path in files:
        for block in re.split(r"\n\s*\n", Path(path).read_text(encoding="utf-8")):
            text = " ".join(block.split())
            if text:
                paragraphs.append(text)
    sentences = [s for p in paragraphs for s in SENTENCE_END.split(p) if len(s.split()) >= 3]
    return paragraphs, sentences


def classification_data(name: str) -> tuple[list[str], list[str], list[str]]:
    """(tokenizer training texts, texts, labels) for the finetune and predict benchmarks."""
    if name == "moby-dick":
        paragraphs, sentences = moby_dick_sentences()
        return paragraphs, sentences, ["whale" if "whale" in t.lower() else "other" for t in sentences]
    path = REPO / "data" / name / "train.jsonl"
    if not path.is_file():
        sys.exit(f"--data {name}: {path} is missing: run `.venv/bin/python scripts/fetch_data.py {name}` first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    return texts, texts, [str(r["label"]) for r in rows]


class Classification:
    """The labelled sentences, the checkpoint dir both sides load, and each side's tokenized copy."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        import datasets
        from transformers import BertConfig, BertForMaskedLM

        from lmtune import config as lcfg
        from lmtune import data
        from lmtune.config import ModelSection, resolved_model_sizes
        from lmtune.labels import encode, infer_spec
        from lmtune.tokenization import load_checkpoint_tokenizer, round_up, train_tokenizer

        self.max_length = args.seq_len
        self.data = args.data
        paragraphs, self.texts, self.labels = classification_data(args.data)
        self.spec = infer_spec(self.labels, "auto", "bench", "label")
        self.targets = encode(self.labels, self.spec, "bench", "label")

        # the checkpoint: a fresh masked LM with a standard config (dropout 0.1) and its own tokenizer
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(iter(paragraphs), "bert", args.vocab, max_length=args.seq_len)
        sizes = resolved_model_sizes(ModelSection(preset=args.preset))
        config = BertConfig(vocab_size=round_up(len(tokenizer), 64), pad_token_id=tokenizer.pad_token_id, **sizes)
        torch.manual_seed(args.seed)
        self.checkpoint = workdir / "mlm-checkpoint"
        BertForMaskedLM(config).save_pretrained(self.checkpoint)
        tokenizer.save_pretrained(self.checkpoint)
        self.build_s = time.perf_counter() - t0

        # lmtune's copy: what stages/finetune.py does (the checkpoint's tokenizer, encode_rows, no padding)
        self.tokenizer = load_checkpoint_tokenizer(str(self.checkpoint))
        self.encoded = data.encode_rows(self.tokenizer, self.texts, None, args.seq_len, self.targets)
        self.lengths = self.encoded.lengths
        # the reference's copy: run_glue.py-style preprocessing of a datasets.Dataset (truncate, no padding)
        from transformers import AutoTokenizer

        ref_tokenizer = AutoTokenizer.from_pretrained(str(self.checkpoint))
        raw = datasets.Dataset.from_dict({"text": self.texts, "label": self.targets.tolist()})
        self.hf_train = raw.map(
            lambda b: ref_tokenizer(b["text"], padding=False, max_length=args.seq_len, truncation=True),
            batched=True, remove_columns=["text"],
        )
        self.ref_tokenizer = ref_tokenizer
        ref_lengths = [len(x) for x in self.hf_train["input_ids"]]
        if ref_lengths != self.lengths.tolist():
            raise RuntimeError("lmtune and the reference tokenize the sentences differently")

        # the finetune run's settings: finetune/base.yaml's lr and warmup, no evaluation, no checkpoints
        self.cfg = lcfg.validate(
            {
                "seed": args.seed,
                "device": "cpu",
                "precision": args.precision,
                "train": {
                    "batch_size": args.batch_size,
                    "max_steps": args.ft_warmup + args.ft_steps,
                    "lr": 1.0e-4,
                    "warmup": 0.1,
                    "scheduler": "linear",
                    "eval_every": None,
                    "save_every": None,
                    "num_threads": args.threads,
                },
            }
        )
        rng = torch.Generator().manual_seed(args.seed)
        pick = torch.randperm(len(self.texts), generator=rng)[: args.predict_texts].tolist()
        self.predict_texts = [self.texts[i] for i in pick]  # a seeded sample, in random order
        self.predict_lengths = [int(self.lengths[i]) for i in pick]
        self.classifier_dir: Path | None = None  # set by the first lmtune finetune run

    def info(self) -> dict:
        lengths = self.lengths
        counts = {name: self.labels.count(name) for name in self.spec.names}
        return {
            "data": self.data,
            "sentences": len(self.texts),
            "label_counts": counts,
            "labels": list(self.spec.names),
            "tokens_median": float(statistics.median(lengths.tolist())),
            "tokens_mean": float(lengths.mean()),
            "truncated_share": float((lengths >= self.max_length).mean()),
            "tokenizer_size": len(self.tokenizer),
            "checkpoint_build_s": self.build_s,
        }


def weights_checksum(model: torch.nn.Module) -> float:
    """A checksum of every weight (the loaded encoder and the freshly initialised pooler and head):
    equal on both sides when they start from the same weights."""
    return sum(float(p.detach().double().abs().sum()) for p in model.parameters())


def run_lmtune_finetune(args, cls: Classification, placement, workdir: Path) -> dict:
    from lmtune import data, engine, fastdropout, runs
    from lmtune.modeling import check_compatible, classification_loss, load_for_finetuning, use_attention

    torch.manual_seed(args.seed)
    model, _ = load_for_finetuning(str(cls.checkpoint), cls.spec, None)  # dropout: the checkpoint's (0.1)
    check_compatible(model, cls.tokenizer, args.seq_len)
    attention = use_attention(model, "auto", placement.device, placement.precision)  # the default model.attention
    if args.torch_dropout:  # undo lmtune.fastdropout: PyTorch's dropout modules and transformers' eager attention
        for module in model.modules():
            if isinstance(module, fastdropout.FastDropout):
                module.__class__ = torch.nn.Dropout
        if model.config._attn_implementation == fastdropout.ATTENTION:
            model.set_attn_implementation("eager")
        attention += ", torch dropout"
    checksum = weights_checksum(model)
    t = cls.cfg.train
    pad_id = cls.tokenizer.pad_token_id
    enc, lengths = cls.encoded, cls.lengths
    step_tokens: list[int] = []
    step_real: list[int] = []
    step_rows: list[int] = []

    def batches(epoch: int, first: int):  # as stages/finetune.py
        order = data.length_grouped_batches(lengths, t.batch_size, cls.cfg.seed, epoch)
        for rows in order[first:]:
            yield data.pad_batch(enc, rows, pad_id)

    def count(batch) -> int:
        step_tokens.append(batch["input_ids"].numel())
        step_real.append(int(batch["attention_mask"].sum()))
        step_rows.append(int(batch["input_ids"].shape[0]))  # each window's last batch may be short
        return int(batch["input_ids"].shape[0])

    task = engine.Task(
        model=model,
        batches=batches,
        batches_per_epoch=-(-len(lengths) // t.batch_size),
        loss=lambda m, b: classification_loss(m, b, cls.spec.problem, None),
        save=lambda m, path: runs.save_hf_checkpoint(m, cls.tokenizer, path),
        count=count,
        unit="samples",
        evaluate=None,
    )
    result, clock, run_dir = train_with_engine(task, t, placement, workdir, "lmtune-ft-")
    w, n = args.ft_warmup, args.ft_steps
    seconds, step_ms = timed_window("lmtune", result.steps, clock.times, w, n)
    samples = sum(step_rows[w : w + n])
    out = {
        "samples_per_s": samples / seconds,
        "seconds": seconds,
        "samples": samples,
        "padded_tokens": sum(step_tokens[w : w + n]),
        "real_tokens": sum(step_real[w : w + n]),
        "step_ms_median": step_ms,
        "last_loss": clock.losses[-1] if clock.losses else None,
        "attention": attention,
        "init_checksum": checksum,
        "threads": torch.get_num_threads(),
    }
    if cls.classifier_dir is None:  # keep the first fine-tuned classifier for the predict benchmark
        cls.classifier_dir = run_dir / "final"
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    del task, model
    gc.collect()
    return out


def run_reference_finetune(args, cls: Classification, workdir: Path) -> dict:
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from lmtune.labels import HF_PROBLEM_TYPES

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(cls.checkpoint),
        num_labels=cls.spec.num_labels,
        id2label=cls.spec.id2label,
        label2id=cls.spec.label2id,
        problem_type=HF_PROBLEM_TYPES[cls.spec.problem],
    )
    checksum = weights_checksum(model)
    collator = DataCollatorWithPadding(tokenizer=cls.ref_tokenizer)
    step_tokens: list[int] = []
    step_real: list[int] = []
    step_rows: list[int] = []

    def collate(features):
        batch = collator(features)
        step_tokens.append(batch["input_ids"].numel())
        step_real.append(int(batch["attention_mask"].sum()))
        step_rows.append(int(batch["input_ids"].shape[0]))
        return batch

    t = cls.cfg.train
    targs = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(prefix="hf-ft-", dir=workdir))),
        bf16=args.precision == "bf16",
        use_cpu=True,
        per_device_train_batch_size=t.batch_size,
        max_steps=args.ft_warmup + args.ft_steps,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_eps,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup,  # a fraction of max_steps, as lmtune's
        train_sampling_strategy=args.ref_sampling,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    clock = trainer_step_clock()
    trainer = Trainer(model=model, args=targs, data_collator=collate, train_dataset=cls.hf_train, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    seen: list[torch.dtype] = []
    probe = first_linear(model).register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype) if not seen else None
    )
    result = trainer.train()
    probe.remove()
    w, n = args.ft_warmup, args.ft_steps
    seconds, step_ms = timed_window("reference", result.global_step, clock.times, w, n)
    samples = sum(step_rows[w : w + n])
    out = {
        "samples_per_s": samples / seconds,
        "seconds": seconds,
        "samples": samples,
        "padded_tokens": sum(step_tokens[w : w + n]),
        "real_tokens": sum(step_real[w : w + n]),
        "step_ms_median": step_ms,
        "last_loss": result.training_loss,
        "compute_dtype": str(seen[0]) if seen else None,
        "attention": model.config._attn_implementation,
        "init_checksum": checksum,
        "threads": torch.get_num_threads(),
    }
    del trainer, model
    gc.collect()
    return out


def fresh_classifier(cls: Classification, workdir: Path) -> Path:
    """The checkpoint with a new (untrained) head, saved as a classifier: for `--what predict` alone."""
    from lmtune import runs
    from lmtune.modeling import load_for_finetuning

    torch.manual_seed(0)
    model, _ = load_for_finetuning(str(cls.checkpoint), cls.spec, None)
    path = workdir / "fresh-classifier"
    runs.save_hf_checkpoint(model, cls.tokenizer, path)
    return path


def batch_padding(lengths: list[int], batch_size: int) -> int:
    """Tokens fed to the model when `lengths` are batched in this order and padded per batch."""
    return sum(max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))


# ----------------------------------------------------------------------------------------------
# Running the two sides in alternation


def abba(args, label: str, sides: dict, repeats: int, rate_key: str, unit: str, before_run=None, detail=None) -> list[dict]:
    """Run `sides` ("lmtune", "reference": callables returning a dict with `rate_key`) for `repeats`
    rounds in ABBA order, waiting for idle CPUs before each round and run; return the rounds.
    `before_run`, when given, runs after each wait and its dict goes into the round under "before_<side>"."""
    rounds = []
    r = 0
    rate_unit = unit if "/" in unit else f"{unit}/s"
    while sum(not disturbed(x) for x in rounds) < repeats and r < repeats + args.retries:
        if r >= repeats:
            print(f"  (a repeat was disturbed by other processes: extra repeat {r + 1 - repeats} of at most {args.retries})", flush=True)
        note = wait_until_idle(args.wait_idle) if args.wait_idle else None
        if note:
            print(f"  ({note})", flush=True)
        round_load = ForeignLoad()
        order = ("lmtune", "reference") if r % 2 == 0 else ("reference", "lmtune")
        row: dict = {"order": order}
        for side in order:
            torch.manual_seed(args.seed)
            note = wait_until_idle(args.wait_idle) if args.wait_idle else None
            if note:
                print(f"  ({note})", flush=True)
            if before_run:
                row[f"before_{side}"] = before_run()
            run_load = ForeignLoad()
            t0 = time.perf_counter()
            row[side] = sides[side]()
            share = row[side]["foreign_cpu_share"] = run_load.share()
            print(
                f"  {side:<9} {row[side][rate_key]:>9,.0f} {rate_unit}"
                + (f", {detail(row[side])}" if detail else "")
                + f" (run took {time.perf_counter() - t0:.0f} s"
                + ("" if share is None else f"; other processes used {100 * share:.0f}% of the CPUs")
                + ")",
                flush=True,
            )
        row["foreign_cpu_share"] = round_load.share()
        rounds.append(row)
        lm, ref = row["lmtune"][rate_key], row["reference"][rate_key]
        print(
            f"{label} repeat {r + 1}/{repeats}: lmtune {lm:,.0f} {rate_unit}, reference {ref:,.0f} {rate_unit}, ratio {lm / ref:.2f}x"
            + ("" if row["foreign_cpu_share"] is None else f", other processes {100 * row['foreign_cpu_share']:.0f}% CPU")
            + (" (disturbed: left out)" if disturbed(row) else ""),
            flush=True,
        )
        r += 1
    return rounds


def disturbed(row: dict) -> bool:
    """A round in which other processes took more than 5% of the CPUs during either run measures them."""
    return any((row[side]["foreign_cpu_share"] or 0.0) > 0.05 for side in ("lmtune", "reference"))


def clean_rounds(rounds: list[dict]) -> list[dict]:
    """The undisturbed rounds (all of them when every round was disturbed); marks `used_in_medians`."""
    clean = [r for r in rounds if not disturbed(r)] or rounds
    for r in rounds:
        r["used_in_medians"] = any(r is c for c in clean)
    return clean


def medians(rounds: list[dict], rate_key: str) -> dict:
    clean = clean_rounds(rounds)
    lm = statistics.median(r["lmtune"][rate_key] for r in clean)
    ref = statistics.median(r["reference"][rate_key] for r in clean)
    return {
        "lmtune": lm,
        "reference": ref,
        "ratio": lm / ref,
        "rounds_used": len(clean),
        "rounds": len(rounds),
        "all_disturbed": len(clean) == len(rounds) and any(disturbed(r) for r in rounds),
    }


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    print(f"\n{title}")
    print("-" * (width + vwidth + 3))
    for k, v in rows:
        print(f"{k:<{width}}   {v:>{vwidth}}")
    print("-" * (width + vwidth + 3), flush=True)


def section(name: str) -> None:
    print(f"\n=== {name} " + "=" * max(3, 72 - len(name)), flush=True)


# ----------------------------------------------------------------------------------------------
# The three benchmarks


def bench_pretrain(args: argparse.Namespace, workdir: Path) -> dict:
    import datasets

    section(f"pretrain: tokens/s, {args.precision}, {args.arch} {args.preset}")
    cfg, placement, tokenizer, blocks, data_info = prepare(args, workdir)
    hf_dataset = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
    print(
        f"data: {data_info['files']} files, {data_info['texts']} paragraphs, tokenizer {data_info['tokenizer_size']} "
        f"tokens, {data_info['blocks']} blocks of {args.seq_len} ({data_info['tokens']:,} tokens)",
        flush=True,
    )
    print(
        f"preset {args.preset}, batch {args.batch_size} x {args.seq_len}, {args.warmup} warmup + {args.steps} "
        f"measured steps per run, {args.repeats} repeats" + (", lmtune with train.compile" if args.compile else ""),
        flush=True,
    )
    rounds = abba(
        args,
        "pretrain",
        {
            "lmtune": lambda: run_lmtune(args, cfg, placement, tokenizer, blocks, workdir, {"compile": True} if args.compile else None),
            "reference": lambda: run_reference(args, cfg, tokenizer, blocks, hf_dataset, workdir),
        },
        args.repeats,
        "tokens_per_s",
        "tok",
        before_run=lambda: {"matmul_gflops": matmul_peak(args.precision)},
        detail=lambda r: f"{r['step_ms_median']:6.0f} ms/step, {r['attention']} attention",
    )

    # FLOPs per token, from the built models and the measured masked share
    from lmtune.modeling import build_mlm

    lm_model = build_mlm(cfg.model, tokenizer, cfg.seed)
    ref_model = reference_mlm(cfg, tokenizer)
    med = medians(rounds, "tokens_per_s")
    clean = [r for r in rounds if r["used_in_medians"]]
    lm_masked = statistics.median(r["lmtune"]["masked_fraction"] for r in clean)
    lm_flops = flops_per_token(lm_model, args.seq_len, head_fraction=lm_masked)
    ref_flops = flops_per_token(ref_model, args.seq_len, head_fraction=1.0)
    lm_tps, ref_tps = med["lmtune"], med["reference"]
    peak = best_peak([r[f"before_{side}"]["matmul_gflops"] for r in rounds for side in ("lmtune", "reference")])
    lm_mfu = lm_tps * lm_flops["per_token"] / (peak * 1e9)
    ref_mfu = ref_tps * ref_flops["per_token"] / (peak * 1e9)
    print(
        f"\nmodel FLOPs per token (fwd+bwd): lmtune {lm_flops['per_token'] / 1e6:.2f} M = encoder "
        f"{lm_flops['encoder_flops'] / 1e6:.2f} M + attention {lm_flops['attention_flops'] / 1e6:.2f} M + head "
        f"{lm_flops['head_flops'] / 1e6:.2f} M (on the measured {lm_masked:.3f} masked share); "
        f"reference {ref_flops['per_token'] / 1e6:.2f} M (head on every token)"
    )
    left_out = med["rounds"] - med["rounds_used"]
    print_table(
        f"pretrain: medians over {med['rounds_used']} of {med['rounds']} repeats"
        + (f" ({left_out} left out: other processes used over 5% of the CPUs)" if left_out else "")
        + f", {args.steps} measured steps each, preset {args.preset}, batch {args.batch_size} x {args.seq_len}, {args.precision}, "
        f"{torch.get_num_threads()} threads",
        [
            ("lmtune tokens/s", f"{lm_tps:,.0f}"),
            ("reference (HF Trainer) tokens/s", f"{ref_tps:,.0f}"),
            ("ratio lmtune / reference", f"{lm_tps / ref_tps:.2f}x"),
            (f"{args.precision} matmul peak GFLOP/s (best quiet sample)", f"{peak:,.0f}"),
            ("lmtune achieved GFLOP/s", f"{lm_tps * lm_flops['per_token'] / 1e9:,.1f}"),
            ("lmtune MFU", f"{100 * lm_mfu:.1f}%"),
            ("reference MFU (its own FLOPs)", f"{100 * ref_mfu:.1f}%"),
        ],
    )
    return {
        "data": data_info,
        "placement": placement.as_dict(),
        "model": {
            "params": sum(p.numel() for p in lm_model.parameters()),
            "vocab_size": lm_model.config.vocab_size,
            **{k: lm_model.config.to_dict()[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")},
        },
        "flops_per_token": {"lmtune": lm_flops, "reference": ref_flops},
        "rounds": rounds,
        "median": {
            **med,
            "lmtune_tokens_per_s": lm_tps,
            "reference_tokens_per_s": ref_tps,
            "matmul_peak_gflops": peak,
            "precision": args.precision,
            "lmtune_mfu": lm_mfu,
            "reference_mfu": ref_mfu,
        },
        "unit": "tokens/s",
    }


LEVERS = {
    "sdpa": ("SDPA attention instead of eager", {"attention": "sdpa"}),
    "eager": ("eager attention instead of SDPA", {"attention": "eager"}),
    "foreach": ("foreach AdamW instead of fused", {"optimizer": "foreach"}),
    "loop": ("for-loop AdamW instead of fused", {"optimizer": "loop"}),
    "threads1": ("1 torch thread instead of one per core", {"threads": 1}),
    "compile": ("torch.compile on the encoder", {"compile": True}),
    "dropout": ("dropout 0.1 instead of 0", {"dropout": 0.1}),
    "fullhead": ("vocabulary head on every position", {"full_head": True}),
    "half": ("blocks of half the length, twice as many a batch", {"half_blocks": True}),
    "bf16": ("bf16 autocast instead of fp32", {"precision": "bf16"}),
    "fp32": ("fp32 instead of bf16 autocast", {"precision": "fp32"}),
}


def bench_levers(args: argparse.Namespace, workdir: Path) -> dict:
    """lmtune's pretraining step as shipped against the same step with one lever changed, alternating."""
    from lmtune.devices import cpu_has_native_bf16

    section(f"levers: lmtune pretraining tokens/s with one change each, {args.arch} {args.preset}, {args.precision}")
    cfg, placement, tokenizer, blocks, _ = prepare(args, workdir)
    names = [n.strip() for n in args.levers.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        sys.exit(f"--levers: {', '.join(unknown)} not among {', '.join(LEVERS)}")
    out: dict = {}
    rows = []
    for name in names:
        what, variant = LEVERS[name]
        if variant.get("precision") == args.precision:
            continue  # the shipped precision already
        if variant.get("precision") == "bf16" and not cpu_has_native_bf16():
            note = f"this CPU has no native bf16: a bf16 matmul runs {matmul_gflops(1024, torch.bfloat16):.1f} GFLOP/s"
            print(f"{what}: skipped ({note}, against {matmul_gflops(1024, torch.float32):.0f} in fp32)", flush=True)
            out[name] = {"skipped": note}
            continue
        print(f"\n{what}", flush=True)
        rounds = abba(
            args,
            name,
            {
                "lmtune": lambda: run_lmtune(args, cfg, placement, tokenizer, blocks, workdir),
                "reference": lambda v=variant: run_lmtune(args, cfg, placement, tokenizer, blocks, workdir, v),
            },
            args.repeats,
            "tokens_per_s",
            "tok",
            detail=lambda r: f"{r['step_ms_median']:6.0f} ms/step, loss {r['last_loss']:.4f}",
        )
        med = medians(rounds, "tokens_per_s")
        clean = [r for r in rounds if r["used_in_medians"]]
        loss = {side: statistics.median(r[side]["last_loss"] for r in clean) for side in ("lmtune", "reference")}
        out[name] = {"what": what, "variant": variant, "rounds": rounds, "median": med, "last_loss": loss}
        rows.append((what, f"{med['lmtune']:,.0f}", f"{med['reference']:,.0f}", f"{1 / med['ratio']:.2f}x",
                     f"{loss['lmtune']:.4f} / {loss['reference']:.4f}", f"{med['rounds_used']}/{med['rounds']}"))
    header = ("change", "shipped tok/s", "changed tok/s", "changed / shipped", "loss shipped / changed", "clean repeats")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print(f"\nlevers: medians, {args.steps} measured steps per run, batch {args.batch_size} x {args.seq_len}")
    for i, r in enumerate([header] + rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    return out


def bench_finetune(args: argparse.Namespace, cls: Classification, workdir: Path) -> dict:
    from lmtune import devices

    section(f"finetune: samples/s, {args.precision}, data {args.data}")
    placement = devices.resolve("cpu", args.precision)
    info = cls.info()
    print(
        f"data: {info['data']}, {info['sentences']} texts (labels {info['label_counts']}), median {info['tokens_median']:.0f} "
        f"tokens (mean {info['tokens_mean']:.1f}), {100 * info['truncated_share']:.1f}% truncated at {args.seq_len}; "
        f"tokenizer {info['tokenizer_size']} tokens; checkpoint: fresh {args.preset} BertForMaskedLM",
        flush=True,
    )
    print(
        f"batch {args.batch_size}, max length {args.seq_len}, {args.ft_warmup} warmup + {args.ft_steps} measured steps "
        f"per run, {args.repeats} repeats; reference sampling: {args.ref_sampling}",
        flush=True,
    )

    def detail(r: dict) -> str:
        pad = 1 - r["real_tokens"] / r["padded_tokens"]
        return (
            f"{r['step_ms_median']:5.0f} ms/step, {r['real_tokens'] / r['samples']:.1f} tokens/sample, "
            f"{100 * pad:4.1f}% padding, {r['attention']} attention"
        )

    rounds = abba(
        args,
        "finetune",
        {
            "lmtune": lambda: run_lmtune_finetune(args, cls, placement, workdir),
            "reference": lambda: run_reference_finetune(args, cls, workdir),
        },
        args.repeats,
        "samples_per_s",
        "samples",
        detail=detail,
    )
    med = medians(rounds, "samples_per_s")
    clean = [r for r in rounds if r["used_in_medians"]]
    same_init = all(
        abs(r["lmtune"]["init_checksum"] - r["reference"]["init_checksum"]) <= 1e-6 * max(1.0, r["lmtune"]["init_checksum"])
        for r in rounds
    )

    def pad_share(side: str) -> float:
        return 1 - sum(r[side]["real_tokens"] for r in clean) / sum(r[side]["padded_tokens"] for r in clean)

    def tokens_per_sample(side: str) -> float:
        return sum(r[side]["real_tokens"] for r in clean) / sum(r[side]["samples"] for r in clean)

    def tokens_per_s(side: str) -> float:
        return statistics.median(r[side]["real_tokens"] / r[side]["seconds"] for r in clean)

    left_out = med["rounds"] - med["rounds_used"]
    print_table(
        f"finetune: medians over {med['rounds_used']} of {med['rounds']} repeats"
        + (f" ({left_out} left out: other processes used over 5% of the CPUs)" if left_out else "")
        + f", {args.ft_steps} measured steps each, batch {args.batch_size}, max length {args.seq_len}, {args.precision}",
        [
            ("lmtune samples/s", f"{med['lmtune']:,.1f}"),
            ("reference (HF Trainer) samples/s", f"{med['reference']:,.1f}"),
            ("ratio lmtune / reference", f"{med['ratio']:.2f}x"),
            ("lmtune padding share", f"{100 * pad_share('lmtune'):.1f}%"),
            ("reference padding share", f"{100 * pad_share('reference'):.1f}%"),
            ("lmtune tokens/sample (measured steps)", f"{tokens_per_sample('lmtune'):.1f}"),
            ("reference tokens/sample (measured steps)", f"{tokens_per_sample('reference'):.1f}"),
            ("lmtune real tokens/s", f"{tokens_per_s('lmtune'):,.0f}"),
            ("reference real tokens/s", f"{tokens_per_s('reference'):,.0f}"),
            ("ratio of real tokens/s", f"{tokens_per_s('lmtune') / tokens_per_s('reference'):.2f}x"),
            ("same initial weights", "yes" if same_init else "NO"),
        ],
    )
    if not same_init:
        print("WARNING: the two sides started from different classifier-head weights")
    return {
        "data": info,
        "placement": placement.as_dict(),
        "rounds": rounds,
        "median": {
            **med,
            "lmtune_samples_per_s": med["lmtune"],
            "reference_samples_per_s": med["reference"],
            "lmtune_padding_share": pad_share("lmtune"),
            "reference_padding_share": pad_share("reference"),
            "lmtune_real_tokens_per_s": tokens_per_s("lmtune"),
            "reference_real_tokens_per_s": tokens_per_s("reference"),
            "lmtune_tokens_per_sample": tokens_per_sample("lmtune"),
            "reference_tokens_per_sample": tokens_per_sample("reference"),
        },
        "same_initial_weights": same_init,
        "unit": "samples/s",
    }


def bench_predict(args: argparse.Namespace, cls: Classification, workdir: Path) -> dict:
    from transformers import pipeline

    from lmtune import devices
    from lmtune.stages.predict import load_classifier, predict, quantize_int8

    precision = args.predict_precision
    section(f"predict: texts/s, lmtune {precision}, reference fp32")
    fine_tuned = cls.classifier_dir is not None
    path = cls.classifier_dir if fine_tuned else fresh_classifier(cls, workdir)
    cpu = torch.device("cpu")
    texts, bs, limit = cls.predict_texts, args.batch_size, args.seq_len
    t0 = time.perf_counter()
    model, tokenizer, info = load_classifier(str(path), cpu)
    flops = {  # counted before any quantisation: an int8 model does the same multiplies
        "lmtune": forward_flops(model, sorted(cls.predict_lengths), bs),
        "reference": forward_flops(model, cls.predict_lengths, bs),
    }
    if precision == "int8":
        model = quantize_int8(model)
    # an int8 model runs without autocast; auto is what `lmtune predict` resolves it to on this machine
    autocast = "fp32" if precision == "int8" else devices.resolve("cpu", precision).precision
    shown = precision if precision in ("int8", autocast) else f"{precision} ({autocast})"
    lm_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = pipeline("text-classification", model=str(path), device="cpu", batch_size=bs)
    ref_load_s = time.perf_counter() - t0
    lm_padded = batch_padding(sorted(cls.predict_lengths), bs)
    ref_padded = batch_padding(cls.predict_lengths, bs)
    real = sum(cls.predict_lengths)
    setup = {
        "classifier": "lmtune fine-tuned (first finetune run)" if fine_tuned else "fresh (untrained head)",
        "texts": len(texts),
        "lmtune_precision": precision,
        "lmtune_load_s": lm_load_s,
        "reference_load_s": ref_load_s,
        "lmtune_model": {"dtype": str(model.dtype), "attention": model.config._attn_implementation},
        "reference_model": {"dtype": str(pipe.model.dtype), "attention": pipe.model.config._attn_implementation},
        "lmtune_padding_share": 1 - real / lm_padded,
        "reference_padding_share": 1 - real / ref_padded,
    }
    print(
        f"{len(texts)} texts (median {statistics.median(cls.predict_lengths):.0f} tokens), batch {bs}, max length {limit}, "
        f"lmtune {shown}, reference fp32; classifier: {setup['classifier']}",
        flush=True,
    )
    print(
        f"lmtune: load_classifier {lm_load_s:.1f} s, {setup['lmtune_model']['dtype']}, {setup['lmtune_model']['attention']} "
        f"attention, {100 * setup['lmtune_padding_share']:.1f}% padding (length-sorted batches); "
        f"reference: pipeline() {ref_load_s:.1f} s, {setup['reference_model']['dtype']}, "
        f"{setup['reference_model']['attention']} attention, {100 * setup['reference_padding_share']:.1f}% padding (input order)",
        flush=True,
    )

    def run_lmtune_predict() -> dict:
        t0 = time.perf_counter()
        results = predict(model, tokenizer, info, texts, batch_size=bs, max_length=limit, device=cpu, precision=autocast)
        labels = [r["label"] for r in results]
        seconds = time.perf_counter() - t0
        return {"samples_per_s": len(texts) / seconds, "seconds": seconds, "labels": labels, "scores": [r["score"] for r in results]}

    def run_reference_predict() -> dict:
        t0 = time.perf_counter()
        results = pipe(texts, truncation=True, max_length=limit)
        labels = [r["label"] for r in results]
        seconds = time.perf_counter() - t0
        return {"samples_per_s": len(texts) / seconds, "seconds": seconds, "labels": labels, "scores": [r["score"] for r in results]}

    sides = {"lmtune": run_lmtune_predict, "reference": run_reference_predict}
    # one untimed pass each (first-call costs); their outputs give the agreement
    first = {side: fn() for side, fn in sides.items()}
    lm_labels, ref_labels = first["lmtune"]["labels"], first["reference"]["labels"]
    agree = sum(a == b for a, b in zip(lm_labels, ref_labels)) / len(texts)
    score_diff = max(
        (abs(a - b) for a, b, x, y in zip(first["lmtune"]["scores"], first["reference"]["scores"], lm_labels, ref_labels) if x == y),
        default=0.0,
    )
    counts = {name: lm_labels.count(name) for name in info.labels}
    print(
        f"untimed first pass: lmtune {first['lmtune']['seconds']:.1f} s, reference {first['reference']['seconds']:.1f} s; "
        f"top labels agree on {100 * agree:.2f}% of texts (largest score difference where they agree {score_diff:.1e}); "
        f"lmtune's labels: {counts}",
        flush=True,
    )

    def slim(fn):
        def run() -> dict:
            out = fn()
            labels = out.pop("labels")
            out.pop("scores")
            out["same_labels_as_first_pass"] = labels == first["lmtune" if fn is run_lmtune_predict else "reference"]["labels"]
            return out

        return run

    rounds = abba(
        args,
        "predict",
        {side: slim(fn) for side, fn in sides.items()},
        args.predict_repeats,
        "samples_per_s",
        "texts",
        detail=lambda r: f"{r['seconds']:.2f} s",
    )
    med = medians(rounds, "samples_per_s")
    left_out = med["rounds"] - med["rounds_used"]
    # how near the fp32 matmul peak the reference runs, and so the most any fp32 prediction could gain
    peak = matmul_peak("fp32")
    ref_gflops = flops["reference"] * med["reference"] / len(texts) / 1e9
    fp32_ceiling = peak["peak"] * 1e9 / (flops["lmtune"] / len(texts)) / med["reference"]
    print_table(
        f"predict: medians over {med['rounds_used']} of {med['rounds']} repeats"
        + (f" ({left_out} left out: other processes used over 5% of the CPUs)" if left_out else "")
        + f", {len(texts)} texts each, batch {bs}, max length {limit}, lmtune {shown}, reference fp32",
        [
            ("lmtune predict() texts/s", f"{med['lmtune']:,.0f}"),
            ("reference pipeline() texts/s", f"{med['reference']:,.0f}"),
            ("ratio lmtune / reference", f"{med['ratio']:.2f}x"),
            ("top-label agreement", f"{100 * agree:.2f}%"),
            ("lmtune padding share", f"{100 * setup['lmtune_padding_share']:.1f}%"),
            ("reference padding share", f"{100 * setup['reference_padding_share']:.1f}%"),
            ("reference GFLOP/s (fp32 matmul peak)", f"{ref_gflops:.0f} ({peak['peak']:.0f})"),
            ("fp32 ceiling: peak-rate lmtune / reference", f"{fp32_ceiling:.2f}x"),
        ],
    )
    return {
        **setup,
        "lmtune_compute_precision": autocast,
        "forward_gflop": {side: f / 1e9 for side, f in flops.items()},
        "reference_gflops": ref_gflops,
        "fp32_matmul_peak": peak,
        "fp32_ceiling_ratio": fp32_ceiling,
        "first_pass_s": {side: first[side]["seconds"] for side in sides},
        "agreement": agree,
        "max_score_difference": score_diff,
        "lmtune_label_counts": counts,
        "rounds": rounds,
        "median": {**med, "lmtune_samples_per_s": med["lmtune"], "reference_samples_per_s": med["reference"]},
        "unit": "texts/s",
    }


# ----------------------------------------------------------------------------------------------
# The whole pretraining pipeline: text files in, a trained checkpoint out


def run_measured(command: list[str]) -> dict:
    """Run `command` offline to completion in its own process: its wall time, its output, the share of
    the CPUs other processes took meanwhile, and its peak resident memory (`ru_maxrss` of that one
    child, from `os.wait4`, so each side's figure is its own)."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "120"}
    probe = ForeignLoad()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall_s": wall, "output": output, "peak_rss_mb": usage.ru_maxrss / 1024, "foreign_cpu_share": probe.share()}


def pipeline_files(args: argparse.Namespace) -> list[str]:
    files = sorted(str(p) for p in Path(args.corpus).rglob("*.txt")) if Path(args.corpus).is_dir() else []
    if not files:
        sys.exit(
            f"--corpus {args.corpus}: no .txt files there: run `.venv/bin/python scripts/fetch_data.py corpus` "
            "(the public-domain corpus, 22 MB) or point --corpus at a directory of .txt files"
        )
    return files


def lmtune_pipeline(args: argparse.Namespace, workdir: Path, files: list[str]) -> dict:
    """`lmtune pretrain` as a user runs it, in its own process, with fresh caches."""
    import yaml

    from lmtune.runs import read_metrics

    run = Path(tempfile.mkdtemp(prefix="pipe-lmtune-", dir=workdir))
    config = {
        "output_dir": str(run / "out"),
        "seed": args.seed,
        "device": "cpu",
        "precision": args.precision,
        "model": {"arch": args.arch, "preset": args.preset, "dropout": 0.0},
        "tokenizer": {"vocab_size": args.vocab},
        "data": {
            "train": [args.corpus],
            "txt_unit": "paragraph",
            "max_length": args.seq_len,
            "validation_fraction": args.pipe_validation,
            "cache_dir": str(run / "cache"),
        },
        "train": {
            "batch_size": args.batch_size,
            "lr": 5.0e-4,
            "max_steps": args.pipe_steps,
            "max_minutes": None,
            "eval_every": None,
            "eval_max_batches": args.pipe_eval_batches,
            "save_every": None,
            "log_every": 10,
            "num_threads": args.threads,
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = run_measured([sys.executable, "-m", "lmtune", "pretrain", str(run / "config.yaml")])
    manifest = json.loads((run / "out" / "manifest.json").read_text())
    records = read_metrics(run / "out" / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    timings = manifest.get("timings", {})
    phases = {
        "load_s": timings.get("load_s"),
        "tokenizer_s": timings.get("tokenizer_s"),
        "tokenize_pack_s": timings.get("pack_s"),
        "train_eval_save_s": (timings["train_s"] + timings.get("model_s", 0.0)) if "train_s" in timings else None,
    }
    result = {
        "phases": phases,
        "total_s": out["wall_s"],
        "peak_rss_mb": out["peak_rss_mb"],
        "steps": train[-1]["step"],
        "tokens": manifest["data"]["train_blocks"] * args.seq_len,
        "first_loss": train[0]["loss"],
        "last_loss": train[-1]["loss"],
        "losses": [(r["step"], r["loss"]) for r in train],
        "foreign_cpu_share": out["foreign_cpu_share"],
    }
    shutil.rmtree(run, ignore_errors=True)
    return result


def reference_pipeline_main(argv: list[str]) -> int:
    """The Hugging Face pipeline, run in its own process by `reference_pipeline`: `datasets.load_dataset`,
    a `tokenizers` WordPiece trained with `train_from_iterator`, run_mlm.py's tokenize + group_texts
    with `datasets.map`, then `Trainer` + `DataCollatorForLanguageModeling`, evaluation and save_model."""
    spec = json.loads(argv[0])
    quiet_libraries()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    import datasets
    from tokenizers import BertWordPieceTokenizer
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast, PrinterCallback, Trainer, TrainingArguments

    from lmtune import config as lcfg

    cache = spec["cache_dir"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    raw = datasets.load_dataset("text", data_files=spec["files"], sample_by="paragraph", split="train", cache_dir=cache)
    raw = raw.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
    split = raw.train_test_split(test_size=spec["validation"], seed=spec["seed"])
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        (b["text"] for b in split["train"].iter(batch_size=1000)),
        vocab_size=spec["vocab"], min_frequency=2, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    from tokenizers.processors import TemplateProcessing

    # a BertWordPieceTokenizer trained from nothing has no post-processor: give it BERT's, as a hub
    # tokenizer has, so every paragraph is [CLS] ... [SEP] as in run_mlm.py
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=spec["seq_len"],
    )
    timings["tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    block = spec["seq_len"]

    def tokenize(batch):  # run_mlm.py, line_by_line=False
        return tokenizer(batch["text"], return_special_tokens_mask=True)

    def group_texts(examples):  # run_mlm.py's group_texts
        concatenated = {k: [t for ex in examples[k] for t in ex] for k in examples}
        total = (len(concatenated["input_ids"]) // block) * block
        return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()}

    tokenized = split.map(tokenize, batched=True, remove_columns=["text"])
    grouped = tokenized.map(group_texts, batched=True)
    timings["tokenize_pack_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = lcfg.validate({"seed": spec["seed"], "model": {"arch": spec["arch"], "preset": spec["preset"]}})
    torch.manual_seed(spec["seed"])
    model = reference_mlm(cfg, tokenizer)
    eval_blocks = min(len(grouped["test"]), spec["eval_batches"] * spec["batch_size"])
    losses: list[tuple[int, float]] = []

    from transformers import TrainerCallback

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append((state.global_step, float(logs["loss"])))

    targs = TrainingArguments(
        output_dir=spec["out"],
        bf16=spec["precision"] == "bf16",
        use_cpu=True,
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        learning_rate=5.0e-4,  # lmtune's train defaults, so both sides optimise alike
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-6,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0.06,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_drop_last=True,
        seed=spec["seed"],
    )
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=0.15)
    trainer = Trainer(
        model=model, args=targs, data_collator=collator, train_dataset=grouped["train"],
        eval_dataset=grouped["test"].select(range(eval_blocks)), callbacks=[Losses()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(spec["out"] + "/final")
    tokenizer.save_pretrained(spec["out"] + "/final")
    timings["train_eval_save_s"] = time.perf_counter() - t0
    print(json.dumps({
        "phases": timings, "tokens": len(grouped["train"]) * block, "losses": losses,
        "eval_loss": metrics.get("eval_loss"),
    }), flush=True)
    return 0


def reference_pipeline(args: argparse.Namespace, workdir: Path, files: list[str]) -> dict:
    run = Path(tempfile.mkdtemp(prefix="pipe-hf-", dir=workdir))
    spec = {
        "files": files, "cache_dir": str(run / "cache"), "out": str(run / "out"), "seed": args.seed,
        "validation": args.pipe_validation, "vocab": args.vocab, "seq_len": args.seq_len, "arch": args.arch,
        "preset": args.preset, "batch_size": args.batch_size, "steps": args.pipe_steps, "precision": args.precision,
        "threads": args.threads, "eval_batches": args.pipe_eval_batches,
    }
    out = run_measured([sys.executable, str(Path(__file__).resolve()), "--pipeline-reference", json.dumps(spec)])
    lines = [line for line in out["output"].splitlines() if line.startswith("{")]
    reported = json.loads(lines[-1])
    result = {
        "phases": reported["phases"],
        "total_s": out["wall_s"],
        "peak_rss_mb": out["peak_rss_mb"],
        "steps": args.pipe_steps,
        "tokens": reported["tokens"],
        "first_loss": reported["losses"][0][1] if reported["losses"] else None,
        "last_loss": reported["losses"][-1][1] if reported["losses"] else None,
        "losses": reported["losses"],
        "foreign_cpu_share": out["foreign_cpu_share"],
    }
    shutil.rmtree(run, ignore_errors=True)
    return result


def with_runs_per_hour(result: dict) -> dict:
    result["runs_per_hour"] = 3600 / result["total_s"]
    return result


PHASES = (
    ("load_s", "read the text files"),
    ("tokenizer_s", "train the tokenizer"),
    ("tokenize_pack_s", "tokenize and pack into blocks"),
    ("train_eval_save_s", "build the model, train, evaluate, save"),
)


def bench_pipeline(args: argparse.Namespace, workdir: Path) -> dict:
    section(f"pipeline: lmtune pretrain end to end, {args.arch} {args.preset}, {args.pipe_steps} steps, {args.precision}")
    files = pipeline_files(args)
    size = sum(Path(f).stat().st_size for f in files)
    print(f"corpus: {args.corpus}, {len(files)} files, {size / 1e6:.1f} MB; fresh datasets caches for every run", flush=True)
    rounds = abba(
        args,
        "pipeline",
        {
            "lmtune": lambda: with_runs_per_hour(lmtune_pipeline(args, workdir, files)),
            "reference": lambda: with_runs_per_hour(reference_pipeline(args, workdir, files)),
        },
        args.pipe_repeats,
        "runs_per_hour",
        "runs/h",
        detail=lambda r: f"{r['total_s']:6.1f} s end to end, peak RSS {r['peak_rss_mb']:,.0f} MB, training loss "
        + " -> ".join("?" if x is None else f"{x:.2f}" for x in (r["first_loss"], r["last_loss"])),
    )
    clean = clean_rounds(rounds)

    def med(side: str, key: str) -> float | None:
        values = [r[side]["phases"][key] for r in clean if r[side]["phases"].get(key) is not None]
        return statistics.median(values) if values else None

    rows = []
    for key, what in PHASES:
        a, b = med("lmtune", key), med("reference", key)
        ratio = f"{b / a:.2f}x" if a and b else ""
        rows.append((what, "" if a is None else f"{a:.1f} s", "" if b is None else f"{b:.1f} s", ratio))
    total_lm = statistics.median(r["lmtune"]["total_s"] for r in clean)
    total_ref = statistics.median(r["reference"]["total_s"] for r in clean)
    rss_lm = max(r["lmtune"]["peak_rss_mb"] for r in rounds)
    rss_ref = max(r["reference"]["peak_rss_mb"] for r in rounds)
    rows.append(("whole process (imports included)", f"{total_lm:.1f} s", f"{total_ref:.1f} s", f"{total_ref / total_lm:.2f}x"))
    rows.append(("peak resident memory", f"{rss_lm:,.0f} MB", f"{rss_ref:,.0f} MB", ""))
    print(f"\npipeline: medians over {len(clean)} of {len(rounds)} repeats (speed-up = reference time / lmtune time)")
    widths = [max(len(r[i]) for r in rows + [("phase", "lmtune", "reference", "speed-up")]) for i in range(4)]
    for i, r in enumerate([("phase", "lmtune", "reference", "speed-up")] + rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("-" * (sum(widths) + 6))
    last = clean[0]
    losses = {side: "?" if last[side]["last_loss"] is None else f"{last[side]['last_loss']:.3f}" for side in ("lmtune", "reference")}
    print(
        f"training loss at the last log before step {args.pipe_steps} (first clean repeat): lmtune {losses['lmtune']}, "
        f"reference {losses['reference']}; tokens packed: lmtune {last['lmtune']['tokens']:,}, "
        f"reference {last['reference']['tokens']:,}"
    )
    return {
        "corpus": {"path": args.corpus, "files": len(files), "bytes": size},
        "rounds": rounds,
        "median": {
            "lmtune": total_lm, "reference": total_ref, "ratio": total_ref / total_lm,
            "phases": {key: {"lmtune": med("lmtune", key), "reference": med("reference", key)} for key, _ in PHASES},
            "lmtune_peak_rss_mb": rss_lm, "reference_peak_rss_mb": rss_ref,
            "all_disturbed": all(disturbed(r) for r in rounds),
        },
        "unit": "seconds end to end",
    }


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--pipeline-reference"]:  # the reference side of the pipeline benchmark, in its own process
        return reference_pipeline_main(argv[1:])
    args = parse_args(argv)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import transformers

    from lmtune import devices

    started = time.perf_counter()
    load = ForeignLoad()
    placement = devices.resolve("cpu", args.precision)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads on "
        f"{os.cpu_count()} CPUs; training in {placement.precision} ({args.precision_reason}); running: {', '.join(args.what)}",
        flush=True,
    )
    results: dict = {
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
    }
    with tempfile.TemporaryDirectory(prefix="lmtune-bench-") as tmp:
        workdir = Path(tmp)
        cls = None
        for name in args.what:
            t0 = time.perf_counter()
            if name == "pretrain":
                results[name] = bench_pretrain(args, workdir)
            elif name == "pipeline":
                results[name] = bench_pipeline(args, workdir)
            elif name == "levers":
                results[name] = bench_levers(args, workdir)
                continue
            else:
                if cls is None:
                    cls = Classification(args, workdir)
                if name == "finetune":
                    results[name] = bench_finetune(args, cls, workdir)
                else:
                    results[name] = bench_predict(args, cls, workdir)
            results[name]["seconds"] = time.perf_counter() - t0

    total = time.perf_counter() - started
    foreign = load.share()
    results["total_s"] = total
    results["foreign_cpu_share"] = foreign

    units = {
        "pretrain": f"tokens/s ({args.precision})",
        "finetune": f"samples/s ({args.precision})",
        "predict": f"texts/s (lmtune {args.predict_precision})",
        "pipeline": "seconds end to end (ratio: reference / lmtune)",
    }
    rows = [("benchmark", "unit", "lmtune", "reference", "ratio", "target", "")]
    for name in [n for n in args.what if n != "levers"]:
        med = results[name]["median"]
        target = TARGETS.get(name)
        met = None if target is None else med["ratio"] >= target
        digits = ",.1f" if name == "pipeline" else ",.0f"
        rows.append(
            (
                name,
                units[name],
                format(med["lmtune"], digits),
                format(med["reference"], digits),
                f"{med['ratio']:.2f}x",
                "-" if target is None else f">= {target:g}x",
                "" if met is None else ("met" if met else "NOT met"),
            )
        )
        results[name]["target"] = target
        results[name]["target_met"] = met
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\nsummary (medians; lmtune / Hugging Face reference, same data, model, batch and precision)")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    print(
        f"total time {total:.0f} s" + ("" if foreign is None else f"; other processes used {100 * foreign:.0f}% of the CPUs meanwhile")
    )
    if any(results[n]["median"]["all_disturbed"] for n in args.what if n != "levers"):
        print("WARNING: other processes competed for the CPUs in every repeat of some benchmark: rerun on an idle machine")
    elif foreign is not None and foreign > 0.05:
        print("note: other processes used the CPUs during part of the benchmark; the disturbed repeats are left out")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
