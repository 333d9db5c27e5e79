"""Everything the user sees: log setup, the training progress display and result tables (rich).

On a terminal, training shows a live progress bar (step, loss, lr, tokens/s, ETA). When stderr is not
a terminal (CI, pipes, files) the same numbers come as plain log lines every `log_every` steps.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)
out_console = Console()
log = logging.getLogger("lmtune")


def setup_logging(verbose: bool = False) -> None:
    """Route lmtune's log records to stderr through rich; quiet the libraries' own chatter."""
    handler = RichHandler(console=console, show_path=False, show_time=console.is_terminal, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("lmtune")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # read errors reach the user as DataError
    if not console.is_terminal:
        datasets.disable_progress_bars()


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_step(record: dict[str, Any]) -> str:
    """One line for a training log record."""
    parts = [f"step {record['step']}"]
    if record.get("max_steps"):
        parts[0] += f"/{record['max_steps']}"
    for key, fmt in (("loss", "loss {:.4f}"), ("lr", "lr {:.2e}"), ("tokens_per_s", "{:,.0f} tok/s"), ("samples_per_s", "{:,.1f} samples/s")):
        if record.get(key) is not None:
            parts.append(fmt.format(record[key]))
    if record.get("progress") is not None:
        parts.append(f"{100 * record['progress']:.0f}%")
    if record.get("eta_s") is not None:
        parts.append(f"eta {_duration(record['eta_s'])}")
    return " | ".join(parts)


def format_eval(record: dict[str, Any]) -> str:
    """One line for an evaluation record."""
    values = [f"{k.removeprefix('eval_')} {v:.4g}" for k, v in record.items() if k.startswith("eval_") and isinstance(v, (int, float))]
    return f"eval at step {record['step']}: " + ", ".join(values)


class TrainingDisplay:
    """Progress for the engine: a rich bar on a terminal, log lines otherwise."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, description: str) -> None:
        log.info(description)
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("training", total=1000, info="")

    def update(self, record: dict[str, Any], log_line: bool) -> None:
        """Called after each optimizer step; `log_line` marks the steps that are logged."""
        if self._progress is not None:
            self._progress.update(self._task, completed=int(1000 * min(record.get("progress", 0.0), 1.0)), info=format_step(record))
        elif log_line:
            log.info(format_step(record))

    def evaluation(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.console.print(format_eval(record))
        else:
            log.info(format_eval(record))

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def summary_table(title: str, rows: dict[str, Any]) -> None:
    """Print a two-column table of results to stdout."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    out_console.print(table)


def error(message: str) -> None:
    """An error for the user on stderr (no traceback)."""
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
