"""The one resumable training loop, shared by classifiers and every inverter kind.

A model is trained in *checkpoint intervals* of `steps_per_checkpoint` optimiser steps.
After each interval the loop validates, updates early stopping, and writes the whole
training state to `<out_dir>/backup/`:

    backup/config.json       the settings that shape the trajectory, and a fingerprint of
                             each training array; a rerun under other settings, or on data
                             that changed (a features file or an autoencoder replaced at the
                             same path), is refused in one line naming what differs
    backup/progress.json     step, history, early-stopping state, and which files below
                             hold the state (written last, atomically: the commit point)
    backup/state-<step>.npz  every variable the trainee declares: weights, optimiser slots,
                             step counters, random-generator states
    backup/best-<step>.npz   the best weights so far (early stopping restores them)

Resuming is exact. Batches are a pure function of the global step (a seeded permutation
per pass over the data), and the random-generator states travel with the weights, so a
run killed and resumed any number of times ends with the same weights as one that was
never interrupted. A kill between two writes loses nothing: the previous state files are
deleted only after the new `progress.json` names their successors.

A run may also be capped in wall-clock time (`Schedule.max_time`, seconds). The loop
checks the clock after every step; once the time used, plus what the closing validation
and checkpoint took last time, reaches the cap, it validates and checkpoints at that step
(mid-interval if need be) and stops. The seconds used are stored in `progress.json`, so a
resumed run gets only what is left of the cap, and a run whose time is spent goes straight
to its end (the caller's evaluation and saving) instead of training again. A cap is not a
trajectory setting: raising it and rerunning continues the run. Stopped by the clock, a
run's weights depend on the machine's speed; only the step count reached says how far it got.

What is trained is a `Trainee`: it declares its variables and does one step on a batch.
That is all the loop needs, so a kind with two optimisers (a GAN's generator and
discriminator) is one trainee whose step updates both.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError

BACKUP_DIR = "backup"
CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.json"


class Trainee(Protocol):
    """What the loop trains. `state_variables` must cover everything a step reads or writes
    (weights, optimiser slots and iteration counters, seed-generator states); `weight_variables`
    are the ones early stopping keeps the best of."""

    def state_variables(self) -> Sequence[Any]: ...

    def weight_variables(self) -> Sequence[Any]: ...

    def train_step(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, float]: ...

    def validate(self) -> Mapping[str, float]: ...


class TrainingHook:
    """Observes the loop (checkpoints at chosen steps; tests simulate kills with it). A hook may
    also end training: once `should_stop` says so after a step, the loop validates and
    checkpoints at that step and stops, as at its time cap (a deadline shared by several runs)."""

    trainee: Trainee | None = None

    def on_train_begin(self, trainee: Trainee, step: int) -> None:
        self.trainee = trainee

    def on_step_end(self, step: int, logs: Mapping[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, logs: Mapping[str, float]) -> None:
        pass

    def should_stop(self, step: int) -> bool:
        return False


@dataclass
class Schedule:
    """How long to train and when to stop early."""

    max_steps: int
    steps_per_checkpoint: int
    patience: int
    batch_size: int
    seed: int = 0
    monitor: str = "val_loss"
    mode: str = "min"  # "min" or "max"
    drop_remainder: bool = True  # False: a pass's last, smaller batch is trained on too
    max_time: float | None = None  # wall-clock cap in seconds over all runs of this training (None: none)

    def time_left(self, used: float) -> float:
        """Seconds of the cap left after `used` (infinite without a cap)."""
        return math.inf if self.max_time is None else self.max_time - used


@dataclass
class TrainingOutcome:
    steps: int
    resumed_from_step: int
    stopped_early: bool
    best_step: int | None
    best_value: float | None
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by_time: bool = False  # the clock ended it: its cap (now or in an earlier run), or a hook's deadline
    training_seconds: float = 0.0  # time in the loop over all runs, as counted against the cap


# --- data order ---------------------------------------------------------------------


class BatchOrder:
    """Indices of the batch at global step s: a pure function of (seed, s).

    Pass p over the n examples uses the permutation `default_rng([seed, p])`; a pass has
    n // batch_size batches (or ceil, without `drop_remainder`). Resuming at step s needs
    nothing but s.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, drop_remainder: bool = True):
        if num_examples < 1:
            raise InvkerasError("training: no training examples")
        if drop_remainder and num_examples < batch_size:
            raise InvkerasError(f"--batch-size {batch_size}: only {num_examples} training examples")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.per_pass = num_examples // batch_size if drop_remainder else math.ceil(num_examples / batch_size)
        self._pass, self._order = -1, None

    def indices(self, step: int) -> np.ndarray:
        pass_index, within = divmod(step, self.per_pass)
        if pass_index != self._pass:
            self._pass = pass_index
            self._order = np.random.default_rng([self.seed, pass_index]).permutation(self.n)
        return self._order[within * self.batch_size : (within + 1) * self.batch_size]


