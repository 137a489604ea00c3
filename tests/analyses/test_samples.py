"""`invkeras sample`'s pipeline for any kind: held-out inputs, seeded samples, PNG grid, re-extracted
features; and the grid of samples beside any reconstruct-capable kind's point estimate."""

import numpy as np
import pytest
from PIL import Image

from invkeras import artifacts
from invkeras.analyses.samples import (
    SampleConfig,
    draw_inversions,
    grid_rows_with_reconstruction,
    save_samples_with_reconstruction,
)
from invkeras.errors import InvkerasError
from invkeras.inverters import load_inverter


def test_sample_config_defaults_and_extra_fields():
    config = SampleConfig(inverter="somewhere")
    assert (config.num_inputs, config.num_samples, config.split, config.seed, config.batch_size) == (8, 8, "test", 0, 64)
    assert config.method is None and config.out is None and config.sample_options() == {}
    assert SampleConfig(inverter="x", method="full").sample_options() == {"method": "full"}
    with pytest.raises(ValueError):
        SampleConfig(inverter="x", decoder="y")


def test_conditional_samples_grid_and_reextracted_features(tiny_inverters, tmp_path):
    inverter = tiny_inverters["fc3"].model_path.parent
    config = SampleConfig(inverter=str(inverter), num_inputs=3, num_samples=4, seed=5, batch_size=6,
                          out=str(tmp_path / "a"))
    result = draw_inversions(config)
    assert result.samples.shape == (3, 4, 20, 20, 1) and result.samples.dtype == np.uint8
    assert result.originals.shape == (3, 20, 20, 1) and result.h.shape == (3, 256)
    assert result.samples_h.shape == (3, 4, 256)  # the samples' own fc3 features
    with np.load(result.arrays_path) as saved:
        np.testing.assert_array_equal(saved["samples"], result.samples)
        np.testing.assert_array_equal(saved["x"], result.originals)
    # Grid: 3 rows of (original + 4 samples), 20 px images, 2 px padding, wider gap, scaled x2.
    width, height = Image.open(result.grid_path).size
    assert height == 2 * (3 * 20 + 4 * 2) and width == 2 * (5 * 20 + 5 * 2 + 8)
    assert artifacts.is_complete(result.grid_path) and artifacts.is_complete(result.arrays_path)
    assert result.mean_l1_to_original > 0
    meta = artifacts.read_metadata(result.grid_path)
    assert meta["kind"] == "inversion-samples" and meta["inverter_kind"] == "pixelcnn" and meta["layer"] == "fc3"
    assert meta["config"]["num_samples"] == 4 and meta["seed"] == 5

    same = draw_inversions(config.model_copy(update={"out": str(tmp_path / "b")}))
    other = draw_inversions(config.model_copy(update={"out": str(tmp_path / "c"), "seed": 6}))
    np.testing.assert_array_equal(same.samples, result.samples)
    assert not np.array_equal(other.samples, result.samples)


def test_unconditional_samples_have_no_originals(tiny_inverters, tmp_path):
    config = SampleConfig(inverter=str(tiny_inverters["none"].model_path.parent), num_samples=5, out=str(tmp_path))
    result = draw_inversions(config)
    assert result.samples.shape == (1, 5, 20, 20, 1) and result.originals is None and result.samples_h is None
    assert Image.open(result.grid_path).size[0] == 2 * (5 * 20 + 6 * 2)


def test_any_kind_samples_and_kind_options_only_when_set(tiny_inverters, tmp_path):
    mse = str(tiny_inverters["mse_fc3"].model_path.parent)
    result = draw_inversions(SampleConfig(inverter=mse, num_inputs=2, num_samples=3, out=str(tmp_path)))
    assert result.samples.shape == (2, 3, 20, 20, 1) and result.kind == "mse"
    np.testing.assert_array_equal(result.samples[:, 0], result.samples[:, 2])  # a point estimate, K times
    assert artifacts.read_metadata(result.grid_path)["inverter_kind"] == "mse"
    # A sampling option the kind lacks is refused in one line, not ignored.
    with pytest.raises(InvkerasError, match="no sampling option method") as error:
        draw_inversions(SampleConfig(inverter=mse, num_inputs=2, num_samples=3, method="cached", out=str(tmp_path)))
    assert "\n" not in str(error.value)
    with pytest.raises(InvkerasError, match="no sampling option temperature"):
        draw_inversions(SampleConfig(inverter=mse, num_inputs=2, num_samples=3, temperature=0.7, out=str(tmp_path)))
    assert SampleConfig(inverter=mse, temperature=0.7).sample_options() == {"temperature": 0.7}


def test_grid_rows_put_reconstruction_second():
    originals = np.zeros((2, 4, 4, 1), np.uint8)
    recon = np.full((2, 4, 4, 1), 300.7, np.float32)  # clipped and rounded for the PNG
    samples = np.ones((2, 3, 4, 4, 1), np.uint8)
    rows = grid_rows_with_reconstruction(originals, recon, samples)
    assert len(rows) == 2 and all(len(row) == 5 for row in rows)
    assert rows[0][1].dtype == np.uint8 and rows[0][1].max() == 255
    np.testing.assert_array_equal(rows[1][4], samples[1, 2])


