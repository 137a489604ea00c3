"""The paper's classifier architectures: layer names, representation shapes, saving, layer outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from invkeras.classifiers.architectures import ARCHITECTURES, LAYER_NAMES, build_classifier, layer_output_model
from invkeras.errors import InvkerasError

GREY = (28, 28, 1)
COLOUR = (32, 32, 3)


def _images(shape, n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", [GREY, COLOUR], ids=["grey", "colour"])
def test_named_layers_and_output_shapes(arch, shape):
    model = build_classifier(arch, shape, 10)
    names = [layer.name for layer in model.layers]
    for name in LAYER_NAMES:
        assert name in names
    outputs = layer_output_model(model, LAYER_NAMES)(_images(shape, n=2))
    assert tuple(outputs["fc3"].shape) == (2, 256)
    assert tuple(outputs["logits"].shape) == (2, 10)
    if arch == "fc":
        assert tuple(outputs["conv1"].shape) == (2, 2048)
        assert tuple(outputs["conv2"].shape) == (2, 2048)
    else:
        assert len(outputs["conv1"].shape) == 4 and len(outputs["conv2"].shape) == 4
        # Representations are post-ReLU.
        assert float(np.min(outputs["conv1"])) >= 0.0


def test_mnist_conv_shapes_match_the_paper():
    model = build_classifier("conv", GREY, 10)
    assert tuple(model.get_layer("conv1").output.shape) == (None, 12, 12, 32)
    assert tuple(model.get_layer("conv2").output.shape) == (None, 4, 4, 32)
    colour = build_classifier("conv", COLOUR, 10)
    assert tuple(colour.get_layer("conv1").output.shape) == (None, 14, 14, 64)
    assert tuple(colour.get_layer("conv2").output.shape) == (None, 5, 5, 128)


def test_gpool_pools_conv2_globally_but_conv2_stays_spatial():
    model = build_classifier("conv-gpool", GREY, 10)
    assert tuple(model.get_layer("conv2").output.shape) == (None, 4, 4, 32)
    assert isinstance(model.get_layer("gpool"), keras.layers.GlobalMaxPooling2D)
    assert model.get_layer("fc3").kernel.shape == (32, 256)
    plain = build_classifier("conv", GREY, 10)
    assert not any(isinstance(layer, keras.layers.GlobalMaxPooling2D) for layer in plain.layers)


def test_fc_has_2048_unit_dense_layers():
    model = build_classifier("fc", GREY, 10)
    for name in ("conv1", "conv2"):
        layer = model.get_layer(name)
        assert isinstance(layer, keras.layers.Dense) and layer.units == 2048


def test_dropout_can_be_disabled_and_filters_overridden():
    assert any(isinstance(layer, keras.layers.Dropout) for layer in build_classifier("conv", GREY, 10).layers)
    model = build_classifier("conv", GREY, 10, dropout_rate=0, filters=(8, 16))
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert tuple(model.get_layer("conv2").output.shape) == (None, 4, 4, 16)


@pytest.mark.parametrize("arch", ["conv", "fc"])
def test_one_seed_gives_the_same_untrained_network_with_and_without_dropout(arch):
    # The normal and overfitted regimes of the training-dynamics study start from one network.
    keras.utils.set_random_seed(3)
    with_dropout = build_classifier(arch, GREY, 10, dropout_rate=0.3)
    keras.utils.set_random_seed(3)
    without = build_classifier(arch, GREY, 10, dropout_rate=0)
    assert len(with_dropout.weights) == len(without.weights)
    for a, b in zip(with_dropout.weights, without.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_raw_uint8_and_float_pixels_give_the_same_logits():
    model = build_classifier("conv", GREY, 4)
    x = _images(GREY)
    np.testing.assert_allclose(model(x), model(x.astype("float32")), rtol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_keras_file_round_trip_gives_identical_predictions(arch, tmp_path):
    model = build_classifier(arch, COLOUR, 10)
    x = _images(COLOUR)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert tuple(loaded.get_layer("conv1").output.shape) == tuple(model.get_layer("conv1").output.shape)
    features = layer_output_model(loaded, ["conv1"])(x)["conv1"]
    np.testing.assert_array_equal(features, layer_output_model(model, ["conv1"])(x)["conv1"])


def test_bad_arguments_are_user_errors():
    with pytest.raises(InvkerasError, match="unknown architecture 'resnet'.*conv, conv-gpool, fc"):
        build_classifier("resnet", GREY, 10)
    with pytest.raises(InvkerasError, match="at least 16x16"):
        build_classifier("conv", (8, 8, 1), 10)
    with pytest.raises(InvkerasError, match="height, width, channels"):
        build_classifier("fc", (28, 28), 10)


def test_unknown_layer_lists_the_model_layers():
    model = build_classifier("conv", GREY, 10)
    with pytest.raises(InvkerasError, match="no layer named 'conv3'.*conv1, conv1_dropout, conv2"):
        layer_output_model(model, ["conv1", "conv3"])


def test_layer_output_model_on_user_sequential_models(tmp_path):
    # With an Input, saved and reloaded as a user would pass it to `invkeras extract`.
    user = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(5, name="hidden"),
            keras.layers.Dense(2),
        ]
    )
    user.save(tmp_path / "user.keras")
    loaded = keras.models.load_model(tmp_path / "user.keras")
    x = np.ones((4, 6, 6, 1), "float32")
    out = layer_output_model(loaded, ["hidden", "flat"]).predict(x, verbose=0)
    assert out["hidden"].shape == (4, 5) and out["flat"].shape == (4, 36)
    np.testing.assert_allclose(out["hidden"], loaded.get_layer("hidden")(loaded.get_layer("flat")(x)), rtol=1e-6)

    # Without an Input: built by calling it on data.
    lazy = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3, name="hidden")])
    lazy(x)
    assert layer_output_model(lazy, "hidden")(x)["hidden"].shape == (4, 3)

    # Never built: no symbolic inputs to start from.
    with pytest.raises(InvkerasError, match="no symbolic inputs"):
        layer_output_model(keras.Sequential([keras.layers.Dense(3, name="hidden")]), ["hidden"])
