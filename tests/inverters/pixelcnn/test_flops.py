"""The train-step FLOP formula against TensorFlow's graph of the same step."""

import keras
import numpy as np
import pytest

from invkeras.inverters.pixelcnn import flops
from invkeras.inverters.pixelcnn.kind import build_network
from invkeras.inverters.pixelcnn.network import GatedResnet, PixelCNNConfig
from invkeras.inverters.pixelcnn.sampling import macs_per_image

# formula / graph count. Measured: 1.0000-1.0002 for a vector h; 1.011 for the spatial h
# below, whose 1x1 projections' input gradients the formula counts and TensorFlow skips (h is
# data, not a weight); that share grows with h's channels over the filters.
GRAPH_TOLERANCE = 0.02


def _compiled_model(config, batch=2, seed=0):
    """A compiled model with its optimizer built (what tracing the train step needs), and a batch."""
    keras.utils.set_random_seed(seed)
    model = build_network(config, learning_rate=1e-3, lr_decay=0.9999)
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, *config.image_shape)).astype("float32")
    inputs = {"x": x}
    if config.conditioning != "none":
        inputs["h"] = rng.normal(size=(batch, *config.h_shape)).astype("float32")
    return model, inputs, x


@pytest.mark.parametrize("image_shape,likelihood,conditioning,h_shape,overrides", [
    ((8, 8, 1), "logistic_mixture", "vector", (3,), {"nr_resnet": 0}),  # the bench's --quick network
    ((9, 7, 3), "logistic_mixture", "vector", (6,), {"vector_conditioning": "deconv", "standardise_h": True}),
    ((7, 5, 1), "categorical", "spatial", (4, 4, 5), {"dropout_rate": 0.0}),
])
def test_formula_agrees_with_the_train_step_graph(image_shape, likelihood, conditioning, h_shape, overrides):
    """2 x 3 x batch x forward MACs equals, within 2%, the multiply-adds of every convolution,
    convolution gradient and matmul in Keras' traced train step (odd sizes, every way h
    enters). TensorFlow's profiler counts more for the same ops: it sizes a convolution's
    gradients by the padded input, and it adds elementwise ops, a small share."""
    kwargs = dict(image_shape=image_shape, filters=8, nr_resnet=1, likelihood=likelihood, num_mixtures=3,
                  conditioning=conditioning, h_shape=h_shape, dropout_rate=0.5)
    config = PixelCNNConfig(**{**kwargs, **overrides})
    batch = 2
    model, inputs, x = _compiled_model(config, batch)
    counted = flops.graph_flops(flops.train_step_graph(model, inputs, x))
    formula = flops.train_step_flops(config, batch)
    assert formula / counted["matmul_flops"] == pytest.approx(1.0, abs=GRAPH_TOLERANCE)
    by_op = counted["matmul_flops_by_op"]
    # Forward convolutions, input gradients and weight gradients: three passes.
    assert {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul"} <= set(by_op)
    assert counted["profiler_matmul_flops"] > counted["matmul_flops"]
    assert 0 < counted["profiler_elementwise_share"] < 0.1


def test_forward_pass_graph_matches_the_forward_macs():
    """Inference only (one forward pass): the graph's multiply-adds are the forward MACs."""
    import tensorflow as tf

    config = PixelCNNConfig(image_shape=(6, 6, 1), filters=8, nr_resnet=1, likelihood="logistic_mixture",
                            num_mixtures=3, conditioning="vector", h_shape=(4,))
    model, inputs, _ = _compiled_model(config, batch=3)
    spec = {k: tf.TensorSpec(v.shape, tf.float32) for k, v in inputs.items()}
    graph = tf.function(lambda i: model(i, training=False)).get_concrete_function(spec).graph
    counted = flops.graph_flops(graph)
    assert counted["matmul_flops"] == pytest.approx(2 * 3 * flops.forward_macs_per_image(config), rel=1e-9)


def test_formula_parts():
    config = PixelCNNConfig.from_scale("small", (28, 28, 1), conditioning="vector", h_shape=(256,),
                                       vector_conditioning="global")
    model_layers = [layer for layer in _layers(config) if isinstance(layer, GatedResnet)]
    assert flops.num_gated_layers(config) == len(model_layers) == 2 * (6 * config.nr_resnet + 2)
    assert flops.h_macs_per_image(config) == len(model_layers) * 256 * 2 * config.filters
    deconv = config.model_copy(update={"vector_conditioning": "deconv"})
    # dense 256 -> 7x7xF, then 4x4 transposed convolutions from 7x7 and from 14x14 maps
    f = config.filters
    assert flops.h_macs_per_image(deconv) == 256 * 49 * f + (49 + 196) * 16 * f * f
    unconditional = PixelCNNConfig.from_scale("small", (28, 28, 1))
    assert flops.h_macs_per_image(unconditional) == 0
    assert flops.train_step_flops(config, 32) == 2 * 3 * 32 * (macs_per_image(config) + flops.h_macs_per_image(config))


def _layers(config):
    from invkeras.inverters.pixelcnn.network import build_pixelcnn

    model = build_pixelcnn(config)
    return model._flatten_layers(include_self=False, recursive=True)
