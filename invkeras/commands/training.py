"""The commands that train and export a classifier and its companions: `train-classifier`,
`extract`, `export`, `train-autoencoder` and `ground-truth` (`train-inverter` has its own
module, for the options of each kind)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict

from invkeras import artifacts
from invkeras.analyses.ground_truth import GroundTruthConfig, RESULT_FILE, ground_truth
from invkeras.autoencoders.training import AutoencoderConfig, train_autoencoder
from invkeras.commands.base import (DATA_DIR_HELP, Command, StepAccess, classifier_files, config_of, given,
                                    model_files, register_command)
from invkeras.commands.tables import console, headline_text, robust_rows, table
from invkeras.data.features import ExtractConfig, MANIFEST, extract_features, resolve_model_path
from invkeras.errors import InvkerasError


# --- classifier ---------------------------------------------------------------


def parse_steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvkerasError(f"--save-at {text!r}: expected comma-separated step counts, e.g. 0,100,1000") from None


def cli_train_classifier(
    dataset: str = typer.Option("procedural", help="Dataset spec (see `invkeras datasets`)."),
    arch: str = typer.Option("conv", help="conv | conv-gpool | fc (Nash et al. 2019)."),
    epochs: int = typer.Option(20, help="Maximum epochs (early stopping on validation accuracy)."),
    steps_per_epoch: Optional[int] = typer.Option(
        None, help="Make an epoch N steps of the repeated training set (validation every N steps)."),
    batch_size: int = typer.Option(128),
    learning_rate: float = typer.Option(3e-4, help="Adam learning rate."),
    lr_schedule: str = typer.Option("constant", help="constant | cosine: decay the learning rate to zero over "
                                                     "--epochs along half a cosine."),
    patience: int = typer.Option(3, help="Early-stopping patience in epochs."),
    save_at: str = typer.Option("", help="Comma-separated global steps at which to save checkpoints, e.g. 0,100,1000."),
    train_examples: Optional[int] = typer.Option(None, help="Train on N examples only, a fixed sample."),
    dropout: bool = typer.Option(True, "--dropout/--no-dropout", help="Dropout at every layer."),
    augment: str = typer.Option("none", help="none | flip-shift: flip training images left-right and shift them up "
                                             "to 4 pixels (photographs; never digits)."),
    seed: int = typer.Option(0),
    strategy: str = typer.Option("auto", help="auto | mirrored (TensorFlow) | data-parallel (JAX) | default."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    workspace: str = typer.Option("runs", help="Root of runs/<dataset>/<arch>/..."),
    run: Optional[str] = typer.Option(None, help="Run folder runs/<dataset>/<run>/ [default: the arch]; "
                                                 "a second classifier of one arch (a robust one) needs its own."),
    out: Optional[str] = typer.Option(None, help="Model path (default runs/<dataset>/<arch>/classifier/model.keras)."),
    adversarial: Optional[str] = typer.Option(
        None, help="none | pgd: train on PGD adversarial examples only (Madry et al. 2018) [default: none]."),
    epsilon: Optional[float] = typer.Option(
        None, help="L-inf radius on [0, 1] pixels (MNIST: 0.3); robust accuracy under PGD is reported whenever set."),
    pgd_steps: Optional[int] = typer.Option(None, help="PGD steps [default: 10]."),
    pgd_step_size: Optional[float] = typer.Option(None, help="PGD step size on [0, 1] pixels [default: 2.5 * eps / steps]."),
    robust_eval_examples: Optional[int] = typer.Option(
        None, help="Robust accuracy on N test images only, a fixed sample [default: all]."),
) -> None:
    """Train one of the paper's classifiers (layers conv1, conv2, fc3, logits), optionally robust to PGD."""
    from invkeras.classifiers.training import ClassifierConfig
    from invkeras.classifiers.training import train_classifier as train

    config = ClassifierConfig(
        dataset=dataset,
        arch=arch,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_schedule=lr_schedule,
        patience=patience,
        save_at=parse_steps(save_at),
        train_examples=train_examples,
        dropout=dropout,
        augment=augment,
        seed=seed,
        strategy=strategy,
        data_dir=data_dir,
        workspace=workspace,
        out=out,
        **given(dict(run=run, adversarial=adversarial, epsilon=epsilon, pgd_steps=pgd_steps, pgd_step_size=pgd_step_size,
                      robust_eval_examples=robust_eval_examples)),
    )
    result = train(config)
    rows = [
        ["model", result.model_path],
        ["test accuracy", f"{result.test_accuracy:.4f}"],
        *robust_rows(result, config),
        ["best validation accuracy", f"{result.best_val_accuracy:.4f}"],
        ["epochs", result.epochs],
        ["steps", result.steps],
        ["checkpoints", len(result.checkpoints)],
        ["wall time", f"{result.seconds:.1f} s"],
    ]
    console.print(table(f"Classifier {arch} on {dataset}", ["", "value"], rows))


