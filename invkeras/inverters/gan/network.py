"""The networks of kind `gan`: a small BigGAN (Brock et al. 2019) conditioned on a layer's
features h instead of a class, as Teterwak et al. (2021) condition theirs on logits.

Generator G(h, eps) -> x in [0, 255]:
    h is standardised (statistics of the training features, inside the model) and flattened,
    then embedded by one linear map e = W h (BigGAN's shared class embedding, here a
    projection of h). eps is split into chunks (BigGAN's hierarchical latent): the first
    goes through a linear layer to a small map; each up-sampling residual block gets
    [e, its own chunk], from which the block's conditional batch norms take their gains
    (1 + linear) and biases (linear). Output: batch norm, ReLU, 3x3 conv, tanh, scaled to
    [0, 255] and cropped to the exact image shape.
Discriminator D(x, h) -> (score, phi):
    residual down-sampling blocks (the first without pre-activation), ReLU, global sum
    pooling to phi(x); score = psi(phi) + <W h, phi> (the projection discriminator of
    Miyato & Koyama 2018).
Every dense and conv kernel is spectrally normalised (Miyato et al. 2018): W / sigma(W), sigma
estimated by one power iteration per training call, its vector u kept as a non-trainable
weight. Everything is written with keras.ops, so it runs under any Keras backend.
"""

from __future__ import annotations

import math
from typing import Literal

import keras
import numpy as np
from keras import ops
from pydantic import BaseModel, ConfigDict, Field

from invkeras.errors import InvkerasError

PACKAGE = "invkeras.gan"
SIGMA_FLOOR = 1e-12  # an all-zero kernel stays zero instead of becoming 0/0


class GANNetwork(BaseModel):
    """The architecture of one GAN inverter (saved in its metadata)."""

    model_config = ConfigDict(extra="forbid")

    image_shape: tuple[int, int, int]
    h_shape: tuple[int, ...]
    g_channels: int = Field(32, gt=0, description="generator width (the last block's channels)")
    d_channels: int = Field(32, gt=0, description="discriminator width (the first block's channels)")
    noise_dim: int = Field(64, gt=0)
    embed_dim: int = Field(32, gt=0, description="size of the linear embedding of h fed to every block")

    @property
    def num_blocks(self) -> int:
        """Up-sampling blocks of G (= down-sampling blocks of D): 3 above 28 px, else 2."""
        return 3 if max(self.image_shape[:2]) > 28 else 2

    def noise_chunks(self) -> list[tuple[int, int]]:
        """(start, stop) of eps's chunks: one for the first layer, one per block."""
        parts = self.num_blocks + 1
        if self.noise_dim < parts:
            raise InvkerasError(f"--noise-dim {self.noise_dim}: needs at least {parts} (one chunk per generator block "
                                "plus one)")
        sizes = [len(a) for a in np.array_split(np.arange(self.noise_dim), parts)]
        bounds = np.cumsum([0, *sizes])
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


SCALES: dict[str, dict] = {
    # A few seconds per hundred steps on a CPU: tests.
    "tiny": dict(g_channels=8, d_channels=8, noise_dim=16, embed_dim=8),
    # 28x28 grey and 32x32 colour on 2 CPU cores.
    "small": dict(g_channels=32, d_channels=32, noise_dim=64, embed_dim=32),
    # BigGAN's 32x32 widths (ch 64; 256 channels at the coarsest block) for a GPU.
    "paper": dict(g_channels=64, d_channels=64, noise_dim=128, embed_dim=128),
}


def network_for(scale: Literal["tiny", "small", "paper"], image_shape, h_shape, **overrides) -> GANNetwork:
    """The preset of `scale`, with any overrides that are not None."""
    values = {**SCALES[scale], **{k: v for k, v in overrides.items() if v is not None}}
    return GANNetwork(image_shape=tuple(int(d) for d in image_shape), h_shape=tuple(int(d) for d in h_shape), **values)


# --- spectral normalisation ---------------------------------------------------------


def _l2_normalise(v, epsilon=1e-12):
    return v / ops.sqrt(ops.maximum(ops.sum(v * v), epsilon))


