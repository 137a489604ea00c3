"""Progress display for long loops: a Keras callback for `fit` and a bar for everything else.

On a terminal both draw live rich progress bars. When output is not a terminal (CI logs,
pipes, files) live bars would either spam redraws or print nothing until the end, so the
callback prints one plain line per epoch instead and `progress_bar()` draws nothing live.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

import keras
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


class RichProgressCallback(keras.callbacks.Callback):
    """Epoch and step bars with the running loss/metrics; use with `fit(..., verbose=0)`.

    `description` names the run (e.g. "classifier conv"). On a non-terminal console one line
    per epoch is printed instead of live bars. Call `close()` in a `finally:` block: if `fit`
    raises, Keras never calls `on_train_end`, and a live display would be left running.
    """

    def __init__(self, description: str = "train", console: Console | None = None, *, live: bool | None = None):
        super().__init__()
        self.description = description
        self.console = console or Console(stderr=True)
        # Live bars only on a real terminal (or a notebook), unless the caller insists.
        self.live = (self.console.is_terminal or self.console.is_jupyter) if live is None else live
        self._progress: Progress | None = None
        self._epoch_task = None
        self._step_task = None
        self._epochs = None
        self._epoch_start = 0.0

    # --- fit hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs")
        if self.live:
            self._progress = progress_bar(self.console)
            self._progress.start()
            self._epoch_task = self._progress.add_task(
                f"{self.description} epochs", total=self._epochs, info=""
            )
            self._step_task = self._progress.add_task("  steps", total=self.params.get("steps"), info="")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()
        if self._progress is not None:
            # Resumed runs start at a later epoch; show it rather than counting from 0.
            self._progress.update(self._epoch_task, completed=epoch)
            self._progress.reset(self._step_task, total=self.params.get("steps"), info="")
            self._progress.update(self._step_task, description=f"  epoch {epoch + 1}")

    def on_train_batch_end(self, batch, logs=None):
        if self._progress is not None:
            self._progress.update(self._step_task, completed=batch + 1, info=format_logs(logs))

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self._epoch_start
        text = format_logs(logs)
        line = f"{self.description}: epoch {epoch + 1}/{self._epochs}  {text}  ({seconds:.1f}s)"
        if self._progress is not None:
            self._progress.update(self._epoch_task, completed=epoch + 1, info=text)
        # Printed above the live bars, or alone on a non-terminal: a permanent per-epoch record.
        self.console.print(line, soft_wrap=True, highlight=False)

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        """Stop the live display; safe to call more than once."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
