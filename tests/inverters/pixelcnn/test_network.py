"""The conditional PixelCNN++: causality, shapes, conditioning, saving, and the chain rule.

Causality, exactly as asserted here (raster order over pixels, channels in order within a pixel):

* Network level: the params at pixel i (all channels' params) have exactly zero gradient
  w.r.t. every sub-pixel of pixels i, i+1, ...; and (at inference) a non-zero gradient
  w.r.t. every earlier pixel: PixelCNN++ has no blind spot.
* Likelihood level (logistic mixture, RGB): log P(x[i, c] | ...) has exactly zero gradient
  w.r.t. every sub-pixel after (i, c); it does depend on channels < c of pixel i, only
  through the likelihood's channel coupling, since the network never sees pixel i.
"""

import keras
import numpy as np
import pydantic
import pytest
import tensorflow as tf

from invkeras.inverters.pixelcnn import likelihoods
from invkeras.errors import InvkerasError
from invkeras.inverters.pixelcnn.network import (PixelCNNConfig, PixelCNNPlusPlus, Standardise, VectorToMaps,
                                                build_pixelcnn, model_inputs)
from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm


def random_inputs(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, *config.image_shape)).astype("float32")
    h = None if config.conditioning == "none" else rng.normal(size=(batch, *config.h_shape)).astype("float32")
    return model_inputs(config, x, h)


