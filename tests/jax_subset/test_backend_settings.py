"""Settings that differ under JAX: the jit default and the on-disk compilation cache."""

from __future__ import annotations

from invkeras.distribution import enable_compilation_cache, training_jit


def test_training_is_compiled_by_default_under_jax():
    assert training_jit("auto") is True  # JAX's uncompiled path runs one operation at a time
    assert training_jit("false") is False


def test_the_compilation_cache_directory_and_off_switch(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("INVKERAS_JAX_CACHE", str(tmp_path / "cache"))
        assert enable_compilation_cache() == str((tmp_path / "cache").resolve())
        assert jax.config.jax_compilation_cache_dir == str((tmp_path / "cache").resolve())
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        monkeypatch.setenv("INVKERAS_JAX_CACHE", "off")
        assert enable_compilation_cache() is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_importing_invkeras_keeps_cpu_convolutions_on_xla_own_kernels():
    """The flag reached this process's XLA before its CPU client started (XLA aborts at start
    on a flag it does not know, so a run that gets here also shows the pinned jaxlib takes it)."""
    import os

    import jax

    from invkeras.backend_setup import EIGEN_CONVOLUTIONS

    assert EIGEN_CONVOLUTIONS in os.environ["XLA_FLAGS"]
    assert jax.devices()[0].platform == "cpu"
