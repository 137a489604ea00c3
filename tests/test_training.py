"""The shared training loop: exact resume after kills, early-stopping state, refusal of other
settings, the NaN guard, and a trainee with two optimisers (the shape of a GAN)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.training import BatchOrder, CompiledModelTrainee, Schedule, TrainingHook, train
from killing import Interrupt as Kill, KillAt  # tests/killing.py


def _arrays(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1))).astype("float32") + 0.1 * rng.normal(size=(n, 1)).astype("float32")
    return {"x": x, "y": y}


def _trainee(arrays, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    val = _arrays(32, seed=1)
    return CompiledModelTrainee(
        model, inputs=lambda b: b["x"], targets=lambda b: b["y"],
        validate=lambda: {"val_loss": float(np.mean((model.predict(val["x"], verbose=0) - val["y"]) ** 2))})


SCHEDULE = Schedule(max_steps=60, steps_per_checkpoint=10, patience=100, batch_size=8, seed=3)


def _run(tmp_path, name, hooks=(), settings=None, schedule=SCHEDULE):
    arrays = _arrays()
    trainee = _trainee(arrays)
    outcome = train(trainee, arrays, schedule, out_dir=tmp_path / name, settings=settings or {"lr": 0.01},
                    what="test run", hooks=hooks, progress=False)
    return trainee, outcome


def test_batch_order_is_a_function_of_the_step_alone():
    order, again = BatchOrder(50, 8, seed=1), BatchOrder(50, 8, seed=1)
    first_pass = np.concatenate([order.indices(s) for s in range(6)])
    assert len(set(first_pass.tolist())) == 48  # a pass: 6 disjoint batches, the remainder dropped
    assert np.array_equal(again.indices(7), order.indices(7)) and not np.array_equal(order.indices(6), order.indices(0))
    keep_last = BatchOrder(50, 8, seed=1, drop_remainder=False)
    assert keep_last.per_pass == 7 and len(keep_last.indices(6)) == 2


def test_three_kills_resume_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    reference, straight = _run(tmp_path, "straight")
    rng = np.random.default_rng(0)
    kills = sorted(rng.choice(np.arange(1, 60), size=3, replace=False).tolist())  # mid-interval and at checkpoints
    for step in kills:
        with pytest.raises(Kill):
            _run(tmp_path, "killed", hooks=[KillAt(step)])
    resumed, outcome = _run(tmp_path, "killed")
    assert outcome.steps == straight.steps == 60 and outcome.resumed_from_step > 0
    for a, b in zip(reference.state_variables(), resumed.state_variables()):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
    assert outcome.history == straight.history  # every interval kept, not only those since the last restart


def test_a_resumed_run_says_from_which_step(tmp_path, capsys):
    arrays = _arrays()
    with pytest.raises(Kill):
        train(_trainee(arrays), arrays, SCHEDULE, out_dir=tmp_path / "run", settings={}, what="test run",
              hooks=[KillAt(20, at_checkpoint=True)], progress=False)
    capsys.readouterr()
    train(_trainee(arrays), arrays, SCHEDULE, out_dir=tmp_path / "run", settings={}, what="test run", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "resuming" in line]
    assert len(lines) == 1 and "test run: resuming from step 20" in lines[0]


def test_early_stopping_state_survives_a_kill(tmp_path):
    schedule = Schedule(max_steps=200, steps_per_checkpoint=10, patience=2, batch_size=8, seed=3)
    _, straight = _run(tmp_path, "straight", schedule=schedule)
    assert straight.stopped_early and straight.steps < 200
    with pytest.raises(Kill):
        _run(tmp_path, "killed", hooks=[KillAt(straight.steps - 10, at_checkpoint=True)], schedule=schedule)
    progress = json.loads((tmp_path / "killed/backup/progress.json").read_text())
    assert progress["wait"] >= 1 and progress["best_step"] == straight.best_step  # patience counter on disk
    _, resumed = _run(tmp_path, "killed", schedule=schedule)
    assert (resumed.steps, resumed.best_step, resumed.best_value) == (straight.steps, straight.best_step,
                                                                     straight.best_value)


def test_a_backup_made_under_other_settings_is_refused_in_one_line(tmp_path):
    with pytest.raises(Kill):
        _run(tmp_path, "run", hooks=[KillAt(20, at_checkpoint=True)], settings={"lr": 0.01, "batch": 8})
    with pytest.raises(InvkerasError) as info:
        _run(tmp_path, "run", settings={"lr": 0.02, "batch": 8})
    message = str(info.value)
    assert "\n" not in message and "lr 0.01 -> 0.02" in message and "delete" in message
    assert (tmp_path / "run/backup/progress.json").exists()  # nothing was thrown away


def test_a_non_finite_loss_stops_with_one_truthful_line(tmp_path):
    class Poison(TrainingHook):
        def on_step_end(self, step, logs):
            if step == 3:
                model = self.trainee.model
                model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])

    with pytest.raises(NonFiniteLossError) as info:
        _run(tmp_path, "nan", hooks=[Poison()])
    message = str(info.value)
    assert "\n" not in message and "at step 4" in message and "no resume state saved yet" in message


class TwoOptimisers:
    """A trainee whose step updates two models with their own optimisers, as a GAN's does."""

    def __init__(self, arrays):
        keras.utils.set_random_seed(0)
        self.first = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
        self.second = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
        self.first.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        self.second.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9), loss="mae")
        for model in (self.first, self.second):
            model.optimizer.build(model.trainable_variables)

    def state_variables(self):
        return [*self.first.variables, *self.first.optimizer.variables, *self.second.variables,
                *self.second.optimizer.variables]

    def weight_variables(self):
        return [*self.first.variables, *self.second.variables]

    def train_step(self, batch):
        a = self.first.train_on_batch(batch["x"], batch["y"], return_dict=True)["loss"]
        b = self.second.train_on_batch(batch["x"], batch["y"], return_dict=True)["loss"]
        return {"loss": a + b, "first_loss": a, "second_loss": b}

    def validate(self):
        return {"val_loss": 0.0}


