"""Train one of the paper's classifiers: config, training loop, checkpoints and resume.

`train_classifier(ClassifierConfig(...))` trains with Adam and sparse cross-entropy, stops
early on validation accuracy (restoring the best epoch), evaluates on the test split and
writes `runs/<dataset>/<arch>/classifier/model.keras` plus its metadata JSON.

Layout under the classifier directory:

    model.keras (+ .meta.json)           the final model (best validation epoch)
    checkpoints/step-000100.keras        snapshots at the global steps in `save_at`
    backup/                              resume state, deleted once training finishes

A killed run resumes from its last completed epoch when the same command is rerun
(`keras.callbacks.BackupAndRestore`, plus early-stopping state); a backup made with a
different trajectory (dataset, arch, batch size, learning rate, dropout, train_examples,
seed) is discarded instead, and a fresh start also clears the old `checkpoints/`. A NaN/inf
loss stops training with `NonFiniteLossError`, leaving the checkpoints written so far.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.classifiers import ARCHITECTURES, DEFAULT_DROPOUT_RATE, build_classifier
from invkeras.distribution import STRATEGIES, get_strategy, num_replicas, strategy_scope
from invkeras.errors import NonFiniteLossError
from invkeras.progress import RichProgressCallback

CHECKPOINT_DIR = "checkpoints"
BACKUP_DIR = "backup"
# Config fields that change the training trajectory: a backup made with different values
# is not resumed (changing epochs/patience/strategy/paths does not invalidate it).
_TRAJECTORY_FIELDS = (
    "dataset",
    "arch",
    "batch_size",
    "steps_per_epoch",
    "learning_rate",
    "dropout",
    "dropout_rate",
    "train_examples",
    "seed",
)


class ClassifierConfig(BaseModel):
    """Everything that defines a classifier run; saved verbatim in the model's metadata."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "procedural"
    data_dir: Optional[str] = None
    arch: str = "conv"
    epochs: int = Field(20, ge=1)
    steps_per_epoch: Optional[int] = Field(
        None,
        ge=1,
        description="validate (and early-stop) every N steps of a repeated training set instead of once per pass; "
        "with train_examples=100 a pass is one step, so the overfitted regime needs this",
    )
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    patience: int = Field(3, ge=0, description="early-stopping patience in epochs (on val_accuracy)")
    dropout: bool = True
    dropout_rate: float = Field(DEFAULT_DROPOUT_RATE, ge=0, lt=1)
    train_examples: Optional[int] = Field(
        None, ge=1, description="train on the first N examples only (the paper's overfitted regime: 100, no dropout)"
    )
    save_at: list[int] = Field(default_factory=list, description="global steps to checkpoint at; 0 = before training")
    seed: int = 0
    strategy: str = "auto"
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    out: Optional[str] = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{value}'; choose one of {', '.join(ARCHITECTURES)}")
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy '{value}'; choose one of {', '.join(STRATEGIES)}")
        return value

    @field_validator("save_at")
    @classmethod
    def _valid_steps(cls, value: list[int]) -> list[int]:
        negative = [s for s in value if s < 0]
        if negative:
            raise ValueError(f"checkpoint steps must be >= 0, got {negative}")
        return sorted(set(value))

    @field_validator("out")
    @classmethod
    def _keras_suffix(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not str(value).endswith(".keras"):
            raise ValueError(f"'{value}' must end in .keras")
        return value

    def model_path(self) -> Path:
        return Path(self.out) if self.out else artifacts.classifier_path(self.dataset, self.arch, self.workspace)

    def effective_dropout_rate(self) -> float:
        return self.dropout_rate if self.dropout else 0.0


@dataclasses.dataclass
class ClassifierResult:
    model_path: Path
    test_accuracy: float
    best_val_accuracy: float
    epochs: int  # epochs completed in total, including any before a resume
    steps: int  # optimiser steps in total
    checkpoints: list[Path]
    seconds: float  # wall time of this call
    resumed_from_epoch: int = 0


# --- callbacks ----------------------------------------------------------------------


class StepCheckpoint(keras.callbacks.Callback):
    """Save `checkpoints/step-NNNNNN.keras` (+ metadata) when the global step reaches each `save_at` value.

    The step count comes from the optimiser's iteration counter, which BackupAndRestore
    restores on resume, so a resumed run keeps counting from where it stopped.
    """

    def __init__(self, steps: Sequence[int], directory: Path, metadata: dict[str, Any]):
        super().__init__()
        self.steps = sorted(set(int(s) for s in steps))
        self.directory = Path(directory)
        self.metadata = metadata
        self.step = 0
        self.epoch = 0
        self.saved: list[Path] = []

    @staticmethod
    def path_for(directory: Path, step: int) -> Path:
        return Path(directory) / f"step-{step:06d}.keras"

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self.step = int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer.built else 0
        if self.step == 0 and 0 in self.steps:
            self._save(0)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step in self.steps:
            self._save(self.step)

    def _save(self, step: int) -> None:
        path = self.path_for(self.directory, step)
        with artifacts.atomic_path(path) as tmp:
            self.model.save(tmp)
        artifacts.write_metadata(
            path, kind="classifier-checkpoint", **self.metadata, results={"step": step, "epoch": self.epoch}
        )
        self.saved.append(path)

    @property
    def last_saved(self) -> Path | None:
        return self.saved[-1] if self.saved else None


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Raise `NonFiniteLossError` on the first NaN/inf training loss.

    `TerminateOnNaN` only stops `fit`, which would then save a NaN model as if all went well.
    Raising skips the rest of training; checkpoints already written stay on disk.
    """

    def __init__(self, checkpoints: StepCheckpoint | None = None):
        super().__init__()
        self.checkpoints = checkpoints
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        last = self.checkpoints.last_saved if self.checkpoints is not None else None
        if last is None and self.checkpoints is not None:
            # Saved before a resume: stale checkpoints of other runs were cleared at the fresh start.
            last = max(self.checkpoints.directory.glob("step-*.keras"), key=_checkpoint_step, default=None)
        kept = f"last good checkpoint: {last}" if last else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"training loss became {float(loss)} at step {step} (epoch {self.epoch + 1}); "
            f"stopped ({kept}); try a lower learning rate"
        )


def _checkpoint_step(path: Path) -> int:
    return int(path.stem.split("-")[-1])


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best score, patience counter and best weights survive a resume.

    BackupAndRestore restores the model and optimiser but not other callbacks, so without
    this a resumed run would forget its best epoch and could restore worse weights.
    """

    def __init__(self, state_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = Path(state_dir)

    @property
    def _state_path(self) -> Path:
        return self.state_dir / "early_stopping.json"

    @property
    def _weights_path(self) -> Path:
        return self.state_dir / "early_stopping_best.npz"

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not self._state_path.exists():
            return
        state = json.loads(self._state_path.read_text())
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        if self.restore_best_weights and self._weights_path.exists():
            with np.load(self._weights_path) as data:
                self.best_weights = [data[f"w{i}"] for i in range(len(data.files))]

    def on_epoch_end(self, epoch, logs=None):
        previous_weights = self.best_weights
        super().on_epoch_end(epoch, logs)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # EarlyStopping replaces the list whenever it records new best weights.
        if self.restore_best_weights and self.best_weights is not None and self.best_weights is not previous_weights:
            with artifacts.atomic_path(self._weights_path) as tmp:
                np.savez(tmp, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
        best = None if self.best is None or not math.isfinite(self.best) else float(self.best)
        artifacts.write_json_atomic(
            self._state_path, {"best": best, "best_epoch": int(self.best_epoch), "wait": int(self.wait)}
        )


# --- data ---------------------------------------------------------------------------


def _datasets(config: ClassifierConfig):
    """(info, train, validation, test) as batched tf.data pipelines of (float32 image, int64 label)."""
    import tensorflow as tf

    from invkeras.datasets import dataset_info, load

    info = dataset_info(config.dataset, data_dir=config.data_dir, seed=config.seed)

    def split(name: str, *, train: bool = False):
        ds = load(config.dataset, name, data_dir=config.data_dir, seed=config.seed)
        if train and config.train_examples is not None:
            ds = ds.take(config.train_examples)  # the first N, so the subset is the same every run
        ds = ds.cache()
        if train:
            n = config.train_examples or info.split_sizes["train"]
            ds = ds.shuffle(min(n, 20_000), seed=config.seed, reshuffle_each_iteration=True)
            if config.steps_per_epoch is not None:
                ds = ds.repeat()  # fit draws steps_per_epoch batches per "epoch" from the endless stream
        ds = ds.batch(config.batch_size)
        # Cast after caching: the cache holds uint8, 4x smaller than float32.
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    return info, split("train", train=True), split("validation"), split("test")


def _info_dict(info) -> dict[str, Any]:
    if dataclasses.is_dataclass(info):
        return dataclasses.asdict(info)
    if hasattr(info, "model_dump"):
        return info.model_dump(mode="json")
    if hasattr(info, "_asdict"):
        return dict(info._asdict())
    return dict(vars(info))


def _prepare_backup(backup_dir: Path, config: ClassifierConfig) -> int:
    """Keep a backup only if it was made by the same training trajectory; return its epoch (0 if none)."""
    marker = backup_dir / "config.json"
    wanted = {key: getattr(config, key) for key in _TRAJECTORY_FIELDS}
    if backup_dir.exists():
        found = json.loads(marker.read_text()) if marker.exists() else None
        if found != json.loads(json.dumps(wanted)):
            # A different run's state: resuming it would silently mix two configurations.
            shutil.rmtree(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(marker, wanted)
    meta = backup_dir / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.exists() else 0


# --- training -----------------------------------------------------------------------


def train_classifier(
    config: ClassifierConfig, *, callbacks: Sequence[keras.callbacks.Callback] = (), progress: bool = True
) -> ClassifierResult:
    """Train, evaluate and save a classifier; rerunning after a kill resumes from the last epoch.

    `callbacks` run after the built-in ones (tests use them to simulate kills and NaNs);
    `progress=False` turns off live bars (one line per epoch is still printed).
    """
    start = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    out = config.model_path()
    run = out.parent
    backup_dir = run / BACKUP_DIR
    checkpoint_dir = run / CHECKPOINT_DIR

    strategy = get_strategy(config.strategy)
    info, train_ds, val_ds, test_ds = _datasets(config)
    data = _info_dict(info)

    with strategy_scope(strategy):
        model = build_classifier(
            config.arch, info.image_shape, info.num_classes, dropout_rate=config.effective_dropout_rate()
        )
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        # Create the optimiser slots now, inside the scope: the step-0 checkpoint and the
        # resume backup then hold a complete optimiser state.
        model.optimizer.build(model.trainable_variables)

    resumed_from = _prepare_backup(backup_dir, config)
    if resumed_from == 0 and checkpoint_dir.exists():
        # A fresh run replaces the previous one; its checkpoints would be mistaken for ours.
        shutil.rmtree(checkpoint_dir)
    metadata = {"config": config, "seed": config.seed, "data": data}
    checkpointer = StepCheckpoint(config.save_at, checkpoint_dir, metadata)
    early_stopping = ResumableEarlyStopping(
        backup_dir, monitor="val_accuracy", mode="max", patience=config.patience, restore_best_weights=True
    )
    bar = RichProgressCallback(f"{config.arch} on {config.dataset}", live=None if progress else False)
    all_callbacks = [
        # First, so the model/optimiser state is restored before the others read it.
        # double_checkpoint: a kill while writing the backup falls back to the previous one.
        keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True, delete_checkpoint=False),
        NonFiniteLossGuard(checkpointer),  # before the checkpointer: never save a NaN model
        checkpointer,
        early_stopping,
        *callbacks,
        bar,
    ]
    try:
        # The pipeline shuffles itself (seeded); fit's shuffle would only warn for tf.data.
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
            verbose=0,
            callbacks=all_callbacks,
            shuffle=False,
        )
    finally:
        bar.close()

    epochs_done = (history.epoch[-1] + 1) if history.epoch else resumed_from
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    best_val = early_stopping.best
    if best_val is None or not math.isfinite(best_val):
        best_val = max(history.history.get("val_accuracy", [float("nan")]))
    checkpoints = sorted(checkpoint_dir.glob("step-*.keras"), key=_checkpoint_step)
    results = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "best_val_accuracy": float(best_val),
        "best_epoch": int(early_stopping.best_epoch) + 1,
        "epochs": epochs_done,
        "steps": steps,
        "replicas": num_replicas(strategy),
        "resumed_from_epoch": resumed_from,
        "checkpoints": [p.name for p in checkpoints],
        "seconds": time.monotonic() - start,  # this call's wall time (a resumed run counts only itself)
    }
    with artifacts.atomic_path(out) as tmp:
        model.save(tmp)
    artifacts.write_metadata(out, kind="classifier", results=results, **metadata)
    # Only now is the run safely on disk, so the resume state can go.
    shutil.rmtree(backup_dir, ignore_errors=True)

    return ClassifierResult(
        model_path=out,
        test_accuracy=results["test_accuracy"],
        best_val_accuracy=results["best_val_accuracy"],
        epochs=epochs_done,
        steps=steps,
        checkpoints=checkpoints,
        seconds=results["seconds"],
        resumed_from_epoch=resumed_from,
    )
