"""Classifier training on the embedded `procedural` dataset: accuracy, checkpoints, resume, NaN, config."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from invkeras.artifacts import metadata_path, read_metadata
from invkeras.classifiers.training import BACKUP_DIR, ClassifierConfig, train_classifier
from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.training import TrainingHook

TRAIN_EXAMPLES = 512
BATCH = 64
STEPS_PER_EPOCH = TRAIN_EXAMPLES // BATCH


def _config(tmp_path, **overrides) -> ClassifierConfig:
    values = dict(
        dataset="procedural", arch="conv", epochs=3, batch_size=BATCH, train_examples=TRAIN_EXAMPLES,
        workspace=str(tmp_path), strategy="default",
    )
    return ClassifierConfig(**{**values, **overrides})


class EpochRecorder(TrainingHook):
    """The epochs trained in this call (an epoch ends at a checkpoint of the loop)."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.epochs = []

    def on_checkpoint(self, step, logs):
        self.epochs.append(step // self.steps_per_epoch - 1)


class Interrupt(TrainingHook):
    """Simulate a kill at the end of an epoch (after the loop has saved its state)."""

    def __init__(self, after_epoch: int, steps_per_epoch: int):
        self.after_step = (after_epoch + 1) * steps_per_epoch
        self.val_accuracy = None

    def on_checkpoint(self, step, logs):
        if step == self.after_step:
            self.val_accuracy = logs["val_accuracy"]
            raise KeyboardInterrupt


class PoisonWeights(TrainingHook):
    """Set every weight to NaN after `step` optimiser steps, so the next loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step, logs):
        if step == self.step:
            model = self.trainee.model
            model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])


def test_trains_above_chance_and_writes_model_checkpoints_and_metadata(tmp_path):
    # 160 steps at lr 1e-3 reach ~0.77 test accuracy on procedural's shape labels.
    config = _config(tmp_path, epochs=10, batch_size=32, learning_rate=1e-3, patience=10, save_at=[5, 0, 10_000])
    result = train_classifier(config)

    assert result.test_accuracy > 0.5  # 4 classes: chance is 0.25
    assert result.best_val_accuracy > 0.5
    assert result.epochs == 10 and result.steps == 10 * TRAIN_EXAMPLES // 32
    assert result.model_path == tmp_path / "procedural" / "conv" / "classifier" / "model.keras"
    meta = read_metadata(result.model_path)
    assert meta["kind"] == "classifier"
    assert meta["config"]["arch"] == "conv" and meta["seed"] == 0
    assert meta["data"]["num_classes"] == 4
    assert meta["results"]["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert not (result.model_path.parent / BACKUP_DIR).exists()  # resume state removed on success

    # Step 0 is the untrained model; step 10000 is never reached.
    assert [p.name for p in result.checkpoints] == ["step-000000.keras", "step-000005.keras"]
    for path in result.checkpoints:
        assert read_metadata(path)["results"]["step"] == int(path.stem[-6:])
    initial, later = (keras.models.load_model(p) for p in result.checkpoints)
    assert not np.allclose(initial.get_layer("logits").kernel, later.get_layer("logits").kernel)

    model = keras.models.load_model(result.model_path)
    from invkeras.data import load_arrays

    x, y = load_arrays("procedural", "test", limit=500)
    accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))
    assert accuracy > 0.5


def test_rerun_after_interruption_resumes_from_the_last_epoch(tmp_path):
    config = _config(tmp_path, save_at=[2])
    interrupt = Interrupt(after_epoch=0, steps_per_epoch=STEPS_PER_EPOCH)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(config, hooks=[interrupt], progress=False)
    run = config.model_path().parent
    progress = json.loads((run / BACKUP_DIR / "progress.json").read_text())
    assert progress["step"] == STEPS_PER_EPOCH and progress["best_step"] == STEPS_PER_EPOCH
    assert (run / BACKUP_DIR / progress["best_file"]).exists()
    assert not config.model_path().exists()

    recorder = EpochRecorder(STEPS_PER_EPOCH)
    result = train_classifier(config, hooks=[recorder], progress=False)
    assert result.resumed_from_epoch == 1
    assert recorder.epochs == [1, 2]  # epoch 0 was not trained again
    assert result.epochs == 3
    assert result.steps == 3 * STEPS_PER_EPOCH  # the optimiser step counter was restored too
    assert result.best_val_accuracy >= interrupt.val_accuracy  # early stopping remembers epoch 0
    assert [p.name for p in result.checkpoints] == ["step-000002.keras"]  # saved before the kill, kept
    assert not (run / BACKUP_DIR).exists()


def test_overfitted_regime_counts_steps_not_passes(tmp_path):
    """100 examples in one batch: an epoch of `steps_per_epoch` steps repeats the tiny set, so
    checkpoints far beyond one pass are reached with only `epochs` validation runs."""
    recorder = EpochRecorder(15)
    config = _config(tmp_path, train_examples=100, batch_size=100, dropout=False, steps_per_epoch=15, epochs=2,
                     patience=2, learning_rate=3e-3, save_at=[0, 1, 20, 31])
    result = train_classifier(config, hooks=[recorder], progress=False)
    assert recorder.epochs == [0, 1]
    assert result.steps == 30  # 30 passes over the 100 examples
    assert [p.name for p in result.checkpoints] == ["step-000000.keras", "step-000001.keras", "step-000020.keras"]
    history = read_metadata(result.checkpoints[-1])
    assert history["results"] == {"step": 20, "epoch": 1} and history["config"]["steps_per_epoch"] == 15
    assert history["config"]["dropout"] is False


def test_backup_from_a_different_configuration_is_refused_in_one_line(tmp_path):
    config = _config(tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(config, hooks=[Interrupt(0, STEPS_PER_EPOCH)], progress=False)
    backup = config.model_path().parent / BACKUP_DIR
    with pytest.raises(InvkerasError) as info:
        train_classifier(_config(tmp_path, epochs=2, learning_rate=1e-3), progress=False)
    message = str(info.value)
    assert "\n" not in message and "learning_rate 0.0003 -> 0.001" in message and f"delete {backup}" in message
    assert (backup / "progress.json").exists()  # nothing lost
    result = train_classifier(_config(tmp_path, epochs=3), progress=False)  # more epochs: same trajectory
    assert result.resumed_from_epoch == 1 and result.epochs == 3


class LearningRateRecorder(TrainingHook):
    """Adam's learning rate for each optimiser step, read as that step ends (the rate it used)."""

    def __init__(self):
        self.rates = {}

    def on_step_end(self, step, logs):
        optimizer = self.trainee.model.optimizer
        self.rates[step] = float(optimizer.learning_rate)  # already advanced to the next step's rate


def test_a_cosine_schedule_decays_the_rate_to_zero_over_the_epochs_and_makes_epochs_part_of_the_run(tmp_path):
    """The rate after step k is lr (1 + cos(pi k / T)) / 2 with T = epochs x steps per epoch, so
    the last step ends at zero; changing `epochs` then changes every step's rate, and a resume
    under other epochs is refused rather than continued on another curve."""
    epochs, rate = 3, 1e-3
    total = epochs * STEPS_PER_EPOCH
    recorder = LearningRateRecorder()
    config = _config(tmp_path, epochs=epochs, patience=epochs, learning_rate=rate, lr_schedule="cosine")
    train_classifier(config, hooks=[recorder], progress=False)
    steps = np.array(sorted(recorder.rates))
    np.testing.assert_array_equal(steps, np.arange(1, total + 1))
    expected = rate * 0.5 * (1 + np.cos(np.pi * steps / total))
    np.testing.assert_allclose([recorder.rates[s] for s in steps], expected, rtol=1e-5, atol=1e-9)
    assert recorder.rates[total] < 1e-9

    other = _config(tmp_path / "other", epochs=2, lr_schedule="cosine")
    with pytest.raises(KeyboardInterrupt):
        train_classifier(other, hooks=[Interrupt(0, STEPS_PER_EPOCH)], progress=False)
    with pytest.raises(InvkerasError, match="epochs 2 -> 3"):
        train_classifier(_config(tmp_path / "other", epochs=3, lr_schedule="cosine"), progress=False)
    assert "epochs" in ClassifierConfig().non_trajectory_fields()  # a constant rate: more epochs resume


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config(tmp_path, save_at=[3, 6])
    expected = r"loss became nan at step 5\b.*last good checkpoint: .*step-000003\.keras"
    with pytest.raises(NonFiniteLossError, match=expected):
        train_classifier(config, hooks=[PoisonWeights(step=4)], progress=False)
    checkpoints = config.model_path().parent / "checkpoints"
    assert (checkpoints / "step-000003.keras").exists()
    assert metadata_path(checkpoints / "step-000003.keras").exists()
    assert not (checkpoints / "step-000006.keras").exists()
    assert not config.model_path().exists()


def test_divergent_learning_rate_raises_non_finite_loss(tmp_path):
    with pytest.raises(NonFiniteLossError, match="try a lower learning rate"):
        train_classifier(_config(tmp_path, learning_rate=1e9, epochs=1, train_examples=256))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arch": "resnet"}, "unknown architecture 'resnet'; choose one of conv, conv-gpool, fc"),
        ({"strategy": "tpu"}, "unknown strategy 'tpu'"),
        ({"save_at": [0, -5]}, r"checkpoint steps must be >= 0, got \[-5\]"),
        ({"epochs": 0}, "greater than or equal to 1"),
        ({"learning_rate": 0}, "greater than 0"),
        ({"dropout_rate": 1.0}, "less than 1"),
        ({"out": "model.h5"}, "must end in .keras"),
        ({"epoch": 3}, "Extra inputs are not permitted"),
        ({"augment": "flip"}, "Input should be 'none' or 'flip-shift'"),
        ({"lr_schedule": "linear"}, "Input should be 'constant' or 'cosine'"),
    ],
)
def test_config_validation(tmp_path, overrides, message):
    with pytest.raises(ValidationError, match=message):
        _config(tmp_path, **overrides)


