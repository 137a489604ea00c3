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
from invkeras.train_inverter import InverterConfig

# Keys a recipe sets once at the top and every step inherits unless it sets its own.
SHARED_KEYS = ("dataset", "data_dir", "seed", "workspace", "arch", "scale")


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


class TrainInverterStep(InverterConfig):
    command: Literal["train-inverter"]


class _InvertersInWorkspace(BaseModel):
    """Steps that act on inverters found by the default layout runs/<dataset>/<arch>/inverters/<layer>."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "procedural"
    arch: str = "conv"
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    layers: list[str] = Field(min_length=1)

    def inverter(self, layer: str) -> Path:
        return artifacts.inverter_dir(self.dataset, self.arch, layer, self.workspace)


class SampleStep(_InvertersInWorkspace):
    """Sample grids, one per layer."""

    command: Literal["sample"]
    num_inputs: int = Field(8, gt=0)
    num_samples: int = Field(8, gt=0)
    split: Literal["validation", "test"] = "test"
    seed: int = 0
    method: Literal["cached", "full"] = "cached"


class EstimateMIStep(_InvertersInWorkspace):
    """The information table over the layers' inverters."""

    command: Literal["estimate-mi"]
    unconditional: bool = Field(True, description="also use the 'none' inverter for H*(x) - H*(x|h)")
    reference: Optional[str] = None
    split: Literal["validation", "test"] = "test"
    eval_examples: Optional[int] = Field(None, gt=0)

    def out(self) -> Path:
        return artifacts.run_dir(self.dataset, self.arch, self.workspace) / "mi" / f"{self.split}.json"


Step = Annotated[
    Union[TrainClassifierStep, ExtractStep, ExportStep, TrainInverterStep, SampleStep, EstimateMIStep],
    Field(discriminator="command"),
]


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
                    if model is not None and key in model.model_fields and key not in step and raw.get(key) is not None:
                        step[key] = raw[key]
            steps[name] = step
        raw["steps"] = steps
        return raw


_STEP_MODELS: dict[str, type[BaseModel]] = {
    "train-classifier": TrainClassifierStep,
    "extract": ExtractStep,
    "export": ExportStep,
    "train-inverter": TrainInverterStep,
    "sample": SampleStep,
    "estimate-mi": EstimateMIStep,
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
    if isinstance(step, TrainInverterStep):
        return [step.model_path()]
    if isinstance(step, SampleStep):
        return [step.inverter(layer) / "samples.png" for layer in step.layers]
    if isinstance(step, EstimateMIStep):
        return [step.out()]
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


def _run_train_inverter(step: TrainInverterStep) -> str:
    from invkeras.train_inverter import train_inverter

    result = train_inverter(InverterConfig(**step.model_dump(exclude={"command"})))
    held_out = result.test or result.validation
    return f"{step.layer}: {held_out['nll_nats']:.2f} nats ({held_out['bits_per_dim']:.4f} bits/dim), {result.steps} steps"


def _run_sample(step: SampleStep) -> str:
    from invkeras.invert import draw_inversions

    for layer in step.layers:
        draw_inversions(step.inverter(layer), num_inputs=step.num_inputs, num_samples=step.num_samples,
                        split=step.split, seed=step.seed, method=step.method)
    return f"grids for {', '.join(step.layers)}"


def _run_estimate_mi(step: EstimateMIStep) -> str:
    from invkeras.mi import estimate_mi

    report, path = estimate_mi(
        [step.inverter(layer) for layer in step.layers],
        split=step.split,
        unconditional=step.inverter("none") if step.unconditional else None,
        reference_layer=step.reference,
        eval_examples=step.eval_examples,
        out=step.out(),
    )
    return "; ".join(f"{r['layer']} {r['H*(x|h) nats']:.1f}" for r in report.rows) + " nats"


_RUNNERS: dict[str, Callable[[Any], str]] = {
    "train-classifier": _run_train_classifier,
    "extract": _run_extract,
    "export": _run_export,
    "train-inverter": _run_train_inverter,
    "sample": _run_sample,
    "estimate-mi": _run_estimate_mi,
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
