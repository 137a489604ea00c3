"""Kind cinn through the inverter interface: a tiny cINN over a tiny autoencoder trains from the
CLI, saves a latent-space NLL (never a pixel one), loads back (also in a fresh process),
samples, reconstructs, mixes; bad inputs are one line and exit code 2."""

from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.cli import app
from invkeras.errors import InvkerasError
from invkeras.inverters import load_inverter
from invkeras.inverters.cinn.kind import HEADLINE, CINNInverter
from cli_errors import assert_one_line_error  # tests/cli_errors.py

REPO = Path(__file__).resolve().parents[3]  # recipes are found whatever the working directory


@pytest.fixture(scope="module")
def factors(tmp_path_factory):
    """Procedural images with h = one-hot shape, size, row, column and intensity."""
    from invkeras.data.procedural import FACTOR_SIZES, load_split_with_factors

    x, _, f = load_split_with_factors("train")
    n = 1000
    h = np.concatenate([np.eye(size, dtype=np.float32)[f[:n, i]] for i, size in enumerate(FACTOR_SIZES)], axis=1)
    path = tmp_path_factory.mktemp("factors") / "factors.npz"
    np.savez(path, x=x[:n], h=h)
    return path


@pytest.fixture(scope="module")
def trained(factors, autoencoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cinn") / "factors"
    result = CliRunner().invoke(app, [
        "train-inverter", "--kind", "cinn", "--features", str(factors), "--layer", "factors", "--out", str(out),
        "--max-steps", "120", "--steps-per-checkpoint", "60", "--autoencoder", str(autoencoder), "--num-blocks", "3",
        "--hidden", "16", "--embed-dim", "8", "--learning-rate", "3e-3"])
    return out, result


def test_cli_trains_and_records_a_latent_space_nll(trained, autoencoder):
    out, result = trained
    assert result.exit_code == 0, result.output
    assert "cinn inverter for factors" in result.output and HEADLINE in result.output
    meta = artifacts.read_metadata(out / "inverter.keras")
    assert meta["inverter_kind"] == "cinn" and meta["capabilities"] == ["reconstruct", "sample"]
    assert meta["h_shape"] == [35] and meta["image_shape"] == [20, 20, 1]
    results = meta["results"]
    validation = results["validation"]
    assert validation["headline"]["name"] == HEADLINE and validation["space"] == "latent"
    assert "nll_nats" not in validation and "latent-space estimate" in validation["note"]
    assert validation["latent_nll_nats"] == pytest.approx(8 * validation["latent_nll_nats_per_dim"])
    assert results["latent_nll_nats"] == validation["latent_nll_nats"] and results["space"] == "latent"
    # it learned: well below the NLL of the flow as initialised from data, before any step
    assert validation["latent_nll_nats_per_dim"] < results["initial_val_latent_nll_nats_per_dim"] - 0.2
    assert meta["autoencoder"]["latent_dim"] == 8 and meta["autoencoder"]["path"].endswith("autoencoder.keras")
    assert not (out / "backup").exists()


def test_loads_back_and_samples_reconstructs_mixes(trained, factors):
    out, _ = trained
    from invkeras.inverters.data import paired_arrays

    inverter = load_inverter(out)
    assert isinstance(inverter, CINNInverter) and inverter.latent_dim == 8
    _, val, _, _ = paired_arrays(inverter.config)
    z = inverter.encode(val["x"])
    nll_per_dim = -inverter.latent_log_prob(z, val["h"]) / 8
    assert nll_per_dim.mean() == pytest.approx(inverter.results["validation"]["latent_nll_nats_per_dim"], abs=1e-4)
    v = inverter.to_residual(z, val["h"])
    np.testing.assert_allclose(inverter.from_residual(v, val["h"]), z, atol=1e-4)

    samples = inverter.sample(val["h"][:3], 4, seed=5)
    assert samples.shape == (3, 4, 20, 20, 1) and samples.dtype == np.uint8
    np.testing.assert_array_equal(samples, inverter.sample(val["h"][:3], 4, seed=5))  # the seed fixes them
    assert not np.array_equal(samples, inverter.sample(val["h"][:3], 4, seed=6))
    assert np.abs(samples[:, 0].astype(int) - samples[:, 1]).sum() > 0  # v varies: the samples differ
    recon = inverter.reconstruct(val["h"][:2])
    assert recon.shape == (2, 20, 20, 1) and recon.dtype == np.float32 and 0 <= recon.min() <= recon.max() <= 255
    assert inverter.mix(val["x"][:2], val["h"][2:4], h_a=val["h"][:2]).shape == (2, 20, 20, 1)
    with pytest.raises(InvkerasError, match="pixel log prob"):
        inverter.log_prob(val["x"], val["h"])
    with pytest.raises(InvkerasError, match=r"shape \(3,\)"):
        inverter.sample(np.zeros((2, 3), np.float32))


def test_a_fresh_process_loads_and_samples_it(trained):
    out, _ = trained
    script = ("import sys, numpy as np\n"
              "from invkeras.inverters import load_inverter\n"
              "inverter = load_inverter(sys.argv[1])\n"
              "print('SHAPE', inverter.sample(np.zeros((1, 35), np.float32), 2, seed=0).shape)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0 and "SHAPE (1, 2, 20, 20, 1)" in proc.stdout, proc.stderr[-2000:]


def test_mix_writes_an_n_by_n_grid_whose_diagonal_is_the_reconstruction(trained, tmp_path):
    out, _ = trained
    result = CliRunner().invoke(app, ["mix", "--inverter", str(out), "--num-inputs", "3", "--split", "validation",
                                      "--out", str(tmp_path / "mix")])
    assert result.exit_code == 0, result.output
    assert artifacts.is_complete(tmp_path / "mix" / "mix.png") and artifacts.is_complete(tmp_path / "mix" / "mix.npz")
    with np.load(tmp_path / "mix" / "mix.npz") as arrays:
        x, mixed = arrays["x"], arrays["mixed"]
    assert mixed.shape == (3, 3, 20, 20, 1) and mixed.dtype == np.uint8
    inverter = load_inverter(out)
    recon = inverter.decode(inverter.encode(x))
    for i in range(3):  # t^-1(t(z | h) | h) = z: the diagonal is D(E(x))
        assert np.abs(mixed[i, i].astype(float) - recon[i]).max() <= 1.0
    assert np.abs(mixed[0, 1].astype(int) - mixed[0, 0]).sum() > 0  # another h changes the image
    meta = artifacts.read_metadata(tmp_path / "mix" / "mix.png")
    assert meta["inverter_kind"] == "cinn" and "D(t^-1(v_A | h_B))" in meta["layout"]


def test_mix_refuses_a_kind_without_a_residual(factors, tmp_path):
    from invkeras.inverters import config_for, train_inverter

    mse = train_inverter(config_for("mse", dict(features=str(factors), layer="factors", out=str(tmp_path / "mse"),
                                                max_steps=2, steps_per_checkpoint=2, filters=4)), progress=False)
    result = CliRunner().invoke(app, ["mix", "--inverter", str(mse.model_path.parent), "--out", str(tmp_path)])
    assert_one_line_error(result, "kind 'mse'", "residual")


def test_unconditional_flow_on_z(factors, autoencoder, tmp_path):
    from invkeras.inverters import config_for, train_inverter

    config = config_for("cinn", dict(features=str(factors), layer="none", autoencoder=str(autoencoder),
                                     out=str(tmp_path / "none"), num_blocks=2, hidden=16, max_steps=20,
                                     steps_per_checkpoint=20))
    result = train_inverter(config, progress=False)
    inverter = load_inverter(result.model_path)
    assert not inverter.conditional and inverter.h_shape is None
    assert inverter.sample(None, 3, seed=0).shape == (1, 3, 20, 20, 1)
    assert np.isfinite(result.validation["latent_nll_nats"])


def test_bad_inputs_are_one_line(tiny_classifier, autoencoder, factors, tmp_path):
    runner = CliRunner()
    common = ["train-inverter", "--kind", "cinn", "--max-steps", "1"]
    # an autoencoder of 20x20 images given CIFAR-shaped data
    colour = tmp_path / "colour.npz"
    np.savez(colour, x=np.zeros((20, 32, 32, 3), np.uint8), h=np.zeros((20, 4), np.float32))
    assert_one_line_error(runner.invoke(app, [*common, "--features", str(colour), "--autoencoder", str(autoencoder),
                                  "--out", str(tmp_path / "o1")]), "(20, 20, 1)", "(32, 32, 3)")
    # a layer the classifier does not have
    assert_one_line_error(runner.invoke(app, [*common, "--workspace", str(tiny_classifier), "--layer", "conv7", "--autoencoder",
                                  str(autoencoder), "--out", str(tmp_path / "o2")]), "conv7")
    # no autoencoder, a missing one, and an option of another kind
    assert_one_line_error(runner.invoke(app, [*common, "--features", str(factors), "--out", str(tmp_path / "o3")]), "--autoencoder")
    assert_one_line_error(runner.invoke(app, [*common, "--features", str(factors), "--autoencoder", str(tmp_path / "none"),
                                  "--out", str(tmp_path / "o4")]), "not found")
    assert_one_line_error(runner.invoke(app, [*common, "--features", str(factors), "--autoencoder", str(autoencoder),
                                  "--scale", "tiny"]), "--scale")


def test_a_killed_run_resumes_to_the_weights_of_the_uninterrupted_one(trained, tmp_path):
    from killing import Interrupt, KillAt  # tests/killing.py

    from invkeras.inverters import train_inverter

    out, _ = trained
    straight = load_inverter(out)
    config = straight.config.model_copy(update={"out": str(tmp_path / "resumed")})
    with pytest.raises(Interrupt):
        train_inverter(config, hooks=[KillAt(70)], progress=False)
    resumed = train_inverter(config, progress=False)
    assert resumed.resumed_from_step == 60
    for va, vb in zip(load_inverter(resumed.model_path).model.get_weights(), straight.model.get_weights()):
        np.testing.assert_array_equal(va, vb)


def test_the_rombach2020_recipe_validates_at_both_scales():
    from invkeras.recipes import load_recipe

    for overrides, dataset in (([], "mnist"), (["scale=small", "dataset=npz:my_digits.npz"], "npz-my_digits")):
        steps = load_recipe(REPO / "recipes/rombach2020/layers_mnist.yaml", overrides).steps
        cinn = [s for s in steps.values() if getattr(s, "kind", None) == "cinn" and s.command == "train-inverter"]
        assert sorted(s.layer for s in cinn) == ["conv1", "fc3", "logits", "none"]
        assert all(s.autoencoder == f"runs/{dataset}/autoencoders/latent64/autoencoder.keras" for s in cinn)
        assert steps["autoencoder"].classifier == f"runs/{dataset}/conv/classifier/model.keras"
        assert steps["side_by_side"].kinds == ["cinn", "pixelcnn", "mse"]


def test_kinds_lists_cinn_with_its_options():
    result = CliRunner().invoke(app, ["kinds"], terminal_width=250)
    assert result.exit_code == 0 and "cinn" in result.output and "--autoencoder" in result.output


def test_mix_help_has_examples():
    result = CliRunner().invoke(app, ["mix", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "invkeras mix" in result.output
