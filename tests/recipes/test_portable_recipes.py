"""Every shipped recipe runs on a user's own data with `--set dataset=... --set scale=small`:
steps refer to each other by name, and no planned path names another dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invkeras import artifacts
from invkeras.recipes import load_recipe
from invkeras.recipes.runner import step_access, step_dependencies, step_outputs

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
# Every dataset a shipped recipe names, as a workspace folder: none may survive the user's --set.
OTHER_DATASETS = {"mnist", "idx-mnist", "idx-mnist-full", "cifar10", "affnist", "svhn_cropped", "fashion_mnist"}


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory) -> Path:
    """A user's own small dataset: 600 procedural 20x20 images in an .npz with x and y."""
    from invkeras.data import load_arrays

    x, y = load_arrays("procedural", "train", limit=600)
    path = tmp_path_factory.mktemp("data") / "my_shapes.npz"
    np.savez(path, x=x, y=y)
    return path


def _planned_paths(recipe) -> list[Path]:
    paths = []
    for step in recipe.steps.values():
        paths += step_outputs(step)
        access = step_access(step)
        paths += (access.reads or []) + access.writes + access.writes_if_missing
        paths += [Path(v) for k, v in step.model_dump().items()
                  if k in ("model", "autoencoder", "classifier", "features", "inverter", "out") and isinstance(v, str)]
    return paths


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_plans_on_a_users_npz_without_naming_another_dataset(path, own_dataset, tmp_path):
    recipe = load_recipe(path, [f"dataset=npz:{own_dataset}", "scale=small", f"workspace={tmp_path / 'ws'}"])
    step_dependencies(recipe)  # the graph plans
    own = artifacts.dataset_slug(f"npz:{own_dataset}")
    takes_a_dataset = [s for s in recipe.steps.values() if "dataset" in type(s).model_fields]
    for step in takes_a_dataset:
        assert step.dataset == f"npz:{own_dataset}"
    for planned in _planned_paths(recipe):
        named = set(planned.parts) & OTHER_DATASETS
        assert not named, f"{path.name}: {planned} names {named}"
    if takes_a_dataset:
        assert any(own in p.parts for p in _planned_paths(recipe))


def test_a_recipe_refers_to_another_steps_model_by_the_steps_name(own_dataset, tmp_path):
    recipe = load_recipe(REPO / "recipes/rombach2020/layers_mnist.yaml",
                         [f"dataset=npz:{own_dataset}", "scale=small", f"workspace={tmp_path}"])
    steps = recipe.steps
    assert Path(steps["autoencoder"].classifier) == steps["classifier"].model_path()
    assert Path(steps["cinn_fc3"].autoencoder) == steps["autoencoder"].model_path()
    assert "autoencoder" in step_dependencies(recipe)["cinn_fc3"]  # the reference orders the steps


def test_a_reference_to_a_missing_or_later_step_is_one_line_naming_the_key(tmp_path):
    from invkeras.errors import InvkerasError

    text = """
name: refs
dataset: procedural
workspace: {ws}
steps:
  autoencoder:
    command: train-autoencoder
    classifier: {{step: classifier}}
  classifier:
    command: train-classifier
"""
    path = tmp_path / "refs.yaml"
    path.write_text(text.format(ws=tmp_path / "ws"))
    with pytest.raises(InvkerasError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert "steps.autoencoder.classifier" in message and "no earlier step" in message
    assert "\n" not in message


@pytest.mark.slow
def test_the_rombach_recipe_runs_end_to_end_on_a_users_npz_with_two_dependent_kinds(own_dataset, tmp_path):
    """The cinn needs the autoencoder step's model, the mse decoder the classifier's features:
    the recipe, shrunk by overrides only, runs start to finish on a file it has never seen."""
    from invkeras.recipes import run_recipe

    keep = {"classifier", "features", "autoencoder", "cinn_fc3", "decoder_fc3", "invariances", "side_by_side"}
    recipe_path = REPO / "recipes/rombach2020/layers_mnist.yaml"
    every = load_recipe(recipe_path, ["scale=small"]).steps
    shrink = [f"steps.{name}=null" for name in every if name not in keep]
    shrink += [
        "steps.classifier.epochs=1", "steps.classifier.train_examples=256", "steps.classifier.batch_size=64",
        "steps.features.layers=[fc3]",
        "steps.autoencoder.max_steps=20", "steps.autoencoder.steps_per_checkpoint=10", "steps.autoencoder.latent_dim=8",
        "steps.autoencoder.train_examples=256", "steps.autoencoder.eval_examples=32",
        "steps.cinn_fc3.max_steps=20", "steps.cinn_fc3.steps_per_checkpoint=10", "steps.cinn_fc3.hidden=16",
        "steps.cinn_fc3.embed_dim=8", "steps.cinn_fc3.num_blocks=2", "steps.cinn_fc3.eval_examples=32",
        "steps.decoder_fc3.max_steps=20", "steps.decoder_fc3.steps_per_checkpoint=10",
        "steps.decoder_fc3.eval_examples=32",
        "steps.invariances.layers=[fc3]", "steps.invariances.num_inputs=2", "steps.invariances.num_samples=2",
        "steps.side_by_side.layers=[fc3]", "steps.side_by_side.kinds=[cinn,mse]", "steps.side_by_side.num_images=4",
        "steps.side_by_side.num_samples=2", "steps.side_by_side.grid_inputs=0",
        "steps.side_by_side.max_train_examples=64",
    ]
    recipe = load_recipe(recipe_path, [f"dataset=npz:{own_dataset}", "scale=small", f"workspace={tmp_path / 'ws'}",
                                       *shrink])
    assert set(recipe.steps) == keep
    results = run_recipe(recipe)
    assert [r.status for r in results] == ["ran"] * len(keep)
    own = artifacts.dataset_slug(f"npz:{own_dataset}")
    compared = tmp_path / "ws" / own / "conv" / "comparisons" / "fc3" / "compare.json"
    assert artifacts.is_complete(compared)
    assert (tmp_path / "ws" / own / "conv" / "inverters" / "cinn" / "fc3" / "samples_reconstruction.png").is_file()
    again = run_recipe(recipe)  # finished steps are not redone
    assert [r.status for r in again] == ["skipped"] * len(keep)