def test_config_defaults_and_normalisation(tmp_path):
    config = ClassifierConfig(save_at=[1000, 0, 100, 100])
    assert config.save_at == [0, 100, 1000]
    assert (config.batch_size, config.learning_rate, config.dataset) == (128, 3e-4, "procedural")
    assert config.effective_dropout_rate() > 0
    assert ClassifierConfig(dropout=False).effective_dropout_rate() == 0
    assert str(_config(tmp_path, out=str(tmp_path / "m.keras")).model_path()) == str(tmp_path / "m.keras")


def test_three_kills_resume_to_the_same_classifier(tmp_path):
    """Killed at three random steps and resumed each time: the same weights and test accuracy as a
    run never interrupted (batches, augmentation and dropout draws are restored, not only the
    weights)."""
    from killing import Interrupt, KillAt  # tests/killing.py

    straight = train_classifier(_config(tmp_path / "straight", epochs=3, patience=5, augment="flip-shift"),
                                progress=False)
    config = _config(tmp_path / "killed", epochs=3, patience=5, augment="flip-shift")
    for step in sorted(np.random.default_rng(2).choice(np.arange(1, 3 * STEPS_PER_EPOCH), 3, replace=False)):
        with pytest.raises(Interrupt):
            train_classifier(config, hooks=[KillAt(int(step))], progress=False)
    resumed = train_classifier(config, progress=False)
    assert resumed.resumed_from_epoch > 0 and resumed.steps == straight.steps
    assert resumed.test_accuracy == straight.test_accuracy
    a, b = (keras.models.load_model(r.model_path).get_weights() for r in (straight, resumed))
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    history = read_metadata(resumed.model_path)["history"]
    assert len(history["val_accuracy"]) == 3  # every epoch, not only those since the last restart
