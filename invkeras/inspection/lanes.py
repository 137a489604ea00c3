"""Lanes: an inspection's layers trained and evaluated side by side, one worker process per lane.

The models of one layer (and the unconditional model, alone) form a *group*; the plan puts
the groups on lanes (`plan.assign_lanes`), as many as the machine has cores for. A lane
works through its groups in layer order: it trains each model under a wall-clock cap, then
draws the layer's sample grids and compares its kinds, so a slow evaluation shortens what
follows it in that lane. Every lane has the same deadline.

The small models inspect trains keep about one core busy each (a PixelCNN++ step on two
TensorFlow threads ran at 96-120% CPU), so on two cores two lanes train about twice the
steps of one. Each lane is a fresh Python process with the machine's cores divided among the
lanes as TensorFlow threads; it writes its log to `<out>/logs/lane-<n>.log`, which the
parent shows a line of, and its results to a JSON file beside it. A lane process dies with
the parent (`invkeras.workers`), so no orphan keeps training behind a rerun. A single
lane runs in the calling process.

Caps follow the plan's rule (`plan.allocate`), recomputed before each model from the time
its lane has left, at the speed the lane is measured to run: a lane's steps are slower than
the calibration's when it has fewer threads or the machine is busy. While a model trains, a
`LaneDeadline` hook watches that speed and ends it early when what the lane must still do
after it (the later models' fixed costs and least steps, the evaluations) would no longer
fit before the deadline. A model that cannot have a tenth of its need still gets that tenth.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.inspection import plan as planning
from invkeras.inspection.config import format_duration
from invkeras.inspection.workspace import (COMPARISON, RECONSTRUCTION_GRID, SAMPLE_GRID, Workspace, compare_config,
                                           evaluation_sizes, layer_evaluated, made_with, sample_config, shown_kinds)
from invkeras.training import TrainingHook
from invkeras.workers import available_cores, exit_with_parent, last_line, start_worker, stop_worker, thread_environment

POLL_SECONDS = 1.0
LOG_DIR = "logs"


# --- one lane ------------------------------------------------------------------------------


def _finished_facts(workspace: Workspace, job: planning.Job) -> dict:
    meta = artifacts.read_metadata(workspace.model_file(job)) or {}
    results = meta.get("results") or {}
    return {"steps": int(results.get("steps") or 0), "seconds": float(results.get("seconds") or 0.0)}


class LaneDeadline(TrainingHook):
    """Ends a model's training once what its lane must still do after it, `after(slowdown)`
    seconds at the lane's measured speed, would no longer fit before `deadline` (epoch seconds).
    `slowdown` is the median of the recent steps over the calibrated step time."""

    def __init__(self, deadline: float, calibrated_step: float, after: Callable[[float], float]):
        self.deadline, self.calibrated_step, self.after = deadline, calibrated_step, after
        self.ends: list[float] = []

    def on_step_end(self, step, logs):
        self.ends.append(time.monotonic())

    @property
    def slowdown(self) -> float | None:
        if len(self.ends) < 6 or self.calibrated_step <= 0:
            return None  # the first steps build the graph: not yet a measure of speed
        recent = self.ends[-21:]
        return statistics.median(b - a for a, b in zip(recent, recent[1:])) / self.calibrated_step

    def should_stop(self, step: int) -> bool:
        slowdown = self.slowdown
        return slowdown is not None and time.time() + self.after(slowdown) >= self.deadline


class Deadline(TrainingHook):
    """Ends training at a wall-clock time (epoch seconds): the cap of a config that has none."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def should_stop(self, step: int) -> bool:
        return time.time() >= self.deadline


