"""Regenerate docs/RESULTS.md's main table: each task x {TF-IDF, no pretraining, lmtune pretrained for
a CPU budget, MiniLM}, test accuracy and macro-F1 as the mean and spread over fine-tuning seeds,
beside the best validation macro-F1 (each seed's best evaluation, averaged).

Every number comes from a run this script starts (or finds finished) under runs/results/; nothing is
typed in by hand. Steps, in the order they depend on each other:

    python scripts/results.py pretrain               # configs/pretrain/cpu-hour.yaml (60 CPU minutes)
                                                     # and the same architecture left at initialisation
    python scripts/results.py pretrain --minutes 15  # the same recipe as a 15-minute run of its own
    python scripts/results.py pretrain --tag mask-0.3 --set mlm.probability=0.3
                                                     # a variant of the 60-minute recipe: model
                                                     # lmtune-60+mask-0.3, runs/cpu-hour+mask-0.3
                                                     # (with --minutes 30: lmtune-30-run+mask-0.3);
                                                     # a variant that sets model.* also gets its own
                                                     # no-pretraining model, random+TAG
    python scripts/results.py average --tag seed4 --last 4
                                                     # runs/cpu-hour+seed4's final weights averaged with
                                                     # its last 3 checkpoints: model lmtune-60+seed4-lawa4
    python scripts/results.py adapt --model lmtune-30-run --text tweets --minutes 5
                                                     # that model pretrained 5 more minutes on
                                                     # data/tweets/train.jsonl alone (model.init_from):
                                                     # model lmtune-30-run+adapt5-tweets (--text recipe:
                                                     # the recipe's own data, the control)
    python scripts/results.py snapshots              # the 60-minute run's checkpoints nearest 15 and
                                                     # 30 minutes, as loadable model dirs
    python scripts/results.py finetune --tasks tweets --models random lmtune-60 --seeds 0 1 2
    python scripts/results.py table                  # prints the Markdown table (--json FILE too)
    python scripts/results.py summary --budget 30=lmtune-30-run,lmtune-30-run+seed1 --budget 60=lmtune-60
                                                     # the goal's table: per task and budget, every run
                                                     # fine-tuned with the shipped task config, pooled
                                                     # over the budget's pretraining runs
    python scripts/results.py paired --tasks spam --models lmtune-60
                                                     # each seed against TF-IDF on the same test texts:
                                                     # how many each gets right that the other misses,
                                                     # and the exact McNemar p-value (needs
                                                     # scripts/baseline.py --predictions runs/baseline-predictions)

A finished fine-tuning run (its eval-test/metrics.json exists) is not run again. Needs
scripts/fetch_data.py all, and runs/baselines.json from scripts/baseline.py for the TF-IDF rows.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from scipy.stats import binomtest

from lmtune.config import flat_keys, load_config
from lmtune.runs import read_metrics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "runs" / "results"
PRETRAIN_CONFIG = ROOT / "configs" / "pretrain" / "cpu-hour.yaml"
PRETRAINED = ROOT / "runs" / "cpu-hour"
TASKS = ("tweets", "tweets-2k", "bbc-news", "spam")
SNAPSHOT_MINUTES = (15, 30)
BASELINES = ROOT / "runs" / "baselines.json"  # scripts/baseline.py --json
BASELINE_PREDICTIONS = ROOT / "runs" / "baseline-predictions"  # scripts/baseline.py --predictions


def shorter_run(minutes: int) -> Path:
    """Where `results.py pretrain --minutes N` puts the recipe's run of its own for a shorter budget."""
    return ROOT / "runs" / f"cpu-{minutes}min"


def pretrain_variant(tag: str, minutes: int = 60) -> Path:
    """Where `results.py pretrain [--minutes N] --tag TAG --set ...` puts a variant of the recipe."""
    base = PRETRAINED if minutes == 60 else shorter_run(minutes)
    return base.with_name(f"{base.name}+{tag}")


ADAPTED = RESULTS / "adapted"  # `results.py adapt`: MODEL+adaptN-TEXT


