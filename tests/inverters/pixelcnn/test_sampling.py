"""The compiled sampler: determinism, shapes, exactness of the cached row steps, and that
samples follow the model's own likelihood."""

import keras
import numpy as np
import pytest
import scipy.stats

from invkeras.inverters.pixelcnn import likelihoods
from invkeras.errors import InvkerasError
from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn, model_inputs
from invkeras.inverters.pixelcnn.sampling import sample, teacher_forced_params
from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

from test_likelihoods import chi_square_pvalue, randomized_pit


def initialised_model(config, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_pixelcnn(config)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (8, *config.image_shape)).astype("float32")
    h = None if config.conditioning == "none" else rng.normal(size=(8, *config.h_shape)).astype("float32")
    initialize_weight_norm(model, model_inputs(config, x, h))
    # The h projections start at zero; give them values, as training would, so that the
    # conditioning paths (e.g. the row slicing of a spatial h) are really exercised.
    for weight in model.trainable_weights:
        if "h_projection" in weight.path:
            weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def rgb_model():
    config = PixelCNNConfig.from_scale("tiny", (4, 4, 3), conditioning="vector", h_shape=(3,), num_mixtures=3)
    return config, initialised_model(config)


def test_cached_row_steps_reproduce_the_full_forward_pass():
    """The sampler's loop, fed the image's own pixels one at a time, must see at every pixel
    exactly the params of one full forward pass: the row caches are never stale. Odd sizes
    (7 -> 4 -> 2 rows, 5 -> 3 -> 2 columns) and a spatial h exercise every crop and resize."""
    config = PixelCNNConfig.from_scale("tiny", (7, 5, 3), likelihood="logistic_mixture", conditioning="spatial",
                                       h_shape=(4, 4, 2), num_mixtures=3)
    model = initialised_model(config, seed=1)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, *config.image_shape)).astype("float32")
    h = rng.normal(size=(2, *config.h_shape)).astype("float32")
    full = np.asarray(model({"x": x, "h": h}, training=False))
    # Without XLA to keep the test fast: the row-step maths is the same either way.
    cached = np.asarray(teacher_forced_params(model, config, x, h, jit=False))
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


BATCH = 250  # one batch size for the XLA sampler tests, so they share one compilation


def test_samples_are_seeded_and_well_formed(rgb_model):
    config, model = rgb_model
    h = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    first = sample(model, config, h=h, num_samples=125, seed=7, batch_size=BATCH)
    again = sample(model, config, h=h, num_samples=125, seed=7, batch_size=BATCH)
    other = sample(model, config, h=h, num_samples=125, seed=8, batch_size=BATCH)
    assert first.shape == (2, 125, 4, 4, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert (first != other).mean() > 0.5
    assert len(np.unique(first)) > 100  # not stuck at a few values


def test_cached_and_full_samplers_draw_the_same_images(rgb_model):
    """Same seed, same random stream: the cached row steps and the reference (one full
    forward pass per pixel) must pick identical pixels. Without XLA, whose random bits
    differ from TensorFlow's kernels."""
    config, model = rgb_model
    h = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    cached = sample(model, config, h=h, num_samples=3, seed=7, method="cached", jit=False)
    full = sample(model, config, h=h, num_samples=3, seed=7, method="full", jit=False)
    np.testing.assert_array_equal(cached, full)


def test_samples_follow_the_model_likelihood(rgb_model):
    """For a fixed model, every sampled sub-pixel given what was sampled before it must be
    distributed as `pixel_probabilities` says: randomized PIT values are Uniform(0, 1)."""
    config, model = rgb_model
    h = np.random.default_rng(1).normal(size=(1, 3)).astype("float32")
    images = sample(model, config, h=h, num_samples=1000, seed=0, batch_size=BATCH)[0].astype("float32")
    params = model({"x": images, "h": np.repeat(h, len(images), 0)}, training=False)
    probs = np.asarray(likelihoods.pixel_probabilities(params, images, config.likelihood, 3)).astype("float64")
    # The first pixel's red channel has a fixed distribution: chi-square against it.
    assert chi_square_pvalue(images[:, 0, 0, 0].astype(int), probs[0, 0, 0, 0]) > 1e-3
    u = randomized_pit(probs, images.astype(int), np.random.default_rng(2))
    assert scipy.stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    worst_position = min(scipy.stats.kstest(u[:, i, j, c], "uniform").pvalue
                         for i in range(4) for j in range(4) for c in range(3))
    assert worst_position > 1e-4  # 48 tests at this level: a false alarm has probability < 0.5%


def test_fitted_model_samples_the_training_distribution():
    """Train a tiny model on 4x4 images whose pixels are independently 0 (p = 0.7) or 255;
    its samples must reproduce those frequencies."""
    # nr_resnet=0 keeps only the up path's gated layers: a small graph that traces quickly.
    config = PixelCNNConfig.from_scale("tiny", (4, 4, 1), likelihood="categorical", nr_resnet=0)
    rng = np.random.default_rng(0)
    images = np.where(rng.uniform(size=(1024, 4, 4, 1)) < 0.7, 0.0, 255.0).astype("float32")
    model = initialised_model(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=likelihoods.NegativeLogLikelihood("categorical", 1),
                  jit_compile=False)  # XLA compilation would cost more than these few steps
    history = model.fit({"x": images}, images, batch_size=64, epochs=3, verbose=0)
    entropy_nats = 16 * -(0.7 * np.log(0.7) + 0.3 * np.log(0.3))
    assert history.history["loss"][-1] < entropy_nats + 0.5  # close to the true entropy (9.77 nats)

    samples = sample(model, config, num_samples=1000, seed=0, batch_size=1000, jit=False)[0]
    assert np.isin(samples, [0, 255]).mean() > 0.98
    zero_rate = (samples == 0).mean()
    standard_error = np.sqrt(0.7 * 0.3 / samples.size)
    assert abs(zero_rate - 0.7) < 4 * standard_error + 0.02  # sampling noise + fitting error
    with pytest.raises(InvkerasError, match="unconditional"):
        sample(model, h=np.zeros((1, 3), "float32"))


def test_bad_arguments_raise_invkeras_error(rgb_model):
    config, model = rgb_model
    with pytest.raises(InvkerasError, match="h has shape"):
        sample(model, config, h=np.zeros((2, 4), "float32"))
    with pytest.raises(InvkerasError, match="pass h"):
        sample(model, config, h=None)
    with pytest.raises(InvkerasError, match="unknown method"):
        sample(model, config, h=np.zeros((1, 3), "float32"), method="fast")
    with pytest.raises(InvkerasError, match="does not match"):
        sample(model, PixelCNNConfig.from_scale("tiny", (4, 4, 3)), h=np.zeros((1, 3), "float32"))
