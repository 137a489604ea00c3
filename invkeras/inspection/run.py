"""The `inspect` run: from a classifier and its images to a report on every layer, in a time budget.

    1. check the model (a classifier of these images), choose its layers (`layers`), copy it
       to `<out>/classifier.keras` and extract the layers' features once
    2. calibrate each kind's step time and plan the budget (`plan`), printed as a table
    3. layer by layer: train each kind's inverter under its wall-clock cap, then draw its
       sample grids and compare the kinds in the layer's space; last, the unconditional
       PixelCNN++ (with pixelcnn), the reference of the information estimates
    4. the information table (NCE per layer, with intervals), the classifier's test accuracy,
       and the report: `<out>/report.html` with its Markdown twin

Everything is written under `<out>` (default runs/<dataset>/inspect):

    report.html, report.md, report-*.png   the report and its plots (images linked, not inlined)
    inspect.json                            the plan, the calibration, what ran and how long
    classifier.keras (+ .meta.json)         the inspected model, as it was, with its test accuracy
    classifier-features/<layer>/<split>/    the extracted (x, h) pairs
    autoencoder/                            the autoencoder of kind cinn
    inverters/<kind>/<layer>/               each inverter, its sample grids
    comparisons/<layer>/                    the kinds compared in the layer's space
    mi/test.json                            the information table

Rerunning the same command continues an interrupted run: finished models, grids and tables
are skipped, a model cut off mid-training resumes from its last checkpoint with what is left
of its cap, and the budget counts the time the interrupted run spent.
"""

from __future__ import annotations

import filecmp
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.inspection import plan as planning
from invkeras.inspection.config import InspectConfig, format_duration
from invkeras.inspection.layers import LayerChoice

STATE_FILE = "inspect.json"
CLASSIFIER_FILE = "classifier.keras"
CLASSIFIER_KIND = "inspected-classifier"
ARCH = "inspect"  # the configs' arch: a name only, since every path is given
SAMPLE_GRID = "samples.png"
RECONSTRUCTION_GRID = "samples_reconstruction.png"
COMPARISON = "compare.json"
GRID_BATCH = 64  # every sampling call draws a multiple of this, so each model builds one sampler
# The compare top-k grids: TOPK_INPUTS inputs x TOPK_SAMPLES samples (one sampling batch), best TOP_K shown.
TOPK_INPUTS, TOPK_SAMPLES, TOP_K = 4, 16, 4
MAX_NEIGHBOUR_SEARCH = 20_000  # training images the 1NN search reads at most
# Settings of each kind for budgets of minutes on a CPU (the demo's measured choices for pixelcnn).
KIND_SETTINGS: dict[str, dict[str, Any]] = {
    "pixelcnn": {"scale": "tiny", "filters": 16, "learning_rate": 0.003},
    "gan": {"scale": "tiny"},
}


@dataclass
class InspectResult:
    """What a finished inspection wrote and found."""

    out_dir: Path
    report_html: Path
    report_markdown: Path
    layers: list[LayerChoice]
    kinds: list[str]
    reading: str  # the report's opening paragraph
    accuracy: float | None
    seconds: float  # this call's wall time
    spent: float  # the budget used, interrupted runs included
    budget: float
    steps: dict[str, int] = field(default_factory=dict)  # "<kind>/<layer>" -> steps trained


class Clock:
    """The budget: what earlier (interrupted) runs spent plus this run's time."""

    def __init__(self, budget: float, spent_before: float = 0.0):
        self.budget, self.before, self.started = budget, spent_before, time.monotonic()

    def spent(self) -> float:
        return self.before + time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.spent()


class Stages:
    """One line per stage, with the budget spent and left: the run's progress and ETA."""

    def __init__(self, console, clock: Clock, total: int):
        self.console, self.clock, self.total, self.done = console, clock, total, 0

    def start(self, text: str) -> None:
        self.done += 1
        self.console.print(f"[bold]inspect[/bold] [{min(self.done, self.total)}/{self.total}] {text}  "
                           f"[dim]({format_duration(self.clock.spent())} spent, about "
                           f"{format_duration(max(0.0, self.clock.left()))} left of "
                           f"{format_duration(self.clock.budget)})[/dim]", highlight=False)


