"""Per-pixel likelihoods of the PixelCNN++ inversion model, built from TFP distributions.

Two likelihoods, both over 8-bit sub-pixel values 0..255:

* "categorical": a 256-way softmax per sub-pixel; params are logits [B, H, W, C, 256].
  Channels of one pixel are conditionally independent given the pixels before it.
* "logistic_mixture": the discretised mixture of logistics of PixelCNN++ (Salimans et al.,
  2017). Params are [B, H, W, P] with P = K * (1 + 2C + C(C-1)/2), laid out as
  [mixture logits (K) | means (C*K) | log-scales (C*K) | coupling coefficients (C(C-1)/2*K)].
  All channels of a pixel share the mixture component; given it, channel c is a discretised
  logistic whose mean is  mean_c + sum_{c'<c} tanh(coeff_{c,c'}) * x_{c'}  (x in [-1, 1]).
  For RGB this is PixelCNN++'s channel-autoregressive model; coefficients are ordered
  (1,0), (2,0), (2,1). Each value v owns the bin [v - 0.5, v + 0.5] on the 0..255 scale;
  v = 0 also takes all mass below and v = 255 all mass above.

This is the one module that chooses the TFP substrate (`tensorflow_probability` for the
TensorFlow backend, `tensorflow_probability.substrates.jax` for JAX), so everything else
stays backend-neutral. TFP distributions are used on tensors only (never as Keras layers).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import keras
from keras import ops

from invkeras.errors import InvkerasError

LIKELIHOODS = ("categorical", "logistic_mixture")
NUM_VALUES = 256
# PixelCNN++ clamps log-scales below at -7; the upper clamp keeps exp() finite.
MIN_LOG_SCALE, MAX_LOG_SCALE = -7.0, 7.0
_HALF_BIN = 1.0 / 255.0  # half a bin on the [-1, 1] scale


@functools.cache
def _tfp_for(backend: str):
    if backend == "jax":
        import tensorflow_probability.substrates.jax as tfp
    else:
        import tensorflow_probability as tfp
    return tfp


def tfp_module():
    """The TFP substrate that matches the active Keras backend (imported on first use)."""
    return _tfp_for(keras.backend.backend())


def _tfd():
    return tfp_module().distributions


def check_likelihood(likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise InvkerasError(f"unknown likelihood '{likelihood}'; choose one of {', '.join(LIKELIHOODS)}")
    return likelihood


def _params_per_mixture(num_channels: int) -> int:
    return 1 + 2 * num_channels + num_channels * (num_channels - 1) // 2


def num_params(likelihood: str, num_channels: int, num_mixtures: int = 10) -> int:
    """Number of output channels the network needs per pixel (before any reshape)."""
    check_likelihood(likelihood)
    if likelihood == "categorical":
        return num_channels * NUM_VALUES
    return num_mixtures * _params_per_mixture(num_channels)


def params_shape(likelihood: str, image_shape: Sequence[int], num_mixtures: int = 10) -> tuple[int, ...]:
    """Per-image shape of the params tensor: (H, W, C, 256) or (H, W, P)."""
    height, width, channels = image_shape
    if check_likelihood(likelihood) == "categorical":
        return (height, width, channels, NUM_VALUES)
    return (height, width, num_params(likelihood, channels, num_mixtures))


# --- seeds ---------------------------------------------------------------------------


def make_seed(seed: int):
    """A stateless seed for TFP sampling from a Python int."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.random.PRNGKey(int(seed))
    return ops.convert_to_tensor([0, int(seed) & 0x7FFFFFFF], dtype="int32")


def split_seed(seed, n: int = 2):
    """`n` independent stateless seeds derived from `seed` (usable inside compiled loops)."""
    return tfp_module().random.split_seed(seed, n=n)


# --- discretised logistic mixture ----------------------------------------------------


