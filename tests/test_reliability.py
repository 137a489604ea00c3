"""Reliability: each class of bad input is refused as a class, in one line with exit code 2,
before anything is written outside the workspace and without losing anything already there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli_errors import assert_one_line_error  # tests/cli_errors.py
from invkeras.cli import app

runner = CliRunner()

# Deep enough that every '../' value below lands inside the test's own tmp_path.
NESTING = ("n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8")
UP = "../" * 8


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- 1. every name that becomes part of a path is a plain name -----------------------------

# (top-level keys, step) of recipes in which `FIELD` is replaced by the value under test: every
# recipe field whose value becomes a folder or file name of the workspace layout.
PATH_FIELDS = {
    "recipe arch": ({"arch": "FIELD"}, {"command": "train-inverter", "layer": "fc3"}),
    "recipe dataset": ({"dataset": "FIELD"}, {"command": "extract", "layers": ["fc3"]}),
    "train-classifier run": ({}, {"command": "train-classifier", "run": "FIELD"}),
    "extract layers": ({}, {"command": "extract", "layers": ["fc3", "FIELD"]}),
    "extract arch": ({}, {"command": "extract", "arch": "FIELD", "layers": ["fc3"]}),
    "train-inverter layer": ({}, {"command": "train-inverter", "layer": "FIELD"}),
    "train-inverter arch": ({}, {"command": "train-inverter", "arch": "FIELD"}),
    "train-inverter kind": ({}, {"command": "train-inverter", "kind": "FIELD"}),
    "train-autoencoder name": ({}, {"command": "train-autoencoder", "name": "FIELD"}),
    "sample layers": ({}, {"command": "sample", "layers": ["FIELD"]}),
    "sample arch": ({}, {"command": "sample", "arch": "FIELD", "layers": ["fc3"]}),
    "sample kind": ({}, {"command": "sample", "kind": "FIELD", "layers": ["fc3"]}),
    "sample reconstruction": ({}, {"command": "sample", "reconstruction": "FIELD", "layers": ["fc3"]}),
    "compare layers": ({}, {"command": "compare", "layers": ["FIELD"], "kinds": ["pixelcnn", "mse"]}),
    "compare kinds": ({}, {"command": "compare", "layers": ["fc3"], "kinds": ["pixelcnn", "FIELD"]}),
    "estimate-mi layers": ({}, {"command": "estimate-mi", "layers": ["conv1", "FIELD"]}),
    "estimate-mi arch": ({}, {"command": "estimate-mi", "arch": "FIELD", "layers": ["fc3"]}),
    "estimate-mi archs": ({}, {"command": "estimate-mi", "archs": ["conv", "FIELD"], "layers": ["fc3"]}),
    "edit layers": ({}, {"command": "edit", "layers": ["FIELD"], "shift": "1:5"}),
    "edit subdir": ({}, {"command": "edit", "layers": ["logits"], "shift": "1:5", "subdir": "FIELD"}),
    "mix layers": ({}, {"command": "mix", "kind": "cinn", "layers": ["FIELD"]}),
    "attack layers": ({}, {"command": "attack", "kind": "cinn", "layers": ["FIELD"], "epsilon": 0.1}),
    "train-factors layers": ({}, {"command": "train-factors", "layers": ["FIELD"]}),
    "edit-factors layers": ({}, {"command": "edit-factors", "layers": ["FIELD"]}),
    "score-factors arch": ({}, {"command": "score-factors", "arch": "FIELD", "layers": ["fc3"]}),
    "score-factors layers": ({}, {"command": "score-factors", "layers": ["FIELD"]}),
}

# A value that climbs out of the workspace, an absolute path, and a name with a separator.
# The dataset's slug turns '/' into '-', so only a slug of '.' or '..' could make it climb.
BAD_NAMES = {"climbs": UP + "escaped", "absolute": "ABSOLUTE", "separator": "sub/escaped"}


def _fill(value, bad):
    if isinstance(value, dict):
        return {k: _fill(v, bad) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, bad) for v in value]
    return bad if value == "FIELD" else value


def _bad_name(field: str, how: str, outside: Path) -> str:
    if field == "recipe dataset":
        return {"climbs": "..", "absolute": ".", "separator": "..:"}[how]  # '..:' has the slug '..' 
    return str(outside) if BAD_NAMES[how] == "ABSOLUTE" else BAD_NAMES[how]


# The same names given on the command line (a command without a recipe).
COMMAND_LINES = {
    "train-inverter --layer": ["train-inverter", "--layer", UP + "escaped", "--workspace", "WS"],
    "train-inverter --arch": ["train-inverter", "--arch", "sub/escaped", "--workspace", "WS"],
    "train-autoencoder --name": ["train-autoencoder", "--name", "OUTSIDE", "--latent-dim", "4", "--workspace", "WS"],
}
CASES = [("recipe", field, how) for field in PATH_FIELDS for how in BAD_NAMES] + \
        [("command line", name, "") for name in COMMAND_LINES]


@pytest.mark.parametrize("source, field, how", CASES, ids=[" ".join(filter(None, case)) for case in CASES])
def test_a_name_that_would_leave_the_workspace_is_refused_before_anything_is_written(tmp_path, source, field, how):
    outside = tmp_path / "escaped"
    outside.write_text("kept")  # what a climbing or absolute name would have written over
    workspace = tmp_path.joinpath(*NESTING, "ws")
    if source == "recipe":
        top, step = PATH_FIELDS[field]
        bad = _bad_name(field, how, outside)
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"name": "r", "workspace": str(workspace), **_fill(top, bad),
                                          "steps": {"s": _fill(step, bad)}}))
        argv = ["run", recipe]
    else:
        argv = [{"WS": str(workspace), "OUTSIDE": str(outside)}.get(a, a) for a in COMMAND_LINES[field]]
        bad = argv[2]
    before = files_under(tmp_path)

    result = invoke(*argv)

    # Refused by the schema (a kind must be known) or where the path would be built.
    assert_one_line_error(result, repr(bad) if "kind" not in field and "reconstruction" not in field else bad)
    assert files_under(tmp_path) == before  # nothing written anywhere, nothing lost


# --- 2. a run never writes over the recipe it runs, nor over a file that is not its own ------

SELF_RECIPE = {"name": "selfref", "workspace": "WS", "steps": {"classifier": {"command": "train-classifier",
                                                                               "epochs": 1}}}


def _recipe_text(path: Path, workspace: Path) -> str:
    recipe = json.loads(json.dumps(SELF_RECIPE).replace('"WS"', json.dumps(str(workspace))))
    return json.dumps(recipe) if path.suffix == ".json" else yaml.safe_dump(recipe)


# Where the recipe is kept, and what else is in <workspace>/recipes/ (None: nothing).
RECORD_COLLISIONS = {
    "the recipe is the record (json)": ("ws/recipes/selfref.json", None),
    "the recipe is the record, spelled another way": ("ws/./recipes/../recipes/selfref.json", None),
    "the recipe is the record's metadata": ("ws/recipes/selfref.json.meta.json", None),
    "a user's own file is where the record goes": ("selfref.yaml", ("selfref.json", "my notes\n")),
    "a user's own file is where the record's metadata goes": ("selfref.yaml", ("selfref.json.meta.json", "{}\n")),
    "a folder is where the record goes": ("selfref.yaml", ("selfref.json", None)),
}


@pytest.mark.parametrize("case", list(RECORD_COLLISIONS))
def test_a_run_refuses_to_write_its_record_over_the_recipe_or_a_file_not_its_own(tmp_path, case):
    kept_at, other = RECORD_COLLISIONS[case]
    workspace = tmp_path / "ws"
    recipe = tmp_path / kept_at
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(_recipe_text(recipe, workspace))
    if other is not None:
        name, text = other
        (workspace / "recipes").mkdir(parents=True, exist_ok=True)
        if text is None:
            (workspace / "recipes" / name).mkdir()
        else:
            (workspace / "recipes" / name).write_text(text)
    before = files_under(tmp_path)

    result = invoke("run", recipe)

    assert_one_line_error(result, "record", "selfref.json")
    assert files_under(tmp_path) == before  # the recipe and the user's files intact, no step ran


def test_the_record_of_an_earlier_run_is_replaced_by_the_rerun(tmp_path):
    from invkeras import artifacts

    workspace = tmp_path / "ws"
    model = workspace / "procedural" / "conv" / "classifier" / "model.keras"
    model.parent.mkdir(parents=True)
    model.write_text("a finished classifier")  # complete: the step is skipped
    artifacts.write_metadata(model, kind="classifier")
    recipe = tmp_path / "selfref.yaml"
    recipe.write_text(_recipe_text(recipe, workspace))

    for _ in range(2):
        result = invoke("run", recipe)
        assert result.exit_code == 0, result.output
    record = json.loads((workspace / "recipes" / "selfref.json").read_text())
    assert [step["status"] for step in record["steps"]] == ["skipped"]
