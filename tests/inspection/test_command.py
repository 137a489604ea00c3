"""`invkeras inspect` as a registered command: its options, one-line errors, and its recipe step."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import invkeras.commands.inspection  # noqa: F401  (registers the command)
from invkeras.cli import build_app


def _invoke(*args):
    return CliRunner().invoke(build_app(["inspect", *args]), ["inspect", *args])


def test_inspect_is_a_registered_command_with_the_documented_options():
    from invkeras.commands import command_class

    assert command_class("inspect").name == "inspect"
    result = _invoke("--help")
    assert result.exit_code == 0
    for option in ("--model", "--dataset", "--layers", "--kinds", "--budget", "--out", "--seed", "--data-dir",
                   "--features"):
        assert option in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "m.keras"], "inspect: give --dataset"),
    (["--model", "m.keras", "--dataset", "procedural", "--budget", "30"], "--budget 30: not a duration"),
    (["--model", "missing.keras", "--dataset", "procedural"], "--model missing.keras: file not found"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    result = _invoke(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_an_inspect_step_in_a_recipe_names_its_report_and_what_it_reads(tmp_path):
    from invkeras.recipes import load_recipe
    from invkeras.commands import command_class

    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""
        name: inspect-demo
        dataset: procedural
        workspace: {tmp_path / 'runs'}
        steps:
          classifier: {{command: train-classifier, epochs: 1}}
          inspect: {{command: inspect, model: {{step: classifier}}, layers: [conv1, fc3], budget: 5m}}
    """))
    recipe = load_recipe(path)
    step = recipe.steps["inspect"]
    command = command_class("inspect")
    assert step.budget == 300 and step.layers == ["conv1", "fc3"]
    out = tmp_path / "runs" / "procedural" / "inspect"
    assert command.outputs(step) == [out / "report.html"]
    access = command.access(step)
    assert access.writes == [out] and any(p.name == "model.keras" for p in access.reads)


def test_the_demo_recipe_trains_a_classifier_then_inspects_it_within_six_minutes():
    from invkeras.recipes import load_recipe
    from invkeras.recipes.runner import step_dependencies

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml")
    assert [step.command for step in recipe.steps.values()] == ["train-classifier", "inspect"]
    inspect = recipe.steps["inspect"]
    # Its model is the classifier step's run, so the inspection waits for it.
    assert Path(inspect.model) == recipe.steps["classifier"].model_path()
    assert step_dependencies(recipe)["inspect"] == ["classifier"]
    assert inspect.kinds == ["pixelcnn", "mse"] and inspect.layers == ["conv1", "fc3"]
    assert inspect.budget <= 330 and inspect.out_dir() == Path("runs/procedural/inspect")
