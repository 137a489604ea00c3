"""Kind gan, its parts: network shapes, spectral normalisation, hinge losses, conditioning on h,
the EMA update, and a saved generator that loads back to the same function."""

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.inverters.gan.losses import (discriminator_hinge_loss, ema_decay_at, ema_update, feature_matching_loss,
                                           generator_hinge_loss)
from invkeras.inverters.gan.network import (SNConv2D, SNDense, build_discriminator, build_generator, network_for,
                                            noise, spectral_layers, spectral_normalise)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _inputs(net, n=3, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, *net.h_shape)).astype("float32")
    eps = rng.normal(size=(n, net.noise_dim)).astype("float32")
    return h, eps


@pytest.mark.parametrize("image_shape, h_shape", [
    ((28, 28, 1), (10,)),  # MNIST logits
    ((32, 32, 3), (10,)),  # CIFAR-10 logits
    ((20, 20, 1), (4,)),  # procedural logits
    ((28, 28, 1), (4, 4, 8)),  # a spatial layer: flattened
    ((40, 40, 1), (256,)),  # affNIST fc3: 5 -> 40, three blocks
])
def test_generator_and_discriminator_shapes(image_shape, h_shape):
    net = network_for("tiny", image_shape, h_shape)
    generator, discriminator = build_generator(net), build_discriminator(net)
    h, eps = _inputs(net)
    images = _np(generator({"h": h, "eps": eps}))
    assert images.shape == (3, *image_shape)
    assert images.min() >= 0 and images.max() <= 255
    score, phi = discriminator({"x": images, "h": h})
    assert _np(score).shape == (3, 1) and _np(phi).shape == (3, net.d_channels * 2 ** (net.num_blocks - 1))
    # Every kernel of both networks is spectrally normalised (the batch norm gains are not kernels).
    kernels = {id(layer.kernel) for model in (generator, discriminator) for layer in spectral_layers(model)}
    all_kernels = {id(w) for model in (generator, discriminator) for w in model.trainable_weights if "kernel" in w.path}
    assert kernels == all_kernels and len(kernels) > 10


def test_noise_chunks_cover_eps_and_a_too_small_noise_is_refused():
    net = network_for("tiny", (28, 28, 1), (10,), noise_dim=17)
    chunks = net.noise_chunks()
    assert chunks[0][0] == 0 and chunks[-1][1] == 17 and len(chunks) == net.num_blocks + 1
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    with pytest.raises(InvkerasError, match="--noise-dim 2"):
        network_for("tiny", (28, 28, 1), (10,), noise_dim=2).noise_chunks()


def _top_singular_value(matrix):
    return float(np.linalg.svd(np.asarray(matrix, np.float64).reshape(-1, matrix.shape[-1]), compute_uv=False)[0])


@pytest.mark.parametrize("layer, shape", [(SNDense(24), (5, 40)), (SNConv2D(12, 3), (2, 6, 6, 7))])
def test_spectral_norm_keeps_the_top_singular_value_near_one(layer, shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer(x)  # build
    raw = np.random.default_rng(1).normal(size=layer.kernel.shape).astype("float32") * 3.0
    layer.kernel.assign(raw)
    # The negative control: the weight as stored is far from norm 1.
    assert _top_singular_value(raw) > 5.0
    first = _top_singular_value(_np(layer.normalised_kernel()))
    for _ in range(30):  # each training call is one power iteration
        layer(x, training=True)
    normalised = _np(layer.normalised_kernel())
    assert _top_singular_value(normalised) == pytest.approx(1.0, abs=1e-3)
    assert abs(first - 1.0) > abs(_top_singular_value(normalised) - 1.0)  # the iterations are what got it there
    # An inference call uses u without advancing it, and applies the normalised kernel.
    u = _np(layer.sn_u).copy()
    out = _np(layer(x, training=False))
    np.testing.assert_array_equal(_np(layer.sn_u), u)
    if isinstance(layer, SNDense):
        np.testing.assert_allclose(out, x @ normalised + _np(layer.bias), rtol=1e-4, atol=1e-4)


def test_spectral_normalise_estimate_and_zero_matrix():
    matrix = np.diag([4.0, 2.0, 1.0]).astype("float32")
    normalised, u, sigma = spectral_normalise(matrix, np.ones(3, "float32"), iterations=50)
    assert float(_np(sigma)) == pytest.approx(4.0, rel=1e-4)
    np.testing.assert_allclose(_np(normalised), matrix / 4.0, rtol=1e-4)
    zero, _, _ = spectral_normalise(np.zeros((3, 2), "float32"), np.ones(2, "float32"))
    assert np.all(_np(zero) == 0)  # stays zero, no 0/0


def test_hinge_losses_on_hand_computed_cases():
    real = np.array([2.0, 0.5, -1.0], "float32")  # relu(1 - real) = 0, 0.5, 2   -> mean 5/6
    fake = np.array([-3.0, 0.0, 1.0], "float32")  # relu(1 + fake) = 0, 1, 2     -> mean 1
    assert float(_np(discriminator_hinge_loss(real, fake))) == pytest.approx(5 / 6 + 1)
    assert float(_np(discriminator_hinge_loss(np.array([1.0, 5.0]), np.array([-1.0, -9.0])))) == 0.0  # past the margins
    assert float(_np(generator_hinge_loss(fake))) == pytest.approx(2 / 3)
    phi_real, phi_fake = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [2.0, 2.0]])
    assert float(_np(feature_matching_loss(phi_real, phi_fake))) == pytest.approx((1.0 + 4.0) / 2)


