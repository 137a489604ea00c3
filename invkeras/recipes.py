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
A step whose outputs are all complete (artefact plus metadata) is skipped on a rerun, and
long steps resume from their own checkpoints, so `invkeras run` can simply be run again
after a kill.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.features import ExtractConfig
from invkeras.train_classifier import ClassifierConfig

# Keys a recipe sets once at the top and every step inherits unless it sets its own.
SHARED_KEYS = ("dataset", "data_dir", "seed", "workspace")


# --- step schemas -------------------------------------------------------------------


class TrainClassifierStep(ClassifierConfig):
    command: Literal["train-classifier"]


class ExtractStep(ExtractConfig):
    command: Literal["extract"]


class ExportStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: Literal["export"]
    model: str
    out: str


Step = Annotated[Union[TrainClassifierStep, ExtractStep, ExportStep], Field(discriminator="command")]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    dataset: str = "procedural"
    data_dir: Optional[str] = None
    seed: int = 0
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    steps: dict[str, Step] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _inherit_shared_keys(cls, raw: Any) -> Any:
        """Copy top-level dataset/seed/... into each step that has such a field and did not set it."""
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), dict):
            return raw
        raw = dict(raw)
        steps = {}
        for name, step in raw["steps"].items():
            if isinstance(step, dict):
                step = dict(step)
                model = _STEP_MODELS.get(step.get("command"))
                for key in SHARED_KEYS:
                    if model is not None and key in model.model_fields and key not in step and key in raw:
                        step[key] = raw[key]
            steps[name] = step
        raw["steps"] = steps
        return raw


_STEP_MODELS: dict[str, type[BaseModel]] = {
    "train-classifier": TrainClassifierStep,
    "extract": ExtractStep,
    "export": ExportStep,
}


# --- loading ------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """'steps.classifier.epochs=3' -> (['steps','classifier','epochs'], 3); values are YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvkerasError(f"--set {text!r}: expected KEY=VALUE, e.g. --set steps.classifier.epochs=3")
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            if not isinstance(node.get(part), dict):
                where = ".".join(path[: i + 1])
                raise InvkerasError(f"--set {text}: '{where}' is not a section of this recipe")
            node = node[part]
        node[path[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem becomes one line naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise InvkerasError(f"recipe {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvkerasError(f"recipe {path}: {where}YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise InvkerasError(f"recipe {path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, list(overrides))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise InvkerasError(f"recipe {path}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line: 'steps.classifier.epocs: unknown key; steps.x.command: ...'."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if str(p) not in _STEP_MODELS]  # drop union tags
        key = ".".join(loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] == "union_tag_invalid":
            message = f"unknown command {error.get('input', {}).get('command')!r}; choose from {', '.join(_STEP_MODELS)}"
        elif error["type"] == "union_tag_not_found":
            message = "step needs a 'command' key"
        else:
            message = error["msg"]
            if "input" in error and not isinstance(error["input"], (dict, list)):
                message += f" (got {error['input']!r})"
        parts.append(f"{key}: {message}")
    return "; ".join(parts)


# --- running ------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    command: str
    status: str  # "ran" or "skipped"
    seconds: float
    summary: str
    outputs: list[str]


def step_outputs(step: BaseModel) -> list[Path]:
    """The artefacts whose completeness means the step is done."""
    if isinstance(step, TrainClassifierStep):
        return [Path(step.out) if step.out else artifacts.classifier_path(step.dataset, step.arch, step.workspace)]
    if isinstance(step, ExtractStep):
        from invkeras.features import MANIFEST

        return [step.split_dir(layer, split) / MANIFEST for layer in step.layers for split in step.splits]
    if isinstance(step, ExportStep):
        return [Path(step.out)]  # export writes <out>.meta.json beside the directory
    raise TypeError(type(step))


def _run_train_classifier(step: TrainClassifierStep) -> str:
    from invkeras.train_classifier import train_classifier

    config = ClassifierConfig(**step.model_dump(exclude={"command"}))
    result = train_classifier(config)
    return f"test accuracy {result.test_accuracy:.4f}"


def _run_extract(step: ExtractStep) -> str:
    from invkeras.features import extract_features

    written = extract_features(ExtractConfig(**step.model_dump(exclude={"command"})))
    return f"{len(written)} layer(s) x {len(step.splits)} split(s)"


def _run_export(step: ExportStep) -> str:
    from invkeras.export import export_saved_model

    return f"SavedModel at {export_saved_model(step.model, step.out)}"


_RUNNERS: dict[str, Callable[[Any], str]] = {
    "train-classifier": _run_train_classifier,
    "extract": _run_extract,
    "export": _run_export,
}


def run_recipe(
    recipe: Recipe,
    *,
    source: str | Path = "",
    on_step: Callable[[str, BaseModel], None] | None = None,
) -> list[StepResult]:
    """Run each step in order, skipping the ones whose outputs are complete."""
    results = []
    for name, step in recipe.steps.items():
        outputs = step_outputs(step)
        if all(artifacts.is_complete(p) for p in outputs):
            results.append(StepResult(name, step.command, "skipped", 0.0, "outputs complete", [str(p) for p in outputs]))
            continue
        if on_step is not None:
            on_step(name, step)
        started = time.time()
        try:
            summary = _RUNNERS[step.command](step)
        except InvkerasError as exc:
            raise type(exc)(f"recipe {source or recipe.name}: step '{name}': {exc}") from exc
        results.append(StepResult(name, step.command, "ran", time.time() - started, summary, [str(p) for p in outputs]))
    record = Path(recipe.workspace) / "recipes" / f"{recipe.name}.json"
    artifacts.write_json_atomic(record, {"recipe": recipe, "source": str(source), "steps": [r.__dict__ for r in results]})
    artifacts.write_metadata(record, kind="recipe-run", config=recipe, seed=recipe.seed, data=recipe.dataset)
    return results
