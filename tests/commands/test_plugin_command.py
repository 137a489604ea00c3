"""A command defined here, in the test module, and registered once, runs from the CLI and
from a recipe, with its own options in `--help`, with no edit anywhere else.

The command, `class-counts`, is small but real: it counts each class's images in one split of
a dataset and writes the counts as JSON (with metadata) into the workspace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.commands import Command, StepAccess, register_command


class ClassCountsStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: Literal["class-counts"] = "class-counts"
    dataset: str = Field("procedural", description="dataset spec")
    split: Literal["train", "validation", "test"] = Field("test", description="the split counted")
    seed: int = Field(0, description="seed of carved splits")
    data_dir: str | None = Field(None, description="where named datasets are found")
    workspace: str = Field("runs", description="root of the outputs")

    def out(self) -> Path:
        return artifacts.run_dir(self.dataset, "counts", self.workspace) / f"{self.split}.json"


@register_command
class ClassCounts(Command):
    """Count each class's images in one split of a dataset."""

    name = "class-counts"
    step_schema = ClassCountsStep

    @staticmethod
    def run(step) -> str:
        from invkeras.data import load_arrays

        _, y = load_arrays(step.dataset, step.split, data_dir=step.data_dir, seed=step.seed)
        counts = {str(label): int(n) for label, n in zip(*np.unique(y, return_counts=True))}
        artifacts.write_json_atomic(step.out(), {"split": step.split, "counts": counts})
        artifacts.write_metadata(step.out(), kind="class-counts", config=step, seed=step.seed, data=step.dataset)
        return f"{len(y)} {step.split} images in {len(counts)} classes"

    @staticmethod
    def outputs(step):
        return [step.out()]

    @staticmethod
    def access(step):
        return StepAccess([], [step.out()])


def _cli():
    from invkeras.cli import build_app

    return build_app()


def test_a_registered_command_runs_from_the_cli_with_its_schemas_options(tmp_path):
    result = CliRunner().invoke(_cli(), ["class-counts", "--split", "validation", "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "procedural" / "counts" / "validation.json").read_text())
    assert written["split"] == "validation" and sum(written["counts"].values()) > 0
    assert "images in" in result.output


def test_a_registered_commands_help_lists_each_option_with_its_default():
    result = CliRunner().invoke(_cli(), ["class-counts", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option, default in (("--split", "test"), ("--seed", "0"), ("--workspace", "runs")):
        assert option in result.output
        assert f"[default: {default}]" in result.output


def test_a_registered_command_refuses_a_bad_option_value_in_one_line(tmp_path):
    result = CliRunner().invoke(_cli(), ["class-counts", "--split", "nope", "--workspace", str(tmp_path)])
    assert result.exit_code == 2
    assert "split" in result.output and "Traceback" not in result.output


COUNTS_RECIPE = """
name: counts
dataset: procedural
workspace: {workspace}
defaults:
  class-counts: {{split: train}}
steps:
  train_counts: {{command: class-counts}}
  test_counts: {{command: class-counts, split: test}}
"""


def test_a_registered_command_runs_as_a_recipe_step_and_is_skipped_when_done(tmp_path):
    from invkeras.recipes import load_recipe, run_recipe

    path = tmp_path / "counts.yaml"
    path.write_text(COUNTS_RECIPE.format(workspace=tmp_path / "ws"))
    recipe = load_recipe(path)
    results = run_recipe(recipe)
    assert [r.status for r in results] == ["ran", "ran"]
    train = json.loads((tmp_path / "ws" / "procedural" / "counts" / "train.json").read_text())
    test = json.loads((tmp_path / "ws" / "procedural" / "counts" / "test.json").read_text())
    assert sum(train["counts"].values()) > sum(test["counts"].values()) > 0
    assert [r.status for r in run_recipe(recipe)] == ["skipped", "skipped"]
