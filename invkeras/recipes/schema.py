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

Two sections keep long recipes short and give each one a cheap variant:

    defaults:                    # per command; a step's own keys win
      train-inverter: {learning_rate: 0.001, max_steps: 100000}
    variants:                    # applied when the recipe's scale is `small`
      small:                     # (e.g. `--set scale=small`); dotted keys, like --set
        dataset: idx:../shared/data/mnist
        defaults.train-inverter.max_steps: 500
        steps.inverter_unconditional: null     # null drops a step

The user's own --set keys are applied last, so they win over a variant (a step the user
drops stays dropped, whatever the variant sets on it). Every path a recipe writes stays
inside its workspace unless the user allows otherwise on the command line.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model, field_validator,
                      model_validator)

from invkeras import artifacts
from invkeras.analyses.attack import AttackConfig
from invkeras.analyses.compare import CompareConfig
from invkeras.analyses.edit import EDITS_DIR, EditConfig, shift_list
from invkeras.analyses.factors import EditFactorsConfig, ScoreFactorsConfig
from invkeras.analyses.ground_truth import GroundTruthConfig
from invkeras.analyses.mi import EstimateMIConfig
from invkeras.analyses.mix import MixConfig
from invkeras.analyses.samples import SampleConfig
from invkeras.autoencoders.training import AutoencoderConfig
from invkeras.classifiers.training import ClassifierConfig
from invkeras.data.features import ExtractConfig
from invkeras.errors import InvkerasError
from invkeras.factors.config import FACTORS_DIR, FactorConfig, checked_factor_names, factor_dir_name

# Keys a recipe sets once at the top and every step inherits unless it sets its own.
SHARED_KEYS = ("dataset", "data_dir", "seed", "workspace", "arch", "scale")
COMMANDS = ("train-classifier", "extract", "export", "train-inverter", "sample", "compare", "estimate-mi", "edit",
            "train-autoencoder", "mix", "attack", "ground-truth", "train-factors", "edit-factors", "score-factors")
DEFAULT_KIND = "pixelcnn"


# --- step schemas -------------------------------------------------------------------


class TrainClassifierStep(ClassifierConfig):
    command: Literal["train-classifier"]


class ExtractStep(ExtractConfig):
    command: Literal["extract"]


class TrainAutoencoderStep(AutoencoderConfig):
    """An autoencoder whose latent `train-inverter` steps of kind cinn model (their `autoencoder` key)."""

    command: Literal["train-autoencoder"]


class ExportStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: Literal["export"]
    model: str
    out: str


@functools.lru_cache(maxsize=None)
def train_inverter_step(kind: str) -> type[BaseModel]:
    """The schema of a `train-inverter` step of one kind: the kind's own config plus `command`."""
    from invkeras.inverters import inverter_class

    config_class = inverter_class(kind).config_class
    return create_model(f"TrainInverterStep_{kind}", __base__=config_class, command=(Literal["train-inverter"], ...))


def _fields_of(config: type[BaseModel], *, without: tuple[str, ...]) -> dict:
    """A config's fields (defaults and descriptions included) for a step schema: written once."""
    return {name: (field.annotation, field) for name, field in config.model_fields.items() if name not in without}


def _known_kind(kind: str) -> str:
    from invkeras.inverters import inverter_kinds

    if kind not in inverter_kinds():
        raise ValueError(f"unknown inverter kind {kind!r}; choose from {', '.join(sorted(inverter_kinds()))}")
    return kind