@register_command
class TrainClassifier(Command):
    name = "train-classifier"
    examples = (
        "invkeras train-classifier --dataset procedural --arch conv --epochs 3",
        "invkeras train-classifier --dataset mnist --arch conv --save-at 0,100,1000",
        "invkeras train-classifier --dataset mnist --train-examples 100 --no-dropout --batch-size 100 --steps-per-epoch 1000 --epochs 100 --save-at 0,100,1000,10000,100000   # overfitted regime",
        "invkeras train-classifier --dataset mnist --adversarial pgd --epsilon 0.3 --pgd-steps 10 --out runs/mnist/conv-robust/classifier/model.keras   # robust (Madry et al. 2018)",
        "invkeras train-classifier --dataset mnist --epsilon 0.3   # standard training, robust accuracy reported",
    )
    config = "invkeras.classifiers.training:ClassifierConfig"
    cli = staticmethod(cli_train_classifier)

    @staticmethod
    def run(step) -> str:
        from invkeras.classifiers.training import ClassifierConfig, train_classifier

        result = train_classifier(config_of(step, ClassifierConfig))
        robust = "" if result.robust_accuracy is None else f", robust accuracy {result.robust_accuracy:.4f}"
        return f"test accuracy {result.test_accuracy:.4f}{robust}"

    @staticmethod
    def outputs(step):
        return [step.model_path()]

    @staticmethod
    def product(step, checkpoint: int | None = None) -> Path:
        """The trained model, or with `checkpoint: N` its checkpoint at global step N (`save_at`)."""
        if checkpoint is None:
            return step.model_path()
        if checkpoint not in step.save_at:
            raise ValueError(f"checkpoint {checkpoint} is not saved by this step (save_at: {step.save_at})")
        from invkeras.classifiers.training import CHECKPOINT_DIR

        return step.model_path().parent / CHECKPOINT_DIR / f"step-{checkpoint:06d}.keras"

    @staticmethod
    def access(step) -> StepAccess:
        model = step.model_path()
        return StepAccess([], [model, model.parent / "checkpoints", model.parent / "backup"])


# --- extract ------------------------------------------------------------------


