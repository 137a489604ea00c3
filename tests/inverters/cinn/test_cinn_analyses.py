"""What kind cinn adds to the analyses: `attack` (adversarial examples decoded with x's own residual),
the latent-space information table of `estimate-mi`, and the AE reconstruction column of `sample`.

One tiny cinn of fc3 and one unconditional flow, over the shared tiny autoencoder and the
session's tiny classifier, serve every test here."""

from pathlib import Path
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.cli import app
from invkeras.errors import InvkerasError
from invkeras.inverters import load_inverter
from cli_errors import assert_one_line_error  # tests/cli_errors.py

REPO = Path(__file__).resolve().parents[3]  # recipes are found whatever the working directory

EVAL = 48


@pytest.fixture(scope="module")
def cinn(tiny_classifier, autoencoder, tmp_path_factory):
    """{"fc3": dir, "none": dir, "mse": dir}: cinn of fc3 and unconditional, and a 2-step MSE decoder of fc3."""
    from invkeras.inverters import config_for, train_inverter

    root = tmp_path_factory.mktemp("cinn_analyses")
    common = dict(dataset="procedural", workspace=str(tiny_classifier), train_examples=512, eval_examples=EVAL)
    dirs = {}
    for layer in ("fc3", "none"):
        config = config_for("cinn", dict(common, layer=layer, autoencoder=str(autoencoder), out=str(root / layer),
                                         num_blocks=3, hidden=16, embed_dim=8, learning_rate=3e-3, max_steps=60,
                                         steps_per_checkpoint=60))
        dirs[layer] = train_inverter(config, progress=False).model_path.parent
    mse = config_for("mse", dict(common, layer="fc3", out=str(root / "mse"), max_steps=2, steps_per_checkpoint=2,
                                 filters=4))
    dirs["mse"] = train_inverter(mse, progress=False).model_path.parent
    return dirs


# --- attack -------------------------------------------------------------------------


def test_a_large_attack_changes_labels_and_writes_grid_arrays_and_summary(cinn, tmp_path):
    from invkeras.analyses.attack import AttackConfig, attack_inverter
    from invkeras.reports.grids import tile_rows, to_uint8

    out = tmp_path / "pgd"
    result = attack_inverter(AttackConfig(inverter=str(cinn["fc3"]), epsilon=0.5, pgd_steps=5, num_inputs=12,
                                          out=str(out)))
    for name in ("attack.png", "attack.npz", "attack.json"):
        assert artifacts.is_complete(out / name), name  # every file has its metadata beside it
        assert artifacts.read_metadata(out / name)["inverter_kind"] == "cinn"
    with np.load(out / "attack.npz") as arrays:
        a = {k: arrays[k] for k in arrays.files}
    n, shape = 12, (20, 20, 1)
    for key in ("x", "x_adv", "reconstruction", "decoded"):
        assert a[key].shape == (n, *shape), key
    assert a["decoded"].dtype == np.uint8 and a["h_adv"].shape == a["h"].shape == (n, 256)
    # the attack stays in the ball and the pixel range, and changes the classifier's label on some inputs
    assert np.abs(a["x_adv"] - a["x"].astype(np.float32)).max() <= 0.5 * 255 + 1e-3
    assert 0 <= a["x_adv"].min() and a["x_adv"].max() <= 255
    changed = a["labels_adv"] != a["labels_x"]
    assert changed.any()
    summary = json.loads((out / "attack.json").read_text())
    assert summary["attack_success_rate"] == pytest.approx(changed.mean())
    assert summary["share_decoded_with_adversarial_label"] == pytest.approx(
        np.mean(a["labels_decoded"] == a["labels_adv"]))
    assert summary["share_decoded_with_adversarial_label_successful"] == pytest.approx(
        np.mean((a["labels_decoded"] == a["labels_adv"])[changed]))
    assert summary["attack"]["method"] == "pgd" and summary["attack"]["epsilon"] == 0.5
    # decoded = D(t^-1(v_x | h(x'))), and the attacked h is what the classifier makes of x'
    inverter = load_inverter(cinn["fc3"])
    np.testing.assert_array_equal(a["decoded"], to_uint8(inverter.mix(a["x"], a["h_adv"], h_a=a["h"])))
    assert np.abs(a["decoded"].astype(int) - a["reconstruction"]).sum() > 0  # the attack moved the decoding
    # the grid: one row per input, x | D(E(x)) || x' | decoded
    rows = [[a["x"][i], a["reconstruction"][i], to_uint8(a["x_adv"][i]), a["decoded"][i]] for i in range(n)]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "attack.png")), tile_rows(rows, separator_after=2))


