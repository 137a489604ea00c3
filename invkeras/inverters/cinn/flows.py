"""The invertible pieces of the conditional INN, in keras.ops (any backend).

Every piece is a `FlowLayer`: it maps x -> y with `forward_and_log_det(x, condition) ->
(y, log_det)` (log_det: log|det dy/dx| per example), which calling the layer runs, and back
with `inverse(y, condition) -> x`; the condition is the embedded h, or None.

    ActNorm            y = (x + loc) * exp(log_scale), initialised from data so that the
                       first batch comes out with zero mean and unit variance per dimension
    DoubleCoupling     both halves in turn: x2 <- x2 * exp(s0([x1, c])) + t0([x1, c]), then
                       x1 <- x1 * exp(s1([x2, c])) + t1([x2, c]); s ends in tanh, t is linear
    FixedPermutation   a fixed random permutation of the dimensions (seeded), logdet 0

As in Rombach, Esser & Ommer (2020) and Esser, Rombach & Ommer (2020, "iin").
"""

from __future__ import annotations

import abc

import keras
import numpy as np
from keras import ops


def _mlp(hidden: int, depth: int, out: int, name: str, final_activation: str | None = None):
    """Dense layers with leaky ReLU; the last one starts at zero, so each coupling starts as the identity."""
    layers = [keras.layers.Dense(hidden, name=f"{name}_dense{i}") for i in range(depth)]
    final = keras.layers.Dense(out, kernel_initializer="zeros", bias_initializer="zeros", activation=final_activation,
                               name=f"{name}_out")
    return layers, final


def _leaky(x):
    """Leaky ReLU as max(x, 0.01 x): TensorFlow's fused LeakyRelu trips its graph optimiser."""
    return ops.maximum(x, 0.01 * x)


def _run_mlp(layers, final, x):
    for layer in layers:
        x = _leaky(layer(x))
    return final(x)


class FlowLayer(keras.layers.Layer, metaclass=abc.ABCMeta):
    """An invertible map of vectors [B, d] -> [B, d] that knows its log-determinant.

    A flow is a chain of these: its log-likelihood needs each piece's log|det dy/dx|, and its
    inverse each piece's inverse. Calling the layer, `layer(x, condition)`, returns
    `forward_and_log_det(x, condition)`. A subclass's `get_config` mirrors its `__init__`, so
    that a saved flow loads back.
    """

    @abc.abstractmethod
    def forward_and_log_det(self, x, condition=None):
        """(y, log|det dy/dx|) per example, for x [B, d] and the condition (None if unconditional)."""

    @abc.abstractmethod
    def inverse(self, y, condition=None):
        """The x that `forward_and_log_det(x, condition)` maps to y."""

    def call(self, x, condition=None):
        return self.forward_and_log_det(x, condition)


@keras.saving.register_keras_serializable(package="invkeras")
class ActNorm(FlowLayer):
    """Per-dimension affine y = (x + loc) * exp(log_scale) with data-dependent initialisation."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.loc = self.add_weight(shape=(self.dim,), initializer="zeros", name="loc")
        self.log_scale = self.add_weight(shape=(self.dim,), initializer="zeros", name="log_scale")
        self.built = True

    def initialize(self, x: np.ndarray) -> np.ndarray:
        """Set loc and scale from the batch `x` so that its output has zero mean, unit variance."""
        x = np.asarray(x, np.float64)
        mean, std = x.mean(0), x.std(0)
        self.loc.assign((-mean).astype(self.dtype))
        self.log_scale.assign((-np.log(std + 1e-6)).astype(self.dtype))
        return ((x - mean) / (std + 1e-6)).astype(self.dtype)

    def forward_and_log_det(self, x, condition=None):
        y = (x + self.loc) * ops.exp(self.log_scale)
        return y, ops.sum(self.log_scale) * ops.ones_like(x[:, 0])

    def inverse(self, y, condition=None):
        return y * ops.exp(-self.log_scale) - self.loc

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@keras.saving.register_keras_serializable(package="invkeras")
class DoubleCoupling(FlowLayer):
    """Double affine coupling: the second half given the first, then the first given the second."""

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 64, depth: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.cond_dim, self.hidden, self.depth = int(dim), int(cond_dim), int(hidden), int(depth)
        if self.dim < 2:
            raise ValueError("a coupling needs at least 2 dimensions")
        self.d1 = self.dim // 2
        self.d2 = self.dim - self.d1
        # Net i sees the half it keeps (d1 for i = 0, d2 for i = 1) and transforms the other. One
        # flat list of layers (scale net 0, shift net 0, scale net 1, shift net 1), so saving
        # finds every weight once and in a fixed order.
        self.net_layers = []
        for i, (keep, apply) in enumerate(((self.d1, self.d2), (self.d2, self.d1))):
            for name, activation in ((f"s{i}", "tanh"), (f"t{i}", None)):
                layers, final = _mlp(self.hidden, self.depth, apply, name, final_activation=activation)
                size = keep + self.cond_dim
                for layer in layers:
                    layer.build((None, size))
                    size = self.hidden
                final.build((None, size))
                self.net_layers.extend([*layers, final])
        self.built = True

    def _affine(self, i, keep, c):
        inputs = keep if c is None else ops.concatenate([keep, c], axis=-1)
        per_net = self.depth + 1
        scale = self.net_layers[2 * i * per_net : (2 * i + 1) * per_net]
        shift = self.net_layers[(2 * i + 1) * per_net : (2 * i + 2) * per_net]
        return _run_mlp(scale[:-1], scale[-1], inputs), _run_mlp(shift[:-1], shift[-1], inputs)

    def forward_and_log_det(self, x, condition=None):
        x1, x2 = x[:, : self.d1], x[:, self.d1 :]
        s0, t0 = self._affine(0, x1, condition)
        x2 = x2 * ops.exp(s0) + t0
        s1, t1 = self._affine(1, x2, condition)
        x1 = x1 * ops.exp(s1) + t1
        return ops.concatenate([x1, x2], axis=-1), ops.sum(s0, axis=-1) + ops.sum(s1, axis=-1)

    def inverse(self, y, condition=None):
        y1, y2 = y[:, : self.d1], y[:, self.d1 :]
        s1, t1 = self._affine(1, y2, condition)
        y1 = (y1 - t1) * ops.exp(-s1)
        s0, t0 = self._affine(0, y1, condition)
        y2 = (y2 - t0) * ops.exp(-s0)
        return ops.concatenate([y1, y2], axis=-1)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "cond_dim": self.cond_dim, "hidden": self.hidden,
                "depth": self.depth}


@keras.saving.register_keras_serializable(package="invkeras")
class FixedPermutation(FlowLayer):
    """A fixed permutation of the dimensions, drawn once from `seed`; volume-preserving."""

    def __init__(self, dim: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.seed = int(dim), int(seed)
        order = np.random.default_rng(self.seed).permutation(self.dim)
        self.order = order.astype("int32")
        self.inverse_order = np.argsort(order).astype("int32")
        self.built = True

    def forward_and_log_det(self, x, condition=None):
        return ops.take(x, self.order, axis=1), ops.zeros_like(x[:, 0])

    def inverse(self, y, condition=None):
        return ops.take(y, self.inverse_order, axis=1)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "seed": self.seed}
