"""The same weights give the same numbers under TensorFlow and JAX.

The TensorFlow side runs here; the JAX side in `.venv-jax` (which `make test` builds), in one
subprocess running `tests/backend_agreement.py` on everything the TensorFlow side wrote.
Without that environment these tests skip. Checked: the PixelCNN++'s per-image
log-likelihood (both likelihoods, vector and spatial h), two GAN training steps (the JAX step
is written differently: a StatelessScope and jax.value_and_grad instead of a GradientTape),
and the PGD attack's input gradient.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

import backend_agreement  # tests/backend_agreement.py

REPO_ROOT = Path(__file__).resolve().parents[1]
JAX_PYTHON = REPO_ROOT / ".venv-jax" / "bin" / "python"
PIXELCNN_CASES = {  # name: (likelihood, image shape, h shape)
    "categorical": ("categorical", (8, 8, 1), (6,)),
    "logistic_mixture": ("logistic_mixture", (8, 8, 3), (4, 4, 5)),
}

pytestmark = [
    pytest.mark.skipif(not JAX_PYTHON.exists(), reason=".venv-jax is absent (`make install-jax` builds it)"),
    pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the reference side runs under TensorFlow"),
]


def _perturbed(weights, rng, scale=0.05):
    """Every float weight moved a little, so zero-initialised projections (h's) matter too."""
    return [w + scale * rng.normal(size=w.shape).astype(w.dtype) if np.issubdtype(w.dtype, np.floating) else w
            for w in weights]


def _save_weights(path: Path, weights) -> None:
    np.savez(path, **{f"w{i}": np.asarray(w) for i, w in enumerate(weights)})


def _pixelcnn_inputs(directory: Path, likelihood, image_shape, h_shape) -> None:
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn
    from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

    rng = np.random.default_rng(0)
    conditioning = "vector" if len(h_shape) == 1 else "spatial"
    net = PixelCNNConfig.from_scale("tiny", image_shape=image_shape, likelihood=likelihood,
                                    conditioning=conditioning, h_shape=h_shape)
    model = build_pixelcnn(net)
    x = rng.integers(0, 256, size=(6, *image_shape)).astype(np.uint8)
    h = rng.normal(size=(6, *h_shape)).astype(np.float32)
    initialize_weight_norm(model, {"x": x.astype("float32"), "h": h})
    model.set_weights(_perturbed(model.get_weights(), rng))
    model.save(directory / "model.keras")
    np.savez(directory / "batch.npz", x=x, h=h)


def _gan_inputs(directory: Path) -> None:
    rng = np.random.default_rng(1)
    _, generator, discriminator, _ = backend_agreement.gan_networks()
    _save_weights(directory / "gan_weights.npz",
                  _perturbed(generator.get_weights(), rng, 0.01) + _perturbed(discriminator.get_weights(), rng, 0.01))
    batch = backend_agreement.GAN_BATCH * backend_agreement.GAN_D_STEPS
    np.savez(directory / "gan_batch.npz",
             x=rng.integers(0, 256, size=(batch, *backend_agreement.GAN_IMAGE_SHAPE)).astype(np.float32),
             h=rng.normal(size=(batch, *backend_agreement.GAN_H_SHAPE)).astype(np.float32))


def _gradient_inputs(directory: Path) -> None:
    from invkeras.classifiers.architectures import build_classifier

    rng = np.random.default_rng(2)
    _save_weights(directory / "classifier_weights.npz", build_classifier("conv", (20, 20, 1), 4).get_weights())
    np.savez(directory / "classifier_batch.npz", x=rng.uniform(0, 255, size=(5, 20, 20, 1)).astype(np.float32),
             y=rng.integers(0, 4, size=5))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{case: (TensorFlow's result, JAX's result)} for every case, the JAX side in one process."""
    root = tmp_path_factory.mktemp("agreement")
    cases = {}
    for name, (likelihood, image_shape, h_shape) in PIXELCNN_CASES.items():
        directory = root / "pixelcnn" / name
        directory.mkdir(parents=True)
        _pixelcnn_inputs(directory, likelihood, image_shape, h_shape)
        cases[f"pixelcnn/{name}"] = directory
    for what, prepare in (("gan", _gan_inputs), ("gradient", _gradient_inputs)):
        (root / what).mkdir()
        prepare(root / what)
        cases[what] = root / what

    jobs = [f"{case.split('/')[0]}={directory}" for case, directory in cases.items()]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([str(JAX_PYTHON), backend_agreement.__file__, *jobs], capture_output=True, text=True,
                          env=env, timeout=900, cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        pytest.fail(f"the JAX side failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")

    out = {}
    for case, directory in cases.items():
        function = backend_agreement.FUNCTIONS[case.split("/")[0]]
        with np.load(directory / "result-jax.npz") as saved:
            out[case] = (function(directory), {k: saved[k] for k in saved.files})
    return out


@pytest.mark.parametrize("name", sorted(PIXELCNN_CASES))
def test_pixelcnn_log_likelihood_agrees_across_backends(results, name):
    tf_nll, jax_nll = (side["nll"] for side in results[f"pixelcnn/{name}"])
    # Per sub-pixel (nats/dim) to 1e-4; per image to 1e-5 relative. Measured: at most 3e-5 nats
    # on 490-nat images (grey) and 3e-3 on 1,500-nat ones (colour), 2e-6 relative: a float32
    # sum of that size cannot agree to 1e-4 nats absolute, whichever backend adds it up.
    dims = np.prod(PIXELCNN_CASES[name][1])
    np.testing.assert_allclose(jax_nll / dims, tf_nll / dims, rtol=0, atol=1e-4)
    np.testing.assert_allclose(jax_nll, tf_nll, rtol=1e-5)


# Two steps move a trained weight by about lr * g (the large Adam epsilon of
# `backend_agreement.gan_steps`): from 3e-6 to 2e-3, most by more than 1e-4, the EMA's by a
# fifth of that. So the weights' updates are compared to 2e-6, below nearly every step; the
# backends were measured at most 4e-7 apart.
WEIGHT_ATOL = 2e-6


def test_gan_training_steps_agree_across_backends(results):
    tf_state, jax_state = results["gan"]
    assert sorted(tf_state) == sorted(jax_state)
    np.testing.assert_array_equal(jax_state["weights"], tf_state["weights"])
    np.testing.assert_allclose(jax_state["losses"], tf_state["losses"], rtol=1e-5, atol=1e-4)
    steps = []
    for i, is_weight in enumerate(tf_state["weights"]):
        start, key = tf_state[f"b{i}"], f"s{i}"
        np.testing.assert_array_equal(jax_state[f"b{i}"], start, err_msg=f"b{i}")
        if is_weight:
            tf_update, jax_update = tf_state[key] - start, jax_state[key] - start
            np.testing.assert_allclose(jax_update, tf_update, rtol=1e-3, atol=WEIGHT_ATOL, err_msg=key)
            steps.append(float(np.abs(tf_update).max()))
        else:
            # Spectral-norm vectors, batch statistics, optimiser slots and counters: they move by
            # 1e-3 to 10 in these steps. Some are rounding noise around zero (the Adam slots of a
            # bias that batch norm cancels: about 1e-6 on either side), hence atol; at 1e-5 this
            # failed in about 1 run of 8.
            np.testing.assert_allclose(jax_state[key], tf_state[key], rtol=1e-4, atol=1e-4, err_msg=key)
    # The tolerance is below the step it checks: most weights moved by ten times it or more.
    assert np.mean(np.asarray(steps) > 10 * WEIGHT_ATOL) > 0.5, sorted(steps)


def test_pgd_input_gradient_agrees_across_backends(results):
    tf_side, jax_side = results["gradient"]
    np.testing.assert_allclose(jax_side["loss"], tf_side["loss"], rtol=1e-5)
    scale = np.abs(tf_side["gradient"]).max()
    np.testing.assert_allclose(jax_side["gradient"], tf_side["gradient"], atol=1e-4 * scale)
