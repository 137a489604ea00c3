"""The rich progress display: per-epoch lines without a terminal, live bars with one."""

from __future__ import annotations

import io

import keras
import numpy as np
from rich.console import Console

from invkeras.classifiers.architectures import build_classifier
from invkeras.progress import RichProgressCallback, format_logs, progress_bar


def test_callback_prints_one_line_per_epoch_with_or_without_a_terminal():
    model = build_classifier("fc", (4, 4, 1), 2, fc_units=8, fc3_units=4)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 1), dtype=np.uint8)
    y = np.arange(16) % 2
    for terminal in (False, True):
        buffer = io.StringIO()
        bar = RichProgressCallback("demo", Console(file=buffer, force_terminal=terminal, width=200))
        assert bar.live is terminal
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[bar], validation_data=(x, y))
        text = buffer.getvalue()
        assert "demo: epoch 1/2" in text and "demo: epoch 2/2" in text and "val_accuracy" in text
    with progress_bar(Console(file=io.StringIO())) as bar:
        task = bar.add_task("count", total=3)
        for _ in range(3):
            bar.advance(task)
        assert bar.tasks[0].completed == 3


def test_close_stops_a_live_display_after_fit_raised():
    bar = RichProgressCallback("x", Console(file=io.StringIO(), force_terminal=True))
    bar.set_params({"epochs": 3, "steps": 2})
    bar.on_train_begin()
    assert bar._progress is not None
    bar.close()
    bar.close()
    assert bar._progress is None


def test_format_logs_orders_training_before_validation():
    text = format_logs({"val_accuracy": 0.5, "accuracy": 0.75, "loss": 1.25, "val_loss": 2.0, "lr": 1e-5})
    assert text == "loss 1.25  accuracy 0.75  lr 1.000e-05  val_loss 2  val_accuracy 0.5"
    assert format_logs({"loss": float("nan")}) == "loss nan"
