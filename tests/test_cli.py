"""The CLI via typer's CliRunner: bad input is one line and exit code 2; good input prints tables."""

import json

import pytest
from typer.testing import CliRunner

from invkeras.cli import app
from cli_errors import assert_one_line_error  # tests/cli_errors.py

runner = CliRunner()


def invoke(*args, width=None):
    """Run the CLI; `width` widens its rich console so that wide tables print unfolded."""
    import invkeras.cli

    saved = invkeras.cli.console.width
    if width:
        invkeras.cli.console.width = width
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        invkeras.cli.console.width = saved


@pytest.mark.parametrize("command", ["train-classifier", "extract", "run", "datasets", "export"])
def test_help_has_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Examples" in result.output and f"invkeras {command}" in result.output


def test_wrong_dataset(tmp_path):
    result = invoke("train-classifier", "--dataset", "nosuchdata", "--workspace", tmp_path)
    assert_one_line_error(result, "nosuchdata")


def test_wrong_path(tmp_path):
    result = invoke("extract", "--model", tmp_path / "missing.keras", "--layer", "fc3")
    assert_one_line_error(result, "missing.keras", "not found")
    result = invoke("train-classifier", "--dataset", f"idx:{tmp_path}/nodir", "--workspace", tmp_path)
    assert_one_line_error(result, "nodir")


def test_wrong_layer(tiny_classifier):
    result = invoke("extract", "--workspace", tiny_classifier, "--layer", "conv7", "--split", "test", "--limit", 8)
    assert_one_line_error(result, "conv7", "conv1", "fc3")


