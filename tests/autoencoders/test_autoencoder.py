"""train-autoencoder: a tiny autoencoder really trains (better than the mean image), writes its
model, figures and metadata, loads back, resumes exactly, reports a classifier's accuracy on
its reconstructions, and is a recipe step."""

import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.autoencoders.network import decoder_of, default_latent_dim, encoder_of
from invkeras.autoencoders.training import (AutoencoderConfig, load_autoencoder, reconstruct, reconstruction_summary,
                                            train_autoencoder)
from invkeras.cli import app
from invkeras.errors import InvkerasError
from killing import Interrupt, KillAt  # tests/killing.py

TINY = dict(dataset="procedural", latent_dim=8, filters=4, batch_size=32, train_examples=512, eval_examples=64)


@pytest.fixture(scope="module")
def trained(tiny_classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    result = CliRunner().invoke(app, [
        "train-autoencoder", "--dataset", "procedural", "--latent-dim", "16", "--filters", "8", "--max-steps", "300",
        "--steps-per-checkpoint", "150", "--train-examples", "2048", "--eval-examples", "128",
        "--classifier", str(tiny_classifier / "procedural" / "conv"), "--out", str(out)])
    return out, result


def test_cli_trains_an_autoencoder_that_beats_the_mean_image(trained):
    out, result = trained
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output and "classifier accuracy" in result.output
    meta = artifacts.read_metadata(out / "autoencoder.keras")
    assert meta["kind"] == "autoencoder" and meta["latent_dim"] == 16 and meta["image_shape"] == [20, 20, 1]
    validation = meta["results"]["validation"]
    assert validation["n"] == 128 and meta["results"]["steps"] == 300
    assert validation["l1_per_pixel"] < 0.75 * validation["mean_image_l1_per_pixel"]
    assert validation["psnr_db"] > 10
    for split in ("validation", "test"):
        summary = meta["results"][split]
        assert 0 <= summary["classifier_accuracy_on_reconstructions"] <= 1
        assert 0 <= summary["classifier_accuracy_on_originals"] <= 1
    assert artifacts.is_complete(out / "reconstructions.png")
    assert not (out / "backup").exists()


def test_the_reconstruction_grid_shows_a_fair_sample_of_the_test_split_not_its_first_images(trained):
    """A split may be sorted by class (the whole-CIFAR-10 archive's test split is): the grid's
    originals are the first 8 of the split's fixed shuffle, with their positions in the metadata."""
    from PIL import Image

    from invkeras.data import load_arrays
    from invkeras.data.registry import capped_positions
    from invkeras.reports.grids import tile_rows

    out, _ = trained
    meta = artifacts.read_metadata(out / "reconstructions.png")
    positions = capped_positions(128, 8)
    assert meta["results"]["split"] == "test" and meta["results"]["positions"] == positions.tolist()
    assert positions.tolist() != list(range(8))
    x, _ = load_arrays("procedural", "test", limit=128)
    expected = tile_rows([[image, image] for image in x[positions]])
    shown = np.asarray(Image.open(out / "reconstructions.png").convert("RGB"))
    column = 2 * (2 + 20)  # (pad + width) x scale: the originals' column
    assert shown.shape == expected.shape
    np.testing.assert_array_equal(shown[:, :column], expected[:, :column])


def test_it_loads_back_and_reproduces_its_held_out_l1(trained):
    out, _ = trained
    from invkeras.data import load_arrays

    model, meta = load_autoencoder(out)
    x, _ = load_arrays("procedural", "validation", limit=128)
    summary = reconstruction_summary(x, reconstruct(model, x))
    assert summary["l1_per_pixel"] == pytest.approx(meta["results"]["validation"]["l1_per_pixel"], rel=1e-4)
    z = encoder_of(model).predict(x[:4].astype("float32"), verbose=0)
    assert z.shape == (4, 16)
    assert decoder_of(model).predict(z, verbose=0).shape == (4, 20, 20, 1)
    # the encoder is deterministic: the latent noise is for training only
    np.testing.assert_array_equal(reconstruct(model, x[:4]), reconstruct(model, x[:4]))


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    config = AutoencoderConfig(**TINY, max_steps=40, steps_per_checkpoint=20, out=str(tmp_path / "resumed"))
    with pytest.raises(Interrupt):
        train_autoencoder(config, hooks=[KillAt(25)], progress=False)
    resumed = train_autoencoder(config, progress=False)
    assert resumed.resumed_from_step == 20
    straight = train_autoencoder(config.model_copy(update={"out": str(tmp_path / "straight")}), progress=False)
    a, _ = load_autoencoder(resumed.model_path)
    b, _ = load_autoencoder(straight.model_path)
    for va, vb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(va, vb)


def test_defaults_and_layout():
    assert default_latent_dim((28, 28, 1)) == 64 and default_latent_dim((32, 32, 3)) == 128
    config = AutoencoderConfig(dataset="idx:../shared/data/mnist", latent_dim=64, workspace="ws")
    assert str(config.model_path()) == "ws/idx-mnist/autoencoders/latent64/autoencoder.keras"
    assert AutoencoderConfig(dataset="procedural", workspace="ws").model_path().parent.name == "latent64"


def test_bad_inputs_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train-autoencoder", "--loss", "l3", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "loss" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train-autoencoder", "--classifier", str(tmp_path / "nope.keras"), "--latent-dim", "4",
                                 "--max-steps", "1", "--train-examples", "64", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "nope.keras" in result.output
    result = runner.invoke(app, ["train-autoencoder", "--classifier-weight", "0.1", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "needs a classifier" in result.output and "Traceback" not in result.output
    with pytest.raises(InvkerasError, match="autoencoder metadata"):
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "autoencoder.keras").write_bytes(b"x")
        load_autoencoder(tmp_path / "c")


def test_help_has_examples():
    result = CliRunner().invoke(app, ["train-autoencoder", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "invkeras train-autoencoder" in result.output


def test_a_recipe_has_autoencoder_and_cinn_steps(tmp_path):
    from invkeras.recipes import load_recipe
    from invkeras.recipes.runner import step_outputs

    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: latent
        dataset: procedural
        workspace: {tmp_path / 'ws'}
        steps:
          autoencoder: {{command: train-autoencoder, latent_dim: 8, max_steps: 10}}
          flow: {{command: train-inverter, kind: cinn, layer: fc3, num_blocks: 2,
                  autoencoder: {tmp_path / 'ws' / 'procedural' / 'autoencoders' / 'latent8'}}}
    """))
    steps = load_recipe(recipe).steps
    assert step_outputs(steps["autoencoder"]) == [tmp_path / "ws/procedural/autoencoders/latent8/autoencoder.keras"]
    assert steps["flow"].num_blocks == 2
    recipe.write_text(recipe.read_text().replace("max_steps: 10", "max_step: 10"))
    with pytest.raises(InvkerasError, match="max_step"):
        load_recipe(recipe)


def _kl_of_softmaxes(target_logits, logits):
    """Mean over rows of KL(softmax target || softmax logits), in float64."""
    def log_softmax(a):
        a = a.astype(np.float64) - a.max(axis=-1, keepdims=True)
        return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))

    log_p, log_q = log_softmax(target_logits), log_softmax(logits)
    return np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))


@pytest.mark.parametrize("term", ["logits", "kl"])
def test_the_classifier_term_is_the_logit_error_or_the_kl_of_the_class_probabilities_and_trains_the_autoencoder_alone(
        tiny_classifier, term):
    import keras

    from invkeras.autoencoders.network import build_autoencoder, with_classifier_term
    from invkeras.data import load_arrays
    from invkeras.data.features import load_model

    classifier = load_model(str(tiny_classifier / "procedural" / "conv"))
    autoencoder = build_autoencoder((20, 20, 1), 8, 4, noise=0.0, kl_weight=0.0)
    trained = with_classifier_term(autoencoder, classifier, weight=0.25, term=term)
    x = load_arrays("procedural", "train", limit=32)[0].astype("float32")
    x_hat = keras.ops.convert_to_numpy(autoencoder(x))
    on_x_hat, on_x = classifier.predict(x_hat, verbose=0), classifier.predict(x, verbose=0)
    if term == "logits":
        expected = 0.25 * np.mean((on_x_hat - on_x) ** 2)
    else:
        expected = 0.25 * _kl_of_softmaxes(on_x, on_x_hat)
        # A shift of every logit changes no probability: the KL term ignores it.
        assert _kl_of_softmaxes(on_x, on_x + 3.0) == pytest.approx(0.0, abs=1e-12)
    trained(x)  # the term is this call's loss
    assert len(trained.losses) == 1 and expected > 0
    assert float(keras.ops.convert_to_numpy(trained.losses[0])) == pytest.approx(expected, rel=1e-4)

    before = [w.copy() for w in classifier.get_weights()], [w.copy() for w in autoencoder.get_weights()]
    trained.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mae")
    for _ in range(3):
        trained.train_on_batch(x, x)
    for a, b in zip(before[0], classifier.get_weights()):
        np.testing.assert_array_equal(a, b)  # frozen
    assert any(not np.array_equal(a, b) for a, b in zip(before[1], autoencoder.get_weights()))


def test_a_run_with_the_classifier_term_saves_the_autoencoder_alone(tiny_classifier, tmp_path):
    classifier = str(tiny_classifier / "procedural" / "conv")
    config = AutoencoderConfig(**TINY, max_steps=20, steps_per_checkpoint=10, classifier=classifier,
                               classifier_weight=0.1, out=str(tmp_path / "ae"))
    result = train_autoencoder(config, progress=False)
    model, meta = load_autoencoder(result.model_path)
    assert meta["config"]["classifier_weight"] == 0.1 and meta["results"]["steps"] == 20
    assert [layer.name for layer in model.layers] == ["x", "encoder", "regulariser", "decoder"]
    assert 0 <= meta["results"]["test"]["classifier_accuracy_on_reconstructions"] <= 1
    assert "classifier" not in config.non_trajectory_fields()  # another classifier is another run
    with pytest.raises(ValueError, match="classifier_weight 0.1 needs a classifier"):
        AutoencoderConfig(**TINY, classifier_weight=0.1)
    with pytest.raises(ValueError, match="Input should be 'logits' or 'kl'"):
        AutoencoderConfig(**TINY, classifier=classifier, classifier_weight=0.1, classifier_term="mse")