def adapted(model: str, text: str, minutes: int) -> Path:
    """Where `results.py adapt` puts MODEL pretrained `minutes` more on data/TEXT/train.jsonl."""
    return ADAPTED / f"{model}+adapt{minutes}-{text}"


def _adapted_what(name: str) -> str:
    base, _, rest = name.rpartition("+adapt")
    minutes, _, text = rest.partition("-")
    source = "the recipe's own data" if text == "recipe" else f"data/{text}/train.jsonl"
    return f"{base}, then {minutes} more minutes of pretraining on {source}"


# model name -> (checkpoint dir, task config suffix, what the row says)
MODELS: dict[str, tuple[Path, str, str]] = {
    "random": (RESULTS / "random-init" / "final", "", "same architecture, no pretraining"),
    "lmtune-15": (RESULTS / "cpu-hour-at-15min", "", "lmtune, the 60-minute run's checkpoint at 15 minutes"),
    "lmtune-30": (RESULTS / "cpu-hour-at-30min", "", "lmtune, the 60-minute run's checkpoint at 30 minutes"),
    "lmtune-60": (PRETRAINED / "final", "", "lmtune, pretrained 60 minutes"),
    **{
        f"lmtune-{m}-run": (shorter_run(m) / "final", "", f"lmtune, a {m}-minute run of its own (schedule fitted to {m} minutes)")
        for m in SNAPSHOT_MINUTES
    },
    "minilm": (ROOT / "models" / "minilm-l6", "-minilm", "all-MiniLM-L6-v2 (pretrained at scale)"),
    **{  # the architectures of the variants that change model.*, left at initialisation
        f"random+{run.name.partition('+')[2]}": (run / "final", "", f"the {run.name.partition('+')[2]} architecture, no pretraining")
        for run in sorted(RESULTS.glob("random-init+*"))
    },
    **{  # the pretraining variants run so far
        f"{name}+{tag}": (run / "final", "", f"lmtune, pretrained {minutes} minutes with {tag}")
        for minutes, name in [(60, "lmtune-60"), *((m, f"lmtune-{m}-run") for m in SNAPSHOT_MINUTES)]
        for run in sorted(ROOT.glob(f"{pretrain_variant('*', minutes).relative_to(ROOT)}"))
        for tag in [run.name.partition("+")[2]]
    },
    **{run.name: (run / "final", "", _adapted_what(run.name)) for run in sorted(ADAPTED.glob("*+adapt*-*"))},
}


def lmtune(*args: object) -> None:
    command = [sys.executable, "-m", "lmtune", *map(str, args)]
    print("+ lmtune " + " ".join(map(str, args)), flush=True)
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        sys.exit(f"error: lmtune {args[0]} failed")


def sets(overrides: list[str]) -> list[str]:
    """`--set` before each override, for an lmtune command line."""
    return [a for s in overrides for a in ("--set", s)]


def pretrain(args: argparse.Namespace) -> None:
    if bool(args.tag) != bool(args.set):
        sys.exit("error: a pretraining variant needs both --tag and --set")
    if args.tag or args.minutes != 60:  # a variant (model lmtune-60+TAG, lmtune-N-run+TAG) or a shorter run of its own
        out = pretrain_variant(args.tag, args.minutes) if args.tag else shorter_run(args.minutes)
        if not (out / "final").is_dir():
            lmtune("pretrain", PRETRAIN_CONFIG, "--output-dir", out, "--overwrite", *sets([f"train.max_minutes={args.minutes}", *(args.set or [])]))
            if args.tag:
                (out / "protocol.json").write_text(json.dumps({"config": str(PRETRAIN_CONFIG.relative_to(ROOT)), "set": args.set}) + "\n")
    elif not (PRETRAINED / "final").is_dir():
        lmtune("pretrain", PRETRAIN_CONFIG, "--output-dir", PRETRAINED, "--overwrite")
    # the no-pretraining baseline: another architecture or vocabulary gets its own, any other run the recipe's
    if model_sets := [s for s in args.set or [] if s.startswith(("model.", "tokenizer."))]:
        random_init(RESULTS / f"random-init+{args.tag}", model_sets)
    else:
        random_init(RESULTS / "random-init", [])


