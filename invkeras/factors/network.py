"""The factor INN T: r -> z~, and the model that trains it on pairs.

    FactorINN        standardise r with fixed statistics (x = (r - mean) * scale), then
                     `num_blocks` blocks of ActNorm, double affine coupling and fixed
                     permutation (the cinn kind's ConditionalINN with no condition):
                     z~ = T(r), log|det dT/dr| = sum(log scale) + the flow's log-det. The
                     output's dimensions are split, in order, into named blocks
                     [factor_1, ..., factor_K, residual]; the permutations inside the flow
                     mix everything, so contiguous blocks at the output lose nothing.
    FactorPairModel  on {"a": r_a, "b": r_b, "shared": [B, blocks] in {0, 1}} it returns the
                     pair NLL (`loss.pair_nll`) in nats per dimension, -log p(r_a, r_b) / (2 d),
                     which `MeanOutputLoss` averages: a compiled model trains with `train_on_batch`.

Dequantisation. A representation of the procedural dataset takes only 6,912 values, and maximum
likelihood on a finite set of points diverges. The training model therefore adds Gaussian noise
of standard deviation `noise` to the standardised r of both pair members, drawn from a
`keras.random.SeedGenerator` whose state is a model variable (so a resumed run draws the same
noise); the loss is the NLL of the noisy pairs. Analyses use the noise-free T.

All in keras.ops, so it runs under any Keras backend.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from invkeras.factors.loss import pair_nll
from invkeras.inverters.cinn.flows import FlowLayer
from invkeras.inverters.cinn.network import ConditionalINN

RESIDUAL = "residual"


def _no_condition(condition) -> None:
    if condition is not None:
        raise ValueError("the factor INN is unconditional: it takes no condition")


@keras.saving.register_keras_serializable(package="invkeras")
class FactorINN(FlowLayer):
    """z~ = T(r): fixed standardisation, then an unconditional flow; z~ splits into named blocks."""

    def __init__(self, dim: int, block_names, block_sizes, num_blocks: int = 8, hidden: int = 64, depth: int = 2,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_blocks, self.hidden, self.depth, self.seed = (int(dim), int(num_blocks), int(hidden),
                                                                         int(depth), int(seed))
        self.block_names = [str(n) for n in block_names]
        self.block_sizes = [int(s) for s in block_sizes]
        if len(self.block_names) != len(self.block_sizes) or sum(self.block_sizes) != self.dim:
            raise ValueError(f"blocks {dict(zip(self.block_names, self.block_sizes))} do not add up to {self.dim}")
        if min(self.block_sizes) < 1:
            raise ValueError("every block needs at least one dimension")
        self.r_mean = self.add_weight(shape=(self.dim,), initializer="zeros", trainable=False, name="r_mean")
        self.r_scale = self.add_weight(shape=(self.dim,), initializer="ones", trainable=False, name="r_scale")
        self.flow = ConditionalINN(self.dim, None, num_blocks=self.num_blocks, hidden=self.hidden, depth=self.depth,
                                   seed=self.seed, name="flow")
        # [blocks, dim]: row k is 1 on block k's dimensions; shared [B, blocks] @ it -> [B, dim].
        starts = np.cumsum([0, *self.block_sizes])
        matrix = np.zeros((len(self.block_sizes), self.dim), np.float32)
        for k in range(len(self.block_sizes)):
            matrix[k, starts[k] : starts[k + 1]] = 1.0
        self.block_matrix = matrix
        self.built = True

    # --- layout ---------------------------------------------------------------------------

    def block_slice(self, name: str) -> slice:
        k = self.block_names.index(name)
        start = sum(self.block_sizes[:k])
        return slice(start, start + self.block_sizes[k])

    def shared_dims(self, shared):
        """[B, blocks] (1 where the pair shares the block's factor) -> [B, dim]."""
        return ops.matmul(ops.cast(shared, self.compute_dtype), ops.cast(self.block_matrix, self.compute_dtype))

    # --- the map ----------------------------------------------------------------------------

    def standardise(self, r):
        return (r - self.r_mean) * self.r_scale

    def forward_and_log_det(self, r, condition=None, noise=None):
        """(z~, log|det dT/dr|) per example; T is unconditional (the condition must be None).
        `noise` (in standardised units) is added before the flow."""
        _no_condition(condition)
        x = self.standardise(r)
        if noise is not None:
            x = x + noise
        z, logdet = self.flow(x)
        return z, logdet + ops.sum(ops.log(self.r_scale))

    def call(self, r, condition=None, noise=None):
        return self.forward_and_log_det(r, condition, noise=noise)

    def inverse(self, z, condition=None):
        _no_condition(condition)
        return self.flow.inverse(z) / self.r_scale + self.r_mean

    def initialize(self, r: np.ndarray, noise: np.ndarray | None = None) -> None:
        """Standardise by r's per-dimension mean and standard deviation (floored at 10% of the mean
        standard deviation, so constant dimensions, e.g. dead ReLU units, are not blown up), then
        the flow's data-dependent ActNorm initialisation on the standardised (noisy) batch."""
        r = np.asarray(r, np.float64)
        std = r.std(0)
        std = np.maximum(std, 0.1 * float(std.mean()) + 1e-6)
        self.r_mean.assign(r.mean(0).astype(self.dtype))
        self.r_scale.assign((1.0 / std).astype(self.dtype))
        x = (r - r.mean(0)) / std
        if noise is not None:
            x = x + noise
        self.flow.initialize(x.astype(self.dtype))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "block_names": list(self.block_names),
                "block_sizes": list(self.block_sizes), "num_blocks": self.num_blocks, "hidden": self.hidden,
                "depth": self.depth, "seed": self.seed}


