"""The rich progress display: a line per checkpoint with or without a terminal, live bars with one."""

from __future__ import annotations

import io
import re

import keras
import numpy as np
from rich.console import Console

from invkeras.progress import format_logs, progress_bar
from invkeras.training import CompiledModelTrainee, Schedule, train


def test_training_prints_one_line_per_checkpoint_with_or_without_a_terminal(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(32, 3)).astype("float32"), "y": rng.normal(size=(32, 1)).astype("float32")}
    for terminal in (False, True):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        trainee = CompiledModelTrainee(model, inputs=lambda b: b["x"], targets=lambda b: b["y"],
                                       validate=lambda: {"val_loss": 1.0})
        buffer = io.StringIO()
        train(trainee, arrays, Schedule(max_steps=6, steps_per_checkpoint=3, patience=5, batch_size=8),
              out_dir=tmp_path / str(terminal), settings={}, what="demo", progress=True,
              console=Console(file=buffer, force_terminal=terminal, width=200))
        records = re.findall(r"demo: step (\d+/\d+)  loss [0-9.]+  val_loss 1  \(", buffer.getvalue())
        assert records == ["3/6", "6/6"], buffer.getvalue()
    with progress_bar(Console(file=io.StringIO())) as bar:
        task = bar.add_task("count", total=3)
        for _ in range(3):
            bar.advance(task)
        assert bar.tasks[0].completed == 3


def test_format_logs_orders_training_before_validation():
    text = format_logs({"val_accuracy": 0.5, "accuracy": 0.75, "loss": 1.25, "val_loss": 2.0, "lr": 1e-5})
    assert text == "loss 1.25  accuracy 0.75  lr 1.000e-05  val_loss 2  val_accuracy 0.5"
    assert format_logs({"loss": float("nan")}) == "loss nan"
