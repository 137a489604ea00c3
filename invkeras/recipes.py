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

Two sections keep long recipes short and give each one a cheap variant:

    defaults:                    # per command; a step's own keys win
      train-inverter: {learning_rate: 0.001, max_steps: 100000}
    variants:                    # applied when the recipe's scale is `small`
      small:                     # (e.g. `--set scale=small`); dotted keys, like --set
        dataset: idx:../shared/data/mnist
        defaults.train-inverter.max_steps: 500
        steps.inverter_unconditional: null     # null drops a step

The user's own --set keys are applied last, so they win over a variant.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from invkeras import artifacts
from invkeras.decoders import MSEDecoderConfig
from invkeras.errors import InvkerasError
from invkeras.data.features import ExtractConfig
from invkeras.classifiers.training import ClassifierConfig
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
    kind: Literal["pixelcnn"] = "pixelcnn"


class TrainMSEDecoderStep(MSEDecoderConfig):
    """`train-inverter` with `kind: mse`, as on the command line: the point-estimate baseline."""

    command: Literal["train-inverter"]
    kind: Literal["mse"]


class _InvertersInWorkspace(BaseModel):
    """Steps that act on inverters found by the default layout runs/<dataset>/<arch>/inverters/<layer>."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "procedural"
    arch: str = "conv"
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    layers: list[str] = Field(min_length=1)

    def inverter(self, layer: str) -> Path:
        return artifacts.inverter_dir(self.dataset, self.arch, layer, self.workspace)

    def decoder(self, layer: str) -> Path:
        return artifacts.decoder_dir(self.dataset, self.arch, layer, self.workspace)


class SampleStep(_InvertersInWorkspace):
    """Sample grids, one per layer."""

    command: Literal["sample"]
    num_inputs: int = Field(8, gt=0)
    num_samples: int = Field(8, gt=0)
    split: Literal["validation", "test"] = "test"
    seed: int = 0
    method: Literal["cached", "full"] = "cached"
    with_decoder: bool = Field(False, description="also write samples_mse.png with the layer's MSE decoder")


class CompareStep(_InvertersInWorkspace):
    """Table 1 / Fig. 2 distances in representation space, one comparison per layer."""

    command: Literal["compare"]
    num_images: int = Field(500, gt=0)
    num_samples: int = Field(10, gt=0)
    split: Literal["validation", "test"] = "test"
    seed: int = 0
    top_k: int = Field(8, gt=0)
    grid_samples: int = Field(64, gt=0)
    grid_inputs: int = Field(4, ge=0)
    batch_size: int = Field(64, gt=0)
    max_train_examples: Optional[int] = Field(None, gt=0)
    with_decoder: bool = Field(False, description="add a row for the layer's MSE decoder reconstruction")


class EstimateMIStep(_InvertersInWorkspace):
    """The information table over the layers' inverters.

    With `archs`, one table compares the layers of several architectures' runs on the same
    test images (paired), in rows labelled arch/layer; it is written to
    runs/<dataset>/architectures/mi/<split>.json, and `reference` names such a label.
    """

    command: Literal["estimate-mi"]
    unconditional: bool = Field(True, description="also use the 'none' inverter for H*(x) - H*(x|h)")
    reference: Optional[str] = None
    split: Literal["validation", "test"] = "test"
    eval_examples: Optional[int] = Field(None, gt=0)
    archs: Optional[list[str]] = Field(None, min_length=2, description="compare these architectures' runs")

    def rows(self) -> list[tuple[Optional[str], Path]]:
        """(label, inverter dir) per row; the label is None when rows are plain layers."""
        if not self.archs:
            return [(None, self.inverter(layer)) for layer in self.layers]
        return [(f"{arch}/{layer}", artifacts.inverter_dir(self.dataset, arch, layer, self.workspace))
                for arch in self.archs for layer in self.layers]

    def out(self) -> Path:
        run = "architectures" if self.archs else self.arch
        return artifacts.run_dir(self.dataset, run, self.workspace) / "mi" / f"{self.split}.json"


def _step_tag(step: Any) -> Optional[str]:
    """The schema of a step: its command, except that `train-inverter` with `kind: mse` is a decoder."""
    if isinstance(step, dict):
        command, kind = step.get("command"), step.get("kind")
    else:
        command, kind = getattr(step, "command", None), getattr(step, "kind", None)
    if command == "train-inverter" and kind == "mse":
        return MSE_TAG
    return command


MSE_TAG = "train-inverter (kind mse)"

Step = Annotated[
    Union[
        Annotated[TrainClassifierStep, Tag("train-classifier")],
        Annotated[ExtractStep, Tag("extract")],
        Annotated[ExportStep, Tag("export")],
        Annotated[TrainInverterStep, Tag("train-inverter")],
        Annotated[TrainMSEDecoderStep, Tag(MSE_TAG)],
        Annotated[SampleStep, Tag("sample")],
        Annotated[CompareStep, Tag("compare")],
        Annotated[EstimateMIStep, Tag("estimate-mi")],
    ],
    Discriminator(_step_tag),
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
    defaults: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-command step defaults")
    variants: dict[Literal["tiny", "small", "paper"], dict[str, Any]] = Field(
        default_factory=dict, description="dotted-key overrides applied when `scale` is the variant's name"
    )
    steps: dict[str, Step] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _inherit_shared_keys(cls, raw: Any) -> Any:
        """Fill each step's unset keys from `defaults` for its command, else the top-level dataset/seed/...

        A key is copied only into steps whose schema has it (so `train-inverter` defaults such
        as lr_decay skip `kind: mse` steps), and never over a key the step sets itself.
        """
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), dict):
            return raw
        raw = dict(raw)
        defaults = raw.get("defaults") or {}
        if isinstance(defaults, dict):
            _check_defaults(defaults)
        steps = {}
        for name, step in raw["steps"].items():
            if step is None:
                continue  # dropped by a variant or --set steps.NAME=null
            if isinstance(step, dict):
                step = dict(step)
                model = _STEP_MODELS.get(_step_tag(step))
                # The more specific source wins: the step, then its command's defaults, then the top level.
                inherited = {k: raw[k] for k in SHARED_KEYS if raw.get(k) is not None}
                inherited.update(dict(defaults.get(step.get("command")) or {}) if isinstance(defaults, dict) else {})
                for key, value in inherited.items():
                    if model is not None and key in model.model_fields and key not in step:
                        step[key] = value
            steps[name] = step
        raw["steps"] = steps
        return raw


_STEP_MODELS: dict[str, type[BaseModel]] = {
    "train-classifier": TrainClassifierStep,
    "extract": ExtractStep,
    "export": ExportStep,
    "train-inverter": TrainInverterStep,
    MSE_TAG: TrainMSEDecoderStep,
    "sample": SampleStep,
    "compare": CompareStep,
    "estimate-mi": EstimateMIStep,
}
COMMANDS = ("train-classifier", "extract", "export", "train-inverter", "sample", "compare", "estimate-mi")


def _check_defaults(defaults: dict) -> None:
    """A default nobody can take is a typo: name it rather than silently ignore it."""
    for command, values in defaults.items():
        models = [m for tag, m in _STEP_MODELS.items() if tag == command or tag.startswith(f"{command} ")]
        if not models:
            raise ValueError(f"defaults.{command}: unknown command; choose from {', '.join(COMMANDS)}")
        if not isinstance(values, dict):
            raise ValueError(f"defaults.{command}: expected a mapping of step keys")
        for key in values:
            if key == "command" or not any(key in m.model_fields for m in models):
                raise ValueError(f"defaults.{command}.{key}: not an option of {command}")


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
    for key, value in variant.items():
        _set_path(raw, str(key).split("."), value, f"variants.{scale}.{key}")
    return apply_overrides(raw, overrides)


def _set_path(raw: dict, path: list[str], value: Any, what: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        if not isinstance(node.get(part), dict):
            where = ".".join(path[: i + 1])
            raise InvkerasError(f"{what}: '{where}' is not a section of this recipe")
        node = node[part]
    node[path[-1]] = value


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
    raw = apply_variant(raw, list(overrides), source=path)
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
            message = f"unknown command {error.get('input', {}).get('command')!r}; choose from {', '.join(COMMANDS)}"
        elif error["type"] == "union_tag_not_found":
            message = "step needs a 'command' key"
        elif error["type"] == "value_error" and not loc:
            parts.append(str(error.get("ctx", {}).get("error", error["msg"])))  # names its own key
            continue
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
        from invkeras.data.features import MANIFEST

        return [step.split_dir(layer, split) / MANIFEST for layer in step.layers for split in step.splits]
    if isinstance(step, ExportStep):
        return [Path(step.out)]  # export writes <out>.meta.json beside the directory
    if isinstance(step, (TrainInverterStep, TrainMSEDecoderStep)):
        return [step.model_path()]
    if isinstance(step, SampleStep):
        grids = [step.inverter(layer) / "samples.png" for layer in step.layers]
        if step.with_decoder:
            grids += [step.inverter(layer) / "samples_mse.png" for layer in step.layers]
        return grids
    if isinstance(step, CompareStep):
        return [step.inverter(layer) / "compare.json" for layer in step.layers]
    if isinstance(step, EstimateMIStep):
        return [step.out()]
    raise TypeError(type(step))


def _run_train_classifier(step: TrainClassifierStep) -> str:
    from invkeras.classifiers.training import train_classifier

    config = ClassifierConfig(**step.model_dump(exclude={"command"}))
    result = train_classifier(config)
    return f"test accuracy {result.test_accuracy:.4f}"


def _run_extract(step: ExtractStep) -> str:
    from invkeras.data.features import extract_features

    written = extract_features(ExtractConfig(**step.model_dump(exclude={"command"})))
    return f"{len(written)} layer(s) x {len(step.splits)} split(s)"


def _run_export(step: ExportStep) -> str:
    from invkeras.export import export_saved_model

    return f"SavedModel at {export_saved_model(step.model, step.out)}"


def _run_train_inverter(step: TrainInverterStep) -> str:
    from invkeras.train_inverter import train_inverter

    result = train_inverter(InverterConfig(**step.model_dump(exclude={"command", "kind"})))
    held_out = result.test or result.validation
    return f"{step.layer}: {held_out['nll_nats']:.2f} nats ({held_out['bits_per_dim']:.4f} bits/dim), {result.steps} steps"


def _run_train_mse_decoder(step: TrainMSEDecoderStep) -> str:
    from invkeras.decoders import train_mse_decoder

    result = train_mse_decoder(MSEDecoderConfig(**step.model_dump(exclude={"command", "kind"})))
    held_out = result.test or result.validation
    return f"{step.layer}: MSE decoder {held_out['mse_per_pixel']:.1f} per pixel, {result.steps} steps"


def _run_sample(step: SampleStep) -> str:
    from invkeras.decoders import save_samples_with_reconstruction
    from invkeras.analyses.samples import draw_inversions

    for layer in step.layers:
        if artifacts.is_complete(step.inverter(layer) / "samples.png"):
            continue  # a rerun after a kill redoes only the missing grids
        draw_inversions(step.inverter(layer), num_inputs=step.num_inputs, num_samples=step.num_samples,
                        split=step.split, seed=step.seed, method=step.method)
    if step.with_decoder:
        for layer in step.layers:
            if artifacts.is_complete(step.inverter(layer) / "samples_mse.png"):
                continue
            save_samples_with_reconstruction(step.inverter(layer), step.decoder(layer), None, step.num_inputs,
                                             step.num_samples, step.seed, split=step.split, method=step.method)
    return f"grids for {', '.join(step.layers)}"


def _run_compare(step: CompareStep) -> str:
    from invkeras.analyses.compare import compare_representations

    summaries = []
    for layer in step.layers:
        if artifacts.is_complete(step.inverter(layer) / "compare.json"):
            continue
        result = compare_representations(
            step.inverter(layer), num_images=step.num_images, num_samples=step.num_samples, split=step.split,
            seed=step.seed, top_k=step.top_k, grid_samples=step.grid_samples, grid_inputs=step.grid_inputs,
            batch_size=step.batch_size, max_train_examples=step.max_train_examples,
            decoder=step.decoder(layer) if step.with_decoder else None,
        )
        summaries.append(layer + " " + ", ".join(f"{r['method']} {r['mean_l1']:.2f}" for r in result.rows))
    return "; ".join(summaries) or "nothing left to compare"


def _run_estimate_mi(step: EstimateMIStep) -> str:
    from invkeras.analyses.mi import estimate_mi

    rows = step.rows()
    report, path = estimate_mi(
        [inverter for _, inverter in rows],
        split=step.split,
        unconditional=step.inverter("none") if step.unconditional else None,
        reference_layer=step.reference,
        eval_examples=step.eval_examples,
        out=step.out(),
        labels=[label for label, _ in rows] if step.archs else None,
    )
    return "; ".join(f"{r['layer']} {r['H*(x|h) nats']:.1f}" for r in report.rows) + " nats"


_RUNNERS: dict[str, Callable[[Any], str]] = {
    "train-classifier": _run_train_classifier,
    "extract": _run_extract,
    "export": _run_export,
    "train-inverter": _run_train_inverter,
    MSE_TAG: _run_train_mse_decoder,
    "sample": _run_sample,
    "compare": _run_compare,
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
            summary = _RUNNERS[_step_tag(step)](step)
        except InvkerasError as exc:
            raise type(exc)(f"recipe {source or recipe.name}: step '{name}': {exc}") from exc
        results.append(StepResult(name, step.command, "ran", time.time() - started, summary, [str(p) for p in outputs]))
    record = Path(recipe.workspace) / "recipes" / f"{recipe.name}.json"
    artifacts.write_json_atomic(record, {"recipe": recipe, "source": str(source), "steps": [r.__dict__ for r in results]})
    artifacts.write_metadata(record, kind="recipe-run", config=recipe, seed=recipe.seed, data=recipe.dataset)
    return results