@keras.saving.register_keras_serializable(package="invkeras")
class FactorPairModel(keras.Model):
    """The factor INN with its pair loss; called on {"a", "b", "shared"[, "noise_a", "noise_b"]}.

    In training it draws the dequantisation noise itself; given "noise_a"/"noise_b" (validation)
    it uses those, so held-out scores are repeatable.
    """

    def __init__(self, inn: FactorINN, rho: float = 0.975, noise: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.inn, self.rho, self.noise, self.seed = inn, float(rho), float(noise), int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.built = True

    def call(self, inputs, training=False):
        a, b, shared = inputs["a"], inputs["b"], inputs["shared"]
        noise_a, noise_b = inputs.get("noise_a"), inputs.get("noise_b")
        if training and self.noise > 0 and noise_a is None:
            noise_a = keras.random.normal(ops.shape(a), stddev=self.noise, seed=self.seed_generator)
            noise_b = keras.random.normal(ops.shape(b), stddev=self.noise, seed=self.seed_generator)
        z_a, logdet_a = self.inn(a, noise=noise_a)
        z_b, logdet_b = self.inn(b, noise=noise_b)
        nll = pair_nll(z_a, z_b, logdet_a, logdet_b, self.inn.shared_dims(shared), self.rho)
        return nll / (2 * self.inn.dim)

    def get_config(self):
        return {"name": self.name, "inn": keras.saving.serialize_keras_object(self.inn), "rho": self.rho,
                "noise": self.noise, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["inn"] = keras.saving.deserialize_keras_object(config["inn"])
        return cls(**config)


class Compiled(keras.Model):
    """A function of existing layers as a model, so that `predict_on_batch` runs it compiled (a
    tf.function or jax.jit, whatever the backend) instead of op by op: the analyses push tens of
    thousands of rows through T, T^-1 and the decoder. `layers` are the layers `fn` reads, tracked
    so that their variables are the model's own (a stateless backend passes them in)."""

    def __init__(self, fn, layers=(), **kwargs):
        super().__init__(**kwargs)
        self._fn = fn
        self.parts = list(layers)
        self.built = True

    def call(self, inputs):
        return self._fn(inputs)

    def apply_batched(self, inputs, batch_size: int = 1024) -> np.ndarray:
        """The function on numpy inputs (an array, or a tuple of arrays of equal length), in batches."""
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        n = len(arrays[0])
        parts = []
        for start in range(0, n, batch_size):
            batch = tuple(np.asarray(a[start : start + batch_size], np.float32) for a in arrays)
            parts.append(np.asarray(self.predict_on_batch(batch if isinstance(inputs, tuple) else batch[0])))
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def build_factor_model(dim: int, block_names, block_sizes, *, num_blocks: int = 8, hidden: int = 64, depth: int = 2,
                       rho: float = 0.975, noise: float = 0.0, seed: int = 0, learning_rate: float | None = None,
                       lr_decay: float = 1.0) -> FactorPairModel:
    """A FactorPairModel; compiled with Adam (its rate times `lr_decay` every step) and the pair
    NLL as the loss when `learning_rate` is given."""
    from invkeras.distribution import training_jit
    from invkeras.inverters.cinn.network import MeanOutputLoss

    inn = FactorINN(dim, block_names, block_sizes, num_blocks=num_blocks, hidden=hidden, depth=depth, seed=seed,
                    name="factor_inn")
    model = FactorPairModel(inn, rho=rho, noise=noise, seed=seed, name="factor_pairs")
    if learning_rate is not None:
        schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=1, decay_rate=lr_decay)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=MeanOutputLoss(name="pair_nll"),
                      jit_compile=training_jit())
    return model
