"""What `inspect` trains, how long each model's step takes here, and how the budget is split.

**Kinds.** `auto` asks each registered kind which images it suits (its `quick.auto_for`,
`invkeras.inverters.QuickTraining`), as measured on CPU budgets of minutes:

* `mse`, always: the cheap point-estimate baseline (seconds to train);
* `pixelcnn` for greyscale images of at most 32x32 pixels, when the budget gives every
  PixelCNN++ at least a quarter of the steps it needs; it brings the pixel likelihood the
  information estimates need;
* `cinn` for colour images (conditional INN over an autoencoder latent), with one
  autoencoder trained for all layers;
* `gan` only when named.

A list (`pixelcnn,cinn,mse,gan`) is taken as it stands. With a kind that has a pixel
likelihood, its unconditional model of the images is trained too, whose H*(x) is the
reference of the estimates H*(x) - H*(x|h), unless the images' entropy H(x) is known exactly
(the procedural dataset): the exact value is the better reference, and the time goes to the
layers' models. A kind over an autoencoder latent gets one autoencoder, trained first.

**Calibration.** Each kind's step time is measured on this machine by training its first
model for a few steps (`CALIBRATION_STEPS`) in the shared loop and stopping it at a
checkpoint. Those steps are not lost: the model's own training resumes from them. One
model per kind is enough: a kind's step time barely depends on what it conditions on (a
PixelCNN++ step on the procedural images took 150, 153 and 145 ms conditioned on conv1's
feature map, on fc3's vector and on nothing), while every calibration costs a model's
set-up and graph once more. The stopwatch gives four numbers (`Calibration`): setting up
(loading pairs, building the network), the first step's extra time (building the graph), a
step, and a checkpoint (validation on the held-out images and saving the state).

**Allocation.** The models of one layer form a group (the unconditional model one of its
own); groups go onto *lanes* that run side by side, one per core where there are enough
(`assign_lanes`, `invkeras.inspection.lanes`). Of the time left, the report is set aside
first; in each lane, its evaluation (sampling, comparisons) and every model's fixed costs
(setting up, the first step, the final evaluation). The rest of the lane's time is split in
proportion to what each of its models needs: its kind's `quick.needed_steps` (the unconditional
model the most, since H*(x) is the reference every estimate uses) times its step time. The models of a
lane get the same share of their need, except that one whose whole need costs under
`CHEAP_FRACTION` of the time (an MSE decoder: seconds) gets all of it; with a large budget
the share is above 1 and early stopping ends a model that has converged. Each model trains under a
wall-clock cap (`max_time`), recomputed just before it starts from the time then left, so a
model that stopped early or a slow evaluation moves time to or from those still to come.
A budget that cannot give every model a tenth of its need is refused in one line naming
the minimum.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from invkeras.errors import InvkerasError
from invkeras.inspection.config import format_duration
from invkeras.inverters.base import QuickTraining
from invkeras.training import TrainingHook

UNCONDITIONAL = "none"
AUTOENCODER = "autoencoder"
AUTOENCODER_TRAINING = QuickTraining(needed_steps=2000, steps_per_checkpoint=250)
CALIBRATION_STEPS = 6
MIN_SHARE = 0.1  # below this share of its need, a model is not worth training
CHEAP_FRACTION = 0.05  # a model whose whole need costs less than this of the time gets all of it
AUTO_AFFORDABLE_SHARE = 0.25  # auto keeps a provisional kind only if each of its models gets this share
REPORT_SECONDS = 10.0
LOAD_SECONDS = 2.0  # loading a saved inverter


def choose_kinds(requested: Sequence[str], image_shape: Sequence[int], *, auto: bool) -> tuple[list[str], list[str]]:
    """(kinds, notes): the kinds to train and why auto picked them (see the module docstring).

    With `auto`, the kinds that are picked only if affordable (pixelcnn) are provisional:
    `make_plan(optional=...)` drops them when the budget is too small for them."""
    from invkeras.inverters import inverter_kinds

    known = inverter_kinds()
    if not auto:
        unknown = [k for k in requested if k not in known]
        if unknown:
            raise InvkerasError(f"--kinds {','.join(requested)}: unknown kind {', '.join(unknown)}; choose from "
                                f"{', '.join(sorted(known))} or auto")
        return list(dict.fromkeys(requested)), []
    picked = [(kind, cls.quick.auto_reason(image_shape)) for kind, cls in known.items()]
    # Kinds that draw samples first, the point estimates after them (they are shown beside).
    picked = sorted(((kind, why) for kind, why in picked if why), key=lambda item: known[item[0]].point_estimate)
    passed_over = [(kind, cls.quick.auto_too_large(image_shape)) for kind, cls in known.items()]
    return [kind for kind, _ in picked], [f"{kind}: {why}" for kind, why in picked + passed_over if why]


def quick_training(kind: str) -> QuickTraining:
    """How `kind` (or the autoencoder) trains in a budget of minutes."""
    from invkeras.inverters import inverter_class

    return AUTOENCODER_TRAINING if kind == AUTOENCODER else inverter_class(kind).quick


def draws_samples(kind: str) -> bool:
    """A kind whose samples differ (not a point estimate repeated; not the autoencoder)."""
    from invkeras.inverters import inverter_class

    return kind != AUTOENCODER and not inverter_class(kind).point_estimate


def sampling_kinds(kinds: Sequence[str]) -> list[str]:
    return [kind for kind in kinds if draws_samples(kind)]


def point_estimate_kinds(kinds: Sequence[str]) -> list[str]:
    return [kind for kind in kinds if not draws_samples(kind)]


def pixel_likelihood(kind: str) -> bool:
    """A kind with a pixel likelihood samples pixel by pixel, and its unconditional model is the
    reference of the information estimates."""
    from invkeras.inverters import inverter_class

    cls = inverter_class(kind)
    return "pixel_log_prob" in cls.capabilities and cls.unconditional_ok


def likelihood_kind(kinds: Sequence[str]) -> str | None:
    """The first of `kinds` whose held-out likelihood gives the information estimates."""
    return next((kind for kind in kinds if pixel_likelihood(kind)), None)


def needs_autoencoder(kind: str) -> bool:
    """A kind over an autoencoder's latent (its config names the autoencoder)."""
    from invkeras.inverters import inverter_class

    return "autoencoder" in inverter_class(kind).config_class.model_fields