def _split_mixture_params(params, num_channels: int):
    """Slice [.., P] mixture params into logits [.., K], means and log-scales [.., C, K],
    and tanh'd coupling coefficients [.., C(C-1)/2, K]."""
    per_mix = _params_per_mixture(num_channels)
    total = params.shape[-1]
    if total is None or total % per_mix:
        raise InvkerasError(
            f"logistic_mixture params: last axis {total} is not a multiple of {per_mix} for {num_channels} channel(s)"
        )
    k, c = total // per_mix, num_channels
    lead = tuple(ops.shape(params)[:-1])
    logits = params[..., :k]
    means = ops.reshape(params[..., k : k + c * k], (*lead, c, k))
    log_scales = ops.clip(ops.reshape(params[..., k + c * k : k + 2 * c * k], (*lead, c, k)), MIN_LOG_SCALE, MAX_LOG_SCALE)
    coeffs = ops.tanh(ops.reshape(params[..., k + 2 * c * k :], (*lead, c * (c - 1) // 2, k)))
    return logits, means, log_scales, coeffs


def _coupled_means(means, coeffs, x_scaled, num_channels: int):
    """Channel means after the autoregressive coupling on lower channels.

    means [.., C, K]; coeffs [.., C(C-1)/2, K]; x_scaled [.., C] in [-1, 1]. Returns [.., C, K].
    """
    coupled = [means[..., 0, :]]
    index = 0
    for c in range(1, num_channels):
        mean_c = means[..., c, :]
        for lower in range(c):
            mean_c = mean_c + coeffs[..., index, :] * x_scaled[..., lower : lower + 1]
            index += 1
        coupled.append(mean_c)
    return ops.stack(coupled, axis=-2)


def _to_unit_scale(x):
    """0..255 -> [-1, 1], the scale of the logistic means (as in PixelCNN++)."""
    return ops.cast(x, "float32") / 127.5 - 1.0


def discretized_logistic_log_prob(x, loc, log_scale):
    """log P(x) for the discretised logistic with edge bins; x in 0..255, loc on [-1, 1].

    Interior bins use the exact identity
        log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)),
    which stays accurate for very narrow or very wide logistics (no mid-bin approximation).
    """
    tfp = tfp_module()
    x = ops.cast(x, "float32")
    centred = _to_unit_scale(x)
    scale = ops.exp(log_scale)
    logistic = tfp.distributions.Logistic(loc=loc, scale=scale)
    log_cdf_upper = logistic.log_cdf(centred + _HALF_BIN)
    log_sf_lower = logistic.log_survival_function(centred - _HALF_BIN)
    interior = log_cdf_upper + log_sf_lower + tfp.math.log1mexp(2.0 * _HALF_BIN / scale)
    return ops.where(x < 0.5, log_cdf_upper, ops.where(x > 254.5, log_sf_lower, interior))


def _mixture_component_log_probs(params, x, num_channels: int):
    """log mixture weights [.., K], and per-channel log P(x_c | component, x_<c) [.., C, K]."""
    logits, means, log_scales, coeffs = _split_mixture_params(params, num_channels)
    x = ops.cast(x, "float32")
    locs = _coupled_means(means, coeffs, _to_unit_scale(x), num_channels)
    component_log_probs = discretized_logistic_log_prob(x[..., None], locs, log_scales)
    return ops.log_softmax(logits, axis=-1), component_log_probs, locs, log_scales


def _mixture_log_prob_per_subpixel(params, x, num_channels: int):
    log_weights, component_log_probs, _, _ = _mixture_component_log_probs(params, x, num_channels)
    # log P(x_1..x_c) for c = 1..C; the per-channel conditional is the difference of consecutive terms.
    joint_up_to = ops.logsumexp(log_weights[..., None, :] + ops.cumsum(component_log_probs, axis=-2), axis=-1)
    previous = ops.concatenate([ops.zeros_like(joint_up_to[..., :1]), joint_up_to[..., :-1]], axis=-1)
    return joint_up_to - previous


def _mixture_pixel_log_probabilities(params, x, num_channels: int):
    log_weights, component_log_probs, locs, log_scales = _mixture_component_log_probs(params, x, num_channels)
    # Posterior over components given the lower channels of the given pixel.
    lower_log_probs = ops.cumsum(component_log_probs, axis=-2) - component_log_probs
    log_posterior = ops.log_softmax(log_weights[..., None, :] + lower_log_probs, axis=-1)  # [.., C, K]
    values = ops.arange(NUM_VALUES, dtype="float32")
    grid_log_probs = discretized_logistic_log_prob(values, locs[..., None], log_scales[..., None])  # [.., C, K, 256]
    return ops.logsumexp(log_posterior[..., None] + grid_log_probs, axis=-2)  # [.., C, 256]


# --- public API ----------------------------------------------------------------------


def log_prob_per_subpixel(params, x, likelihood: str, num_channels: int):
    """log P(x[b,i,j,c] | everything before it) in nats, shape [B, H, W, C].

    For the categorical likelihood this is the sub-pixel's own softmax; for the mixture it is
    the channel-autoregressive conditional, so summing over C gives the pixel's joint.
    x holds values 0..255 (float or int).
    """
    check_likelihood(likelihood)
    if likelihood == "categorical":
        return _tfd().Categorical(logits=params).log_prob(ops.cast(x, "int32"))
    return _mixture_log_prob_per_subpixel(params, x, num_channels)


def log_prob_per_image(params, x, likelihood: str, num_channels: int):
    """Total log-likelihood of each image in nats, shape [B]."""
    return ops.sum(log_prob_per_subpixel(params, x, likelihood, num_channels), axis=(1, 2, 3))


def conditional_nll_nats(params, x, likelihood: str, num_channels: int):
    """Mean negative log-likelihood over the batch, in nats per image."""
    return -ops.mean(log_prob_per_image(params, x, likelihood, num_channels))


def nats_to_bits_per_dim(nats, image_shape: Sequence[int]):
    """Convert nats per image to bits per sub-pixel."""
    return nats / (math.prod(image_shape) * math.log(2.0))


def pixel_probabilities(params, x=None, likelihood: str = "categorical", num_channels: int = 1):
    """The full distribution over 0..255 for every sub-pixel, shape [B, H, W, C, 256].

    For the mixture with C > 1, channel c's distribution is conditioned on channels < c of
    the given image `x` (needed then; ignored otherwise). Meant for analysis and tests: the
    mixture path materialises [B, H, W, C, K, 256] floats.
    """
    check_likelihood(likelihood)
    if likelihood == "categorical":
        return ops.softmax(params, axis=-1)
    if x is None:
        if num_channels > 1:
            raise InvkerasError("pixel_probabilities: x is required for the logistic mixture with more than one channel")
        x = ops.zeros((*ops.shape(params)[:-1], num_channels), dtype="float32")
    return ops.exp(_mixture_pixel_log_probabilities(params, x, num_channels))


def draw_categorical(logits, seed):
    """One index per row of `logits` [.., K], k with probability softmax(logits)_k: int32 [..].

    By the inverse CDF: with F_k the cumulative probabilities and v uniform on [0, F_K), the
    draw is the number of k with F_k <= v, which lands on k exactly when F_(k-1) <= v < F_k,
    an interval of length p_k (so a category of probability 0 is never drawn). That takes one
    uniform per draw, where the Gumbel-max draw of `tfd.Categorical` takes one per category: on
    a CPU, the 256 random numbers per sub-pixel of the categorical likelihood cost the sampler
    more than the cumulative sum. Draws resolve probabilities down to float32's spacing near v.
    """
    # Unnormalised: F_k times the softmax's denominator, compared with v times the same.
    cdf = ops.cumsum(ops.exp(logits - ops.max(logits, axis=-1, keepdims=True)), axis=-1)
    u = _tfd().Uniform(low=0.0, high=1.0).sample(ops.shape(cdf)[:-1], seed=seed)
    v = ops.expand_dims(u, -1) * cdf[..., -1:]
    return ops.sum(ops.cast(cdf <= v, "int32"), axis=-1)


def sample_from_params(params, seed, likelihood: str, num_channels: int, temperature: float = 1.0):
    """Draw every sub-pixel from its conditional given params; int32 values 0..255, [B, H, W, C].

    The mixture draws one component per pixel, then the channels in order, each from a
    logistic whose mean is coupled to the already drawn (discretised) lower channels, and
    rounds to the nearest value: exactly the discretised likelihood above, edges included.
    Categories and components are drawn by `draw_categorical`. `seed` comes from `make_seed` /
    `split_seed`.

    `temperature` T below 1 draws from a sharpened model, not the model: the component (or
    categorical) logits are divided by T and the logistic scales multiplied by T, which thins
    the mixture's tails, where a rarely chosen component or a wide logistic puts a value far
    from its neighbours'. T = 1 is the model itself.
    """
    check_likelihood(likelihood)
    tfd = _tfd()
    if likelihood == "categorical":
        return draw_categorical(params if temperature == 1.0 else params / temperature, seed)
    logits, means, log_scales, coeffs = _split_mixture_params(params, num_channels)
    if temperature != 1.0:
        logits, log_scales = logits / temperature, log_scales + math.log(temperature)
    component_seed, *channel_seeds = split_seed(seed, n=1 + num_channels)
    component = draw_categorical(logits, component_seed)
    chosen = ops.one_hot(component, logits.shape[-1], dtype="float32")  # [.., K]

    def pick(values):  # [.., K] -> [..] for the drawn component
        return ops.sum(values * chosen, axis=-1)

    drawn, drawn_scaled, index = [], [], 0
    for c in range(num_channels):
        loc = pick(means[..., c, :])
        for lower in range(c):
            loc = loc + pick(coeffs[..., index, :]) * drawn_scaled[lower]
            index += 1
        y = tfd.Logistic(loc=loc, scale=ops.exp(pick(log_scales[..., c, :]))).sample(seed=channel_seeds[c])
        value = ops.clip(ops.round((y + 1.0) * 127.5), 0.0, 255.0)
        drawn.append(value)
        drawn_scaled.append(_to_unit_scale(value))
    return ops.cast(ops.stack(drawn, axis=-1), "int32")


@keras.saving.register_keras_serializable(package="invkeras")
class NegativeLogLikelihood(keras.losses.Loss):
    """Keras loss for `fit`: y_true = images (0..255), y_pred = the PixelCNN's params.

    Per-image NLL in nats, averaged over the batch by the default reduction.
    """

    def __init__(self, likelihood: str = "categorical", num_channels: int = 1, name: str = "nll_nats", **kwargs):
        super().__init__(name=name, **kwargs)
        self.likelihood = check_likelihood(likelihood)
        self.num_channels = int(num_channels)

    def call(self, y_true, y_pred):
        return -log_prob_per_image(y_pred, y_true, self.likelihood, self.num_channels)

    def get_config(self):
        return {**super().get_config(), "likelihood": self.likelihood, "num_channels": self.num_channels}