def test_a_trainee_with_two_optimisers_resumes_both(tmp_path):
    arrays = _arrays()
    straight = TwoOptimisers(arrays)
    train(straight, arrays, SCHEDULE, out_dir=tmp_path / "a", settings={}, what="pair", progress=False)
    with pytest.raises(Kill):
        train(TwoOptimisers(arrays), arrays, SCHEDULE, out_dir=tmp_path / "b", settings={}, what="pair",
              hooks=[KillAt(25)], progress=False)
    resumed = TwoOptimisers(arrays)
    outcome = train(resumed, arrays, SCHEDULE, out_dir=tmp_path / "b", settings={}, what="pair", progress=False)
    assert outcome.resumed_from_step == 20
    assert int(keras.ops.convert_to_numpy(resumed.second.optimizer.iterations)) == 60
    for a, b in zip(straight.state_variables(), resumed.state_variables()):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)


# --- the wall-clock cap -------------------------------------------------------------


class StepClock(TrainingHook):
    """Records when each step ends, to know how long the slowest step took."""

    def __init__(self):
        import time

        self.clock, self.ends = time.monotonic, []

    def on_train_begin(self, trainee, step):
        super().on_train_begin(trainee, step)
        self.ends.append(self.clock())

    def on_step_end(self, step, logs):
        self.ends.append(self.clock())

    @property
    def longest_step(self) -> float:
        return max(np.diff(self.ends)) if len(self.ends) > 1 else 0.0


CAPPED = Schedule(max_steps=10**6, steps_per_checkpoint=10, patience=10**6, batch_size=8, seed=3, max_time=3.0)


def _timed_run(tmp_path, name, schedule=CAPPED, hooks=()):
    import time

    clock = StepClock()
    started = time.monotonic()
    trainee, outcome = _run(tmp_path, name, hooks=[clock, *hooks], schedule=schedule)
    return trainee, outcome, time.monotonic() - started, clock


def test_a_time_cap_stops_training_within_a_tenth_of_it_plus_one_step(tmp_path):
    _, outcome, seconds, clock = _timed_run(tmp_path, "capped")
    assert outcome.stopped_by_time and not outcome.stopped_early and 10 < outcome.steps < 10**6
    assert 0.9 * 3.0 <= seconds <= 1.1 * 3.0 + clock.longest_step
    progress = json.loads((tmp_path / "capped/backup/progress.json").read_text())
    assert progress["step"] == outcome.steps and 0.9 * 3.0 <= progress["seconds"] <= 3.0 + clock.longest_step


def test_a_run_stopped_by_its_time_cap_is_not_trained_again_when_rerun(tmp_path):
    first, capped, _, _ = _timed_run(tmp_path, "capped")
    again, rerun, seconds, clock = _timed_run(tmp_path, "capped")
    assert len(clock.ends) == 1  # not one step taken
    assert (rerun.steps, rerun.best_step, rerun.stopped_by_time) == (capped.steps, capped.best_step, True)
    assert seconds < 1.0
    for a, b in zip(first.weight_variables(), again.weight_variables()):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_killed_run_resumes_with_only_the_time_left_of_its_cap(tmp_path):
    with pytest.raises(Kill):
        _timed_run(tmp_path, "killed", hooks=[KillAt(20, at_checkpoint=True)])
    used = json.loads((tmp_path / "killed/backup/progress.json").read_text())["seconds"]
    assert 0 < used < 3.0
    _, outcome, seconds, clock = _timed_run(tmp_path, "killed")
    assert outcome.resumed_from_step == 20 and outcome.stopped_by_time
    assert seconds <= 1.1 * (3.0 - used) + clock.longest_step + 0.3  # + restoring the state
    assert 0.9 * 3.0 <= outcome.training_seconds <= 3.0 + clock.longest_step


