"""Kind gan, trained: a tiny GAN whose samples carry the classifier's label better than the same
GAN given shuffled h, exact resume after kills, sampling, export, and one-line CLI refusals."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.cli import app
from invkeras.errors import InvkerasError
from invkeras.inverters import config_for, inverter_class, load_inverter
from killing import Interrupt, KillAt  # tests/killing.py

# A classifier sharper than the session's one-epoch fixture (which is near chance, so its labels
# say little about the image): two passes over 4,096 procedural images, about 75% accurate.
CLASSIFIER = dict(dataset="procedural", arch="conv", epochs=2, batch_size=64, train_examples=4096, learning_rate=2e-3)
GAN = dict(dataset="procedural", layer="logits", scale="tiny", batch_size=32, d_steps=1, g_learning_rate=5e-4,
           d_learning_rate=5e-4, train_examples=2000, eval_examples=400)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from invkeras.classifiers.training import ClassifierConfig, train_classifier

    workspace = tmp_path_factory.mktemp("gan_workspace")
    train_classifier(ClassifierConfig(**CLASSIFIER, workspace=str(workspace)))
    return workspace


@pytest.fixture(scope="module")
def tiny_gan(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "logits"
    config = config_for("gan", dict(GAN, workspace=str(workspace), max_steps=500, steps_per_checkpoint=250,
                                    out=str(out)))
    return inverter_class("gan").train(config, progress=False)


def _agreement(probe, inputs_labels, samples):
    from invkeras.analyses.compare import label_agreement

    _, labels = probe(samples)
    return label_agreement(inputs_labels, labels)


def test_a_tiny_gan_carries_the_label_of_its_h(tiny_gan):
    """Label agreement (the classifier's label of a sample == its label of the input) against
    the same GAN given the h of other inputs: a G that ignored h would score the same on both."""
    from invkeras.analyses.common import ClassifierProbe
    from invkeras.inverters.data import held_out_inputs

    inverter = load_inverter(tiny_gan.model_path)
    inputs = held_out_inputs(inverter.config, "test", 400)
    probe = ClassifierProbe(inverter.classifier_path, "logits")
    labels = probe.labels(inputs["x"][:, None])[:, 0]
    shuffled = np.random.default_rng(0).permutation(len(labels))
    agree = _agreement(probe, labels, inverter.sample(inputs["h"], 4, seed=1))
    control = _agreement(probe, labels, inverter.sample(inputs["h"][shuffled], 4, seed=1))
    chance = float(np.sum((np.bincount(labels) / len(labels)) ** 2))  # labels drawn independently of the input
    difference = agree - control
    se = difference.std(ddof=1) / np.sqrt(len(difference))
    # Measured: 0.406 against 0.299 (chance 0.265), SE of the difference 0.021. A G that
    # ignores h gives a difference of 0 +- 2 SE, so 0.07 (over 3 SE) fails it.
    assert agree.mean() - control.mean() > max(0.07, 2.5 * se), (agree.mean(), control.mean(), se)
    assert agree.mean() > chance + 0.07


def test_samples_are_a_function_of_seed_h_and_nothing_else(tiny_gan):
    from invkeras.inverters.data import held_out_inputs

    inverter = load_inverter(tiny_gan.model_path)
    assert inverter.capabilities == {"sample", "reconstruct"} and inverter.kind == "gan"
    h = held_out_inputs(inverter.config, "validation", 5)["h"]
    samples = inverter.sample(h, 3, seed=4, batch_size=4)
    assert samples.shape == (5, 3, 20, 20, 1) and samples.dtype == np.uint8
    np.testing.assert_array_equal(samples, inverter.sample(h, 3, seed=4, batch_size=64))  # batch size: no effect
    assert not np.array_equal(samples, inverter.sample(h, 3, seed=5))
    assert np.abs(samples[:, 0].astype(int) - samples[:, 1]).mean() > 0.5  # the noise matters
    recon = inverter.reconstruct(h)
    assert recon.shape == (5, 20, 20, 1) and recon.dtype == np.float32 and 0 <= recon.min() <= recon.max() <= 255
    meta = artifacts.read_metadata(tiny_gan.model_path)
    assert meta["results"]["validation"]["headline"]["name"] == "pixel L1 of G(h, 0)"
    assert meta["network"]["noise_dim"] == 16 and meta["results"]["steps"] == 500
    assert not meta["results"]["stopped_early"]
    assert len(meta["history"]["d_loss"]) == 2 and "g_loss" in meta["history"]
    with pytest.raises(InvkerasError, match=r"shape \(3,\)") as info:
        inverter.sample(np.zeros((2, 3), np.float32))
    assert "\n" not in str(info.value)
    with pytest.raises(InvkerasError, match="pixel log prob"):
        inverter.log_prob(np.zeros((1, 20, 20, 1)), h[:1])


def test_a_killed_run_resumes_to_the_uninterrupted_one(workspace, tmp_path):
    """Both networks, both optimisers, the EMA, spectral-norm vectors, batch-norm statistics and
    the noise generator's state: a run killed mid-interval ends with the same generator."""
    common = dict(GAN, workspace=str(workspace), d_steps=2, batch_size=16, max_steps=8, steps_per_checkpoint=4,
                  train_examples=256, eval_examples=32)
    gan = inverter_class("gan")
    straight = gan.train(config_for("gan", dict(common, out=str(tmp_path / "straight"))), progress=False)
    config = config_for("gan", dict(common, out=str(tmp_path / "killed")))
    with pytest.raises(Interrupt):
        gan.train(config, hooks=[KillAt(6)], progress=False)
    assert (tmp_path / "killed/backup/progress.json").exists() and not (tmp_path / "killed/inverter.keras").exists()
    resumed = gan.train(config, progress=False)
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    a, b = load_inverter(straight.model_path), load_inverter(resumed.model_path)
    for x, y in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert resumed.validation["pixel_l1"] == pytest.approx(straight.validation["pixel_l1"], rel=1e-5)
    history = json.loads((tmp_path / "killed/inverter.keras.meta.json").read_text())["history"]
    assert history["d_loss"] == pytest.approx(a.meta["history"]["d_loss"], rel=1e-5)


def test_export_functions_trace_and_agree_with_the_library(tiny_gan):
    """The functions `invkeras export` traces (without writing a SavedModel, which costs ten
    seconds here): `reconstruct` is the library's; `sample` is a function of its seed."""
    import tensorflow as tf

    from invkeras.inverters.data import held_out_inputs

    inverter = load_inverter(tiny_gan.model_path)
    functions = inverter.export_functions(4)
    assert list(functions) == ["sample", "reconstruct"]
    traced = {name: tf.function(fn, input_signature=[tf.TensorSpec(shape, dtype) for shape, dtype in specs],
                                autograph=False)
              for name, (fn, specs) in functions.items()}
    h = tf.constant(held_out_inputs(inverter.config, "test", 4)["h"].astype("float32"))
    np.testing.assert_allclose(traced["reconstruct"](h).numpy(), inverter.reconstruct(h.numpy()), atol=1e-3)
    drawn = traced["sample"](h, tf.constant(7, tf.int32)).numpy()
    assert drawn.dtype == np.uint8 and drawn.shape == (4, 20, 20, 1)
    # Without XLA the traced draw is the library's own; `export` compiles `sample` with XLA,
    # whose normal generator gives other numbers for the same seed.
    np.testing.assert_array_equal(drawn, inverter.sample(h.numpy(), 1, seed=7)[:, 0])
    assert not np.array_equal(traced["sample"](h, tf.constant(8, tf.int32)).numpy(), drawn)


def _one_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tiny_gan, workspace, tmp_path):
    runner = CliRunner()
    train = ["train-inverter", "--kind", "gan", "--layer", "logits", "--workspace", str(workspace),
             "--out", str(tmp_path / "never")]
    line = _one_line(runner.invoke(app, [*train, "--filters", "8"]))
    assert "--filters" in line and "kind 'gan'" in line and "--d-steps" in line
    line = _one_line(runner.invoke(app, [*train, "--learning-rate", "0.01"]))
    assert "g_learning_rate" in line
    line = _one_line(runner.invoke(app, [*train, "--scale", "tiny", "--noise-dim", "2"]))
    assert "--noise-dim 2" in line
    line = _one_line(runner.invoke(app, ["train-inverter", "--kind", "gan", "--layer", "none",
                                         "--workspace", str(workspace)]))
    assert "no unconditional form" in line
    assert not (tmp_path / "never" / "inverter.keras").exists()

    gan_dir = tiny_gan.model_path.parent
    line = _one_line(runner.invoke(app, ["estimate-mi", "--inverter", str(gan_dir),
                                         "--out", str(tmp_path / "mi.json")]))
    assert "kind 'gan'" in line and "pixel log prob" in line

    # An inverter whose recorded feature shape is not that of its data (say, the classifier was
    # retrained with another number of classes) is refused when sampled, not run on the wrong h.
    stale = tmp_path / "stale"
    shutil.copytree(gan_dir, stale)
    meta_path = stale / "inverter.keras.meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "h_shape": [7]}))
    line = _one_line(runner.invoke(app, ["sample", "--inverter", str(stale), "--num-inputs", "2"]))
    assert "shape (4,)" in line and "(7,)" in line

    ok = runner.invoke(app, ["sample", "--inverter", str(gan_dir), "--num-inputs", "3", "--num-samples", "2",
                             "--out", str(tmp_path / "grid")])
    assert ok.exit_code == 0, ok.output
    with np.load(tmp_path / "grid" / "samples.npz") as arrays:
        assert arrays["samples"].shape == (3, 2, 20, 20, 1)
