"""Kind mse, the MSE-decoder baseline: shapes for every layer kind, real training, save/load,
exact resume, samples that are the reconstruction, CLI."""

import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.cli import app
from invkeras.errors import InvkerasError
from invkeras.inverters import load_inverter
from invkeras.inverters.mse.kind import MSEInverter, MSEInverterConfig, per_image_mse, summarize_mse
from invkeras.inverters.mse.network import PixelRange, build_mse_decoder
from killing import Interrupt, KillAt  # tests/killing.py


@pytest.mark.parametrize(
    "image_shape, h_shape",
    [
        ((20, 20, 1), (256,)),  # procedural fc3
        ((28, 28, 1), (10,)),  # MNIST logits
        ((32, 32, 3), (256,)),  # CIFAR fc3
        ((40, 40, 1), (256,)),  # affNIST fc3
        ((20, 20, 1), (8, 8, 32)),  # procedural conv1
        ((28, 28, 1), (12, 12, 32)),  # MNIST conv1: one doubling, then resized 24 -> 28
        ((28, 28, 1), (4, 4, 32)),  # MNIST conv2
        ((32, 32, 3), (5, 5, 128)),  # CIFAR conv2: 40 -> 32
    ],
)
def test_decoder_output_shape_and_range(image_shape, h_shape):
    model = build_mse_decoder(image_shape, h_shape, filters=4)
    h = np.random.default_rng(0).normal(size=(2, *h_shape)).astype("float32") * 100
    out = keras.ops.convert_to_numpy(model(h))
    assert out.shape == (2, *image_shape)
    assert out.min() >= 0 and out.max() <= 255


def test_decoder_refuses_other_feature_ranks():
    with pytest.raises(InvkerasError, match="neither"):
        build_mse_decoder((20, 20, 1), (4, 4))