# --- configuration fingerprint ------------------------------------------------------


def trajectory_settings(config: Any, exclude: Iterable[str] = ()) -> dict:
    """The JSON-able settings of `config` (a pydantic model or dict) minus those in `exclude`."""
    values = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    return {k: v for k, v in sorted(values.items()) if k not in set(exclude)}


# The key of backup/config.json that holds the fingerprints of the arrays the run trains on.
DATA_KEY = "data_fingerprints"
_ARRAY_NAMES = {"x": "images x", "h": "features h", "y": "labels y", "z": "latents z"}


def data_fingerprints(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """A digest of each training array's content (as estimate-mi fingerprints held-out images):
    a resumed run must train on exactly the data its backup was made on, whatever file it
    came from (features, an .npz, images, an autoencoder's latents)."""
    from invkeras.inverters.data import fingerprint

    return {name: fingerprint(np.asarray(array)) for name, array in sorted(arrays.items())}


def check_backup_settings(backup_dir: Path, settings: dict, *, what: str, data: dict[str, str] | None = None,
                          data_source: str = "") -> None:
    """Refuse, in one line, to resume a backup made under other settings, or on other data:
    `data` are the `data_fingerprints` of the arrays this run would train on, `data_source`
    says where they were read from (for the message). A backup made before fingerprints were
    recorded is compared on its settings only."""
    marker = backup_dir / CONFIG_FILE
    if not marker.is_file():
        return
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise InvkerasError(f"{what}: the resume state in {backup_dir} is unreadable; delete that directory to start "
                            "afresh") from None
    found_data = found.pop(DATA_KEY, None) if isinstance(found, dict) else None
    wanted = json.loads(json.dumps(settings))
    differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if differ:
        changes = ", ".join(f"{k} {found.get(k)!r} -> {wanted.get(k)!r}" for k in differ[:6])
        more = f" (+{len(differ) - 6} more)" if len(differ) > 6 else ""
        raise InvkerasError(f"{what}: {backup_dir} holds an unfinished run made with other settings ({changes}{more}); "
                            f"rerun with the original settings to resume it, or delete {backup_dir} to start afresh")
    if data is not None and isinstance(found_data, dict) and found_data != data:
        changed = [_ARRAY_NAMES.get(k, k) for k in sorted(set(found_data) | set(data)) if found_data.get(k) != data.get(k)]
        named = " and ".join([", ".join(changed[:-1]), changed[-1]] if len(changed) > 1 else changed)
        read_from = f" (read from {data_source})" if data_source else ""
        raise InvkerasError(f"{what}: {backup_dir} holds an unfinished run on other data: the training {named}"
                            f"{read_from} changed since it began; put the original data back to resume it, or delete "
                            f"{backup_dir} to start afresh")


# --- state on disk ------------------------------------------------------------------


def _values(variables: Sequence[Any]) -> dict[str, np.ndarray]:
    import keras

    return {f"v{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(variables)}


def _assign(variables: Sequence[Any], path: Path) -> None:
    with np.load(path) as saved:
        if len(saved.files) != len(variables):
            raise InvkerasError(f"resume: {path} holds {len(saved.files)} variables, the model has {len(variables)}; "
                                f"delete {path.parent} to start afresh")
        for i, variable in enumerate(variables):
            value = saved[f"v{i}"]
            if tuple(value.shape) != tuple(variable.shape):
                raise InvkerasError(f"resume: {path.parent} was saved for a model of another shape (variable "
                                    f"{getattr(variable, 'path', i)}: {tuple(value.shape)} vs {tuple(variable.shape)}); "
                                    f"delete {path.parent} to start afresh")
            variable.assign(value)


class Backup:
    """The resume state of one run (see the module docstring for the files)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def progress_path(self) -> Path:
        return self.directory / PROGRESS_FILE

    def progress(self) -> dict | None:
        if not self.progress_path.is_file():
            return None
        return json.loads(self.progress_path.read_text())

    def restore(self, trainee: Trainee) -> dict | None:
        progress = self.progress()
        if progress is None:
            return None
        _assign(trainee.state_variables(), self.directory / progress["state_file"])
        return progress

    def best_weights(self, progress: dict) -> dict[str, np.ndarray] | None:
        name = progress.get("best_file")
        if not name:
            return None
        with np.load(self.directory / name) as saved:
            return {k: saved[k] for k in saved.files}

    def save(self, trainee: Trainee, progress: dict, best: dict[str, np.ndarray] | None, best_changed: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self.progress() or {}
        step = progress["step"]
        state_file = f"state-{step:08d}.npz"
        artifacts.save_npz_atomic(self.directory / state_file, **_values(trainee.state_variables()))
        best_file = previous.get("best_file")
        if best is not None and (best_changed or not best_file):
            best_file = f"best-{step:08d}.npz"
            artifacts.save_npz_atomic(self.directory / best_file, **best)
        artifacts.write_json_atomic(self.progress_path, {**progress, "state_file": state_file, "best_file": best_file})
        # Only now, with progress.json naming the new files, may the old ones go.
        for name in (previous.get("state_file"), previous.get("best_file")):
            if name and name not in (state_file, best_file):
                (self.directory / name).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --- the loop -----------------------------------------------------------------------


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def train(
    trainee: Trainee,
    arrays: Mapping[str, np.ndarray],
    schedule: Schedule,
    *,
    out_dir: Path,
    settings: dict,
    what: str,
    hooks: Sequence[TrainingHook] = (),
    progress: bool = True,
    non_finite_hint: Callable[[], str] | None = None,
    batch_transform: Callable[[dict, int], dict] | None = None,
    console=None,
    data_source: str = "",
) -> TrainingOutcome:
    """Train `trainee` on `arrays` (all of equal length) under `schedule`; resume if a backup exists.

    `settings` are the trajectory-shaping settings (a rerun with others is refused), and so
    is the content of `arrays` (a rerun on other data is refused, naming `data_source`, where
    they were read from); `what` names the run in messages ("train-inverter layer 'fc3'"). With `progress`, a rich bar
    runs on a terminal, and every checkpoint prints one permanent line (step, interval
    means, validation, seconds) to `console` (default stderr), above the bar or, in a log,
    alone. `batch_transform(batch, step)`, when given, turns each batch of arrays into what the
    trainee takes (augmentation draws from the step, so a resumed run repeats them). The best
    weights are left in the trainee at the end; the caller saves its artefacts and then calls
    `Backup(out_dir / "backup").remove()`.
    """
    from rich.console import Console

    from invkeras.distribution import process_share
    from invkeras.progress import format_logs, progress_bar

    console = console or Console(stderr=True)

    started = time.time()
    backup = Backup(Path(out_dir) / BACKUP_DIR)
    fingerprints = data_fingerprints(arrays)
    check_backup_settings(backup.directory, settings, what=what, data=fingerprints, data_source=data_source)
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InvkerasError(f"{what}: training arrays of different lengths {lengths}")
    order = BatchOrder(next(iter(lengths.values())), schedule.batch_size, schedule.seed, schedule.drop_remainder)

    restored = backup.restore(trainee)
    state = restored or {"step": 0, "history": {}, "best": None, "best_step": None, "wait": 0, "stopped": False}
    best_weights = backup.best_weights(restored) if restored else None
    resumed_from = int(state["step"])
    if restored is None:
        backup.directory.mkdir(parents=True, exist_ok=True)
        artifacts.write_json_atomic(backup.directory / CONFIG_FILE, {**settings, DATA_KEY: fingerprints})
    elif progress:
        console.print(f"{what}: resuming from step {resumed_from} ({backup.directory})", highlight=False)

    step = resumed_from
    logs: dict[str, float] = {}
    # Time against the cap: what earlier runs used, plus this run's loop time.
    used_before = float(state.get("seconds", 0.0))
    loop_started = time.monotonic()
    closing_seconds = 0.0  # what the last validation and checkpoint took: the cap keeps room for one

    def used() -> float:
        return used_before + time.monotonic() - loop_started

    def time_up() -> bool:
        return schedule.time_left(used()) <= closing_seconds

    # A run that stopped at this cap (or a larger one) is done, however little of it was left.
    reached = state.get("time_cap_reached")
    out_of_time = schedule.max_time is not None and step < schedule.max_steps and (
        (reached is not None and schedule.max_time <= reached) or time_up())
    if out_of_time and restored is not None and progress:
        console.print(f"{what}: its {schedule.max_time:g} s are used up (step {step}); not training further",
                      highlight=False)
    capped = out_of_time
    for hook in hooks:
        hook.on_train_begin(trainee, step)
    with progress_bar(console, disable=not progress) as bar:
        task = bar.add_task(what, total=schedule.max_steps, completed=step, info="")
        while step < schedule.max_steps and not state["stopped"] and not out_of_time:
            interval_started = time.monotonic()
            interval_end = min(schedule.max_steps, (step // schedule.steps_per_checkpoint + 1) * schedule.steps_per_checkpoint)
            sums: dict[str, float] = {}
            count = 0
            while step < interval_end and not out_of_time:
                index = process_share(order.indices(step))  # all of it, but in a multi-host JAX run
                batch = {k: v[index] for k, v in arrays.items()}
                if batch_transform is not None:
                    batch = batch_transform(batch, step)  # the step keys any random draw, so resume is exact
                logs = {k: float(v) for k, v in trainee.train_step(batch).items()}
                step += 1
                loss = logs.get("loss")
                if loss is not None and not math.isfinite(loss):
                    kept = (f"resume state of step {state['step']} kept in {backup.directory}" if state["step"] > 0
                            else "no resume state saved yet")
                    hint = non_finite_hint() if non_finite_hint else ""
                    raise NonFiniteLossError(f"{what}: training loss became {loss} at step {step}; stopped ({kept})"
                                             + (f"; {hint}" if hint else ""))
                for key, value in logs.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                for hook in hooks:
                    hook.on_step_end(step, logs)
                capped = schedule.max_time is not None and time_up()
                out_of_time = capped or any(getattr(hook, "should_stop", lambda _: False)(step) for hook in hooks)
                info = f"loss {loss:.4g}" if loss is not None else ""
                if schedule.max_time is not None:
                    info += f"  {max(0.0, schedule.time_left(used())):.0f} s of the cap left"
                bar.update(task, completed=step, info=info.strip())
            closing_started = time.monotonic()
            interval_logs = {k: v / count for k, v in sums.items()}
            interval_logs.update({k: float(v) for k, v in trainee.validate().items()})
            for key, value in interval_logs.items():
                state["history"].setdefault(key, []).append(value)
            state["history"].setdefault("step", []).append(step)
            monitored = interval_logs.get(schedule.monitor)
            changed = False
            if monitored is not None and _improved(monitored, state["best"], schedule.mode):
                state["best"], state["best_step"], state["wait"] = monitored, step, 0
                best_weights = _values(trainee.weight_variables())
                changed = True
            else:
                state["wait"] += 1
                if state["wait"] >= schedule.patience:  # as keras.callbacks.EarlyStopping counts
                    state["stopped"] = True
            state["step"] = step
            state["seconds"] = used()
            if out_of_time and capped:
                state["time_cap_reached"] = schedule.max_time
            backup.save(trainee, dict(state), best_weights, changed)
            closing_seconds = time.monotonic() - closing_started
            if progress:  # a permanent record per checkpoint, above the live bar or alone in a log
                why = ("" if not out_of_time else f"; time cap of {schedule.max_time:g} s reached" if capped
                       else "; stopped by its deadline")
                bar.console.print(f"{what}: step {step}/{schedule.max_steps}  {format_logs(interval_logs)}  "
                                  f"({time.monotonic() - interval_started:.1f}s{why})", soft_wrap=True,
                                  highlight=False)
            for hook in hooks:
                hook.on_checkpoint(step, interval_logs)

    if best_weights is not None:
        for i, variable in enumerate(trainee.weight_variables()):
            variable.assign(best_weights[f"v{i}"])
    return TrainingOutcome(steps=step, resumed_from_step=resumed_from, stopped_early=bool(state["stopped"]),
                           best_step=state["best_step"], best_value=state["best"], history=state["history"],
                           seconds=time.time() - started, stopped_by_time=out_of_time,
                           training_seconds=float(state.get("seconds", 0.0)))


# --- Keras models as trainees -------------------------------------------------------


class CompiledModelTrainee:
    """A compiled Keras model trained with `train_on_batch`, validated by a function.

    `inputs(batch)` and `targets(batch)` pick the model's inputs and targets from a batch of
    arrays. The optimiser is built eagerly so its slots exist before a resume assigns them.
    """

    def __init__(self, model, *, inputs: Callable[[dict], Any], targets: Callable[[dict], Any],
                 validate: Callable[[], Mapping[str, float]]):
        self.model = model
        self._inputs, self._targets, self._validate = inputs, targets, validate
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    def state_variables(self):
        seen, variables = set(), []
        for variable in [*self.model.variables, *self.model.optimizer.variables]:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
        return variables

    def weight_variables(self):
        return [*self.model.trainable_variables, *self.model.non_trainable_variables]

    def train_step(self, batch):
        return self.model.train_on_batch(self._inputs(batch), self._targets(batch), return_dict=True)

    def validate(self):
        return self._validate()
