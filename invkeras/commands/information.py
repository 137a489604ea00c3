"""`invkeras estimate-mi`: the information table, held-out NLL, NCE and MI estimates per layer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer
from pydantic import Field, create_model

from invkeras import artifacts
from invkeras.analyses.mi import EstimateMIConfig
from invkeras.commands.base import config_of, fields_of, given, register_command
from invkeras.commands.tables import console, latent_mi_table, mi_report_table, mi_table
from invkeras.commands.workspace import InverterAnalysis, InvertersInWorkspace


class EstimateMIStep(create_model("_EstimateMIFields", __base__=InvertersInWorkspace,
                                  **fields_of(EstimateMIConfig,
                                               without=("inverters", "unconditional", "out", "labels")))):
    """The information table over the layers' inverters: pixel-space for a kind with a pixel
    likelihood, a separate latent-space table (mi/latent_<split>.json) for a kind with a latent
    one (`kind: cinn`; its unconditional flow gives H*(z) - H*(z|h)).

    With `archs`, one table compares the layers of several architectures' runs on the same
    test images (paired), in rows labelled arch/layer; it is written to
    runs/<dataset>/architectures/mi/<split>.json, and `reference` names such a label.
    """

    command: Literal["estimate-mi"]
    unconditional: bool = Field(True, description="also use the 'none' inverter for H*(x) - H*(x|h)")
    archs: Optional[list[str]] = Field(None, min_length=2, description="compare these architectures' runs")

    def rows(self) -> list[tuple[Optional[str], Path]]:
        """(label, inverter dir) per row; the label is None when rows are plain layers."""
        if not self.archs:
            return [(None, self.inverter(layer)) for layer in self.layers]
        return [(f"{arch}/{layer}", artifacts.inverter_dir(self.dataset, arch, layer, self.workspace, kind=self.kind))
                for arch in self.archs for layer in self.layers]

    def out(self) -> Path:
        """mi/<split>.json, or mi/latent_<split>.json for a kind with a latent likelihood (cinn)."""
        from invkeras.analyses.mi import report_name
        from invkeras.inverters import inverter_class

        run = "architectures" if self.archs else self.arch
        name = report_name(self.split, inverter_class(self.kind).latent_likelihood)
        return artifacts.run_dir(self.dataset, run, self.workspace) / "mi" / name


def cli_estimate_mi(
    inverter: List[str] = typer.Option(..., help="Inverter directory with a pixel likelihood, or all with a latent "
                                            "one (kind cinn: a separate latent-space table) (repeatable)."),
    unconditional: Optional[str] = typer.Option(None, help="Unconditional inverter, for H*(x) - H*(x|h)."),
    reference: Optional[str] = typer.Option(None, help="Layer whose NCE the others are compared with."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    eval_examples: Optional[int] = typer.Option(None, help="Evaluate on the first N held-out images."),
    out: Optional[str] = typer.Option(None, help="JSON path (a CSV twin is written beside it)."),
) -> None:
    """Held-out NLL per inverter, the NCE bound on I(x;h), and MI estimates, as a table, JSON and CSV."""
    options = given(locals())
    from invkeras.analyses.mi import EstimateMIConfig
    from invkeras.analyses.mi import estimate_mi as estimate

    options["inverters"] = options.pop("inverter")
    report, path = estimate(EstimateMIConfig(**options))
    console.print(latent_mi_table(report) if getattr(report, "space", None) == "latent" else mi_table(report))
    console.print(f"written: {path} and {path.with_suffix('.csv')}")


@register_command
class EstimateMI(InverterAnalysis):
    name = "estimate-mi"
    step_schema = EstimateMIStep
    examples = (
        "invkeras estimate-mi --inverter runs/procedural/conv/inverters/pixelcnn/conv1 --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --unconditional runs/procedural/conv/inverters/pixelcnn/none --reference conv1",
        "invkeras estimate-mi --inverter runs/mnist/conv/inverters/cinn/conv1 --inverter runs/mnist/conv/inverters/cinn/fc3 --unconditional runs/mnist/conv/inverters/cinn/none   # latent-space estimate H*(z) - H*(z|h), mi/latent_test.json",
    )
    cli = staticmethod(cli_estimate_mi)

    @staticmethod
    def run(step) -> str:
        from invkeras.analyses.mi import estimate_mi

        rows = step.rows()
        config = config_of(step, EstimateMIConfig, inverters=[str(inverter) for _, inverter in rows],
                           unconditional=str(step.inverter("none")) if step.unconditional else None,
                           out=str(step.out()), labels=[label for label, _ in rows] if step.archs else None)
        report, _ = estimate_mi(config)
        if getattr(report, "space", None) == "latent":
            from invkeras.analyses.latent_mi import ESTIMATE, NLL

            return "latent-space estimate: " + "; ".join(
                f"{r['layer']} H*(z|h) {r[NLL]:.1f}" + ("" if r[ESTIMATE] is None else f", I est. {r[ESTIMATE]:.1f}")
                for r in report.rows) + " nats"
        return "; ".join(f"{r['layer']} {r['H*(x|h) nats']:.1f}" for r in report.rows) + " nats"

    @staticmethod
    def outputs(step):
        return [step.out()]

    @classmethod
    def inverters_read(cls, step):
        return [path for _, path in step.rows()] + ([step.inverter("none")] if step.unconditional else [])

    @staticmethod
    def show(step) -> None:
        """The information table, after a recipe has run: the result people run it for."""
        console.print(mi_report_table(step.out()))
