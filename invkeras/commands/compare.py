"""`invkeras compare`: inverters of one layer side by side (Nash et al. 2019, Table 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Literal, Optional

import typer
from pydantic import Field, create_model, field_validator

from invkeras import artifacts
from invkeras.analyses.compare import CompareConfig
from invkeras.commands.base import OnePerLayer, config_of, fields_of, given, register_command
from invkeras.commands.tables import comparison_table, console
from invkeras.commands.workspace import InverterAnalysis, InvertersInWorkspace, known_kind

COMPARISON = "compare.json"


class CompareStep(create_model("_CompareFields", __base__=InvertersInWorkspace,
                               **fields_of(CompareConfig, without=("inverters", "labels", "out")))):
    """Kinds side by side, one comparison per layer: Table 1 distances, label agreement,
    diversity and NLL, in runs/<dataset>/<arch>/comparisons/<layer>/."""

    command: Literal["compare"]
    kinds: Optional[list[str]] = Field(None, min_length=1, description="kinds compared; default [kind]")

    @field_validator("kinds")
    @classmethod
    def _kinds_known(cls, value):
        return None if value is None else [known_kind(k) for k in value]

    def compared_kinds(self) -> list[str]:
        return self.kinds or [self.kind]

    def out(self, layer: str) -> Path:
        return artifacts.comparison_dir(self.dataset, self.arch, layer, self.workspace)


def cli_compare(
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
    options = given(locals())
    from invkeras.analyses.compare import CompareConfig, compare_inverters

    options["inverters"] = options.pop("inverter")
    options["labels"] = options.pop("label") or None
    result = compare_inverters(CompareConfig(**options))
    console.print(comparison_table(json.loads(result.json_path.read_text())))
    written = [result.json_path, result.csv_path, result.arrays_path, *result.grid_paths.values()]
    console.print("written: " + ", ".join(str(p) for p in written if p is not None))


@register_command
class Compare(OnePerLayer, InverterAnalysis):
    name = "compare"
    step_schema = CompareStep
    examples = (
        "invkeras compare --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --inverter runs/procedural/conv/inverters/mse/fc3",
        "invkeras compare --inverter runs/procedural/conv/inverters/pixelcnn/conv1 --num-images 100 --grid-samples 256",
        "invkeras compare --inverter A --inverter B --label small --label paper --out comparisons/fc3",
    )
    cli = staticmethod(cli_compare)

    @staticmethod
    def layer_output(step, layer):
        return step.out(layer) / COMPARISON

    @staticmethod
    def run_layer(step, layer) -> str:
        from invkeras.analyses.compare import compare_inverters

        inverters = [str(step.inverter(layer, kind)) for kind in step.compared_kinds()]
        result = compare_inverters(config_of(step, CompareConfig, inverters=inverters, out=str(step.out(layer))))
        return layer + " " + ", ".join(f"{r['label']} IM-NN {r['IM-NN']['mean_l1']:.2f}" for r in result.rows)

    @classmethod
    def inverters_read(cls, step):
        return [step.inverter(layer, kind) for layer in step.layers for kind in step.compared_kinds()]

    @staticmethod
    def show(step) -> None:
        """The comparison tables, after a recipe has run."""
        for layer in step.layers:
            console.print(comparison_table(json.loads((step.out(layer) / COMPARISON).read_text())))