# --- the model and its layers ---------------------------------------------------------------


@dataclass
class Subject:
    """What is inspected: the layers, where each layer's pairs come from, and the images' facts."""

    layers: list[LayerChoice]
    image_shape: tuple[int, int, int]
    classifier: Path | None  # the copy under <out>, None with user features
    features: dict[str, Path]  # layer -> user features (with --features)
    model_name: str
    dataset: str
    train_examples: int
    entropy_nats: float | None
    num_classes: int | None


def snapshot_classifier(model_path: Path, out: Path) -> Path:
    """The model copied to <out>/classifier.keras, so everything refers to the model as inspected;
    one line when <out> already holds an inspection of another model."""
    copy = out / CLASSIFIER_FILE
    if copy.exists():
        if not filecmp.cmp(copy, model_path, shallow=False):
            raise InvkerasError(f"--out {out}: holds an inspection of another model ({copy} differs from --model "
                                f"{model_path}); give another --out, or delete {out} to start afresh")
        return copy
    with artifacts.atomic_path(copy) as tmp:
        shutil.copyfile(model_path, tmp)
    return copy


def _classifier_subject(config: InspectConfig, out: Path) -> Subject:
    from invkeras.data import dataset_info
    from invkeras.data.features import load_model, resolve_model_path
    from invkeras.inspection.layers import check_classifier, check_images, choose_layers

    model_path = resolve_model_path(config.model)
    model = load_model(model_path)
    where = f"--model {config.model}"
    num_classes = check_classifier(model, where=where)
    info = dataset_info(config.dataset, data_dir=config.data_dir, seed=config.seed)
    check_images(model, info.image_shape, where=where, dataset=config.dataset)
    if info.num_classes > num_classes:
        raise InvkerasError(f"{where}: scores {num_classes} classes, but dataset '{config.dataset}' has "
                            f"{info.num_classes}; inspect the classifier with the images it was trained for")
    layers = choose_layers(model, config.layers, where="inspect")
    copy = snapshot_classifier(model_path, out)
    return Subject(layers, tuple(info.image_shape), copy, {}, model.name, config.dataset, info.split_sizes["train"],
                   info.entropy_nats, num_classes)


def _feature_subject(config: InspectConfig) -> Subject:
    """Layers from a directory of user features: one extract directory or `<layer>.npz` each."""
    from invkeras.data.features import MANIFEST, open_features

    root = Path(str(config.features))
    if not root.is_dir():
        raise InvkerasError(f"--features {root}: not a directory (it should hold one extract directory or .npz of "
                            "x and h per layer)")
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and ((entry / "train" / MANIFEST).is_file() or (entry / MANIFEST).is_file()):
            found[entry.name] = entry
        elif entry.suffix == ".npz":
            found[entry.stem] = entry
    if not found:
        raise InvkerasError(f"--features {root}: no layer in it (each layer is a directory from `invkeras extract` or "
                            "a <layer>.npz with arrays x and h)")
    names = config.layers or list(found)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise InvkerasError(f"--layers: --features {root} has no layer {', '.join(repr(n) for n in unknown)}; its "
                            f"layers are: {', '.join(found)}")
    layers, image_shape, train_examples = [], None, 0
    for name in names:
        sets = found[name] / "train" if (found[name] / "train" / MANIFEST).is_file() else found[name]
        features = open_features(sets)
        shape = tuple(int(d) for d in features.x_shape)
        if image_shape is not None and shape != image_shape:
            raise InvkerasError(f"--features {root}: layer '{name}' holds images of shape {shape}, the others "
                                f"{image_shape}; every layer's features must be of the same images")
        image_shape, train_examples = shape, max(train_examples, features.num_examples)
        layers.append(LayerChoice(name, "features", tuple(int(d) for d in features.h_shape)))
    return Subject(layers, image_shape, None, {name: found[name] for name in names}, root.name,
                   config.dataset or f"features:{root}", train_examples, None, None)