def train_for(workspace: Workspace, job: planning.Job, steps: int, loop_seconds: float, hooks=()) -> dict:
    """Train `job` for about `steps` more steps under a cap of `loop_seconds` more seconds."""
    progress = workspace.progress(job)
    done, used = int(progress.get("step", 0)), float(progress.get("seconds", 0.0))
    # The cap ends it; the step limit is far enough not to, should the machine run faster than measured.
    schedule = {"max_steps": done + 3 * max(1, steps) + 100}
    if job.kind == planning.AUTOENCODER:  # its config has no time cap: a hook ends it as one would
        hooks = [*hooks, Deadline(time.time() + loop_seconds)]
    else:
        schedule["max_time"] = max(1.0, used + loop_seconds)
    config = workspace.job_config(job, **schedule)
    started = time.monotonic()
    result = workspace.train(job, config, hooks=hooks)
    return {"steps": int(result.steps), "seconds": time.monotonic() - started, "planned_steps": done + steps,
            "planned_seconds": loop_seconds, "stopped_early": bool(getattr(result, "stopped_early", False)),
            "max_time": schedule.get("max_time", loop_seconds), "max_steps": config.max_steps}


def evaluate_layer(workspace: Workspace, layer: str, kinds: Sequence[str]) -> None:
    """Sample grids of each kind, the samples beside the MSE reconstruction, and the comparison."""
    from invkeras.analyses.compare import compare_inverters
    from invkeras.analyses.samples import draw_inversions, save_samples_with_reconstruction
    from invkeras.inverters import load_inverter

    shown, beside = shown_kinds(kinds)
    for kind in shown:
        settings = sample_config(workspace, kind, layer)
        grid = workspace.inverter_dir(kind, layer) / SAMPLE_GRID
        reconstruction = workspace.inverter_dir(kind, layer) / RECONSTRUCTION_GRID
        with_point = beside is not None and kind == beside[0]
        if made_with(grid, settings) and (not with_point or made_with(reconstruction, settings)):
            continue
        inverter = load_inverter(settings.inverter)
        if not made_with(grid, settings):
            draw_inversions(settings, inverter=inverter)
        if with_point:
            save_samples_with_reconstruction(settings, str(workspace.inverter_dir(beside[1], layer)), inverter=inverter)
    if workspace.subject.classifier is None:
        return  # user features: no classifier to read the samples' features with
    settings = compare_config(workspace, kinds, layer)
    if not made_with(Path(settings.out) / COMPARISON, settings):
        compare_inverters(settings)