def adapt(args: argparse.Namespace) -> None:
    """Continue pretraining a model on one task's training text (never its test text), for a budget of
    its own: the recipe's config with model.init_from, a lower peak LR, the same masking and probe."""
    base = MODELS[args.model][0]
    if not base.is_dir():
        sys.exit(f"error: {base} is missing: pretrain {args.model} first")
    # "recipe": the recipe's own corpus and task texts, the control for a task's text alone
    text = [] if args.text == "recipe" else [f"data.train=[{ROOT / 'data' / args.text / 'train.jsonl'}]"]
    out = adapted(args.model, args.text, args.minutes)
    if not (out / "final").is_dir():
        lmtune(
            "pretrain", PRETRAIN_CONFIG, "--output-dir", out, "--overwrite",
            *sets([f"model.init_from={base}", *text, f"train.max_minutes={args.minutes}", f"train.lr={args.lr}", *(args.set or [])]),
        )
        (out / "protocol.json").write_text(json.dumps({"config": str(PRETRAIN_CONFIG.relative_to(ROOT)), "init_from": args.model, "text": args.text, "minutes": args.minutes, "lr": args.lr, "set": args.set}) + "\n")


def random_init(out: Path, overrides: list[str]) -> None:
    """The recipe's architecture (with `overrides`) left at initialisation, with the same tokenizer."""
    if not (out / "final").is_dir():
        # one step at a learning rate of ~0 leaves the initial weights; the tokenizer comes from the cache
        lmtune(
            "pretrain", PRETRAIN_CONFIG, "--output-dir", out, "--overwrite", *sets(overrides),
            "--set", "train.max_steps=1", "--set", "train.lr=1e-12", "--set", "probe=null",
        )