@dataclass(frozen=True)
class Job:
    """One model to train: an inverter of a layer (layer 'none': unconditional), or the autoencoder."""

    kind: str
    layer: str

    @property
    def key(self) -> str:
        return AUTOENCODER if self.kind == AUTOENCODER else f"{self.kind}/{self.layer}"

    @property
    def calibration_key(self) -> str:
        """Jobs that share a calibration: those of one kind."""
        return self.kind

    @property
    def needed_steps(self) -> int:
        quick = quick_training(self.kind)
        if self.layer == UNCONDITIONAL and quick.unconditional_steps:
            return quick.unconditional_steps
        return quick.needed_steps

    @property
    def steps_per_checkpoint(self) -> int:
        return quick_training(self.kind).steps_per_checkpoint


def jobs_for(layers: Sequence[str], kinds: Sequence[str], *, exact_entropy: bool = False) -> list[Job]:
    """The models to train for layers and kinds, in training order: the autoencoder first (cinn
    needs it), then layer by layer, then the unconditional model of the likelihood kind (unless
    the images' entropy is known exactly)."""
    jobs = [Job(AUTOENCODER, "")] if any(needs_autoencoder(kind) for kind in kinds) else []
    for layer in layers:
        jobs += [Job(kind, layer) for kind in kinds]
    reference = likelihood_kind(kinds)
    if reference and not exact_entropy:
        jobs.append(Job(reference, UNCONDITIONAL))
    return jobs


# --- calibration --------------------------------------------------------------------


@dataclass
class Calibration:
    """Seconds measured for one kind (see the module docstring)."""

    step: float
    setup: float
    first_step: float  # the first step's time beyond a step: building the graph
    checkpoint: float  # one validation and state save
    steps: int

    def fixed(self) -> float:
        """Seconds of a model's run outside its steps: setting up, the first step's graph,
        the final evaluation (two held-out splits) and saving."""
        return self.setup + self.first_step + 2 * self.checkpoint

    def per_step(self, steps_per_checkpoint: int) -> float:
        """A step's seconds with its share of the validations."""
        return self.step + self.checkpoint / steps_per_checkpoint

    def scaled(self, factor: float) -> "Calibration":
        """These times on a machine `factor` times as slow (a lane with fewer threads, a busy machine)."""
        return Calibration(self.step * factor, self.setup * factor, self.first_step * factor,
                           self.checkpoint * factor, self.steps)


