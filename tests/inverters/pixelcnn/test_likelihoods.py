"""Likelihoods: normalisation, agreement with independent TFP constructions, sampling."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

from invkeras.inverters.pixelcnn import likelihoods
from invkeras.errors import InvkerasError

tfd = tfp.distributions
K = 4  # mixture components in these tests


def mixture_params(rng, lead, channels, extreme=False):
    """Random logistic-mixture params [*lead, P]; `extreme` pushes every part to its limits."""
    parts = [
        rng.normal(0, 20 if extreme else 1, (*lead, K)),  # mixture logits
        rng.normal(0, 3 if extreme else 0.5, (*lead, channels * K)),  # means (may leave [-1, 1])
        rng.uniform(-7, 7, (*lead, channels * K)) if extreme else rng.uniform(-4, 0, (*lead, channels * K)),
        rng.normal(0, 3 if extreme else 1, (*lead, channels * (channels - 1) // 2 * K)),  # coupling (pre-tanh)
    ]
    return np.concatenate(parts, axis=-1).astype("float32")


def random_pixels(rng, shape):
    x = rng.integers(0, 256, shape)
    x.flat[:: 5] = 0  # make sure both edge bins are exercised
    x.flat[1 :: 5] = 255
    return x.astype("float32")


def reference_mixture_joint(params, x, channels, upto):
    """log P(x_0..x_{upto-1}) per pixel from TFP pieces, in float64, written independently:
    coupled locs by hand, then MixtureSameFamily over Independent(QuantizedDistribution(Logistic))
    on the 0..255 scale. Bin of v is (v - 0.5, v + 0.5], hence the logistic shifted by -0.5."""
    p = params.astype("float64")
    logits = p[..., :K]
    means = p[..., K : K + channels * K].reshape(*p.shape[:-1], channels, K)
    log_scales = p[..., K + channels * K : K + 2 * channels * K].reshape(*p.shape[:-1], channels, K)
    log_scales = np.clip(log_scales, likelihoods.MIN_LOG_SCALE, likelihoods.MAX_LOG_SCALE)
    coeffs = np.tanh(p[..., K + 2 * channels * K :]).reshape(*p.shape[:-1], -1, K)
    unit = x.astype("float64") / 127.5 - 1.0
    locs = means.copy()
    pairs = [(c, lower) for c in range(channels) for lower in range(c)]  # (1,0), (2,0), (2,1)
    for index, (c, lower) in enumerate(pairs):
        locs[..., c, :] += coeffs[..., index, :] * unit[..., lower : lower + 1]
    loc_pixels = np.moveaxis((locs + 1.0) * 127.5, -2, -1)[..., :upto]  # [..., K, upto]
    scale_pixels = np.moveaxis(np.exp(log_scales) * 127.5, -2, -1)[..., :upto]
    per_channel = tfd.QuantizedDistribution(tfd.Logistic(loc_pixels - 0.5, scale_pixels), low=0.0, high=255.0)
    mixture = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), tfd.Independent(per_channel, 1))
    return mixture.log_prob(x.astype("float64")[..., :upto]).numpy()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
def test_logistic_mixture_matches_tfp_quantized_mixture(channels, extreme):
    rng = np.random.default_rng(channels + 10 * extreme)
    params = mixture_params(rng, (3, 4, 5), channels, extreme)
    x = random_pixels(rng, (3, 4, 5, channels))
    ours = np.asarray(likelihoods.log_prob_per_subpixel(params, x, "logistic_mixture", channels)).astype("float64")
    # Per-channel conditionals: log P(x_c | x_<c) = log P(x_<=c) - log P(x_<c).
    joints = np.stack([reference_mixture_joint(params, x, channels, c + 1) for c in range(channels)], axis=-1)
    reference = np.diff(joints, axis=-1, prepend=0.0)
    assert np.isfinite(ours).all()
    finite = np.isfinite(reference)  # TFP's float64 CDF differences can underflow far in the tails
    assert finite.mean() > 0.9
    np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(likelihoods.log_prob_per_image(params, x, "logistic_mixture", channels)),
        ours.sum(axis=(1, 2, 3)), rtol=1e-6, atol=1e-3)


def test_categorical_matches_tfd_categorical_and_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, (2, 3, 4, 3, 256)).astype("float32")
    x = random_pixels(rng, (2, 3, 4, 3))
    ours = np.asarray(likelihoods.log_prob_per_subpixel(logits, x, "categorical", 3))
    reference = tfd.Categorical(logits=tf.constant(logits, tf.float64)).log_prob(x.astype("int32")).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    by_hand = np.take_along_axis(scipy.special.log_softmax(logits.astype("float64"), axis=-1),
                                 x.astype("int64")[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-5)
    nll = likelihoods.conditional_nll_nats(logits, x, "categorical", 3)
    np.testing.assert_allclose(float(nll), -by_hand.sum(axis=(1, 2, 3)).mean(), rtol=1e-5)


@pytest.mark.parametrize("likelihood,channels", [("categorical", 1), ("categorical", 3),
                                                 ("logistic_mixture", 1), ("logistic_mixture", 3)])
@pytest.mark.parametrize("extreme", [False, True])
def test_pixel_distributions_sum_to_one_and_match_log_prob(likelihood, channels, extreme):
    rng = np.random.default_rng(3)
    if likelihood == "categorical":
        params = rng.normal(0, 100 if extreme else 1, (2, 3, 3, channels, 256)).astype("float32")
    else:
        params = mixture_params(rng, (2, 3, 3), channels, extreme)
    x = random_pixels(rng, (2, 3, 3, channels))
    probs = np.asarray(likelihoods.pixel_probabilities(params, x, likelihood, channels)).astype("float64")
    assert probs.shape == (2, 3, 3, channels, 256)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-4)
    # The per-sub-pixel log-prob is the log of that distribution at the observed value.
    log_prob = np.asarray(likelihoods.log_prob_per_subpixel(params, x, likelihood, channels))
    at_x = np.take_along_axis(probs, x.astype("int64")[..., None], axis=-1)[..., 0]
    visible = at_x > 1e-30
    np.testing.assert_allclose(np.exp(log_prob[visible]), at_x[visible], rtol=1e-3, atol=1e-6)


def test_edge_bins_take_the_tails():
    # One component, mean far below the range: nearly all mass on 0; far above: on 255.
    for mean, edge in [(-3.0, 0), (3.0, 255)]:
        params = np.array([[[[0.0, mean, -2.0]]]], dtype="float32")  # K=1, C=1: logit, mean, log-scale
        probs = np.asarray(likelihoods.pixel_probabilities(params, None, "logistic_mixture", 1))[0, 0, 0, 0]
        assert probs[edge] > 0.99
        x = np.full((1, 1, 1, 1), edge, dtype="float32")
        assert float(likelihoods.log_prob_per_subpixel(params, x, "logistic_mixture", 1)[0, 0, 0, 0]) > -0.01


def test_bits_per_dim_conversion():
    assert likelihoods.nats_to_bits_per_dim(784 * math.log(2) * 8, (28, 28, 1)) == pytest.approx(8.0)
    assert likelihoods.nats_to_bits_per_dim(3072 * math.log(2), (32, 32, 3)) == pytest.approx(1.0)
    # A uniform categorical costs exactly 8 bits per sub-pixel.
    logits = np.zeros((2, 4, 4, 3, 256), "float32")
    nats = likelihoods.conditional_nll_nats(logits, np.zeros((2, 4, 4, 3), "float32"), "categorical", 3)
    assert float(likelihoods.nats_to_bits_per_dim(nats, (4, 4, 3))) == pytest.approx(8.0, rel=1e-6)


def test_param_counts_and_bad_names():
    assert likelihoods.num_params("logistic_mixture", 3, 10) == 100  # PixelCNN++'s 10 * (1 + 3 * 3)
    assert likelihoods.num_params("logistic_mixture", 1, 10) == 30
    assert likelihoods.num_params("categorical", 1) == 256
    with pytest.raises(InvkerasError, match="unknown likelihood 'gaussian'"):
        likelihoods.log_prob_per_subpixel(np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 1)), "gaussian", 1)
    with pytest.raises(InvkerasError, match="not a multiple"):
        likelihoods.log_prob_per_subpixel(np.zeros((1, 1, 1, 7), "float32"), np.zeros((1, 1, 1, 1)), "logistic_mixture", 1)


def chi_square_pvalue(values, probs, min_expected=5.0):
    """Chi-square goodness of fit of integer `values` to `probs` over 0..255, merging
    consecutive values until each bin expects at least `min_expected` counts."""
    counts = np.bincount(values, minlength=256).astype("float64")
    expected = probs * len(values)
    bins_observed, bins_expected, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(counts, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= min_expected:
            bins_observed.append(acc_o)
            bins_expected.append(acc_e)
            acc_o = acc_e = 0.0
    bins_observed[-1] += acc_o
    bins_expected[-1] += acc_e
    return scipy.stats.chisquare(bins_observed, np.array(bins_expected) * sum(bins_observed) / sum(bins_expected)).pvalue


def randomized_pit(probs, values, rng):
    """u = F(v - 1) + U * P(v): exactly Uniform(0, 1) when v ~ probs."""
    cdf_below = np.take_along_axis(np.cumsum(probs, axis=-1) - probs, values[..., None], axis=-1)[..., 0]
    p_value = np.take_along_axis(probs, values[..., None], axis=-1)[..., 0]
    return cdf_below + rng.uniform(size=values.shape) * p_value


@pytest.mark.parametrize("likelihood,channels,extreme", [("categorical", 1, False), ("logistic_mixture", 1, False),
                                                         ("logistic_mixture", 3, False), ("logistic_mixture", 3, True)])
def test_sample_from_params_follows_pixel_probabilities(likelihood, channels, extreme):
    """Per channel, given the drawn lower channels, the draws follow the likelihood's own
    distribution; the extreme case (wide and narrow logistics, means past the range, strong
    coupling) puts mass in the edge bins and tails, where colour-noise artefacts would come from."""
    rng = np.random.default_rng(7)
    n = 20000
    if likelihood == "categorical":
        one = rng.normal(0, 2, (1, 1, 1, channels, 256)).astype("float32")
    else:
        one = mixture_params(rng, (1, 1, 1), channels, extreme=extreme)
        if not extreme:
            one[..., K : K + channels * K] = rng.uniform(-0.8, 0.8, channels * K)  # keep mass inside the range
    params = np.repeat(one, n, axis=0)
    values = np.asarray(likelihoods.sample_from_params(params, likelihoods.make_seed(11), likelihood, channels))
    assert values.shape == (n, 1, 1, channels) and values.min() >= 0 and values.max() <= 255
    # Channel 0 has a fixed distribution: chi-square against it.
    probs = np.asarray(likelihoods.pixel_probabilities(params[:1], values[:1].astype("float32"), likelihood, channels))
    assert chi_square_pvalue(values[:, 0, 0, 0], probs[0, 0, 0, 0].astype("float64")) > 1e-3
    # Every channel given the drawn lower channels: the randomized PIT must be uniform.
    all_probs = np.asarray(likelihoods.pixel_probabilities(params, values.astype("float32"), likelihood, channels))
    u = randomized_pit(all_probs.astype("float64"), values.astype("int64"), rng)
    for c in range(channels):
        assert scipy.stats.kstest(u[..., c].ravel(), "uniform").pvalue > 1e-3


def test_a_categorical_draw_follows_the_softmax_and_never_takes_an_impossible_category():
    """The inverse-CDF draw: frequencies match softmax(logits), a rare category (0.1%) included,
    and a category of probability 0, first, inner or last, is never drawn."""
    probs = np.array([0.0, 0.2, 0.0, 0.001, 0.499, 0.3, 0.0])
    with np.errstate(divide="ignore"):
        logits = np.log(probs).astype("float32") + 3.0  # a shift the softmax ignores
    n = 200_000
    values = np.asarray(likelihoods.draw_categorical(np.repeat(logits[None], n, axis=0), likelihoods.make_seed(3)))
    assert values.shape == (n,) and set(np.unique(values)) <= {1, 3, 4, 5}
    assert chi_square_pvalue(values, np.pad(probs, (0, 256 - len(probs)))) > 1e-3
    other = np.asarray(likelihoods.draw_categorical(np.repeat(logits[None], n, axis=0), likelihoods.make_seed(4)))
    assert (values != other).any()


def test_sampling_is_seeded():
    rng = np.random.default_rng(0)
    params = mixture_params(rng, (8, 3, 3), 3)
    a = np.asarray(likelihoods.sample_from_params(params, likelihoods.make_seed(5), "logistic_mixture", 3))
    b = np.asarray(likelihoods.sample_from_params(params, likelihoods.make_seed(5), "logistic_mixture", 3))
    c = np.asarray(likelihoods.sample_from_params(params, likelihoods.make_seed(6), "logistic_mixture", 3))
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize("likelihood,channels", [("categorical", 1), ("logistic_mixture", 3)])
def test_a_temperature_draws_exactly_from_the_sharpened_params(likelihood, channels):
    """At temperature T the draws are, seed for seed, those of the model whose component (or
    categorical) logits are divided by T and whose log-scales are raised by log T; at T = 1 they
    are the model's own."""
    rng = np.random.default_rng(3)
    seed = likelihoods.make_seed(9)
    if likelihood == "categorical":
        params = rng.normal(0, 2, (64, 3, 3, channels, 256)).astype("float32")
        sharpened = params / 0.7
    else:
        params = mixture_params(rng, (64, 3, 3), channels)
        sharpened = params.copy()
        sharpened[..., :K] /= 0.7
        sharpened[..., K + channels * K : K + 2 * channels * K] += math.log(0.7)
    tempered = np.asarray(likelihoods.sample_from_params(params, seed, likelihood, channels, temperature=0.7))
    by_hand = np.asarray(likelihoods.sample_from_params(sharpened, seed, likelihood, channels))
    model = np.asarray(likelihoods.sample_from_params(params, seed, likelihood, channels))
    np.testing.assert_array_equal(tempered, by_hand)
    np.testing.assert_array_equal(np.asarray(likelihoods.sample_from_params(params, seed, likelihood, channels, 1.0)),
                                  model)
    assert (tempered != model).any()


def test_keras_loss_is_the_mean_image_nll():
    import keras

    rng = np.random.default_rng(1)
    params = mixture_params(rng, (3, 2, 2), 3)
    x = random_pixels(rng, (3, 2, 2, 3))
    loss = likelihoods.NegativeLogLikelihood("logistic_mixture", 3)
    expected = float(likelihoods.conditional_nll_nats(params, x, "logistic_mixture", 3))
    assert float(loss(x, params)) == pytest.approx(expected, rel=1e-6)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert float(clone(x, params)) == pytest.approx(expected, rel=1e-6)