@contextlib.contextmanager
def _replaced(out: Path) -> Iterator[Path]:
    """A temp dir beside `out` to build it in; it replaces `out` only once the block finishes."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def snapshots(args: argparse.Namespace) -> None:
    """Model dirs from the checkpoints nearest each of SNAPSHOT_MINUTES (config and tokenizer from final/)."""
    from lmtune.engine import checkpoint_dirs  # imports torch: only the commands that need it

    checkpoints = checkpoint_dirs(PRETRAINED)
    if not checkpoints:
        sys.exit(f"error: {PRETRAINED}/checkpoints holds no checkpoints: run `results.py pretrain` first")
    elapsed = {p: json.loads((p / "state.json").read_text())["elapsed_s"] for p in checkpoints}
    for minutes in SNAPSHOT_MINUTES:
        nearest = min(checkpoints, key=lambda p: abs(elapsed[p] - minutes * 60))
        out = RESULTS / f"cpu-hour-at-{minutes}min"
        with _replaced(out) as tmp:
            tmp.mkdir(parents=True)
            for f in (PRETRAINED / "final").iterdir():
                if f.name != "model.safetensors":
                    shutil.copy2(f, tmp / f.name)
            shutil.copy2(nearest / "model.safetensors", tmp / "model.safetensors")
            (tmp / "snapshot.json").write_text(json.dumps({"checkpoint": str(nearest), "elapsed_s": elapsed[nearest]}) + "\n")
        print(f"{out}: {nearest.name} at {elapsed[nearest] / 60:.1f} minutes")


def average(args: argparse.Namespace) -> None:
    """A pretraining variant's final weights averaged with equal weight with its last checkpoints before
    the final step (latest weight averaging), as the model dir of a variant TAG-lawaK."""
    import torch
    from safetensors.torch import load_model
    from transformers import AutoModelForMaskedLM

    from lmtune.engine import checkpoint_dirs

    if args.last < 2:
        sys.exit("error: --last counts the weights to average, the final ones included: 2 or more")
    run = pretrain_variant(args.tag)
    if not (run / "final").is_dir():
        sys.exit(f"error: {run}/final is missing: run `results.py pretrain --tag {args.tag} --set ...` first")
    final_step = max((r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"), default=None)
    before = [p for p in checkpoint_dirs(run) if final_step is not None and int(p.name[5:]) < final_step][-(args.last - 1):]
    if len(before) != args.last - 1:
        sys.exit(f"error: {run} needs final/ and {args.last - 1} checkpoints before its last step; it has {len(before)}")
    model = AutoModelForMaskedLM.from_pretrained(run / "final", dtype=torch.float32)
    total = {name: t.detach().clone() for name, t in model.state_dict().items()}
    for checkpoint in before:  # load_model, as a resume does: it knows the names tied weights are saved under
        load_model(model, str(checkpoint / "model.safetensors"))
        for name, t in model.state_dict().items():
            total[name] += t
    model.load_state_dict({name: t / args.last for name, t in total.items()})
    out = pretrain_variant(f"{args.tag}-lawa{args.last}")
    sources = [run / "final", *before]
    with _replaced(out) as tmp:
        shutil.copytree(run / "final", tmp / "final")
        model.save_pretrained(tmp / "final")
        (tmp / "protocol.json").write_text(json.dumps({"averaged": [str(p) for p in sources]}) + "\n")
    print(f"{out}/final: the mean of {run.name}'s {', '.join(p.name for p in sources)}")


def run_dir(task: str, model: str, seed: int, tag: str | None = None) -> Path:
    return RESULTS / task / (f"{model}@{tag}" if tag else model) / f"seed-{seed}"


def finetune(args: argparse.Namespace) -> None:
    for task in args.tasks:
        for model in args.models:
            checkpoint, suffix, _ = MODELS[model]
            if not checkpoint.is_dir():
                sys.exit(f"error: {checkpoint} is missing: run `results.py pretrain` / `snapshots` (or fetch minilm) first")
            for seed in args.seeds:
                out = run_dir(task, model, seed, args.tag)
                if (out / "eval-test" / "metrics.json").is_file():
                    continue
                config = ROOT / "configs" / "finetune" / f"{task}{suffix}.yaml"
                start = time.perf_counter()
                lmtune(
                    "finetune", config, "--output-dir", out, "--overwrite",
                    "--set", f"model.checkpoint={checkpoint}", "--set", f"seed={seed}", *sets(args.set or []),
                )
                lmtune("eval", out / "config.yaml", "--output-dir", out / "eval-test")
                (out / "protocol.json").write_text(json.dumps({"config": str(config.relative_to(ROOT)), "set": args.set or []}) + "\n")
                (out / "wall_s.json").write_text(json.dumps({"finetune_and_eval_s": time.perf_counter() - start}) + "\n")


def _baselines() -> dict[str, dict]:
    """scripts/baseline.py's TF-IDF result for each task it was run on."""
    return {b["task"]: b for b in json.loads(BASELINES.read_text())} if BASELINES.is_file() else {}


def collect() -> list[dict]:
    rows = []
    tfidf = _baselines()
    for task in TASKS:
        if task in tfidf:
            b = tfidf[task]
            rows.append({"task": task, "model": "tfidf", "what": "TF-IDF + logistic regression", "seeds": [],
                         "accuracy": [b["test_accuracy"]], "f1_macro": [b["test_f1_macro"]], "steps": None,
                         "minutes": None, "validation_f1_macro": b.get("validation_f1_macro")})  # baseline.py's own timing: it may have shared the CPU
        variants = sorted(p.name for p in (RESULTS / task).glob("*@*") if p.is_dir())
        for model, (checkpoint, _, what) in MODELS.items():
            if (checkpoint / "snapshot.json").is_file():  # the nearest checkpoint's real step and time
                snap = json.loads((checkpoint / "snapshot.json").read_text())
                what += f" ({Path(snap['checkpoint']).name}, {snap['elapsed_s'] / 60:.1f} min)"
            for variant in [model] + [v for v in variants if v.partition("@")[0] == model]:
                if row := _model_row(task, variant, what):
                    rows.append(row)
    return rows