class CalibrationDone(Exception):
    """Ends a calibration run at its checkpoint, leaving the resume state for the real run."""


class Stopwatch(TrainingHook):
    """Times the loop's first steps and its first checkpoint, then ends the run there."""

    def __init__(self, steps: int):
        self.steps, self.ends, self.begin, self.checkpointed = steps, [], None, None

    def on_train_begin(self, trainee, step):
        super().on_train_begin(trainee, step)
        self.begin = time.monotonic()

    def on_step_end(self, step, logs):
        self.ends.append(time.monotonic())

    def on_checkpoint(self, step, logs):
        self.checkpointed = time.monotonic()
        raise CalibrationDone


def calibrate(train: Callable[[list[TrainingHook]], object], steps: int = CALIBRATION_STEPS) -> Calibration:
    """Run `train(hooks)` (a model's training, whose `max_steps` ends the first interval after
    `steps` more steps) and time it; its resume state is left for the real run."""
    started = time.monotonic()
    watch = Stopwatch(steps)
    try:
        train([watch])
    except CalibrationDone:
        pass
    if watch.begin is None or len(watch.ends) < 2 or watch.checkpointed is None:
        raise InvkerasError("inspect: calibration ended before it could time a step (the model finished training "
                            "on its own); delete the output directory's inverters to calibrate afresh")
    durations = [b - a for a, b in zip([watch.begin, *watch.ends[:-1]], watch.ends)]
    step = statistics.median(durations[1:])
    return Calibration(step=step, setup=watch.begin - started, first_step=max(0.0, durations[0] - step),
                       checkpoint=watch.checkpointed - watch.ends[-1], steps=len(durations))


# --- allocation ---------------------------------------------------------------------


@dataclass
class PlannedJob:
    """A job's share: the steps it is expected to reach and its wall-clock cap on the loop."""

    job: Job
    steps: int
    loop_seconds: float  # the `max_time` of its training loop (this run's part)
    seconds: float  # everything: setting up, loop, final evaluation
    share: float  # of its needed steps

    def row(self) -> dict:
        return {"kind": self.job.kind, "layer": self.job.layer, "steps": self.steps,
                "loop_seconds": self.loop_seconds, "seconds": self.seconds, "share": self.share}


def allocate(jobs: Sequence[Job], calibrations: dict[str, Calibration], seconds: float) -> list[PlannedJob]:
    """Split `seconds` over `jobs` in proportion to their needs (the module docstring's rule).

    Returns each job's planned steps and caps; the share may be below MIN_SHARE (the caller
    decides whether that is enough)."""
    if not jobs:
        return []
    cal = [calibrations[job.calibration_key] for job in jobs]
    pool = seconds - sum(c.fixed() for c in cal)
    needs = [job.needed_steps * c.per_step(job.steps_per_checkpoint) for job, c in zip(jobs, cal)]
    share = max(0.0, pool / sum(needs))
    shares = [share] * len(jobs)
    cheap = [need <= CHEAP_FRACTION * pool for need in needs]
    if share < 1 and any(cheap) and not all(cheap):
        rest = max(0.0, (pool - sum(n for n, c in zip(needs, cheap) if c))
                   / sum(n for n, c in zip(needs, cheap) if not c))
        shares = [1.0 if c else rest for c in cheap]
    planned = []
    for job, c, share in zip(jobs, cal, shares):
        steps = max(1, int(job.needed_steps * share))
        loop = c.first_step + steps * c.per_step(job.steps_per_checkpoint)
        planned.append(PlannedJob(job, steps, loop, c.setup + loop + 2 * c.checkpoint, share))
    return planned


def minimum_seconds(jobs: Sequence[Job], calibrations: dict[str, Calibration], share: float = MIN_SHARE) -> float:
    """The seconds `jobs` need for `share` of their steps."""
    cal = [calibrations[job.calibration_key] for job in jobs]
    return sum(c.fixed() + share * job.needed_steps * c.per_step(job.steps_per_checkpoint)
               for job, c in zip(jobs, cal))


