"""Running a recipe: each step in order, skipping those whose outputs are complete.

A step whose outputs (artefact plus metadata) all exist is skipped on a rerun, and long
steps resume from their own checkpoints, so `invkeras run` can simply be run again after a
kill. A step that ran records its settings (`step_settings_record`); when the recipe's settings
for it have changed since (more steps, other kinds to compare), it runs again, and its command
decides what that means: a longer training resumes, another trajectory is refused in one line,
an analysis is redone. The record also names the run of each step it read from, so a step
runs again once one of those has run again (a retrained inverter's samples are
redrawn, never left beside the new model). Outputs with no record (written before records were
kept) count as finished. What a step runs, what it writes and what it reads are its command's
(`invkeras.commands`); `train-inverter` runs whatever kind the step names.

Steps also form a graph (`step_dependencies`), which lets `invkeras.recipes.executors` run
the ones that do not depend on each other at the same time. The rule is the one a build
tool uses for files: each step declares the paths it reads and writes (`step_access`), and
a step waits for every earlier step that writes something it reads or writes, or reads
something it writes. Run in an order the graph allows, a recipe therefore sees on disk
exactly what it would have seen run top to bottom.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from invkeras import artifacts
from invkeras.commands.base import StepAccess, command_class  # noqa: F401  (StepAccess: part of this API)
from invkeras.errors import InvkerasError
from invkeras.recipes.schema import Recipe

RECORD_KIND = "recipe-run"  # the metadata kind of a run's record


@dataclass
class StepResult:
    name: str
    command: str
    status: str  # "ran" or "skipped"; with an executor also "failed" or "not run"
    seconds: float
    summary: str
    outputs: list[str]
    started: float = 0.0  # time.time() when the step started (0 when skipped)
    log: str = ""  # the step's own log file, when an executor ran it in a worker


def step_outputs(step: BaseModel) -> list[Path]:
    """The artefacts whose completeness means the step is done."""
    return command_class(step.command).outputs(step)


def step_access(step: BaseModel) -> StepAccess:
    """What a step reads and writes, as its command declares (see `step_dependencies`)."""
    return command_class(step.command).access(step)


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _touches(paths: list[Path] | None, others: list[Path] | None) -> bool:
    if paths is None or others is None:
        return True  # an unknown step: ordered against everything
    return any(_overlap(a, b) for a in paths for b in others)


def _whole_on_disk(split_dir: Path) -> bool:
    """Features extracted without a limit, complete: an inverter reuses them as they are."""
    from invkeras.data.features import MANIFEST

    try:
        return artifacts.is_complete(split_dir / MANIFEST) and \
            artifacts.read_metadata(split_dir / MANIFEST)["config"]["limit"] is None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def step_dependencies(recipe: Recipe) -> dict[str, list[str]]:
    """For each step, the earlier steps it must wait for (directly; they wait for the rest).

    Step B waits for an earlier step A when A writes a path that B reads or writes, or reads
    a path that B writes (paths overlap when equal or one holds the other). Together with the
    recipe's order this keeps every file read after it is written, and no two steps writing
    the same place at once, so any order the graph allows has the effect of running the
    recipe top to bottom. A step of a command without declared paths waits for every earlier
    step, and every later step waits for it.

    An inverter without `features` extracts its layer's features itself unless they hold
    every example of each split; that counts as a write unless an earlier step extracts them
    whole (an `extract` step without `limit`, or another inverter) or they are whole on disk
    already (otherwise two inverters of one layer could never train together).
    """
    access = {}
    whole: list[Path] = []
    for name, step in recipe.steps.items():
        a = step_access(step)
        a.reads = None if a.reads is None else [p.resolve() for p in a.reads]
        a.writes = [p.resolve() for p in a.writes]
        for path in a.writes_if_missing:
            if not _touches([path.resolve()], whole) and not _whole_on_disk(path):
                a.writes.append(path.resolve())
        whole += [p.resolve() for p in a.whole_features]
        access[name] = a
    names = list(access)
    waits: dict[str, list[str]] = {}
    before: dict[str, set[str]] = {}  # every step a step waits for, directly or not
    for i, name in enumerate(names):
        b = access[name]
        waits[name] = [earlier for earlier in names[:i]
                       if _touches(access[earlier].writes, b.reads) or _touches(access[earlier].writes, b.writes)
                       or _touches(access[earlier].reads, b.writes)]
        before[name] = set(waits[name]).union(*(before[w] for w in waits[name]))
    # Keep the direct waits only: a step reached through another one adds nothing to the order.
    return {name: [w for w in ws if not any(w in before[other] for other in ws)] for name, ws in waits.items()}


def step_settings_record(recipe: Recipe, name: str) -> Path:
    """`<workspace>/recipes/<name>.steps/<step>.json`: the settings a step last ran with."""
    return Path(recipe.workspace) / "recipes" / f"{recipe.name}.steps" / f"{name}.json"


def _settings(recipe: Recipe, name: str) -> Any:
    """Step `name`'s settings as JSON, with paths inside the workspace written relative to it:
    a workspace moved or copied elsewhere keeps its records."""
    workspace = str(recipe.workspace).rstrip("/")

    def relative(value):
        if isinstance(value, str) and (value == workspace or value.startswith(workspace + "/")):
            return "<workspace>" + value[len(workspace):]
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        return value

    return relative(json.loads(recipe.steps[name].model_dump_json()))


def _read_record(recipe: Recipe, name: str) -> dict | None:
    try:
        record = json.loads(step_settings_record(recipe, name).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _run_mark(recipe: Recipe, name: str) -> str | None:
    """Which run of step `name` wrote its outputs: a mark drawn afresh each time it runs (None
    for outputs whose record predates the marks, or that have no record)."""
    record = _read_record(recipe, name) or {}
    mark = record.get("run")
    return mark if isinstance(mark, str) else None


def record_step_settings(recipe: Recipe, name: str, waits: list[str]) -> None:
    """After step `name` ran to the end: remember what it ran with, a fresh mark for this run,
    and the marks of the steps it waits for (`step_dependencies`), as they were when it read them."""
    artifacts.write_json_atomic(step_settings_record(recipe, name), {
        "settings": _settings(recipe, name),
        "run": uuid.uuid4().hex,
        "after": {dependency: _run_mark(recipe, dependency) for dependency in waits},
    })


def step_finished(recipe: Recipe, name: str, outputs: list, waits: list[str]) -> bool:
    """Whether step `name` can be skipped: all its outputs complete, written under the settings
    the recipe gives it now (or with no record saying otherwise), and after the runs of the steps
    it waits for (`waits`) whose outputs are on disk now.

    Only direct dependencies are compared: a step whose dependency ran again runs again itself,
    with a fresh mark, so a change travels down the whole chain."""
    if not all(artifacts.is_complete(p) for p in outputs):
        return False
    record = _read_record(recipe, name)
    if record is None or "settings" not in record:
        return True  # no readable record: the outputs' completeness decides, as it always did
    after = record.get("after")
    if isinstance(after, dict) and any(after.get(w) != _run_mark(recipe, w) for w in waits):
        return False  # something it read was written again since
    recorded, now = record["settings"], _settings(recipe, name)
    if not isinstance(recorded, dict) or not isinstance(now, dict):
        return recorded == now
    # A setting the record lacks was added to invkeras after the step ran: left at its default,
    # it asks for what the step did, so an upgrade does not redo finished work.
    defaults = _json_defaults(recipe.steps[name])
    added = [key for key in now if key not in recorded]
    return (all(key in defaults and now[key] == defaults[key] for key in added)
            and {key: value for key, value in now.items() if key in recorded} == recorded)


def _json_defaults(step: BaseModel) -> dict:
    """Each of a step's settings that has a default, as that default reads in JSON."""
    defaults = {}
    for key, field in type(step).model_fields.items():
        if not field.is_required():
            defaults[key] = json.loads(json.dumps(field.get_default(call_default_factory=True), default=str))
    return defaults


