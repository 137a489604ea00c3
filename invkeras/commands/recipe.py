"""`invkeras run`: a YAML recipe of steps, resumable, optionally in parallel or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from invkeras.commands.base import Command, register_command
from invkeras.commands.tables import console, table


def cli_run(
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
    from invkeras.commands.base import command_class
    from invkeras.recipes import load_recipe, run_recipe
    from invkeras.recipes.executors import make_executor
    from invkeras.recipes.runner import plan_recipe

    parsed = load_recipe(recipe, set_, allow_outside_workspace=allow_outside_workspace)
    plan_recipe(parsed, source=recipe)  # a step that cannot run is refused before anything is printed
    runner = make_executor(executor, parallel=parallel, address=address, cpus_per_step=cpus_per_step,
                           console=console)
    variant = f", variant '{parsed.scale}'" if parsed.scale in parsed.variants else ""
    console.print(f"[bold]recipe[/bold] {parsed.name}: {len(parsed.steps)} step(s), scale {parsed.scale}{variant}")
    results = run_recipe(
        parsed, source=recipe, on_step=lambda name, step: console.rule(f"step {name} ({step.command})"),
        executor=runner,
    )
    rows = [[r.name, r.command, r.status, f"{r.seconds:.1f} s", r.summary] for r in results]
    console.print(table(f"Recipe {parsed.name}", ["step", "command", "status", "time", "result"], rows))
    for step in parsed.steps.values():
        command_class(step.command).show(step)  # the results people run the recipe for


@register_command
class Run(Command):
    name = "run"
    examples = (
        "invkeras run recipes/quickstart.yaml",
        "invkeras run recipes/quickstart.yaml --set steps.classifier.epochs=1 --set seed=3",
        "invkeras run recipes/nash2019/layers_mnist.yaml --set scale=small   # the recipe's small variant",
        "invkeras run recipes/nash2019/layers_mnist.yaml --set scale=small --set defaults.train-inverter.max_steps=3000",
        "invkeras run recipes/quickstart.yaml --parallel 2   # steps that do not wait for each other, 2 at a time",
        "invkeras run recipes/nash2019/layers_mnist.yaml --executor ray --address auto --set workspace=/shared/runs",
    )
    cli = staticmethod(cli_run)
