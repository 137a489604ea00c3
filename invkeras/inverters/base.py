"""The inverter interface: what every kind offers, the registry of kinds, and loading by kind.

An *inverter* models the images x that a layer maps to a representation h. Kinds differ in
what they can do, and say so in `capabilities`:

    sample          draw images x ~ p(x | h)                       (every kind)
    pixel_log_prob  log p(x | h) in nats per image, a pixel-space likelihood, so its
                    held-out mean bounds H(x | h) from above (estimate-mi needs it)
    reconstruct     one point estimate x_hat(h)

A kind is a subclass of `Inverter` with its own config (a subclass of `InverterConfig`
whose `kind` field is a one-value Literal) registered with `@register_inverter`. That is all
a new kind needs: the CLI, recipes, `sample`, `compare`, `report` and `estimate-mi` find it
through the registry and its capabilities; `invkeras inspect` reads how to fit it into a time
budget from its `quick` settings (`QuickTraining`). Every kind writes `<out>/inverter.keras` with a
metadata JSON beside it whose `inverter_kind` names the class that loads it back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

import numpy as np
from pydantic import ConfigDict, Field

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.inverters.data import UNCONDITIONAL, PairedDataConfig, paired_arrays

MODEL_FILE = "inverter.keras"
LEGACY_DECODER_FILE = "decoder.keras"  # MSE decoders before the interface
CAPABILITIES = ("sample", "pixel_log_prob", "reconstruct")
# Settings that do not change a run's trajectory: changing them may resume a backup.
NON_TRAJECTORY_FIELDS = ("max_steps", "max_time", "patience", "out", "workspace", "eval_examples", "strategy")


@dataclass(frozen=True)
class QuickTraining:
    """How `invkeras inspect` trains a kind when it has minutes on a CPU, not hours.

    `settings` are config values for that regime (a small scale); `needed_steps` is how many
    steps the kind needs there for usable samples, which the budget is split by, and
    `unconditional_steps` the same for its model of the images alone (layer 'none') where that
    model is the reference of the information estimates. `auto_for` says which images
    `--kinds auto` picks the kind for: 'grey' (one channel, at most `auto_max_side` pixels a
    side), 'colour', 'any' or 'never'; `auto_if_affordable` makes that choice provisional, kept
    only when the budget gives each of its models a fair share of `needed_steps`."""

    needed_steps: int = 2000
    steps_per_checkpoint: int = 250
    unconditional_steps: Optional[int] = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    auto_for: str = "never"
    auto_max_side: Optional[int] = None
    auto_if_affordable: bool = False

    def auto_reason(self, image_shape) -> Optional[str]:
        """Why `--kinds auto` picks this kind for images of `image_shape` (h, w, c), or None."""
        height, width, channels = (int(d) for d in image_shape)
        fits = self.auto_max_side is None or max(height, width) <= self.auto_max_side
        if self.auto_for == "any":
            return "images of any kind"
        if self.auto_for == "grey" and channels == 1 and fits:
            limit = f" (at most {self.auto_max_side}x{self.auto_max_side})" if self.auto_max_side else ""
            return f"greyscale images of {height}x{width}{limit}" + (", if the budget allows"
                                                                    if self.auto_if_affordable else "")
        if self.auto_for == "colour" and channels != 1 and fits:
            return "colour images"
        return None

    def auto_too_large(self, image_shape) -> Optional[str]:
        """Why auto passes over the kind for images of the right colour but too many pixels."""
        height, width, channels = (int(d) for d in image_shape)
        right_colour = {"grey": channels == 1, "colour": channels != 1, "any": True}.get(self.auto_for, False)
        if right_colour and self.auto_max_side and max(height, width) > self.auto_max_side:
            side = self.auto_max_side
            return f"not for {height}x{width} images (larger than {side}x{side})"
        return None


class InverterConfig(PairedDataConfig):
    """The settings every kind has: its name, the data (inherited), the optimisation loop and
    the output directory. A kind's config subclasses this and narrows `kind` to its name.
    Every number is finite: 'inf' or 'nan' (a kind's option on the command line) is refused."""

    model_config = ConfigDict(allow_inf_nan=False)

    kind: str = Field(description="the inverter kind (see `invkeras kinds`)")
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    max_steps: int = Field(2000, gt=0)
    max_time: Optional[float] = Field(None, gt=0, description="wall-clock cap on training in seconds, over all "
                                      "resumed runs; the model is saved at the step the cap is reached")
    steps_per_checkpoint: int = Field(200, gt=0)
    patience: int = Field(5, ge=0, description="checkpoint intervals without validation improvement")
    out: Optional[str] = Field(None, description="output dir; default runs/<dataset>/<arch>/inverters/<kind>/<layer>")
    training_seed: Optional[int] = Field(None, description="seed of the initial weights and the batch order "
                                         "alone; default --seed, which also picks the data (validation split, "
                                         "procedural images)")

    @property
    def run_seed(self) -> int:
        """The seed of this training run (initial weights, batch order): `training_seed`, else `seed`.
        Runs that differ only in it train on the same pairs, so their spread is training noise."""
        return self.seed if self.training_seed is None else self.training_seed

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return artifacts.inverter_dir(self.dataset, self.arch, self.layer, self.workspace, kind=self.kind)

    def model_path(self) -> Path:
        return self.out_dir() / MODEL_FILE

    def trajectory(self) -> dict:
        """The settings a resumed run must share with the run that made the backup."""
        from invkeras.training import trajectory_settings

        return trajectory_settings(self, NON_TRAJECTORY_FIELDS)


@dataclass
class PairedData:
    """The pairs a training run works on, their shapes and provenance, and when it started."""

    train: dict
    validation: dict
    test: dict | None
    source: dict
    image_shape: tuple[int, ...]
    h_shape: tuple[int, ...] | None
    started: float

    @property
    def provenance(self) -> dict:
        return {**self.source, "train_examples": len(self.train["x"]), "validation_examples": len(self.validation["x"])}

    def described(self, config: InverterConfig) -> str:
        """Where the pairs were read from, for messages: the features, or the dataset and the
        classifier, and a kind's own inputs (cinn's autoencoder)."""
        parts = [f"{k} {v}" for k, v in self.source.items() if k in ("features", "dataset", "classifier")]
        if getattr(config, "autoencoder", None):
            parts.append(f"autoencoder {config.autoencoder}")
        return ", ".join(parts)


@dataclass
class TrainedInverter:
    """What a training run reports: the model file, steps, held-out summaries, timing."""

    model_path: Path
    kind: str
    layer: str
    steps: int
    validation: dict
    test: dict | None
    seconds: float
    stopped_early: bool
    resumed_from_step: int = 0


def headline_summary(name: str, values: np.ndarray, **extra) -> dict:
    """A held-out summary every table can show: n, the kind's headline metric with its
    standard error, and whatever else the kind adds."""
    from invkeras.stats import standard_error

    values = np.asarray(values, np.float64)
    mean, se = float(np.mean(values)), standard_error(values)
    return {"n": len(values), "headline": {"name": name, "value": mean, "se": se}, **extra}


class Inverter:
    """Base class of every kind: a trained model plus the metadata it was saved with."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[InverterConfig]] = InverterConfig
    capabilities: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""
    unconditional_ok: ClassVar[bool] = False  # can it model p(x) alone (layer 'none')?
    # A likelihood over a latent z = E(x) instead of pixels: such a kind implements
    # encode(x), latent_log_prob(z, h) and latent_space(); `estimate-mi` then gives a
    # latent-space estimate (differential entropies), never mixed with pixel-space rows.
    latent_likelihood: ClassVar[bool] = False
    # A kind whose `sample` repeats one point estimate (no distribution): its output is shown
    # beside a sampling kind's samples rather than as samples of its own.
    point_estimate: ClassVar[bool] = False
    quick: ClassVar[QuickTraining] = QuickTraining()
    # Workspaces from before kinds had folders: the artefact kind its metadata recorded, and
    # where under runs/<dataset>/<arch>/ it lived ({layer} filled in).
    legacy_artifact_kind: ClassVar[str | None] = None
    legacy_layout: ClassVar[str | None] = None

    def __init__(self, model, meta: dict, path: Path):
        self.model, self.meta, self.path = model, meta, Path(path)

    # --- facts from the metadata ------------------------------------------------------

    @property
    def layer(self) -> str:
        return str(self.meta.get("layer") or (self.meta.get("config") or {}).get("layer"))

    @property
    def conditional(self) -> bool:
        return self.layer != UNCONDITIONAL

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.meta["image_shape"])

    @property
    def h_shape(self) -> tuple[int, ...] | None:
        shape = self.meta.get("h_shape")
        return tuple(int(d) for d in shape) if shape else None

    @property
    def config(self) -> InverterConfig:
        return self.config_class(**{**(self.meta.get("config") or {}), "kind": self.kind})

    @property
    def classifier_path(self) -> str | None:
        """The classifier whose layer this inverts (None for user features)."""
        return (self.meta.get("data") or {}).get("classifier")

    @property
    def results(self) -> dict:
        return self.meta.get("results") or {}

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, command: str) -> None:
        """One line, exit 2, when a command needs what this kind cannot do."""
        if not self.has(capability):
            offers = ", ".join(sorted(self.capabilities)) or "nothing"
            raise InvkerasError(f"{command}: inverter {self.path.parent} is of kind '{self.kind}', which has no "
                                f"{capability.replace('_', ' ')} (it offers: {offers})")

    # --- what a kind implements -------------------------------------------------------

    @classmethod
    def register_layers(cls) -> None:
        """Import the modules whose custom Keras layers the saved model holds, so that a fresh
        process can load it (kinds keep heavy imports out of registration)."""

    @classmethod
    def train(cls, config: InverterConfig, *, hooks=(), progress: bool = True) -> TrainedInverter:
        """Train on `config`'s pairs and write `<out>/inverter.keras` plus its metadata."""
        raise NotImplementedError

    def sample(self, h: np.ndarray | None, num_samples: int = 1, *, seed: int = 0, batch_size: int = 64,
               **options) -> np.ndarray:
        """uint8 images [N, K, H, W, C]: K samples for each of the N rows of h (N = 1 without h)."""
        raise NotImplementedError

    def log_prob(self, x: np.ndarray, h: np.ndarray | None = None, *, batch_size: int = 64) -> np.ndarray:
        """log p(x | h) in nats, one value per image (kinds with `pixel_log_prob`)."""
        self.require("pixel_log_prob", "log_prob")
        raise NotImplementedError

    def reconstruct(self, h: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """The point estimate x_hat(h), float32 [N, H, W, C] in [0, 255] (kinds with `reconstruct`)."""
        self.require("reconstruct", "reconstruct")
        raise NotImplementedError

    def export_functions(self, batch_size: int) -> dict[str, tuple[Any, list[tuple[tuple, str]]]]:
        """Graph-traceable functions for a SavedModel: {endpoint: (fn, [(input shape, dtype), ...])},
        written with keras.ops on the model's own variables. The first endpoint is the kind's
        default (`serve`). `sample(h, seed)` takes `batch_size` rows of h and an int32 seed."""
        raise InvkerasError(f"export: inverters of kind '{self.kind}' cannot be exported yet")

    def latent_space(self) -> dict | None:
        """Which latent space z = E(x) a `latent_likelihood` kind models (its dimension and the
        encoder it came from), so that latent NLLs of different inverters are compared only
        when their z is the same; None for a kind without a latent likelihood."""
        return None

    def autoencoder_reconstruction(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray | None:
        """The reconstruction of images x from their own latent, e.g. an autoencoder's D(E(x)),
        float32 [N, H, W, C] in [0, 255]; None for a kind that has no such latent (`sample`
        then shows no reconstruction column)."""
        return None

    def recorded_nll(self, split: str) -> tuple[np.ndarray, str | None] | None:
        """(per-image NLL, fingerprint of the images) saved at the end of training, if the kind
        keeps them and they belong to this model; None otherwise (then it is evaluated afresh)."""
        return None

    def check_h(self, h: np.ndarray | None, what: str) -> np.ndarray | None:
        """h as float32, refused in one line if its shape is not the one trained on."""
        if h is None:
            if self.conditional:
                raise InvkerasError(f"{what}: inverter of layer '{self.layer}' needs features h")
            return None
        h = np.asarray(h, np.float32)
        if self.h_shape is not None and tuple(h.shape[1:]) != self.h_shape:
            raise InvkerasError(f"{what}: features of shape {tuple(h.shape[1:])}, but the inverter of layer "
                                f"'{self.layer}' was trained on {self.h_shape}")
        if not np.all(np.isfinite(h)):
            raise InvkerasError(f"{what}: features h contain NaN or inf")
        return h

    # --- training and saving, shared by every kind ------------------------------------

    @staticmethod
    def prepare(config: InverterConfig) -> "PairedData":
        """Load the config's pairs, then seed everything: the first thing every kind's `train` does.

        Seeded after loading: loading a classifier to extract its features draws from the
        global RNG (its layers' initialisers, its dropout seeds), so seeding first made the
        inverter's initial weights depend on the classifier's architecture, and two inverters
        of identical features start alike only this way."""
        import keras

        started = time.time()
        train, validation, test, source = paired_arrays(config)
        keras.utils.set_random_seed(config.run_seed)
        image_shape = tuple(int(d) for d in train["x"].shape[1:])
        h_shape = tuple(int(d) for d in train["h"].shape[1:]) if config.conditional else None
        return PairedData(train, validation, test, source, image_shape, h_shape, started)

    @staticmethod
    def fit(trainee, data: "PairedData", config: InverterConfig, *, hooks=(), progress: bool = True,
            non_finite_hint=None):
        """Run the shared training loop on the pairs under the config's schedule."""
        from invkeras.training import Schedule, train

        schedule = Schedule(config.max_steps, config.steps_per_checkpoint, config.patience, config.batch_size,
                            config.run_seed, max_time=config.max_time)
        return train(trainee, data.train, schedule, out_dir=config.out_dir(), settings=config.trajectory(),
                     what=f"train-inverter --kind {config.kind} layer '{config.layer}'", hooks=hooks,
                     progress=progress, non_finite_hint=non_finite_hint, data_source=data.described(config))

    @classmethod
    def save(cls, model, config: InverterConfig, data: PairedData, *, validation: dict, test: dict | None, outcome,
             **extra: Any) -> TrainedInverter:
        """Write inverter.keras atomically, then its metadata (the commit point), then drop the backup."""
        from invkeras.training import BACKUP_DIR, Backup

        path = config.model_path()
        with artifacts.atomic_path(path) as tmp:
            model.save(tmp)
        seconds = time.time() - data.started
        image_shape, h_shape = data.image_shape, data.h_shape
        results = {"validation": validation, "test": test, "steps": outcome.steps, "seconds": seconds,
                   "resumed_from_step": outcome.resumed_from_step, "stopped_early": outcome.stopped_early,
                   "best_step": outcome.best_step, **extra.pop("results", {})}
        artifacts.write_metadata(
            path, kind="inverter", inverter_kind=cls.kind, capabilities=sorted(cls.capabilities), config=config,
            seed=config.seed, data=data.provenance, results=results, layer=config.layer, image_shape=list(image_shape),
            h_shape=list(h_shape) if h_shape else None, history=outcome.history, **extra)
        Backup(path.parent / BACKUP_DIR).remove()  # only once the artefact is complete
        return TrainedInverter(path, cls.kind, config.layer, outcome.steps, validation, test, seconds,
                               outcome.stopped_early, outcome.resumed_from_step)


# --- the registry -------------------------------------------------------------------

_KINDS: dict[str, type[Inverter]] = {}


def register_inverter(cls: type[Inverter]) -> type[Inverter]:
    """Class decorator: make a kind known to the CLI, recipes, analyses and reports."""
    if not cls.kind or not isinstance(cls.kind, str):
        raise TypeError(f"{cls.__name__}: set the class attribute `kind`")
    unknown = set(cls.capabilities) - set(CAPABILITIES)
    if unknown or "sample" not in cls.capabilities:
        raise TypeError(f"{cls.__name__}: capabilities must include 'sample' and be among {CAPABILITIES}")
    kind_field = cls.config_class.model_fields.get("kind")
    if kind_field is None or kind_field.default != cls.kind:
        raise TypeError(f"{cls.__name__}: its config_class needs `kind: Literal[{cls.kind!r}] = {cls.kind!r}`")
    _KINDS[cls.kind] = cls
    return cls


def inverter_kinds() -> dict[str, type[Inverter]]:
    """Every registered kind by name (the built-in ones are registered on import of invkeras.inverters)."""
    import invkeras.inverters  # noqa: F401  (registers the built-in kinds)

    return dict(_KINDS)


def inverter_class(kind: str) -> type[Inverter]:
    kinds = inverter_kinds()
    if kind not in kinds:
        raise InvkerasError(f"--kind {kind}: unknown inverter kind; choose from {', '.join(sorted(kinds))}")
    return kinds[kind]


def config_for(kind: str, options: dict, *, given: set[str] | None = None) -> InverterConfig:
    """A kind's config from a larger option set (the CLI's): options left at None keep the
    kind's defaults; an option the user gave explicitly (`given`) that the kind lacks is an error."""
    cls = inverter_class(kind).config_class
    fields = cls.model_fields
    for name in sorted(given or ()):
        if name not in fields:
            raise InvkerasError(f"--{name.replace('_', '-')}: not an option of inverter kind '{kind}'")
    values = {k: v for k, v in options.items() if k in fields and v is not None and k != "kind"}
    return cls(**values, kind=kind)


def model_file(path: str | Path, *, flag: str = "--inverter") -> Path:
    """The model file of an inverter given as a directory or a file (one home for this lookup)."""
    path = Path(path)
    if path.is_dir():
        for name in (MODEL_FILE, LEGACY_DECODER_FILE):
            if (path / name).is_file():
                return path / name
        path = path / MODEL_FILE
    if not path.exists():
        raise InvkerasError(f"{flag} {path}: file not found (train one with `invkeras train-inverter`)")
    return path


def inverter_kind_of(meta: dict) -> str | None:
    """The kind named by an artefact's metadata, including artefacts from before the interface."""
    if meta.get("kind") == "inverter" and meta.get("inverter_kind"):
        return str(meta["inverter_kind"])
    legacy = {cls.legacy_artifact_kind: name for name, cls in inverter_kinds().items() if cls.legacy_artifact_kind}
    return legacy.get(str(meta.get("kind")))


def load_inverter(path: str | Path, *, flag: str = "--inverter") -> Inverter:
    """Load any kind's inverter from its directory or model file; the metadata picks the class."""
    from invkeras.models import load_keras_model

    file = model_file(path, flag=flag)
    meta = artifacts.read_metadata(file)
    kind = inverter_kind_of(meta or {})
    if meta is None or kind is None:
        raise InvkerasError(f"{flag} {file}: no inverter metadata beside it ({artifacts.metadata_path(file).name})")
    if not isinstance(kind, str) or kind not in inverter_kinds():
        # The file names the kind, not the user: a kind of a plugin not installed here, or a damaged file.
        raise InvkerasError(f"{flag} {file}: its metadata ({artifacts.metadata_path(file)}) names an inverter kind "
                            f"{kind!r} that is not installed; known kinds: {', '.join(sorted(inverter_kinds()))}")
    cls = inverter_class(kind)
    meta = {**meta, "inverter_kind": kind}
    cls.register_layers()
    model = load_keras_model(file, what="inverter", flag=flag)
    return cls(model, meta, file)


def train_inverter(config: InverterConfig, *, hooks=(), progress: bool = True) -> TrainedInverter:
    """Train an inverter of any kind: the checks every kind shares, then the kind's own `train`."""
    cls = inverter_class(config.kind)
    if not config.conditional and not cls.unconditional_ok:
        raise InvkerasError(f"--kind {config.kind} --layer none: kind '{config.kind}' models x given a representation "
                            "h; it has no unconditional form")
    if not config.out and not config.model_path().exists() and cls.legacy_layout:
        old = artifacts.run_dir(config.dataset, config.arch, config.workspace) / cls.legacy_layout.format(
            layer=config.layer)
        if any((old / name).is_file() for name in (MODEL_FILE, LEGACY_DECODER_FILE)):
            raise InvkerasError(f"{old} holds a {config.kind} inverter from an older invkeras; kinds now have their own "
                                f"folders: move it with `mv {old} {config.out_dir()}` to keep it, or delete it")
    return cls.train(config, hooks=hooks, progress=progress)


def nats_to_bits_per_dim(image_shape) -> float:
    return 1.0 / (int(np.prod(image_shape)) * math.log(2))