def _model_row(task: str, variant: str, what: str) -> dict | None:
    """One row from every finished seed of RESULTS/task/variant (MODEL or MODEL@TAG), or None."""
    runs = sorted((RESULTS / task / variant).glob("seed-*/eval-test/metrics.json"))
    if not runs:
        return None
    tag = variant.partition("@")[2]
    metrics = [json.loads(p.read_text()) for p in runs]
    records = [read_metrics(p.parent.parent / "metrics.jsonl") for p in runs]
    train = [r for seed in records for r in seed if r["type"] == "train"]
    # each seed's best validation macro-F1 (what picked its best/ checkpoint), averaged over seeds
    walls = [w for p in runs if (w := _wall_s(p.parent.parent)) is not None]
    best_val = [max((r["eval_f1_macro"] for r in seed if r["type"] == "eval" and "eval_f1_macro" in r), default=None)
                for seed in records]
    return {
        "task": task, "model": variant, "what": f"{what} ({tag})" if tag else what,
        "seeds": [int(p.parent.parent.name.removeprefix("seed-")) for p in runs],
        "accuracy": [m["accuracy"] for m in metrics], "f1_macro": [m["f1_macro"] for m in metrics],
        "steps": max((r["step"] for r in train), default=None),
        "minutes": statistics.mean(walls) / 60 if walls else None,
        "validation_f1_macro": None if None in best_val else statistics.mean(best_val),
    }


