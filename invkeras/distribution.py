"""Where and how computation runs: tf.distribute strategies and backend-specific compilation.

This is one of the few modules allowed to touch TensorFlow or JAX directly; models and
samplers call `compile_function` instead of `tf.function`/`jax.jit` so they stay
backend-neutral.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Literal

import keras

from invkeras.errors import InvkerasError

StrategyName = Literal["auto", "mirrored", "default"]
STRATEGIES = ("auto", "mirrored", "default")


def get_strategy(name: str = "auto"):
    """Return a tf.distribute strategy.

    auto: MirroredStrategy when more than one GPU is visible, else the default strategy.
    mirrored: MirroredStrategy over all visible GPUs, or over all logical CPUs if none.
    MultiWorkerMirroredStrategy is deliberately absent: it fails with Keras 3 `fit`.
    """
    if name not in STRATEGIES:
        raise InvkerasError(f"--strategy: unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    if keras.backend.backend() != "tensorflow":
        if name == "mirrored":
            raise InvkerasError("--strategy mirrored needs KERAS_BACKEND=tensorflow")
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def strategy_scope(strategy):
    """`with strategy_scope(s):` works for a TF strategy and for None (JAX)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def num_replicas(strategy) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def split_logical_cpus(count: int = 2) -> None:
    """Split the physical CPU into `count` logical devices (must run before TF initialises)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def compile_function(fn: Callable, *, jit: bool = True) -> Callable:
    """Compile `fn` once for the active Keras backend (tf.function+XLA, or jax.jit)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn) if jit else fn
    return fn
