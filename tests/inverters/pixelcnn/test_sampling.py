"""The compiled sampler: determinism, shapes, exactness of the cached row steps, and that
samples follow the model's own likelihood."""

import keras
import numpy as np
import pytest
import scipy.stats

from invkeras.inverters.pixelcnn import likelihoods
from invkeras.errors import InvkerasError
from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn, model_inputs
from invkeras.inverters.pixelcnn.sampling import macs_per_image, sample, teacher_forced_params
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


ROW_STEP_CASES = [  # (conditioning, h_shape, overrides): every way h can enter
    ("spatial", (4, 4, 2), {}),
    ("vector", (6,), {"vector_conditioning": "deconv"}),
    ("vector", (6,), {"vector_conditioning": "global", "standardise_h": False}),
]


@pytest.mark.parametrize("conditioning,h_shape,overrides", ROW_STEP_CASES)
def test_cached_row_steps_reproduce_the_full_forward_pass(conditioning, h_shape, overrides):
    """The sampler's loop, fed the image's own pixels one at a time, must see at every pixel
    exactly the params of one full forward pass: the row caches are never stale. Odd sizes
    (7 -> 4 -> 2 rows, 5 -> 3 -> 2 columns), a spatial h and the deconvolved maps of a vector
    h exercise every crop, resize and row slice."""
    config = PixelCNNConfig.from_scale("tiny", (7, 5, 3), likelihood="logistic_mixture", conditioning=conditioning,
                                       h_shape=h_shape, num_mixtures=3, **overrides)
    model = initialised_model(config, seed=1)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, *config.image_shape)).astype("float32")
    h = rng.normal(3.0, 2.0, size=(2, *config.h_shape)).astype("float32")
    if model.h_standardise is not None:  # non-trivial statistics, as after training
        model.h_standardise.set_statistics(rng.normal(3.0, 2.0, size=(50, *config.h_shape)))
    full = np.asarray(model({"x": x, "h": h}, training=False))
    # Without XLA to keep the test fast: the row-step maths is the same either way.
    cached = np.asarray(teacher_forced_params(model, config, x, h, jit=False))
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


PIXEL_STEP_CASES = [  # (image shape, likelihood, conditioning, h_shape, overrides)
    ((7, 5, 3), "logistic_mixture", "spatial", (4, 4, 2), {}),
    ((7, 5, 1), "categorical", "vector", (6,), {"vector_conditioning": "deconv", "nr_resnet": 2}),
    ((5, 7, 1), "logistic_mixture", "vector", (6,), {"vector_conditioning": "global", "standardise_h": False}),
    ((9, 6, 3), "categorical", "vector", (6,), {"vector_conditioning": "global"}),
    ((6, 9, 1), "categorical", "none", None, {}),
]


