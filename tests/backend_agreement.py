"""Computations that must agree across Keras backends, runnable under either one.

`tests/test_cross_backend.py` (main environment, TensorFlow) runs each function here
in-process and again, all in one process (JAX's start-up and compilations are what cost),
in `.venv-jax` as

    KERAS_BACKEND=jax .venv-jax/bin/python tests/backend_agreement.py WHAT=DIR [WHAT=DIR ...]

where each DIR holds the inputs the TensorFlow side wrote (weights, a batch) for the function
FUNCTIONS[WHAT] and receives `result-jax.npz`. Weights travel as arrays in `get_weights()` order:
the same code builds the same layers in the same order under both backends.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _save_weights(path: Path, weights) -> None:
    np.savez(path, **{f"w{i}": np.asarray(w) for i, w in enumerate(weights)})


def _load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"w{i}"] for i in range(len(saved.files))]


# --- PixelCNN++ log-likelihood ------------------------------------------------------------


def pixelcnn_nll(directory: Path) -> dict[str, np.ndarray]:
    """Per-image NLL (nats) of `model.keras` on the batch in `batch.npz`."""
    import keras

    import invkeras.inverters.pixelcnn.network  # noqa: F401  (registers the layers)
    from invkeras.inverters.pixelcnn.kind import per_image_nll_nats

    model = keras.saving.load_model(directory / "model.keras", compile=False)
    with np.load(directory / "batch.npz") as batch:
        arrays = {"x": batch["x"], "h": batch["h"] if "h" in batch.files else None}
    return {"nll": per_image_nll_nats(model, model.pixelcnn_config, arrays)}


# --- one GAN training step ----------------------------------------------------------------

GAN_IMAGE_SHAPE, GAN_H_SHAPE, GAN_BATCH, GAN_D_STEPS, GAN_STEPS = (20, 20, 1), (10,), 8, 2, 2


def gan_networks():
    from invkeras.inverters.gan.network import build_discriminator, build_generator, network_for

    net = network_for("tiny", GAN_IMAGE_SHAPE, GAN_H_SHAPE)
    stats = dict(h_mean=np.zeros(GAN_H_SHAPE, np.float32), h_variance=np.ones(GAN_H_SHAPE, np.float32))
    return (net, build_generator(net, **stats, name="generator"), build_discriminator(net, **stats),
            build_generator(net, **stats, name="generator_ema"))


GAN_ADAM_EPSILON = 1.0


def gan_steps(directory: Path) -> dict[str, np.ndarray]:
    """Every state value after GAN_STEPS steps from the weights in `gan_weights.npz`, with the
    noise fixed (the backends draw different random numbers from one seed): `s<i>` after the
    steps, `b<i>` before them; `weights` marks the generator's and discriminator's trained
    weights and the EMA generator's averaged ones."""
    import keras

    from invkeras.inverters.gan import trainee as trainee_module

    net, generator, discriminator, ema = gan_networks()
    weights = _load_weights(directory / "gan_weights.npz")
    sizes = [len(m.get_weights()) for m in (generator, discriminator)]
    generator.set_weights(weights[: sizes[0]])
    discriminator.set_weights(weights[sizes[0]:])
    # A large Adam epsilon makes the first steps about lr * g instead of lr * sign(g), which
    # would turn rounding noise in a near-zero gradient into a whole step. The optimisers read
    # it when they are made; the module's own value is restored at once, for whatever else
    # runs in this process.
    default_epsilon, trainee_module.ADAM_EPSILON = trainee_module.ADAM_EPSILON, GAN_ADAM_EPSILON
    try:
        trainee = trainee_module.GANTrainee(generator, discriminator, ema, batch_size=GAN_BATCH, d_steps=GAN_D_STEPS,
                                            noise_dim=net.noise_dim, g_learning_rate=1e-3, d_learning_rate=1e-3,
                                            ema_decay=0.9)
    finally:
        trainee_module.ADAM_EPSILON = default_epsilon
    draws = iter(np.random.default_rng(7).normal(size=(16, GAN_BATCH, net.noise_dim)).astype(np.float32))
    trainee._noise = lambda: keras.ops.convert_to_tensor(next(draws))  # called when the step is traced
    with np.load(directory / "gan_batch.npz") as batch:
        x, h = batch["x"], batch["h"]
    variables = [v for v in trainee.state_variables() if v is not trainee.noise.state]
    weights = {id(v) for v in [*generator.trainable_variables, *discriminator.trainable_variables,
                               *ema.trainable_variables]}
    before = [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]
    logs = [trainee.train_step({"x": x, "h": h}) for _ in range(GAN_STEPS)]
    out = {f"s{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(variables)}
    out.update({f"b{i}": value for i, value in enumerate(before)})
    out["weights"] = np.array([id(v) in weights for v in variables])
    out["losses"] = np.array([[step[k] for k in ("d_loss", "g_loss")] for step in logs])
    return out


# --- the PGD attack's input gradient ------------------------------------------------------


def classifier_gradient(directory: Path) -> dict[str, np.ndarray]:
    """d CE / d x of the conv classifier with the weights in `classifier_weights.npz`."""
    from invkeras.classifiers.adversarial import input_gradient
    from invkeras.classifiers.architectures import build_classifier

    model = build_classifier("conv", (20, 20, 1), 4)
    model.set_weights(_load_weights(directory / "classifier_weights.npz"))
    with np.load(directory / "classifier_batch.npz") as batch:
        gradient, loss = input_gradient(model, batch["x"], batch["y"])
    import keras

    return {"gradient": keras.ops.convert_to_numpy(gradient), "loss": keras.ops.convert_to_numpy(loss)}


FUNCTIONS = {"pixelcnn": pixelcnn_nll, "gan": gan_steps, "gradient": classifier_gradient}


def run(jobs: list[str]) -> None:
    """Each job "WHAT=DIR": FUNCTIONS[WHAT] on the inputs in DIR, saved as DIR/result-<backend>.npz."""
    import keras

    for job in jobs:
        what, directory = job.split("=", 1)
        np.savez(Path(directory) / f"result-{keras.backend.backend()}.npz", **FUNCTIONS[what](Path(directory)))


if __name__ == "__main__":
    from invkeras.distribution import enable_compilation_cache

    enable_compilation_cache()
    run(sys.argv[1:])
