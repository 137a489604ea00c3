"""`invkeras edit`: edit a layer's representation of held-out images and decode the result
(Teterwak et al. 2021)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import ClassVar, List, Literal, Optional

import typer
from pydantic import Field, create_model, field_validator

from invkeras import artifacts
from invkeras.analyses.edit import EDITS_DIR, EditConfig, shift_list
from invkeras.commands.base import config_of, fields_of, given, register_command
from invkeras.commands.tables import console, edit_table
from invkeras.commands.workspace import InverterAnalysis, InvertersInWorkspace
from invkeras.errors import InvkerasError


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvkerasError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not values:
        raise InvkerasError(f"{flag} {text!r}: give at least one number")
    if not all(math.isfinite(v) for v in values):
        raise InvkerasError(f"{flag} {text!r}: every number must be finite")
    return values


class EditStep(create_model("_EditFields", __base__=InvertersInWorkspace,
                            **fields_of(EditConfig, without=("inverter", "out")))):
    """Logit editing, one run per layer's inverter: grids sweeping each operation's strength and
    edits.json with the classifier's labels, in <inverter dir>/<subdir>/."""

    command: Literal["edit"]
    # `scale` here multiplies h; the recipe's top-level `scale` (a model size) must not reach it.
    own_keys: ClassVar[tuple[str, ...]] = ("scale",)
    subdir: str = Field(EDITS_DIR, description="folder under the inverter's directory (several edit steps of "
                                               "one inverter need different ones)")

    @field_validator("shift", mode="before")
    @classmethod
    def _shift_list(cls, value):
        return shift_list(value)

    @field_validator("subdir")
    @classmethod
    def _plain_subdir(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or ".." in value:
            raise ValueError(f"{value!r} must be a plain folder name, not a path")
        return value

    def out(self, layer: str) -> Path:
        return self.inverter(layer) / artifacts.plain_name(self.subdir, "subdir")


def cli_edit(
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
    options = given(locals())
    from invkeras.analyses.edit import EditConfig, edit_inverter

    if not shift:
        options.pop("shift")
    if not interpolate:
        options.pop("interpolate")
    if strengths is not None:
        options["strengths"] = parse_floats(strengths, "--strengths")
    result = edit_inverter(EditConfig(**options))
    console.print(edit_table(result))
    console.print("written: " + ", ".join(str(p) for p in [result.json_path, result.arrays_path,
                                                           *result.grid_paths.values()]))


@register_command
class Edit(InverterAnalysis):
    name = "edit"
    step_schema = EditStep
    examples = (
        "invkeras edit --inverter runs/mnist/conv/inverters/gan/logits --shift 3:10",
        "invkeras edit --inverter runs/mnist/conv/inverters/pixelcnn/logits --shift 0:8 --shift 7:8 --scale 3 --noise 2 --interpolate --num-inputs 6   # any kind that can sample",
        "invkeras edit --inverter DIR --scale 0 --strengths 0,0.5,0.9,1 --num-samples 4",
    )
    cli = staticmethod(cli_edit)

    @staticmethod
    def run(step) -> str:
        from invkeras.analyses.edit import EDITS_JSON, edit_inverter

        summaries = []
        for layer in step.layers:
            if artifacts.is_complete(step.out(layer) / EDITS_JSON):
                continue
            result = edit_inverter(config_of(step, EditConfig, inverter=str(step.inverter(layer)),
                                             out=str(step.out(layer))))
            for op in result.operations:
                last = op["per_strength"][-1]
                target = last.get("share_target_class", last.get("share_partner_label"))
                summaries.append(f"{layer} {op['name']}: " + (f"{target:.0%} target label" if target is not None else
                                                              f"{last['share_input_label']:.0%} keep the input's label"))
        return "; ".join(summaries) or "nothing left to edit"

    @staticmethod
    def outputs(step):
        from invkeras.analyses.edit import EDITS_JSON

        return [step.out(layer) / EDITS_JSON for layer in step.layers]
