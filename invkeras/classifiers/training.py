"""Train one of the paper's classifiers: config, training loop, checkpoints and resume.

`train_classifier(ClassifierConfig(...))` trains with Adam and sparse cross-entropy, stops
early on validation accuracy (restoring the best epoch), evaluates on the test split and
writes `runs/<dataset>/<arch>/classifier/model.keras` plus its metadata JSON.

Layout under the classifier directory:

    model.keras (+ .meta.json)           the final model (best validation epoch)
    checkpoints/step-000100.keras        snapshots at the global steps in `save_at`
    backup/                              resume state, deleted once training finishes

Training runs in the shared loop of `invkeras.training`: a killed run resumes exactly from
its last completed epoch when the same command is rerun, a backup made under other
settings (dataset, arch, batch size, learning rate, dropout, train_examples, seed, ...) is
refused in one line, and a fresh start clears the old `checkpoints/`. A NaN/inf loss stops
training with `NonFiniteLossError`, leaving the checkpoints written so far.

Robust classifiers: `adversarial="pgd"` with an `epsilon` trains on PGD adversarial
examples only (Madry et al. 2018; `invkeras.classifiers.adversarial`). Early stopping still
watches clean validation accuracy. Whenever `epsilon` is set, the results carry
`robust_accuracy` under that PGD attack beside `clean_accuracy` on the same test images.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from invkeras import artifacts
from invkeras.classifiers.architectures import ARCHITECTURES, DEFAULT_DROPOUT_RATE, build_classifier
from invkeras.classifiers.augmentation import augmenter
from invkeras.distribution import STRATEGIES, check_batch_split, get_strategy, num_replicas, strategy_scope
from invkeras.training import BACKUP_DIR, Backup, CompiledModelTrainee, Schedule, TrainingHook, train, trajectory_settings

CHECKPOINT_DIR = "checkpoints"
# Settings that do not change the training trajectory: a backup made under other values of
# these is still resumed (more epochs, more patience, another device strategy or path).
NON_TRAJECTORY_FIELDS = ("epochs", "max_time", "patience", "save_at", "strategy", "workspace", "run", "out",
                         "robust_eval_examples")
# The attack's settings shape training only when training is adversarial.
ATTACK_FIELDS = ("adversarial", "epsilon", "pgd_steps", "pgd_step_size")


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
    max_time: Optional[float] = Field(None, gt=0, description="wall-clock cap on training in seconds, over all "
                                      "resumed runs; the best epoch so far is kept when it is reached")
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: decay the learning rate to zero along half a cosine over `epochs` "
        "(Loshchilov & Hutter 2017), so `epochs` then shapes the trajectory; constant: keep it")
    patience: int = Field(3, ge=0, description="early-stopping patience in epochs (on val_accuracy)")
    dropout: bool = True
    dropout_rate: float = Field(DEFAULT_DROPOUT_RATE, ge=0, lt=1)
    train_examples: Optional[int] = Field(
        None, ge=1, description="train on N examples only, a fixed sample (the paper's overfitted regime: 100, no dropout)"
    )
    save_at: list[int] = Field(default_factory=list, description="global steps to checkpoint at; 0 = before training")
    seed: int = 0
    strategy: str = "auto"
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    run: Optional[str] = Field(None, description="the run's folder, runs/<dataset>/<run>/ (default: the arch); "
                               "a second classifier of one arch, such as a robust one, needs its own")
    out: Optional[str] = None
    adversarial: Literal["none", "pgd"] = Field(
        "none", description="pgd: train on PGD adversarial examples only, none of the clean batch (Madry et al. 2018)")
    epsilon: Optional[float] = Field(
        None, ge=0, le=1, description="L-inf radius on [0, 1] pixels (MNIST: 0.3); robust accuracy under this PGD "
        "attack is reported beside clean accuracy, also for a classifier trained without it")
    pgd_steps: int = Field(10, ge=1, description="PGD steps K, in training and in the robust evaluation")
    pgd_step_size: Optional[float] = Field(None, ge=0, description="PGD step size on [0, 1] pixels; default "
                                           "2.5 * epsilon / pgd_steps")
    robust_eval_examples: Optional[int] = Field(None, ge=1, description="robust accuracy on N test images only, a "
                                                "fixed sample (default: the whole test split)")
    augment: Literal["none", "flip-shift"] = Field(
        "none", description="flip-shift: flip each training image left-right with probability 1/2 and shift it "
        "by up to 4 pixels (natural photographs such as CIFAR-10; never digits, whose class a flip changes)")

    @model_validator(mode="after")
    def _attack_settings(self):
        if self.adversarial == "pgd" and self.epsilon is None:
            raise ValueError("adversarial 'pgd' needs epsilon, the L-inf radius on [0, 1] pixels (MNIST: 0.3)")
        if self.epsilon is not None and self.pgd_step_size is None:
            from invkeras.classifiers.adversarial import default_step_size

            self.pgd_step_size = default_step_size(self.epsilon, self.pgd_steps)  # recorded as used
        return self

    def attack(self):
        """The PGD attack of this run (training and evaluation), or None without an epsilon."""
        from invkeras.classifiers.adversarial import Attack

        return None if self.epsilon is None else Attack(self.epsilon, self.pgd_steps, self.pgd_step_size, "pgd")

    def non_trajectory_fields(self) -> tuple[str, ...]:
        fields = NON_TRAJECTORY_FIELDS + (ATTACK_FIELDS if self.adversarial == "none" else ())
        # Under a cosine schedule the epoch count sets every step's learning rate.
        return tuple(f for f in fields if f != "epochs") if self.lr_schedule == "cosine" else fields

    def learning_rate_at(self, total_steps: int):
        """Adam's learning rate: a number, or a schedule over `total_steps` optimiser steps."""
        import keras

        if self.lr_schedule == "constant":
            return self.learning_rate
        return keras.optimizers.schedules.CosineDecay(self.learning_rate, decay_steps=total_steps)

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
        return artifacts.file_not_folder(value)

    def model_path(self) -> Path:
        if self.out:
            return Path(self.out)
        return artifacts.classifier_path(self.dataset, self.run or self.arch, self.workspace)

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
    clean_accuracy: float | None = None  # on the images robust accuracy is measured on
    robust_accuracy: float | None = None  # under `attack` (None without an epsilon)
    robust_examples: int = 0
    attack: dict | None = None


