"""The `lmtune` command line: parse, load the config, call one stage, print the result, exit.

Exit codes: 0 success; 2 anything the user can fix (one message on stderr, no traceback);
1 an unexpected internal failure; 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lmtune import __version__
from lmtune.errors import ConfigError, LmtuneError, RunDirError, TrainingInterrupted

app = typer.Typer(
    name="lmtune",
    help="Pretrain a BERT-style masked language model on your own text, fine-tune it (or any BERT-family checkpoint) into a classifier, evaluate it and predict with it: one YAML config per task.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show or check config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

log = logging.getLogger("lmtune")
T = TypeVar("T")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set train.lr=3e-4 (the value is parsed as YAML). Repeatable."),
]
OutputDirOption = Annotated[Path | None, typer.Option("--output-dir", help="Run directory (overrides output_dir).")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (overrides device).")]
PrecisionOption = Annotated[str | None, typer.Option("--precision", help="auto | fp32 | bf16 | fp16 (overrides precision).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an output dir that already holds a run.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in the output dir.")]
ForceOption = Annotated[bool, typer.Option("--force", help="With --resume: accept a config that changes what the run computes.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")]


def _guarded(action: Callable[[], T]) -> T:
    """Run `action`, turning lmtune's errors into exit code 2 and anything unexpected into 1."""
    from lmtune import ui

    try:
        return action()
    except LmtuneError as exc:
        ui.error(str(exc))
        raise typer.Exit(2) from None
    except TrainingInterrupted as exc:
        ui.error(str(exc))
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        ui.error("interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception:  # an internal failure: show the traceback, it is a bug to report
        traceback.print_exc()
        ui.error("internal error (the traceback above is a bug in lmtune: please report it)")
        raise typer.Exit(1) from None


def _flag_values(output_dir: Path | None, device: str | None, precision: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if output_dir is not None:
        values["output_dir"] = str(output_dir)
    if device is not None:
        values["device"] = device
    if precision is not None:
        values["precision"] = precision
    return values


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Pretrain a BERT-style masked language model on your own text, fine-tune it (or any BERT-family
    checkpoint) into a classifier, evaluate it and predict with it: one YAML config per task."""


NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc", min=1, help="Train in N processes on this machine (one per GPU, or N CPU processes); "
        "train.batch_size is per process.",
    ),
]


def _train_command(
    stage: str,
    config: Path,
    set_: list[str] | None,
    flags: dict[str, Any],
    resume: bool,
    force: bool,
    overwrite: bool,
    verbose: bool,
    nproc: int,
    report: Callable[[Any], None],
) -> None:
    """What `pretrain` and `finetune` share: checks, the multi-process launch, the run, the report."""
    from lmtune import distributed, ui
    from lmtune.config import load_config

    ui.setup_logging(verbose)
    if resume and overwrite:
        ui.error("--resume and --overwrite contradict each other: choose one")
        raise typer.Exit(2)
    if nproc > 1 and not distributed.launched():
        argv = [stage, str(config), *[a for s in set_ or [] for a in ("--set", s)]]
        for name, value in flags.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        argv += [f for f, on in (("--resume", resume), ("--force", force), ("--overwrite", overwrite), ("--verbose", verbose)) if on]
        raise typer.Exit(distributed.spawn(nproc, argv))

    def run() -> None:
        if stage == "pretrain":
            from lmtune.stages.pretrain import pretrain as train_stage
        else:
            from lmtune.stages.finetune import finetune as train_stage
        cfg = load_config(config, set_ or [], stage=stage, values=flags)  # type: ignore[arg-type]
        try:
            result = train_stage(cfg, overwrite=overwrite, resume=resume, display=ui.TrainingDisplay(), force=force)
        finally:
            distributed.shutdown()
        if os.environ.get("RANK", "0") == "0":  # several processes: rank 0 reports
            report(result)

    _guarded(run)


@app.command()
def pretrain(
    config: Annotated[Path, typer.Argument(help="The YAML config (see configs/pretrain/).")],
    set_: SetOption = None,
    output_dir: OutputDirOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    resume: ResumeOption = False,
    force: ForceOption = False,
    overwrite: OverwriteOption = False,
    nproc: NprocOption = 1,
    verbose: VerboseOption = False,
) -> None:
    """Train a tokenizer and a masked language model from scratch on your text.

    Writes OUTPUT_DIR/final/, an ordinary Hugging Face checkpoint (model + tokenizer), plus
    config.yaml, manifest.json, metrics.jsonl and resumable checkpoints/.
    """
    from lmtune import ui

    def report(result: Any) -> None:
        ui.summary_table(
            "pretraining done",
            {
                "run dir": str(result.run_dir),
                "model": str(result.run_dir / "final"),
                "steps": result.steps,
                "minutes": result.seconds / 60,
                **{k.removeprefix("eval_"): v for k, v in result.metrics.items()},
            },
        )

    flags = _flag_values(output_dir, device, precision)
    _train_command("pretrain", config, set_, flags, resume, force, overwrite, verbose, nproc, report)


@app.command()
def finetune(
    config: Annotated[Path, typer.Argument(help="The YAML config (see configs/finetune/).")],
    set_: SetOption = None,
    output_dir: OutputDirOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    resume: ResumeOption = False,
    force: ForceOption = False,
    overwrite: OverwriteOption = False,
    nproc: NprocOption = 1,
    verbose: VerboseOption = False,
) -> None:
    """Fine-tune a checkpoint (lmtune's or any local BERT-family one) into a text classifier.

    Writes OUTPUT_DIR/best/ (by the selection metric) and final/, Hugging Face checkpoints whose
    config carries the label names, plus config.yaml, manifest.json and metrics.jsonl.
    """
    from lmtune import ui

    def report(result: Any) -> None:
        rows: dict[str, Any] = {"run dir": str(result.run_dir), "problem": result.spec.problem, "steps": result.steps}
        if result.best:
            rows[f"best {result.best['metric']}"] = result.best["value"]
            rows["best model"] = str(result.run_dir / "best")
        rows.update({k.removeprefix("eval_"): v for k, v in result.metrics.items()})
        ui.summary_table("fine-tuning done (validation)", rows)

    flags = _flag_values(output_dir, device, precision)
    _train_command("finetune", config, set_, flags, resume, force, overwrite, verbose, nproc, report)


@app.command("eval")
def eval_(
    target: Annotated[Path, typer.Argument(help="A checkpoint dir, a run dir, or a finetune config (evaluates its data.test).")],
    data_files: Annotated[list[str] | None, typer.Option("--data", help="File(s) to evaluate on. Repeatable.")] = None,
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where results go (default: <checkpoint>/../eval-<data>/).")] = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Measure a classifier on labelled data, or a masked LM on text (perplexity)."""
    from lmtune import ui
    from lmtune.config import load_config, validate

    ui.setup_logging(verbose)

    def run() -> None:
        from lmtune.config import apply_override, resolve_paths
        from lmtune.stages.evaluate import evaluate, resolve_checkpoint

        values = _flag_values(None, device, precision)
        if target.is_file():
            cfg = load_config(target, set_ or [], values=values)
            base = Path(cfg.output_dir) if cfg.output_dir else None
            if base is None:
                raise LmtuneError(f"{target}: the config has no output_dir, so there is no run to evaluate")
            files = list(data_files or cfg.data.test or [])
            max_length = cfg.data.max_length  # the fine-tuning config's own length and windows
            max_windows: int | None = cfg.data.max_windows
        else:
            raw: dict[str, Any] = {}
            for text in set_ or []:
                raw = apply_override(raw, text)
            raw.update(values)
            cfg = resolve_paths(validate(raw, source="--set"))
            max_length = cfg.data.max_length if "max_length" in raw.get("data", {}) else None  # None: the checkpoint's
            max_windows = cfg.data.max_windows if "max_windows" in raw.get("data", {}) else None
            base = target
            files = list(data_files or [])
            if not target.exists():
                raise LmtuneError(f"{target} does not exist: give a checkpoint dir, a run dir or a finetune config")
        files = [str(Path(f).expanduser().resolve()) if Path(f).exists() else f for f in files]
        result = evaluate(resolve_checkpoint(base), files, cfg, output_dir, max_length, max_windows)
        table = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        ui.summary_table(f"eval ({result.kind})", {**table, "results": str(result.output_dir)})

    _guarded(run)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A fine-tuned classifier dir (e.g. runs/NAME/best).")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    input_file: Annotated[str | None, typer.Option("--input", help="A .txt (one text per line), .jsonl, .csv or .tsv file; - reads stdin.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write JSON lines here instead of stdout.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per batch.")] = 64,
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the text in .jsonl/.csv input.")] = "text",
    all_scores: Annotated[bool, typer.Option("--all-scores", help="Include the score of every label.")] = False,
    device: DeviceOption = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="auto (bf16 autocast where the CPU or GPU computes bf16 natively, fp16 on a GPU without bf16, else fp32) | fp32 | bf16 | "
            "fp16 (autocast) | int8 (CPU: int8 weights in the encoder's linear layers). Anything but fp32 is "
            "faster, and a close call can come out the other way; see docs/PERFORMANCE.md.",
        ),
    ] = "auto",
) -> None:
    """Classify texts with a fine-tuned checkpoint; prints one JSON object per text."""
    import json

    from lmtune import devices, runs, ui

    ui.setup_logging(False)

    def run() -> None:
        from lmtune.stages.predict import PRECISIONS, load_classifier, predict as run_predict, quantize_int8, read_inputs

        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision} is not one of {' | '.join(PRECISIONS)}")
        compute = "fp32" if precision == "int8" else precision
        if output is not None:  # before any work: a bad --output should not cost a whole prediction run
            if output.is_dir():
                raise ConfigError(f"--output {output} is a directory: give a file path")
            runs.check_writable_dir(output.parent, "the --output file's directory")
        placement = devices.resolve(device or "auto", compute)
        if compute == "bf16" and placement.device.type == "cpu" and not devices.cpu_has_native_bf16():
            log.warning("%s", placement.reason)  # devices.resolve says why emulated bf16 is slower here
        items = read_inputs(list(texts or []), input_file, text_column)
        model, tokenizer, info = load_classifier(str(checkpoint), placement.device)
        if precision == "int8":
            model = quantize_int8(model)
        results = run_predict(
            model, tokenizer, info, items, batch_size=batch_size, all_scores=all_scores, device=placement.device,
            precision=placement.precision,
        )
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
        if output is None:
            sys.stdout.write(lines)
        else:
            runs.ensure_writable_dir(output.parent, "the --output file's directory")
            try:
                output.write_text(lines, encoding="utf-8")
            except OSError as exc:
                raise RunDirError(f"cannot write --output {output}: {exc.strerror}") from None

    _guarded(run)


@config_app.command("show")
def config_show(
    config: Annotated[Path, typer.Argument(help="The YAML config.")],
    set_: SetOption = None,
) -> None:
    """Print the fully resolved config (extends merged, overrides applied, paths made absolute)."""
    from lmtune.config import load_config, to_yaml

    _guarded(lambda: typer.echo(to_yaml(load_config(config, set_ or [])), nl=False))


@config_app.command("validate")
def config_validate(
    configs: Annotated[list[Path], typer.Argument(help="One or more YAML configs.")],
) -> None:
    """Check configs against the schema and the rules of their stage; exit 0 when all are valid."""
    from lmtune import ui
    from lmtune.config import infer_stage, load_config

    failed = 0
    for path in configs:
        try:
            stage = infer_stage(load_config(path))
            load_config(path, stage=stage)
            ui.out_console.print(f"ok: {path} ({stage})", highlight=False)
        except LmtuneError as exc:
            failed += 1
            ui.error(str(exc))
    if failed:
        raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="lmtune")


if __name__ == "__main__":
    sys.exit(main())
