"""YAML recipes: a named sequence of invkeras steps, validated, overridable and resumable.

    name: quickstart
    dataset: procedural          # defaults shared by every step that has these fields
    seed: 0
    workspace: runs
    steps:
      classifier:                # step name (address it with --set steps.classifier.epochs=2)
        command: train-classifier
        arch: conv
        epochs: 3
      features:
        command: extract
        layers: [conv1, fc3]

Each step's keys are exactly the options of its command's config (extra keys are errors).
A `train-inverter` step takes the options of its `kind` (default pixelcnn), whatever kinds
are registered: the schema is looked up in the inverter registry when the recipe is read.

A step refers to what another, earlier step made by that step's name, never by a path:

      autoencoder:
        command: train-autoencoder
        classifier: {step: classifier}     # the classifier step's model file
      cinn_fc3:
        command: train-inverter
        kind: cinn
        autoencoder: {step: autoencoder}

A `train-inverter` step with `seeds: N` (or every such step, with `defaults.train-inverter.seeds`)
stands for N runs that differ only in their `training_seed` (seed, seed + 1, ...: initial
weights and batch order; the data stay those of the step's `seed`): the step NAME trains the
first in the usual directory, steps
NAME-seed<s> the others beside it (inverters/<kind>/<layer>-seed<s>). `estimate-mi` and
`compare` steps of that layer read every seed and report the spread between them.

Paths derive from the workspace, the dataset and the step, so `--set dataset=X` (with
`--set scale=small`) is all that changes to run a recipe on other data.

Two sections keep long recipes short and give each one a cheap variant:

    defaults:                    # per command; a step's own keys win
      train-inverter: {learning_rate: 0.001, max_steps: 100000}
    variants:                    # applied when the recipe's scale is `small`
      small:                     # (e.g. `--set scale=small`); dotted keys, like --set
        dataset: npz:my_digits.npz
        defaults.train-inverter.max_steps: 500
        steps.inverter_unconditional: null     # null drops a step

The user's own --set keys are applied last, so they win over a variant (a step the user
drops stays dropped, whatever the variant sets on it). Every path a recipe writes stays
inside its workspace unless the user allows otherwise on the command line.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError

# Keys a recipe sets once at the top and every step inherits unless it sets its own.
SHARED_KEYS = ("dataset", "data_dir", "seed", "workspace", "arch", "scale")
# Keys a step of the command may carry (and its `defaults` too) that are the recipe's, not an option.
RECIPE_ONLY_KEYS = {"train-inverter": ("seeds",)}


def step_model(raw: dict) -> type[BaseModel]:
    """The schema of a raw step: by its command (and for `train-inverter`, by its kind), as
    the command registry (`invkeras.commands`) defines it."""
    from invkeras.commands import recipe_commands

    command = raw.get("command")
    if command is None:
        raise ValueError("step needs a 'command' key")
    commands = recipe_commands()
    if command not in commands:
        raise ValueError(f"unknown command {command!r}; choose from {', '.join(commands)}")
    return commands[command].schema_for(raw)


def _default_takers(command: str) -> list[type[BaseModel]]:
    """The schemas a `defaults.<command>` entry may fill: every kind's for train-inverter."""
    from invkeras.commands import recipe_commands

    commands = recipe_commands()
    return commands[command].default_schemas() if command in commands else []


