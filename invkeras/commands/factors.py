"""`invkeras train-factors`, `edit-factors` and `score-factors`: factor INNs that split a
representation into semantic factors (Esser, Rombach & Ommer 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer
from pydantic import Field, create_model, field_validator

from invkeras import artifacts
from invkeras.analyses.factors import (EDITS_DIR, EDITS_JSON, SCORES_JSON, EditFactorsConfig, ScoreFactorsConfig,
                                      edit_factors, score_factors)
from invkeras.commands.analyses import parse_floats
from invkeras.commands.base import Command, OnePerLayer, config_of, fields_of, given, register_command
from invkeras.commands.tables import console, factor_score_tables, table
from invkeras.commands.workspace import InvertersInWorkspace
from invkeras.errors import InvkerasError
from invkeras.factors.config import FACTORS_DIR, FactorConfig, checked_factor_names, factor_dir_name


class FactorModelsInWorkspace(InvertersInWorkspace):
    """Steps on the factor INNs of the layers' inverters (kind cinn by default), each in
    <inverter dir>/factor_inn/<pairs> (`<pairs>-shuffled` for the control)."""
    kind: str = Field("cinn", description="the kind of the inverters whose (h, v) the factor INNs work on")
    pairs: Literal["factors", "labels"] = Field("factors", description="factors (procedural) | labels")
    shuffled: bool = Field(False, description="the control: factor INNs trained on shuffled pair labels")

    def factor_dir(self, layer: str) -> Path:
        return self.inverter(layer) / FACTORS_DIR / factor_dir_name(self.pairs, self.shuffled)


def parse_dims(text: str) -> dict[str, int]:
    """'shape=3,size=2' -> {'shape': 3, 'size': 2}."""
    dims = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise InvkerasError(f"--dims {text!r}: expected FACTOR=N pairs, e.g. shape=3,size=2")
        dims[name.strip()] = int(value)
    return dims


class TrainFactorsStep(create_model("_TrainFactorsFields", __base__=FactorModelsInWorkspace,
                                    **fields_of(FactorConfig, without=("inverter", "features", "out", "pairs",
                                                                        "shuffled")))):
    """One factor INN per layer's cinn inverter (Esser, Rombach & Ommer 2020), resumable."""
    command: Literal["train-factors"]

    @field_validator("factor")
    @classmethod
    def _known_factors(cls, value, info):
        return checked_factor_names(value, info.data.get("pairs", "factors"))  # checked when the recipe is read

    def config(self, layer: str) -> FactorConfig:
        values = {k: v for k, v in self.model_dump().items() if k in FactorConfig.model_fields}
        return FactorConfig(**values, inverter=str(self.inverter(layer)), out=str(self.factor_dir(layer)))


