"""`invkeras edit`: shifted, scaled, noisy and interpolated logits decoded by any kind that samples,
labelled by the classifier; bad input is one line; the recipe step runs and is skipped when done."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from invkeras import artifacts
from invkeras.analyses.edit import EditConfig, edit_inverter, parse_shift
from invkeras.errors import InvkerasError

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _edit(inverter, tmp_path, **options):
    return edit_inverter(EditConfig(inverter=str(inverter), out=str(tmp_path), **options))


def test_shifting_a_logit_moves_the_label_towards_its_class_and_a_negative_shift_away(quadrants, tmp_path):
    up = _edit(quadrants["inverter"], tmp_path / "up", shift=[f"{c}:30" for c in range(4)], num_inputs=16)
    towards = away = 0
    for op in up.operations:
        start, end = op["per_strength"][0], op["per_strength"][-1]
        assert start["moved_towards"] == start["moved_away"] == 0  # t = 0 is h itself
        assert end["share_target_class"] > start["share_target_class"], op["name"]
        assert end["moved_towards"] > end["moved_away"], op["name"]
        towards, away = towards + end["moved_towards"], away + end["moved_away"]
    assert towards >= 0.5 * (4 * 16 - 16) and away <= 2  # most of those not already in the class move to it
    # The negative control: lowering a logit moves labels away from its class, never towards it.
    down = _edit(quadrants["inverter"], tmp_path / "down", shift=[f"{c}:-30" for c in range(4)], num_inputs=16)
    assert sum(op["per_strength"][-1]["moved_towards"] for op in down.operations) == 0
    assert sum(op["per_strength"][-1]["moved_away"] for op in down.operations) >= 8

    payload = json.loads(up.json_path.read_text())
    assert payload["h_is_classifier_output"] and payload["strengths"] == STRENGTHS
    first = payload["operations"][0]
    assert first["name"] == "shift_0_+30" and np.asarray(first["labels"]).shape == (16, 5, 1)
    assert first["per_strength"][0]["share_input_label"] > 0.9  # the MSE decoder's images keep the input's label
    width, height = Image.open(up.grid_paths["shift_0_+30"]).size
    assert height == 2 * (16 * 16 + 17 * 2) and width == 2 * (6 * 16 + 7 * 2 + 6)  # input | 5 strengths
    for path in (up.json_path, up.arrays_path, *up.grid_paths.values()):
        assert artifacts.is_complete(path)
    meta = artifacts.read_metadata(up.grid_paths["shift_0_+30"])
    assert meta["kind"] == "edit-grid" and meta["inverter_kind"] == "mse" and meta["layer"] == "logits"
    with np.load(up.arrays_path) as arrays:
        edited = arrays["shift_2_+30__h"]
        np.testing.assert_allclose(edited[:, -1, 2] - arrays["h"][:, 2], 30, rtol=1e-5)
        np.testing.assert_array_equal(edited[:, -1, [0, 1, 3]], arrays["h"][:, [0, 1, 3]])
        assert arrays["shift_2_+30__samples"].shape == (16, 5, 1, 16, 16, 1)


def test_scale_noise_and_interpolation(quadrants, tmp_path):
    result = _edit(quadrants["inverter"], tmp_path, scale=0.0, noise=5.0, interpolate=True, num_inputs=6,
                   num_samples=2, strengths=[0, 0.5, 1])
    by_name = {op["name"]: op for op in result.operations}
    assert list(by_name) == ["scale_0", "noise_5", "interpolate"]
    mix = by_name["interpolate"]["per_strength"]
    assert mix[0]["share_input_label"] > 0.8 and mix[-1]["share_partner_label"] > 0.8  # from h_i to h_(i+1)
    with np.load(result.arrays_path) as arrays:
        h = arrays["h"]
        np.testing.assert_allclose(arrays["interpolate__h"][:, -1], np.roll(h, -1, axis=0), atol=1e-6)
        np.testing.assert_allclose(arrays["scale_0__h"][:, 1], 0.5 * h, rtol=1e-6)
        assert not np.any(arrays["scale_0__h"][:, -1])
        noise = arrays["noise_5__h"] - h[:, None]
        np.testing.assert_allclose(noise[:, 2], 2 * noise[:, 1], rtol=1e-4, atol=1e-5)  # one draw, growing
        for name in by_name:  # t = 0 decodes h itself, shared by every operation
            np.testing.assert_array_equal(arrays[f"{name}__samples"][:, 0], arrays["scale_0__samples"][:, 0])
    # Interpolation rows end with the partner input; 6 inputs x 2 samples rows.
    width, height = Image.open(result.grid_paths["interpolate"]).size
    assert height == 2 * (12 * 16 + 13 * 2) and width == 2 * (5 * 16 + 6 * 2 + 6)


def test_a_pixelcnn_can_be_edited_too(tiny_inverters, tmp_path):
    """Any kind that samples: the PixelCNN of fc3 (one draw: no t = 0, and scaling needs no reference)."""
    result = _edit(tiny_inverters["fc3"].model_path.parent, tmp_path, scale=3.0, num_inputs=2, strengths=[1], seed=3)
    assert result.kind == "pixelcnn" and result.layer == "fc3"
    op = result.operations[0]
    assert np.asarray(op["labels"]).shape == (2, 1, 1) and "share_argmax_h" not in op["per_strength"][0]
    assert json.loads(result.json_path.read_text())["reference_labels"] is None
    with np.load(result.arrays_path) as arrays:
        assert arrays["scale_3__samples"].shape == (2, 1, 1, 20, 20, 1)
        assert arrays["scale_3__samples"].dtype == np.uint8


def test_parse_shift_and_config():
    assert parse_shift("3:10") == (3, 10.0) and parse_shift(" 0 : -2.5 ") == (0, -2.5) and parse_shift("1:1e1")[1] == 10
    for bad in ("3", "a:1", "3:x", "3:1:2"):
        with pytest.raises(ValueError, match="CLASS:DELTA"):
            parse_shift(bad)
    assert EditConfig(inverter="x", shift="2:5").shift == ["2:5"]
    config = EditConfig(inverter="x")
    assert (config.strengths, config.num_inputs, config.num_samples, config.operations()) == (STRENGTHS, 8, 1, [])


def _spatial_copy(inverter, tmp_path):
    """The inverter with metadata claiming a spatial h: what an inverter of conv1 looks like to `edit`."""
    copy = tmp_path / "spatial"
    shutil.copytree(inverter, copy)
    meta_path = artifacts.metadata_path(copy / "inverter.keras")
    meta = json.loads(meta_path.read_text())
    meta["h_shape"], meta["layer"] = [2, 2, 1], "conv2"
    meta_path.write_text(json.dumps(meta))
    return copy


def test_bad_input_is_one_line_with_exit_code_2(quadrants, tiny_inverters, tmp_path):
    from cli_errors import assert_one_line_error
    from test_cli import invoke

    inverter = quadrants["inverter"]
    assert_one_line_error(invoke("edit", "--inverter", inverter), "at least one operation", "--shift")
    assert_one_line_error(invoke("edit", "--inverter", inverter, "--shift", "7:5"), "class 7 is out of range",
                          "4 units")
    assert_one_line_error(invoke("edit", "--inverter", inverter, "--shift", "seven:5"), "CLASS:DELTA")
    assert_one_line_error(invoke("edit", "--inverter", _spatial_copy(inverter, tmp_path), "--shift", "1:5"),
                          "spatial h", "--scale")
    assert_one_line_error(invoke("edit", "--inverter", inverter, "--interpolate", "--num-inputs", 1), "--interpolate")
    assert_one_line_error(invoke("edit", "--inverter", inverter, "--scale", 2, "--strengths", "0,x"), "--strengths")
    assert_one_line_error(invoke("edit", "--inverter", inverter, "--noise", -1), "noise")
    assert_one_line_error(invoke("edit", "--inverter", tiny_inverters["none"].model_path.parent, "--scale", 2),
                          "unconditional")
    assert_one_line_error(invoke("edit", "--inverter", tmp_path / "missing", "--scale", 2), "not found")
    with pytest.raises(InvkerasError):  # the library says the same, without the CLI
        _edit(inverter, tmp_path, shift=["-1:2"])


def test_cli_prints_a_table_and_writes_the_files(quadrants, tmp_path):
    from test_cli import invoke

    result = invoke("edit", "--inverter", quadrants["inverter"], "--shift", "1:30", "--interpolate", "--num-inputs", 4,
                    "--strengths", "0,1", "--out", tmp_path, width=200)
    assert result.exit_code == 0, result.output
    assert "shift_1_+30" in result.output and "interpolate" in result.output and "moved to / from" in result.output
    assert (tmp_path / "edit_shift_1_+30.png").is_file() and artifacts.is_complete(tmp_path / "edits.json")
    assert "invkeras edit" in invoke("edit", "--help").output


def test_recipe_edit_and_misclassified_sample_steps_run_once(quadrants, tmp_path):
    import yaml

    from invkeras.recipes import load_recipe, run_recipe

    recipe = tmp_path / "edit.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "edit-test", "dataset": quadrants["dataset"], "workspace": str(quadrants["workspace"]),
        "steps": {"edits": {"command": "edit", "layers": ["logits"], "kind": "mse", "shift": "2:30", "num_inputs": 4,
                            "strengths": [0, 1], "subdir": "edits-recipe"},
                  "mistakes": {"command": "sample", "layers": ["logits"], "kind": "mse", "misclassified": True,
                               "num_inputs": 2, "num_samples": 1}}}))
    parsed = load_recipe(recipe)
    assert parsed.steps["edits"].shift == ["2:30"] and parsed.steps["edits"].scale is None
    first, mistakes = run_recipe(parsed)
    assert first.status == "ran" and "shift_2_+30" in first.summary and mistakes.status == "ran"
    assert artifacts.is_complete(quadrants["inverter"] / "edits-recipe" / "edits.json")
    assert mistakes.outputs == [str(quadrants["inverter"] / "samples_misclassified.png")]
    assert all(artifacts.is_complete(path) for path in mistakes.outputs)
    assert [r.status for r in run_recipe(parsed)] == ["skipped", "skipped"]
    recipe.write_text(recipe.read_text().replace("2:30", "2-30"))
    with pytest.raises(InvkerasError, match="CLASS:DELTA"):
        load_recipe(recipe)