# --- the recipe ---------------------------------------------------------------------


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    dataset: str = "procedural"
    data_dir: Optional[str] = None
    seed: int = 0
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    arch: Optional[str] = None
    scale: Optional[Literal["tiny", "small", "paper"]] = None
    defaults: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-command step defaults")
    variants: dict[Literal["tiny", "small", "paper"], dict[str, Any]] = Field(
        default_factory=dict, description="dotted-key overrides applied when `scale` is the variant's name")
    steps: dict[str, SerializeAsAny[BaseModel]] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # The name becomes a file name under <workspace>/recipes/: never a path.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
            raise ValueError(f"{name!r} must be a plain name (letters, digits, '_', '.', '-'), not a path")
        return name

    @model_validator(mode="before")
    @classmethod
    def _build_steps(cls, raw: Any) -> Any:
        """Fill each step's unset keys from `defaults` for its command, else the top level, then
        validate it against its own schema. A key is copied only into steps whose schema has it
        (so `train-inverter` defaults such as lr_decay skip `kind: mse` steps)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), dict):
            return raw
        raw = dict(raw)
        defaults = raw.get("defaults") or {}
        if isinstance(defaults, dict):
            _check_defaults(defaults)
        steps, problems = {}, []
        seeded: dict[Path, list[int]] = {}  # the first seed's directory -> every seed, of steps with `seeds`
        for name, step in raw["steps"].items():
            if step is None:
                continue  # dropped by a variant or --set steps.NAME=null
            if not isinstance(step, dict):
                problems.append(f"steps.{name}: expected a mapping of step keys")
                continue
            step = dict(step)
            try:
                model = step_model(step)
            except ValueError as exc:
                problems.append(f"steps.{name}: {exc}" if not str(exc).startswith("kind:") else f"steps.{name}.{exc}")
                continue
            # The more specific source wins: the step, then its command's defaults, then the top level.
            own = getattr(model, "own_keys", ())  # same name as a shared key, another meaning
            inherited = {k: raw[k] for k in SHARED_KEYS if raw.get(k) is not None and k not in own}
            inherited.update(dict(defaults.get(step.get("command")) or {}) if isinstance(defaults, dict) else {})
            for key, value in inherited.items():
                if (key in model.model_fields or key in RECIPE_ONLY_KEYS.get(step.get("command"), ())) \
                        and key not in step:
                    step[key] = value
            try:
                step = _resolve_references(name, step, steps)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            try:
                if "seeds" in step and step.get("command") == "train-inverter":
                    steps.update(_expand_seeds(name, step, model, seeded))
                    continue
                built = model.model_validate(step)
                if seeded and hasattr(built, "pick_up_seeds"):
                    built = built.pick_up_seeds(seeded)
                steps[name] = built
            except ValidationError as exc:
                problems.append(describe_validation_error(exc, prefix=f"steps.{name}"))
            except ValueError as exc:
                problems.append(f"steps.{name}.seeds: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        raw["steps"] = steps
        return raw


def _expand_seeds(name: str, step: dict, model: type[BaseModel], seeded: dict[Path, list[int]]) -> dict[str, BaseModel]:
    """A train-inverter step with `seeds: N` as N steps differing only in `training_seed` (and so
    in their directory): NAME keeps the first seed and the usual directory, NAME-seed<s> the
    others. `seed`, which also picks the data, stays the step's own: every run trains on the
    same pairs."""
    from invkeras.analyses.seeds import seed_list, seeded_dir

    step = dict(step)
    count = step.pop("seeds")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"expected a whole number of runs, at least 1 (got {count!r})")
    first = model.model_validate(step)
    expanded = {name: first}
    if count == 1:
        return expanded
    seeds = seed_list(first.run_seed, count)
    for seed in seeds[1:]:
        expanded[f"{name}-seed{seed}"] = model.model_validate(
            {**step, "training_seed": seed, "out": str(seeded_dir(first.out_dir(), seed, first.run_seed))})
    seeded[first.out_dir().resolve()] = seeds
    return expanded


def is_reference(value: Any) -> bool:
    """A value `{step: NAME}` (with the command's selectors, e.g. `checkpoint: 100` for a
    classifier's checkpoint): the product of another step of the recipe."""
    return isinstance(value, dict) and isinstance(value.get("step"), str)


def _resolve_references(name: str, step: dict, built: dict[str, BaseModel]) -> dict:
    """Replace each `{step: NAME}` value by the path of that earlier step's product (its
    command's `product`: a trained model's file), so no recipe names a dataset's folder."""
    from invkeras.commands import command_class

    resolved = dict(step)
    for key, value in step.items():
        if not is_reference(value):
            continue
        target = value["step"]
        if target not in built:
            raise ValueError(f"steps.{name}.{key}: {{step: {target}}} names no earlier step of this recipe "
                             f"(earlier steps: {', '.join(built) or 'none'})")
        selectors = {k: v for k, v in value.items() if k != "step"}
        try:
            resolved[key] = str(command_class(built[target].command).product(built[target], **selectors))
        except TypeError:
            raise ValueError(f"steps.{name}.{key}: {{step: {target}}} takes no "
                             f"{', '.join(selectors)} (a {built[target].command} step)") from None
        except ValueError as exc:
            raise ValueError(f"steps.{name}.{key}: {exc}") from None
    return resolved


def _check_defaults(defaults: dict) -> None:
    """A default nobody can take is a typo: name it rather than silently ignore it."""
    for command, values in defaults.items():
        models = _default_takers(command)
        if not models:
            from invkeras.commands import recipe_commands

            raise ValueError(f"defaults.{command}: unknown command; choose from {', '.join(recipe_commands())}")
        if not isinstance(values, dict):
            raise ValueError(f"defaults.{command}: expected a mapping of step keys")
        for key in values:
            if key in RECIPE_ONLY_KEYS.get(command, ()):
                continue
            if key == "command" or not any(key in m.model_fields for m in models):
                raise ValueError(f"defaults.{command}.{key}: not an option of {command}")


def check_inside_workspace(recipe: Recipe) -> None:
    """Refuse a recipe whose steps would write outside its workspace (a step's `out` or
    `workspace`); `invkeras run --allow-outside-workspace` skips this check."""
    root = Path(recipe.workspace).resolve()
    for name, step in recipe.steps.items():
        for key in ("workspace", "out"):
            value = getattr(step, key, None)
            if value is None or (key == "out" and callable(value)):
                continue
            target = Path(value).resolve()
            if target != root and root not in target.parents:
                raise InvkerasError(f"steps.{name}.{key}: {value} is outside the recipe's workspace {recipe.workspace}; "
                                    "pass --allow-outside-workspace to write there anyway")


# --- loading ------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """'steps.classifier.epochs=3' -> (['steps','classifier','epochs'], 3); values are YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvkerasError(f"--set {text!r}: expected KEY=VALUE, e.g. --set steps.classifier.epochs=3")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvkerasError(f"--set {text!r}: the value is not valid YAML ({problem})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        _set_path(raw, path, value, f"--set {text}")
    return raw


def apply_variant(raw: dict, overrides: list[str], *, source: str | Path = "recipe") -> dict:
    """Apply --set, then the variant of the resulting scale, then --set again so the user wins."""
    raw = apply_overrides(copy.deepcopy(raw), overrides)
    variants = raw.get("variants") or {}
    scale = raw.get("scale")
    if not isinstance(variants, dict) or scale not in variants:
        return raw
    variant = variants[scale]
    if not isinstance(variant, dict):
        raise InvkerasError(f"recipe {source}: variants.{scale}: expected a mapping of dotted keys to values")
    dropped = {tuple(p) for p, v in (parse_override(t) for t in overrides) if v is None}
    for key, value in variant.items():
        path = str(key).split(".")
        if any(tuple(path[:i]) in dropped for i in range(1, len(path))):
            continue  # the user dropped this step (or section): the variant's keys on it go with it
        _set_path(raw, path, value, f"variants.{scale}.{key}")
    return apply_overrides(raw, overrides)


def _set_path(raw: dict, path: list[str], value: Any, what: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        if not isinstance(node.get(part), dict):
            where = ".".join(path[: i + 1])
            raise InvkerasError(f"{what}: '{where}' is not a section of this recipe")
        node = node[part]
    node[path[-1]] = value


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice: YAML itself would keep the last value silently."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (with its
    line) rather than the last value silently winning. Keys brought in by a merge (`<<: *base`)
    may still be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}  # key -> the line it was first given on
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in lines:
                        raise DuplicateKeyError(None, None, f"duplicate key {key!r} (first given on line {lines[key]})",
                                                key_node.start_mark)
                    lines[key] = key_node.start_mark.line + 1
                except TypeError:
                    continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