# --- evaluation estimates -----------------------------------------------------------


@dataclass
class EvaluationSizes:
    """How many images the evaluation of one layer samples and compares."""

    image_pixels: int
    grid_images: int  # grid rows x samples
    compare_images: int
    compare_samples: int
    topk_images: int
    train_examples: int
    feature_dims: int


def evaluation_seconds(kinds: Sequence[str], calibrations: dict[str, Calibration], sizes: EvaluationSizes) -> float:
    """A first estimate of one layer's evaluation (sample grids, comparison); the run replaces it
    by what the evaluation of the first layer measured.

    Each sampling kind is loaded twice (grids, comparison) and builds its sampling function
    each time, costed as loading a model and building its training graph; a PixelCNN++ draws one pixel at a time from
    cached activations, measured at a training step per 40 pixels of a batch of 64 images. The
    1NN search is costed at a billion absolute differences a second."""
    total = 0.0
    for kind in kinds:
        c = calibrations.get(kind)
        if c is None:
            continue
        if draws_samples(kind):
            images = sizes.grid_images + sizes.compare_images * sizes.compare_samples + sizes.topk_images
            per_image = c.step * sizes.image_pixels / (40 * 64) if pixel_likelihood(kind) else c.step / 16
            total += 2 * (LOAD_SECONDS + c.first_step) + images * per_image + 2 * c.checkpoint
        else:
            total += 2 * LOAD_SECONDS + c.checkpoint
    total += sizes.compare_images * sizes.train_examples * sizes.feature_dims / 1e9
    return total


# --- lanes and the plan ---------------------------------------------------------------


def assign_lanes(weights: dict[str, float], lanes: int) -> list[list[str]]:
    """Groups (a layer's models, or the unconditional model) onto `lanes` lanes that run side by
    side: the heaviest first, each onto the lane with least work so far; a lane keeps its groups
    in the order they were given (layer order)."""
    order = list(weights)
    loads, members = [0.0] * max(1, lanes), [[] for _ in range(max(1, lanes))]
    for name in sorted(order, key=lambda n: -weights[n]):
        lane = loads.index(min(loads))
        loads[lane] += weights[name]
        members[lane].append(name)
    return [sorted(group, key=order.index) for group in members if group]


@dataclass
class Plan:
    """The plan as printed before training and kept in inspect.json: each lane's models and
    evaluation, run side by side after `spent`, then the report."""

    budget: float
    spent: float  # before training: extraction and calibration (and earlier runs)
    lanes: list[list[str]]  # the groups of each lane
    evaluations: list[float]  # each lane's evaluation estimate
    report: float
    rows: list[PlannedJob]
    notes: list[str] = field(default_factory=list)

    def lane_seconds(self, lane: int) -> float:
        groups = set(self.lanes[lane])
        return sum(r.seconds for r in self.rows if _group(r.job) in groups) + self.evaluations[lane]

    @property
    def total(self) -> float:
        longest = max((self.lane_seconds(i) for i in range(len(self.lanes))), default=0.0)
        return self.spent + longest + self.report

    def lane_of(self, job: Job) -> int:
        return next(i for i, groups in enumerate(self.lanes) if _group(job) in groups)

    def to_json(self) -> dict:
        return {"budget": self.budget, "spent": self.spent, "lanes": self.lanes, "evaluations": self.evaluations,
                "report": self.report, "total": self.total, "rows": [r.row() for r in self.rows],
                "notes": self.notes}


def _group(job: Job) -> str:
    return job.layer


