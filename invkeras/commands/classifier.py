"""`invkeras train-classifier`: one of the paper's classifiers, optionally robust to PGD."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from invkeras.commands.base import Command, StepAccess, config_of, given, register_command, with_command
from invkeras.commands.tables import console, robust_rows, table
from invkeras.errors import InvkerasError


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
    patience: int = typer.Option(3, help="Early-stopping patience in epochs."),
    save_at: str = typer.Option("", help="Comma-separated global steps at which to save checkpoints, e.g. 0,100,1000."),
    train_examples: Optional[int] = typer.Option(None, help="Train on only the first N examples."),
    dropout: bool = typer.Option(True, "--dropout/--no-dropout", help="Dropout at every layer."),
    seed: int = typer.Option(0),
    strategy: str = typer.Option("auto", help="auto | mirrored (TensorFlow) | data-parallel (JAX) | default."),
    data_dir: Optional[str] = typer.Option(None, help="TFDS data directory holding prepared datasets."),
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
        None, help="Robust accuracy on the first N test images only [default: all]."),
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
        patience=patience,
        save_at=parse_steps(save_at),
        train_examples=train_examples,
        dropout=dropout,
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
    cli = staticmethod(cli_train_classifier)

    @classmethod
    @functools.lru_cache(maxsize=None)
    def schema(cls):
        from invkeras.classifiers.training import ClassifierConfig

        return with_command(ClassifierConfig, "train-classifier")

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
