"""Progress display for long loops: a rich bar, and the one-line format of running metrics.

On a terminal the bar is live. When output is not a terminal (CI logs, pipes, files) a
live bar would either spam redraws or print nothing until the end, so rich draws nothing
live there; the training loop (`invkeras.training`) prints one plain line per checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _InfoColumn(ProgressColumn):
    """Free text from `task.fields["info"]` (running metrics); empty when a task has none."""

    def render(self, task):
        return Text(str(task.fields.get("info", "")), style="progress.data.speed")


def progress_bar(console: Console | None = None, *, transient: bool = False, disable: bool = False) -> Progress:
    """A `rich.progress.Progress` with spinner, description, bar, M/N, elapsed and remaining time.

    Use as `with progress_bar() as bar: task = bar.add_task("extract", total=n); bar.advance(task)`;
    `add_task(..., info="...")` shows extra text after the times. On a non-terminal console rich
    draws nothing live and prints the final state once, at exit.
    """
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        _InfoColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


def format_logs(logs: Mapping[str, Any] | None, *, skip_val: bool = False) -> str:
    """'loss 0.4123  accuracy 0.871' with a stable key order (training first, then val_)."""
    if not logs:
        return ""
    keys = sorted(logs, key=lambda k: (k.startswith("val_"), k != "loss" and k != "val_loss", k))
    parts = []
    for key in keys:
        if skip_val and key.startswith("val_"):
            continue
        value = logs[key]
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        parts.append(f"{key} {_fmt(value)}")
    return "  ".join(parts)


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