def test_malformed_recipe(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nsteps:\n  clf: {command: train-classifier, epochz: 3}\n")
    assert_one_line_error(invoke("run", recipe), str(recipe), "steps.clf.epochz", "unknown key")
    assert_one_line_error(invoke("run", tmp_path / "absent.yaml"), "absent.yaml", "not found")


def test_bad_option_value(tmp_path):
    assert_one_line_error(invoke("train-classifier", "--arch", "resnet", "--workspace", tmp_path), "resnet")
    assert_one_line_error(invoke("train-classifier", "--save-at", "1,x", "--workspace", tmp_path), "--save-at")


def test_datasets_table():
    result = invoke("datasets")
    assert result.exit_code == 0
    for name in ("procedural", "mnist", "affnist", "idx:", "npz:", "folder:"):
        assert name in result.output


def test_extract_prints_table(tiny_classifier):
    result = invoke("extract", "--workspace", tiny_classifier, "--layer", "fc3", "--split", "test", "--limit", 16)
    assert result.exit_code == 0, result.output
    assert "Extracted features" in result.output and "(256,)" in result.output


@pytest.mark.parametrize("command", ["train-inverter", "sample", "estimate-mi", "compare", "sample-grid", "kinds", "edit"])
def test_inversion_commands_have_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Examples" in result.output and f"invkeras {command}" in result.output


def test_train_inverter_bad_inputs(tiny_classifier, tmp_path):
    result = invoke("train-inverter", "--workspace", tiny_classifier, "--layer", "conv7", "--max-steps", 1)
    assert_one_line_error(result, "conv7")
    assert_one_line_error(invoke("train-inverter", "--features", tmp_path / "nope.npz"), "nope.npz", "not found")
    assert_one_line_error(invoke("train-inverter", "--scale", "huge", "--workspace", tmp_path), "scale")


def test_sample_and_estimate_mi_commands(tiny_inverters, tmp_path):
    fc3 = tiny_inverters["fc3"].model_path.parent
    none = tiny_inverters["none"].model_path.parent
    result = invoke("sample", "--inverter", fc3, "--num-inputs", 2, "--num-samples", 2, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "samples.png").exists() and "Samples" in result.output
    result = invoke("estimate-mi", "--inverter", fc3, "--unconditional", none, "--reference", "fc3",
                    "--out", tmp_path / "mi.json")
    assert result.exit_code == 0, result.output
    assert "H(x) = 8.841" in result.output and (tmp_path / "mi.csv").exists()
    assert_one_line_error(invoke("sample", "--inverter", tmp_path / "missing"), "missing", "not found")
    assert_one_line_error(invoke("estimate-mi", "--inverter", fc3, "--reference", "conv9", "--out", tmp_path / "x.json"),
                          "conv9")


def test_compare_prints_one_row_per_kind_and_estimate_mi_refuses_a_kind_without_likelihood(tiny_inverters, tmp_path):
    pixelcnn = tiny_inverters["fc3"].model_path.parent
    mse = tiny_inverters["mse_fc3"].model_path.parent
    result = invoke("compare", "--inverter", pixelcnn, "--inverter", mse, "--num-images", 3, "--num-samples", 2,
                    "--grid-inputs", 1, "--grid-samples", 3, "--top-k", 2, "--max-train-examples", 128,
                    "--out", tmp_path / "cmp", width=200)
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["pixelcnn", "mse"]
    assert "1NN (training)" in result.output and "pixelcnn" in result.output and "mse" in result.output
    assert f"{table['nearest_training']['mean_l1']:.2f} ± {table['nearest_training']['se']:.2f}" in result.output
    assert_one_line_error(invoke("estimate-mi", "--inverter", mse, "--out", tmp_path / "mi.json"),
                          "kind 'mse'", "pixel log prob")
    assert not (tmp_path / "mi.json").exists()


@pytest.mark.parametrize("command", ["sample", "estimate-mi", "extract", "train-inverter"])
def test_an_out_that_is_an_existing_file_is_one_line(tiny_inverters, tiny_classifier, tmp_path, command):
    fc3 = tiny_inverters["fc3"].model_path.parent
    occupied = tmp_path / "a-file"
    occupied.write_text("keep me")
    args = {
        "sample": ["--inverter", fc3, "--num-inputs", 1, "--num-samples", 1, "--out", occupied],
        "estimate-mi": ["--inverter", fc3, "--out", occupied / "mi.json"],
        "extract": ["--workspace", tiny_classifier, "--layer", "fc3", "--split", "test", "--limit", 8, "--out", occupied],
        "train-inverter": ["--workspace", tiny_classifier, "--scale", "tiny", "--max-steps", 1, "--out", occupied],
    }[command]
    assert_one_line_error(invoke(command, *args), "a-file")
    assert occupied.read_text() == "keep me"


def test_kinds_lists_every_registered_kind():
    result = invoke("kinds")
    assert result.exit_code == 0
    for fragment in ("pixelcnn", "mse", "pixel_log_prob", "reconstruct", "--scale"):
        assert fragment in result.output


def test_the_information_table_marks_impossible_numbers():
    import numpy as np
    from rich.console import Console

    from invkeras.analyses.mi import LayerEstimate, build_report
    from invkeras.cli import mi_table

    def estimate(layer, values):
        return LayerEstimate(layer, layer, np.asarray(values, np.float64), 0.01)

    entropy = 8.841
    report = build_report([estimate("conv1", [1.0, 2.0]), estimate("fc3", [9.0, 10.0])], split="test",
                          dataset="procedural", unconditional=estimate("none", [14.0, 15.0]), entropy_nats=entropy)
    console = Console(record=True, width=200)
    console.print(mi_table(report))
    text = console.export_text()
    conv1 = next(line for line in text.splitlines() if line.strip("│ ").startswith("conv1"))
    fc3 = next(line for line in text.splitlines() if line.strip("│ ").startswith("fc3 "))
    assert "13.00 !" in conv1 and "7.34" in conv1  # 14.5 - 1.5 = 13 > H(x): marked; the bound 8.84 - 1.5
    assert "vacuous" in fc3 and "5.00" in fc3 and "!" not in fc3  # 8.84 - 9.5 < 0; 14.5 - 9.5 = 5 < H(x)
    assert "undertrained by at least" in text and "says nothing" in text
    assert report.rows[0]["H*(x) - H*(x|h) [estimate]"] == 13.0  # the JSON keeps the raw number


def test_no_classifier_yet_names_the_command_that_trains_one(tmp_path):
    result = invoke("train-inverter", "--dataset", "procedural", "--layer", "fc3", "--workspace", tmp_path)
    assert_one_line_error(result, "no classifier trained yet for --dataset procedural --arch conv",
                          "invkeras train-classifier --dataset procedural --arch conv")
    assert "--model" not in result.output.split("or give")[0]  # names no flag the user never gave


@pytest.mark.parametrize("empty", [True, False])
def test_empty_and_object_array_inputs_are_one_line(tmp_path, empty):
    import numpy as np

    path = tmp_path / "data.npz"
    if empty:
        np.savez(path, x=np.zeros((0, 8, 8), np.uint8), y=np.zeros((0,), np.int64), h=np.zeros((0, 4), np.float32))
        fragment = "no"
    else:
        np.savez(path, x=np.array([np.zeros((2, 2)), "a"], dtype=object), y=np.zeros(2), h=np.zeros((2, 4)))
        fragment = "object arrays, which are not accepted"
    for args in (["train-classifier", "--dataset", f"npz:{path}", "--workspace", tmp_path / "ws"],
                 ["train-inverter", "--features", path, "--out", tmp_path / "inv"]):
        result = invoke(*args)
        assert_one_line_error(result, fragment)
    assert not (tmp_path / "inv").exists()


def test_library_warnings_stay_out_of_the_one_line_error(tmp_path):
    """TFDS warns through absl about a half-made dataset folder; the user sees only our line."""
    import os
    import subprocess
    import sys

    (tmp_path / "tfds/affnist/official/1.0.0").mkdir(parents=True)  # no dataset_info.json: absl warns
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "invkeras.cli", "train-classifier", "--dataset", "affnist",
                           "--data-dir", str(tmp_path / "tfds"), "--workspace", str(tmp_path / "ws")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: dataset 'affnist'"), lines


def test_export_takes_exactly_one_of_model_or_inverter(tmp_path):
    assert_one_line_error(invoke("export", "--out", tmp_path / "x"), "exactly one of --model or --inverter")
    assert_one_line_error(invoke("export", "--out", tmp_path / "x", "--model", "a", "--inverter", "b"),
                          "exactly one of --model or --inverter")
    assert_one_line_error(invoke("export", "--out", tmp_path / "x", "--inverter", tmp_path / "nothing"), "not found")


def test_corrupted_and_unsafe_inverter_files_given_to_sample_are_one_line(tiny_inverters, tmp_path):
    import shutil

    from invkeras import artifacts

    source = tiny_inverters["fc3"].model_path
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "inverter.keras").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    shutil.copy(artifacts.metadata_path(source), artifacts.metadata_path(broken / "inverter.keras"))
    assert_one_line_error(invoke("sample", "--inverter", broken), "truncated or corrupted")


def test_help_shows_bracketed_defaults():
    # Under rich markup '[default: 64]' is a style tag unless escaped: the default would vanish.
    result = invoke("train-autoencoder", "--help")
    assert result.exit_code == 0 and "[default: 64]" in result.output and "[default: l1]" in result.output
