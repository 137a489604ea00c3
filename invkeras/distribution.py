"""Where and how computation runs: device strategies for both backends, and compilation.

This is one of the few modules allowed to touch TensorFlow or JAX directly; models and
samplers call `compile_function` instead of `tf.function`/`jax.jit` so they stay
backend-neutral, and training code asks `get_strategy` for the device layout.

`--strategy` names one of four choices; each backend does the ones it can and refuses the
other in one line:

==================  ===========================================  ================================
strategy            KERAS_BACKEND=tensorflow                     KERAS_BACKEND=jax
==================  ===========================================  ================================
``auto``            MirroredStrategy when >1 GPU, else default    DataParallel when >1 local
                                                                 device, else default
``mirrored``        MirroredStrategy over all GPUs (or all        refused: use data-parallel
                    logical CPUs when there is none)
``data-parallel``   refused: use mirrored                         keras.distribution.DataParallel
                                                                 over all local devices
``default``         one device                                   one device
==================  ===========================================  ================================

Both data-parallel forms are synchronous replicas: the weights are copied to every device,
each global batch is split evenly across them, and the gradients are averaged, so a step on
N devices is the step on one device with the same global batch (up to the order of float
additions; `tests/test_distribution.py` and `tests/jax_subset/test_data_parallel.py` check it on
two CPU devices).

Multi-host JAX: every process calls `initialize_multi_host()` (`jax.distributed.initialize`,
through Keras) before anything else touches JAX (the CLI does when KERAS_DISTRIBUTION_*
variables are set), then trains with ``--strategy data-parallel``: `DataParallel` then spans
every process's devices, and the training loop hands each process its own slice of every
global batch (`process_share`). `tests/jax_subset/test_multi_process.py` runs two such
processes on one machine (CPU collectives through gloo); several real hosts have not been run.

MultiWorkerMirroredStrategy is deliberately absent: it fails with Keras 3 `fit`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Literal

import keras
import numpy as np

from invkeras.errors import InvkerasError

StrategyName = Literal["auto", "mirrored", "data-parallel", "default"]
STRATEGIES = ("auto", "mirrored", "data-parallel", "default")
_WRONG_BACKEND = {
    "mirrored": ("tensorflow", "--strategy mirrored is TensorFlow's MirroredStrategy; under KERAS_BACKEND={backend} "
                               "use --strategy data-parallel (or auto)"),
    "data-parallel": ("jax", "--strategy data-parallel is JAX's keras.distribution.DataParallel; under "
                             "KERAS_BACKEND={backend} use --strategy mirrored (or auto)"),
}


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise InvkerasError(f"--strategy: unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    return name


def get_strategy(name: str = "auto"):
    """The device strategy for `name` under the active backend (see the module docstring):
    a tf.distribute strategy under TensorFlow, a keras.distribution.DataParallel or None
    (one device) under JAX."""
    check_strategy(name)
    backend = keras.backend.backend()
    if name in _WRONG_BACKEND and backend != _WRONG_BACKEND[name][0]:
        raise InvkerasError(_WRONG_BACKEND[name][1].format(backend=backend))
    if backend == "jax":
        return _jax_strategy(name)
    if backend != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def _jax_strategy(name: str):
    """DataParallel over every device (all processes' in a multi-host run), or None for one."""
    devices = keras.distribution.list_devices()
    if name == "default" or (name == "auto" and len(devices) < 2):
        return None
    return keras.distribution.DataParallel(devices=devices)


def strategy_scope(strategy):
    """`with strategy_scope(s):` builds and trains under strategy `s`.

    A TF strategy's scope places the variables it creates; the model remembers its strategy
    afterwards. A JAX distribution is read at every step (to shard the batch), so under JAX
    the scope must cover training as well as building the model. None: one device.
    """
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def num_replicas(strategy) -> int:
    """How many devices share each global batch."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return int(np.size(strategy.device_mesh.devices))


def check_batch_split(strategy, batch_size: int, *, remainders: dict[str, int] | None = None) -> None:
    """Refuse, in one line, a batch that JAX's DataParallel cannot split evenly over its
    devices (TF's MirroredStrategy splits uneven batches itself). `remainders` names the
    sets trained or evaluated in batches of `batch_size` whose last, smaller batch counts too,
    by their number of examples: {"train": 201, ...}."""
    replicas = num_replicas(strategy)
    if replicas < 2 or hasattr(strategy, "num_replicas_in_sync"):
        return
    if batch_size % replicas:
        raise InvkerasError(f"--batch-size {batch_size}: data-parallel training over {replicas} devices needs a batch "
                            f"size divisible by {replicas}")
    for name, count in (remainders or {}).items():
        last = count % batch_size
        if last % replicas:
            raise InvkerasError(f"--batch-size {batch_size}: the {name} set's last batch holds {last} of its {count} "
                                f"examples, which do not split evenly over {replicas} devices; pick a batch size or "
                                f"example count that leaves a multiple of {replicas}")


def process_share(indices: np.ndarray) -> np.ndarray:
    """The part of a global batch (its example indices) that this process feeds.

    One process (every run but a multi-host JAX one) feeds all of it. With several JAX
    processes under a distribution, keras assembles the global batch from every process's
    local part, so process p feeds the p-th of `process_count` equal chunks.
    """
    if keras.backend.backend() != "jax":
        return indices
    import jax

    count = jax.process_count()
    if count == 1 or keras.distribution.distribution() is None:
        return indices
    if len(indices) % count:
        raise InvkerasError(f"multi-host training: a batch of {len(indices)} does not split over {count} processes")
    return np.split(indices, count)[jax.process_index()]


def initialize_multi_host(coordinator_address: str | None = None, num_processes: int | None = None,
                          process_id: int | None = None) -> None:
    """Join a multi-host JAX run (`jax.distributed.initialize`, through Keras); on a managed
    cluster (SLURM, TPU pods) the arguments are found from the environment."""
    if keras.backend.backend() != "jax":
        raise InvkerasError(f"multi-host training needs KERAS_BACKEND=jax, not {keras.backend.backend()}")
    keras.distribution.initialize(job_addresses=coordinator_address, num_processes=num_processes,
                                  process_id=process_id)


def split_logical_cpus(count: int = 2) -> None:
    """Split the physical CPU into `count` logical devices (must run before TF initialises).

    JAX's equivalent is the environment variable
    XLA_FLAGS=--xla_force_host_platform_device_count=N, set before JAX is imported.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def enable_compilation_cache() -> str | None:
    """Under JAX, keep compiled programs on disk so the next process reuses them.

    JAX compiles every program it runs, down to each operation run eagerly, and on a CPU that
    dominates short commands: loading a small PixelCNN compiles a few hundred tiny programs
    (30-70 s on the 2-core development machine under load; about 7 s with this cache warm).
    The directory is $INVKERAS_JAX_CACHE, else JAX's own $JAX_COMPILATION_CACHE_DIR, else
    ~/.cache/invkeras/jax; INVKERAS_JAX_CACHE=off turns the cache off. Programs are cached
    whatever their compile time. Returns the directory (None: off, or not JAX).
    """
    import os
    from pathlib import Path

    if keras.backend.backend() != "jax":
        return None
    setting = os.environ.get("INVKERAS_JAX_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if setting and setting.lower() == "off":
        return None
    directory = str(Path(setting or Path.home() / ".cache" / "invkeras" / "jax").expanduser().resolve())
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def training_jit(setting: str | bool = "auto") -> bool:
    """`jit_compile` for `Model.compile` from a "true"/"false"/"auto" setting.

    "auto" is False under TensorFlow, where XLA measured slower for these models on 2 CPU
    cores (`make bench`) and slow to compile, and True under JAX, whose uncompiled path
    dispatches every operation on its own (about 4x slower per PixelCNN step on CPU, and no
    faster to start).
    """
    text = str(setting).lower()
    if text in ("true", "false"):
        return text == "true"
    if text != "auto":
        raise InvkerasError(f"jit_compile: expected true, false or auto, got {setting!r}")
    return keras.backend.backend() == "jax"


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