def run_record(recipe: Recipe) -> Path:
    """`<workspace>/recipes/<name>.json`: what a run of the recipe did, step by step."""
    return Path(recipe.workspace) / "recipes" / f"{recipe.name}.json"


def _is_run_record(path: Path, meta: Path) -> bool:
    """Whether `meta` says `path` is the record of a recipe run (so a rerun may replace it)."""
    try:
        return path.is_file() and json.loads(meta.read_text()).get("kind") == RECORD_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_run_record(recipe: Recipe, source: str | Path = "") -> None:
    """Refuse, before any step runs, a run whose record would be written over a file that is not
    an earlier record of a recipe run: above all the recipe being run, when it is kept as
    `<workspace>/recipes/<name>.json`, but also any other file a user put there.

    The record stays where it always is, so that scripts and the report find it; the user keeps
    the recipe elsewhere or gives it another `name`, and nothing is lost either way."""
    record = run_record(recipe)
    meta = artifacts.metadata_path(record)
    for path in (record, meta):
        if not os.path.lexists(path):
            continue
        if source and Path(source).exists() and path.exists() and path.samefile(source):
            raise InvkerasError(f"recipe {source}: the run's record {path} would be written over this recipe; "
                                f"keep recipes outside {record.parent}, or give the recipe another name")
        if not _is_run_record(record, meta):
            raise InvkerasError(f"recipe {source or recipe.name}: the run's record {record} would replace {path}, "
                                "which is not the record of an earlier run; move that file, or give the recipe "
                                "another name")


