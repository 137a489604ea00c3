"""The factor INN from the command line, on a cinn inverter of the procedural dataset: r = (h, v), pairs
rendered on demand, edits decoded through the cinn and read back exactly; label pairs; bad input as one
line and exit code 2; the recipes validate at both scales."""

from pathlib import Path
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.cli import app
from invkeras.factors.training import load_factor_model
from cli_errors import assert_one_line_error  # tests/cli_errors.py

REPO = Path(__file__).resolve().parents[2]  # recipes are found whatever the working directory

TINY = ["--num-blocks", "2", "--hidden", "16", "--max-steps", "40", "--steps-per-checkpoint", "20",
        "--num-pairs", "2000", "--eval-pairs", "200", "--dim-pairs", "1000", "--batch-size", "64"]


@pytest.fixture(scope="module")
def trained(procedural_cinn):
    """train-factors on the cinn of fc3 with all five factors (default output folder), and with label pairs."""
    runner = CliRunner()
    factors = runner.invoke(app, ["train-factors", "--inverter", str(procedural_cinn), *TINY], terminal_width=200)
    labels = runner.invoke(app, ["train-factors", "--inverter", str(procedural_cinn), "--pairs", "labels", *TINY],
                           terminal_width=200)
    return {"factors": (procedural_cinn / "factor_inn" / "factors", factors),
            "labels": (procedural_cinn / "factor_inn" / "labels", labels)}


def test_train_factors_on_a_cinn_inverter_works_on_h_and_v(trained, procedural_cinn):
    out, result = trained["factors"]
    assert result.exit_code == 0, result.output
    assert "Factor blocks (estimate" in result.output and "validation pair NLL" in result.output
    model = load_factor_model(out)
    meta = model.meta
    assert meta["kind"] == "factor-inn" and meta["layer"] == "fc3" and meta["pairs"] == "factors"
    assert meta["data"]["kind"] == "inverter" and meta["data"]["parts"] == [{"name": "h", "size": 256},
                                                                        {"name": "v", "size": 8}]
    assert model.block_names == [*meta["factors"], "residual"] and meta["factors"][0] == "shape"
    assert sum(b["size"] for b in meta["blocks"]) == 264 and meta["results"]["train_rows"] == 6912  # rendered
    validation = meta["results"]["validation"]
    assert validation["pair_nll_nats_per_dim"] < validation["initial_pair_nll_nats_per_dim"]  # it learned
    assert not (out / "backup").exists()
    # r -> z~ -> r is exact, and r read back through the cinn decodes A's image
    table = model.representation.scoring_table()
    r = table.r[:16]
    np.testing.assert_allclose(model.decode(model.encode(r)), r, atol=2e-2 * np.abs(r).max())
    images, labels = model.representation.to_images(r)
    assert images.shape == (16, 20, 20, 1) and images.dtype == np.uint8 and labels.shape == (16,)


def test_edit_factors_decodes_swaps_and_walks_through_the_cinn(trained, tmp_path):
    out, _ = trained["factors"]
    result = CliRunner().invoke(app, ["edit-factors", "--factors", str(out), "--factor", "size", "--num-pairs", "3",
                                      "--walk", "0,0.5,1", "--out", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "swap_size.png" in result.output and "edit accuracy" in result.output
    for name in ("swap_size.png", "walk_size.png", "edits.json", "edits.npz"):
        assert artifacts.is_complete(tmp_path / name), name
    payload = json.loads((tmp_path / "edits.json").read_text())
    a, b = np.asarray(payload["factors_a"]), np.asarray(payload["factors_b"])
    assert (a != b).all()  # edit pairs differ in every factor, so every edit is visible
    entry = payload["edits"][0]
    assert len(entry["factors_swap"]) == 3 and len(entry["walk_factors"]) == 3 and "swap_labels" in entry
    assert 0.0 <= entry["share_edit_accuracy"] <= 1.0
    with np.load(tmp_path / "edits.npz") as arrays:
        np.testing.assert_array_equal(arrays["size__walk"][:, 0], arrays["reconstruction"])  # t = 0: A read back
        np.testing.assert_array_equal(arrays["size__walk"][:, -1], arrays["size__swap"])  # t = 1: the swap


def test_score_factors_tables_exact_scores_for_factors_and_label_swaps(trained, tmp_path):
    result = CliRunner().invoke(app, ["score-factors", "--factors", str(trained["factors"][0]), "--factors",
                                      str(trained["labels"][0]), "--label", "fc3", "--label", "fc3-labels",
                                      "--num-pairs", "60", "--out", str(tmp_path)], terminal_width=220)
    assert result.exit_code == 0, result.output
    assert "disentanglement" in result.output and "Edits read back" in result.output
    rows = json.loads((tmp_path / "scores.json").read_text())["rows"]
    factors, labels = rows
    assert len(factors["disentanglement"]["matrix"]) == 6 and 0 <= factors["reconstruction_accuracy"] <= 1
    assert set(factors["edit_accuracy"]) == {"shape", "size", "row", "col", "intensity"}
    matrix = np.asarray(factors["disentanglement"]["matrix"])
    assert ((matrix >= -1e-9) & (matrix <= 1 + 1e-9)).all()
    assert labels["pairs"] == "labels" and [b["name"] for b in labels["blocks"]] == ["class", "residual"]
    swaps = labels["label_swaps"]
    assert swaps["label_source"] == "classifier" and 0 <= swaps["class_swap_takes_b_label"] <= 1
    for name in ("dimensions.png", "disentanglement_fc3.png", "disentanglement_fc3-labels.png", "scores.csv"):
        assert artifacts.is_complete(tmp_path / name), name


def test_bad_input_is_one_line_and_exit_code_2(trained, procedural_cinn, synthetic, tmp_path):
    runner = CliRunner()
    out, _ = trained["factors"]
    assert_one_line_error(runner.invoke(app, ["train-factors"]), "exactly one of inverter")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--inverter", str(procedural_cinn), "--factor", "colour"]),
              "colour", "not a procedural factor")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--inverter", str(procedural_cinn), "--rho", "1.5"]), "rho")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--inverter", str(tmp_path / "nope")]), "not found")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--features", str(synthetic), "--dims", "shape=two"]), "--dims")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--features", str(synthetic), "--dims", "shape=7",
                                  "--out", str(tmp_path / "d")]), "--dims")
    no_y = tmp_path / "no_y.npz"
    with np.load(synthetic) as arrays:
        np.savez(no_y, x=arrays["x"][:50], h=arrays["h"][:50])
        np.savez(tmp_path / "mnistlike.npz", x=np.zeros((50, 28, 28, 1), np.uint8), h=arrays["h"][:50])
    assert_one_line_error(runner.invoke(app, ["train-factors", "--features", str(no_y), "--pairs", "labels",
                                  "--out", str(tmp_path / "l")]), "labels", "array y")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--features", str(tmp_path / "mnistlike.npz"),
                                  "--out", str(tmp_path / "m")]), "procedural")
    assert_one_line_error(runner.invoke(app, ["edit-factors", "--factors", str(out), "--factor", "colour"]), "colour", "no block")
    assert_one_line_error(runner.invoke(app, ["edit-factors", "--factors", str(tmp_path)]), "no factor_inn.keras")
    assert_one_line_error(runner.invoke(app, ["score-factors", "--factors", str(out), "--factors", str(out)]), "--out")
    occupied = tmp_path / "a-file"
    occupied.write_text("keep me")
    assert_one_line_error(runner.invoke(app, ["train-factors", "--features", str(synthetic), "--out", str(occupied), *TINY]),
              "a-file")
    assert_one_line_error(runner.invoke(app, ["edit-factors", "--factors", str(out), "--num-pairs", "1", "--out", str(occupied)]),
              "a-file")
    assert occupied.read_text() == "keep me"
    assert not (tmp_path / "d").exists() and not (tmp_path / "l").exists()


