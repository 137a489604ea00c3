"""Recipes: schema validation with one-line errors, overrides, and skipping finished steps."""

import textwrap
from pathlib import Path

import pytest

from invkeras.errors import InvkerasError
from invkeras.recipes import load_recipe, run_recipe

QUICKSTART = "recipes/quickstart.yaml"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_quickstart_recipe_is_valid():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / QUICKSTART)
    assert [step.command for step in recipe.steps.values()] == [
        "train-classifier", "extract", "train-inverter", "train-inverter", "train-inverter", "sample", "estimate-mi"]
    assert recipe.steps["classifier"].dataset == "procedural"  # inherited from the top level
    assert recipe.steps["inverter_fc3"].scale == "tiny" and recipe.steps["inverter_fc3"].arch == "conv"


def test_overrides_reach_steps_and_shared_keys(tmp_path):
    path = write(tmp_path, """
        name: t
        dataset: procedural
        steps:
          clf: {command: train-classifier, epochs: 5}
    """)
    recipe = load_recipe(path, ["steps.clf.epochs=2", "seed=9", "dataset=mnist"])
    step = recipe.steps["clf"]
    assert (step.epochs, step.seed, step.dataset) == (2, 9, "mnist")


@pytest.mark.parametrize(
    "body, overrides, message",
    [
        ("steps:\n  clf: {command: train-classifier, epocs: 2}\n", [], r"steps\.clf\.epocs: unknown key"),
        ("steps:\n  clf: {command: train-classifier, epochs: many}\n", [], r"steps\.clf\.epochs: .*integer.*'many'"),
        ("steps:\n  clf: {command: fly}\n", [], r"steps\.clf: unknown command 'fly'"),
        ("steps:\n  clf: {arch: conv}\n", [], r"steps\.clf: step needs a 'command' key"),
        ("colour: red\nsteps:\n  clf: {command: train-classifier}\n", [], r"colour: unknown key"),
        ("steps:\n  clf: {command: train-classifier}\n", ["steps.nope.epochs=1"], r"'steps\.nope' is not a section"),
        ("steps:\n  clf: {command: train-classifier}\n", ["epochs"], r"expected KEY=VALUE"),
        ("steps:\n  clf: [unclosed\n", [], r"line \d+: YAML syntax error"),
    ],
)
def test_bad_recipes_get_one_line_naming_file_and_key(tmp_path, body, overrides, message):
    path = write(tmp_path, "name: bad\n" + body)
    with pytest.raises(InvkerasError, match=message) as info:
        load_recipe(path, overrides)
    assert "\n" not in str(info.value)
    if "KEY=VALUE" not in message and "section" not in message:
        assert str(path) in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(InvkerasError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_finished_steps_are_skipped(tmp_path):
    path = write(tmp_path, f"""
        name: resume
        dataset: procedural
        workspace: {tmp_path / 'ws'}
        steps:
          clf: {{command: train-classifier, epochs: 1, train_examples: 256, batch_size: 64}}
          feats: {{command: extract, layers: [fc3], splits: [test], limit: 32}}
    """)
    first = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in first] == ["ran", "ran"]
    model = tmp_path / "ws/procedural/conv/classifier/model.keras"
    stamp = model.stat().st_mtime_ns

    # Lose the features (e.g. a kill mid-extract): only that step runs again.
    import shutil

    shutil.rmtree(tmp_path / "ws/procedural/conv/features")
    second = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in second] == ["skipped", "ran"]
    assert model.stat().st_mtime_ns == stamp
    assert (tmp_path / "ws/recipes/resume.json.meta.json").exists()


def test_step_errors_name_the_recipe_and_step(tmp_path):
    path = write(tmp_path, f"""
        name: broken
        workspace: {tmp_path / 'ws'}
        steps:
          feats: {{command: extract, model: {tmp_path / 'missing.keras'}, layers: [fc3]}}
    """)
    with pytest.raises(InvkerasError, match=r"step 'feats': --model .*missing.keras: file not found"):
        run_recipe(load_recipe(path), source=path)
