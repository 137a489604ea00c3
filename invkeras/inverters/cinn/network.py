"""The conditional INN t(z | h) over an autoencoder latent z, and the model a `cinn` inverter saves.

    ConditionalINN   K blocks of ActNorm -> double affine coupling -> fixed permutation,
                     every coupling seeing the embedded condition e(h): v = t(z | h) and
                     z = t^-1(v | h), with log|det dt/dz| per example
    HEmbedder        standardise h, then dense layers (vector h) or strided convolutions
                     down to a vector (spatial h [H, W, C])
    LatentFlowModel  the flow plus the frozen autoencoder's encoder and decoder, so one
                     `inverter.keras` holds all a cinn inverter needs; called on {"z", "h"}
                     it returns the exact NLL of z in nats per latent dimension (the loss)

All in keras.ops, so it runs under any Keras backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from invkeras.distribution import training_jit
from invkeras.inverters.cinn.flows import ActNorm, DoubleCoupling, FixedPermutation, FlowLayer, _leaky

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@keras.saving.register_keras_serializable(package="invkeras")
class HEmbedder(keras.layers.Layer):
    """h -> a vector of `embed_dim`; h is first standardised with statistics set by `initialize`."""

    def __init__(self, h_shape, embed_dim: int = 32, hidden: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.h_shape = tuple(int(d) for d in h_shape)
        self.embed_dim, self.hidden = int(embed_dim), int(hidden)
        if len(self.h_shape) not in (1, 3):
            raise ValueError(f"features of shape {self.h_shape} are neither a vector nor a [H, W, C] map")
        channels = self.h_shape[-1]
        self.h_mean = self.add_weight(shape=(channels,), initializer="zeros", trainable=False, name="h_mean")
        self.h_scale = self.add_weight(shape=(channels,), initializer="ones", trainable=False, name="h_scale")
        self.embed_layers = []
        shape = (None, *self.h_shape)
        if len(self.h_shape) == 3:  # strided convolutions until the map is at most 4 x 4
            size = max(self.h_shape[:2])
            i = 0
            while size > 4:
                conv = keras.layers.Conv2D(self.hidden, 3, strides=2, padding="same", name=f"conv{i}")
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
                self.embed_layers.append(conv)
                size, i = math.ceil(size / 2), i + 1
            shape = (None, int(np.prod(shape[1:])))
        for i, units in enumerate((self.hidden, self.embed_dim)):
            dense = keras.layers.Dense(units, name=f"dense{i}")
            dense.build(shape)
            shape = (None, units)
            self.embed_layers.append(dense)
        self.built = True

    def initialize(self, h: np.ndarray) -> None:
        """Standardise by the per-feature (per-channel for maps) mean and standard deviation of `h`;
        the scale is floored at 10% of the mean, so nearly dead units are not blown up."""
        flat = np.asarray(h, np.float64).reshape(-1, self.h_shape[-1])
        std = flat.std(0)
        std = np.maximum(std, 0.1 * float(std.mean()) + 1e-6)
        self.h_mean.assign(flat.mean(0).astype(self.dtype))
        self.h_scale.assign((1.0 / std).astype(self.dtype))

    def call(self, h):
        x = (h - self.h_mean) * self.h_scale
        for layer in self.embed_layers:
            if isinstance(layer, keras.layers.Dense) and len(x.shape) > 2:
                x = ops.reshape(x, (ops.shape(x)[0], -1))
            x = layer(x)
            if layer is not self.embed_layers[-1]:
                x = _leaky(x)
        return x

    def get_config(self):
        return {**super().get_config(), "h_shape": list(self.h_shape), "embed_dim": self.embed_dim,
                "hidden": self.hidden}


@keras.saving.register_keras_serializable(package="invkeras")
class ConditionalINN(FlowLayer):
    """v = t(z | h): `num_blocks` blocks of ActNorm, a double affine coupling and a fixed permutation;
    its condition is h, which it embeds itself."""

    def __init__(self, latent_dim: int, h_shape=None, num_blocks: int = 12, hidden: int = 64, depth: int = 2,
                 embed_dim: int = 32, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim, self.num_blocks = int(latent_dim), int(num_blocks)
        self.h_shape = tuple(int(d) for d in h_shape) if h_shape else None
        self.hidden, self.depth, self.embed_dim, self.seed = int(hidden), int(depth), int(embed_dim), int(seed)
        self.embedder = HEmbedder(self.h_shape, self.embed_dim, self.hidden, name="embedder") if self.h_shape else None
        cond_dim = self.embed_dim if self.h_shape else 0
        self.flow_layers = []
        for b in range(self.num_blocks):
            self.flow_layers += [
                ActNorm(self.latent_dim, name=f"actnorm{b}"),
                DoubleCoupling(self.latent_dim, cond_dim, self.hidden, self.depth, name=f"coupling{b}"),
                FixedPermutation(self.latent_dim, seed=self.seed * 100_003 + b, name=f"permute{b}"),
            ]
        self.built = True

    @property
    def conditional(self) -> bool:
        return self.h_shape is not None

    def embed(self, h):
        if not self.conditional:
            return None
        if h is None:
            raise ValueError("this flow is conditional: it needs h")
        return self.embedder(h)

    def forward_and_log_det(self, z, condition=None):
        """(v, log|det dv/dz|) per example; the condition is h."""
        c = self.embed(condition)
        logdet = ops.zeros_like(z[:, 0])
        for layer in self.flow_layers:
            z, ld = layer(z, c)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, v, condition=None):
        c = self.embed(condition)
        for layer in reversed(self.flow_layers):
            v = layer.inverse(v, c)
        return v

    def nll_per_dim(self, z, h=None):
        """-log p(z | h) in nats per latent dimension, per example (v ~ N(0, I))."""
        v, logdet = self(z, h)
        nll = 0.5 * ops.sum(ops.square(v), axis=-1) + self.latent_dim * HALF_LOG_2PI - logdet
        return nll / self.latent_dim

    def initialize(self, z: np.ndarray, h: np.ndarray | None = None) -> None:
        """Data-dependent initialisation from one batch: h's standardisation, then each ActNorm
        in turn on what reaches it, so every ActNorm's output has zero mean and unit variance."""
        if self.conditional:
            self.embedder.initialize(h)
        c = self.embed(np.asarray(h, self.dtype)) if self.conditional else None
        x = np.asarray(z, self.dtype)
        for layer in self.flow_layers:
            if isinstance(layer, ActNorm):
                x = layer.initialize(x)
            else:
                x = keras.ops.convert_to_numpy(layer(x, c)[0])

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "h_shape": list(self.h_shape) if self.h_shape else None, "num_blocks": self.num_blocks,
                "hidden": self.hidden, "depth": self.depth, "embed_dim": self.embed_dim, "seed": self.seed}


