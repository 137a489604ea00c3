"""Adversarial examples and robust accuracy: PGD and FGSM under an L-infinity bound (Madry et al. 2018).

The budget `epsilon` is on the [0, 1] pixel scale, as in the literature (MNIST: 0.3). Our
classifiers take raw pixels in [0, 255] and rescale inside, so the attack works in the
model's own input units: the ball is `epsilon * pixel_max` wide and images stay in
[0, pixel_max]. Pass `pixel_max=1.0` for a model that takes [0, 1] inputs.

PGD (projected gradient descent on the negative loss):

    x_0     = clip(x + U(-eps, eps))                     random start (PGD only)
    x_{k+1} = clip(proj_eps(x_k + a * sign(grad_x CE(f(x_k), y))))

with K steps of size a (default 2.5 * eps / K, Madry et al.'s choice) and clip to the
pixel range. FGSM is one step of size eps from x itself. The random start is drawn with
NumPy from an explicit seed, so an attack is a pure function of (model, x, y, seed): a
resumed adversarial training run draws exactly the starts an uninterrupted one would.
The classifier is attacked in inference mode (no dropout).

Only `input_gradient` is backend code (TensorFlow's GradientTape, or jax.grad); the rest is
keras.ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from invkeras.errors import InvkerasError
from invkeras.training import CompiledModelTrainee

PIXEL_MAX = 255.0  # our classifiers' input scale: raw pixels
STEP_SIZE_FACTOR = 2.5  # default step size = 2.5 * epsilon / steps (Madry et al. 2018)


def default_step_size(epsilon: float, steps: int) -> float:
    return STEP_SIZE_FACTOR * float(epsilon) / int(steps)


@dataclass(frozen=True)
class Attack:
    """An L-inf attack: `method` pgd (random start, K projected sign steps) or fgsm (one step of eps)."""

    epsilon: float
    steps: int = 10
    step_size: float | None = None
    method: str = "pgd"

    def __post_init__(self):
        if self.method not in ("pgd", "fgsm"):
            raise InvkerasError(f"attack: unknown method {self.method!r}; choose pgd or fgsm")
        if not 0.0 <= self.epsilon <= 1.0:
            raise InvkerasError(f"attack: epsilon {self.epsilon} is outside [0, 1] (it is on the [0, 1] pixel scale)")
        if self.steps < 1:
            raise InvkerasError(f"attack: steps must be >= 1, got {self.steps}")
        if self.method == "fgsm":
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "step_size", float(self.epsilon))
        elif self.step_size is None:
            object.__setattr__(self, "step_size", default_step_size(self.epsilon, self.steps))
        if self.step_size < 0:
            raise InvkerasError(f"attack: step size must be >= 0, got {self.step_size}")

    @property
    def random_start(self) -> bool:
        return self.method == "pgd"

    def describe(self) -> dict[str, Any]:
        """How metadata records the attack."""
        return {"method": self.method, "norm": "linf", "epsilon": float(self.epsilon), "steps": int(self.steps),
                "step_size": float(self.step_size), "random_start": self.random_start, "pixel_range": [0.0, 1.0],
                "loss": "cross-entropy", "model_mode": "inference"}

    def label(self) -> str:
        """Short name for tables: 'PGD-10, eps 0.3'."""
        name = f"PGD-{self.steps}" if self.method == "pgd" else "FGSM"
        return f"{name}, eps {self.epsilon:g}"


# --- the one backend-specific piece ---------------------------------------------------


def _tf_gradient(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def gradient(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = _loss(model, x, y)
            total = tf.reduce_sum(loss)
        return tape.gradient(total, x), loss

    return gradient


def _jax_gradient(model):
    """Compiled once per model; the weights are arguments (`stateless_call`), so the function
    keeps up with a model that trains between calls (adversarial training)."""
    import jax
    import keras

    def total(x, y, trainable, non_trainable):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return loss.sum(), loss

    grad = jax.jit(jax.grad(total, has_aux=True))
    return lambda x, y: grad(x, y, [v.value for v in model.trainable_variables],
                             [v.value for v in model.non_trainable_variables])


def _loss(model, x, y):
    import keras

    logits = model(x, training=False)
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


_GRADIENTS: dict[int, tuple[Any, Any]] = {}  # a few recent models' compiled gradient functions
_CACHED_MODELS = 4


def input_gradient(model, x, y):
    """(d sum_i CE(f(x_i), y_i) / dx, per-example CE): the gradient of the loss w.r.t. the input.

    Summed, not averaged, so each example's gradient does not depend on the batch size.
    """
    import keras

    backend = keras.backend.backend()
    cached = _GRADIENTS.get(id(model))
    if cached is None or cached[0] is not model:
        if backend == "tensorflow":
            fn = _tf_gradient(model)
        elif backend == "jax":
            fn = _jax_gradient(model)
        else:
            raise InvkerasError(f"adversarial examples: the Keras backend '{backend}' is not supported "
                                "(use tensorflow or jax)")
        cached = _GRADIENTS[id(model)] = (model, fn)
        while len(_GRADIENTS) > _CACHED_MODELS:
            del _GRADIENTS[next(iter(_GRADIENTS))]
    return cached[1](keras.ops.convert_to_tensor(x, "float32"), keras.ops.convert_to_tensor(y, "int32"))


# --- attacks ----------------------------------------------------------------------


def random_start(shape: Sequence[int], epsilon: float, seed, pixel_max: float = PIXEL_MAX) -> np.ndarray:
    """The uniform random start in [-eps, eps] (model units), a pure function of `seed`."""
    bound = float(epsilon) * pixel_max
    return np.random.default_rng(seed).uniform(-bound, bound, size=tuple(shape)).astype(np.float32)


def perturb(model, x, y, attack: Attack, *, seed=0, pixel_max: float = PIXEL_MAX) -> np.ndarray:
    """Adversarial versions of images `x` (model units, [0, pixel_max]) with labels `y`: float32, same shape.

    Every output lies within `attack.epsilon * pixel_max` of its input (L-inf) and in the
    pixel range. `seed` (an int or a sequence of ints, e.g. [run seed, step]) fixes PGD's
    random start.
    """
    from keras import ops

    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    bound = float(attack.epsilon) * pixel_max
    alpha = float(attack.step_size) * pixel_max
    lower, upper = ops.maximum(x - bound, 0.0), ops.minimum(x + bound, pixel_max)
    adv = ops.convert_to_tensor(x)
    if attack.random_start:
        adv = ops.clip(adv + random_start(x.shape, attack.epsilon, seed, pixel_max), lower, upper)
    for _ in range(attack.steps):
        gradient, _ = input_gradient(model, adv, y)
        adv = ops.clip(adv + alpha * ops.sign(gradient), lower, upper)  # project onto the ball, then the range
    return np.asarray(ops.convert_to_numpy(adv), np.float32)


def pgd(model, x, y, *, epsilon: float, steps: int = 10, step_size: float | None = None, seed=0,
        pixel_max: float = PIXEL_MAX) -> np.ndarray:
    """PGD with a random start (Madry et al. 2018); see `perturb`."""
    return perturb(model, x, y, Attack(epsilon, steps, step_size, "pgd"), seed=seed, pixel_max=pixel_max)


def fgsm(model, x, y, *, epsilon: float, pixel_max: float = PIXEL_MAX) -> np.ndarray:
    """The fast gradient sign method (Goodfellow et al. 2015): one step of size eps."""
    return perturb(model, x, y, Attack(epsilon, method="fgsm"), pixel_max=pixel_max)


def predicted_labels(model, x, batch_size: int = 256) -> np.ndarray:
    """Predicted classes of images x."""
    import keras

    parts = [np.argmax(keras.ops.convert_to_numpy(model(np.asarray(x[i : i + batch_size], np.float32),
                                                         training=False)), axis=-1)
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def robust_accuracy(model, x, y, attack: Attack, *, batch_size: int = 256, seed: int = 0,
                    pixel_max: float = PIXEL_MAX) -> tuple[float, float]:
    """(clean accuracy, accuracy under `attack`) on the same images; batch b's start uses seed [seed, b]."""
    y = np.asarray(y).astype(np.int64)
    clean = predicted_labels(model, x, batch_size) == y
    robust = []
    for b, start in enumerate(range(0, len(x), batch_size)):
        adv = perturb(model, x[start : start + batch_size], y[start : start + batch_size], attack, seed=[seed, b],
                      pixel_max=pixel_max)
        robust.append(predicted_labels(model, adv, batch_size) == y[start : start + batch_size])
    return float(clean.mean()), float(np.concatenate(robust).mean())


