"""Weight-normalised layers (Salimans & Kingma, 2016) with data-dependent initialisation.

Each layer stores a direction `v`, a per-output-channel gain `g` and a bias `b`, and uses
the kernel w = g * v / ||v||, the norm taken per output channel. PixelCNN++ trains these
without batch norm; what makes that work is the data-dependent initialisation: before
training, one batch is pushed through the network and every layer sets `g` and `b` so its
pre-activations on that batch have zero mean and standard deviation `init_scale` per output
channel. `initialize_weight_norm` runs that pass.

How the pass works in Keras 3: every weight-normalised layer has an `init_mode` flag. When
it is on, the layer computes t = op(x, v / ||v||), assigns g = init_scale / std(t) and
b = -mean(t) * g, and returns g * t + b, i.e. exactly what it will output from now on. With
all layers in init mode, one ordinary forward pass therefore initialises them in forward
order: each layer normalises its output given inputs that earlier layers have already
normalised. The assignment is eager, so the pass must run outside any compiled function.
Channels that are constant on the batch only get centred (see `_CONSTANT_STD`).
"""

from __future__ import annotations

from typing import Any, Iterator

import keras
from keras import ops

from invkeras.errors import InvkerasError

_NORM_EPS = 1e-12  # guards ||v|| = 0
_INIT_EPS = 1e-8
# A channel whose std on the init batch is below this is constant there (e.g. the top row
# of a causal stream sees no pixels; on tiny images that can be a whole feature map).
# Dividing by its std would make g huge and training blow up, so it keeps g = init_scale.
_CONSTANT_STD = 1e-3


