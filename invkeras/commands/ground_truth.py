"""`invkeras ground-truth`: the bound against the truth on the procedural dataset, where H(x|h)
is exact for h a subset of its factors."""

from __future__ import annotations

from typing import List, Optional

import typer

from invkeras.analyses.ground_truth import GroundTruthConfig
from invkeras.commands.base import Command, StepAccess, config_of, given, register_command, with_command
from invkeras.commands.tables import console, table


def cli_ground_truth(
    subset: List[str] = typer.Option([], "--subset", help="Factor subset: all, none, or names joined by + "
                                     "(shape, size, row, col, intensity); repeatable."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps per inverter [default: 1500]."),
    steps_per_checkpoint: Optional[int] = typer.Option(None, help="[default: 500]"),
    filters: Optional[int] = typer.Option(None, help="PixelCNN++ filters [default: 16]."),
    learning_rate: Optional[float] = typer.Option(None, help="[default: 0.003]"),
    eval_examples: Optional[int] = typer.Option(None, help="Validation and test images per subset [default: 500]."),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    workspace: Optional[str] = typer.Option(None, help="[default: runs]"),
    name: Optional[str] = typer.Option(None, help="Folder under <workspace>/procedural/ [default: ground-truth]."),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/procedural/ground-truth)."),
) -> None:
    """The bound against the truth: on the procedural dataset, with h a subset of its factors, H(x|h) is exact.
    Trains one PixelCNN++ per subset (finished ones are reused) and tables test NLL, truth and gap."""
    options = given(locals())
    from invkeras.analyses.ground_truth import ground_truth as run_ground_truth, GroundTruthConfig

    if subset:
        options["subsets"] = options.pop("subset")
    else:
        options.pop("subset")
    result = run_ground_truth(GroundTruthConfig(**options))
    rows = [[r["subset"], f"{r['true_nats']:.3f}", f"{r['estimate_nats']:.3f} ± {r['se_nats']:.3f}",
             f"{r['gap_nats']:+.3f}", "yes" if r["within_tolerance"] else "no",
             "yes" if r["bound_holds"] else "VIOLATED"] for r in result["rows"]]
    console.print(table(f"H*(x|h) vs exact H(x|h), nats per image (test, {result['rows'][0]['num_images']} images)",
                         ["h = factors", "exact", "estimate ± se", "gap", f"within {result['tolerance_nats']}",
                          "bound"], rows))
    console.print(f"written: {result['path']} and {result['plot']}")


@register_command
class GroundTruth(Command):
    """One PixelCNN++ per subset of the procedural factors, its test NLL beside the exact H(x|h)."""

    name = "ground-truth"
    step_schema = with_command(GroundTruthConfig, "ground-truth")
    examples = (
        "invkeras ground-truth                       # 6 subsets, from all factors to none",
        "invkeras ground-truth --subset all --subset shape+size --subset none --max-steps 3000",
    )
    cli = staticmethod(cli_ground_truth)

    @staticmethod
    def run(step) -> str:
        from invkeras.analyses.ground_truth import ground_truth

        result = ground_truth(config_of(step, GroundTruthConfig))
        worst = max(result["rows"], key=lambda r: abs(r["gap_nats"]))
        return (f"{len(result['rows'])} subsets; largest gap {worst['gap_nats']:+.2f} nats ({worst['subset']}); "
                f"bounds {'hold' if result['all_bounds_hold'] else 'VIOLATED'}")

    @staticmethod
    def outputs(step):
        from invkeras.analyses.ground_truth import RESULT_FILE

        return [*step.model_paths(), step.out_dir() / RESULT_FILE]  # a table of fewer subsets is not done

    @staticmethod
    def access(step) -> StepAccess:
        return StepAccess([], [step.out_dir()])