class InvertersInWorkspace(BaseModel):
    """Steps that act on inverters found by the layout runs/<dataset>/<arch>/inverters/<kind>/<layer>."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "procedural"
    arch: str = "conv"
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    layers: list[str] = Field(min_length=1)
    kind: str = Field(DEFAULT_KIND, description="the inverter kind these steps read")

    @field_validator("kind")
    @classmethod
    def _kind_known(cls, value: str) -> str:
        return _known_kind(value)

    def inverter(self, layer: str, kind: str | None = None) -> Path:
        return artifacts.inverter_dir(self.dataset, self.arch, layer, self.workspace, kind=kind or self.kind)


class SampleStep(create_model("_SampleFields", __base__=InvertersInWorkspace,
                              **_fields_of(SampleConfig, without=("inverter", "out")))):
    """Sample grids, one per layer; `reconstruction` names a kind with `reconstruct` (e.g. mse)
    whose inverter of the same layer adds the input | reconstruction | samples grid."""

    command: Literal["sample"]
    reconstruction: Optional[str] = Field(None, description="kind of the reconstruction column, e.g. mse")

    @field_validator("reconstruction")
    @classmethod
    def _reconstruction_kind(cls, value):
        return None if value is None else _known_kind(value)


class CompareStep(create_model("_CompareFields", __base__=InvertersInWorkspace,
                               **_fields_of(CompareConfig, without=("inverters", "labels", "out")))):
    """Kinds side by side, one comparison per layer: Table 1 distances, label agreement,
    diversity and NLL, in runs/<dataset>/<arch>/comparisons/<layer>/."""

    command: Literal["compare"]
    kinds: Optional[list[str]] = Field(None, min_length=1, description="kinds compared; default [kind]")

    @field_validator("kinds")
    @classmethod
    def _kinds_known(cls, value):
        return None if value is None else [_known_kind(k) for k in value]

    def compared_kinds(self) -> list[str]:
        return self.kinds or [self.kind]

    def out(self, layer: str) -> Path:
        return artifacts.comparison_dir(self.dataset, self.arch, layer, self.workspace)


class EstimateMIStep(create_model("_EstimateMIFields", __base__=InvertersInWorkspace,
                                  **_fields_of(EstimateMIConfig,
                                               without=("inverters", "unconditional", "out", "labels")))):
    """The information table over the layers' inverters: pixel-space for a kind with a pixel
    likelihood, a separate latent-space table (mi/latent_<split>.json) for a kind with a latent
    one (`kind: cinn`; its unconditional flow gives H*(z) - H*(z|h)).

    With `archs`, one table compares the layers of several architectures' runs on the same
    test images (paired), in rows labelled arch/layer; it is written to
    runs/<dataset>/architectures/mi/<split>.json, and `reference` names such a label.
    """

    command: Literal["estimate-mi"]
    unconditional: bool = Field(True, description="also use the 'none' inverter for H*(x) - H*(x|h)")
    archs: Optional[list[str]] = Field(None, min_length=2, description="compare these architectures' runs")

    def rows(self) -> list[tuple[Optional[str], Path]]:
        """(label, inverter dir) per row; the label is None when rows are plain layers."""
        if not self.archs:
            return [(None, self.inverter(layer)) for layer in self.layers]
        return [(f"{arch}/{layer}", artifacts.inverter_dir(self.dataset, arch, layer, self.workspace, kind=self.kind))
                for arch in self.archs for layer in self.layers]

    def out(self) -> Path:
        """mi/<split>.json, or mi/latent_<split>.json for a kind with a latent likelihood (cinn)."""
        from invkeras.analyses.mi import report_name
        from invkeras.inverters import inverter_class

        run = "architectures" if self.archs else self.arch
        name = report_name(self.split, inverter_class(self.kind).latent_likelihood)
        return artifacts.run_dir(self.dataset, run, self.workspace) / "mi" / name


class EditStep(create_model("_EditFields", __base__=InvertersInWorkspace,
                            **_fields_of(EditConfig, without=("inverter", "out")))):
    """Logit editing, one run per layer's inverter: grids sweeping each operation's strength and
    edits.json with the classifier's labels, in <inverter dir>/<subdir>/."""

    command: Literal["edit"]
    # `scale` here multiplies h; the recipe's top-level `scale` (a model size) must not reach it.
    own_keys: ClassVar[tuple[str, ...]] = ("scale",)
    subdir: str = Field(EDITS_DIR, description="folder under the inverter's directory (several edit steps of "
                                               "one inverter need different ones)")

    @field_validator("shift", mode="before")
    @classmethod
    def _shift_list(cls, value):
        return shift_list(value)

    @field_validator("subdir")
    @classmethod
    def _plain_subdir(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or ".." in value:
            raise ValueError(f"{value!r} must be a plain folder name, not a path")
        return value

    def out(self, layer: str) -> Path:
        return self.inverter(layer) / self.subdir


class MixStep(create_model("_MixFields", __base__=InvertersInWorkspace,
                           **_fields_of(MixConfig, without=("inverter", "out")))):
    """Image mixing grids D(t^-1(v_A | h_B)), one per layer, for a kind with a latent residual
    (set `kind: cinn`); mix.png and mix.npz in each inverter's directory."""

    command: Literal["mix"]


class AttackStep(create_model("_AttackFields", __base__=InvertersInWorkspace,
                              **_fields_of(AttackConfig, without=("inverter", "out")))):
    """Adversarial examples for the classifier and D(t^-1(v_x | h(x'))), one attack per layer's
    inverter, for a kind with a latent residual (set `kind: cinn`); attack.png, .npz and .json in
    <inverter dir>/attacks/<method>_eps<epsilon>/."""

    command: Literal["attack"]

    def out(self, layer: str) -> Path:
        from invkeras.analyses.attack import attack_dir

        return attack_dir(self.inverter(layer), self.method, self.epsilon)


class GroundTruthStep(GroundTruthConfig):
    """One PixelCNN++ per subset of the procedural factors, its test NLL beside the exact H(x|h)."""

    command: Literal["ground-truth"]


class FactorModelsInWorkspace(InvertersInWorkspace):
    """Steps on the factor INNs of the layers' inverters (kind cinn by default), each in
    <inverter dir>/factor_inn/<pairs> (`<pairs>-shuffled` for the control)."""

    kind: str = Field("cinn", description="the kind of the inverters whose (h, v) the factor INNs work on")
    pairs: Literal["factors", "labels"] = Field("factors", description="factors (procedural) | labels")
    shuffled: bool = Field(False, description="the control: factor INNs trained on shuffled pair labels")

    def factor_dir(self, layer: str) -> Path:
        return self.inverter(layer) / FACTORS_DIR / factor_dir_name(self.pairs, self.shuffled)


class TrainFactorsStep(create_model("_TrainFactorsFields", __base__=FactorModelsInWorkspace,
                                    **_fields_of(FactorConfig, without=("inverter", "features", "out", "pairs",
                                                                        "shuffled")))):
    """One factor INN per layer's cinn inverter (Esser, Rombach & Ommer 2020), resumable."""

    command: Literal["train-factors"]

    @field_validator("factor")
    @classmethod
    def _known_factors(cls, value, info):
        return checked_factor_names(value, info.data.get("pairs", "factors"))  # checked when the recipe is read

    def config(self, layer: str) -> FactorConfig:
        values = {k: v for k, v in self.model_dump().items() if k in FactorConfig.model_fields}
        return FactorConfig(**values, inverter=str(self.inverter(layer)), out=str(self.factor_dir(layer)))

    def outputs(self) -> list[Path]:
        return [self.config(layer).model_path() for layer in self.layers]


class EditFactorsStep(create_model("_EditFactorsFields", __base__=FactorModelsInWorkspace,
                                   **_fields_of(EditFactorsConfig, without=("factors", "out")))):
    """Swap and walk grids of each layer's factor INN, in <factor dir>/edits/."""

    command: Literal["edit-factors"]

    def out(self, layer: str) -> Path:
        from invkeras.analyses.factors import EDITS_DIR

        return self.factor_dir(layer) / EDITS_DIR

    def outputs(self) -> list[Path]:
        from invkeras.analyses.factors import EDITS_JSON

        return [self.out(layer) / EDITS_JSON for layer in self.layers]


class ScoreFactorsStep(create_model("_ScoreFactorsFields", __base__=FactorModelsInWorkspace,
                                    **_fields_of(ScoreFactorsConfig, without=("factors", "labels", "out")))):
    """Dimensions, disentanglement matrices, edit accuracy and label swaps of the layers' factor
    INNs, one table in runs/<dataset>/<arch>/factor_scores/<pairs>/."""

    command: Literal["score-factors"]

    def out(self) -> Path:
        return artifacts.run_dir(self.dataset, self.arch, self.workspace) / "factor_scores" / factor_dir_name(
            self.pairs, self.shuffled)

    def outputs(self) -> list[Path]:
        from invkeras.analyses.factors import SCORES_JSON

        return [self.out() / SCORES_JSON]


_STEP_MODELS: dict[str, type[BaseModel]] = {
    "train-factors": TrainFactorsStep,
    "edit-factors": EditFactorsStep,
    "score-factors": ScoreFactorsStep,
    "ground-truth": GroundTruthStep,
    "train-classifier": TrainClassifierStep,
    "train-autoencoder": TrainAutoencoderStep,
    "mix": MixStep,
    "attack": AttackStep,
    "extract": ExtractStep,
    "export": ExportStep,
    "sample": SampleStep,
    "compare": CompareStep,
    "estimate-mi": EstimateMIStep,
    "edit": EditStep,
}


def step_model(raw: dict) -> type[BaseModel]:
    """The schema of a raw step: by its command, and for `train-inverter` by its kind."""
    command = raw.get("command")
    if command is None:
        raise ValueError("step needs a 'command' key")
    if command == "train-inverter":
        kind = raw.get("kind", DEFAULT_KIND)
        try:
            return train_inverter_step(str(kind))
        except InvkerasError:
            from invkeras.inverters import inverter_kinds

            raise ValueError(f"kind: unknown inverter kind {kind!r}; choose from "
                             f"{', '.join(sorted(inverter_kinds()))}") from None
    if command not in _STEP_MODELS:
        raise ValueError(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    return _STEP_MODELS[command]


def _default_takers(command: str) -> list[type[BaseModel]]:
    """The schemas a `defaults.<command>` entry may fill: every kind's for train-inverter."""
    if command == "train-inverter":
        from invkeras.inverters import inverter_kinds

        return [train_inverter_step(kind) for kind in inverter_kinds()]
    return [_STEP_MODELS[command]] if command in _STEP_MODELS else []


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
                if key in model.model_fields and key not in step:
                    step[key] = value
            try:
                steps[name] = model.model_validate(step)
            except ValidationError as exc:
                problems.append(describe_validation_error(exc, prefix=f"steps.{name}"))
        if problems:
            raise ValueError("; ".join(problems))
        raw["steps"] = steps
        return raw


def _check_defaults(defaults: dict) -> None:
    """A default nobody can take is a typo: name it rather than silently ignore it."""
    for command, values in defaults.items():
        models = _default_takers(command)
        if not models:
            raise ValueError(f"defaults.{command}: unknown command; choose from {', '.join(COMMANDS)}")
        if not isinstance(values, dict):
            raise ValueError(f"defaults.{command}: expected a mapping of step keys")
        for key in values:
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
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvkerasError(f"recipe {path}: {where}YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise InvkerasError(f"recipe {path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_variant(raw, list(overrides), source=path)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise InvkerasError(f"recipe {path}: {describe_validation_error(exc)}") from None
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