# --- the configs of what is trained ---------------------------------------------------------


class Workspace:
    """Where each model of an inspection lives, and the config that trains it."""

    def __init__(self, config: InspectConfig, subject: Subject, out: Path):
        self.config, self.subject, self.out = config, subject, out

    def inverter_dir(self, kind: str, layer: str) -> Path:
        return self.out / "inverters" / kind / layer

    def autoencoder_dir(self) -> Path:
        return self.out / "autoencoder"

    def job_dir(self, job: planning.Job) -> Path:
        return self.autoencoder_dir() if job.kind == planning.AUTOENCODER else self.inverter_dir(job.kind, job.layer)

    def model_file(self, job: planning.Job) -> Path:
        from invkeras.autoencoders.training import MODEL_FILE as AUTOENCODER_FILE
        from invkeras.inverters import MODEL_FILE

        return self.job_dir(job) / (AUTOENCODER_FILE if job.kind == planning.AUTOENCODER else MODEL_FILE)

    def finished(self, job: planning.Job) -> bool:
        return artifacts.is_complete(self.model_file(job))

    def progress(self, job: planning.Job) -> dict:
        """The resume state of an unfinished job: its step and the seconds its loop used."""
        from invkeras.training import BACKUP_DIR, Backup

        return Backup(self.job_dir(job) / BACKUP_DIR).progress() or {"step": 0, "seconds": 0.0}

    def data_options(self, layer: str) -> dict:
        config, subject = self.config, self.subject
        options = dict(seed=config.seed, workspace=str(self.out), arch=ARCH, eval_examples=config.eval_examples,
                       layer=layer)
        if subject.features:
            source = subject.features.get(layer) or next(iter(subject.features.values()))
            options.update(features=str(source), dataset=config.dataset or "procedural")
        else:
            options.update(dataset=config.dataset, data_dir=config.data_dir, model=str(subject.classifier))
        return options

    def job_config(self, job: planning.Job, **schedule):
        """The config that trains `job`, with `schedule` (max_steps, max_time) on top."""
        if job.kind == planning.AUTOENCODER:
            from invkeras.autoencoders.training import AutoencoderConfig

            source = self.data_options("none")
            return AutoencoderConfig(dataset=source["dataset"], data_dir=source.get("data_dir"), seed=self.config.seed,
                                     out=str(self.autoencoder_dir()), eval_examples=self.config.eval_examples,
                                     steps_per_checkpoint=job.steps_per_checkpoint, **schedule)
        from invkeras.inverters import config_for

        options = {**self.data_options(job.layer), **KIND_SETTINGS.get(job.kind, {}),
                   "out": str(self.job_dir(job)), "steps_per_checkpoint": job.steps_per_checkpoint, **schedule}
        if job.kind == "cinn":
            options["autoencoder"] = str(self.autoencoder_dir())
        return config_for(job.kind, options)

    def train(self, job: planning.Job, config, *, hooks=(), progress: bool = True):
        if job.kind == planning.AUTOENCODER:
            from invkeras.autoencoders.training import train_autoencoder

            return train_autoencoder(config, hooks=hooks, progress=progress)
        from invkeras.inverters import train_inverter

        return train_inverter(config, hooks=hooks, progress=progress)


# --- the run -------------------------------------------------------------------------------