def _normalise_padding(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding applied before a 'valid' convolution."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    try:
        (top, bottom), (left, right) = padding
        return ((int(top), int(bottom)), (int(left), int(right)))
    except (TypeError, ValueError):
        raise InvkerasError(
            f"weight-normalised conv: padding must be 'valid' or ((top, bottom), (left, right)), got {padding!r}"
        ) from None


class _WeightNormLayer(keras.layers.Layer):
    """Shared logic: the g/b weights, `init_mode`, and the data-dependent statistics."""

    # Axes of the raw output over which init statistics are taken (all but channels).
    _reduce_axes: tuple[int, ...] = ()

    def __init__(self, init_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.init_scale = float(init_scale)
        # A plain Python flag, not a weight: it is a property of the current pass, not the model.
        self.init_mode = False

    def _add_gain_and_bias(self, channels: int) -> None:
        self.g = self.add_weight(name="g", shape=(channels,), initializer="ones")
        self.b = self.add_weight(name="b", shape=(channels,), initializer="zeros")

    def _scale_and_shift(self, raw_unit_norm):
        """Given t = op(x, v/||v||), return g*t + b; in init mode first fit g, b to t."""
        axes = tuple(range(len(raw_unit_norm.shape) - 1))
        if self.init_mode:
            mean, var = ops.moments(raw_unit_norm, axes=axes)
            constant = ops.sqrt(var) < _CONSTANT_STD
            gain = ops.where(constant, self.init_scale, self.init_scale / ops.sqrt(var + _INIT_EPS))
            self.g.assign(gain)
            self.b.assign(-mean * gain)
            return (raw_unit_norm - mean) * gain
        return raw_unit_norm * self.g + self.b

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["init_scale"] = self.init_scale
        return config


@keras.saving.register_keras_serializable(package="invkeras")
class WNConv2D(_WeightNormLayer):
    """2-D convolution with weight normalisation; NHWC; explicit zero padding then 'valid'.

    `padding=((top, bottom), (left, right))` is what the causal (shifted) convolutions of
    PixelCNN++ need: e.g. a down-shifted 2x3 convolution pads ((1, 0), (1, 1)).
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding="valid", init_scale: float = 1.0, **kwargs):
        super().__init__(init_scale=init_scale, **kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in (kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2))
        self.strides = tuple(int(s) for s in (strides if isinstance(strides, (tuple, list)) else (strides,) * 2))
        self.padding = _normalise_padding(padding)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        self.v = self.add_weight(
            name="v",
            shape=(*self.kernel_size, in_channels, self.filters),
            initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        self._add_gain_and_bias(self.filters)

    def call(self, inputs):
        return self.convolve(inputs, self.padding)

    def convolve(self, inputs, padding):
        """The layer's convolution with explicit `padding` instead of its own; the row-by-row
        sampler uses it to supply cached rows in place of the top zero padding."""
        if padding != ((0, 0), (0, 0)):
            inputs = ops.pad(inputs, ((0, 0), *padding, (0, 0)))
        # Normalise the direction per output channel (axes: kh, kw, in).
        v = self.v / ops.sqrt(ops.sum(ops.square(self.v), axis=(0, 1, 2), keepdims=True) + _NORM_EPS)
        if self.init_mode:
            return self._scale_and_shift(ops.conv(inputs, v, strides=self.strides, padding="valid"))
        # w = g * v/||v||: scaling the (small) kernel is cheaper than scaling the output.
        return ops.conv(inputs, v * self.g, strides=self.strides, padding="valid") + self.b

    def convolve_window(self, window):
        """The convolution at one output position whose input window [B, kh, kw, C] is
        given whole (no padding): one matmul, which beats a convolution op on so small an
        input. The per-pixel sampler applies every layer this way. Inference only."""
        v = self.v / ops.sqrt(ops.sum(ops.square(self.v), axis=(0, 1, 2), keepdims=True) + _NORM_EPS)
        matrix = ops.reshape(v * self.g, (-1, self.filters))
        batch = window.shape[0]
        return ops.reshape(ops.matmul(ops.reshape(window, (batch, -1)), matrix) + self.b, (batch, 1, 1, self.filters))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        (top, bottom), (left, right) = self.padding

        def size(n, k, s, pad):
            return None if n is None else (n + pad - k) // s + 1

        return (b, size(h, self.kernel_size[0], self.strides[0], top + bottom),
                size(w, self.kernel_size[1], self.strides[1], left + right), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="invkeras")
class WNConv2DTranspose(_WeightNormLayer):
    """Transposed convolution (upsampling) with weight normalisation, 'valid' padding.

    The output is (n - 1) * stride + kernel per spatial axis (for kernel >= stride); callers
    crop it to the causal window they need, as PixelCNN++'s shifted deconvolutions do.
    """

    def __init__(self, filters: int, kernel_size, strides=2, init_scale: float = 1.0, **kwargs):
        super().__init__(init_scale=init_scale, **kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in (kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2))
        self.strides = tuple(int(s) for s in (strides if isinstance(strides, (tuple, list)) else (strides,) * 2))

    def build(self, input_shape):
        in_channels = input_shape[-1]
        # Keras' transposed-conv kernel layout: (kh, kw, out_channels, in_channels).
        self.v = self.add_weight(
            name="v",
            shape=(*self.kernel_size, self.filters, in_channels),
            initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        self._add_gain_and_bias(self.filters)

    def _unit_kernel(self):
        return self.v / ops.sqrt(ops.sum(ops.square(self.v), axis=(0, 1, 3), keepdims=True) + _NORM_EPS)

    def call(self, inputs):
        v = self._unit_kernel()
        if self.init_mode:
            return self._scale_and_shift(ops.conv_transpose(inputs, v, strides=self.strides, padding="valid"))
        gain = ops.reshape(self.g, (1, 1, self.filters, 1))
        return ops.conv_transpose(inputs, v * gain, strides=self.strides, padding="valid") + self.b

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape

        def size(n, k, s):
            return None if n is None else (n - 1) * s + max(k, s)

        return (b, size(h, self.kernel_size[0], self.strides[0]), size(w, self.kernel_size[1], self.strides[1]),
                self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides)
        return config


@keras.saving.register_keras_serializable(package="invkeras")
class WNDense(_WeightNormLayer):
    """Dense layer on the last axis with weight normalisation (a 1x1 'network-in-network' on images)."""

    def __init__(self, units: int, init_scale: float = 1.0, **kwargs):
        super().__init__(init_scale=init_scale, **kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.v = self.add_weight(
            name="v",
            shape=(input_shape[-1], self.units),
            initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        self._add_gain_and_bias(self.units)

    def call(self, inputs):
        v = self.v / ops.sqrt(ops.sum(ops.square(self.v), axis=0, keepdims=True) + _NORM_EPS)
        if self.init_mode:
            return self._scale_and_shift(ops.matmul(inputs, v))
        return ops.matmul(inputs, v * self.g) + self.b

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config


WEIGHT_NORM_LAYERS = (WNConv2D, WNConv2DTranspose, WNDense)


def weight_norm_layers(model: keras.layers.Layer) -> Iterator[_WeightNormLayer]:
    """All weight-normalised layers inside `model`, nested ones included."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, _WeightNormLayer):
            yield layer


def initialize_weight_norm(model: keras.layers.Layer, batch, training: bool = False):
    """Data-dependent initialisation: one eager forward pass over `batch` with every
    weight-normalised layer in init mode. Run it once, on one batch, before `fit`.

    `training=False` (the default) switches dropout off, so after the pass every layer's
    pre-activations on `batch` have exactly zero mean and std `init_scale` per channel.
    Returns the model's output on `batch`.
    """
    layers = list(weight_norm_layers(model))
    if not layers:
        raise InvkerasError(f"initialize_weight_norm: model '{model.name}' has no weight-normalised layers")
    if not model.built:
        # Create the weights first so the init pass only assigns, never builds.
        model(batch, training=False)
    for layer in layers:
        layer.init_mode = True
    try:
        return model(batch, training=training)
    finally:
        for layer in layers:
            layer.init_mode = False