def plan_recipe(recipe: Recipe, *, source: str | Path = "") -> None:
    """Work out every step's outputs and what it reads and writes, and where the run's record
    goes, without running anything: a name that cannot become a path, or a record that would
    replace a file that is not one, is refused here, in one line naming the step or file."""
    check_run_record(recipe, source)
    for name, step in recipe.steps.items():
        try:
            step_outputs(step)
            step_access(step)
        except InvkerasError as exc:
            raise type(exc)(f"recipe {source or recipe.name}: step '{name}': {exc}") from None


def run_recipe(
    recipe: Recipe,
    *,
    source: str | Path = "",
    on_step: Callable[[str, BaseModel], None] | None = None,
    executor: Any = None,
) -> list[StepResult]:
    """Run each step in order, skipping the ones whose outputs are complete.

    With an `executor` (`invkeras.recipes.executors`), steps run in worker processes or on a
    Ray cluster instead, as many at once as the graph and the executor allow; the skip rule is
    the same, and `on_step` is not called (the executor reports its own progress).

    Every step's paths are worked out before the first step runs, so a recipe whose names
    would put a path outside the workspace (a layer of '../x') is refused before it writes.
    """
    plan_recipe(recipe, source=source)
    if executor is not None:
        results = executor.run(recipe, source=source)
    else:
        results = []
        waits = step_dependencies(recipe)
        for name, step in recipe.steps.items():
            outputs = step_outputs(step)
            if step_finished(recipe, name, outputs, waits[name]):
                results.append(StepResult(name, step.command, "skipped", 0.0, "outputs complete",
                                          [str(p) for p in outputs]))
                continue
            if on_step is not None:
                on_step(name, step)
            started = time.time()
            try:
                summary = command_class(step.command).run(step)
            except InvkerasError as exc:
                raise type(exc)(f"recipe {source or recipe.name}: step '{name}': {exc}") from exc
            record_step_settings(recipe, name, waits[name])
            results.append(StepResult(name, step.command, "ran", time.time() - started, summary,
                                      [str(p) for p in outputs], started=started))
    record = run_record(recipe)
    artifacts.write_json_atomic(record, {"recipe": recipe, "source": str(source), "steps": [r.__dict__ for r in results]})
    artifacts.write_metadata(record, kind=RECORD_KIND, config=recipe, seed=recipe.seed, data=recipe.dataset)
    return results