def test_raising_the_time_cap_continues_a_capped_run(tmp_path):
    import dataclasses

    _, capped, _, _ = _timed_run(tmp_path, "capped")
    _, longer, _, _ = _timed_run(tmp_path, "capped", schedule=dataclasses.replace(CAPPED, max_time=4.0))
    assert longer.resumed_from_step == capped.steps < longer.steps and longer.stopped_by_time


def test_inverter_and_classifier_configs_take_the_cap_into_the_loop(tmp_path, tiny_classifier):
    from invkeras.classifiers.training import ClassifierConfig, train_classifier
    from invkeras.inverters import config_for, inverter_class

    classifier = train_classifier(ClassifierConfig(
        dataset="procedural", epochs=10**4, steps_per_epoch=5, patience=10**4, batch_size=16, train_examples=64,
        max_time=1.5, out=str(tmp_path / "classifier/model.keras")), progress=False)
    assert 1 <= classifier.steps < 5 * 10**4
    config = config_for("mse", dict(dataset="procedural", workspace=str(tiny_classifier), layer="fc3", max_time=1.5,
                                    max_steps=10**6, steps_per_checkpoint=10, train_examples=256, eval_examples=16,
                                    out=str(tmp_path / "mse")))
    trained = inverter_class("mse").train(config, progress=False)
    assert 1 <= trained.steps < 10**6  # the first step, which builds the graph, may take most of 1.5 s
    assert "max_time" not in config.trajectory()  # raising the cap resumes a run


def test_a_hook_can_end_training_at_a_step_with_a_checkpoint_as_the_cap_does(tmp_path):
    class StopAt(TrainingHook):
        def should_stop(self, step):
            return step >= 17

    _, outcome = _run(tmp_path, "stopped", hooks=[StopAt()])
    progress = json.loads((tmp_path / "stopped/backup/progress.json").read_text())
    assert outcome.steps == 17 and outcome.stopped_by_time and progress["step"] == 17
    assert "time_cap_reached" not in progress  # a deadline of this run only: a rerun may train on
    _, rerun = _run(tmp_path, "stopped")
    assert rerun.resumed_from_step == 17 and rerun.steps == 60


class WeightsAtCheckpoints(TrainingHook):
    """The trainee's weights as they were at each checkpoint."""

    def __init__(self):
        self.weights = {}

    def on_checkpoint(self, step, logs):
        self.weights[step] = [np.array(keras.ops.convert_to_numpy(v)) for v in self.trainee.weight_variables()]


@pytest.mark.parametrize("mode", ["min", "max"])  # an inverter's val_loss, a classifier's val_accuracy
def test_early_stopping_leaves_the_best_checkpoints_weights_not_the_last(tmp_path, mode):
    """Validation improves for three checkpoints, then gets worse twice: training stops there
    (patience 2) and the weights left are those of the third checkpoint."""
    scores = iter([5.0, 3.0, 1.0, 2.0, 4.0] if mode == "min" else [0.2, 0.5, 0.9, 0.7, 0.6])
    arrays = _arrays()
    trainee = _trainee(arrays)
    trainee._validate = lambda: {"score": next(scores)}
    recorder = WeightsAtCheckpoints()
    schedule = Schedule(max_steps=100, steps_per_checkpoint=10, patience=2, batch_size=8, seed=3, monitor="score",
                        mode=mode)
    outcome = train(trainee, arrays, schedule, out_dir=tmp_path / mode, settings={}, what="test run",
                    hooks=[recorder], progress=False)
    assert outcome.stopped_early and outcome.steps == 50 and outcome.best_step == 30
    assert outcome.best_value == (1.0 if mode == "min" else 0.9)
    left = [keras.ops.convert_to_numpy(v) for v in trainee.weight_variables()]
    for best, now in zip(recorder.weights[30], left):
        np.testing.assert_array_equal(now, best)
    # The last two intervals did change the weights: keeping the last ones would fail above.
    assert any(not np.array_equal(best, last) for best, last in zip(recorder.weights[30], recorder.weights[50]))