def test_reconstruction_grid_with_any_reconstruct_kind_reuses_drawn_samples(tiny_inverters, tmp_path):
    pixelcnn = str(tiny_inverters["fc3"].model_path.parent)
    mse = tiny_inverters["mse_fc3"].model_path.parent
    config = SampleConfig(inverter=pixelcnn, num_inputs=2, num_samples=3, seed=4, out=str(tmp_path))
    drawn = draw_inversions(config)
    grid = save_samples_with_reconstruction(config, mse)
    assert grid.reused_samples  # samples.npz beside it was drawn with the same settings
    width, height = Image.open(grid.grid_path).size
    assert height == 2 * (2 * 20 + 3 * 2) and width == 2 * (5 * 20 + 6 * 2 + 6)
    meta = artifacts.read_metadata(grid.grid_path)
    assert meta["kind"] == "inversion-samples-with-reconstruction" and meta["reconstruction_kind"] == "mse"
    assert meta["inverter_kind"] == "pixelcnn" and meta["layer"] == "fc3"
    assert meta["columns"][:2] == ["original", "mse reconstruction"] and np.isfinite(grid.mse_per_pixel)
    # Other settings: drawn afresh, and the same images as draw_inversions would give.
    fresh = save_samples_with_reconstruction(config.model_copy(update={"seed": 9}), mse)
    assert not fresh.reused_samples
    assert drawn.samples.shape == (2, 3, 20, 20, 1)
    # The samples may come from any kind too, here the reconstruct-capable one itself.
    itself = save_samples_with_reconstruction(config.model_copy(update={"inverter": str(mse), "out": str(tmp_path / "m")}),
                                              mse)
    assert artifacts.read_metadata(itself.grid_path)["inverter_kind"] == "mse"


def test_reconstruction_grid_refusals_are_one_line(tiny_inverters, tmp_path):
    pixelcnn = tiny_inverters["fc3"].model_path.parent
    config = SampleConfig(inverter=str(pixelcnn), num_inputs=2, num_samples=2, out=str(tmp_path))
    with pytest.raises(InvkerasError, match="kind 'pixelcnn', which has no reconstruct") as error:
        save_samples_with_reconstruction(config, pixelcnn)  # no point estimate
    assert "\n" not in str(error.value)

    other = load_inverter(tiny_inverters["mse_fc3"].model_path)
    other.meta = {**other.meta, "h_shape": [10]}
    with pytest.raises(InvkerasError, match=r"decodes h of shape \(10,\)") as error:
        save_samples_with_reconstruction(config, other)
    assert "\n" not in str(error.value)

    unconditional = SampleConfig(inverter=str(tiny_inverters["none"].model_path.parent), out=str(tmp_path))
    with pytest.raises(InvkerasError, match="unconditional"):
        save_samples_with_reconstruction(unconditional, tiny_inverters["mse_fc3"].model_path)


# --- sample --misclassified ---------------------------------------------------------------


def test_misclassified_inputs_are_the_classifiers_mistakes(quadrants, tmp_path):
    """The quadrants test split has 10% wrong labels: exactly the images the classifier 'gets wrong'."""
    config = SampleConfig(inverter=str(quadrants["inverter"]), num_inputs=5, num_samples=2, misclassified=True,
                          out=str(tmp_path))
    result = draw_inversions(config)
    chosen = result.selection
    assert result.grid_path.name == "samples_misclassified.png" and result.arrays_path.name == "samples_misclassified.npz"
    assert not (tmp_path / "samples.png").exists()
    assert chosen["found"] == 5 and chosen["searched"] == 200 and chosen["misclassified"] >= 5
    assert np.all(chosen["predicted"] != chosen["y"])
    assert len(set(chosen["index"].tolist()) & set(quadrants["flipped"].tolist())) >= 4
    # The logits of a mistake decode to the class the classifier said, not the true one.
    assert chosen["share_samples_predicted_label"] > 0.8 > chosen["share_samples_true_label"]
    with np.load(result.arrays_path) as saved:
        np.testing.assert_array_equal(saved["predicted"], chosen["predicted"])
        assert saved["samples_labels"].shape == (5, 2) and saved["x"].shape == (5, 16, 16, 1)
    meta = artifacts.read_metadata(result.grid_path)
    assert meta["config"]["misclassified"] and meta["results"]["misclassified"]["found"] == 5
    # The reconstruction grid of the same mistakes reuses these samples.
    grid = save_samples_with_reconstruction(config, quadrants["inverter"])
    assert grid.grid_path.name == "samples_reconstruction_misclassified.png" and grid.reused_samples


def test_misclassified_refusals_and_the_cli(quadrants, tiny_inverters, tmp_path):
    from cli_errors import assert_one_line_error
    from test_cli import invoke

    result = invoke("sample", "--inverter", quadrants["inverter"], "--misclassified", "--num-inputs", 3,
                    "--num-samples", 1, "--out", tmp_path, width=200)
    assert result.exit_code == 0, result.output
    assert "misclassified" in result.output and "true -> predicted" in result.output
    assert (tmp_path / "samples_misclassified.png").is_file()
    assert_one_line_error(invoke("sample", "--inverter", tiny_inverters["none"].model_path.parent, "--misclassified",
                                 "--out", tmp_path), "unconditional")
