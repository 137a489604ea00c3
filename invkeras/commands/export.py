"""`invkeras export`: a classifier or an inverter as a TensorFlow SavedModel."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict

from invkeras import artifacts
from invkeras.commands.base import Command, StepAccess, model_files, register_command
from invkeras.commands.tables import console, table
from invkeras.errors import InvkerasError


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
        from invkeras.data.features import resolve_model_path

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