def _read_state(out: Path) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def inspect_classifier(config: InspectConfig, console=None) -> InspectResult:
    """Inspect every chosen layer of a classifier within `config.budget` (the module docstring
    says what, where and in which order); rerunning continues an interrupted run."""
    from rich.console import Console

    console = console or Console(stderr=True)
    call_started = time.monotonic()
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out)
    # An interrupted run's time counts against the budget; a finished run's does not.
    clock = Clock(config.budget, 0.0 if state.get("complete") else float(state.get("spent") or 0.0))
    same_command = state.get("config") == config.model_dump(mode="json")
    state.update(config=config.model_dump(mode="json"), complete=False)

    def save_state(**changes) -> None:
        state.update(changes, spent=clock.spent())
        artifacts.write_json_atomic(out / STATE_FILE, state)

    subject = _feature_subject(config) if config.features else _classifier_subject(config, out)
    kinds, kind_notes = planning.choose_kinds(config.kinds, subject.image_shape, auto=config.auto_kinds)
    if config.auto_kinds and same_command and state.get("kinds"):
        kinds = [kind for kind in kinds if kind in state["kinds"]]  # as the interrupted run's plan decided
    if subject.features and "cinn" in kinds and not config.dataset:
        raise InvkerasError("--kinds cinn with --features needs --dataset too: its autoencoder trains on the images")
    workspace = Workspace(config, subject, out)
    jobs = planning.jobs_for([layer.name for layer in subject.layers], kinds)
    stages = Stages(console, clock, total=(subject.classifier is not None) + 1 + len(jobs) + len(subject.layers) + 1)
    console.print(f"inspect: {subject.model_name} on {subject.dataset}: layers "
                  + ", ".join(f"{layer.name} ({layer.role})" for layer in subject.layers)
                  + f"; kinds {', '.join(kinds)}" + (" (auto)" if config.auto_kinds else ""), highlight=False)

    if subject.classifier is not None:
        stages.start(f"extract {len(subject.layers)} layers' features")
        _extract(workspace)
    save_state()

    stages.start("calibrate each kind's step time")
    calibrations = planning.calibrations_from_json(state.get("calibration") or {})
    todo = [job for job in jobs if not workspace.finished(job)]
    trained: dict[str, dict] = dict(state.get("trained") or {})
    _calibrate(workspace, todo, calibrations, trained, console, clock, save_state)
    save_state(calibration=planning.calibration_json(calibrations), trained=trained)

    sizes = _evaluation_sizes(config, subject)
    evaluated = {layer.name for layer in subject.layers if _layer_evaluated(workspace, layer.name, kinds)}

    def evaluation_of(selected: Sequence[planning.Job]) -> float:
        """The estimated evaluation of the layers not evaluated yet, for the kinds of `selected`."""
        chosen = sorted({job.kind for job in selected if job.kind != planning.AUTOENCODER})
        left = sum(layer.name not in evaluated for layer in subject.layers)
        return left * planning.evaluation_seconds(chosen, calibrations, sizes)

    todo = [job for job in jobs if not workspace.finished(job)]
    plan = planning.make_plan(todo, calibrations, budget=config.budget, spent=clock.spent(),
                              evaluation_of=evaluation_of, notes=kind_notes,
                              optional=("pixelcnn",) if config.auto_kinds else ())
    kept = {row.job.key for row in plan.rows}
    if len(kept) < len(todo):  # auto left pixelcnn out
        kinds = [kind for kind in kinds if any(job.kind == kind and job.key in kept for job in todo)
                 or any(job.kind == kind and workspace.finished(job) for job in jobs)]
        jobs = [job for job in jobs if job.key in kept or workspace.finished(job)]
    console.print(planning.plan_table(plan, calibrations))
    for note in plan.notes:
        console.print(f"  {note}", highlight=False)
    save_state(plan=plan.to_json(), kinds=kinds)

    # Layer by layer: train, then evaluate, so a slow evaluation shortens what follows it.
    estimate_factor = 1.0
    for layer in subject.layers:
        for job in [job for job in jobs if job.layer == layer.name]:
            trained[job.key] = _train_job(workspace, job, jobs, calibrations, clock, stages, evaluation_of,
                                          estimate_factor, trained.get(job.key))
            save_state(trained=trained)
        if layer.name not in evaluated:
            stages.start(f"samples and comparison of layer {layer.name}")
            estimated = planning.evaluation_seconds(kinds, calibrations, sizes)
            started = time.monotonic()
            _evaluate_layer(workspace, layer.name, kinds, config)
            evaluated.add(layer.name)
            seconds = time.monotonic() - started
            if estimated > 0:
                estimate_factor = max(0.5, seconds / estimated)
            evaluations = state.setdefault("evaluations", {})
            evaluations[layer.name] = {"seconds": seconds, "estimated": estimated}
            save_state()
    for job in [job for job in jobs if job.layer == planning.UNCONDITIONAL]:
        trained[job.key] = _train_job(workspace, job, jobs, calibrations, clock, stages, evaluation_of,
                                      estimate_factor, trained.get(job.key))
        save_state(trained=trained)

    stages.start("information estimates, test accuracy and the report")
    information = _information(workspace, subject, kinds)
    accuracy = _accuracy(workspace, subject)
    from invkeras.reports.inspect_report import write_inspect_report

    facts = _report_facts(workspace, subject, kinds, plan, calibrations, trained, information, accuracy, clock)
    html, markdown, reading = write_inspect_report(facts)
    save_state(complete=True)
    console.print(f"inspect: done in {format_duration(clock.spent())} of {format_duration(config.budget)}; "
                  f"report: {html}", highlight=False)
    return InspectResult(out, html, markdown, subject.layers, kinds, reading, accuracy,
                         time.monotonic() - call_started, clock.spent(), config.budget,
                         {key: int(value.get("steps", 0)) for key, value in trained.items()})


