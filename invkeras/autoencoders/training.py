"""Train an autoencoder in the shared resumable loop and write it with its figures.

`train_autoencoder(AutoencoderConfig(...))` writes, under
`runs/<dataset>/autoencoders/<name>/` (name default `latent<d>`):

    autoencoder.keras (+ .meta.json)        the model (best validation L1), nested "encoder"
                                            and "decoder"; results: held-out L1 and PSNR, the
                                            mean image's L1, and a classifier's accuracy on
                                            reconstructions when `classifier` is given
    reconstructions.png (+ .meta.json)      held-out images (left) beside their reconstructions
    backup/                                 resume state, deleted once training finishes
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError

MODEL_FILE = "autoencoder.keras"
GRID_FILE = "reconstructions.png"
GRID_ROWS = 8
NON_TRAJECTORY_FIELDS = ("max_steps", "patience", "out", "workspace", "eval_examples", "classifier", "name")


class AutoencoderConfig(BaseModel):
    """Every setting of `invkeras train-autoencoder`; saved verbatim in the model's metadata."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "procedural"
    data_dir: Optional[str] = None
    latent_dim: Optional[int] = Field(None, gt=0, description="default 64 for grey images, 128 for colour")
    filters: int = Field(32, gt=0)
    loss: Literal["l1", "l2"] = "l1"
    latent_noise: float = Field(0.1, ge=0, description="std of Gaussian noise added to z in training")
    kl_weight: float = Field(1e-3, ge=0, description="weight of the |z|^2/2 penalty (a fixed-variance KL)")
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    max_steps: int = Field(3000, gt=0)
    steps_per_checkpoint: int = Field(250, gt=0)
    patience: int = Field(5, ge=0)
    train_examples: Optional[int] = Field(None, gt=0)
    eval_examples: Optional[int] = Field(None, gt=0, description="cap on validation/test images evaluated")
    classifier: Optional[str] = Field(None, description="classifier .keras or run dir: its accuracy on reconstructions")
    classifier_weight: float = Field(0.0, ge=0, description="weight of a perceptual term comparing the classifier's "
                                     "outputs on the reconstruction and on the original (needs classifier); 0 trains "
                                     "on pixels alone")
    classifier_term: Literal["logits", "kl"] = Field(
        "logits", description="the perceptual term: logits, the squared error of the logits; kl, the KL divergence "
        "of the class probabilities (distillation)")
    seed: int = 0
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    name: Optional[str] = Field(None, description="folder name under runs/<dataset>/autoencoders/ (default latent<d>)")
    out: Optional[str] = Field(None, description="output directory (overrides workspace and name)")

    @model_validator(mode="after")
    def _classifier_term_needs_a_classifier(self):
        if self.classifier_weight > 0 and not self.classifier:
            raise ValueError(f"classifier_weight {self.classifier_weight:g} needs a classifier (--classifier)")
        return self

    def non_trajectory_fields(self) -> tuple[str, ...]:
        """With a classifier term, the classifier shapes training, so a resume under another is refused;
        without one, the term's kind changes nothing."""
        if self.classifier_weight > 0:
            return tuple(f for f in NON_TRAJECTORY_FIELDS if f != "classifier")
        return NON_TRAJECTORY_FIELDS + ("classifier_term",)

    def resolved_latent_dim(self, image_shape) -> int:
        from invkeras.autoencoders.network import default_latent_dim

        return self.latent_dim or default_latent_dim(image_shape)

    def out_dir(self, latent_dim: int | None = None) -> Path:
        if self.out:
            return Path(self.out)
        name = self.name or f"latent{self.latent_dim or latent_dim}"
        return autoencoder_dir(self.dataset, name, self.workspace)

    def model_path(self, latent_dim: int | None = None) -> Path:
        if not (self.out or self.name or self.latent_dim or latent_dim):
            from invkeras.data import dataset_info  # the default latent size depends on the images

            shape = dataset_info(self.dataset, data_dir=self.data_dir, seed=self.seed).image_shape
            latent_dim = self.resolved_latent_dim(shape)
        return self.out_dir(latent_dim) / MODEL_FILE


