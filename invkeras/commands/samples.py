"""`invkeras sample` and `invkeras sample-grid`: samples of p(x | h(x)) for held-out images."""

from __future__ import annotations

from typing import Literal, Optional

import typer
from pydantic import Field, create_model, field_validator

from invkeras import artifacts
from invkeras.analyses.samples import SampleConfig
from invkeras.commands.base import Command, config_of, fields_of, given, register_command
from invkeras.commands.tables import console, table
from invkeras.commands.workspace import InverterAnalysis, InvertersInWorkspace, known_kind

SAMPLE_GRID = "samples.png"
RECONSTRUCTION_GRID = "samples_reconstruction.png"


class SampleStep(create_model("_SampleFields", __base__=InvertersInWorkspace,
                              **fields_of(SampleConfig, without=("inverter", "out")))):
    """Sample grids, one per layer; `reconstruction` names a kind with `reconstruct` (e.g. mse)
    whose inverter of the same layer adds the input | reconstruction | samples grid."""

    command: Literal["sample"]
    reconstruction: Optional[str] = Field(None, description="kind of the reconstruction column, e.g. mse")

    @field_validator("reconstruction")
    @classmethod
    def _reconstruction_kind(cls, value):
        return None if value is None else known_kind(value)


def cli_sample(
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
    options = given(locals())
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
    console.print(table("Samples", ["", "value"], rows))


@register_command
class Sample(InverterAnalysis):
    name = "sample"
    step_schema = SampleStep
    examples = (
        "invkeras sample --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --num-inputs 8 --num-samples 8",
        "invkeras sample --inverter runs/procedural/conv/inverters/pixelcnn/none --num-samples 16 --seed 1",
        "invkeras sample --inverter runs/procedural/conv/inverters/mse/fc3      # any kind",
        "invkeras sample --inverter runs/mnist/conv/inverters/gan/logits --misclassified   # the classifier's mistakes",
    )
    cli = staticmethod(cli_sample)

    @staticmethod
    def run(step) -> str:
        from invkeras.analyses.samples import draw_inversions, save_samples_with_reconstruction

        for layer in step.layers:
            config = config_of(step, SampleConfig, inverter=str(step.inverter(layer)))
            if not artifacts.is_complete(step.inverter(layer) / config.output_name(SAMPLE_GRID)):  # only missing grids
                draw_inversions(config)
            if step.reconstruction and not artifacts.is_complete(step.inverter(layer) /
                                                                 config.output_name(RECONSTRUCTION_GRID)):
                save_samples_with_reconstruction(config, str(step.inverter(layer, step.reconstruction)))
        return f"grids for {', '.join(step.layers)}" + (f" (+ {step.reconstruction} reconstructions)"
                                                         if step.reconstruction else "")

    @staticmethod
    def outputs(step):
        from invkeras.analyses.samples import output_name

        grids = [step.inverter(layer) / output_name(SAMPLE_GRID, step.misclassified) for layer in step.layers]
        if step.reconstruction:
            grids += [step.inverter(layer) / output_name(RECONSTRUCTION_GRID, step.misclassified)
                      for layer in step.layers]
        return grids


def cli_sample_grid(
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
    options = given(locals())
    from invkeras.analyses.samples import SampleConfig, save_samples_with_reconstruction

    reconstructor = options.pop("reconstructor")
    result = save_samples_with_reconstruction(SampleConfig(**options), reconstructor)
    rows = [["grid", result.grid_path], ["reconstruction MSE per pixel", f"{result.mse_per_pixel:.1f}"],
            ["wall time", f"{result.seconds:.1f} s"]]
    console.print(table("Samples with reconstruction", ["", "value"], rows))


@register_command
class SampleGrid(Command):
    name = "sample-grid"
    examples = (
        "invkeras sample-grid --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --reconstructor runs/procedural/conv/inverters/mse/fc3",
    )
    cli = staticmethod(cli_sample_grid)