@keras.saving.register_keras_serializable(package="invkeras")
class LatentFlowModel(keras.Model):
    """The flow with the frozen autoencoder's encoder and decoder (either may be None in tests).

    Called on {"z": [B, d], "h": ...} it returns the NLL of z in nats per latent dimension per
    example, which `MeanOutputLoss` averages: a compiled model trains it with `train_on_batch`.
    """

    def __init__(self, flow: ConditionalINN, encoder=None, decoder=None, **kwargs):
        super().__init__(**kwargs)
        self.flow, self.encoder, self.decoder = flow, encoder, decoder
        for part in (encoder, decoder):
            if part is not None:
                part.trainable = False
        self.built = True

    def call(self, inputs):
        return self.flow.nll_per_dim(inputs["z"], inputs.get("h"))

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {"name": self.name, "flow": serialize(self.flow),
                "encoder": serialize(self.encoder) if self.encoder is not None else None,
                "decoder": serialize(self.decoder) if self.decoder is not None else None}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("flow", "encoder", "decoder"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="invkeras")
class MeanOutputLoss(keras.losses.Loss):
    """The model's own per-example output (its NLL) as the loss; the target is ignored."""

    def __init__(self, name="latent_nll", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)

    def call(self, y_true, y_pred):
        return y_pred


def build_latent_flow(latent_dim: int, h_shape=None, *, num_blocks: int = 12, hidden: int = 64, depth: int = 2,
                      embed_dim: int = 32, seed: int = 0, encoder=None, decoder=None,
                      learning_rate: float | None = None, lr_decay: float = 1.0) -> LatentFlowModel:
    """A LatentFlowModel; compiled with Adam (its rate times `lr_decay` every step) and the NLL
    loss when `learning_rate` is given."""
    flow = ConditionalINN(latent_dim, h_shape, num_blocks=num_blocks, hidden=hidden, depth=depth,
                          embed_dim=embed_dim, seed=seed, name="flow")
    model = LatentFlowModel(flow, encoder, decoder, name="latent_flow")
    if learning_rate is not None:
        schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=1, decay_rate=lr_decay)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=MeanOutputLoss(), jit_compile=training_jit())
    return model