def test_help_has_examples():
    for command in ("train-factors", "edit-factors", "score-factors"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output and f"invkeras {command}" in result.output


@pytest.mark.parametrize("recipe", ["factors_procedural", "factors_mnist"])
def test_the_factor_recipes_validate_at_both_scales(recipe):
    from invkeras.recipes import load_recipe, step_outputs

    for overrides in ([], ["scale=small"]):
        recipe_ = load_recipe(REPO / f"recipes/rombach2020/{recipe}.yaml", overrides)
        steps = recipe_.steps
        train = [s for s in steps.values() if s.command == "train-factors"]
        assert train and {s.command for s in steps.values()} >= {"train-factors", "edit-factors", "score-factors"}
        for step in train:
            for layer in step.layers:
                config = step.config(layer)
                assert config.inverter.endswith(f"inverters/cinn/{layer}")
                assert str(config.out_dir()).endswith(f"cinn/{layer}/factor_inn/{config.pairs}" +
                                                      ("-shuffled" if config.shuffled else ""))
        for step in steps.values():
            assert step_outputs(step)  # every step says when it is done
    assert {s.pairs for s in load_recipe(REPO / f"recipes/rombach2020/{recipe}.yaml").steps.values()
            if s.command == "train-factors"} == ({"factors"} if recipe == "factors_procedural" else {"labels"})


def test_recipe_steps_train_edit_and_score_then_skip(trained, procedural_cinn):
    from invkeras.recipes import load_recipe, run_recipe

    workspace = procedural_cinn.parents[4]  # <workspace>/procedural/conv/inverters/cinn/fc3
    path = workspace / "factors.yaml"
    path.write_text(f"""
name: factors-test
workspace: {workspace}
defaults:
  train-factors: {{num_blocks: 2, hidden: 16, max_steps: 20, steps_per_checkpoint: 20, num_pairs: 1000,
                  eval_pairs: 100, dim_pairs: 500, batch_size: 64}}
steps:
  control: {{command: train-factors, layers: [fc3], shuffled: true}}
  edits: {{command: edit-factors, layers: [fc3], shuffled: true, factor: [row], num_pairs: 2}}
  scores: {{command: score-factors, layers: [fc3], shuffled: true, num_pairs: 30}}
""")
    first = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in first] == ["ran", "ran", "ran"], [r.summary for r in first]
    control = procedural_cinn / "factor_inn" / "factors-shuffled"
    assert load_factor_model(control).meta["shuffled"] is True
    assert artifacts.is_complete(control / "edits" / "swap_row.png")
    scores = workspace / "procedural" / "conv" / "factor_scores" / "factors-shuffled" / "scores.json"
    assert json.loads(scores.read_text())["rows"][0]["label"] == "fc3-shuffled"
    assert "mean diagonal MI" in first[2].summary
    again = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in again] == ["skipped"] * 3


def test_a_bad_factor_in_a_recipe_is_one_line(tmp_path):
    from invkeras.errors import InvkerasError
    from invkeras.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsteps:\n  f: {command: train-factors, layers: [fc3], factor: [colour]}\n")
    with pytest.raises(InvkerasError, match="steps.f.*colour") as error:
        load_recipe(path)
    assert "\n" not in str(error.value)