def run_lane(workspace: Workspace, groups: Sequence[str], jobs: Sequence[planning.Job], kinds: Sequence[str],
             calibrations: dict[str, planning.Calibration], deadline: float, *, name: str = "inspect",
             console=None, record=None) -> dict:
    """Train and evaluate `groups` (layers, or 'none' for the unconditional model) by `deadline`
    (seconds since the epoch); return what each model reached and how long each evaluation took.
    `record(result)` is called with the result so far after each model and each evaluation."""
    from rich.console import Console

    console = console or Console(stderr=True)
    sizes = evaluation_sizes(workspace.config, workspace.subject)
    mine = [job for job in jobs if job.layer in groups]
    layers = [group for group in groups if group != planning.UNCONDITIONAL]
    evaluated = {layer for layer in layers if layer_evaluated(workspace, layer, kinds)}
    per_layer = planning.evaluation_seconds(kinds, calibrations, sizes)
    # Each kind's step time in this lane over the calibration's, measured as it trains (a lane
    # has fewer threads, the machine may be busy); and, once a layer has been evaluated, the
    # evaluations' time over their estimate.
    speeds: dict[str, float] = {}
    evaluation_factor = None
    trained, evaluations = {}, {}
    result = {"trained": trained, "evaluations": evaluations}
    record = record or (lambda _: None)

    def sampling_speed(also: float = 0.0) -> float:
        known = [speed for key, speed in speeds.items() if planning.draws_samples(key)]
        return max([also, *known]) if (known or also) else 1.0

    def evaluation_left(speed: float) -> float:
        return per_layer * (evaluation_factor or speed) * sum(layer not in evaluated for layer in layers)

    def scaled(overrides: dict | None = None) -> dict[str, planning.Calibration]:
        factors = {**speeds, **(overrides or {})}
        return {key: c.scaled(factors.get(key, 1.0)) for key, c in calibrations.items()}

    def after(job: planning.Job, later: Sequence[planning.Job]) -> Callable[[float], float]:
        """Seconds the lane needs after `job`, given its kind's measured speed: its final
        evaluation, the later models' fixed costs and least steps, the evaluations left."""
        def seconds(speed: float) -> float:
            cal = scaled({job.calibration_key: speed})
            models = 2 * cal[job.calibration_key].checkpoint + sum(
                cal[j.calibration_key].fixed() + planning.MIN_SHARE * j.needed_steps
                * cal[j.calibration_key].per_step(j.steps_per_checkpoint) for j in later)
            sampling = speed if planning.draws_samples(job.kind) else 0.0
            return models + evaluation_left(sampling_speed(sampling))
        return seconds

    def say(text: str) -> None:
        left = max(0.0, deadline - time.time())
        console.print(f"[bold]{name}[/bold] {text}  [dim]({format_duration(left)} left in this lane)[/dim]",
                      highlight=False)

    def need(job: planning.Job) -> float:
        cal = calibrations[job.calibration_key]
        return cal.fixed() + job.needed_steps * cal.per_step(job.steps_per_checkpoint)

    for group in groups:
        # The cheapest first (an MSE decoder before a PixelCNN++): the last model of a lane is
        # the one that gives way when the lane runs slow, and it should be the one with most steps.
        for job in sorted((job for job in mine if job.layer == group), key=need):
            if workspace.finished(job):
                say(f"{job.kind} {job.layer}: trained already")
                trained[job.key] = _finished_facts(workspace, job)
                continue
            remaining = [j for j in mine if not workspace.finished(j)]
            now = scaled()
            rows = planning.allocate(remaining, now, deadline - time.time() - evaluation_left(sampling_speed()))
            row = next(r for r in rows if r.job.key == job.key)
            cal = now[job.calibration_key]
            steps = max(row.steps, int(planning.MIN_SHARE * job.needed_steps))
            loop = max(row.loop_seconds, cal.first_step + steps * cal.per_step(job.steps_per_checkpoint))
            what = "(images only)" if job.layer == planning.UNCONDITIONAL else job.layer
            say(f"train {job.kind} {what}: about {steps:,} steps in {format_duration(loop)}")
            later = [j for j in remaining if j.key != job.key]
            watch = LaneDeadline(deadline, calibrations[job.calibration_key].step, after(job, later))
            trained[job.key] = {**train_for(workspace, job, steps, loop, hooks=[watch]), "share": row.share}
            speeds[job.calibration_key] = max(0.5, watch.slowdown or speeds.get(job.calibration_key, 1.0))
            record(result)
        if group in layers and group not in evaluated:
            say(f"samples and comparison of layer {group}")
            started = time.monotonic()
            evaluate_layer(workspace, group, kinds)
            seconds = time.monotonic() - started
            evaluations[group] = {"seconds": seconds, "estimated": per_layer * (evaluation_factor or sampling_speed())}
            evaluated.add(group)
            if per_layer > 0:
                evaluation_factor = max(0.5, seconds / per_layer)
            record(result)
    return result


# --- lanes side by side ----------------------------------------------------------------------


