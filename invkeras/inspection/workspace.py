"""Where everything of one inspection lives, and the settings that make each piece of it.

`Subject` is what is inspected (its layers, the images' shape, where the pairs come from);
`Workspace` turns it into paths under `<out>` and into the configs of the library's own
steps: an inverter's or the autoencoder's training config, a sample grid's, a comparison's.
Both travel as JSON to the worker processes of `invkeras.inspection.lanes`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from invkeras import artifacts
from invkeras.inspection import plan as planning
from invkeras.inspection.config import InspectConfig
from invkeras.inspection.layers import LayerChoice

ARCH = "inspect"  # the configs' arch: a name only, since every path is given
SAMPLE_GRID = "samples.png"
RECONSTRUCTION_GRID = "samples_reconstruction.png"
COMPARISON = "compare.json"
GRID_BATCH = 64  # every sampling call draws a multiple of this, so each model builds one sampler
# The compare top-k grids: TOPK_INPUTS inputs x TOPK_SAMPLES samples (one sampling batch), best TOP_K shown.
TOPK_INPUTS, TOPK_SAMPLES, TOP_K = 4, 16, 4
MAX_NEIGHBOUR_SEARCH = 20_000  # training images the 1NN search reads at most


@dataclass
class Subject:
    """What is inspected: the layers, where each layer's pairs come from, and the images' facts."""

    layers: list[LayerChoice]
    image_shape: tuple[int, int, int]
    classifier: Path | None  # the copy under <out>, None with user features
    features: dict[str, Path]  # layer -> user features (with --features)
    model_name: str
    dataset: str
    train_examples: int
    entropy_nats: float | None
    num_classes: int | None

    def to_json(self) -> dict:
        return {**asdict(self), "classifier": None if self.classifier is None else str(self.classifier),
                "features": {k: str(v) for k, v in self.features.items()}}

    @classmethod
    def from_json(cls, payload: dict) -> "Subject":
        layers = [LayerChoice(layer["name"], layer["role"], tuple(layer["shape"])) for layer in payload["layers"]]
        return cls(**{**payload, "layers": layers, "image_shape": tuple(payload["image_shape"]),
                      "classifier": None if payload["classifier"] is None else Path(payload["classifier"]),
                      "features": {k: Path(v) for k, v in payload["features"].items()}})


class Workspace:
    """Where each model of an inspection lives, and the config that trains it."""

    def __init__(self, config: InspectConfig, subject: Subject, out: Path):
        self.config, self.subject, self.out = config, subject, out

    def to_json(self) -> dict:
        return {"config": self.config.model_dump(mode="json"), "subject": self.subject.to_json(), "out": str(self.out)}

    @classmethod
    def from_json(cls, payload: dict) -> "Workspace":
        return cls(InspectConfig(**payload["config"]), Subject.from_json(payload["subject"]), Path(payload["out"]))

    def inverter_dir(self, kind: str, layer: str) -> Path:
        return self.out / "inverters" / kind / layer

    def autoencoder_dir(self) -> Path:
        return self.out / "autoencoder"

    def job_dir(self, job: planning.Job) -> Path:
        return self.autoencoder_dir() if job.kind == planning.AUTOENCODER else self.inverter_dir(job.kind, job.layer)

    def model_file(self, job: planning.Job) -> Path:
        from invkeras.autoencoders.training import MODEL_FILE as AUTOENCODER_FILE
        from invkeras.inverters import MODEL_FILE

        return self.job_dir(job) / (AUTOENCODER_FILE if job.kind == planning.AUTOENCODER else MODEL_FILE)

    def finished(self, job: planning.Job) -> bool:
        return artifacts.is_complete(self.model_file(job))

    def progress(self, job: planning.Job) -> dict:
        """The resume state of an unfinished job: its step and the seconds its loop used."""
        from invkeras.training import BACKUP_DIR, Backup

        return Backup(self.job_dir(job) / BACKUP_DIR).progress() or {"step": 0, "seconds": 0.0}

    def data_options(self, layer: str) -> dict:
        config, subject = self.config, self.subject
        options = dict(seed=config.seed, workspace=str(self.out), arch=ARCH, eval_examples=config.eval_examples,
                       layer=layer)
        if subject.features:
            source = subject.features.get(layer) or next(iter(subject.features.values()))
            options.update(features=str(source), dataset=config.dataset or "procedural")
        else:
            options.update(dataset=config.dataset, data_dir=config.data_dir, model=str(subject.classifier))
        return options

    def job_config(self, job: planning.Job, **schedule):
        """The config that trains `job`, with `schedule` (max_steps, max_time) on top."""
        if job.kind == planning.AUTOENCODER:
            from invkeras.autoencoders.training import AutoencoderConfig

            source = self.data_options("none")
            return AutoencoderConfig(dataset=source["dataset"], data_dir=source.get("data_dir"), seed=self.config.seed,
                                     out=str(self.autoencoder_dir()), eval_examples=self.config.eval_examples,
                                     steps_per_checkpoint=job.steps_per_checkpoint, **schedule)
        from invkeras.inverters import config_for

        options = {**self.data_options(job.layer), **planning.quick_training(job.kind).settings,
                   "out": str(self.job_dir(job)), "steps_per_checkpoint": job.steps_per_checkpoint, **schedule}
        from invkeras.inverters import inverter_class

        if "autoencoder" in inverter_class(job.kind).config_class.model_fields:  # a kind over a latent
            options["autoencoder"] = str(self.autoencoder_dir())
        return config_for(job.kind, options)

    def train(self, job: planning.Job, config, *, hooks=(), progress: bool = True):
        if job.kind == planning.AUTOENCODER:
            from invkeras.autoencoders.training import train_autoencoder

            return train_autoencoder(config, hooks=hooks, progress=progress)
        from invkeras.inverters import train_inverter

        return train_inverter(config, hooks=hooks, progress=progress)


# --- evaluation settings ---------------------------------------------------------------------


def evaluation_sizes(config: InspectConfig, subject: Subject) -> planning.EvaluationSizes:
    height, width, _ = subject.image_shape
    dims = max((int(np.prod([d or 1 for d in layer.shape])) for layer in subject.layers), default=1)
    return planning.EvaluationSizes(
        image_pixels=height * width, grid_images=grid_total(config),
        compare_images=compare_images(config), compare_samples=config.compare_samples,
        topk_images=TOPK_INPUTS * TOPK_SAMPLES, train_examples=min(subject.train_examples, MAX_NEIGHBOUR_SEARCH),
        feature_dims=dims)


def grid_total(config: InspectConfig) -> int:
    return config.grid_inputs * config.grid_samples


def compare_images(config: InspectConfig) -> int:
    """The comparison's images, rounded so that its samples fill whole sampling batches."""
    per_batch = GRID_BATCH // math.gcd(GRID_BATCH, config.compare_samples)
    return max(per_batch, config.compare_images // per_batch * per_batch)


def sample_config(workspace: Workspace, kind: str, layer: str):
    from invkeras.analyses.samples import SampleConfig

    config = workspace.config
    return SampleConfig(inverter=str(workspace.inverter_dir(kind, layer)), num_inputs=config.grid_inputs,
                        num_samples=config.grid_samples, seed=config.seed, batch_size=GRID_BATCH)


def compare_config(workspace: Workspace, kinds: Sequence[str], layer: str):
    from invkeras.analyses.compare import CompareConfig

    config = workspace.config
    return CompareConfig(inverters=[str(workspace.inverter_dir(kind, layer)) for kind in kinds],
                         num_images=compare_images(config), num_samples=config.compare_samples, seed=config.seed,
                         top_k=TOP_K, grid_samples=TOPK_SAMPLES, grid_inputs=TOPK_INPUTS, batch_size=GRID_BATCH,
                         max_train_examples=MAX_NEIGHBOUR_SEARCH, out=str(workspace.out / "comparisons" / layer))


def made_with(path: Path, config) -> bool:
    """An artefact is done when it is complete and was made with these very settings."""
    if not artifacts.is_complete(path):
        return False
    recorded = (artifacts.read_metadata(path) or {}).get("config") or {}
    wanted = config.model_dump(mode="json")
    return all(recorded.get(k) == v for k, v in wanted.items() if k not in ("inverter", "inverters", "out"))


def layer_evaluated(workspace: Workspace, layer: str, kinds: Sequence[str]) -> bool:
    grids = grids_of(workspace, layer, kinds)
    comparison = workspace.out / "comparisons" / layer / COMPARISON
    needs_comparison = workspace.subject.classifier is not None
    return all(artifacts.is_complete(path) for path in grids) and (not needs_comparison or
                                                                   artifacts.is_complete(comparison))


def shown_kinds(kinds: Sequence[str]) -> tuple[list[str], tuple[str, str] | None]:
    """(kinds whose samples get a grid, (sampling kind, point-estimate kind) shown side by side).

    Each kind that draws samples gets a grid, and the first of them is shown beside the first
    point estimate (the MSE reconstruction); a point estimate gets a grid of its own only
    where no kind draws samples."""
    sampling, points = planning.sampling_kinds(kinds), planning.point_estimate_kinds(kinds)
    return (sampling or points), ((sampling[0], points[0]) if sampling and points else None)


def grids_of(workspace: Workspace, layer: str, kinds: Sequence[str]) -> list[Path]:
    """The grids a layer's evaluation writes (see `shown_kinds`)."""
    shown, beside = shown_kinds(kinds)
    grids = [workspace.inverter_dir(kind, layer) / SAMPLE_GRID for kind in shown]
    if beside:
        grids.append(workspace.inverter_dir(beside[0], layer) / RECONSTRUCTION_GRID)
    return grids
