"""The `invkeras` command line: a thin Typer layer over the library API.

Every command turns bad input (an `InvkerasError`, or a config that fails validation)
into one red line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from invkeras import __version__
from invkeras.errors import InvkerasError

console = Console()
err_console = Console(stderr=True)

class _InvkerasTyper(typer.Typer):
    """Every command registered here reports bad input as one line (`user_errors`): the one
    place this happens, so a new command cannot forget it."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(function):
            _escape_option_help(function)
            return register(user_errors(function))

        return decorate


def _escape_option_help(function: Callable) -> None:
    """Option help is plain text: under rich markup, '[default: 64]' would read as a style tag
    and vanish from `--help`. Command docstrings and examples keep their markup."""
    for parameter in inspect.signature(function).parameters.values():
        info = parameter.default
        if isinstance(info, typer.models.ParameterInfo) and info.help:
            info.help = escape(info.help)


app = _InvkerasTyper(
    name="invkeras",
    help="Inversion models for Keras classifiers: what does a layer keep, and what does it throw away?",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _examples(*lines: str) -> str:
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]$ {line}[/cyan]" for line in lines)


def user_errors(command: Callable) -> Callable:
    """Report bad input as one line and exit 2; everything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _quiet_tensorflow_import()
        if configured_backend() == "jax":
            from invkeras.distribution import enable_compilation_cache, initialize_multi_host

            enable_compilation_cache()  # each command is a process: reuse what the last one compiled
            if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
                initialize_multi_host()  # one process of a multi-host run (README, "Scaling up")
        try:
            return command(*args, **kwargs)
        except InvkerasError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except ValidationError as exc:
            from invkeras.recipes import describe_validation_error

            err_console.print(f"[bold red]error:[/bold red] {describe_validation_error(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:  # an --out that is read-only, a file where a directory should be, ...
            where = exc.filename or "a path"
            err_console.print(f"[bold red]error:[/bold red] cannot use {where}: {exc.strerror or exc}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: rerun the same command to resume from the last checkpoint")
            raise typer.Exit(code=130) from None

    return wrapper


def configured_backend() -> str:
    """The Keras backend that `import keras` will pick, found without importing keras (which,
    under TensorFlow, would print TF's start-up lines before we could silence them):
    KERAS_BACKEND, else the `backend` of Keras's own config file, else tensorflow."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return str(json.load(handle).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _quiet_tensorflow_import() -> None:
    """Import TensorFlow with stderr silenced: its C++ start-up lines would bury our one-line messages.

    Only under the TensorFlow backend: under JAX, TensorFlow is needed (and imported lazily)
    only by the TFDS datasets and SavedModel export, and need not be installed at all."""
    if "tensorflow" in sys.modules or configured_backend() != "tensorflow":
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_logical_devices()  # device discovery prints the "cuInit failed" line
        # Library warnings (absl's "Variant folder ... has no dataset_info.json", TF's retracing
        # notes) would stand before our one-line messages; errors still get through.
        import logging

        for name in ("absl", "tensorflow", "tensorflow_datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvkerasError(f"--save-at {text!r}: expected comma-separated step counts, e.g. 0,100,1000") from None


# --- commands -----------------------------------------------------------------------


@app.command(epilog=_examples("invkeras datasets"))
def datasets() -> None:
    """List the dataset sources invkeras can load, and where each loads from."""
    from invkeras.data import list_sources

    rows = list_sources()
    columns = list(rows[0].keys()) if rows else []
    console.print(_table("Dataset sources", columns, [[row.get(c, "") for c in columns] for row in rows]))


@app.command(
    "train-classifier",
    epilog=_examples(
        "invkeras train-classifier --dataset procedural --arch conv --epochs 3",
        "invkeras train-classifier --dataset idx:../shared/data/mnist --arch conv --save-at 0,100,1000",
        "invkeras train-classifier --dataset mnist --train-examples 100 --no-dropout --batch-size 100 "
        "--steps-per-epoch 1000 --epochs 100 --save-at 0,100,1000,10000,100000   # overfitted regime",
        "invkeras train-classifier --dataset mnist --adversarial pgd --epsilon 0.3 --pgd-steps 10 "
        "--out runs/mnist/conv-robust/classifier/model.keras   # robust (Madry et al. 2018)",
        "invkeras train-classifier --dataset mnist --epsilon 0.3   # standard training, robust accuracy reported",
    ),
)
def train_classifier(
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
        save_at=_parse_steps(save_at),
        train_examples=train_examples,
        dropout=dropout,
        seed=seed,
        strategy=strategy,
        data_dir=data_dir,
        workspace=workspace,
        out=out,
        **_given(dict(adversarial=adversarial, epsilon=epsilon, pgd_steps=pgd_steps, pgd_step_size=pgd_step_size,
                      robust_eval_examples=robust_eval_examples)),
    )
    result = train(config)
    rows = [
        ["model", result.model_path],
        ["test accuracy", f"{result.test_accuracy:.4f}"],
        *_robust_rows(result, config),
        ["best validation accuracy", f"{result.best_val_accuracy:.4f}"],
        ["epochs", result.epochs],
        ["steps", result.steps],
        ["checkpoints", len(result.checkpoints)],
        ["wall time", f"{result.seconds:.1f} s"],
    ]
    console.print(_table(f"Classifier {arch} on {dataset}", ["", "value"], rows))


@app.command(
    epilog=_examples(
        "invkeras extract --dataset procedural --layer conv1 --layer fc3",
        "invkeras extract --model my_model.keras --layer dense_1 --dataset mnist --split test --out feats/",
    ),
)
def extract(
    layer: List[str] = typer.Option(..., "--layer", "-l", help="Layer name (repeatable)."),
    dataset: str = typer.Option("procedural", help="Dataset spec (see `invkeras datasets`)."),
    model: Optional[str] = typer.Option(None, help="A .keras file or run directory (default: the run for --dataset/--arch)."),
    arch: str = typer.Option("conv", help="Which default run to use when --model is not given."),
    split: List[str] = typer.Option(["train", "validation", "test"], "--split", "-s", help="Split (repeatable)."),
    out: Optional[str] = typer.Option(None, help="Root directory (default runs/<dataset>/<arch>/features)."),
    batch_size: int = typer.Option(256),
    shard_size: int = typer.Option(4096, help="Examples per .npz shard."),
    limit: Optional[int] = typer.Option(None, help="At most N examples per split."),
    seed: int = typer.Option(0, help="Seed for carving splits the source lacks."),
    data_dir: Optional[str] = typer.Option(None),
    workspace: str = typer.Option("runs"),
) -> None:
    """Stream (image, representation) pairs from named layers into .npz shards plus a manifest."""
    import json

    from invkeras.data.features import ExtractConfig, extract_features

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
    console.print(_table("Extracted features", ["layer", "split", "examples", "h shape", "directory"], rows))


@app.command(
    "run",
    epilog=_examples(
        "invkeras run recipes/quickstart.yaml",
        "invkeras run recipes/quickstart.yaml --set steps.classifier.epochs=1 --set seed=3",
        "invkeras run recipes/nash2019/layers_mnist.yaml --set scale=small   # the recipe's small variant",
        "invkeras run recipes/nash2019/layers_mnist.yaml --set scale=small --set defaults.train-inverter.max_steps=3000",
        "invkeras run recipes/quickstart.yaml --parallel 2   # steps that do not wait for each other, 2 at a time",
        "invkeras run recipes/nash2019/layers_mnist.yaml --executor ray --address auto --set workspace=/shared/runs",
    ),
)
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: List[str] = typer.Option([], "--set", help="Override a key: dotted.path=value (repeatable); wins over variants."),
    allow_outside_workspace: bool = typer.Option(
        False, "--allow-outside-workspace", help="Let steps write outside the recipe's workspace."),
    parallel: Optional[int] = typer.Option(
        None, "--parallel", metavar="N",
        help="Run up to N steps at once, each in its own worker process (one per GPU where there are GPUs); "
             "with --executor ray, at most N tasks at once. Default: 1 (in this process), or no cap on Ray."),
    executor: str = typer.Option(
        "local", "--executor", help="Where steps run: local (this machine) or ray (a Ray cluster; needs the "
                                    "cluster extra)."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster address (host:port, ray://host:port or auto); local or omitted "
                                "starts a Ray instance on this machine."),
    cpus_per_step: Optional[int] = typer.Option(
        None, "--cpus-per-step", metavar="K",
        help="TensorFlow threads per step (and the CPUs a Ray task holds on a CPU-only cluster). "
             "Default: this machine's cores divided among the N workers; 1 on Ray."),
) -> None:
    """Run a YAML recipe; finished steps are skipped, interrupted ones resume."""
    from invkeras.recipes import CompareStep, EstimateMIStep, load_recipe, run_recipe
    from invkeras.recipes.executors import make_executor

    parsed = load_recipe(recipe, set_, allow_outside_workspace=allow_outside_workspace)
    runner = make_executor(executor, parallel=parallel, address=address, cpus_per_step=cpus_per_step,
                           console=console)
    variant = f", variant '{parsed.scale}'" if parsed.scale in parsed.variants else ""
    console.print(f"[bold]recipe[/bold] {parsed.name}: {len(parsed.steps)} step(s), scale {parsed.scale}{variant}")
    results = run_recipe(
        parsed, source=recipe, on_step=lambda name, step: console.rule(f"step {name} ({step.command})"),
        executor=runner,
    )
    rows = [[r.name, r.command, r.status, f"{r.seconds:.1f} s", r.summary] for r in results]
    console.print(_table(f"Recipe {parsed.name}", ["step", "command", "status", "time", "result"], rows))
    for step in parsed.steps.values():
        if isinstance(step, EstimateMIStep):  # the result people run the recipe for
            console.print(mi_report_table(step.out()))
        if isinstance(step, CompareStep):
            for layer in step.layers:
                console.print(comparison_table(json.loads((step.out(layer) / "compare.json").read_text())))


def comparison_table(payload: dict) -> Table:
    """Kinds side by side on one layer: Table 1 distances, label agreement, pixel L1 to the input, diversity, NLL."""

    def pm(entry, key="mean", digits=2, scale=1.0):
        if not entry:
            return ""
        return f"{entry[key] * scale:.{digits}f} ± {entry['se'] * scale:.{digits}f}"

    nn = payload["nearest_training"]
    rows = [["1NN (training)", "", "", pm(nn, "mean_l1"), "", "", "", "", ""]]
    for r in payload["rows"]:
        rows.append([r["label"], r["kind"], pm(r["IM-S"], "mean_l1"), pm(r["IM-NN"], "mean_l1"),
                     pm(r["label_agreement"], digits=1, scale=100.0), pm(r.get("pixel_l1_to_input"), digits=0),
                     pm(r["diversity_pixel_l1"], digits=0), pm(r["diversity_h_l1"]), pm(r["nll_nats"])])
    title = (f"{payload['layer']}: {payload['n_images']} {payload['split']} images x {payload['samples_per_image']} "
             f"samples; L1 in the layer's space (sum over {payload['feature_dims']} dims), ± s.e.")
    return _table(title, ["x'", "kind", "IM-S", "IM-NN", "label agree %", "px L1 to x", "diversity px", "diversity h",
                                  "NLL nats"], rows)


@app.command(
    epilog=_examples(
        "invkeras export --model runs/procedural/conv --out exported/procedural-conv",
        "invkeras export --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --out exported/fc3-pixelcnn",
    ),
)
def export(
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
        from invkeras.data.features import resolve_model_path

        source = resolve_model_path(model)
        path = export_saved_model(source, out)
    console.print(_table("Export", ["", "value"], [["source", source], ["SavedModel", path]]))


@app.command(
    "train-inverter",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=_examples(
        "invkeras train-inverter --dataset procedural --layer fc3 --scale tiny",
        "invkeras train-inverter --dataset affnist --layer fc3          # finds runs/affnist/conv/classifier",
        "invkeras train-inverter --dataset idx:../shared/data/mnist --layer none --scale small   # estimates H(x)",
        "invkeras train-inverter --kind mse --dataset procedural --layer fc3     # the MSE decoder baseline",
        "invkeras train-inverter --features my_features.npz --out runs/mine/fc --scale small",
        "invkeras kinds                                                 # every kind and its own options",
    ),
)
def train_inverter(
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
    seed: int = typer.Option(0),
    data_dir: Optional[str] = typer.Option(None),
    workspace: str = typer.Option("runs"),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/<dataset>/<arch>/inverters/<kind>/<layer>)."),
) -> None:
    """Train an inverter of one layer's representation: a conditional PixelCNN++ p(x|h) by default
    (Nash et al. 2019). Options of the kind itself (--scale, --filters, ...) follow the others."""
    from invkeras.inverters import config_for, train_inverter

    # Only what the user gave: the kind's config supplies every default (the layer of --features too).
    given = {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    extra = _kind_options(kind, ctx.args)
    config = config_for(kind, {**given, **extra}, given=set(given) | set(extra))
    result = train_inverter(config)
    rows = _held_out_rows(result, lambda name, s: [
        f"{name} {s['headline']['name']}", f"{_pm(s['headline'])} (n={s['n']})"
        + (f", {s['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in s else "")])
    console.print(_table(f"{kind} inverter for {result.layer}", ["", "value"], rows))


def _pm(headline: dict) -> str:
    return f"{headline['value']:.2f} ± {headline['se']:.2f}"


def _kind_options(kind: str, tokens: list[str]) -> dict:
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
            offered = ", ".join(f"--{f.replace('_', '-')}" for f in fields if f not in _COMMON_OPTIONS)
            raise InvkerasError(f"--{name}: not an option of inverter kind '{kind}' (its own options: {offered or 'none'})")
        if not sep:
            if i + 1 >= len(tokens):
                raise InvkerasError(f"--{name}: needs a value")
            value, i = tokens[i + 1], i + 1
        options[key] = value
        i += 1
    return options


_COMMON_OPTIONS = ("kind", "layer", "dataset", "arch", "model", "features", "batch_size", "learning_rate", "max_steps",
                   "steps_per_checkpoint", "patience", "train_examples", "eval_examples", "seed", "data_dir",
                   "workspace", "out")


@app.command(
    "train-autoencoder",
    epilog=_examples(
        "invkeras train-autoencoder --dataset idx:../shared/data/mnist --latent-dim 64",
        "invkeras train-autoencoder --dataset procedural --latent-dim 16 --max-steps 1000 --classifier runs/procedural/conv",
        "invkeras train-inverter --kind cinn --dataset procedural --layer fc3 "
        "--autoencoder runs/procedural/autoencoders/latent16     # then a cINN over its latent",
    ),
)
def train_autoencoder(
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
    options = _given(locals())
    from invkeras.autoencoders.training import AutoencoderConfig
    from invkeras.autoencoders.training import train_autoencoder as train

    result = train(AutoencoderConfig(**options))
    rows = [["model", result.model_path], ["grid", result.grid_path], ["latent dim", result.latent_dim],
            ["steps", result.steps], ["wall time", f"{result.seconds:.1f} s"]]
    for split, summary in (("validation", result.validation), ("test", result.test)):
        if summary:
            rows.append([f"{split} L1 per pixel (mean image)",
                         f"{_pm(summary['headline'])} ({summary['mean_image_l1_per_pixel']:.2f})"])
            rows.append([f"{split} PSNR", f"{summary['psnr_db']:.2f} dB"])
            if "classifier_accuracy_on_reconstructions" in summary:
                rows.append([f"{split} classifier accuracy, reconstructions (originals)",
                             f"{summary['classifier_accuracy_on_reconstructions']:.4f} "
                             f"({summary['classifier_accuracy_on_originals']:.4f})"])
    console.print(_table(f"Autoencoder on {result.model_path.parent}", ["", "value"], rows))


@app.command(epilog=_examples("invkeras kinds"))
def kinds() -> None:
    """List the inverter kinds, what each can do, and its own options for `train-inverter`."""
    from invkeras.inverters import inverter_kinds

    rows = []
    for name, cls in sorted(inverter_kinds().items()):
        own = [f for f in cls.config_class.model_fields if f not in _COMMON_OPTIONS]
        rows.append([name, cls.description, ", ".join(sorted(cls.capabilities)),
                     " ".join(f"--{f.replace('_', '-')}" for f in own) or "-"])
    console.print(_table("Inverter kinds", ["kind", "what it is", "capabilities", "own options"], rows))


def _held_out_rows(result, describe: Callable[[str, dict], list]) -> list[list]:
    """Model, steps and wall time of an InverterResult, then one row per held-out split it has."""
    rows = [["model", result.model_path], ["steps", result.steps], ["wall time", f"{result.seconds:.1f} s"]]
    return rows + [describe(name, summary) for name, summary in (("validation", result.validation),
                                                                   ("test", result.test)) if summary]


@app.command(
    epilog=_examples(
        "invkeras sample --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --num-inputs 8 --num-samples 8",
        "invkeras sample --inverter runs/procedural/conv/inverters/pixelcnn/none --num-samples 16 --seed 1",
        "invkeras sample --inverter runs/procedural/conv/inverters/mse/fc3      # any kind",
        "invkeras sample --inverter runs/mnist/conv/inverters/gan/logits --misclassified   # the classifier's mistakes",
    ),
)
def sample(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras (any kind)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out inputs N (rows of the grid) [default: 8]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per input [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="Images sampled in parallel [default: 64]."),
    method: Optional[str] = typer.Option(None, help="A kind's sampler (pixelcnn: pixel | cached | full)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
    misclassified: bool = typer.Option(
        False, "--misclassified", help="Inputs: held-out images the classifier gets wrong (samples_misclassified.png)."),
) -> None:
    """Draw K samples of p(x|h(x)) for N held-out images: a PNG grid and an .npz."""
    options = _given(locals())
    from invkeras.analyses.samples import SampleConfig, draw_inversions

    result = draw_inversions(SampleConfig(**options))
    rows = [["grid", result.grid_path], ["arrays", result.arrays_path],
            ["samples", "x".join(map(str, result.samples.shape[:2]))], ["wall time", f"{result.seconds:.1f} s"]]
    if result.mean_l1_to_original is not None:
        rows.append(["mean L1 |h(sample) - h(x)|", f"{result.mean_l1_to_original:.4f}"])
    chosen = result.selection
    if chosen is not None:
        rows.append(["misclassified", f"{chosen['misclassified']} of {chosen['searched']} searched; "
                                      f"showing {chosen['found']}"])
        rows.append(["true -> predicted", ", ".join(f"{int(t)}->{int(p)}" for t, p in
                                                    zip(chosen["y"], chosen["predicted"]))])
        if "share_samples_predicted_label" in chosen:
            rows.append(["samples labelled predicted / true", f"{chosen['share_samples_predicted_label']:.0%} / "
                                                              f"{chosen['share_samples_true_label']:.0%}"])
    console.print(_table("Samples", ["", "value"], rows))


def _robust_rows(result, config) -> list[list]:
    """Clean beside robust accuracy, on the same test images, when an attack was set."""
    if result.robust_accuracy is None:
        return []
    from invkeras.classifiers.adversarial import Attack

    attack = Attack(result.attack["epsilon"], result.attack["steps"], result.attack["step_size"])
    trained = "adversarial (PGD)" if config.adversarial == "pgd" else "standard"
    return [["training", trained],
            [f"clean accuracy (n={result.robust_examples})", f"{result.clean_accuracy:.4f}"],
            [f"robust accuracy ({attack.label()})", f"{result.robust_accuracy:.4f}"]]


def _given(options: dict) -> dict:
    """The options the user gave (not None): the config's own defaults fill in the rest, so
    each default is written once, in the config."""
    return {k: v for k, v in options.items() if v is not None}


@app.command(
    "estimate-mi",
    epilog=_examples(
        "invkeras estimate-mi --inverter runs/procedural/conv/inverters/pixelcnn/conv1 "
        "--inverter runs/procedural/conv/inverters/pixelcnn/fc3 "
        "--unconditional runs/procedural/conv/inverters/pixelcnn/none --reference conv1",
        "invkeras estimate-mi --inverter runs/mnist/conv/inverters/cinn/conv1 --inverter runs/mnist/conv/inverters/cinn/fc3 "
        "--unconditional runs/mnist/conv/inverters/cinn/none   # latent-space estimate H*(z) - H*(z|h), mi/latent_test.json",
    ),
)
def estimate_mi(
    inverter: List[str] = typer.Option(..., help="Inverter directory with a pixel likelihood, or all with a latent "
                                            "one (kind cinn: a separate latent-space table) (repeatable)."),
    unconditional: Optional[str] = typer.Option(None, help="Unconditional inverter, for H*(x) - H*(x|h)."),
    reference: Optional[str] = typer.Option(None, help="Layer whose NCE the others are compared with."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    eval_examples: Optional[int] = typer.Option(None, help="Evaluate on the first N held-out images."),
    out: Optional[str] = typer.Option(None, help="JSON path (a CSV twin is written beside it)."),
) -> None:
    """Held-out NLL per inverter, the NCE bound on I(x;h), and MI estimates, as a table, JSON and CSV."""
    options = _given(locals())
    from invkeras.analyses.mi import EstimateMIConfig
    from invkeras.analyses.mi import estimate_mi as estimate

    options["inverters"] = options.pop("inverter")
    report, path = estimate(EstimateMIConfig(**options))
    console.print(latent_mi_table(report) if getattr(report, "space", None) == "latent" else mi_table(report))
    console.print(f"written: {path} and {path.with_suffix('.csv')}")


def mi_report_table(path: Path) -> Table:
    """The table of a written estimate-mi JSON, pixel-space or latent-space."""
    from invkeras.analyses.latent_mi import LatentMIReport
    from invkeras.analyses.mi import MIReport

    if json.loads(Path(path).read_text()).get("space") == "latent":
        return latent_mi_table(LatentMIReport.from_json(path))
    return mi_table(MIReport.from_json(path))


def latent_mi_table(report) -> Table:
    """The latent-space information table: H*(z|h) and H*(z) - H*(z|h) in nats per image, ± paired
    standard errors; labelled as a latent-space estimate, never beside the pixel-space NCE."""
    from invkeras.analyses.latent_mi import ESTIMATE, LABEL, NLL, NOTE

    def pm(value, se):
        return "" if value is None else f"{value:.2f} ± {se:.2f}"

    rows = [[r["layer"], r["n_images"], pm(r[NLL], r["se nats"]), f"{r['nats/dim']:.3f}",
             pm(r["H*(z|h) - H*(z|h)(ref)"], r["se (paired, ref)"]), pm(r[ESTIMATE], r["se (paired)"])]
            for r in report.rows]
    dim = (report.latent or {}).get("latent_dim")
    title = (f"Latent information per layer, {LABEL.upper()}: nats/image of z = E(x)"
             f"{f' ({dim}-d)' if dim else ''} ({report.dataset}, {report.split})")
    table = _table(title, ["layer", "n", "H*(z|h) ± se", "nats/dim", "vs ref ± se (paired)",
                           "I est. H*(z)-H*(z|h) ± se (paired)"], rows)
    table.caption = NOTE
    table.caption_justify = "left"
    return table


def mi_table(report) -> Table:
    """The information table; an estimate above the exact H(x) is marked '!' and a lower bound
    below zero 'vacuous', with the reason under the table (the JSON keeps the raw numbers)."""
    from invkeras.analyses.mi import EXCEEDS, VACUOUS

    def fmt(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    rows, notes = [], []
    for r in report.rows:
        estimate = fmt(r["H*(x) - H*(x|h) [estimate]"]) + (" !" if r.get(EXCEEDS) else "")
        bound = "vacuous" if r.get(VACUOUS) else fmt(r["H(x) - H*(x|h) [lower bound on I]"])
        rows.append([
            r["layer"], r["n_images"], f"{r['H*(x|h) nats']:.2f} ± {r['se nats']:.2f}", fmt(r["bits/dim"], 4),
            fmt(r["NCE nats"]),
            "" if r["NCE - NCE(ref)"] is None else f"{r['NCE - NCE(ref)']:.2f} ± {r['se (paired)']:.2f}",
            estimate, bound,
        ])
        if r.get("note"):
            notes.append(f"{r['layer']}: {r['note']}")
    title = f"Information per layer, nats/image ({report.dataset}, {report.split})"
    if report.entropy_nats is not None:
        title += f", H(x) = {report.entropy_nats:.3f}"
    # Short headers keep the table readable at 80 columns; the JSON/CSV spell them out.
    columns = ["layer", "n", "H*(x|h) ± se", "bits/dim", "NCE", "NCE-ref ± se", "I est.", "I ≥"]
    table = _table(title, columns, rows)
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


@app.command(
    epilog=_examples(
        "invkeras report runs                           # writes runs/report/report.html (+ .md)",
        "invkeras report runs/procedural/conv           # one run",
        "invkeras report runs --out reports/all.html    # + reports/all.md, reports/all-*.png",
    ),
)
def report(
    run_dir: str = typer.Argument(..., help="A workspace (runs/) or one run (runs/<dataset>/<arch>)."),
    out: Optional[str] = typer.Option(None, help="HTML path (default <RUN_DIR>/report/report.html); the .md twin and plots go beside it."),
) -> None:
    """One self-contained HTML report (and a Markdown twin) of every artefact in a run directory."""
    from invkeras.reports.report import write_report

    html_path, md_path = write_report(run_dir, out)
    console.print(f"written: {html_path} and {md_path}")


@app.command(
    epilog=_examples(
        "invkeras compare --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --inverter runs/procedural/conv/inverters/mse/fc3",
        "invkeras compare --inverter runs/procedural/conv/inverters/pixelcnn/conv1 --num-images 100 --grid-samples 256",
        "invkeras compare --inverter A --inverter B --label small --label paper --out comparisons/fc3",
    ),
)
def compare(
    inverter: List[str] = typer.Option(..., help="Inverter directory of one layer, any kind (repeatable)."),
    label: List[str] = typer.Option([], help="Row name per --inverter (default: the kinds)."),
    num_images: Optional[int] = typer.Option(None, help="Held-out images N [default: 500, as the paper]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per image: IM-S uses one, IM-NN the closest [default: 10]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples [default: 0]."),
    top_k: Optional[int] = typer.Option(None, help="Samples and training neighbours shown per grid row [default: 8]."),
    grid_samples: Optional[int] = typer.Option(None, help="Samples K' drawn per grid row, of which the top-k are shown [default: 64]."),
    grid_inputs: Optional[int] = typer.Option(None, help="Grid rows (0: no grid) [default: 4]."),
    batch_size: Optional[int] = typer.Option(None, help="Images sampled in parallel [default: 64]."),
    max_train_examples: Optional[int] = typer.Option(None, help="Search only the first N training images (default all)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/<dataset>/<arch>/comparisons/<layer>)."),
) -> None:
    """Inverters of one layer side by side: L1 distance in the layer's space to 1NN, IM-S and IM-NN
    (Nash et al. 2019 Table 1), label agreement, sample diversity and NLL, plus top-k grids."""
    options = _given(locals())
    from invkeras.analyses.compare import CompareConfig, compare_inverters

    options["inverters"] = options.pop("inverter")
    options["labels"] = options.pop("label") or None
    result = compare_inverters(CompareConfig(**options))
    console.print(comparison_table(json.loads(result.json_path.read_text())))
    written = [result.json_path, result.csv_path, result.arrays_path, *result.grid_paths.values()]
    console.print("written: " + ", ".join(str(p) for p in written if p is not None))


@app.command(
    "sample-grid",
    epilog=_examples(
        "invkeras sample-grid --inverter runs/procedural/conv/inverters/pixelcnn/fc3 "
        "--reconstructor runs/procedural/conv/inverters/mse/fc3",
    ),
)
def sample_grid(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras (draws the samples)."),
    reconstructor: str = typer.Option(..., "--reconstructor", "--decoder",
                                      help="An inverter of the same layer that can reconstruct (e.g. kind mse)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out inputs N (rows of the grid) [default: 8]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per input [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples [default: 0]."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
) -> None:
    """Write samples_reconstruction.png: input | reconstruction | K samples, as in Nash et al. (2019) Figs. 1 and 4."""
    options = _given(locals())
    from invkeras.analyses.samples import SampleConfig, save_samples_with_reconstruction

    reconstructor = options.pop("reconstructor")
    result = save_samples_with_reconstruction(SampleConfig(**options), reconstructor)
    rows = [["grid", result.grid_path], ["reconstruction MSE per pixel", f"{result.mse_per_pixel:.1f}"],
            ["wall time", f"{result.seconds:.1f} s"]]
    console.print(_table("Samples with reconstruction", ["", "value"], rows))


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvkerasError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not values:
        raise InvkerasError(f"{flag} {text!r}: give at least one number")
    return values


@app.command(
    epilog=_examples(
        "invkeras edit --inverter runs/mnist/conv/inverters/gan/logits --shift 3:10",
        "invkeras edit --inverter runs/mnist/conv/inverters/pixelcnn/logits --shift 0:8 --shift 7:8 --scale 3 "
        "--noise 2 --interpolate --num-inputs 6   # any kind that can sample",
        "invkeras edit --inverter DIR --scale 0 --strengths 0,0.5,0.9,1 --num-samples 4",
    ),
)
def edit(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras (any kind that can sample)."),
    shift: List[str] = typer.Option([], "--shift", help="CLASS:DELTA: add DELTA to logit (unit) CLASS of h; repeatable."),
    scale: Optional[float] = typer.Option(None, help="Multiply h by S (swept from 1 to S)."),
    noise: Optional[float] = typer.Option(None, help="Add Gaussian noise of standard deviation SIGMA to h (h's units)."),
    interpolate: bool = typer.Option(False, "--interpolate", help="Interpolate from each input's h to the next one's."),
    strengths: Optional[str] = typer.Option(None, help="Comma-separated sweep, 0 = h unedited [default: 0,0.25,0.5,0.75,1]."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out inputs N [default: 8]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per input and strength [default: 1]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples and noise [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="Images sampled in parallel [default: 64]."),
    method: Optional[str] = typer.Option(None, help="A kind's sampler (pixelcnn: pixel | cached | full)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default <inverter dir>/edits)."),
) -> None:
    """Edit the logits (or any layer's h) of held-out images, decode them with the inverter, and label the
    results: a grid per operation sweeping its strength, and edits.json (Teterwak et al. 2021)."""
    options = _given(locals())
    from invkeras.analyses.edit import EditConfig, edit_inverter

    if not shift:
        options.pop("shift")
    if not interpolate:
        options.pop("interpolate")
    if strengths is not None:
        options["strengths"] = _parse_floats(strengths, "--strengths")
    result = edit_inverter(EditConfig(**options))
    console.print(edit_table(result))
    console.print("written: " + ", ".join(str(p) for p in [result.json_path, result.arrays_path,
                                                           *result.grid_paths.values()]))


def edit_table(result) -> Table:
    """Per operation and strength: the share of edited samples keeping the input's label, and
    the share labelled with the shifted class or the interpolation partner's label."""
    rows = []
    for op in result.operations:
        for row in op["per_strength"]:
            target = row.get("share_target_class", row.get("share_partner_label"))
            moves = f"{row['moved_towards']} / {row['moved_away']}" if "moved_towards" in row else ""
            asked = row.get("share_argmax_h")
            rows.append([op["name"], f"{row['strength']:g}", row["edit"], f"{row['share_input_label']:.0%}",
                         "" if target is None else f"{target:.0%}", moves, "" if asked is None else f"{asked:.0%}"])
    title = f"Edits of {result.layer} decoded by a {result.kind} inverter, labelled by the classifier"
    return _table(title, ["operation", "t", "edit", "input's label", "target label", "moved to / from",
                          "argmax h label"], rows)


@app.command(
    "ground-truth",
    epilog=_examples(
        "invkeras ground-truth                       # 6 subsets, from all factors to none",
        "invkeras ground-truth --subset all --subset shape+size --subset none --max-steps 3000",
    ),
)
def ground_truth(
    subset: List[str] = typer.Option([], "--subset", help="Factor subset: all, none, or names joined by + "
                                     "(shape, size, row, col, intensity); repeatable."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps per inverter [default: 1500]."),
    steps_per_checkpoint: Optional[int] = typer.Option(None, help="[default: 500]"),
    filters: Optional[int] = typer.Option(None, help="PixelCNN++ filters [default: 16]."),
    learning_rate: Optional[float] = typer.Option(None, help="[default: 0.003]"),
    eval_examples: Optional[int] = typer.Option(None, help="Validation and test images per subset [default: 500]."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    workspace: Optional[str] = typer.Option(None, help="[default: runs]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/procedural/ground-truth)."),
) -> None:
    """The bound against the truth: on the procedural dataset, with h a subset of its factors, H(x|h) is exact.
    Trains one PixelCNN++ per subset (finished ones are reused) and tables test NLL, truth and gap."""
    options = _given(locals())
    from invkeras.analyses.ground_truth import ground_truth as run_ground_truth, GroundTruthConfig

    if subset:
        options["subsets"] = options.pop("subset")
    else:
        options.pop("subset")
    result = run_ground_truth(GroundTruthConfig(**options))
    rows = [[r["subset"], f"{r['true_nats']:.3f}", f"{r['estimate_nats']:.3f} ± {r['se_nats']:.3f}",
             f"{r['gap_nats']:+.3f}", "yes" if r["within_tolerance"] else "no",
             "yes" if r["bound_holds"] else "VIOLATED"] for r in result["rows"]]
    console.print(_table(f"H*(x|h) vs exact H(x|h), nats per image (test, {result['rows'][0]['num_images']} images)",
                         ["h = factors", "exact", "estimate ± se", "gap", f"within {result['tolerance_nats']}",
                          "bound"], rows))
    console.print(f"written: {result['path']} and {result['plot']}")


@app.command(
    epilog=_examples(
        "invkeras mix --inverter runs/procedural/conv/inverters/cinn/fc3",
        "invkeras mix --inverter runs/procedural/conv/inverters/cinn/conv1 --num-inputs 8 --split validation",
    ),
)
def mix(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras of a kind with a latent residual (cinn)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out images N; the grid is N x N [default: 6]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 256]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
) -> None:
    """Image A's residual under image B's representation, D(t^-1(v_A | h_B)) (Rombach et al. 2020):
    an N x N grid, rows A, columns B; the diagonal is the autoencoder's reconstruction."""
    options = _given(locals())
    from invkeras.analyses.mix import MixConfig, mix_images

    result = mix_images(MixConfig(**options))
    rows = [["grid", result.grid_path], ["arrays", result.arrays_path], ["wall time", f"{result.seconds:.1f} s"]]
    if result.share_label_of_b is not None:
        rows.append(["mixes labelled as image B (as image A)",
                     f"{result.share_label_of_b:.2f} ({result.share_label_of_a:.2f})"])
    console.print(_table("Mixes", ["", "value"], rows))


@app.command(
    epilog=_examples(
        "invkeras attack --inverter runs/mnist/conv/inverters/cinn/fc3 --epsilon 0.3",
        "invkeras attack --inverter runs/mnist/conv/inverters/cinn/logits --epsilon 0.1 --method fgsm --num-inputs 16",
        "invkeras attack --inverter DIR --epsilon 0.3 --pgd-steps 40 --out attacks/fc3-pgd40",
    ),
)
def attack(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras of a kind with a latent residual (cinn)."),
    epsilon: float = typer.Option(..., help="L-inf radius on [0, 1] pixels (MNIST: 0.3)."),
    method: Optional[str] = typer.Option(None, help="pgd | fgsm [default: pgd]."),
    pgd_steps: Optional[int] = typer.Option(None, help="PGD steps [default: 10]."),
    pgd_step_size: Optional[float] = typer.Option(None, help="PGD step size on [0, 1] pixels [default: 2.5 * eps / steps]."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out images N (rows of the grid) [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="PGD's random start [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 256]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default <inverter dir>/attacks/<method>_eps<e>)."),
) -> None:
    """Adversarial examples x' (FGSM or PGD) for the inverter's classifier, and D(t^-1(v_x | h(x'))): what the
    attack changed in the layer's representation, with x's own residual (Rombach et al. 2020). Rows:
    x | D(E(x)) || x' | decoded."""
    options = _given(locals())
    from invkeras.analyses.attack import AttackConfig, attack_inverter

    result = attack_inverter(AttackConfig(**options))
    s = result.summary

    def share(value):
        return "" if value is None else f"{value:.0%}"

    rows = [["attack", s["label"]], ["inputs", s["n"]],
            ["attack success rate (label of x' != label of x)", share(s["attack_success_rate"])],
            ["decoded labelled with the adversarial label of x' (successful attacks only)",
             f"{share(s['share_decoded_with_adversarial_label'])} "
             f"({share(s['share_decoded_with_adversarial_label_successful'])})"],
            ["decoded keeping x's label", share(s["share_decoded_with_input_label"])],
            ["reconstructions keeping x's label", share(s["share_reconstructions_with_input_label"])],
            ["labels x / D(E(x)) / x' / decoded",
             ", ".join(f"{p['x']}/{p['reconstruction']}/{p['x_adv']}/{p['decoded']}" for p in s["per_input"])],
            ["wall time", f"{result.seconds:.1f} s"]]
    console.print(_table("Attack on the representation", ["", "value"], rows))
    console.print("written: " + ", ".join(str(p) for p in result.paths))


def _parse_dims(text: str) -> dict[str, int]:
    """'shape=3,size=2' -> {'shape': 3, 'size': 2}."""
    dims = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise InvkerasError(f"--dims {text!r}: expected FACTOR=N pairs, e.g. shape=3,size=2")
        dims[name.strip()] = int(value)
    return dims


@app.command(
    "train-factors",
    epilog=_examples(
        "invkeras train-factors --inverter runs/procedural/conv/inverters/cinn/fc3   # all five procedural factors",
        "invkeras train-factors --inverter runs/procedural/conv/inverters/cinn/logits --factor shape --factor size",
        "invkeras train-factors --inverter runs/idx-mnist-full/conv/inverters/cinn/fc3 --pairs labels   # class + style",
        "invkeras train-factors --features runs/procedural/conv/features/fc3 --dims shape=2,size=2,row=3,col=3,intensity=2",
        "invkeras train-factors --inverter DIR --shuffled   # the control: shuffled pair labels",
    ),
)
def train_factors(
    inverter: Optional[str] = typer.Option(None, help="A cinn inverter (directory or inverter.keras): r = (h, v)."),
    features: Optional[str] = typer.Option(None, help="Extract directory or .npz with x, h (and y): r = h."),
    pairs: Optional[str] = typer.Option(None, help="factors (the procedural factors; a pair shares exactly one) | "
                                                   "labels (pairs of one class) [default: factors]."),
    factor: List[str] = typer.Option([], "--factor", help="A factor that gets a block (repeatable) [default: all five; "
                                                          "'class' for labels]."),
    dims: Optional[str] = typer.Option(None, help="Block sizes FACTOR=N,... [default: the estimate from pairs]."),
    shuffled: bool = typer.Option(False, "--shuffled", help="Control: shuffle the pairs' shared-factor labels."),
    rho: Optional[float] = typer.Option(None, help="Correlation of a shared factor's blocks [default: 0.975]."),
    noise: Optional[float] = typer.Option(None, help="Dequantisation noise, std in standardised r [default: 0.05]."),
    num_blocks: Optional[int] = typer.Option(None, help="Flow blocks [default: 8]."),
    hidden: Optional[int] = typer.Option(None, help="Coupling network width [default: 128]."),
    depth: Optional[int] = typer.Option(None, help="Hidden layers per coupling network [default: 2]."),
    batch_size: Optional[int] = typer.Option(None, help="Pairs per step [default: 128]."),
    learning_rate: Optional[float] = typer.Option(None, help="Adam learning rate [default: 0.001]."),
    lr_decay: Optional[float] = typer.Option(None, help="Learning-rate factor per step [default: 0.9995]."),
    max_steps: Optional[int] = typer.Option(None, help="[default: 4000]"),
    steps_per_checkpoint: Optional[int] = typer.Option(None, help="[default: 500]"),
    patience: Optional[int] = typer.Option(None, help="Checkpoint intervals without improvement [default: 5]."),
    num_pairs: Optional[int] = typer.Option(None, help="Training pairs, a fixed seeded pool [default: 100000]."),
    eval_pairs: Optional[int] = typer.Option(None, help="Validation pairs [default: 2000]."),
    dim_pairs: Optional[int] = typer.Option(None, help="Pairs for the dimensionality estimate [default: 5000]."),
    train_examples: Optional[int] = typer.Option(None, help="Use the first N stored training examples only."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    out: Optional[str] = typer.Option(None, help="Output directory [default: <inverter dir>/factor_inn/<pairs>]."),
) -> None:
    """Train a factor INN (Esser, Rombach & Ommer 2020) on a representation: z~ = T(r) split into one block
    per semantic factor plus a residual, learnt from pairs that share a factor. Resumable."""
    options = _given(locals())
    from invkeras.factors.config import FactorConfig
    from invkeras.factors.training import train_factors as train

    options.pop("shuffled")
    if shuffled:
        options["shuffled"] = True
    if not factor:
        options.pop("factor")
    if dims is not None:
        options["dims"] = _parse_dims(dims)
    result = train(FactorConfig(**options))
    estimate = result.dimensions
    scores = dict(zip(estimate["names"], estimate["scores"])) if estimate["scores"] else {}
    correlations = result.validation["block_correlations"]
    rows = [[b["name"], b["size"], f"{scores[b['name']]:.3f}" if b["name"] in scores else "",
             f"{correlations[k][k]:.3f}" if k < len(correlations[k]) and correlations[k][k] is not None else ""]
            for k, b in enumerate(result.blocks)]
    console.print(_table(f"Factor blocks ({estimate['method']}; {estimate['dim']} dimensions)",
                         ["block", "dims", "score", "pair correlation (target rho)"], rows))
    v = result.validation
    console.print(_table("Factor INN", ["", "value"], [
        ["model", result.model_path],
        ["validation pair NLL, nats/dim", f"{v['pair_nll_nats_per_dim']:.4f} ± {v['se']:.4f} "
                                          f"(initial {v['initial_pair_nll_nats_per_dim']:.4f})"],
        ["steps", result.steps], ["wall time", f"{result.seconds:.1f} s"]]))


@app.command(
    "edit-factors",
    epilog=_examples(
        "invkeras edit-factors --factors runs/procedural/conv/inverters/cinn/fc3/factor_inn/factors --factor size",
        "invkeras edit-factors --factors DIR --factor row --factor col --num-pairs 12 --walk 0,0.5,1",
        "invkeras edit-factors --factors runs/idx-mnist-full/conv/inverters/cinn/fc3/factor_inn/labels   # class, residual",
    ),
)
def edit_factors(
    factors: str = typer.Option(..., help="A factor INN directory (train-factors)."),
    factor: List[str] = typer.Option([], "--factor", help="A block to edit (repeatable) [default: every factor's]."),
    num_pairs: Optional[int] = typer.Option(None, help="Pairs (A, B), the rows of each grid [default: 8]."),
    walk: Optional[str] = typer.Option(None, help="Walk positions, 0 = A's block, 1 = B's [default: 0,0.25,0.5,0.75,1]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same pairs [default: 0]."),
    out: Optional[str] = typer.Option(None, help="Output directory [default: <factors dir>/edits]."),
) -> None:
    """Swap one factor's block between two images and decode (A with B's block), and walk A's block towards
    B's: PNG grids, plus what every edited image reads back as (its exact factors on procedural data)."""
    options = _given(locals())
    from invkeras.analyses.factors import EditFactorsConfig
    from invkeras.analyses.factors import edit_factors as run_edit

    if not factor:
        options.pop("factor")
    if walk is not None:
        options["walk"] = _parse_floats(walk, "--walk")
    result = run_edit(EditFactorsConfig(**options))
    rows = [[name, ", ".join(p.name for p in paths),
             *[f"{result.summary[name].get(k):.0%}" if result.summary[name].get(k) is not None else ""
               for k in ("share_edit_accuracy", "share_target", "share_others_kept")]]
            for name, paths in result.grids.items()]
    console.print(_table("Factor edits (procedural: exact factors of the decoded swaps)",
                         ["block", "grids", "edit accuracy", "target value", "others kept"], rows))
    console.print(f"written: {result.json_path}, {result.arrays_path}")


@app.command(
    "score-factors",
    epilog=_examples(
        "invkeras score-factors --factors runs/procedural/conv/inverters/cinn/fc3/factor_inn/factors",
        "invkeras score-factors --factors DIR_FC3 --factors DIR_LOGITS --out runs/procedural/conv/factor_scores",
        "invkeras score-factors --factors runs/idx-mnist-full/conv/inverters/cinn/fc3/factor_inn/labels --num-pairs 500",
    ),
)
def score_factors(
    factors: List[str] = typer.Option(..., "--factors", help="A factor INN directory (repeatable: one per layer)."),
    label: List[str] = typer.Option([], "--label", help="Row name per model, in order [default: the layers]."),
    num_pairs: Optional[int] = typer.Option(None, help="Swaps per block [default: 2000]."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    out: Optional[str] = typer.Option(None, help="Output directory [default: the one model's; required with several]."),
) -> None:
    """Per layer: the dimensions per factor, and on procedural data the disentanglement matrix (normalised
    mutual information of swapped blocks and exact factors) and edit accuracy; for label pairs, the share of
    class swaps that take the other image's label. Tables, scores.json/.csv and plots."""
    options = _given(locals())
    from invkeras.analyses.factors import ScoreFactorsConfig
    from invkeras.analyses.factors import score_factors as run_score

    options.pop("label")
    if label:
        options["labels"] = label
    result = run_score(ScoreFactorsConfig(**options))
    for table in factor_score_tables(result.rows):
        console.print(table)
    console.print("written: " + ", ".join(str(p) for p in [result.json_path, result.csv_path, *result.plots]))


def factor_score_tables(rows: list[dict]) -> list[Table]:
    """Block sizes per layer, then accuracies and label swaps per layer, then each layer's matrix."""

    def pct(value):
        return "" if value is None else f"{value:.0%}"

    blocks = list(dict.fromkeys(b["name"] for r in rows for b in r["blocks"]))
    sizes = [[r["label"], r["dim"], *[next((str(b["size"]) for b in r["blocks"] if b["name"] == name), "")
                                      for name in blocks]] for r in rows]
    tables = [_table("Dimensions per factor block", ["layer", "dim", *blocks], sizes)]
    names = list(dict.fromkeys(name for r in rows for name in (r.get("edit_accuracy") or {})))
    columns = [*[f"edit {n}" for n in names]]
    if any(r.get("label_swaps") for r in rows):
        columns += ["recon.: A's label", "class swap: B's label", "residual swap: A's label"]
    summary = []
    for r in rows:
        swaps = r.get("label_swaps") or {}
        row = [r["label"], pct(r.get("reconstruction_accuracy")),
               *[pct((r.get("edit_accuracy") or {}).get(n, {}).get("edit_accuracy")) for n in names]]
        if len(columns) > len(names):
            row += [pct(swaps.get(k)) for k in ("reconstruction_keeps_a_label", "class_swap_takes_b_label",
                                                "residual_swap_keeps_a_label")]
        summary.append(row)
    if columns or any(r.get("reconstruction_accuracy") is not None for r in rows):
        tables.append(_table("Edits read back: reconstruction, edit accuracy, label swaps", ["layer", "recon.",
                                                                                            *columns], summary))
    for r in rows:
        matrix = r.get("disentanglement")
        if matrix:
            body = [[b, *[f"{v:.2f}" for v in values]] for b, values in zip(matrix["blocks"], matrix["matrix"])]
            tables.append(_table(f"{r['label']}: disentanglement, I(f of swap; f of B) / H(f), {r['num_pairs']} swaps",
                                 ["block", *matrix["factors"]], body))
    return tables


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"invkeras {__version__}")
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