def _non_finite(value: Any) -> bool:
    """Whether a step's value is, or holds, inf or NaN (YAML's .inf and .nan, or 'inf' read as a
    number): a step run on one goes to the end and writes garbage."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        value = list(value.values())
    elif isinstance(value, BaseModel):
        value = [v for _, v in value]
    return isinstance(value, (list, tuple)) and any(_non_finite(v) for v in value)


def load_recipe(path: str | Path, overrides: list[str] = (), *, allow_outside_workspace: bool = False) -> Recipe:
    """Read, override and validate a recipe; every problem becomes one line naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise InvkerasError(f"recipe {path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvkerasError(f"recipe {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        what = "" if isinstance(exc, DuplicateKeyError) else "YAML syntax error: "
        raise InvkerasError(f"recipe {path}: {where}{what}{problem}") from None
    if not isinstance(raw, dict):
        raise InvkerasError(f"recipe {path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_variant(raw, list(overrides), source=path)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise InvkerasError(f"recipe {path}: {describe_validation_error(exc)}") from None
    for name, step in recipe.steps.items():
        for key, value in step:
            if _non_finite(value):
                raise InvkerasError(f"recipe {path}: steps.{name}.{key}: {value}: every number must be finite")
    if not allow_outside_workspace:
        try:
            check_inside_workspace(recipe)
        except InvkerasError as exc:
            raise InvkerasError(f"recipe {path}: {exc}") from None
    return recipe


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line: 'steps.classifier.epocs: unknown key; steps.x.command: ...'."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        key = ".".join(([prefix] if prefix else []) + loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            if not loc:
                parts.append(message)  # names its own key
                continue
        else:
            message = error["msg"]
            if "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
        parts.append(f"{key}: {message}")
    return "; ".join(parts)