def initialised_model(config, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_pixelcnn(config)
    initialize_weight_norm(model, random_inputs(config, 8, seed=seed + 100))
    return model


def pixel_jacobian_rows(model, config, inputs, training):
    """Row b of the result: d(params at pixel b) . w / d(x), for one image copied H*W times.

    Copies in a batch are independent (no batch statistics), so one backward pass gives the
    influence of every input sub-pixel on every pixel's params."""
    height, width, _ = config.image_shape
    num_pixels = height * width
    x = tf.repeat(tf.constant(inputs["x"][:1]), num_pixels, axis=0)
    h = None if config.conditioning == "none" else tf.repeat(tf.constant(inputs["h"][:1]), num_pixels, axis=0)
    weights = tf.random.stateless_normal((int(np.prod(config.params_shape[2:])),), seed=(1, 2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        params = model(model_inputs(config, x, h), training=training)
        per_pixel = tf.reshape(params, (num_pixels, num_pixels, -1))
        own_pixel = tf.gather(per_pixel, tf.range(num_pixels), axis=1, batch_dims=1)  # [B, P]
        objective = tf.reduce_sum(own_pixel * weights)
    return tape.gradient(objective, x).numpy().reshape(num_pixels, num_pixels, -1)  # [pixel, input pixel, C]


CAUSALITY_CASES = [
    ((6, 6, 1), "categorical", "none", None),
    ((6, 6, 1), "logistic_mixture", "vector", (4,)),
    ((5, 6, 3), "logistic_mixture", "spatial", (3, 3, 2)),
    ((6, 5, 3), "categorical", "none", None),
]


@pytest.mark.parametrize("image_shape,likelihood,conditioning,h_shape", CAUSALITY_CASES)
def test_network_is_causal_at_every_pixel(image_shape, likelihood, conditioning, h_shape):
    config = PixelCNNConfig.from_scale("tiny", image_shape, likelihood=likelihood, conditioning=conditioning,
                                       h_shape=h_shape, dropout_rate=0.5)
    model = initialised_model(config)
    inputs = random_inputs(config, 1, seed=3)
    for training in (False, True):  # inference, and training with dropout
        influence = np.abs(pixel_jacobian_rows(model, config, inputs, training)).max(axis=-1)  # [pixel, input]
        num_pixels = influence.shape[0]
        future_or_self = np.triu(np.ones((num_pixels, num_pixels), bool))  # input index >= pixel index
        assert influence[future_or_self].max() == 0.0, training  # exactly zero, not merely small
        past = ~future_or_self
        if training:  # dropout may cut some paths; the past must still be seen
            assert (influence[past] > 0).mean() > 0.5
        else:  # no blind spot: every earlier pixel matters
            assert (influence[past] > 0).all()


def test_mixture_log_prob_is_causal_per_channel():
    config = PixelCNNConfig.from_scale("tiny", (4, 3, 3), likelihood="logistic_mixture", num_mixtures=3)
    model = initialised_model(config)
    height, width, channels = config.image_shape
    num_subpixels = height * width * channels
    rng = np.random.default_rng(5)
    # Interior values, so the log-prob is differentiable in every sub-pixel (no edge bins).
    x = tf.constant(np.repeat(rng.integers(1, 255, (1, height, width, channels)), num_subpixels, 0), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        log_probs = likelihoods.log_prob_per_subpixel(model({"x": x}, training=False), x, config.likelihood, channels)
        own = tf.gather(tf.reshape(log_probs, (num_subpixels, num_subpixels)), tf.range(num_subpixels),
                        axis=1, batch_dims=1)
        objective = tf.reduce_sum(own)
    influence = np.abs(tape.gradient(objective, x).numpy().reshape(num_subpixels, num_subpixels))
    after = np.triu(np.ones((num_subpixels, num_subpixels), bool), k=1)
    assert influence[after].max() == 0.0
    assert (np.diag(influence) > 0).all()  # each sub-pixel's own value
    for index in range(num_subpixels):
        channel = index % channels
        lower_same_pixel = influence[index, index - channel : index]
        assert (lower_same_pixel > 0).all()  # the channel coupling


@pytest.mark.parametrize(
    "image_shape,likelihood,conditioning,h_shape",
    [
        ((20, 20, 1), "categorical", "none", None),
        ((20, 20, 1), "categorical", "vector", (10,)),
        ((20, 20, 1), "categorical", "spatial", (12, 12, 4)),
        ((28, 28, 1), "logistic_mixture", "vector", (10,)),
        ((32, 32, 3), "logistic_mixture", "spatial", (8, 8, 3)),
        ((32, 32, 3), "categorical", "none", None),
    ],
)
def test_output_shapes(image_shape, likelihood, conditioning, h_shape):
    config = PixelCNNConfig.from_scale("tiny", image_shape, likelihood=likelihood, conditioning=conditioning,
                                       h_shape=h_shape, num_mixtures=5)
    model = build_pixelcnn(config)
    params = model(random_inputs(config, 2), training=False)
    h, w, c = image_shape
    expected = (2, h, w, c, 256) if likelihood == "categorical" else (2, h, w, 5 * (1 + 2 * c + c * (c - 1) // 2))
    assert tuple(params.shape) == expected == (2, *config.params_shape)


@pytest.mark.parametrize("conditioning,h_shape,vector_conditioning",
                         [("vector", (6,), "deconv"), ("vector", (6,), "global"), ("spatial", (5, 5, 3), "global")])
def test_conditioning_is_used(conditioning, h_shape, vector_conditioning):
    config = PixelCNNConfig.from_scale("tiny", (8, 8, 1), conditioning=conditioning, h_shape=h_shape,
                                       vector_conditioning=vector_conditioning)
    model = initialised_model(config)
    inputs = random_inputs(config, 2)
    projections = [w for w in model.trainable_weights if "h_projection" in w.path]
    assert len(projections) == 16  # one per gated resnet layer
    # The projections start at zero (the model starts as its unconditional twin), but the
    # likelihood's gradient reaches every one of them, so h gets used as soon as training starts.
    with tf.GradientTape() as tape:
        nll = likelihoods.conditional_nll_nats(model(inputs, training=False), inputs["x"], config.likelihood, 1)
    assert all(np.abs(g.numpy()).max() > 0 for g in tape.gradient(nll, projections))
    # As after training: non-zero projections make the output depend on h.
    rng = np.random.default_rng(9)
    for weight in projections:
        weight.assign(rng.normal(0, 0.05, weight.shape).astype("float32"))
    changed = dict(inputs, h=inputs["h"] + rng.normal(size=inputs["h"].shape).astype("float32"))
    difference = np.abs(np.asarray(model(inputs)) - np.asarray(model(changed)))
    assert difference.max() > 1e-3
    # Even the first pixel, which sees no image at all, depends on h.
    assert difference[:, 0, 0].max() > 1e-4


def test_bad_inputs_raise_invkeras_error():
    config = PixelCNNConfig.from_scale("tiny", (6, 6, 1), conditioning="vector", h_shape=(4,))
    model = build_pixelcnn(config)
    x, h = np.zeros((2, 6, 6, 1), "float32"), np.zeros((2, 4), "float32")
    with pytest.raises(InvkerasError, match="'h' has shape"):
        model({"x": x, "h": np.zeros((2, 5), "float32")})
    with pytest.raises(InvkerasError, match="'x' has shape"):
        model({"x": np.zeros((2, 7, 6, 1), "float32"), "h": h})
    with pytest.raises(InvkerasError, match="needs inputs\\['h'\\]"):
        model({"x": x})
    unconditional = build_pixelcnn(PixelCNNConfig.from_scale("tiny", (6, 6, 1)))
    with pytest.raises(InvkerasError, match="unconditional"):
        unconditional({"x": x, "h": h})
    with pytest.raises(InvkerasError, match="unknown likelihood 'gauss'"):
        PixelCNNConfig(image_shape=(6, 6, 1), likelihood="gauss")
    with pytest.raises(InvkerasError, match="unknown conditioning"):
        PixelCNNConfig(image_shape=(6, 6, 1), conditioning="class")
    with pytest.raises(InvkerasError, match="needs h_shape"):
        PixelCNNConfig(image_shape=(6, 6, 1), conditioning="spatial", h_shape=(4,))
    with pytest.raises(InvkerasError, match="unknown scale"):
        PixelCNNConfig.from_scale("huge", (6, 6, 1))
    with pytest.raises(pydantic.ValidationError):
        PixelCNNConfig(image_shape=(6, 6, 1), filterz=3)


def test_standardise_gives_zero_mean_unit_variance_on_its_training_features():
    rng = np.random.default_rng(0)
    h = rng.normal([5.0, -2.0, 0.0], [10.0, 0.1, 1.0], size=(500, 3))
    layer = Standardise(3)
    layer.set_statistics(h)
    out = np.asarray(layer(h.astype("float32")))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    spatial = Standardise(2)  # a spatial h is standardised per channel
    spatial.set_statistics(rng.normal([1.0, 4.0], 2.0, size=(20, 3, 3, 2)))
    assert np.asarray(spatial.mean).shape == (2,)


def test_vector_maps_match_every_resolution():
    config = PixelCNNConfig.from_scale("tiny", (7, 5, 1), conditioning="vector", h_shape=(4,))
    maps = VectorToMaps(3, config.resolutions)(np.ones((2, 4), "float32"))
    assert [tuple(m.shape) for m in maps] == [(2, 7, 5, 3), (2, 4, 3, 3), (2, 2, 2, 3)]


def test_presets():
    paper_grey = PixelCNNConfig.from_scale("paper", (28, 28, 1))
    assert (paper_grey.filters, paper_grey.nr_resnet, paper_grey.likelihood) == (64, 3, "categorical")
    paper_colour = PixelCNNConfig.from_scale("paper", (32, 32, 3), conditioning="vector", h_shape=(10,), h_dropout=0.2)
    assert (paper_colour.filters, paper_colour.likelihood, paper_colour.num_mixtures) == (196, "logistic_mixture", 10)
    assert paper_colour.dropout_rate == 0.5 and paper_colour.h_dropout == 0.2
    # The paper scale keeps the published conditioning; the CPU presets use the named departures.
    assert (paper_colour.vector_conditioning, paper_colour.standardise_h) == ("global", False)
    small = PixelCNNConfig.from_scale("small", (28, 28, 1), conditioning="vector", h_shape=(10,))
    assert (small.vector_conditioning, small.standardise_h) == ("deconv", True)
    assert PixelCNNConfig.from_scale("small", (20, 20, 1)).resolutions == [(20, 20), (10, 10), (5, 5)]
    assert PixelCNNConfig.from_scale("tiny", (7, 5, 1)).resolutions == [(7, 5), (4, 3), (2, 2)]


@pytest.mark.parametrize("conditioning,h_shape", [("spatial", (4, 4, 2)), ("vector", (5,))])
def test_keras_file_round_trip_gives_identical_log_likelihoods(tmp_path, conditioning, h_shape):
    config = PixelCNNConfig.from_scale("tiny", (5, 6, 3), conditioning=conditioning, h_shape=h_shape, h_dropout=0.2)
    model = initialised_model(config)
    # The standardisation statistics are weights: they must survive the file too.
    model.h_standardise.set_statistics(np.random.default_rng(4).normal(2.0, 3.0, (40, *h_shape)))
    inputs = random_inputs(config, 3, seed=1)
    path = tmp_path / "pixelcnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PixelCNNPlusPlus)
    assert loaded.pixelcnn_config == config
    original = likelihoods.log_prob_per_image(model(inputs), inputs["x"], config.likelihood, 3)
    reloaded = likelihoods.log_prob_per_image(loaded(inputs), inputs["x"], config.likelihood, 3)
    np.testing.assert_array_equal(np.asarray(original), np.asarray(reloaded))


@pytest.mark.parametrize("image_shape,likelihood", [((4, 4, 1), "categorical"), ((3, 4, 3), "logistic_mixture")])
def test_image_log_likelihood_is_the_product_of_one_pixel_conditionals(image_shape, likelihood):
    """log p(x) from one forward pass equals sum_i log p(x_i | x_<i), each term read from
    `pixel_probabilities` on an image that holds x only before sub-pixel i (noise after)."""
    config = PixelCNNConfig.from_scale("tiny", image_shape, likelihood=likelihood, conditioning="vector",
                                       h_shape=(3,), num_mixtures=4)
    model = initialised_model(config)
    height, width, channels = image_shape
    inputs = random_inputs(config, 1, seed=2)
    x, h = inputs["x"][0], inputs["h"]
    total = float(likelihoods.log_prob_per_image(model(inputs), inputs["x"], likelihood, channels)[0])

    rng = np.random.default_rng(4)
    num_subpixels = height * width * channels
    revealed = np.arange(num_subpixels).reshape(1, -1) < np.arange(num_subpixels).reshape(-1, 1)
    noise = rng.integers(0, 256, (num_subpixels, num_subpixels)).astype("float32")
    partial = np.where(revealed, x.reshape(1, -1), noise).reshape(num_subpixels, height, width, channels)
    probs = np.asarray(likelihoods.pixel_probabilities(
        model({"x": partial, "h": np.repeat(h, num_subpixels, 0)}), partial, likelihood, channels))
    probs = probs.reshape(num_subpixels, num_subpixels, 256)
    values = x.reshape(-1).astype(int)
    one_at_a_time = sum(np.log(probs[i, i, values[i]]) for i in range(num_subpixels))
    assert one_at_a_time == pytest.approx(total, rel=1e-4, abs=1e-3)
