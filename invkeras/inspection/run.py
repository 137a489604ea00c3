"""The `inspect` run: from a classifier and its images to a report on every layer, in a time budget.

    1. check the model (a classifier of these images), choose its layers (`layers`), copy it
       to `<out>/classifier.keras` and extract the layers' features once
    2. calibrate each kind's step time and plan the budget (`plan`), printed as a table
    3. layer by layer, in lanes side by side as the machine's cores allow (`lanes`): train
       each kind's inverter under its wall-clock cap, then draw its sample grids and compare
       the kinds in the layer's space; and the unconditional PixelCNN++ (with pixelcnn, unless
       the images' entropy is known exactly), the reference of the information estimates
    4. the information table (NCE per layer, with intervals), the classifier's test accuracy,
       and the report: `<out>/report.html` with its Markdown twin

Everything is written under `<out>` (default runs/<dataset>/inspect):

    report.html, report.md, report-*.png   the report and its plots (images linked, not inlined)
    inspect.json                            the plan, the calibration, what ran and how long
    classifier.keras (+ .meta.json)         the inspected model, as it was, with its test accuracy
    classifier-features/<layer>/<split>/    the extracted (x, h) pairs
    logs/lane-<n>.log                       what each lane printed, when there are several
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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.inspection import plan as planning
from invkeras.inspection.config import InspectConfig, format_duration
from invkeras.inspection.layers import LayerChoice
from invkeras.inspection.workspace import ARCH, COMPARISON, Subject, Workspace, evaluation_sizes, grids_of, made_with

STATE_FILE = "inspect.json"
CLASSIFIER_FILE = "classifier.keras"
CLASSIFIER_KIND = "inspected-classifier"


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

    from invkeras.inspection.lanes import available_cores, run_lanes

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
    latent = [kind for kind in kinds if planning.needs_autoencoder(kind)]
    if subject.features and latent and not config.dataset:
        raise InvkerasError(f"--kinds {latent[0]} with --features needs --dataset too: its autoencoder trains on "
                            "the images")
    workspace = Workspace(config, subject, out)
    jobs = planning.jobs_for([layer.name for layer in subject.layers], kinds,
                             exact_entropy=subject.entropy_nats is not None)
    stages = Stages(console, clock, total=(subject.classifier is not None) + 4)
    console.print(f"inspect: {subject.model_name} on {subject.dataset}: layers "
                  + ", ".join(f"{layer.name} ({layer.role})" for layer in subject.layers)
                  + f"; kinds {', '.join(kinds)}" + (" (auto)" if config.auto_kinds else ""), highlight=False)

    if subject.classifier is not None:
        stages.start(f"extract {len(subject.layers)} layers' features")
        _extract(workspace)
    save_state()

    stages.start("calibrate each kind's step time")
    calibrations = planning.calibrations_from_json(state.get("calibration") or {})
    trained: dict[str, dict] = dict(state.get("trained") or {})
    _calibrate(workspace, [job for job in jobs if not workspace.finished(job)], calibrations, trained, console,
               clock, save_state)
    save_state(calibration=planning.calibration_json(calibrations), trained=trained)

    sizes = evaluation_sizes(config, subject)
    evaluated = {layer.name for layer in subject.layers if _layer_done(workspace, layer.name, kinds)}

    def evaluation_of(selected: Sequence[planning.Job]) -> float:
        """The estimated evaluation of the selected jobs' layers not evaluated yet, for all their kinds."""
        layers = {job.layer for job in selected} - evaluated - {planning.UNCONDITIONAL}
        chosen = sorted({job.kind for job in jobs if job.layer in layers})
        return len(layers) * planning.evaluation_seconds(chosen, calibrations, sizes)

    todo = [job for job in jobs if not workspace.finished(job)]
    groups = [layer.name for layer in subject.layers] + [planning.UNCONDITIONAL]
    lanes = max(1, min(available_cores(), len({job.layer for job in todo}) or 1))
    provisional = [kind for kind in kinds if config.auto_kinds and planning.quick_training(kind).auto_if_affordable]
    plan = planning.make_plan(todo, calibrations, budget=config.budget, spent=clock.spent(), lanes=lanes,
                              evaluation_of=evaluation_of, notes=kind_notes, optional=provisional)
    kept = {row.job.key for row in plan.rows}
    if any(job.key not in kept for job in todo if job.kind != planning.AUTOENCODER):  # auto left a costly kind out
        jobs = [job for job in jobs if job.key in kept or workspace.finished(job)]
        kinds = [kind for kind in kinds if any(job.kind == kind for job in jobs)]
    console.print(planning.plan_table(plan, calibrations))
    for note in plan.notes:
        console.print(f"  {note}", highlight=False)
    save_state(plan=plan.to_json(), kinds=kinds)

    # Every group (a layer's models, the unconditional model) that is not done, on the plan's
    # lanes; a done group goes to the first lane, which only notes it.
    lane_groups = [list(lane) for lane in plan.lanes] or [[]]
    for group in groups:
        if any(job.layer == group for job in jobs) and not any(group in lane for lane in lane_groups):
            lane_groups[0].append(group)
    lane_groups = [sorted(lane, key=groups.index) for lane in lane_groups]
    stages.start("train and evaluate, " + (f"{len(lane_groups)} lanes side by side" if len(lane_groups) > 1
                                           else "layer by layer"))
    deadline = time.time() + clock.left() - plan.report
    def record(results: dict) -> None:
        trained.update(results["trained"])
        state.setdefault("evaluations", {}).update(results["evaluations"])
        save_state(trained=trained)

    record(run_lanes(workspace, lane_groups, jobs, kinds, calibrations, deadline, console, record=record))

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


