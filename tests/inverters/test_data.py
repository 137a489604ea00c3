"""Where an inverter's pairs come from: the held-out inputs the analyses take are the held-out
splits of `paired_arrays`, read without the training split wherever that split stands alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.inverters.data import (PairedDataConfig, choose_held_out_split, held_out_inputs, held_out_splits,
                                     paired_arrays)


def _assert_same(held_out: dict, full: dict, count: int):
    assert sorted(held_out) == sorted(full)
    for key in full:
        np.testing.assert_array_equal(held_out[key], full[key][:count])


@pytest.fixture(scope="module")
def extracted(tiny_classifier, tmp_path_factory):
    """fc3 features of the tiny classifier extracted into a workspace of this module's own."""
    workspace = tmp_path_factory.mktemp("paired")
    run = Path("procedural") / "conv" / "classifier"
    shutil.copytree(tiny_classifier / run, workspace / run)  # its features land in this workspace only
    config = PairedDataConfig(dataset="procedural", layer="fc3", workspace=str(workspace), eval_examples=40)
    _, val, test, _ = paired_arrays(config)
    features = workspace / "procedural" / "conv" / "features" / "fc3"
    assert (features / "train").is_dir()
    return config, {"validation": val, "test": test}, features


def test_held_out_inputs_are_the_held_out_pairs_and_never_read_the_train_split(extracted):
    config, full, features = extracted
    aside = features.parent / "train-aside"
    (features / "train").rename(aside)  # extracting it again would bring it back
    try:
        for split in ("validation", "test"):
            _assert_same(held_out_inputs(config, split, 7), full[split], 7)
        assert not (features / "train").exists()
    finally:
        shutil.rmtree(features / "train", ignore_errors=True)
        aside.rename(features / "train")
    unconditional = config.model_copy(update={"layer": "none"})
    _, val, test, _ = paired_arrays(unconditional)
    _assert_same(held_out_inputs(unconditional, "test", 5), test, 5)
    assert sorted(held_out_inputs(unconditional, "validation", 5)) == ["x"]


def test_held_out_inputs_of_given_features_with_and_without_their_own_splits(extracted, tmp_path):
    config, _, features = extracted
    given = PairedDataConfig(features=str(features), eval_examples=40)  # validation and test stand alone
    _, val, test, _ = paired_arrays(given)
    _assert_same(held_out_inputs(given, "validation", 6), val, 6)
    _assert_same(held_out_inputs(given, "test", 6), test, 6)
    # A user's single .npz: validation is carved out of it, and there is no test split.
    pairs = held_out_inputs(config, "test", 40)
    np.savez(tmp_path / "mine.npz", x=pairs["x"], h=pairs["h"])
    own = PairedDataConfig(features=str(tmp_path / "mine.npz"))
    _, val, _, _ = paired_arrays(own)
    _assert_same(held_out_inputs(own, "validation", 3), val, 3)
    with pytest.raises(InvkerasError, match="has no held-out 'test' split; it has: validation$"):
        held_out_inputs(own, "test", 3)
    with pytest.raises(InvkerasError, match="not a held-out split; this inverter's data has: validation$"):
        held_out_inputs(own, "train", 3)


# --- which held-out split: the one asked for, else the one the data have ------------------


def write_features_npz(path: Path, n: int = 60, seed: int = 0) -> Path:
    """A user's features file: 8x8 grey images x and a 6-d representation h of them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    np.savez(path, x=x, h=x.reshape(n, -1)[:, :6].astype(np.float32) / 255)
    return path


def test_held_out_splits_are_the_ones_the_data_have(extracted, tmp_path):
    config, _, features = extracted
    assert held_out_splits(config) == ("validation", "test")  # a classifier run has every split
    assert held_out_splits(PairedDataConfig(features=str(features))) == ("validation", "test")
    assert held_out_splits(PairedDataConfig(features=str(write_features_npz(tmp_path / "f.npz")))) == ("validation",)
    without_test = tmp_path / "without_test"
    shutil.copytree(features / "train", without_test / "train")
    (without_test / "test").mkdir()  # a folder without a manifest is no split
    assert held_out_splits(PairedDataConfig(features=str(without_test))) == ("validation",)


def test_a_default_split_the_data_lack_gives_way_to_one_they_have_with_a_note(extracted, tmp_path, capsys):
    config, _, _ = extracted
    own = PairedDataConfig(features=str(write_features_npz(tmp_path / "f.npz")))
    owners = {"inverter A": config, "inverter B": own}
    assert choose_held_out_split({"inverter A": config}, "test", given=False, command="sample") == "test"
    assert capsys.readouterr().err == ""
    assert choose_held_out_split(owners, "test", given=False, command="compare") == "validation"
    note = capsys.readouterr().err
    assert note == "note: compare: inverter B has no held-out 'test' split; using its 'validation' split\n"


@pytest.mark.parametrize("split, expected", [
    ("test", "--split test: inverter B has no held-out 'test' split; it has: validation"),
    ("train", "--split train: not a held-out split; the inverters all have: validation"),
    ("dev", "--split dev: not a held-out split; the inverters all have: validation"),
])
def test_a_split_asked_for_that_the_data_lack_is_one_line_naming_those_there_are(extracted, tmp_path, split,
                                                                                  expected):
    config, _, _ = extracted
    own = PairedDataConfig(features=str(write_features_npz(tmp_path / "f.npz")))
    with pytest.raises(InvkerasError) as error:
        choose_held_out_split({"inverter A": config, "inverter B": own}, split, given=True, command="sample")
    assert str(error.value) == expected


def test_features_from_a_file_go_through_sample_compare_and_estimate_mi_with_default_options(tmp_path, monkeypatch):
    """train-inverter --features FILE.npz, then every analysis with its defaults: they take the
    validation split (the file has no test split) and say so."""
    from typer.testing import CliRunner

    from invkeras.cli import app

    monkeypatch.chdir(tmp_path)
    write_features_npz(tmp_path / "f.npz")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output and "error" not in result.output.lower(), result.output
        return result.output

    run("train-inverter", "--features", "f.npz", "--out", "mse", "--kind", "mse", "--max-steps", 10)
    run("train-inverter", "--features", "f.npz", "--out", "pixelcnn", "--kind", "pixelcnn", "--scale", "tiny",
        "--max-steps", 20)
    note = "has no held-out 'test' split; using its 'validation' split"
    assert note in run("sample", "--inverter", "mse")
    assert (tmp_path / "mse" / "samples.png").is_file()
    assert note in run("compare", "--inverter", "mse")  # (a PixelCNN's samples would take a minute here)
    compared = json.loads((tmp_path / "mse" / "compare.json").read_text())
    assert compared["split"] == "validation" and compared["n_images"] == 6  # 10% of 60 carved
    row = compared["rows"][0]
    assert row["IM-S"] is None and row["diversity_pixel_l1"] is not None and "no classifier" in compared["note"]
    assert compared["nearest_training"]["mean_l1"] > 0  # validation pairs are not among the training pairs
    assert note in run("estimate-mi", "--inverter", "pixelcnn")
    assert json.loads((tmp_path / "pixelcnn" / "mi" / "validation.json").read_text())["split"] == "validation"
    # Asked for by name, the missing split is one line naming the split there is.
    result = runner.invoke(app, ["sample", "--inverter", "mse", "--split", "test"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: --split test: inverter mse has no held-out 'test' split; it has: validation"]