def spectral_normalise(matrix, u, iterations: int = 1):
    """(matrix / sigma, u', sigma) for a 2-D matrix [rows, cols] and the power-iteration vector
    u [cols]: sigma = v^T W u' approximates the largest singular value. As in Miyato et al.,
    u and v carry no gradient; sigma does (through W)."""
    for _ in range(iterations):
        v = _l2_normalise(ops.matmul(matrix, u))
        u = _l2_normalise(ops.matmul(v, matrix))
    u, v = ops.stop_gradient(u), ops.stop_gradient(v)
    sigma = ops.sum(v * ops.matmul(matrix, u))
    return matrix / ops.maximum(sigma, SIGMA_FLOOR), u, sigma


class _SpectralKernel(keras.layers.Layer):
    """Shared by SNDense and SNConv2D: a kernel whose last axis is the output, normalised on use."""

    def __init__(self, use_bias: bool = True, power_iterations: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.use_bias, self.power_iterations = bool(use_bias), int(power_iterations)

    def _make_weights(self, kernel_shape, outputs: int):
        self.kernel = self.add_weight(shape=kernel_shape, initializer=keras.initializers.Orthogonal(), name="kernel")
        self.bias = self.add_weight(shape=(outputs,), initializer="zeros", name="bias") if self.use_bias else None
        self.sn_u = self.add_weight(shape=(outputs,), initializer=keras.initializers.RandomNormal(), trainable=False,
                                    name="sn_u")

    def normalised_kernel(self, training=False):
        """W / sigma(W), the kernel the layer applies; a training call also advances u."""
        shape = self.kernel.shape
        matrix = ops.reshape(self.kernel, (-1, shape[-1]))
        normalised, u, _ = spectral_normalise(matrix, self.sn_u, self.power_iterations)
        if training:
            self.sn_u.assign(u)
        return ops.reshape(normalised, shape)

    def get_config(self):
        return {**super().get_config(), "use_bias": self.use_bias, "power_iterations": self.power_iterations}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SNDense(_SpectralKernel):
    """A dense layer with a spectrally normalised kernel."""

    def __init__(self, units: int, use_bias: bool = True, power_iterations: int = 1, **kwargs):
        super().__init__(use_bias=use_bias, power_iterations=power_iterations, **kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self._make_weights((int(input_shape[-1]), self.units), self.units)

    def call(self, inputs, training=None):
        out = ops.matmul(inputs, self.normalised_kernel(training))
        return out + self.bias if self.use_bias else out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SNConv2D(_SpectralKernel):
    """A stride-1 'same' convolution with a spectrally normalised kernel."""

    def __init__(self, filters: int, kernel_size: int = 3, use_bias: bool = True, power_iterations: int = 1,
                 **kwargs):
        super().__init__(use_bias=use_bias, power_iterations=power_iterations, **kwargs)
        self.filters, self.kernel_size = int(filters), int(kernel_size)

    def build(self, input_shape):
        k = self.kernel_size
        self._make_weights((k, k, int(input_shape[-1]), self.filters), self.filters)

    def call(self, inputs, training=None):
        out = ops.conv(inputs, self.normalised_kernel(training), strides=1, padding="same")
        return out + self.bias if self.use_bias else out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


# --- other layers -------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConditionalBatchNorm(keras.layers.Layer):
    """Batch norm whose per-channel gain and bias are linear (SN) projections of a condition:
    y = (x - mean) / sqrt(var + eps) * (1 + G c) + B c. Inputs [x [B, H, W, C], c [B, D]].
    Training calls use the batch's statistics and update the moving ones (momentum as Keras)."""

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape):
        x_shape, c_shape = input_shape
        channels = int(x_shape[-1])
        self.gain = SNDense(channels, use_bias=False, name="gain")
        self.gain.build(c_shape)
        self.shift = SNDense(channels, use_bias=False, name="shift")
        self.shift.build(c_shape)
        self.moving_mean = self.add_weight(shape=(channels,), initializer="zeros", trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=(channels,), initializer="ones", trainable=False,
                                               name="moving_variance")

    def call(self, inputs, training=None):
        x, c = inputs
        if training:
            mean, variance = ops.mean(x, axis=(0, 1, 2)), ops.var(x, axis=(0, 1, 2))
            m = self.momentum
            self.moving_mean.assign(m * self.moving_mean + (1 - m) * mean)
            self.moving_variance.assign(m * self.moving_variance + (1 - m) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        normalised = (x - mean) * ops.rsqrt(variance + self.epsilon)
        gain = 1.0 + self.gain(c, training=training)
        shift = self.shift(c, training=training)
        return normalised * gain[:, None, None, :] + shift[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class NoiseChunk(keras.layers.Layer):
    """Columns [start, stop) of eps: one chunk of the hierarchical latent."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[:, self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalSumPooling(keras.layers.Layer):
    """Sum over the spatial axes (BigGAN's discriminator pools by summing)."""

    def call(self, inputs):
        return ops.sum(inputs, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


# --- the networks -------------------------------------------------------------------


def _standardised_h(h, h_shape, h_mean, h_variance, name: str):
    """Standardise h per feature (per channel for a map), then flatten a map to a vector."""
    x = h
    if h_mean is not None and h_variance is not None:
        x = keras.layers.Normalization(axis=-1, mean=np.asarray(h_mean), variance=np.asarray(h_variance),
                                       name=f"{name}_standardise_h")(x)
    if len(h_shape) > 1:
        x = keras.layers.Flatten(name=f"{name}_flatten_h")(x)
    return x


def _generator_channels(net: GANNetwork) -> list[int]:
    """Channels of the first map, then of each block's output: 4c, then halving down to c."""
    c, n = net.g_channels, net.num_blocks
    return [4 * c] + [min(4 * c, c * 2 ** (n - 1 - i)) for i in range(n)]


def _g_block(x, cond, channels: int, name: str):
    """BigGAN's up-sampling block: CBN, ReLU, x2 nearest, conv, CBN, ReLU, conv, plus a
    (1x1-projected) up-sampled shortcut."""
    y = ConditionalBatchNorm(name=f"{name}_bn1")([x, cond])
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.UpSampling2D(2, name=f"{name}_up")(y)
    y = SNConv2D(channels, 3, name=f"{name}_conv1")(y)
    y = ConditionalBatchNorm(name=f"{name}_bn2")([y, cond])
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = SNConv2D(channels, 3, name=f"{name}_conv2")(y)
    shortcut = keras.layers.UpSampling2D(2, name=f"{name}_shortcut_up")(x)
    if int(x.shape[-1]) != channels:
        shortcut = SNConv2D(channels, 1, name=f"{name}_shortcut_conv")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def build_generator(net: GANNetwork, *, h_mean=None, h_variance=None, name: str = "generator") -> keras.Model:
    """G: {"h": [*h_shape], "eps": [noise_dim]} -> images [H, W, C] in [0, 255] (float)."""
    height, width, colours = net.image_shape
    if len(net.h_shape) not in (1, 3):
        raise InvkerasError(f"gan: features of shape {net.h_shape} are neither a vector nor a [H, W, C] map")
    n = net.num_blocks
    base_h, base_w = math.ceil(height / 2**n), math.ceil(width / 2**n)
    channels = _generator_channels(net)
    chunks = net.noise_chunks()

    h_in = keras.Input(net.h_shape, name="h")
    eps_in = keras.Input((net.noise_dim,), name="eps")
    embedded = SNDense(net.embed_dim, use_bias=False, name="h_embed")(
        _standardised_h(h_in, net.h_shape, h_mean, h_variance, "g"))
    z0 = NoiseChunk(*chunks[0], name="eps_chunk0")(eps_in)
    x = SNDense(base_h * base_w * channels[0], name="project")(z0)
    x = keras.layers.Reshape((base_h, base_w, channels[0]), name="to_map")(x)
    for i in range(n):
        z = NoiseChunk(*chunks[i + 1], name=f"eps_chunk{i + 1}")(eps_in)
        cond = keras.layers.Concatenate(name=f"block{i + 1}_condition")([embedded, z])
        x = _g_block(x, cond, channels[i + 1], f"block{i + 1}")
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="out_bn")(x)
    x = keras.layers.ReLU(name="out_relu")(x)
    x = SNConv2D(colours, 3, name="out_conv")(x)
    x = keras.layers.Activation("tanh", name="tanh")(x)
    extra_h, extra_w = base_h * 2**n - height, base_w * 2**n - width
    if extra_h or extra_w:
        x = keras.layers.Cropping2D(((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
                                    name="crop")(x)
    x = keras.layers.Rescaling(127.5, offset=127.5, name="to_pixels")(x)
    return keras.Model({"h": h_in, "eps": eps_in}, x, name=name)


def _d_block(x, channels: int, name: str, *, down: bool, preactivation: bool):
    """BigGAN's discriminator block: (ReLU,) conv, ReLU, conv, (2x2 average pool), plus a
    shortcut (1x1 conv when the channels change, pooled)."""
    y = keras.layers.ReLU(name=f"{name}_relu0")(x) if preactivation else x
    y = SNConv2D(channels, 3, name=f"{name}_conv1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = SNConv2D(channels, 3, name=f"{name}_conv2")(y)
    if down:
        y = keras.layers.AveragePooling2D(2, name=f"{name}_pool")(y)
    shortcut = x
    change = int(x.shape[-1]) != channels or down
    if preactivation:  # conv, then pool
        if change:
            shortcut = SNConv2D(channels, 1, name=f"{name}_shortcut_conv")(shortcut)
        if down:
            shortcut = keras.layers.AveragePooling2D(2, name=f"{name}_shortcut_pool")(shortcut)
    else:  # the first block: pool, then conv
        if down:
            shortcut = keras.layers.AveragePooling2D(2, name=f"{name}_shortcut_pool")(shortcut)
        if change:
            shortcut = SNConv2D(channels, 1, name=f"{name}_shortcut_conv")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def build_discriminator(net: GANNetwork, *, h_mean=None, h_variance=None, name: str = "discriminator") -> keras.Model:
    """D: {"x": images in [0, 255], "h": [*h_shape]} -> [score [B, 1], phi [B, F]]."""
    c, n = net.d_channels, net.num_blocks
    x_in = keras.Input(net.image_shape, name="x")
    h_in = keras.Input(net.h_shape, name="h")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x_in)
    channels = [min(4 * c, c * 2**i) for i in range(n)]
    for i, ch in enumerate(channels):
        x = _d_block(x, ch, f"block{i + 1}", down=True, preactivation=i > 0)
    x = _d_block(x, channels[-1], f"block{n + 1}", down=False, preactivation=True)
    x = keras.layers.ReLU(name="out_relu")(x)
    phi = GlobalSumPooling(name="phi")(x)
    psi = SNDense(1, name="psi")(phi)
    projected = SNDense(channels[-1], use_bias=False, name="h_projection")(
        _standardised_h(h_in, net.h_shape, h_mean, h_variance, "d"))
    inner = keras.layers.Dot(axes=1, name="projection")([projected, phi])
    score = keras.layers.Add(name="score")([psi, inner])
    return keras.Model({"x": x_in, "h": h_in}, [score, phi], name=name)


def spectral_layers(model: keras.Model) -> list[_SpectralKernel]:
    """Every spectrally normalised layer of a model, nested ones included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, _SpectralKernel)]


# --- noise --------------------------------------------------------------------------


class FixedSeed(keras.random.SeedGenerator):
    """A given seed tensor where keras.random expects a SeedGenerator: stateless draws from a
    seed that may be a traced tensor (keras.random itself takes only ints or generators)."""

    def __init__(self, state):  # no state variable: nothing to track, save or advance
        self._fixed_state = state

    def next(self, ordered=True):
        return self._fixed_state


def _seed_dtype() -> str:
    """The dtype of keras.random's seed pairs on this backend (no variable is made: this may run
    inside a traced function)."""
    try:
        from keras.src.backend import random_seed_dtype  # what keras.random uses for an int seed
    except ImportError:  # a Keras that moved it: the values of Keras 3.x
        return "uint32" if keras.backend.backend() in ("jax", "numpy") else "int64"
    return random_seed_dtype()


def noise(rows: int, noise_dim: int, seed):
    """eps ~ N(0, I) [rows, noise_dim], a pure function of `seed` (a Python int or an int32
    tensor, so that a traced `sample(h, seed)` draws what `GANInverter.sample` draws)."""
    dtype = _seed_dtype()
    state = ops.stack([ops.cast(seed, dtype), ops.zeros((), dtype)])
    return keras.random.normal((rows, noise_dim), seed=FixedSeed(state))