def _layer_done(workspace: Workspace, layer: str, kinds: Sequence[str]) -> bool:
    from invkeras.inspection.workspace import layer_evaluated

    return layer_evaluated(workspace, layer, kinds)


def _extract(workspace: Workspace) -> None:
    from invkeras.data.features import ExtractConfig, extract_features

    config, subject = workspace.config, workspace.subject
    extract_features(ExtractConfig(dataset=config.dataset, data_dir=config.data_dir, arch=ARCH,
                                   model=str(subject.classifier), layers=[layer.name for layer in subject.layers],
                                   seed=config.seed, workspace=str(workspace.out)))


def _calibrate(workspace: Workspace, jobs: Sequence[planning.Job], calibrations: dict, trained: dict, console,
               clock: Clock, save_state: Callable) -> None:
    """Time the first unfinished job of each kind, unless measured before; with cinn, train the
    autoencoder first (cinn's steps need it), under its share of the plan."""
    from invkeras.inspection.lanes import train_for

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
        console.print(f"  training the autoencoder cinn needs: about {share.steps:,} steps in "
                      f"{format_duration(share.loop_seconds)}", highlight=False)
        trained[autoencoder.key] = {**train_for(workspace, autoencoder, share.steps, share.loop_seconds),
                                    "share": share.share}
    for key, job in first.items():
        if key not in calibrations:
            measure(job)


# --- information, accuracy ------------------------------------------------------------------


def _information(workspace: Workspace, subject: Subject, kinds: Sequence[str]) -> Path | None:
    """NCE per layer from the kind with a pixel likelihood, against its unconditional model where
    there is one: mi/test.json."""
    kind = planning.likelihood_kind(kinds)
    if kind is None:
        return None
    from invkeras.analyses.mi import EstimateMIConfig, estimate_mi

    unconditional = planning.Job(kind, planning.UNCONDITIONAL)
    settings = EstimateMIConfig(
        inverters=[str(workspace.inverter_dir(kind, layer.name)) for layer in subject.layers],
        unconditional=str(workspace.job_dir(unconditional)) if workspace.finished(unconditional) else None,
        reference=subject.layers[0].name, split="test", eval_examples=workspace.config.eval_examples,
        out=str(workspace.out / "mi" / "test.json"))
    path = Path(str(settings.out))
    if not made_with(path, settings):
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
        grids = [path for path in grids_of(workspace, layer.name, kinds) if path.is_file()]
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
    command = config.command_line()
    return InspectFacts(
        out_dir=out, model=subject.model_name, model_path=str(config.model or config.features),
        dataset=subject.dataset, budget=config.budget, spent=clock.spent(), seed=config.seed, command=command,
        kinds=list(kinds), layers=layers, information=information, entropy_nats=subject.entropy_nats,
        accuracy=accuracy, models=rows, notes=list(plan.notes),
        calibration={key: c.step for key, c in calibrations.items()})