# --- checkpoints at chosen steps ------------------------------------------------------


class StepCheckpoint(TrainingHook):
    """Save `checkpoints/step-NNNNNN.keras` (+ metadata) when the global step reaches each `save_at` value.

    The loop restores the step count on resume, so a resumed run keeps counting from where
    it stopped; step 0 is the untrained model, saved before the first step of a fresh run.
    """

    def __init__(self, steps: Sequence[int], directory: Path, metadata: dict[str, Any], steps_per_epoch: int):
        super().__init__()
        self.steps = sorted(set(int(s) for s in steps))
        self.directory = Path(directory)
        self.metadata = metadata
        self.steps_per_epoch = steps_per_epoch

    @staticmethod
    def path_for(directory: Path, step: int) -> Path:
        return Path(directory) / f"step-{step:06d}.keras"

    def on_train_begin(self, trainee, step):
        super().on_train_begin(trainee, step)
        if step == 0 and 0 in self.steps:
            self._save(0)

    def on_step_end(self, step, logs):
        if step in self.steps:
            self._save(step)

    def _save(self, step: int) -> None:
        path = self.path_for(self.directory, step)
        with artifacts.atomic_path(path) as tmp:
            self.trainee.model.save(tmp)
        artifacts.write_metadata(path, kind="classifier-checkpoint", **self.metadata,
                                 results={"step": step, "epoch": step // self.steps_per_epoch})

    def last_saved(self) -> Path | None:
        return max(self.directory.glob("step-*.keras"), key=_checkpoint_step, default=None)


def _checkpoint_step(path: Path) -> int:
    return int(path.stem.split("-")[-1])


# --- training -----------------------------------------------------------------------


def train_classifier(
    config: ClassifierConfig, *, hooks: Sequence[TrainingHook] = (), progress: bool = True
) -> ClassifierResult:
    """Train, evaluate and save a classifier; rerunning after a kill resumes exactly where it stopped.

    An epoch is one pass over the training examples, or `steps_per_epoch` steps when set;
    validation and early stopping (on validation accuracy, restoring the best epoch) happen
    once per epoch. `hooks` observe the loop (tests use them to simulate kills and NaNs).
    """
    strategy = get_strategy(config.strategy)
    # The whole run is in the strategy's scope: a TF strategy places the variables, and a
    # JAX distribution must be current at every step to shard the batch.
    with strategy_scope(strategy):
        return _train_classifier(config, strategy, hooks, progress)


def _train_classifier(config: ClassifierConfig, strategy, hooks: Sequence[TrainingHook], progress: bool):
    import keras  # here, not at the top: the CLI reads the config without starting Keras

    from invkeras.data import dataset_info, load_arrays

    start = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    out = config.model_path()
    run = out.parent
    checkpoint_dir = run / CHECKPOINT_DIR

    info = dataset_info(config.dataset, data_dir=config.data_dir, seed=config.seed)
    x, y = load_arrays(config.dataset, "train", data_dir=config.data_dir, seed=config.seed, limit=config.train_examples)
    val_x, val_y = load_arrays(config.dataset, "validation", data_dir=config.data_dir, seed=config.seed)
    test_x, test_y = load_arrays(config.dataset, "test", data_dir=config.data_dir, seed=config.seed)
    data = _info_dict(info)
    check_batch_split(strategy, config.batch_size,  # training keeps each pass's last batch; evaluate too
                      remainders={"train": len(x), "validation": len(val_x), "test": len(test_x)})

    steps_per_epoch = config.steps_per_epoch or math.ceil(len(x) / config.batch_size)
    model = build_classifier(
        config.arch, info.image_shape, info.num_classes, dropout_rate=config.effective_dropout_rate()
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate_at(config.epochs * steps_per_epoch)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )

    def validate():
        logs = model.evaluate(val_x.astype("float32"), val_y, batch_size=config.batch_size, verbose=0,
                              return_dict=True)
        return {"val_loss": float(logs["loss"]), "val_accuracy": float(logs["accuracy"])}

    attack = config.attack()
    trainee_class = CompiledModelTrainee
    options = {}
    if config.adversarial == "pgd":
        from invkeras.classifiers.adversarial import AdversarialTrainee

        trainee_class, options = AdversarialTrainee, {"attack": attack, "seed": config.seed}
    trainee = trainee_class(model, inputs=lambda batch: batch["x"].astype("float32"),
                            targets=lambda batch: batch["y"], validate=validate, **options)

    schedule = Schedule(max_steps=config.epochs * steps_per_epoch, steps_per_checkpoint=steps_per_epoch,
                        patience=config.patience, batch_size=config.batch_size, seed=config.seed,
                        monitor="val_accuracy", mode="max", drop_remainder=False, max_time=config.max_time)
    backup = Backup(run / BACKUP_DIR)
    if backup.progress() is None and checkpoint_dir.exists():
        # A fresh run replaces the previous one; its checkpoints would be mistaken for ours.
        shutil.rmtree(checkpoint_dir)
    metadata = {"config": config, "seed": config.seed, "data": data, "adversarial": config.adversarial,
                "attack": attack.describe() if attack else None}
    checkpointer = StepCheckpoint(config.save_at, checkpoint_dir, metadata, steps_per_epoch)

    def last_checkpoint() -> str:
        last = checkpointer.last_saved()
        kept = f"last good checkpoint: {last}" if last else "no checkpoint was saved before it"
        return f"{kept}; try a lower learning rate"

    outcome = train(trainee, {"x": x, "y": y}, schedule, out_dir=run,
                    settings=trajectory_settings(config, config.non_trajectory_fields()),
                    what=f"train-classifier {config.arch} on {config.dataset}", hooks=[checkpointer, *hooks],
                    progress=progress, non_finite_hint=last_checkpoint,
                    batch_transform=augmenter(config.augment, config.seed))

    test = model.evaluate(test_x.astype("float32"), test_y, batch_size=config.batch_size, verbose=0, return_dict=True)
    robust = {"clean_accuracy": float(test["accuracy"]), "robust_accuracy": None, "robust_eval_examples": 0}
    if attack is not None:
        from invkeras.classifiers.adversarial import robust_accuracy

        from invkeras.data.registry import capped_positions

        n = min(len(test_x), config.robust_eval_examples or len(test_x))
        chosen = capped_positions(len(test_x), n)  # a sample of the test set, not its first n
        chosen = slice(None) if chosen is None else chosen
        clean, adversarial = robust_accuracy(model, test_x[chosen].astype("float32"), test_y[chosen], attack,
                                             batch_size=config.batch_size, seed=config.seed)
        robust = {"clean_accuracy": clean, "robust_accuracy": adversarial, "robust_eval_examples": n}
    history = outcome.history
    best_val = outcome.best_value
    if best_val is None or not math.isfinite(best_val):
        best_val = max(history.get("val_accuracy", [float("nan")]))
    best_epoch = (outcome.best_step // steps_per_epoch) if outcome.best_step else 0
    epochs_done = outcome.steps // steps_per_epoch
    checkpoints = sorted(checkpoint_dir.glob("step-*.keras"), key=_checkpoint_step)
    results = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        **robust,
        "best_val_accuracy": float(best_val),
        "best_epoch": int(best_epoch),
        "epochs": epochs_done,
        "steps": outcome.steps,
        "replicas": num_replicas(strategy),
        "resumed_from_epoch": outcome.resumed_from_step // steps_per_epoch,
        "checkpoints": [p.name for p in checkpoints],
        "seconds": time.monotonic() - start,  # this call's wall time (a resumed run counts only itself)
    }
    with artifacts.atomic_path(out) as tmp:
        model.save(tmp)
    artifacts.write_metadata(out, kind="classifier", results=results, history=history, **metadata)
    backup.remove()  # only now is the run safely on disk

    return ClassifierResult(
        model_path=out,
        test_accuracy=results["test_accuracy"],
        best_val_accuracy=results["best_val_accuracy"],
        epochs=epochs_done,
        steps=outcome.steps,
        checkpoints=checkpoints,
        seconds=results["seconds"],
        resumed_from_epoch=results["resumed_from_epoch"],
        clean_accuracy=results["clean_accuracy"],
        robust_accuracy=results["robust_accuracy"],
        robust_examples=results["robust_eval_examples"],
        attack=metadata["attack"],
    )


def _info_dict(info) -> dict[str, Any]:
    if dataclasses.is_dataclass(info):
        return dataclasses.asdict(info)
    if hasattr(info, "model_dump"):
        return info.model_dump(mode="json")
    if hasattr(info, "_asdict"):
        return dict(info._asdict())
    return dict(vars(info))
