"""Weight normalisation: the parameterisation, serialisation, and data-dependent init."""

import keras
import numpy as np
import pytest
from keras import ops

from invkeras.errors import InvkerasError
from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn
from invkeras.inverters.pixelcnn.weight_norm import (WNConv2D, WNConv2DTranspose, WNDense, initialize_weight_norm,
                                  weight_norm_layers)


def per_channel_stats(layer_outputs):
    flat = layer_outputs.reshape(-1, layer_outputs.shape[-1]).astype("float64")
    return flat.mean(axis=0), flat.std(axis=0)


def record_pre_activations(model, inputs, monkeypatch):
    """Run `model` once and return {layer name: its output} for every weight-normalised layer
    (their outputs are the pre-activations: the nonlinearity is applied by the caller)."""
    outputs = {}
    for layer in weight_norm_layers(model):
        original = layer.call

        def recording(*args, _original=original, _layer=layer, **kwargs):
            result = _original(*args, **kwargs)
            outputs[_layer.path] = ops.convert_to_numpy(result)
            return result

        monkeypatch.setattr(layer, "call", recording)
    model(inputs, training=False)
    monkeypatch.undo()
    return outputs


@pytest.fixture(scope="module")
def conditioned_batch():
    rng = np.random.default_rng(0)
    config = PixelCNNConfig.from_scale("tiny", (6, 6, 1), conditioning="vector", h_shape=(5,), dropout_rate=0.5)
    batch = {"x": rng.integers(0, 256, (16, 6, 6, 1)).astype("float32"),
             "h": rng.normal(size=(16, 5)).astype("float32")}
    return config, batch


def test_data_dependent_init_normalises_every_layer(conditioned_batch, monkeypatch):
    config, batch = conditioned_batch
    keras.utils.set_random_seed(1)
    model = build_pixelcnn(config)
    layers = list(weight_norm_layers(model))
    assert len(layers) > 30

    # Without the pass the pre-activations are far from standardised (so the check can fail).
    before = record_pre_activations(model, batch, monkeypatch)
    worst_std_error = max(np.abs(per_channel_stats(out)[1] / layer.init_scale - 1).max()
                          for layer in layers for out in [before[layer.path]])
    assert worst_std_error > 0.5

    initialize_weight_norm(model, batch)
    assert not any(layer.init_mode for layer in layers)
    after = record_pre_activations(model, batch, monkeypatch)
    assert len(after) == len(layers)
    for layer in layers:
        mean, std = per_channel_stats(after[layer.path])
        assert np.abs(mean).max() < 1e-3 * max(1.0, layer.init_scale), layer.path
        np.testing.assert_allclose(std, layer.init_scale, rtol=1e-3, err_msg=layer.path)


def test_init_scale_is_used_for_the_residual_branch(conditioned_batch):
    config, batch = conditioned_batch
    model = build_pixelcnn(config)
    scales = {layer.init_scale for layer in weight_norm_layers(model)}
    assert scales == {1.0, 0.1}  # PixelCNN++: 0.1 on each gated resnet's second convolution


def unit_columns(v, axes):
    return v / np.sqrt((v.astype("float64") ** 2).sum(axis=axes, keepdims=True))


def test_weight_norm_parameterisation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 6, 3)).astype("float32")

    conv = WNConv2D(4, (2, 3), padding=((1, 0), (1, 1)))
    conv.build(x.shape)
    conv.g.assign(rng.uniform(0.5, 2, 4).astype("float32"))
    conv.b.assign(rng.normal(size=4).astype("float32"))
    kernel = conv.g.numpy() * unit_columns(conv.v.numpy(), (0, 1, 2))
    expected = ops.conv(np.pad(x, ((0, 0), (1, 0), (1, 1), (0, 0))), kernel.astype("float32"), padding="valid") + conv.b
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert conv(x).shape == conv.compute_output_shape(x.shape) == (2, 5, 6, 4)

    deconv = WNConv2DTranspose(4, (2, 3), strides=2)
    deconv.build(x.shape)
    deconv.g.assign(rng.uniform(0.5, 2, 4).astype("float32"))
    kernel = deconv.g.numpy()[None, None, :, None] * unit_columns(deconv.v.numpy(), (0, 1, 3))
    expected = ops.conv_transpose(x, kernel.astype("float32"), strides=2, padding="valid") + deconv.b
    np.testing.assert_allclose(deconv(x), expected, rtol=1e-5, atol=1e-5)
    assert deconv(x).shape == deconv.compute_output_shape(x.shape) == (2, 10, 13, 4)

    dense = WNDense(7)
    dense.build(x.shape)
    dense.g.assign(rng.uniform(0.5, 2, 7).astype("float32"))
    expected = x @ (dense.g.numpy() * unit_columns(dense.v.numpy(), (0,))) + dense.b.numpy()
    np.testing.assert_allclose(dense(x), expected, rtol=1e-5, atol=1e-5)


def test_weight_norm_layers_round_trip_through_keras_file(tmp_path):
    inputs = keras.Input((6, 6, 2))
    y = WNConv2D(3, (2, 3), padding=((1, 0), (1, 1)), init_scale=0.1)(inputs)
    y = WNConv2DTranspose(3, (2, 2), strides=2)(y)
    outputs = WNDense(4)(y)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype("float32")
    initialize_weight_norm(model, x)
    path = tmp_path / "wn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded.layers[1].get_config() == model.layers[1].get_config()
    assert loaded.layers[1].init_scale == 0.1


def test_init_pass_needs_weight_normalised_layers():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(InvkerasError, match="no weight-normalised layers"):
        initialize_weight_norm(model, np.zeros((2, 3), "float32"))
