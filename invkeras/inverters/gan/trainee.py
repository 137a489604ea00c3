"""The GAN's training step: D steps and a G step with their own Adam optimisers, then the EMA.

One step of the shared loop (`invkeras.training`) receives `d_steps * batch_size` pairs: each
D step takes its own `batch_size` of them, and the G step conditions on the h of the last
chunk. The trainee declares every variable a step touches (both networks with their
spectral-norm vectors and batch-norm statistics, the EMA generator, both optimisers, and the
state of the noise generator), so a resumed run continues exactly where a killed one stopped.

The only backend-specific code is how gradients are taken and how the step is compiled
(`_gradients`, `_compile`). Under TensorFlow the step is a tf.function and gradients come
from a GradientTape; the step mutates the variables as it goes. JAX has no tape and its
compiled functions must be pure, so there the whole step runs inside one
`keras.StatelessScope` holding every state variable's value: reads see the scope's values,
every assignment (optimiser updates, the EMA, spectral-norm and batch-norm statistics, the
noise generator) is recorded in it, and the jitted function returns the new values, which
are written back into the variables after the call. A gradient is `jax.value_and_grad` of
the loss as a function of the differentiated variables' values, evaluated in an inner scope
whose other values are the outer scope's current ones; the updates the loss makes on its
way (spectral-norm vectors, batch statistics) are carried back into the outer scope. So the
same `_train_step` code serves both backends.
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


BACKENDS = ("tensorflow", "jax")


def _require_backend() -> str:
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise InvkerasError(f"train-inverter --kind gan: training needs KERAS_BACKEND=tensorflow or jax, not "
                            f"{backend}; sampling a trained GAN works under any backend")
    return backend


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
        self.backend = _require_backend()
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
        self._scope = None  # under JAX, the StatelessScope of the step being traced
        self._step = self._compile()

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

    # --- the backend-specific part -----------------------------------------------------

    def _compile(self):
        """The step as one compiled function: `fn(x, h) -> logs` that updates the variables."""
        if self.backend == "tensorflow":
            import tensorflow as tf

            # No XLA: measured slower on 2 CPU cores for the PixelCNN too.
            return tf.function(self._train_step, jit_compile=False, reduce_retracing=True, autograph=False)
        import jax

        variables = self.state_variables()

        def pure(values, x, h):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                self._scope = scope
                try:
                    logs = self._train_step(x, h)
                finally:
                    self._scope = None
            return [_current(scope, v, old) for v, old in zip(variables, values)], logs

        compiled = jax.jit(pure)

        def step(x, h):
            new_values, logs = compiled([v.value for v in variables], x, h)
            for variable, value in zip(variables, new_values):
                variable.assign(value)
            return logs

        return step

    def _gradients(self, loss_fn, variables):
        """(loss, aux, gradients of loss w.r.t. `variables`) for `loss_fn() -> (loss, aux)`."""
        if self.backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss, aux = loss_fn()
            return loss, aux, tape.gradient(loss, variables)
        import jax

        outer, state = self._scope, self.state_variables()
        differentiated = {id(v) for v in variables}

        def loss_of(values):
            given = dict(zip((id(v) for v in variables), values))
            mapping = [(v, given[id(v)] if id(v) in given else _current(outer, v)) for v in state]
            with keras.StatelessScope(state_mapping=mapping) as inner:
                loss, aux = loss_fn()
            updates = [(v, inner.get_current_value(v)) for v in state if id(v) not in differentiated]
            return loss, (aux, updates)

        values = [_current(outer, v) for v in variables]
        (loss, (aux, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(values)
        for update in updates:
            outer.add_update(update)
        return loss, aux, grads

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

            loss, (real, fake_mean), grads = self._gradients(d_loss, D.trainable_variables)
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

        g_total, (g_adversarial, matching), grads = self._gradients(g_loss, G.trainable_variables)
        self.g_optimizer.apply(grads, G.trainable_variables)
        ema_update(self.ema_generator.variables, G.variables,
                   ema_decay_at(self.g_optimizer.iterations, self.ema_decay))

        d_loss_mean = ops.mean(ops.stack(d_losses))
        logs = {"loss": d_loss_mean + g_total, "d_loss": d_loss_mean, "g_loss": g_adversarial,
                "d_real": ops.mean(ops.stack(real_scores)), "d_fake": ops.mean(ops.stack(fake_scores))}
        if self.feature_matching > 0:
            logs["feature_matching"] = matching
        return logs


def _current(scope, variable, default=None):
    """`variable`'s value in a StatelessScope (its value on entry unless the step assigned it)."""
    value = scope.get_current_value(variable)
    if value is not None:
        return value
    return default if default is not None else variable.value