def _wall_s(run: Path) -> float | None:
    """A run's fine-tuning and evaluation seconds; None for one stopped between its evaluation and its timing."""
    path = run / "wall_s.json"
    return json.loads(path.read_text())["finetune_and_eval_s"] if path.is_file() else None


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(args: argparse.Namespace) -> None:
    rows = collect()
    print("| task | model | seeds | fine-tuning steps | minutes per run | test accuracy | test macro-F1 "
          "| best validation macro-F1 (mean) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        seeds = ", ".join(map(str, r["seeds"])) or "-"
        steps = "" if r["steps"] is None else f"{r['steps']:,}"
        minutes = "" if r["minutes"] is None else f"{r['minutes']:.1f}"
        val = "" if r["validation_f1_macro"] is None else f"{r['validation_f1_macro']:.4f}"
        print(f"| {r['task']} | {r['what']} | {seeds} | {steps} | {minutes} | {_fmt(r['accuracy'])} | {_fmt(r['f1_macro'])} | {val} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print("\n(mean ± sample standard deviation over the listed fine-tuning seeds)")


# what a run's config may differ in from the shipped task config and still count as fine-tuned with it
RUN_KEYS = {"output_dir", "seed", "model.checkpoint"}


@functools.cache
def _shipped(task: str) -> dict:
    """configs/finetune/TASK.yaml resolved, as flat keys (read once per task)."""
    return flat_keys(load_config(ROOT / "configs" / "finetune" / f"{task}.yaml", cwd=ROOT).model_dump(mode="json"))


def config_diff(run: Path, task: str) -> list[str]:
    """The keys where a fine-tuning run's resolved config differs from configs/finetune/TASK.yaml's, as
    `key=value` of the run, leaving out what names the run (output_dir, seed, model.checkpoint)."""
    shipped = _shipped(task)
    ran = flat_keys(load_config(run / "config.yaml", cwd=ROOT).model_dump(mode="json"))
    keys = sorted((shipped.keys() | ran.keys()) - RUN_KEYS)
    return [f"{k}={ran.get(k)}" for k in keys if shipped.get(k) != ran.get(k)]


def _variants(task: str, model: str) -> list[Path]:
    """RESULTS/task/MODEL and every RESULTS/task/MODEL@TAG."""
    return [RESULTS / task / model, *sorted((RESULTS / task).glob(f"{model}@*"))]


def _pooled_runs(task: str, models: list[str]) -> tuple[list[dict], list[str]]:
    """Every finished seed of MODEL and MODEL@TAG, for each of `models`, whose config is the shipped one;
    and the models that have none."""
    runs, missing = [], []
    for model in models:
        found = []
        for variant in _variants(task, model):
            for metrics in sorted(variant.glob("seed-*/eval-test/metrics.json")):
                run = metrics.parent.parent
                if not config_diff(run, task):
                    found.append({"run": run, **json.loads(metrics.read_text())})
        runs += found
        missing += [] if found else [model]
    return runs, missing


def _cell(runs: list[dict]) -> str:
    if not runs:
        return ""
    return f"{_fmt([r['accuracy'] for r in runs])} / {_fmt([r['f1_macro'] for r in runs])}"


def summary(args: argparse.Namespace) -> None:
    """The goal's table: each task x {TF-IDF, no pretraining, each budget}, from the runs fine-tuned with
    the task's shipped config, pooled over the pretraining runs of each budget."""
    budgets = []
    for spec in args.budget:
        label, _, models = spec.partition("=")
        names = [m for m in models.split(",") if m]
        if not label or not names:
            sys.exit(f"error: --budget {spec!r}: give it as LABEL=MODEL[,MODEL...], e.g. 60=lmtune-60,lmtune-60+seed1")
        budgets.append((label, names))
    tfidf = _baselines()
    print("| task | TF-IDF | no pretraining | " + " | ".join(f"lmtune {label}" for label, _ in budgets) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in budgets) + " |")
    notes = []
    for task in args.tasks:
        b = tfidf.get(task)
        cells = [f"{b['test_accuracy']:.4f} / {b['test_f1_macro']:.4f}" if b else ""]
        # no pretraining: the shipped config, or the variant of it that scores best, whichever is higher
        options = []
        for variant in _variants(task, "random"):
            finished = sorted(variant.glob("seed-*/eval-test/metrics.json"))
            if finished:
                metrics = [json.loads(m.read_text()) for m in finished]
                options.append((statistics.mean(m["accuracy"] for m in metrics), metrics, config_diff(finished[0].parent.parent, task)))
        if options:
            _, metrics, diff = max(options, key=lambda o: o[0])
            cells.append(_cell(metrics))
            if diff:
                notes.append(f"{task}, no pretraining: its best setting, {', '.join(diff)} ({len(options)} measured)")
        else:
            cells.append("")
        for label, models in budgets:
            runs, missing = _pooled_runs(task, models)
            pretrained = len(models) - len(missing)
            cells.append(_cell(runs) + (f" ({len(runs)} runs, {pretrained} pretrainings)" if pretrained > 1 else ""))
            if missing:
                notes.append(f"{task}, {label}: no run with the shipped config for {', '.join(missing)}")
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("\n(test accuracy / macro-F1: mean ± sample standard deviation over every fine-tuning seed of every "
          "pretraining run listed for the budget, fine-tuned with configs/finetune/TASK.yaml as shipped)")
    for note in notes:
        print(f"- {note}")


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers on the same texts, from the texts exactly one
    of them gets right: a binomial test of that split against a fair coin."""
    n = only_first + only_second
    return 1.0 if n == 0 else float(binomtest(only_first, n, 0.5).pvalue)


def _predictions(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def paired(args: argparse.Namespace) -> None:
    """Each finished seed of each model against TF-IDF, text by text on the task's test split."""
    rows = []
    for task in args.tasks:  # everything is read and checked before the table starts
        reference = BASELINE_PREDICTIONS / f"{task}.jsonl"
        if not reference.is_file():
            sys.exit(f"error: {reference} is missing: run scripts/baseline.py data/{task} --predictions {BASELINE_PREDICTIONS}")
        tfidf = _predictions(reference)
        texts = [(r["text"], str(r["gold"])) for r in tfidf]
        for variant in args.models:
            runs = sorted((RESULTS / task / variant).glob("seed-*/eval-test/predictions.jsonl"))
            if not runs:
                sys.exit(f"error: no finished run of {variant} on {task} under {RESULTS / task}")
            for path in runs:
                ours = _predictions(path)
                if [(r["text"], str(r["gold"])) for r in ours] != texts:
                    sys.exit(f"error: {path} and {reference} do not hold the same test texts in the same order")
                right = [(str(o["predicted"]) == str(o["gold"]), t["predicted"] == t["gold"]) for o, t in zip(ours, tfidf)]
                only_ours = sum(a and not b for a, b in right)
                only_tfidf = sum(b and not a for a, b in right)
                p = mcnemar_exact(only_ours, only_tfidf)
                seed = path.parent.parent.name.removeprefix("seed-")
                shown = f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
                rows.append(f"| {task} | {variant} | {seed} | {len(right)} | {only_ours} | {only_tfidf} | {shown} |")
    print("| task | model | seed | test texts | right where TF-IDF is wrong | wrong where TF-IDF is right "
          "| exact McNemar p |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print("\n(p: the chance of a split at least this uneven between the two columns if neither model were the better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pt = sub.add_parser("pretrain", help="a pretraining run (the 60-minute one, a shorter one or a variant) and the random-initialisation model it is compared with")
    pt.add_argument("--minutes", type=int, default=60, choices=(*SNAPSHOT_MINUTES, 60), help="15 or 30: a run of its own in runs/cpu-Nmin (model lmtune-N-run)")
    pt.add_argument("--tag", help="a variant of the recipe (with its --set): runs/cpu-hour+TAG, model lmtune-60+TAG (or lmtune-N-run+TAG)")
    pt.add_argument("--set", action="append", help="the variant's --set, e.g. mlm.probability=0.3")
    av = sub.add_parser("average", help="a pretraining variant's final weights averaged with its last checkpoints")
    av.add_argument("--tag", required=True, help="the variant: runs/cpu-hour+TAG (give it train.save_every small enough)")
    av.add_argument("--last", type=int, default=4, help="how many weights to average, the final ones included")
    ad = sub.add_parser("adapt", help="a model pretrained further on one task's training text: model MODEL+adaptN-TEXT")
    ad.add_argument("--model", required=True, choices=[m for m in MODELS if m.startswith("lmtune")], help="the model to continue")
    ad.add_argument(
        "--text", required=True, choices=[*(t for t in TASKS if t != "tweets-2k"), "recipe"],
        help="data/TEXT/train.jsonl (tweets-2k's labels are a subset of tweets), or the recipe's own data.train",
    )
    ad.add_argument("--minutes", type=int, default=5, help="the budget of the extra pretraining")
    ad.add_argument("--lr", type=float, default=3e-4, help="its peak learning rate (the recipe's is 1e-3)")
    ad.add_argument("--set", action="append", help="extra --set for the run")
    sub.add_parser("snapshots", help="model dirs from the 60-minute run's checkpoints at 15 and 30 minutes")
    ft = sub.add_parser("finetune", help="fine-tune and evaluate each task x model x seed (skips finished runs)")
    ft.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ft.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ft.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ft.add_argument("--set", action="append", help="extra --set for every fine-tuning run, e.g. train.epochs=1")
    ft.add_argument("--tag", help="a variant of the protocol (with its --set): runs go to MODEL@TAG, a row of its own")
    tb = sub.add_parser("table", help="print the Markdown table of every finished run")
    tb.add_argument("--json", help="also write the rows as JSON here")
    sm = sub.add_parser("summary", help="the goal's table: the shipped task configs, pooled over each budget's pretraining runs")
    sm.add_argument("--tasks", nargs="+", default=["tweets-2k", "bbc-news", "spam", "tweets"], choices=TASKS)
    sm.add_argument(
        "--budget", action="append", required=True, metavar="LABEL=MODEL[,MODEL...]",
        help="a column: the models pretrained for that budget, e.g. --budget '60 min=lmtune-60,lmtune-60+seed1'",
    )
    pd = sub.add_parser("paired", help="each seed against TF-IDF on the same test texts, with the exact McNemar p-value")
    pd.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    pd.add_argument("--models", nargs="+", required=True, help="runs under runs/results/TASK/: MODEL or MODEL@TAG")
    args = parser.parse_args()
    {"pretrain": pretrain, "adapt": adapt, "average": average, "snapshots": snapshots, "finetune": finetune, "table": table, "summary": summary, "paired": paired}[args.command](args)


if __name__ == "__main__":
    main()
