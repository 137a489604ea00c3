"""What `import invkeras` sets before a backend starts: the XLA flag that keeps JAX's CPU
convolutions on XLA's own kernels, and the backend it is chosen for."""

from __future__ import annotations

import json
import os

import pytest

from invkeras import backend_setup
from invkeras.backend_setup import EIGEN_CONVOLUTIONS, configured_backend, prefer_xla_cpu_convolutions


@pytest.fixture
def jax_configured(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(backend_setup, "_jaxlib_version", lambda: (0, 10))


def test_under_jax_the_convolution_flag_is_added_to_the_users_flags(jax_configured, monkeypatch):
    assert prefer_xla_cpu_convolutions() is True
    assert os.environ["XLA_FLAGS"] == EIGEN_CONVOLUTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert prefer_xla_cpu_convolutions() is True
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {EIGEN_CONVOLUTIONS}"
    assert prefer_xla_cpu_convolutions() is False  # already there: not added twice
    assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_a_users_own_ynnpack_setting_is_kept(jax_configured, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert prefer_xla_cpu_convolutions() is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


def test_nothing_is_set_under_tensorflow_or_with_an_older_jaxlib(jax_configured, monkeypatch):
    monkeypatch.setattr(backend_setup, "_jaxlib_version", lambda: (0, 9))
    assert prefer_xla_cpu_convolutions() is False  # an older XLA would abort on an unknown flag
    monkeypatch.setattr(backend_setup, "_jaxlib_version", lambda: None)
    assert prefer_xla_cpu_convolutions() is False
    monkeypatch.setattr(backend_setup, "_jaxlib_version", lambda: (0, 10))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert prefer_xla_cpu_convolutions() is False
    assert "XLA_FLAGS" not in os.environ


def test_the_backend_comes_from_the_environment_then_keras_own_config(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert configured_backend() == "tensorflow"  # no config file
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert configured_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert configured_backend() == "torch"
