"""`invkeras inspect`: a user's classifier and images in, a report on every layer out, in a time budget.

The work is `invkeras.inspection` (layer choice, calibration and plan, the run, the report);
this module is the command: its options, its recipe step and what the step writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from invkeras.commands.base import (DATA_DIR_HELP, Command, StepAccess, classifier_files, config_of, given,
                                    register_command)


def cli_inspect(
    model: Optional[str] = typer.Option(None, help="Your classifier: a .keras file or a run directory."),
    dataset: Optional[str] = typer.Option(None, help="Its images: a dataset spec, e.g. npz:my_images.npz "
                                                     "(see `invkeras datasets`)."),
    layers: Optional[str] = typer.Option(None, help="Layers to invert, comma-separated [default: each conv block's "
                                                    "output, the last hidden dense layer, the logits]."),
    kinds: Optional[str] = typer.Option(None, help="Inverter kinds, comma-separated (pixelcnn,cinn,mse,gan), or auto "
                                                   "[default: auto]."),
    budget: Optional[str] = typer.Option(None, help="Wall-clock budget of the whole run, e.g. 30m, 90s, 1h "
                                                    "[default: 30m]."),
    out: Optional[str] = typer.Option(None, help="Output directory [default: runs/<dataset>/inspect]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same models and samples [default: 0]."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    features: Optional[str] = typer.Option(None, help="A directory with one extract directory or <layer>.npz of x "
                                                      "and h per layer: representations from any framework."),
) -> None:
    """Invert every chosen layer of your classifier within a time budget, and write one report of what
    each layer keeps (samples, label agreement, diversity, distances, information estimates)."""
    options = given(locals())  # before any import adds names
    from invkeras.commands.tables import console
    from invkeras.inspection import InspectConfig, inspect_classifier

    result = inspect_classifier(InspectConfig(**options))
    console.print(result.reading, highlight=False)
    console.print(f"report: {result.report_html}", highlight=False)


@register_command
class Inspect(Command):
    name = "inspect"
    examples = (
        "invkeras inspect --model my_classifier.keras --dataset npz:my_images.npz --budget 30m",
        "invkeras inspect --model runs/procedural/conv --dataset procedural --layers conv1,fc3 --budget 6m",
        "invkeras inspect --model my_classifier.keras --dataset npz:my_images.npz --kinds pixelcnn,mse --out inspect",
        "invkeras inspect --features my_features/ --budget 20m   # one <layer>.npz of x and h per layer",
    )
    config = "invkeras.inspection.config:InspectConfig"
    cli = staticmethod(cli_inspect)

    @staticmethod
    def run(step) -> str:
        from invkeras.commands.tables import console
        from invkeras.inspection import InspectConfig, inspect_classifier
        from invkeras.inspection.config import format_duration

        result = inspect_classifier(config_of(step, InspectConfig))
        console.print(result.reading, highlight=False)
        return (f"{len(result.layers)} layers, {', '.join(result.kinds)}, {format_duration(result.spent)}: "
                f"{result.report_html}")

    @staticmethod
    def outputs(step):
        from invkeras.inspection.config import InspectConfig

        return [config_of(step, InspectConfig).out_dir() / "report.html"]

    @staticmethod
    def access(step) -> StepAccess:
        from invkeras.inspection.config import InspectConfig

        config = config_of(step, InspectConfig)
        reads = [*(classifier_files(config.model) if config.model else []),
                 *([Path(config.features)] if config.features else [])]
        return StepAccess(reads, [config.out_dir()])
