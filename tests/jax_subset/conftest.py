"""The JAX subset: tests that run in `.venv-jax` (JAX, keras and tfp-nightly, no TensorFlow)
with KERAS_BACKEND=jax. `make test` runs them after the main suite; in the main environment,
under the TensorFlow backend, every test here is skipped with one reason. Helpers for running
invkeras in a fresh process (optionally with TensorFlow blocked) are in `jax_helpers.py`."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _jax_backend_only():
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("JAX subset: runs in .venv-jax with KERAS_BACKEND=jax (`make test` does it after the main suite)")
    from invkeras.distribution import enable_compilation_cache

    enable_compilation_cache()