def autoencoder_dir(dataset: str, name: str, workspace: str | Path = artifacts.DEFAULT_WORKSPACE) -> Path:
    """`runs/<dataset>/autoencoders/<name>`: autoencoders belong to a dataset, not a classifier."""
    return artifacts.autoencoder_dir(dataset, name, workspace)


@dataclass
class TrainedAutoencoder:
    model_path: Path
    grid_path: Path
    latent_dim: int
    steps: int
    validation: dict
    test: dict | None
    seconds: float
    resumed_from_step: int = 0


# --- evaluation -------------------------------------------------------------------------


def reconstruct(autoencoder, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """x_hat, float32 [N, H, W, C] in [0, 255] (inference: no latent noise)."""
    import keras

    parts = [keras.ops.convert_to_numpy(autoencoder(np.asarray(x[i : i + batch_size], "float32"), training=False))
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def reconstruction_summary(x: np.ndarray, x_hat: np.ndarray, mean_image: np.ndarray | None = None) -> dict:
    """Held-out L1 per pixel (0..255) with its standard error, MSE, PSNR, and the mean image's L1."""
    from invkeras.inverters.base import headline_summary

    diff = np.asarray(x_hat, np.float64) - np.asarray(x, np.float64)
    l1 = np.abs(diff).reshape(len(diff), -1).mean(1)
    mse = float((diff**2).mean())
    summary = headline_summary("L1 per pixel", l1)
    summary.update(l1_per_pixel=summary["headline"]["value"], se=summary["headline"]["se"], mse_per_pixel=mse,
                   psnr_db=10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf"))
    if mean_image is not None:
        summary["mean_image_l1_per_pixel"] = float(np.abs(np.asarray(x, np.float64) - mean_image).mean())
    return summary


def classifier_accuracy(classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    logits = classifier.predict(np.asarray(x, "float32"), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


# --- training -----------------------------------------------------------------------


def train_autoencoder(config: AutoencoderConfig, *, hooks=(), progress: bool = True) -> TrainedAutoencoder:
    """Train, evaluate and save an autoencoder; rerunning after a kill resumes where it stopped."""
    import keras

    from invkeras.autoencoders.network import build_autoencoder
    from invkeras.data import load_arrays
    from invkeras.data.registry import capped_positions
    from invkeras.reports.grids import save_grid, to_uint8
    from invkeras.training import BACKUP_DIR, Backup, CompiledModelTrainee, Schedule, train, trajectory_settings

    started = time.time()
    keras.utils.set_random_seed(config.seed)
    x, _ = load_arrays(config.dataset, "train", data_dir=config.data_dir, seed=config.seed, limit=config.train_examples)
    val_x, val_y = load_arrays(config.dataset, "validation", data_dir=config.data_dir, seed=config.seed,
                               limit=config.eval_examples)
    test_x, test_y = load_arrays(config.dataset, "test", data_dir=config.data_dir, seed=config.seed,
                                 limit=config.eval_examples)
    if len(val_x) == 0:
        raise InvkerasError(f"train-autoencoder: dataset {config.dataset!r} has no validation examples")
    image_shape = tuple(int(d) for d in x.shape[1:])
    latent_dim = config.resolved_latent_dim(image_shape)
    out = config.model_path(latent_dim)
    classifier = None
    if config.classifier:
        from invkeras.data.features import load_model

        classifier = load_model(config.classifier)
        expected = tuple(classifier.input_shape[1:])
        if expected != image_shape:
            raise InvkerasError(f"--classifier {config.classifier}: it takes images of shape {expected}, the dataset "
                                f"{config.dataset!r} has {image_shape}")

    model = build_autoencoder(image_shape, latent_dim, config.filters, noise=config.latent_noise,
                              kl_weight=config.kl_weight, seed=config.seed)
    from invkeras.autoencoders.network import PixelLoss
    from invkeras.distribution import training_jit

    trained = model
    if config.classifier_weight > 0:
        from invkeras.autoencoders.network import with_classifier_term

        trained = with_classifier_term(model, classifier, config.classifier_weight, config.classifier_term)
    trained.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=PixelLoss(config.loss),
                    jit_compile=training_jit())  # off under TF, on under JAX
    mean_image = x.astype(np.float64).mean(axis=0)

    def validate():
        return {"val_loss": reconstruction_summary(val_x, reconstruct(model, val_x))["l1_per_pixel"]}

    trainee = CompiledModelTrainee(trained, inputs=lambda b: b["x"].astype("float32"),
                                   targets=lambda b: b["x"].astype("float32"), validate=validate)
    schedule = Schedule(config.max_steps, config.steps_per_checkpoint, config.patience, config.batch_size, config.seed)
    settings = trajectory_settings(config, config.non_trajectory_fields())
    settings["latent_dim"] = latent_dim
    outcome = train(trainee, {"x": x}, schedule, out_dir=out.parent, settings=settings,
                    what=f"train-autoencoder on {config.dataset}", hooks=hooks, progress=progress,
                    non_finite_hint=lambda: "try a lower --learning-rate")

    results = {}
    for split, images, labels in (("validation", val_x, val_y), ("test", test_x, test_y)):
        if len(images) == 0:
            results[split] = None
            continue
        x_hat = reconstruct(model, images)
        summary = reconstruction_summary(images, x_hat, mean_image)
        if classifier is not None:
            summary["classifier_accuracy_on_reconstructions"] = classifier_accuracy(classifier, to_uint8(x_hat), labels)
            summary["classifier_accuracy_on_originals"] = classifier_accuracy(classifier, images, labels)
        results[split] = summary
    if not math.isfinite(results["validation"]["l1_per_pixel"]):
        raise NonFiniteLossError("train-autoencoder: validation L1 is not finite")

    shown_split, shown = ("test", test_x) if len(test_x) else ("validation", val_x)
    positions = capped_positions(len(shown), GRID_ROWS)  # a fair sample: a split may be sorted by class
    positions = np.arange(min(len(shown), GRID_ROWS)) if positions is None else positions
    shown = shown[positions]
    pairs = to_uint8(reconstruct(model, shown))
    grid = save_grid(out.parent / GRID_FILE, [[shown[i], pairs[i]] for i in range(len(pairs))])
    seconds = time.time() - started
    data = {"dataset": config.dataset, "image_shape": list(image_shape), "train_examples": len(x),
            "validation_examples": len(val_x), "test_examples": len(test_x)}
    with artifacts.atomic_path(out) as tmp:
        model.save(tmp)
    artifacts.write_metadata(grid, kind="autoencoder-reconstructions", config=config, seed=config.seed, data=data,
                             autoencoder=str(out),
                             results={"rows": len(pairs), "columns": ["original", "reconstruction"],
                                      "split": shown_split, "positions": positions.tolist()})
    artifacts.write_metadata(
        out, kind="autoencoder", config=config, seed=config.seed, data=data, latent_dim=latent_dim,
        image_shape=list(image_shape), history=outcome.history,
        results={**results, "steps": outcome.steps, "best_step": outcome.best_step, "seconds": seconds,
                 "resumed_from_step": outcome.resumed_from_step, "stopped_early": outcome.stopped_early,
                 "classifier": str(config.classifier) if config.classifier else None})
    Backup(out.parent / BACKUP_DIR).remove()
    return TrainedAutoencoder(out, grid, latent_dim, outcome.steps, results["validation"], results["test"], seconds,
                              outcome.resumed_from_step)


# --- loading ------------------------------------------------------------------------


def autoencoder_file(path: str | Path, flag: str = "--autoencoder") -> Path:
    from invkeras.models import model_file

    return model_file(path, MODEL_FILE, flag=flag, missing="file not found (train one with `invkeras train-autoencoder`)")


def load_autoencoder(path: str | Path, flag: str = "--autoencoder"):
    """(model, metadata) of an autoencoder given as its directory or .keras file; one line if unusable."""
    import invkeras.autoencoders.network  # noqa: F401  (registers its layers)
    from invkeras.models import load_keras_model

    file = autoencoder_file(path, flag)
    meta = artifacts.read_metadata(file)
    if not meta or meta.get("kind") != "autoencoder":
        raise InvkerasError(f"{flag} {file}: no autoencoder metadata beside it (train one with "
                            "`invkeras train-autoencoder`)")
    model = load_keras_model(file, what="autoencoder", flag=flag)
    return model, meta
