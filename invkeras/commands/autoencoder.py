"""`invkeras train-autoencoder`: the latent space of `--kind cinn` inverters (Rombach et al. 2020)."""

from __future__ import annotations

from typing import Optional

import typer

from invkeras.autoencoders.training import AutoencoderConfig
from invkeras.commands.base import (Command, StepAccess, classifier_files, config_of, given, register_command,
                                    with_command)
from invkeras.commands.tables import console, headline_text, table


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
    train_examples: Optional[int] = typer.Option(None, help="Train on the first N images only."),
    eval_examples: Optional[int] = typer.Option(None, help="Cap on validation/test images evaluated."),
    classifier: Optional[str] = typer.Option(None, help="Classifier .keras or run dir: its accuracy on reconstructions."),
    seed: Optional[int] = typer.Option(None),
    data_dir: Optional[str] = typer.Option(None),
    workspace: Optional[str] = typer.Option(None, help="Root of runs/<dataset>/autoencoders/<name> [default: runs]."),
    name: Optional[str] = typer.Option(None, help="Folder name under runs/<dataset>/autoencoders/ [default: latent<d>]."),
    out: Optional[str] = typer.Option(None, help="Output directory (overrides --workspace and --name)."),
) -> None:
    """Train a convolutional autoencoder x -> z -> x_hat, the latent space of `--kind cinn` inverters
    (Rombach et al. 2020): held-out L1 and PSNR, a reconstruction grid, resumable."""
    options = given(locals())
    from invkeras.autoencoders.training import AutoencoderConfig
    from invkeras.autoencoders.training import train_autoencoder as train

    result = train(AutoencoderConfig(**options))
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
    step_schema = with_command(AutoencoderConfig, "train-autoencoder")
    examples = (
        "invkeras train-autoencoder --dataset mnist --latent-dim 64",
        "invkeras train-autoencoder --dataset procedural --latent-dim 16 --max-steps 1000 --classifier runs/procedural/conv",
        "invkeras train-inverter --kind cinn --dataset procedural --layer fc3 --autoencoder runs/procedural/autoencoders/latent16     # then a cINN over its latent",
    )
    cli = staticmethod(cli_train_autoencoder)

    @staticmethod
    def run(step) -> str:
        from invkeras.autoencoders.training import train_autoencoder

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