def test_clipped_output_still_passes_gradients():
    """A pixel predicted far below 0 that should be bright must still be pulled up."""
    import tensorflow as tf

    x = tf.constant([[-50.0, 300.0, 10.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = PixelRange()(x)
    np.testing.assert_allclose(y.numpy(), [[0.0, 255.0, 10.0]])
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [[1.0, 1.0, 1.0]])


def test_mse_summary_arithmetic():
    images = np.zeros((3, 2, 2, 1), np.uint8)
    predictions = np.stack([np.full((2, 2, 1), v, np.float32) for v in (1.0, 2.0, 3.0)])
    mse = per_image_mse(predictions, images)
    np.testing.assert_allclose(mse, [1.0, 4.0, 9.0])
    summary = summarize_mse(mse, baseline=np.array([10.0, 20.0, 30.0]))
    assert summary["mse_per_pixel"] == pytest.approx(14 / 3)
    assert summary["se"] == pytest.approx(np.std([1, 4, 9], ddof=1) / np.sqrt(3))
    assert summary["mean_image_mse_per_pixel"] == 20.0


@pytest.fixture(scope="module")
def factor_features(tmp_path_factory):
    """Procedural images with h = one-hot shape, size, row, column and intensity: h determines x."""
    from invkeras.data.procedural import FACTOR_SIZES, load_split_with_factors

    x, _, factors = load_split_with_factors("train")
    n = 1200
    h = np.concatenate([np.eye(size, dtype=np.float32)[factors[:n, i]] for i, size in enumerate(FACTOR_SIZES)], axis=1)
    path = tmp_path_factory.mktemp("factors") / "factors.npz"
    np.savez(path, x=x[:n], h=h)
    return path


def test_cli_trains_decoder_well_below_the_mean_image(factor_features, tmp_path):
    out = tmp_path / "dec"
    result = CliRunner().invoke(app, [
        "train-inverter", "--kind", "mse", "--features", str(factor_features), "--layer", "factors", "--out", str(out),
        "--max-steps", "150", "--steps-per-checkpoint", "75", "--batch-size", "32", "--learning-rate", "3e-3",
    ])
    assert result.exit_code == 0, result.output
    assert "mse inverter for factors" in result.output
    meta = artifacts.read_metadata(out / "inverter.keras")
    assert meta["kind"] == "inverter" and meta["inverter_kind"] == "mse"
    assert meta["h_shape"] == [35] and meta["image_shape"] == [20, 20, 1]
    validation = meta["results"]["validation"]
    assert validation["n"] == 120 and meta["results"]["steps"] == 150
    assert validation["headline"]["name"] == "MSE per pixel"
    # h fixes the image exactly, so a trained decoder must beat the best constant guess by far.
    assert validation["mse_per_pixel"] < 0.5 * validation["mean_image_mse_per_pixel"]
    assert not (out / "backup").exists()

    # Round trip: the reloaded decoder reproduces the recorded validation MSE on the same images,
    # and its samples are that one reconstruction, K times.
    from invkeras.inverters.data import paired_arrays

    inverter = load_inverter(out)
    assert isinstance(inverter, MSEInverter) and inverter.capabilities == {"sample", "reconstruct"}
    _, val, _, _ = paired_arrays(inverter.config)
    recon = inverter.reconstruct(val["h"])
    assert recon.shape == val["x"].shape and recon.dtype == np.float32
    assert per_image_mse(recon, val["x"]).mean() == pytest.approx(validation["mse_per_pixel"], rel=1e-4)
    samples = inverter.sample(val["h"][:3], 4, seed=5)
    assert samples.shape == (3, 4, 20, 20, 1) and samples.dtype == np.uint8
    assert (samples == samples[:, :1]).all()  # no diversity: a point estimate
    np.testing.assert_array_equal(samples[:, 0], np.clip(np.rint(recon[:3]), 0, 255).astype(np.uint8))
    with pytest.raises(InvkerasError, match="pixel log prob"):
        inverter.log_prob(val["x"], val["h"])
    with pytest.raises(InvkerasError, match=r"shape \(3,\)"):
        inverter.reconstruct(np.zeros((2, 3), np.float32))


def test_a_pixelcnn_option_is_refused_for_kind_mse(factor_features, tmp_path):
    result = CliRunner().invoke(app, ["train-inverter", "--kind", "mse", "--features", str(factor_features),
                                      "--layer", "factors", "--out", str(tmp_path / "dec"), "--scale", "tiny"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--scale" in lines[0] and "kind 'mse'" in lines[0]
    assert not (tmp_path / "dec").exists()


def test_three_kills_resume_exactly(factor_features, tmp_path):
    common = dict(features=str(factor_features), layer="factors", max_steps=30, steps_per_checkpoint=10,
                  batch_size=16, filters=4, train_examples=200, patience=10)
    straight = MSEInverter.train(MSEInverterConfig(**common, out=str(tmp_path / "straight")), progress=False)
    config = MSEInverterConfig(**common, out=str(tmp_path / "dec"))
    for step in (4, 15, 27):
        with pytest.raises(Interrupt):
            MSEInverter.train(config, hooks=[KillAt(step)], progress=False)
    assert (tmp_path / "dec/backup").exists() and not (tmp_path / "dec/inverter.keras").exists()
    resumed = MSEInverter.train(config, progress=False)
    assert resumed.resumed_from_step == 20 and resumed.steps == 30
    assert resumed.validation["mse_per_pixel"] == pytest.approx(straight.validation["mse_per_pixel"], rel=1e-6)
    meta = json.loads((tmp_path / "dec/inverter.keras.meta.json").read_text())
    assert meta["results"]["resumed_from_step"] == 20 and len(meta["history"]["val_loss"]) == 3


def test_resuming_under_another_config_is_refused(factor_features, tmp_path):
    common = dict(features=str(factor_features), layer="factors", max_steps=20, steps_per_checkpoint=10,
                  batch_size=16, filters=4, train_examples=200, out=str(tmp_path / "dec"))
    with pytest.raises(Interrupt):
        MSEInverter.train(MSEInverterConfig(**common), hooks=[KillAt(10, at_checkpoint=True)], progress=False)
    with pytest.raises(InvkerasError) as info:
        MSEInverter.train(MSEInverterConfig(**{**common, "filters": 8}), progress=False)
    assert "\n" not in str(info.value) and "filters 4 -> 8" in str(info.value)
    progress = json.loads((tmp_path / "dec/backup/progress.json").read_text())
    assert progress["step"] == 10 and progress["best_step"] == 10  # early-stopping state on disk, kept


def test_bad_kind_and_unconditional_layer_are_one_line_errors(tmp_path):
    runner = CliRunner()
    for args, fragment in ((["--kind", "vae"], "--kind vae"), (["--kind", "mse", "--layer", "none"], "has no unconditional form")):
        result = runner.invoke(app, ["train-inverter", *args, "--workspace", str(tmp_path)])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output