def test_the_generator_follows_h_and_a_zero_projection_makes_it_ignore_h():
    net = network_for("tiny", (20, 20, 1), (4,))
    generator = build_generator(net)
    h, eps = _inputs(net, n=4)
    other_h = np.random.default_rng(5).normal(size=h.shape).astype("float32")
    base = _np(generator({"h": h, "eps": eps}))
    moved = _np(generator({"h": other_h, "eps": eps}))
    assert np.abs(base - moved).mean() > 0.1  # h changes the image (same eps)
    embed = generator.get_layer("h_embed")
    embed.kernel.assign(np.zeros(embed.kernel.shape, "float32"))
    np.testing.assert_array_equal(_np(generator({"h": h, "eps": eps})), _np(generator({"h": other_h, "eps": eps})))
    # ... while eps still matters: the zeroed model is not simply constant.
    assert np.abs(_np(generator({"h": h, "eps": eps})) - _np(generator({"h": h, "eps": eps[::-1]}))).mean() > 0.1


def test_the_discriminator_projection_reads_h():
    net = network_for("tiny", (20, 20, 1), (4,))
    discriminator = build_discriminator(net)
    h, _ = _inputs(net, n=4)
    x = np.random.default_rng(2).uniform(0, 255, size=(4, 20, 20, 1)).astype("float32")
    before = _np(discriminator({"x": x, "h": h})[0])
    assert np.abs(before - _np(discriminator({"x": x, "h": h[::-1]})[0])).max() > 1e-4
    projection = discriminator.get_layer("h_projection")
    projection.kernel.assign(np.zeros(projection.kernel.shape, "float32"))
    np.testing.assert_allclose(_np(discriminator({"x": x, "h": h})[0]), _np(discriminator({"x": x, "h": h[::-1]})[0]))


def test_ema_update_formula():
    average = keras.Variable(np.array([1.0, 2.0], "float32"))
    value = keras.Variable(np.array([3.0, -2.0], "float32"))
    ema_update([average], [value], 0.9)
    np.testing.assert_allclose(_np(average), [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2], rtol=1e-6)
    # The warm-up: (1 + t) / (10 + t) until it reaches the configured decay.
    assert float(_np(ema_decay_at(0, 0.999))) == pytest.approx(0.1)
    assert float(_np(ema_decay_at(90, 0.999))) == pytest.approx(91 / 100)
    assert float(_np(ema_decay_at(10**6, 0.999))) == pytest.approx(0.999)


def test_noise_is_a_function_of_the_seed():
    a, b, c = _np(noise(5, 3, 7)), _np(noise(5, 3, 7)), _np(noise(5, 3, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == (5, 3)
    assert abs(float(_np(noise(4000, 8, 1)).std()) - 1.0) < 0.03


def test_a_saved_generator_loads_back_to_the_same_function(tmp_path):
    net = network_for("tiny", (28, 28, 1), (10,))
    mean, variance = np.linspace(-1, 1, 10).astype("float32"), np.linspace(0.5, 2, 10).astype("float32")
    generator = build_generator(net, h_mean=mean, h_variance=variance)
    h, eps = _inputs(net)
    generator({"h": h, "eps": eps}, training=True)  # move the batch-norm statistics and u off their start
    generator.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(_np(loaded({"h": h, "eps": eps})), _np(generator({"h": h, "eps": eps})), atol=1e-4)