def make_plan(jobs: Sequence[Job], calibrations: dict[str, Calibration], *, budget: float, spent: float,
              lanes: int = 1, evaluation_of: Callable[[Sequence[Job]], float], report: float = REPORT_SECONDS,
              notes: Sequence[str] = (), optional: Sequence[str] = (), flag: str = "--budget") -> Plan:
    """The plan for what is left of `budget` after `spent`, with the jobs' groups (by layer) on
    `lanes` lanes side by side; one line if it cannot train every job.

    `evaluation_of(jobs)` estimates the evaluation of the jobs' layers. Each lane's models share
    the time its evaluation leaves (`allocate`). Kinds in `optional` (auto's pixelcnn) are left
    out when they would get less than AUTO_AFFORDABLE_SHARE of their need."""
    notes = list(notes)
    jobs = [job for job in jobs if job.kind != AUTOENCODER]  # trained before the plan (see run)
    left = budget - spent - report

    def attempt(selected):
        groups: dict[str, list[Job]] = {}
        for job in selected:
            groups.setdefault(_group(job), []).append(job)
        weights = {name: sum(calibrations[j.calibration_key].fixed() + j.needed_steps *
                             calibrations[j.calibration_key].per_step(j.steps_per_checkpoint) for j in members)
                   + evaluation_of(members) for name, members in groups.items()}
        assigned = assign_lanes(weights, lanes)
        rows, evaluations = [], []
        for lane in assigned:
            members = [job for name in lane for job in groups[name]]
            evaluations.append(evaluation_of(members))
            rows += allocate(members, calibrations, left - evaluations[-1])
        return Plan(budget, spent, assigned, evaluations, report, rows, notes)

    plan = attempt(jobs)
    dropped = [job for job in jobs if job.kind in optional]
    if dropped and plan.rows and _least_share(plan.rows) < AUTO_AFFORDABLE_SHARE and len(dropped) < len(jobs):
        kinds = sorted({job.kind for job in dropped})
        notes.append(f"{', '.join(kinds)} left out: the budget would give it {_least_share(plan.rows):.0%} of the "
                     f"steps it needs, less than {AUTO_AFFORDABLE_SHARE:.0%}; name it in --kinds to train it anyway")
        jobs = [job for job in jobs if job.kind not in optional]
        plan = attempt(jobs)
    if plan.rows and _least_share(plan.rows) < MIN_SHARE:
        longest = max(plan.evaluations[i] + minimum_seconds([r.job for r in plan.rows if _group(r.job) in lane],
                                                            calibrations)
                      for i, lane in enumerate(map(set, plan.lanes)))
        needed = spent + report + longest
        raise InvkerasError(f"{flag} {format_duration(budget)}: too small to train anything here: "
                            f"{len(jobs)} models on this machine need at least {format_duration(needed)} "
                            f"({format_duration(spent)} of it spent on extraction and calibration); give "
                            f"{flag} {format_duration(math.ceil(needed / 60) * 60)} or more, or fewer --layers "
                            "or --kinds")
    return plan


def _least_share(rows: Sequence[PlannedJob]) -> float:
    return min(row.share for row in rows)


def plan_table(plan: Plan, calibrations: dict[str, Calibration]):
    """The plan as a rich table: one row per model (with its lane when there are several), then
    the fixed costs and the total."""
    from rich.table import Table

    several = len(plan.lanes) > 1
    table = Table(title=f"Plan for a budget of {format_duration(plan.budget)}"
                        + (f", {len(plan.lanes)} lanes side by side" if several else ""), title_justify="left")
    columns = (["lane"] if several else []) + ["layer", "kind", "steps", "share of need", "step", "expected"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("lane", "layer", "kind") else "right")
    for row in sorted(plan.rows, key=lambda r: plan.lane_of(r.job)):
        c = calibrations[row.job.calibration_key]
        layer = "(images only)" if row.job.layer == UNCONDITIONAL else row.job.layer
        cells = [layer, row.job.kind, f"{row.steps:,}", f"{row.share:.0%}", f"{1000 * c.step:.0f} ms",
                 format_duration(row.seconds)]
        table.add_row(*([str(plan.lane_of(row.job) + 1)] if several else []), *cells)
    table.add_section()
    pad = [""] * (len(columns) - 2)
    evaluation = " + ".join(format_duration(e) for e in plan.evaluations) or "0s"
    table.add_row("extraction, calibration", *pad, format_duration(plan.spent))
    table.add_row("samples, comparisons" + (" (per lane)" if several else ""), *pad, evaluation)
    table.add_row("information, report", *pad, format_duration(plan.report))
    table.add_row("total", *pad, f"{format_duration(plan.total)} of {format_duration(plan.budget)}")
    return table


def calibration_json(calibrations: dict[str, Calibration]) -> dict:
    return {key: asdict(c) for key, c in calibrations.items()}


def calibrations_from_json(payload: dict) -> dict[str, Calibration]:
    return {key: Calibration(**values) for key, values in (payload or {}).items()}