# --- adversarial training -----------------------------------------------------------

ATTACK_STREAM = 1  # keeps the random starts' seeds [run seed, 1, step] apart from other draws


class AdversarialTrainee(CompiledModelTrainee):
    """A compiled classifier trained on adversarial examples only (Madry et al. 2018: min over
    weights of the loss at the attack's maximiser), not a mix with the clean batch.

    Each step attacks the current model on the batch, then takes one optimiser step on the
    result. PGD's random start is seeded by [seed, ATTACK_STREAM, step], where step is the
    optimiser's iteration count: it is part of the resume state, so a resumed run draws
    exactly the starts an uninterrupted one would.
    """

    def __init__(self, model, *, attack: Attack, seed: int, inputs, targets, validate,
                 pixel_max: float = PIXEL_MAX):
        super().__init__(model, inputs=inputs, targets=targets, validate=validate)
        self.attack, self.seed, self.pixel_max = attack, int(seed), pixel_max

    def train_step(self, batch):
        import keras

        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        x, y = self._inputs(batch), self._targets(batch)
        adversarial = perturb(self.model, x, y, self.attack, seed=[self.seed, ATTACK_STREAM, step],
                              pixel_max=self.pixel_max)
        return self.model.train_on_batch(adversarial, y, return_dict=True)