def lane_main(parent: int, payload_path: str) -> int:
    """A lane process (started by `invkeras.workers.start_worker` from process `parent`): run
    the lane of `payload_path`, write its result beside it, exit 0 (2 for bad input, 1 for
    anything else, whose traceback goes to the log)."""
    import traceback

    from rich.console import Console

    exit_with_parent(parent)
    payload = json.loads(Path(payload_path).read_text())
    os.chdir(payload["cwd"])
    result_path = Path(payload["result"])
    try:
        result = run_lane(Workspace.from_json(payload["workspace"]), payload["groups"],
                          [planning.Job(kind, layer) for kind, layer in payload["jobs"]], payload["kinds"],
                          planning.calibrations_from_json(payload["calibrations"]), payload["deadline"],
                          name=payload["name"], console=Console(force_terminal=False, width=120))
    except InvkerasError as exc:
        artifacts.write_json_atomic(result_path, {"error": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    except Exception as exc:  # a bug: the traceback is in the lane's log
        traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        artifacts.write_json_atomic(result_path, {"error": f"{type(exc).__name__}: {first}", "exit_code": 1})
        return 1
    artifacts.write_json_atomic(result_path, result)
    return 0


def run_lanes(workspace: Workspace, lanes: Sequence[Sequence[str]], jobs: Sequence[planning.Job],
              kinds: Sequence[str], calibrations: dict[str, planning.Calibration], deadline: float,
              console, record=None) -> dict:
    """Run each lane by `deadline`: in this process when there is one (`record` as in
    `run_lane`), else side by side in worker processes with a progress line each. Returns the
    lanes' results merged."""
    if len(lanes) == 1:
        return run_lane(workspace, lanes[0], jobs, kinds, calibrations, deadline, console=console, record=record)
    from invkeras.progress import progress_bar

    threads = max(1, available_cores() // len(lanes))
    logs = workspace.out / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    running = []
    try:
        for index, groups in enumerate(lanes):
            name = f"lane {index + 1}"
            log, payload_path = logs / f"lane-{index + 1}.log", logs / f"lane-{index + 1}.json"
            result_path = logs / f"lane-{index + 1}.result.json"
            result_path.unlink(missing_ok=True)
            payload = {"workspace": workspace.to_json(), "groups": list(groups), "kinds": list(kinds),
                       "jobs": [[job.kind, job.layer] for job in jobs if job.layer in groups],
                       "calibrations": planning.calibration_json(calibrations), "deadline": deadline,
                       "name": name, "cwd": os.getcwd(), "result": str(result_path)}
            artifacts.write_json_atomic(payload_path, payload)
            process = start_worker("invkeras.inspection.lanes:lane_main", payload_path, log=log,
                                   env=thread_environment(threads),
                                   banner=f"{name}: {', '.join(groups)}; {threads} TensorFlow thread(s)")
            running.append((name, groups, process, log, result_path))
            shown = ", ".join("(images only)" if g == planning.UNCONDITIONAL else g for g in groups)
            console.print(f"  {name}: {shown}  (log: {log})", highlight=False)
        with progress_bar(console) as bar:
            total = max(1.0, deadline - time.time())
            overall = bar.add_task("lanes, to their deadline", total=total)
            tasks = {name: bar.add_task(f"  {name}", total=None, info="") for name, *_ in running}
            while any(process.poll() is None for _, _, process, _, _ in running):
                time.sleep(POLL_SECONDS)
                bar.update(overall, completed=min(total, total - (deadline - time.time())))
                for name, _, process, log, _ in running:
                    bar.update(tasks[name], info="done" if process.poll() is not None else last_line(log, width=90))
            bar.update(overall, completed=total)
    except BaseException:
        for _, _, process, _, _ in running:  # Ctrl-C or a bug: the lanes go down with us
            stop_worker(process)
        raise
    merged: dict = {"trained": {}, "evaluations": {}}
    for name, _, process, log, result_path in running:
        result = json.loads(result_path.read_text()) if result_path.is_file() else {
            "error": f"the lane process ended without a result (exit code {process.returncode})", "exit_code": 1}
        if "error" in result:
            error = InvkerasError(f"inspect {name}: {result['error']} (log: {log})")
            error.exit_code = int(result.get("exit_code") or 1)
            raise error
        for key in merged:
            merged[key].update(result.get(key) or {})
    return merged