def cli_train_factors(
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
    options = given(locals())
    from invkeras.factors.training import train_factors as train

    options.pop("shuffled")
    if shuffled:
        options["shuffled"] = True
    if not factor:
        options.pop("factor")
    if dims is not None:
        options["dims"] = parse_dims(dims)
    result = train(FactorConfig(**options))
    estimate = result.dimensions
    scores = dict(zip(estimate["names"], estimate["scores"])) if estimate["scores"] else {}
    correlations = result.validation["block_correlations"]
    rows = [[b["name"], b["size"], f"{scores[b['name']]:.3f}" if b["name"] in scores else "",
             f"{correlations[k][k]:.3f}" if k < len(correlations[k]) and correlations[k][k] is not None else ""]
            for k, b in enumerate(result.blocks)]
    console.print(table(f"Factor blocks ({estimate['method']}; {estimate['dim']} dimensions)",
                         ["block", "dims", "score", "pair correlation (target rho)"], rows))
    v = result.validation
    console.print(table("Factor INN", ["", "value"], [
        ["model", result.model_path],
        ["validation pair NLL, nats/dim", f"{v['pair_nll_nats_per_dim']:.4f} ± {v['se']:.4f} "
                                          f"(initial {v['initial_pair_nll_nats_per_dim']:.4f})"],
        ["steps", result.steps], ["wall time", f"{result.seconds:.1f} s"]]))


@register_command
class TrainFactors(OnePerLayer):
    name = "train-factors"
    step_schema = TrainFactorsStep
    examples = (
        "invkeras train-factors --inverter runs/procedural/conv/inverters/cinn/fc3   # all five procedural factors",
        "invkeras train-factors --inverter runs/procedural/conv/inverters/cinn/logits --factor shape --factor size",
        "invkeras train-factors --inverter runs/mnist/conv/inverters/cinn/fc3 --pairs labels   # class + style",
        "invkeras train-factors --features runs/procedural/conv/features/fc3 --dims shape=2,size=2,row=3,col=3,intensity=2",
        "invkeras train-factors --inverter DIR --shuffled   # the control: shuffled pair labels",
    )
    cli = staticmethod(cli_train_factors)

    @staticmethod
    def layer_output(step, layer):
        return step.config(layer).model_path()

    @staticmethod
    def run_layer(step, layer) -> str:
        from invkeras.factors.training import train_factors

        result = train_factors(step.config(layer))
        blocks = " ".join(f"{b['name']}:{b['size']}" for b in result.blocks)
        return f"{layer} {blocks}, pair NLL {result.validation['pair_nll_nats_per_dim']:.3f} nats/dim"


class EditFactorsStep(create_model("_EditFactorsFields", __base__=FactorModelsInWorkspace,
                                   **fields_of(EditFactorsConfig, without=("factors", "out")))):
    """Swap and walk grids of each layer's factor INN, in <factor dir>/edits/."""
    command: Literal["edit-factors"]

    def out(self, layer: str) -> Path:
        return self.factor_dir(layer) / EDITS_DIR


def cli_edit_factors(
    factors: str = typer.Option(..., help="A factor INN directory (train-factors)."),
    factor: List[str] = typer.Option([], "--factor", help="A block to edit (repeatable) [default: every factor's]."),
    num_pairs: Optional[int] = typer.Option(None, help="Pairs (A, B), the rows of each grid [default: 8]."),
    walk: Optional[str] = typer.Option(None, help="Walk positions, 0 = A's block, 1 = B's [default: 0,0.25,0.5,0.75,1]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same pairs [default: 0]."),
    out: Optional[str] = typer.Option(None, help="Output directory [default: <factors dir>/edits]."),
) -> None:
    """Swap one factor's block between two images and decode (A with B's block), and walk A's block towards
    B's: PNG grids, plus what every edited image reads back as (its exact factors on procedural data)."""
    options = given(locals())

    if not factor:
        options.pop("factor")
    if walk is not None:
        options["walk"] = parse_floats(walk, "--walk")
    result = edit_factors(EditFactorsConfig(**options))
    rows = [[name, ", ".join(p.name for p in paths),
             *[f"{result.summary[name].get(k):.0%}" if result.summary[name].get(k) is not None else ""
               for k in ("share_edit_accuracy", "share_target", "share_others_kept")]]
            for name, paths in result.grids.items()]
    console.print(table("Factor edits (procedural: exact factors of the decoded swaps)",
                         ["block", "grids", "edit accuracy", "target value", "others kept"], rows))
    console.print(f"written: {result.json_path}, {result.arrays_path}")


@register_command
class EditFactors(OnePerLayer):
    name = "edit-factors"
    step_schema = EditFactorsStep
    examples = (
        "invkeras edit-factors --factors runs/procedural/conv/inverters/cinn/fc3/factor_inn/factors --factor size",
        "invkeras edit-factors --factors DIR --factor row --factor col --num-pairs 12 --walk 0,0.5,1",
        "invkeras edit-factors --factors runs/mnist/conv/inverters/cinn/fc3/factor_inn/labels   # class, residual",
    )
    cli = staticmethod(cli_edit_factors)

    @staticmethod
    def layer_output(step, layer):
        return step.out(layer) / EDITS_JSON

    @staticmethod
    def run_layer(step, layer) -> str:
        result = edit_factors(config_of(step, EditFactorsConfig, factors=str(step.factor_dir(layer)),
                                        out=str(step.out(layer))))
        accuracy = [f"{name} {s['share_edit_accuracy']:.0%}" for name, s in result.summary.items()
                    if "share_edit_accuracy" in s]
        return f"{layer}: {len(result.grids)} block(s)" + (f", edits right {', '.join(accuracy)}" if accuracy else "")


class ScoreFactorsStep(create_model("_ScoreFactorsFields", __base__=FactorModelsInWorkspace,
                                    **fields_of(ScoreFactorsConfig, without=("factors", "labels", "out")))):
    """Dimensions, disentanglement matrices, edit accuracy and label swaps of the layers' factor
    INNs, one table in runs/<dataset>/<arch>/factor_scores/<pairs>/."""
    command: Literal["score-factors"]

    def out(self) -> Path:
        return artifacts.run_dir(self.dataset, self.arch, self.workspace) / "factor_scores" / factor_dir_name(
            self.pairs, self.shuffled)


def cli_score_factors(
    factors: List[str] = typer.Option(..., "--factors", help="A factor INN directory (repeatable: one per layer)."),
    label: List[str] = typer.Option([], "--label", help="Row name per model, in order [default: the layers]."),
    num_pairs: Optional[int] = typer.Option(None, help="Swaps per block [default: 2000]."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    out: Optional[str] = typer.Option(None, help="Output directory [default: the one model's; required with several]."),
) -> None:
    """Per layer: the dimensions per factor, and on procedural data the disentanglement matrix (normalised
    mutual information of swapped blocks and exact factors) and edit accuracy; for label pairs, the share of
    class swaps that take the other image's label. Tables, scores.json/.csv and plots."""
    options = given(locals())

    options.pop("label")
    if label:
        options["labels"] = label
    result = score_factors(ScoreFactorsConfig(**options))
    for table in factor_score_tables(result.rows):
        console.print(table)
    console.print("written: " + ", ".join(str(p) for p in [result.json_path, result.csv_path, *result.plots]))


@register_command
class ScoreFactors(Command):
    name = "score-factors"
    step_schema = ScoreFactorsStep
    examples = (
        "invkeras score-factors --factors runs/procedural/conv/inverters/cinn/fc3/factor_inn/factors",
        "invkeras score-factors --factors DIR_FC3 --factors DIR_LOGITS --out runs/procedural/conv/factor_scores",
        "invkeras score-factors --factors runs/mnist/conv/inverters/cinn/fc3/factor_inn/labels --num-pairs 500",
    )
    cli = staticmethod(cli_score_factors)

    @staticmethod
    def run(step) -> str:
        result = score_factors(config_of(step, ScoreFactorsConfig, factors=[str(step.factor_dir(layer))
                                                                            for layer in step.layers],
                                         out=str(step.out())))
        parts = []
        for row in result.rows:
            matrix, swaps = row.get("disentanglement"), row.get("label_swaps")
            if matrix:
                diagonal = [values[matrix["factors"].index(b)] for b, values in zip(matrix["blocks"], matrix["matrix"])
                            if b in matrix["factors"]]
                parts.append(f"{row['label']} mean diagonal MI {sum(diagonal) / len(diagonal):.2f}")
            if swaps:
                parts.append(f"{row['label']} class swaps take B's label {swaps['class_swap_takes_b_label']:.0%}")
        return "; ".join(parts) or f"{len(result.rows)} factor model(s) scored"

    @staticmethod
    def outputs(step):
        return [step.out() / SCORES_JSON]