def _extract(workspace: Workspace) -> None:
    from invkeras.data.features import ExtractConfig, extract_features

    config, subject = workspace.config, workspace.subject
    extract_features(ExtractConfig(dataset=config.dataset, data_dir=config.data_dir, arch=ARCH,
                                   model=str(subject.classifier), layers=[layer.name for layer in subject.layers],
                                   seed=config.seed, workspace=str(workspace.out)))


def _calibrate(workspace: Workspace, jobs: Sequence[planning.Job], calibrations: dict, trained: dict, console,
               clock: Clock, save_state: Callable) -> None:
    """Time the first unfinished job of each kind, unless measured before; with cinn,
    train the autoencoder first (cinn's steps need it), under its share of the plan."""
    def measure(job: planning.Job) -> None:
        done = int(workspace.progress(job).get("step", 0))
        config = workspace.job_config(job, max_steps=done + planning.CALIBRATION_STEPS)
        console.print(f"  calibrating {job.kind} on {job.key}", highlight=False)
        calibrations[job.calibration_key] = planning.calibrate(
            lambda hooks: workspace.train(job, config, hooks=hooks, progress=False))
        save_state(calibration=planning.calibration_json(calibrations))

    first = {}
    for job in jobs:
        first.setdefault(job.calibration_key, job)
    autoencoder = first.pop(planning.AUTOENCODER, None)
    if autoencoder is not None:
        if planning.AUTOENCODER not in calibrations:
            measure(autoencoder)
        # Its share, with cinn's step time taken as the autoencoder's until cinn can be measured.
        assumed = {**{key: calibrations[planning.AUTOENCODER] for key in first}, **calibrations}
        share = planning.allocate(jobs, assumed, clock.left() * 0.8)[0]
        trained[autoencoder.key] = {**_train(workspace, autoencoder, share.steps, share.loop_seconds, console),
                                    "share": share.share}
    for key, job in first.items():
        if key not in calibrations:
            measure(job)


