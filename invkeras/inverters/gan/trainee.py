"""The GAN's training step: D steps and a G step with their own Adam optimisers, then the EMA.

One step of the shared loop (`invkeras.training`) receives `d_steps * batch_size` pairs: each
D step takes its own `batch_size` of them, and the G step conditions on the h of the last
chunk. The trainee declares every variable a step touches (both networks with their
spectral-norm vectors and batch-norm statistics, the EMA generator, both optimisers, and the
state of the noise generator), so a resumed run continues exactly where a killed one stopped.

The only backend-specific code is `_gradients` and `_compiled` below (TensorFlow now).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from invkeras.errors import InvkerasError
from invkeras.inverters.gan.losses import (discriminator_hinge_loss, ema_decay_at, ema_update, feature_matching_loss,
                                           generator_hinge_loss)

ADAM_BETAS = (0.0, 0.999)  # BigGAN's (and the issue's) Adam: beta1 = 0
ADAM_EPSILON = 1e-8


def _require_tensorflow() -> None:
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise InvkerasError(f"train-inverter --kind gan: training needs the TensorFlow backend for now "
                            f"(KERAS_BACKEND is {backend}); sampling a trained GAN works under any backend")


def _gradients(loss_fn, variables):
    """(loss, aux, gradients of loss w.r.t. variables) for `loss_fn() -> (loss, aux)`."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss, aux = loss_fn()
    return loss, aux, tape.gradient(loss, variables)


def _compiled(fn):
    """The step as one graph (no XLA: measured slower on 2 CPU cores for the PixelCNN too)."""
    import tensorflow as tf

    return tf.function(fn, jit_compile=False, reduce_retracing=True, autograph=False)


def unique(variables):
    seen, out = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            out.append(variable)
    return out


class GANTrainee:
    """G, D and G's EMA trained with the hinge loss (a `Trainee` of `invkeras.training`)."""

    def __init__(self, generator, discriminator, ema_generator, *, batch_size: int, d_steps: int, noise_dim: int,
                 g_learning_rate: float, d_learning_rate: float, ema_decay: float, feature_matching: float = 0.0,
                 seed: int = 0, validate=None):
        _require_tensorflow()
        self.generator, self.discriminator, self.ema_generator = generator, discriminator, ema_generator
        self.batch_size, self.d_steps, self.noise_dim = int(batch_size), int(d_steps), int(noise_dim)
        self.ema_decay, self.feature_matching = float(ema_decay), float(feature_matching)
        self._validate = validate
        shapes = [tuple(v.shape) for v in generator.variables]
        if shapes != [tuple(v.shape) for v in ema_generator.variables]:
            raise InvkerasError("gan: the EMA generator's variables do not match the generator's")
        ema_generator.set_weights(generator.get_weights())
        beta_1, beta_2 = ADAM_BETAS
        self.g_optimizer = keras.optimizers.Adam(g_learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=ADAM_EPSILON)
        self.d_optimizer = keras.optimizers.Adam(d_learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=ADAM_EPSILON)
        self.g_optimizer.build(generator.trainable_variables)
        self.d_optimizer.build(discriminator.trainable_variables)
        self.noise = keras.random.SeedGenerator(seed)
        self._step = _compiled(self._train_step)

    # --- the Trainee protocol -----------------------------------------------------------

    def state_variables(self):
        return unique([*self.generator.variables, *self.discriminator.variables, *self.ema_generator.variables,
                       *self.g_optimizer.variables, *self.d_optimizer.variables, self.noise.state])

    def weight_variables(self):
        """What early stopping keeps the best of: the EMA generator, the model that is saved."""
        return list(self.ema_generator.variables)

    def train_step(self, batch):
        x = ops.convert_to_tensor(np.asarray(batch["x"], "float32"))
        h = ops.convert_to_tensor(np.asarray(batch["h"], "float32"))
        expected = self.batch_size * self.d_steps
        if int(x.shape[0]) != expected:
            raise InvkerasError(f"gan: a training step needs {expected} pairs (batch size x d_steps), got {x.shape[0]}")
        logs = self._step(x, h)
        return {k: float(ops.convert_to_numpy(v)) for k, v in logs.items()}

    def validate(self):
        return dict(self._validate()) if self._validate else {}

    # --- one step ---------------------------------------------------------------------

    def _noise(self):
        return keras.random.normal((self.batch_size, self.noise_dim), seed=self.noise)

    def _train_step(self, x, h):
        G, D, b = self.generator, self.discriminator, self.batch_size
        d_losses, real_scores, fake_scores = [], [], []
        for i in range(self.d_steps):
            x_real, h_real = x[i * b : (i + 1) * b], h[i * b : (i + 1) * b]
            fake = ops.stop_gradient(G({"h": h_real, "eps": self._noise()}, training=True))

            def d_loss(x_real=x_real, h_real=h_real, fake=fake):
                # One call on real and fake together: D has no batch statistics, so this equals
                # two calls, with one power iteration per D step.
                scores, _ = D({"x": ops.concatenate([x_real, fake], axis=0),
                               "h": ops.concatenate([h_real, h_real], axis=0)}, training=True)
                real, fake_score = scores[:b], scores[b:]
                return discriminator_hinge_loss(real, fake_score), (ops.mean(real), ops.mean(fake_score))

            loss, (real, fake_mean), grads = _gradients(d_loss, D.trainable_variables)
            self.d_optimizer.apply(grads, D.trainable_variables)
            d_losses.append(loss)
            real_scores.append(real)
            fake_scores.append(fake_mean)

        x_g, h_g = x[-b:], h[-b:]
        eps = self._noise()

        def g_loss():
            fake = G({"h": h_g, "eps": eps}, training=True)
            if self.feature_matching > 0:
                scores, phi = D({"x": ops.concatenate([fake, x_g], axis=0),
                                 "h": ops.concatenate([h_g, h_g], axis=0)}, training=True)
                adversarial = generator_hinge_loss(scores[:b])
                matching = feature_matching_loss(ops.stop_gradient(phi[b:]), phi[:b])
                return adversarial + self.feature_matching * matching, (adversarial, matching)
            scores, _ = D({"x": fake, "h": h_g}, training=True)
            adversarial = generator_hinge_loss(scores)
            return adversarial, (adversarial, ops.zeros(()))

        g_total, (g_adversarial, matching), grads = _gradients(g_loss, G.trainable_variables)
        self.g_optimizer.apply(grads, G.trainable_variables)
        ema_update(self.ema_generator.variables, G.variables,
                   ema_decay_at(self.g_optimizer.iterations, self.ema_decay))

        d_loss_mean = ops.mean(ops.stack(d_losses))
        logs = {"loss": d_loss_mean + g_total, "d_loss": d_loss_mean, "g_loss": g_adversarial,
                "d_real": ops.mean(ops.stack(real_scores)), "d_fake": ops.mean(ops.stack(fake_scores))}
        if self.feature_matching > 0:
            logs["feature_matching"] = matching
        return logs