def cli_extract(
    layer: List[str] = typer.Option(..., "--layer", "-l", help="Layer name (repeatable)."),
    dataset: str = typer.Option("procedural", help="Dataset spec (see `invkeras datasets`)."),
    model: Optional[str] = typer.Option(None, help="A .keras file or run directory (default: the run for --dataset/--arch)."),
    arch: str = typer.Option("conv", help="Which default run to use when --model is not given."),
    split: List[str] = typer.Option(["train", "validation", "test"], "--split", "-s", help="Split (repeatable)."),
    out: Optional[str] = typer.Option(None, help="Root directory (default runs/<dataset>/<arch>/features)."),
    batch_size: int = typer.Option(256),
    shard_size: int = typer.Option(4096, help="Examples per .npz shard."),
    limit: Optional[int] = typer.Option(None, help="At most N examples per split, a fixed sample of each."),
    seed: int = typer.Option(0, help="Seed for carving splits the source lacks."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    workspace: str = typer.Option("runs"),
) -> None:
    """Stream (image, representation) pairs from named layers into .npz shards plus a manifest."""
    import json


    config = ExtractConfig(
        dataset=dataset,
        model=model,
        arch=arch,
        layers=layer,
        splits=split,
        out=out,
        batch_size=batch_size,
        shard_size=shard_size,
        limit=limit,
        seed=seed,
        data_dir=data_dir,
        workspace=workspace,
    )
    written = extract_features(config)
    rows = []
    for name, splits in written.items():
        for split_name, manifest_path in splits.items():
            manifest = json.loads(Path(manifest_path).read_text())
            rows.append([name, split_name, manifest["num_examples"], tuple(manifest["h_shape"]), Path(manifest_path).parent])
    console.print(table("Extracted features", ["layer", "split", "examples", "h shape", "directory"], rows))


@register_command
class Extract(Command):
    name = "extract"
    config = ExtractConfig
    examples = (
        "invkeras extract --dataset procedural --layer conv1 --layer fc3",
        "invkeras extract --model my_model.keras --layer dense_1 --dataset mnist --split test --out feats/",
    )
    cli = staticmethod(cli_extract)

    @staticmethod
    def run(step) -> str:
        written = extract_features(config_of(step, ExtractConfig))
        return f"{len(written)} layer(s) x {len(step.splits)} split(s)"

    @staticmethod
    def outputs(step):
        return [step.split_dir(layer, split) / MANIFEST for layer in step.layers for split in step.splits]

    @staticmethod
    def access(step) -> StepAccess:
        dirs = [step.split_dir(layer, split) for layer in step.layers for split in step.splits]
        return StepAccess(classifier_files(step.model_path()), dirs, whole_features=[] if step.limit else dirs)


# --- export -------------------------------------------------------------------


class ExportStep(BaseModel):
    """A recipe step exporting a classifier (`model`: a .keras file or run directory) to `out`."""
    model_config = ConfigDict(extra="forbid")
    command: Literal["export"]
    model: str
    out: str


def cli_export(
    out: str = typer.Option(..., help="Directory for the TF SavedModel."),
    model: Optional[str] = typer.Option(None, help="A classifier: .keras file or run directory."),
    inverter: Optional[str] = typer.Option(None, help="An inverter directory (signatures log_prob, sample, ...)."),
    batch_size: int = typer.Option(16, help="Rows of h per call of an inverter's `sample` signature."),
) -> None:
    """Export a classifier or an inverter as a TensorFlow SavedModel (for TF Serving and friends)."""
    from invkeras.export import export_inverter, export_saved_model

    if (model is None) == (inverter is None):
        raise InvkerasError("export: give exactly one of --model or --inverter")
    if inverter is not None:
        path = export_inverter(inverter, out, batch_size=batch_size)
        source = inverter
    else:
        source = resolve_model_path(model)
        path = export_saved_model(source, out)
    console.print(table("Export", ["", "value"], [["source", source], ["SavedModel", path]]))


@register_command
class Export(Command):
    name = "export"
    step_schema = ExportStep
    examples = (
        "invkeras export --model runs/procedural/conv --out exported/procedural-conv",
        "invkeras export --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --out exported/fc3-pixelcnn",
    )
    cli = staticmethod(cli_export)

    @staticmethod
    def run(step) -> str:
        from invkeras.export import export_saved_model

        return f"SavedModel at {export_saved_model(step.model, step.out)}"

    @staticmethod
    def outputs(step):
        return [Path(step.out)]  # export writes <out>.meta.json beside the directory

    @staticmethod
    def access(step) -> StepAccess:
        from invkeras.inverters.base import MODEL_FILE

        out = Path(step.out)
        return StepAccess(model_files(step.model, "classifier/model.keras", "model.keras", MODEL_FILE),
                          [out, artifacts.metadata_path(out)])


# --- autoencoder --------------------------------------------------------------


def cli_train_autoencoder(
    dataset: Optional[str] = typer.Option(None, help="Dataset spec (see `invkeras datasets`) [default: procedural]."),
    latent_dim: Optional[int] = typer.Option(None, help="Latent size [default: 64 for grey, 128 for colour images]."),
    filters: Optional[int] = typer.Option(None, help="Convolution width [default: 32]."),
    loss: Optional[str] = typer.Option(None, help="Reconstruction loss: l1 | l2 [default: l1]."),
    latent_noise: Optional[float] = typer.Option(None, help="Std of the noise added to z in training [default: 0.1]."),
    kl_weight: Optional[float] = typer.Option(None, help="Weight of the |z|^2/2 penalty [default: 0.001]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 64]"),
    learning_rate: Optional[float] = typer.Option(None, help="Adam learning rate [default: 0.001]."),
    max_steps: Optional[int] = typer.Option(None, help="Optimiser steps at most [default: 3000]."),
    steps_per_checkpoint: Optional[int] = typer.Option(None, help="Steps between checkpoints [default: 250]."),
    patience: Optional[int] = typer.Option(None, help="Checkpoint intervals without improvement [default: 5]."),
    train_examples: Optional[int] = typer.Option(None, help="Train on N images only, a fixed sample."),
    eval_examples: Optional[int] = typer.Option(None, help="Cap on validation/test images evaluated."),
    classifier: Optional[str] = typer.Option(None, help="Classifier .keras or run dir: its accuracy on reconstructions."),
    classifier_weight: Optional[float] = typer.Option(
        None, help="Weight of a perceptual term comparing the classifier's outputs on reconstruction and original "
                   "(needs --classifier) [default: 0]."),
    classifier_term: Optional[str] = typer.Option(
        None, help="The perceptual term: logits (squared error of the logits) | kl (KL divergence of the class "
                   "probabilities) [default: logits]."),
    seed: Optional[int] = typer.Option(None),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    workspace: Optional[str] = typer.Option(None, help="Root of runs/<dataset>/autoencoders/<name> [default: runs]."),
    name: Optional[str] = typer.Option(None, help="Folder name under runs/<dataset>/autoencoders/ [default: latent<d>]."),
    out: Optional[str] = typer.Option(None, help="Output directory (overrides --workspace and --name)."),
) -> None:
    """Train a convolutional autoencoder x -> z -> x_hat, the latent space of `--kind cinn` inverters
    (Rombach et al. 2020): held-out L1 and PSNR, a reconstruction grid, resumable."""
    options = given(locals())

    result = train_autoencoder(AutoencoderConfig(**options))
    rows = [["model", result.model_path], ["grid", result.grid_path], ["latent dim", result.latent_dim],
            ["steps", result.steps], ["wall time", f"{result.seconds:.1f} s"]]
    for split, summary in (("validation", result.validation), ("test", result.test)):
        if summary:
            rows.append([f"{split} L1 per pixel (mean image)",
                         f"{headline_text(summary['headline'])} ({summary['mean_image_l1_per_pixel']:.2f})"])
            rows.append([f"{split} PSNR", f"{summary['psnr_db']:.2f} dB"])
            if "classifier_accuracy_on_reconstructions" in summary:
                rows.append([f"{split} classifier accuracy, reconstructions (originals)",
                             f"{summary['classifier_accuracy_on_reconstructions']:.4f} "
                             f"({summary['classifier_accuracy_on_originals']:.4f})"])
    console.print(table(f"Autoencoder on {result.model_path.parent}", ["", "value"], rows))


@register_command
class TrainAutoencoder(Command):
    """An autoencoder whose latent `train-inverter` steps of kind cinn model (their `autoencoder` key)."""
    name = "train-autoencoder"
    config = AutoencoderConfig
    examples = (
        "invkeras train-autoencoder --dataset mnist --latent-dim 64",
        "invkeras train-autoencoder --dataset procedural --latent-dim 16 --max-steps 1000 --classifier runs/procedural/conv",
        "invkeras train-inverter --kind cinn --dataset procedural --layer fc3 --autoencoder runs/procedural/autoencoders/latent16     # then a cINN over its latent",
    )
    cli = staticmethod(cli_train_autoencoder)

    @staticmethod
    def run(step) -> str:
        result = train_autoencoder(config_of(step, AutoencoderConfig))
        return f"latent {result.latent_dim}: held-out L1 per pixel {result.validation['l1_per_pixel']:.2f}, " \
               f"PSNR {result.validation['psnr_db']:.1f} dB"

    @staticmethod
    def outputs(step):
        return [step.model_path()]

    @staticmethod
    def access(step) -> StepAccess:
        reads = classifier_files(step.classifier) if step.classifier else []
        return StepAccess(reads, [step.model_path().parent])


# --- ground truth -------------------------------------------------------------


def cli_ground_truth(
    subset: List[str] = typer.Option([], "--subset", help="Factor subset: all, none, or names joined by + "
                                     "(shape, size, row, col, intensity); repeatable."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps per inverter [default: 1500]."),
    steps_per_checkpoint: Optional[int] = typer.Option(None, help="[default: 500]"),
    filters: Optional[int] = typer.Option(None, help="PixelCNN++ filters [default: 16]."),
    learning_rate: Optional[float] = typer.Option(None, help="[default: 0.003]"),
    eval_examples: Optional[int] = typer.Option(None, help="Validation and test images per subset [default: 500]."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    workspace: Optional[str] = typer.Option(None, help="[default: runs]"),
    name: Optional[str] = typer.Option(None, help="Folder under <workspace>/procedural/ [default: ground-truth]."),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/procedural/ground-truth)."),
) -> None:
    """The bound against the truth: on the procedural dataset, with h a subset of its factors, H(x|h) is exact.
    Trains one PixelCNN++ per subset (finished ones are reused) and tables test NLL, truth and gap."""
    options = given(locals())

    if subset:
        options["subsets"] = options.pop("subset")
    else:
        options.pop("subset")
    result = ground_truth(GroundTruthConfig(**options))
    rows = [[r["subset"], f"{r['true_nats']:.3f}", f"{r['estimate_nats']:.3f} ± {r['se_nats']:.3f}",
             f"{r['gap_nats']:+.3f}", "yes" if r["within_tolerance"] else "no",
             "yes" if r["bound_holds"] else "VIOLATED"] for r in result["rows"]]
    console.print(table(f"H*(x|h) vs exact H(x|h), nats per image (test, {result['rows'][0]['num_images']} images)",
                         ["h = factors", "exact", "estimate ± se", "gap", f"within {result['tolerance_nats']}",
                          "bound"], rows))
    console.print(f"written: {result['path']} and {result['plot']}")


@register_command
class GroundTruth(Command):
    """One PixelCNN++ per subset of the procedural factors, its test NLL beside the exact H(x|h)."""
    name = "ground-truth"
    config = GroundTruthConfig
    examples = (
        "invkeras ground-truth                       # 6 subsets, from all factors to none",
        "invkeras ground-truth --subset all --subset shape+size --subset none --max-steps 3000",
    )
    cli = staticmethod(cli_ground_truth)

    @staticmethod
    def run(step) -> str:
        result = ground_truth(config_of(step, GroundTruthConfig))
        worst = max(result["rows"], key=lambda r: abs(r["gap_nats"]))
        return (f"{len(result['rows'])} subsets; largest gap {worst['gap_nats']:+.2f} nats ({worst['subset']}); "
                f"bounds {'hold' if result['all_bounds_hold'] else 'VIOLATED'}")

    @staticmethod
    def outputs(step):
        return [*step.model_paths(), step.out_dir() / RESULT_FILE]  # a table of fewer subsets is not done

    @staticmethod
    def access(step) -> StepAccess:
        return StepAccess([], [step.out_dir()])