def _train(workspace: Workspace, job: planning.Job, steps: int, loop_seconds: float, console) -> dict:
    """Train `job` for about `steps` more steps under a cap of `loop_seconds` more seconds."""
    progress = workspace.progress(job)
    done, used = int(progress.get("step", 0)), float(progress.get("seconds", 0.0))
    config = workspace.job_config(job, max_steps=done + max(1, math.ceil(1.5 * steps)),
                                  max_time=max(1.0, used + loop_seconds))
    started = time.monotonic()
    result = workspace.train(job, config)
    return {"steps": int(result.steps), "seconds": time.monotonic() - started, "planned_steps": done + steps,
            "planned_seconds": loop_seconds, "stopped_early": bool(getattr(result, "stopped_early", False)),
            "max_time": config.max_time, "max_steps": config.max_steps}


def _train_job(workspace: Workspace, job: planning.Job, jobs: Sequence[planning.Job], calibrations: dict,
               clock: Clock, stages: Stages, evaluation_of: Callable, estimate_factor: float,
               before: dict | None) -> dict:
    """Train one job under the share of the time left that the plan's rule gives it now."""
    if workspace.finished(job):
        stages.start(f"{job.kind} {job.layer}: trained already")
        return before or _finished_facts(workspace, job)
    remaining = [j for j in jobs if not workspace.finished(j)]
    evaluation = evaluation_of(jobs) * estimate_factor  # every kind of the layers still to evaluate
    share = planning.allocate(remaining, calibrations, clock.left() - evaluation - planning.REPORT_SECONDS)
    mine = next(row for row in share if row.job.key == job.key)
    minimum = planning.MIN_SHARE * job.needed_steps
    steps = max(mine.steps, int(minimum))
    cal = calibrations[job.calibration_key]
    loop = max(mine.loop_seconds, cal.first_step + steps * cal.per_step(job.steps_per_checkpoint))
    stages.start(f"train {job.kind} {'(images only)' if job.layer == planning.UNCONDITIONAL else job.layer}: "
                 f"about {steps:,} steps in {format_duration(loop)}")
    facts = _train(workspace, job, steps, loop, stages.console)
    return {**facts, "share": mine.share}


def _finished_facts(workspace: Workspace, job: planning.Job) -> dict:
    meta = artifacts.read_metadata(workspace.model_file(job)) or {}
    results = meta.get("results") or {}
    return {"steps": int(results.get("steps") or 0), "seconds": float(results.get("seconds") or 0.0)}


# --- evaluation ----------------------------------------------------------------------------


def _evaluation_sizes(config: InspectConfig, subject: Subject) -> planning.EvaluationSizes:
    height, width, _ = subject.image_shape
    dims = max((int(np.prod([d or 1 for d in layer.shape])) for layer in subject.layers), default=1)
    return planning.EvaluationSizes(
        image_pixels=height * width, grid_images=_grid_total(config),
        compare_images=_compare_images(config), compare_samples=config.compare_samples,
        topk_images=TOPK_INPUTS * TOPK_SAMPLES, train_examples=min(subject.train_examples, MAX_NEIGHBOUR_SEARCH),
        feature_dims=dims)


def _grid_total(config: InspectConfig) -> int:
    return config.grid_inputs * config.grid_samples