def test_epsilon_zero_leaves_labels_and_decoding_alone(cinn, tmp_path):
    result = CliRunner().invoke(app, ["attack", "--inverter", str(cinn["fc3"]), "--epsilon", "0", "--method", "fgsm",
                                      "--num-inputs", "6", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "attack success rate" in result.output
    with np.load(tmp_path / "a" / "attack.npz") as a:
        np.testing.assert_array_equal(a["x_adv"], a["x"].astype(np.float32))
        np.testing.assert_array_equal(a["labels_adv"], a["labels_x"])
        assert np.abs(a["decoded"].astype(int) - a["reconstruction"]).max() <= 1
    summary = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert summary["attack_success_rate"] == 0.0 and summary["attack"]["method"] == "fgsm"


def test_attack_is_refused_for_kinds_without_a_latent_residual_and_for_layer_none(cinn, tmp_path):
    runner = CliRunner()
    assert_one_line_error(runner.invoke(app, ["attack", "--inverter", str(cinn["mse"]), "--epsilon", "0.3",
                                  "--out", str(tmp_path)]), "kind 'mse'", "latent residual")
    assert_one_line_error(runner.invoke(app, ["attack", "--inverter", str(cinn["none"]), "--epsilon", "0.3",
                                  "--out", str(tmp_path)]), "unconditional")
    assert_one_line_error(runner.invoke(app, ["attack", "--inverter", str(cinn["fc3"]), "--epsilon", "2",
                                  "--out", str(tmp_path)]), "epsilon")
    assert_one_line_error(runner.invoke(app, ["attack", "--inverter", str(cinn["fc3"]), "--epsilon", "0.1", "--method", "cw",
                                  "--out", str(tmp_path)]), "method")


# --- latent information -------------------------------------------------------------


def test_latent_estimate_is_the_unconditional_nll_minus_the_conditional_one(cinn, tmp_path):
    from invkeras.analyses.latent_mi import ESTIMATE, NLL
    from invkeras.inverters.data import held_out_inputs
    from invkeras.stats import standard_error

    out = tmp_path / "latent.json"
    result = CliRunner().invoke(app, ["estimate-mi", "--inverter", str(cinn["fc3"]), "--unconditional",
                                      str(cinn["none"]), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "LATENT-SPACE ESTIMATE" in result.output and "H*(z)-H*(z|h)" in result.output
    assert "NCE-ref" not in result.output and "bits/dim" not in result.output  # not the pixel table
    payload = json.loads(out.read_text())
    assert payload["space"] == "latent" and payload["label"] == "latent-space estimate"
    assert artifacts.read_metadata(out)["kind"] == "latent-mi-estimate" and out.with_suffix(".csv").is_file()
    fc3, none = payload["rows"]
    assert (fc3["layer"], none["layer"]) == ("fc3", "none") and fc3["n_images"] == EVAL
    assert all("H*(x|h) nats" not in row and "NCE nats" not in row for row in payload["rows"])

    def nll(directory):  # -log q(E(x) | h) per image, computed here from the inverter itself
        inverter = load_inverter(directory)
        inputs = held_out_inputs(inverter.config, "test", EVAL)
        h = inputs["h"] if inverter.conditional else None
        return -inverter.latent_log_prob(inverter.encode(inputs["x"]), h), inputs["x"]

    conditional, x_cond = nll(cinn["fc3"])
    unconditional, x_none = nll(cinn["none"])
    np.testing.assert_array_equal(x_cond, x_none)  # the same images, so the difference is paired
    assert fc3[NLL] == pytest.approx(conditional.mean(), abs=1e-5)
    assert none[NLL] == pytest.approx(unconditional.mean(), abs=1e-5)
    assert fc3[ESTIMATE] == pytest.approx((unconditional - conditional).mean(), abs=1e-5)
    assert fc3["se (paired)"] == pytest.approx(standard_error(unconditional - conditional), rel=1e-4)
    assert none[ESTIMATE] is None


def test_a_layers_training_seeds_are_one_latent_row_with_the_seed_interval(cinn, tiny_classifier, autoencoder, tmp_path):
    from invkeras.analyses import seeds
    from invkeras.analyses.latent_mi import NLL, held_out_latent_nll
    from invkeras.inverters import config_for, train_inverter

    first = load_inverter(cinn["fc3"]).config
    second = config_for("cinn", {**first.model_dump(), "training_seed": 1, "out": str(tmp_path / "fc3-seed1")})
    second_dir = train_inverter(second, progress=False).model_path.parent
    out = tmp_path / "latent.json"
    result = CliRunner().invoke(app, ["estimate-mi", "--inverter", str(cinn["fc3"]), "--inverter", str(second_dir),
                                      "--unconditional", str(cinn["none"]), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "H*(z|h) over training seeds" in result.output
    fc3, none = json.loads(out.read_text())["rows"]
    assert (fc3["layer"], fc3["n_seeds"], fc3["seeds"], none["n_seeds"]) == ("fc3", 2, [0, 1], 1)
    per_seed = np.stack([held_out_latent_nll(load_inverter(d), eval_examples=EVAL).nll_nats
                         for d in (cinn["fc3"], second_dir)])
    assert not np.allclose(per_seed[0], per_seed[1])  # the runs do differ
    expected = seeds.interval(per_seed)
    assert fc3[NLL] == pytest.approx(expected.mean, abs=1e-5)
    assert fc3["se seeds+images nats"] == pytest.approx(expected.se, rel=1e-4)
    assert [fc3["ci95 low (seeds)"], fc3["ci95 high (seeds)"]] == pytest.approx([expected.low, expected.high], rel=1e-4)


def test_latent_and_pixel_inverters_are_refused_together_in_one_line(cinn, tiny_inverters, tmp_path):
    runner = CliRunner()
    pixelcnn = str(tiny_inverters["fc3"].model_path.parent)
    assert_one_line_error(runner.invoke(app, ["estimate-mi", "--inverter", str(cinn["fc3"]), "--inverter", pixelcnn,
                                  "--out", str(tmp_path / "m.json")]),
              "latent-space", "kind 'pixelcnn'", "cannot share a table")
    assert_one_line_error(runner.invoke(app, ["estimate-mi", "--inverter", pixelcnn, "--unconditional", str(cinn["none"]),
                                  "--out", str(tmp_path / "m.json")]), "latent-space", "cannot share a table")
    assert_one_line_error(runner.invoke(app, ["estimate-mi", "--inverter", str(cinn["fc3"]), "--inverter", str(cinn["mse"]),
                                  "--out", str(tmp_path / "m.json")]), "kind 'mse'", "cannot share a table")
    assert not (tmp_path / "m.json").exists()


def test_latent_report_refuses_different_images_or_latents():
    from invkeras.analyses.latent_mi import LatentEstimate, build_latent_report

    latent = {"autoencoder": "a", "latent_dim": 2}
    nll = np.array([1.0, 2.0, 3.0])
    a = LatentEstimate("fc3", "A", nll, 2, latent, "print-a")
    base = LatentEstimate("none", "B", nll + 1, 2, latent, "print-a")
    report = build_latent_report([a], split="test", dataset="d", unconditional=base)
    assert report.rows[0]["H*(z) - H*(z|h) [latent-space estimate]"] == pytest.approx(1.0)
    assert report.rows[0]["se (paired)"] == pytest.approx(0.0)
    with pytest.raises(InvkerasError, match="different held-out images"):
        build_latent_report([a], split="test", dataset="d",
                            unconditional=LatentEstimate("none", "B", nll, 2, latent, "print-b"))
    with pytest.raises(InvkerasError, match="different latent spaces"):
        build_latent_report([a], split="test", dataset="d",
                            unconditional=LatentEstimate("none", "B", nll, 2, {**latent, "autoencoder": "b"}, "print-a"))


def test_the_default_latent_table_does_not_overwrite_the_pixel_one(cinn):
    from invkeras.analyses.mi import default_out
    from invkeras.recipes import load_recipe

    assert default_out(load_inverter(cinn["fc3"]), "test").name == "latent_test.json"
    steps = load_recipe(REPO / "recipes/rombach2020/layers_mnist.yaml", ["scale=small"]).steps
    assert steps["latent_information"].out().name == "latent_test.json"
    assert steps["information"].out().name == "test.json"
    assert steps["attacks"].out("fc3").parts[-2:] == ("attacks", "pgd_eps0.3")


# --- sample -------------------------------------------------------------------------


def test_the_cinn_sample_grid_shows_the_autoencoder_reconstruction(cinn, tmp_path):
    from invkeras.analyses.samples import SampleConfig, draw_inversions
    from invkeras.reports.grids import tile_rows, to_uint8

    result = draw_inversions(SampleConfig(inverter=str(cinn["fc3"]), num_inputs=3, num_samples=2,
                                          out=str(tmp_path)))
    with np.load(result.arrays_path) as a:
        x, recon, samples = a["x"], a["reconstruction"], a["samples"]
    inverter = load_inverter(cinn["fc3"])
    np.testing.assert_array_equal(recon, to_uint8(inverter.decode(inverter.encode(x))))
    rows = [[x[i], recon[i], *samples[i]] for i in range(3)]  # input | D(E(x)) || 2 samples
    grid = np.asarray(Image.open(result.grid_path))
    np.testing.assert_array_equal(grid, tile_rows(rows, separator_after=2))
    meta = artifacts.read_metadata(result.grid_path)
    assert meta["columns"] == ["input", "reconstruction of the input's own latent", "sample 1", "sample 2"]


def test_a_kind_without_its_own_latent_keeps_the_plain_grid(cinn, tmp_path):
    from invkeras.analyses.samples import SampleConfig, draw_inversions

    result = draw_inversions(SampleConfig(inverter=str(cinn["mse"]), num_inputs=2, num_samples=2, out=str(tmp_path)))
    with np.load(result.arrays_path) as a:
        assert "reconstruction" not in a.files
    assert artifacts.read_metadata(result.grid_path)["columns"] == ["input", "sample 1", "sample 2"]


def test_attack_help_has_examples():
    result = CliRunner().invoke(app, ["attack", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "invkeras attack" in result.output


def test_sample_with_a_temperature_draws_the_cinns_own_tempered_samples(cinn, tmp_path):
    """`invkeras sample --temperature T` on a cinn gives, array for array, the library's
    `sample(..., temperature=T)`: latents from N(0, T^2 I) for the same inputs and seed."""
    common = ["sample", "--inverter", str(cinn["fc3"]), "--num-inputs", "2", "--num-samples", "3", "--seed", "4"]
    runner = CliRunner()
    tempered = runner.invoke(app, [*common, "--temperature", "0.25", "--out", str(tmp_path / "tempered")])
    plain = runner.invoke(app, [*common, "--out", str(tmp_path / "plain")])
    assert tempered.exit_code == 0 and plain.exit_code == 0, tempered.output + plain.output
    with np.load(tmp_path / "tempered" / "samples.npz") as a, np.load(tmp_path / "plain" / "samples.npz") as b:
        samples, untempered, x, h = a["samples"], b["samples"], a["x"], a["h"]
    inverter = load_inverter(cinn["fc3"])
    np.testing.assert_array_equal(samples, inverter.sample(h, 3, seed=4, batch_size=64, temperature=0.25))
    np.testing.assert_array_equal(untempered, inverter.sample(h, 3, seed=4, batch_size=64))
    assert not np.array_equal(samples, untempered)
    assert artifacts.read_metadata(tmp_path / "tempered" / "samples.png")["config"]["temperature"] == 0.25
