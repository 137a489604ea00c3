"""`invkeras train-inverter`: an inverter of one layer's representation, of any registered kind.

The options every kind shares are the command's own; each kind adds options of its config
(`--scale`, `--filters`, `--g-learning-rate`, ...). `invkeras train-inverter --kind K --help`
lists K's with their defaults and help text; on the command line they may follow the others.
"""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer

from invkeras.commands.base import (DATA_DIR_HELP, Command, StepAccess, _plain_type, classifier_files, config_of,
                                    model_files, register_command, with_command)
from invkeras.commands.tables import console, headline_text, held_out_rows, table
from invkeras.commands.workspace import DEFAULT_KIND
from invkeras.errors import InvkerasError

# The options of the command itself, shared by every kind; the rest of a kind's config are its own.
COMMON_OPTIONS = ("kind", "layer", "dataset", "arch", "model", "features", "batch_size", "learning_rate", "max_steps",
                  "steps_per_checkpoint", "patience", "train_examples", "eval_examples", "seed", "training_seed",
                  "data_dir", "workspace", "out")


def own_options(config_class) -> list[str]:
    """A kind's own options: the fields of its config that the command does not share."""
    return [name for name in config_class.model_fields if name not in COMMON_OPTIONS]


def cli_train_inverter(
    ctx: typer.Context,
    kind: str = typer.Option("pixelcnn", help="Inverter kind (`invkeras kinds` lists them and their options)."),
    layer: str = typer.Option("fc3", help="Layer to invert, or 'none' for an unconditional model p(x)."),
    dataset: str = typer.Option("procedural", help="Dataset spec (see `invkeras datasets`)."),
    arch: str = typer.Option("conv", help="Classifier run to use when --model is not given."),
    model: Optional[str] = typer.Option(None, help="Classifier .keras file or run directory."),
    features: Optional[str] = typer.Option(None, help="Extract directory or a .npz with arrays x and h."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default: the kind's)."),
    learning_rate: Optional[float] = typer.Option(None, help="Adam learning rate (default: the kind's)."),
    max_steps: Optional[int] = typer.Option(None, help="Optimiser steps at most."),
    steps_per_checkpoint: Optional[int] = typer.Option(None, help="Steps between checkpoints (and validation)."),
    patience: Optional[int] = typer.Option(None, help="Checkpoint intervals without validation improvement."),
    train_examples: Optional[int] = typer.Option(None),
    eval_examples: Optional[int] = typer.Option(None, help="Cap on validation/test images evaluated."),
    seed: int = typer.Option(0, help="Seed of the data (validation split, procedural images) and, by default, "
                             "of training."),
    training_seed: Optional[int] = typer.Option(None, help="Seed of the initial weights and batch order alone "
                                                "(default: --seed)."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    workspace: str = typer.Option("runs"),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/<dataset>/<arch>/inverters/<kind>/<layer>)."),
) -> None:
    """Train an inverter of one layer's representation: a conditional PixelCNN++ p(x|h) by default
    (Nash et al. 2019). `--kind K --help` lists the options of kind K itself (--scale, --filters, ...)."""
    from invkeras.inverters import config_for, train_inverter

    # Only what the user gave: the kind's config supplies every default (the layer of --features too).
    given = {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    extra = kind_options(kind, ctx.args)
    config = config_for(kind, {**given, **extra}, given=set(given) | set(extra))
    result = train_inverter(config)
    rows = held_out_rows(result, lambda name, s: [
        f"{name} {s['headline']['name']}", f"{headline_text(s['headline'])} (n={s['n']})"
        + (f", {s['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in s else "")])
    console.print(table(f"{kind} inverter for {result.layer}", ["", "value"], rows))


def kind_options(kind: str, tokens: list[str]) -> dict:
    """`--name value`, `--name=value`, `--flag` and `--no-flag` for the fields of a kind's config."""
    from invkeras.inverters import inverter_class

    fields = inverter_class(kind).config_class.model_fields
    options, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise InvkerasError(f"train-inverter: unexpected argument {token!r}")
        name, sep, value = token[2:].partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in fields and fields[key[3:]].annotation is bool
        if negated or (key in fields and fields[key].annotation is bool and not sep):
            options[key[3:] if negated else key] = not negated
            i += 1
            continue
        if key not in fields:
            offered = ", ".join(f"--{f.replace('_', '-')}" for f in fields if f not in COMMON_OPTIONS)
            raise InvkerasError(f"--{name}: not an option of inverter kind '{kind}' (its own options: {offered or 'none'})")
        if not sep:
            if i + 1 >= len(tokens):
                raise InvkerasError(f"--{name}: needs a value")
            value, i = tokens[i + 1], i + 1
        options[key] = value
        i += 1
    return options


def kind_parameters(kind: str) -> list[inspect.Parameter]:
    """Typer options for a kind's own config fields, each with the field's default and description."""
    from pydantic_core import PydanticUndefined

    from invkeras.inverters import inverter_class

    config_class = inverter_class(kind).config_class
    parameters = []
    for name in own_options(config_class):
        f = config_class.model_fields[name]
        annotation, _ = _plain_type(f.annotation)
        default = f.default if f.default is not PydanticUndefined else None
        shown = "from --scale" if default is None and "scale" in config_class.model_fields else default
        text = f"{(f.description or '').rstrip('.')}" + f" [default: {shown}]".replace("[default: ]", "")
        if annotation is bool:
            option = typer.Option(None, f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}",
                                  help=f"{kind}: {text}", show_default=False)
        else:
            option = typer.Option(None, f"--{name.replace('_', '-')}", help=f"{kind}: {text}",
                                  show_default=False)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=Optional[annotation]))
    return parameters


def kind_on_command_line(argv: list[str] | None) -> str:
    """The kind named by `--kind K` / `--kind=K` on a command line (the default kind otherwise)."""
    from invkeras.inverters import inverter_kinds

    argv = list(argv or [])
    for i, token in enumerate(argv):
        value = None
        if token == "--kind" and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith("--kind="):
            value = token.partition("=")[2]
        if value is not None:
            return value if value in inverter_kinds() else DEFAULT_KIND  # an unknown kind is refused when run
    return DEFAULT_KIND


def features_of(step) -> list:
    """The feature directories a train-inverter step without `features` reads (and may extract)."""
    from invkeras.data.features import ExtractConfig

    extract = ExtractConfig(dataset=step.dataset, arch=step.arch, model=step.model, layers=[step.layer],
                            workspace=step.workspace)
    return [extract.split_dir(step.layer, split) for split in ("train", "validation", "test")]


@register_command
class TrainInverter(Command):
    name = "train-inverter"
    examples = (
        "invkeras train-inverter --dataset procedural --layer fc3 --scale tiny",
        "invkeras train-inverter --dataset affnist --layer fc3          # finds runs/affnist/conv/classifier",
        "invkeras train-inverter --dataset mnist --layer none --scale small   # estimates H(x)",
        "invkeras train-inverter --kind mse --dataset procedural --layer fc3     # the MSE decoder baseline",
        "invkeras train-inverter --features my_features.npz --out runs/mine/fc --scale small",
        "invkeras kinds                                                 # every kind and its own options",
    )
    context_settings = {"allow_extra_args": True, "ignore_unknown_options": True}

    @classmethod
    def typer_function(cls, argv=None):
        """The command with the options of the kind on the command line (`--kind`), so that its
        `--help` lists them; other kinds' options are still taken from the extra arguments."""
        argv = list(argv or [])
        if "--help" not in argv or cls.name not in argv:
            return cli_train_inverter  # a kind's own options are parsed from the extra arguments
        kind = kind_on_command_line(argv)
        hints = typing.get_type_hints(cli_train_inverter)
        base = inspect.signature(cli_train_inverter)
        base = base.replace(parameters=[p.replace(annotation=hints.get(p.name, p.annotation))
                                        for p in base.parameters.values()])

        def train_inverter(**options) -> None:
            cli_train_inverter(**options)

        train_inverter.__signature__ = base.replace(parameters=[*base.parameters.values(), *kind_parameters(kind)])
        train_inverter.__doc__ = cli_train_inverter.__doc__
        return train_inverter

    @classmethod
    def schema(cls):
        return train_inverter_step(DEFAULT_KIND)

    @classmethod
    def schema_for(cls, raw: dict):
        from invkeras.inverters import inverter_kinds

        kind = raw.get("kind", DEFAULT_KIND)
        try:
            return train_inverter_step(str(kind))
        except InvkerasError:
            raise ValueError(f"kind: unknown inverter kind {kind!r}; choose from "
                             f"{', '.join(sorted(inverter_kinds()))}") from None

    @classmethod
    def default_schemas(cls):
        from invkeras.inverters import inverter_kinds

        return [train_inverter_step(kind) for kind in inverter_kinds()]

    @staticmethod
    def run(step) -> str:
        from invkeras.inverters import inverter_class, train_inverter

        result = train_inverter(config_of(step, inverter_class(step.kind).config_class))
        held_out = result.test or result.validation
        headline = held_out["headline"]
        return f"{step.kind} {step.layer}: {headline['name']} {headline['value']:.2f}, {result.steps} steps"

    @staticmethod
    def outputs(step):
        return [step.model_path()]

    @staticmethod
    def access(step) -> StepAccess:
        from invkeras import artifacts
        from invkeras.inverters.base import MODEL_FILE

        reads, extracts = [], []
        if step.features:
            reads.append(step.features)
        elif step.layer != "none":  # the unconditional model reads only the dataset
            extracts = features_of(step)
            reads += classifier_files(step.model or artifacts.run_dir(step.dataset, step.arch, step.workspace))
            reads += extracts
        if getattr(step, "autoencoder", None):
            reads += model_files(step.autoencoder, MODEL_FILE)
        return StepAccess([Path(p) for p in reads], [step.out_dir()], writes_if_missing=extracts,
                          whole_features=extracts)


@functools.lru_cache(maxsize=None)
def train_inverter_step(kind: str):
    """The schema of a `train-inverter` step of one kind: the kind's own config plus `command`."""
    from invkeras.inverters import inverter_class

    return with_command(inverter_class(kind).config_class, "train-inverter", title=f"TrainInverterStep_{kind}")