@pytest.mark.parametrize("shape,likelihood,conditioning,h_shape,overrides", PIXEL_STEP_CASES)
def test_pixel_steps_reproduce_the_full_forward_pass(shape, likelihood, conditioning, h_shape, overrides):
    """The per-pixel sampler computes each ul position once, at the pixel where it becomes
    final (low resolutions on every 2nd / 4th pixel of every 2nd / 4th row) and reads it
    from caches afterwards: fed the image's own pixels, it must see at every pixel the params
    of one full forward pass. Odd sizes (7 -> 4 -> 2, 5 -> 3 -> 2, 9 -> 5 -> 3) put the last
    low-resolution column and row on partial 2x2 blocks."""
    config = PixelCNNConfig.from_scale("tiny", shape, likelihood=likelihood, conditioning=conditioning,
                                       h_shape=h_shape, num_mixtures=3, **overrides)
    model = initialised_model(config, seed=1)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, *config.image_shape)).astype("float32")
    h = None
    if conditioning != "none":
        h = rng.normal(3.0, 2.0, size=(2, *config.h_shape)).astype("float32")
        if model.h_standardise is not None:
            model.h_standardise.set_statistics(rng.normal(3.0, 2.0, size=(50, *config.h_shape)))
    full = np.asarray(model(model_inputs(config, x, h), training=False))
    pixel = np.asarray(teacher_forced_params(model, config, x, h, method="pixel", jit=False))
    np.testing.assert_allclose(pixel, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


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


def test_batches_drawn_side_by_side_equal_batches_drawn_one_at_a_time(rgb_model):
    """Each batch has its own seed, so drawing several batches at once on threads changes
    nothing: seven batches (the last one padded) on one thread and on three are identical,
    and so is a second threaded call, which no longer compiles first."""
    config, model = rgb_model
    h = np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
    one = sample(model, config, h=h, num_samples=9, seed=11, batch_size=4, threads=1)
    three = sample(model, config, h=h, num_samples=9, seed=11, batch_size=4, threads=3)
    again = sample(model, config, h=h, num_samples=9, seed=11, batch_size=4, threads=3)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_array_equal(one, again)
    assert len(np.unique(one.reshape(27, -1), axis=0)) == 27  # every batch drew its own images


def test_sampling_uses_a_thread_per_core_on_a_cpu():
    from invkeras.workers import available_cores
    from invkeras.inverters.pixelcnn.sampling import default_threads

    assert default_threads() == available_cores()


def test_cached_pixel_and_full_samplers_draw_the_same_images(rgb_model):
    """Same seed, same random stream: the cached row steps and the reference (one full
    forward pass per pixel) must pick identical pixels. Without XLA, whose random bits
    differ from TensorFlow's kernels."""
    config, model = rgb_model
    h = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")
    cached = sample(model, config, h=h, num_samples=3, seed=7, method="cached", jit=False)
    pixel = sample(model, config, h=h, num_samples=3, seed=7, method="pixel", jit=False)
    full = sample(model, config, h=h, num_samples=3, seed=7, method="full", jit=False)
    np.testing.assert_array_equal(cached, full)
    np.testing.assert_array_equal(pixel, full)


def test_pixel_and_full_samplers_draw_the_same_grey_images():
    """As above for a grey categorical model with a spatial h on an odd size, with XLA (both
    methods draw from the same XLA random stream)."""
    config = PixelCNNConfig.from_scale("tiny", (5, 7, 1), conditioning="spatial", h_shape=(3, 3, 2))
    model = initialised_model(config, seed=3)
    h = np.random.default_rng(4).normal(size=(2, 3, 3, 2)).astype("float32")
    pixel = sample(model, config, h=h, num_samples=2, seed=5, method="pixel")
    full = sample(model, config, h=h, num_samples=2, seed=5, method="full")
    assert len(np.unique(pixel)) > 5
    np.testing.assert_array_equal(pixel, full)


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
    with pytest.raises(InvkerasError, match="threads must be >= 1"):
        sample(model, config, h=np.zeros((1, 3), "float32"), threads=0)
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(InvkerasError, match="temperature must be a positive number"):
            sample(model, config, h=np.zeros((1, 3), "float32"), temperature=temperature)


def test_a_temperature_of_one_draws_the_models_own_samples_and_a_lower_one_others(rgb_model):
    config, model = rgb_model
    h = np.random.default_rng(2).normal(size=(2, 3)).astype("float32")
    own = sample(model, config, h=h, num_samples=8, seed=5, batch_size=BATCH)
    np.testing.assert_array_equal(sample(model, config, h=h, num_samples=8, seed=5, batch_size=BATCH,
                                         temperature=1.0), own)
    sharpened = sample(model, config, h=h, num_samples=8, seed=5, batch_size=BATCH, temperature=0.5)
    assert sharpened.shape == own.shape and (sharpened != own).mean() > 0.2


@pytest.mark.parametrize("conditioning,h_shape,overrides", [
    ("vector", (10,), {}),  # small: deconv maps
    ("vector", (10,), {"vector_conditioning": "global"}),
    ("spatial", (7, 7, 5), {}),
])
def test_macs_per_image_counts_the_forward_pass(monkeypatch, conditioning, h_shape, overrides):
    """The analytic count equals a count of every convolution, 1x1 layer and h projection
    actually applied in one forward pass (positions x kernel size; a transposed convolution
    per input position), and the per-pixel sampler costs about one forward pass."""
    from invkeras.inverters.pixelcnn import weight_norm

    config = PixelCNNConfig.from_scale("small", (9, 7, 3), likelihood="logistic_mixture", conditioning=conditioning,
                                       h_shape=h_shape, num_mixtures=3, **overrides)
    keras.utils.set_random_seed(0)
    model = build_pixelcnn(config)
    counted = []

    def counting(cls, name, positions_of):
        original = getattr(cls, name)

        def wrapped(self, inputs, *args, **kwargs):
            out = original(self, inputs, *args, **kwargs)
            counted.append(positions_of(inputs, out) * int(np.prod(self.v.shape)))
            return out
        monkeypatch.setattr(cls, name, wrapped)

    counting(weight_norm.WNConv2D, "convolve", lambda x, out: int(np.prod(out.shape[:-1])))
    counting(weight_norm.WNConv2DTranspose, "call", lambda x, out: int(np.prod(x.shape[:-1])))
    counting(weight_norm.WNDense, "call", lambda x, out: int(np.prod(x.shape[:-1])))
    h = np.zeros((1, *config.h_shape), "float32")
    maps = model.conditioning_maps(h)
    projections = config.spatial_h_maps * sum(  # of h maps: one per gated layer, at its resolution
        int(np.prod(config.resolutions[level])) * int(maps[level].shape[-1]) * 2 * config.filters * len(layers)
        for level in range(3) for layers in (model.down_u[level], model.down_ul[level],
                                             model.up_u[2 - level], model.up_ul[2 - level]))
    model({"x": np.zeros((1, *config.image_shape), "float32"), "h": h}, training=False)
    assert sum(counted) + projections == macs_per_image(config)
    forward = macs_per_image(config)
    assert macs_per_image(config, "full") == 9 * 7 * forward
    assert macs_per_image(config, "pixel") < 1.5 * forward < macs_per_image(config, "cached")