def _compare_images(config: InspectConfig) -> int:
    """The comparison's images, rounded so that its samples fill whole sampling batches."""
    per_batch = GRID_BATCH // math.gcd(GRID_BATCH, config.compare_samples)
    return max(per_batch, config.compare_images // per_batch * per_batch)


def sample_config(workspace: Workspace, kind: str, layer: str):
    from invkeras.analyses.samples import SampleConfig

    config = workspace.config
    return SampleConfig(inverter=str(workspace.inverter_dir(kind, layer)), num_inputs=config.grid_inputs,
                        num_samples=config.grid_samples, seed=config.seed, batch_size=GRID_BATCH)


def compare_config(workspace: Workspace, kinds: Sequence[str], layer: str):
    from invkeras.analyses.compare import CompareConfig

    config = workspace.config
    return CompareConfig(inverters=[str(workspace.inverter_dir(kind, layer)) for kind in kinds],
                         num_images=_compare_images(config), num_samples=config.compare_samples, seed=config.seed,
                         top_k=TOP_K, grid_samples=TOPK_SAMPLES, grid_inputs=TOPK_INPUTS, batch_size=GRID_BATCH,
                         max_train_examples=MAX_NEIGHBOUR_SEARCH, out=str(workspace.out / "comparisons" / layer))


def _made_with(path: Path, config) -> bool:
    """An artefact is done when it is complete and was made with these very settings."""
    if not artifacts.is_complete(path):
        return False
    recorded = (artifacts.read_metadata(path) or {}).get("config") or {}
    wanted = config.model_dump(mode="json")
    return all(recorded.get(k) == v for k, v in wanted.items() if k not in ("inverter", "inverters", "out"))


def _layer_evaluated(workspace: Workspace, layer: str, kinds: Sequence[str]) -> bool:
    grids = _grids_of(workspace, layer, kinds)
    comparison = workspace.out / "comparisons" / layer / COMPARISON
    needs_comparison = workspace.subject.classifier is not None
    return all(artifacts.is_complete(path) for path in grids) and (not needs_comparison or
                                                                   artifacts.is_complete(comparison))


def _sampling_kinds(kinds: Sequence[str]) -> list[str]:
    return [kind for kind in kinds if kind in planning.SAMPLING_KINDS]


def _grids_of(workspace: Workspace, layer: str, kinds: Sequence[str]) -> list[Path]:
    """The grids a layer's evaluation writes: samples of each sampling kind (mse's only when it
    is alone), and the first sampling kind's samples beside the mse reconstruction."""
    sampling = _sampling_kinds(kinds) or [kind for kind in kinds if kind == "mse"]
    grids = [workspace.inverter_dir(kind, layer) / SAMPLE_GRID for kind in sampling]
    if "mse" in kinds and _sampling_kinds(kinds):
        grids.append(workspace.inverter_dir(_sampling_kinds(kinds)[0], layer) / RECONSTRUCTION_GRID)
    return grids


def _evaluate_layer(workspace: Workspace, layer: str, kinds: Sequence[str], config: InspectConfig) -> None:
    """Sample grids of each kind, the samples beside the MSE reconstruction, and the comparison."""
    from invkeras.analyses.compare import compare_inverters
    from invkeras.analyses.samples import draw_inversions, save_samples_with_reconstruction
    from invkeras.inverters import load_inverter

    sampling = _sampling_kinds(kinds) or [kind for kind in kinds if kind == "mse"]
    beside_mse = _sampling_kinds(kinds)[0] if "mse" in kinds and _sampling_kinds(kinds) else None
    for kind in sampling:
        settings = sample_config(workspace, kind, layer)
        grid = workspace.inverter_dir(kind, layer) / SAMPLE_GRID
        reconstruction = workspace.inverter_dir(kind, layer) / RECONSTRUCTION_GRID
        with_mse = kind == beside_mse
        if _made_with(grid, settings) and (not with_mse or _made_with(reconstruction, settings)):
            continue
        inverter = load_inverter(settings.inverter)
        if not _made_with(grid, settings):
            draw_inversions(settings, inverter=inverter)
        if with_mse:
            save_samples_with_reconstruction(settings, str(workspace.inverter_dir("mse", layer)), inverter=inverter)
    if workspace.subject.classifier is None:
        return  # user features: no classifier to read the samples' features with
    settings = compare_config(workspace, kinds, layer)
    if not _made_with(Path(settings.out) / COMPARISON, settings):
        compare_inverters(settings)


# --- information, accuracy ------------------------------------------------------------------


def _information(workspace: Workspace, subject: Subject, kinds: Sequence[str]) -> Path | None:
    """NCE per layer against the unconditional model (pixelcnn only): mi/test.json."""
    if "pixelcnn" not in kinds:
        return None
    from invkeras.analyses.mi import EstimateMIConfig, estimate_mi

    settings = EstimateMIConfig(
        inverters=[str(workspace.inverter_dir("pixelcnn", layer.name)) for layer in subject.layers],
        unconditional=str(workspace.inverter_dir("pixelcnn", planning.UNCONDITIONAL)),
        reference=subject.layers[0].name, split="test", eval_examples=workspace.config.eval_examples,
        out=str(workspace.out / "mi" / "test.json"))
    path = Path(str(settings.out))
    if not _made_with(path, settings):
        estimate_mi(settings)
    return path


def _accuracy(workspace: Workspace, subject: Subject) -> float | None:
    """The classifier's accuracy on the test split, kept in the copy's metadata."""
    if subject.classifier is None:
        return None
    meta = artifacts.read_metadata(subject.classifier) or {}
    config = workspace.config
    recorded = meta.get("results") or {}
    if meta.get("kind") == CLASSIFIER_KIND and recorded.get("dataset") == config.dataset \
            and recorded.get("test_accuracy") is not None:
        return float(recorded["test_accuracy"])
    from invkeras.data import iter_batches
    from invkeras.data.features import load_model

    model = load_model(subject.classifier)
    correct = total = 0
    for images, labels in iter_batches(config.dataset, "test", 256, data_dir=config.data_dir, seed=config.seed):
        scores = np.asarray(model(images.astype("float32"), training=False))
        correct += int((scores.argmax(axis=1) == labels).sum())
        total += len(labels)
    accuracy = correct / max(1, total)
    artifacts.write_metadata(subject.classifier, kind=CLASSIFIER_KIND, seed=config.seed,
                             config={"model": config.model, "dataset": config.dataset},
                             results={"test_accuracy": accuracy, "test_examples": total, "dataset": config.dataset,
                                      "layers": [layer.name for layer in subject.layers]})
    return accuracy


# --- the report's facts ----------------------------------------------------------------------


def _report_facts(workspace: Workspace, subject: Subject, kinds: Sequence[str], plan, calibrations: dict,
                  trained: dict, information: Path | None, accuracy: float | None, clock: Clock):
    from invkeras.reports.inspect_report import InspectFacts, LayerFacts, ModelRow

    config, out = workspace.config, workspace.out
    layers = []
    for layer in subject.layers:
        grids = [path for path in _grids_of(workspace, layer.name, kinds) if path.is_file()]
        comparison = out / "comparisons" / layer.name / COMPARISON
        topk = sorted((out / "comparisons" / layer.name).glob("compare_topk_*.png"))
        layers.append(LayerFacts(name=layer.name, role=layer.role, shape=layer.shape, grids=grids,
                                 comparison=comparison if comparison.is_file() else None, topk_grids=topk))
    planned = {row.job.key: row for row in plan.rows}
    rows = []
    for key, facts in trained.items():
        kind, _, layer = key.partition("/")
        row = planned.get(key)
        meta = artifacts.read_metadata(workspace.model_file(planning.Job(kind, layer))) or {}
        results = meta.get("results") or {}
        stopped = ("early stopping" if results.get("stopped_early") else
                   "time cap" if facts.get("max_time") and facts.get("steps", 0) < facts.get("max_steps", 0)
                   else "steps")
        rows.append(ModelRow(kind=kind, layer=layer or "(autoencoder)",
                             planned_steps=row.steps if row else facts.get("planned_steps"),
                             steps=int(results.get("steps") or facts.get("steps") or 0),
                             planned_seconds=row.seconds if row else None,
                             seconds=facts.get("seconds"), stopped_by=stopped,
                             headline=(results.get("test") or results.get("validation") or {}).get("headline")))
    command = artifacts.current_command()
    return InspectFacts(
        out_dir=out, model=subject.model_name, model_path=str(config.model or config.features),
        dataset=subject.dataset, budget=config.budget, spent=clock.spent(), seed=config.seed, command=command,
        kinds=list(kinds), layers=layers, information=information, entropy_nats=subject.entropy_nats,
        accuracy=accuracy, models=rows, notes=list(plan.notes),
        calibration={key: c.step for key, c in calibrations.items()})
