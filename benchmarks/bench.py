"""Benchmark: invkeras' conditional PixelCNN++ against `tfp.distributions.PixelCNN`.

Run with `make bench` (or `python benchmarks/bench.py`; `--quick` is a smoke run of a couple
of minutes on 8x8 images whose numbers mean nothing). Both columns are measured in one run on
the same machine, with the same synthetic data: random uint8 images (as float32 0..255) and
random normal conditioning vectors h of size `cond_dim`. Both sides use the discretised
logistic-mixture likelihood and vector conditioning.

How it measures: long-lived workers, interleaved rounds
-------------------------------------------------------
A shared machine's load can drift by a factor of two within minutes. Timing one side after
the other therefore measures the load as much as the code. Instead, every measurement gets
its own long-lived worker process (its own XLA caches, allocator pools
and weights: nothing mixes between them) which builds its model once, warms up, and then
waits (a phase's workers import side by side, then set up one at a time, so no compilation
competes with another). The coordinator (this process, which only lists the GPUs) sends the workers
"run a round of N timed steps" in turn, TFP, ours, TFP, ours ..., over a line protocol on
the workers' stdin/stdout (one JSON object per line; `serve`). Every other round runs the
workers in reverse order (A B C, C B A, A B C, ...), so a load that rises steadily favours
no side. Within a round the sides run seconds apart under about the same load, so each
round gives its own ratio ours / TFP, and the reported ratio is the median of the per-round
ratios with their min and max: the spread shows how much the load moved the ratio, instead
of hiding it in one number. A round's rate is 1 / the median of its step times; a side's
rate is the median over rounds. The 1-minute load average is recorded before and after each
phase and at the start of every round.

What is measured
----------------
* Training speed at equal size (28x28x1, 64 filters, 3 resnet layers per block, three
  resolutions, 10 mixture components, dropout 0.5, batch 32), `rounds` rounds of
  `steps_per_round` steps after `warmup_steps` untimed ones (tracing, compilation,
  weight-norm init). Ours is the model exactly as `invkeras train-inverter` builds it
  (`build_network`: Adam with the per-step decay and the NLL loss, weight norm with
  data-dependent init), stepped with `train_on_batch` (the compiled train function `fit`
  runs), with XLA (`jit_compile=True`) and without. TFP's network is tf-keras layers; we train
  it with a `tf.function` train step (GradientTape over `dist.network.trainable_variables`,
  the same Adam schedule, loss -mean log_prob, dropout on), without XLA: with
  `jit_compile=True` that step runs tens of times slower on a CPU, so it is not TFP's fast
  path. Its docstring says weight norm "works only in Eager mode"; in fact the `WeightNorm` wrapper's call is itself a
  `tf.function` and its data-dependent init runs inside our compiled step, which the worker
  checks, so TFP keeps its default `use_weight_norm=True` and both sides do the same kind of
  work. TFP's docs show a second recipe (a tf_keras Model whose output is log_prob,
  `add_loss`, compile), stepped with `train_on_batch`; it takes part in the rounds too, and
  the TFP recipe with the higher median rate is the baseline of every training ratio (each
  round's ratio uses that recipe's rate in the same round).
* Training against the machine's limit. One train step's FLOPs come from the layer shapes:
  2 FLOPs per multiply-add x 3 (forward pass, input gradients, weight gradients) x batch x
  the forward pass's multiply-adds per image (`invkeras.inverters.pixelcnn.flops`: every
  convolution, transposed convolution, 1x1 layer and h projection). It leaves out
  elementwise work (activations, gates, weight norm, the loss, Adam), about 1% of the FLOPs
  here. The worker checks the formula against a count from TensorFlow's graph of the same
  train step (Keras' own `train_step`, traced; XLA compiles this graph): 2 FLOPs per
  multiply-add of every convolution, convolution gradient and matmul in it, and reports
  TensorFlow's profiler count of all ops beside it. The peak is the machine's float32
  matmul rate as this run finds it: `keras.ops.matmul` of two `peak_size`^2 matrices (TF
  backend, eager, all cores), 2 n^3 FLOPs per call, timed `peak_calls` times per round after
  two warm-up calls, in its own worker that takes part in the training rounds, so it sees
  the same load as the train steps. Achieved GFLOP/s = FLOPs per step x steps/s; its share
  of the peak = achieved / peak (both medians over rounds). The peak is what dense matmul
  reaches, not the chip's nominal FLOP rate: convolutions of 64 channels on small maps
  cannot reach it, so the share says how far the step is from the best this CPU does.
* Parameter counts. TFP's causal convolutions are masked 3x3 (and 4x4 strided) kernels
  whose masked entries are stored but always zero; ours are shifted 2x3 / 2x2 kernels with
  no dead weights. So both the stored count and the effective (unmasked) count are shown;
  "equal size" means equal effective parameters. TFP still pays the FLOPs of the masked
  taps, which is part of why the two differ in speed.
* Sampling time for `num_images` images (28x28x1, 32 filters, 1 resnet layer). TFP:
  `dist.sample(n, conditional_input=h, seed=...)` inside a `tf.function` (graph mode; one
  full forward pass per pixel), traced first. Ours: `sample` with method "pixel" (the
  default: per-pixel caches, each activation computed once), "cached" (per-layer row caches,
  one row per resolution per pixel) and "full" (one full forward pass per pixel, i.e. TFP's
  algorithm, XLA-compiled), after a first call that compiles. The fast samplers draw once in
  each of `sample_rounds` rounds; the slow ones (`sample_once`: TFP, whose draw takes 1-2
  minutes at the default size, and our "full") draw once, in the middle round, so the fast
  samplers' rounds bracket them. A sampling ratio is TFP's time over ours, per round of ours.
* The 1,024-sample figure: drawing `figure_samples` (1,024) samples of one MNIST-sized
  input (28x28x1) with the network `--scale small` builds for a vector h (the fc3 layer's
  256 features), with the default "pixel" sampler, `figure_batch` (64, the `sample` command's
  default) images per compiled call, batches drawn side by side on one thread per core as
  `sample` does, on an untrained network (weight norm initialised on random images so activations
  have a sane scale; the time does not depend on the weights). Timed once after a first call
  that compiles and draws one batch, under each backend (the two draws one after the
  other); the target is 15 s.
* The JAX column: the same invkeras train step (with XLA, as `train-inverter`'s default
  `--jit-compile auto` runs it under JAX; `import invkeras` keeps XLA's CPU convolutions on
  XLA's own kernels, see `invkeras/backend_setup.py`) and the same "pixel" sampler and figure, each in a worker
  started with `jax_python` (a Python whose environment has JAX, keras and tfp-nightly but no
  TensorFlow, as `make install-jax` builds) and `KERAS_BACKEND=jax`. They take part in the same
  interleaved rounds as the TensorFlow rows, so "JAX / TensorFlow" is again a median of
  per-round ratios, each against the TensorFlow row run as `train-inverter` runs it (no XLA)
  and the same sampler. The matmul peak is measured under TensorFlow only.
* Peak memory, per worker: its peak resident set size (max of `ru_maxrss` and a 20 ms RSS
  poll) and the growth over its RSS after importing TensorFlow, Keras, TFP and invkeras
  (every model worker imports the same modules, so the growth is the model's own cost).
  A phase's workers are alive together, so the machine needs the sum of their peaks: about
  15 GiB in the training phase at the default size (each model's own peak is 3-5 GiB).
  `--no-isolate` runs every worker's job in this one process (used by the tests); then the
  workers' memory overlaps, only the poll is used and the numbers are indicative.

The results go to a rich table on the terminal and to `bench-results/bench.json` (with its
`.meta.json`), written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

DEFAULT_OUT = Path("bench-results") / "bench.json"
QUICK_OUT = Path("bench-results") / "bench-quick.json"
DEFAULT_JAX_PYTHON = Path(".venv-jax") / "bin" / "python"
TRAIN_TARGET = 1.5  # ours / TFP train steps per second
SAMPLE_TARGET = 150.0  # TFP / ours (the default "pixel" sampler) sampling time
FIGURE_TARGET_S = 15.0  # seconds to draw the 1,024-sample figure
FC3_UNITS = 256  # classifiers.architectures.FC3_UNITS (not imported: it pulls in Keras): the figure's h


# --- settings -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Every knob of one benchmark run (stored in the JSON)."""

    image_shape: tuple[int, int, int] = (28, 28, 1)
    cond_dim: int = 10  # a logits-like conditioning vector
    num_mixtures: int = 10
    dropout_rate: float = 0.5
    # Training comparison: `rounds` interleaved rounds of `steps_per_round` timed steps.
    train_filters: int = 64
    train_nr_resnet: int = 3
    batch_size: int = 32
    warmup_steps: int = 2
    rounds: int = 5
    steps_per_round: int = 3
    learning_rate: float = 1e-3
    lr_decay: float = 0.9999
    tfp_fit: bool = True  # also time TFP's docs recipe (tf_keras Model + add_loss + train_on_batch)
    count_graph_flops: bool = True  # check the FLOP formula against TensorFlow's graph
    # The machine's float32 matmul peak, measured in the training rounds.
    peak_size: int = 2048
    peak_calls: int = 3
    # Sampling comparison: one draw per sampler per round; `sample_once` draw in the middle round only.
    sample_filters: int = 32
    sample_nr_resnet: int = 1
    num_images: int = 16
    sample_rounds: int = 5
    sample_once: tuple[str, ...] = ("sample_tfp", "sample_ours_full")
    # The 1,024-sample figure: one input, the --scale preset's network for a vector h.
    figure_image_shape: tuple[int, int, int] = (28, 28, 1)
    figure_scale: str = "small"
    figure_nr_resnet: int | None = None  # None: the preset's (quick() takes 0 to compile faster)
    figure_h_dim: int = FC3_UNITS
    figure_samples: int = 1024
    figure_batch: int = 64  # what `invkeras sample` draws per call by default
    seed: int = 0
    smoke: bool = False  # set by quick(): its timings say nothing about the targets
    # The JAX column: a Python whose environment has JAX, keras, tfp-nightly and invkeras (`make
    # install-jax` builds one in .venv-jax). None: no JAX rows.
    jax_python: str | None = None

    @classmethod
    def quick(cls, **overrides) -> "BenchSettings":
        """A smoke run: tiny images and networks, three short rounds; every part exercised."""
        base = dict(
            image_shape=(8, 8, 1), cond_dim=3, num_mixtures=3, train_filters=8, train_nr_resnet=0, batch_size=4,
            warmup_steps=1, rounds=3, steps_per_round=2, tfp_fit=False, peak_size=256, peak_calls=3,
            sample_filters=8, sample_nr_resnet=0, num_images=4, sample_rounds=3, sample_once=("sample_tfp",),
            figure_image_shape=(8, 8, 1), figure_scale="tiny", figure_nr_resnet=0, figure_h_dim=8, figure_samples=32,
            figure_batch=16,
            smoke=True,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, settings: dict) -> "BenchSettings":
        """Inverse of `dataclasses.asdict` after a JSON round trip (lists back to tuples)."""
        tuples = ("image_shape", "figure_image_shape", "sample_once")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in settings.items()})


# --- measuring memory -----------------------------------------------------------------


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: fall back on the lifetime peak
        return _maxrss_mib()


def _maxrss_mib() -> float:
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class PeakRSS:
    """Polls this process's RSS in a thread; `peak_mib` is the highest value seen since entry."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.baseline_mib = self.peak_mib = _current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, _current_rss_mib())

    def __enter__(self) -> "PeakRSS":
        self.baseline_mib = self.peak_mib = _current_rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, _current_rss_mib())


def _load_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# --- shared helpers ---------------------------------------------------------------------


def _import_everything(backend: str = "tensorflow"):
    """Every model worker of a backend imports the same modules, so RSS growth after this is
    the model's cost. A JAX worker's environment has no TensorFlow (and no TFP PixelCNN)."""
    import keras  # noqa: F401

    if backend == "jax":
        import invkeras.inverters.pixelcnn.flops  # noqa: F401
        import invkeras.inverters.pixelcnn.kind  # noqa: F401
        import invkeras.inverters.pixelcnn.sampling  # noqa: F401
        return
    import tensorflow as tf  # noqa: F401
    import tensorflow_probability as tfp
    from tensorflow_probability.python.internal import tf_keras  # noqa: F401

    tfp.distributions.PixelCNN  # noqa: B018  (TFP imports lazily; load it now)
    import invkeras.inverters.pixelcnn.flops  # noqa: F401
    import invkeras.inverters.pixelcnn.kind  # noqa: F401
    import invkeras.inverters.pixelcnn.network  # noqa: F401
    import invkeras.inverters.pixelcnn.sampling  # noqa: F401


def _synthetic_batch(s: BenchSettings, batch: int):
    """Random images and h of `batch` examples, after seeding Keras' global random state (and
    so TensorFlow's, under that backend) with the run's seed, as every job does first."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    x = rng.integers(0, 256, (batch, *s.image_shape)).astype("float32")
    h = rng.normal(size=(batch, s.cond_dim)).astype("float32")
    return x, h


def _param_count(model) -> int:
    return sum(int(math.prod(v.shape)) for v in model.trainable_variables)


def our_kwargs(s: BenchSettings, filters: int, nr_resnet: int) -> dict:
    """`PixelCNNConfig` arguments of our side (printed verbatim in the report)."""
    return dict(image_shape=tuple(s.image_shape), filters=filters, nr_resnet=nr_resnet, dropout_rate=s.dropout_rate,
                likelihood="logistic_mixture", num_mixtures=s.num_mixtures, conditioning="vector",
                h_shape=(s.cond_dim,))


def tfp_kwargs(s: BenchSettings, filters: int, nr_resnet: int) -> dict:
    """`tfd.PixelCNN` arguments of TFP's side; the rest keep their defaults (3x3 receptive
    field, concat_elu), which match PixelCNN++ and ours."""
    return dict(image_shape=tuple(s.image_shape), conditional_shape=(s.cond_dim,), num_resnet=nr_resnet,
                num_hierarchies=3, num_filters=filters, num_logistic_mix=s.num_mixtures, dropout_p=s.dropout_rate,
                use_weight_norm=True, use_data_init=True)


def figure_config(s: BenchSettings):
    """The network of the 1,024-sample figure: what `--scale figure_scale` builds for a vector h
    (with `figure_nr_resnet` resnet layers if set)."""
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig

    overrides = {} if s.figure_nr_resnet is None else {"nr_resnet": s.figure_nr_resnet}
    return PixelCNNConfig.from_scale(s.figure_scale, tuple(s.figure_image_shape), conditioning="vector",
                                     h_shape=(s.figure_h_dim,), **overrides)


def _our_config(s: BenchSettings, filters: int, nr_resnet: int):
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig

    return PixelCNNConfig(**our_kwargs(s, filters, nr_resnet))


def _tfp_pixelcnn(s: BenchSettings, filters: int, nr_resnet: int):
    import tensorflow_probability as tfp

    return tfp.distributions.PixelCNN(**tfp_kwargs(s, filters, nr_resnet))


def _tfp_param_counts(dist) -> tuple[int, int]:
    """(stored, effective) trainable parameters; effective leaves out entries a kernel mask zeroes."""
    import numpy as np
    import tensorflow as tf

    stored = effective = 0
    for v in dist.network.trainable_variables:
        n = int(np.prod(v.shape))
        stored += n
        mask = getattr(v, "constraint", None)
        effective += int(tf.math.count_nonzero(mask(tf.ones(v.shape, v.dtype)))) if mask is not None else n
    return stored, effective


def _tfp_weight_norm_initialised(dist) -> bool:
    from tensorflow_probability.python.layers.weight_norm import WeightNorm

    layers = [layer for layer in dist.network._network.layers if isinstance(layer, WeightNorm)]
    return bool(layers) and all(bool(layer.initialized.numpy()) for layer in layers)


# --- jobs: what one worker measures ----------------------------------------------------------
#
# A job's `setup()` builds its model and warms up (returning what it learnt: build time,
# warm-up times, parameters, ...); `step()` is one timed unit (a train step, a draw, a
# matmul) that blocks until done and may return a loss; `run_round(n)` times n of them.


class Job:
    part = ""  # "train", "peak", "sample" or "figure"
    imports_models = True  # import TF, TFP and invkeras before the memory baseline
    backend = "tensorflow"  # the Keras backend of the worker's process ("jax": runs in BenchSettings.jax_python)

    def __init__(self, s: BenchSettings):
        self.s = s

    def setup(self) -> dict:
        raise NotImplementedError

    def step(self) -> float | None:
        raise NotImplementedError

    def run_round(self, n: int) -> dict:
        """n timed units. `start`/`end` are `time.monotonic()` (system-wide on Linux, so the
        stamps of different workers compare)."""
        times, values = [], []
        start = time.monotonic()
        for _ in range(n):
            begin = time.perf_counter()
            value = self.step()
            times.append(time.perf_counter() - begin)
            values.append(None if value is None else float(value))
        return {"times_s": times, "values": values, "start": start, "end": time.monotonic()}

    def _warm_up(self, steps: int) -> dict:
        times, losses = [], []
        for _ in range(steps):
            begin = time.perf_counter()
            losses.append(float(self.step()))
            times.append(time.perf_counter() - begin)
        return {"warmup_s": times, "first_loss": losses[0] if losses else math.nan}


def _backend_versions() -> dict:
    """Versions inside a JAX worker (the coordinator's `_versions` sees the TensorFlow side)."""
    import jax
    import keras

    return {"jax": jax.__version__, "keras": keras.__version__}


class TrainOurs(Job):
    part = "train"

    def __init__(self, s: BenchSettings, jit: bool, count_graph: bool, backend: str = "tensorflow"):
        super().__init__(s)
        self.jit, self.count_graph, self.backend = jit, count_graph, backend

    def setup(self) -> dict:
        from invkeras.inverters.pixelcnn import flops
        from invkeras.inverters.pixelcnn.kind import build_network
        from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

        s = self.s
        self.x, h = _synthetic_batch(s, s.batch_size)
        self.inputs = {"x": self.x, "h": h}
        config = _our_config(s, s.train_filters, s.train_nr_resnet)
        start = time.perf_counter()
        self.model = build_network(config, learning_rate=s.learning_rate, lr_decay=s.lr_decay,
                                   jit_compile=str(self.jit).lower())
        initialize_weight_norm(self.model, self.inputs)  # as the pixelcnn kind does before training
        build_s = time.perf_counter() - start
        params = _param_count(self.model)
        info = {**self._warm_up(s.warmup_steps), "build_s": build_s, "params": params, "params_effective": params,
                "train_flops_per_step": flops.train_step_flops(config, s.batch_size),
                "how": "build_network + train_on_batch, "
                       + ("XLA (jit_compile=True)" if self.jit else "no XLA (jit_compile=False)")
                       + f", {self.backend} backend"}
        if self.backend == "jax":
            info["backend_versions"] = _backend_versions()
        if self.count_graph:  # after the warm-up, so the optimizer exists; traced, not run
            start = time.perf_counter()
            info["graph_flops"] = flops.graph_flops(flops.train_step_graph(self.model, self.inputs, self.x))
            info["graph_count_s"] = time.perf_counter() - start
        return info

    def step(self):
        return self.model.train_on_batch(self.inputs, self.x)


class TrainTFP(Job):
    part = "train"

    def setup(self) -> dict:
        import tensorflow as tf
        from tensorflow_probability.python.internal import tf_keras

        s = self.s
        x_np, h_np = _synthetic_batch(s, s.batch_size)
        x, h = tf.constant(x_np), tf.constant(h_np)
        start = time.perf_counter()
        self.dist = dist = _tfp_pixelcnn(s, s.train_filters, s.train_nr_resnet)
        schedule = tf_keras.optimizers.schedules.ExponentialDecay(s.learning_rate, decay_steps=1,
                                                                  decay_rate=s.lr_decay)
        optimizer = tf_keras.optimizers.Adam(schedule)
        variables = dist.network.trainable_variables

        @tf.function
        def train_step(x, h):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(dist.log_prob(x, conditional_input=h, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        self._step = lambda: train_step(x, h).numpy()
        build_s = time.perf_counter() - start
        stored, effective = _tfp_param_counts(dist)
        warm = self._warm_up(s.warmup_steps)
        return {**warm, "build_s": build_s, "params": stored, "params_effective": effective,
                "weight_norm_initialised_in_graph": _tfp_weight_norm_initialised(dist),
                "how": "tf.function GradientTape step, graph mode, no XLA; use_weight_norm=True"}

    def step(self):
        return self._step()


class TrainTFPFit(Job):
    """The docs' recipe: a tf_keras Model whose output is log_prob, add_loss, compile."""

    part = "train"

    def setup(self) -> dict:
        import tensorflow as tf
        from tensorflow_probability.python.internal import tf_keras

        s = self.s
        x, h = _synthetic_batch(s, s.batch_size)
        self.batch = [x, h]
        start = time.perf_counter()
        dist = _tfp_pixelcnn(s, s.train_filters, s.train_nr_resnet)
        image_input = tf_keras.layers.Input(shape=s.image_shape)
        h_input = tf_keras.layers.Input(shape=(s.cond_dim,))
        log_prob = dist.log_prob(image_input, conditional_input=h_input)
        self.model = tf_keras.Model(inputs=[image_input, h_input], outputs=log_prob)
        self.model.add_loss(-tf.reduce_mean(log_prob))
        schedule = tf_keras.optimizers.schedules.ExponentialDecay(s.learning_rate, decay_steps=1,
                                                                  decay_rate=s.lr_decay)
        self.model.compile(optimizer=tf_keras.optimizers.Adam(schedule))
        build_s = time.perf_counter() - start
        stored, effective = _tfp_param_counts(dist)
        return {**self._warm_up(s.warmup_steps), "build_s": build_s, "params": stored, "params_effective": effective,
                "how": "docs recipe: tf_keras Model(log_prob) + add_loss + compile, train_on_batch"}

    def step(self):
        return self.model.train_on_batch(self.batch)


class PeakMatmul(Job):
    """The machine's float32 matmul rate: `keras.ops.matmul` of two n x n matrices."""

    part = "peak"
    imports_models = False

    def setup(self) -> dict:
        import keras

        n = self.s.peak_size
        self.a = keras.random.normal((n, n), seed=self.s.seed)
        self.b = keras.random.normal((n, n), seed=self.s.seed + 1)
        warm = [self._timed_call() for _ in range(2)]
        return {"size": n, "flops_per_call": 2.0 * n**3, "warmup_s": warm,
                "how": f"keras.ops.matmul of two float32 {n}x{n} matrices, eager, "
                       f"{keras.backend.backend()} backend, all cores; 2 n^3 FLOPs per call"}

    def _timed_call(self) -> float:
        begin = time.perf_counter()
        self.step()
        return time.perf_counter() - begin

    def step(self):
        import keras

        product = keras.ops.matmul(self.a, self.b)
        keras.ops.convert_to_numpy(product[:1, :1])  # wait for it
        return None


class SampleOurs(Job):
    part = "sample"

    def __init__(self, s: BenchSettings, method: str, backend: str = "tensorflow"):
        super().__init__(s)
        self.method, self.backend = method, backend

    def setup(self) -> dict:
        from invkeras.inverters.pixelcnn.network import build_pixelcnn
        from invkeras.inverters.pixelcnn.sampling import macs_per_image
        from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

        s = self.s
        x, self.h = _synthetic_batch(s, s.num_images)
        self.config = config = _our_config(s, s.sample_filters, s.sample_nr_resnet)
        start = time.perf_counter()
        self.model = build_pixelcnn(config)
        initialize_weight_norm(self.model, {"x": x, "h": self.h})
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        self.step()  # compiles the whole pixel loop with XLA, then runs it
        return {
            **({"backend_versions": _backend_versions()} if self.backend == "jax" else {}),
            "first_call_s": time.perf_counter() - start, "build_s": build_s,
            "params": _param_count(self.model),
            # Multiply-accumulates per image, as a multiple of one forward pass (counted from the shapes).
            "flops_x_forward": macs_per_image(config, self.method) / macs_per_image(config),
            "how": f"invkeras.inverters.pixelcnn.sampling.sample(method='{self.method}'), XLA, {self.backend} "
                   "backend; after a first call that compiles",
        }

    def step(self):
        import numpy as np

        from invkeras.inverters.pixelcnn.sampling import sample

        s = self.s
        images = sample(self.model, self.config, self.h, num_samples=1, seed=s.seed, batch_size=s.num_images,
                        method=self.method)
        assert images.shape == (s.num_images, 1, *s.image_shape) and images.dtype == np.uint8, images.shape
        return None


class SampleTFP(Job):
    part = "sample"

    def setup(self) -> dict:
        import tensorflow as tf

        s = self.s
        _, h = _synthetic_batch(s, s.num_images)
        self.h = tf.constant(h)
        start = time.perf_counter()
        dist = _tfp_pixelcnn(s, s.sample_filters, s.sample_nr_resnet)
        build_s = time.perf_counter() - start
        self.draw = tf.function(lambda h: dist.sample(s.num_images, conditional_input=h, seed=s.seed))
        start = time.perf_counter()
        self.draw.get_concrete_function(tf.TensorSpec(h.shape, tf.float32))  # trace only, runs nothing
        trace_s = time.perf_counter() - start
        stored, effective = _tfp_param_counts(dist)
        return {"trace_s": trace_s, "build_s": build_s, "params": stored, "params_effective": effective,
                "how": "tf.function(dist.sample(n, conditional_input=h, seed)), graph mode; traced first"}

    def step(self):
        import numpy as np

        images = self.draw(self.h).numpy()
        assert images.shape == (self.s.num_images, *self.s.image_shape), images.shape
        assert np.all((images >= 0) & (images <= 255))
        return None


class SampleFigure(Job):
    """`figure_samples` samples of one input with the `figure_scale` network, "pixel" sampler."""

    part = "figure"

    def __init__(self, s: BenchSettings, backend: str = "tensorflow"):
        super().__init__(s)
        self.backend = backend

    def setup(self) -> dict:
        import keras
        import numpy as np

        from invkeras.inverters.pixelcnn.network import build_pixelcnn
        from invkeras.inverters.pixelcnn.sampling import default_threads
        from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

        s = self.s
        keras.utils.set_random_seed(s.seed)
        self.config = figure_config(s)
        self.h = np.random.default_rng(s.seed).normal(size=(1, s.figure_h_dim)).astype("float32")
        start = time.perf_counter()
        self.model = build_pixelcnn(self.config)  # untrained: the time does not depend on the weights
        x = np.random.default_rng(s.seed).integers(0, 256, (16, *self.config.image_shape)).astype("float32")
        initialize_weight_norm(self.model, {"x": x, "h": np.repeat(self.h, 16, axis=0)})  # sane activations
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        self._draw(s.figure_batch)  # compiles, then draws one batch
        return {
            "first_call_s": time.perf_counter() - start, "build_s": build_s,
            "params": _param_count(self.model),
            "config": self.config.model_dump(mode="json"),
            **({"backend_versions": _backend_versions()} if self.backend == "jax" else {}),
            "how": f"sample(method='pixel', num_samples={s.figure_samples}, batch_size={s.figure_batch}) of one h, "
                   f"{self.backend} backend, batches drawn {default_threads()} at a time, "
                   f"PixelCNNConfig.from_scale('{s.figure_scale}', vector h of {s.figure_h_dim}"
                   + ("" if s.figure_nr_resnet is None else f", nr_resnet={s.figure_nr_resnet}")
                   + "); untrained; timed once after a first call that compiles and draws one batch",
        }

    def _draw(self, num_samples: int):
        from invkeras.inverters.pixelcnn.sampling import sample

        images = sample(self.model, self.config, self.h, num_samples=num_samples, seed=self.s.seed,
                        batch_size=self.s.figure_batch, method="pixel")
        assert images.shape == (1, num_samples, *self.config.image_shape), images.shape

    def step(self):
        self._draw(self.s.figure_samples)
        return None


JOBS: dict[str, tuple[str, Callable[[BenchSettings], Job]]] = {
    "train_tfp": ("TFP PixelCNN (tf.function step)", TrainTFP),
    "train_tfp_fit": ("TFP PixelCNN (docs: Model + fit)", TrainTFPFit),
    "train_ours_xla": ("invkeras, XLA", lambda s: TrainOurs(s, jit=True, count_graph=False)),
    "train_ours_no_xla": ("invkeras, no XLA", lambda s: TrainOurs(s, jit=False, count_graph=s.count_graph_flops)),
    "train_ours_jax": ("invkeras, JAX backend (XLA)",
                       lambda s: TrainOurs(s, jit=True, count_graph=False, backend="jax")),
    "peak": ("float32 matmul peak", PeakMatmul),
    "sample_tfp": ("TFP dist.sample", SampleTFP),
    "sample_ours_pixel": ("invkeras 'pixel' (per-pixel caches)", lambda s: SampleOurs(s, "pixel")),
    "sample_ours_cached": ("invkeras 'cached'", lambda s: SampleOurs(s, "cached")),
    "sample_ours_full": ("invkeras 'full'", lambda s: SampleOurs(s, "full")),
    "sample_ours_pixel_jax": ("invkeras 'pixel', JAX backend", lambda s: SampleOurs(s, "pixel", backend="jax")),
    "figure": ("Sample figure (many samples of one input)", SampleFigure),
    "figure_jax": ("Sample figure, JAX backend", lambda s: SampleFigure(s, backend="jax")),
}
LABELS = {name: label for name, (label, _) in JOBS.items()}
TFP_TRAIN = ("train_tfp", "train_tfp_fit")
OUR_TRAIN = ("train_ours_xla", "train_ours_no_xla", "train_ours_jax")
OUR_SAMPLERS = ("sample_ours_pixel", "sample_ours_cached", "sample_ours_full", "sample_ours_pixel_jax")
# The JAX column against the same code under TensorFlow, each backend as `train-inverter` runs it
# by default (--jit-compile auto: XLA under JAX, none under TensorFlow) and the same sampler.
JAX_PEERS = {"train_ours_jax": "train_ours_no_xla", "sample_ours_pixel_jax": "sample_ours_pixel"}


def phase_names(part: str, s: BenchSettings, isolate: bool) -> list[str]:
    """The workers of a phase. The JAX rows need their own process (another Python, another
    backend), so they take part only in isolated runs with `jax_python` set."""
    with_jax = s.jax_python is not None and isolate
    jax_rows = {name for name, (_, make) in JOBS.items() if make(s).backend == "jax"}
    skipped = ({"train_tfp_fit"} if not s.tfp_fit else set()) | (set() if with_jax else jax_rows)
    if part == "train":
        return [name for name in (*TFP_TRAIN, *OUR_TRAIN) if name not in skipped] + ["peak"]
    if part == "sample":
        return [name for name in ("sample_tfp", *OUR_SAMPLERS) if name not in skipped]
    return [name for name in ("figure", "figure_jax") if name not in skipped]


# --- workers: a job in this process, or in a long-lived subprocess -----------------------------


class InProcessWorker:
    """Runs a job here. `isolated` means this process runs nothing else, so its lifetime
    peak RSS (`ru_maxrss`) is the job's own."""

    def __init__(self, name: str, s: BenchSettings, isolated: bool = False):
        self.name, self.isolated = name, isolated
        self.job = JOBS[name][1](s)
        self._rss: PeakRSS | None = None

    def import_modules(self) -> None:
        if self.job.imports_models:
            _import_everything(self.job.backend)
        else:
            import keras  # noqa: F401

    def start(self) -> dict:
        """Set the job up; memory is tracked from here (after the imports) to `finish`."""
        self.import_modules()
        self._rss = PeakRSS().__enter__()
        start = time.perf_counter()
        info = self.job.setup()
        return {**info, "setup_wall_s": time.perf_counter() - start, "pid": os.getpid()}

    def round(self, n: int) -> dict:
        return self.job.run_round(n)

    def finish(self) -> dict:
        rss = self._rss
        rss.__exit__(None, None, None)
        peak = max(rss.peak_mib, _maxrss_mib()) if self.isolated else rss.peak_mib
        return {"rss_baseline_mib": rss.baseline_mib, "peak_rss_mib": peak, "rss_growth_mib": peak - rss.baseline_mib}

    def close(self):
        self.job = None  # drop the model


class SubprocessWorker:
    """A job in its own `python benchmarks/bench.py --serve NAME` process, driven over its
    stdin/stdout: one JSON request per line (`{"cmd": "setup"}`, `{"cmd": "round", "n": 3}`,
    `{"cmd": "finish"}`), one JSON reply per line (`{"ok": true, "reply": {...}}` or
    `{"ok": false, "error": "..."}`). The process imports its modules as soon as it is
    launched, so the workers of a phase import side by side while the coordinator sets them up
    one at a time. Its stderr goes to a temporary file, whose tail is raised with any failure."""

    def __init__(self, name: str, s: BenchSettings):
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="invkeras-bench-")
        backend = JOBS[name][1](s).backend
        python = s.jax_python if backend == "jax" else sys.executable
        if python is None:
            raise ValueError(f"benchmark worker '{name}' runs under JAX and needs BenchSettings.jax_python")
        command = [python, str(Path(__file__).resolve()), "--serve", name,
                   "--settings-json", json.dumps(dataclasses.asdict(s))]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               "KERAS_BACKEND": backend}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=env)

    def start(self) -> dict:
        return self._request({"cmd": "setup"})

    def round(self, n: int) -> dict:
        return self._request({"cmd": "round", "n": n})

    def finish(self) -> dict:
        reply = self._request({"cmd": "finish"})
        self.proc.wait(timeout=60)
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()
        self._stderr.close()

    def _request(self, message: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died; _reply says why
        return self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"benchmark worker '{self.name}' died (exit {self.proc.returncode}):\n{self._tail()}")
        message = json.loads(line)
        if not message["ok"]:
            raise RuntimeError(f"benchmark worker '{self.name}' failed:\n{message['error']}\n{self._tail()}")
        return message["reply"]

    def _tail(self, lines: int = 25) -> str:
        self._stderr.seek(0)
        return "\n".join(self._stderr.read().strip().splitlines()[-lines:])


def serve(name: str, s: BenchSettings) -> int:
    """The worker side of `SubprocessWorker`: import, then answer requests until "finish" (or
    until stdin closes). A failing request is answered with its traceback; one that fails in
    the job ends the worker. Anything the libraries print goes to stderr: stdout carries the
    protocol only."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    def send(ok: bool, payload) -> None:
        protocol.write(json.dumps({"ok": True, "reply": payload} if ok else {"ok": False, "error": payload}) + "\n")

    worker = InProcessWorker(name, s, isolated=True)
    try:
        worker.import_modules()
        for line in sys.stdin:
            request = json.loads(line)
            if request["cmd"] == "setup":
                send(True, worker.start())
            elif request["cmd"] == "round":
                send(True, worker.round(int(request["n"])))
            elif request["cmd"] == "finish":
                send(True, worker.finish())
                return 0
            else:
                send(False, f"unknown request {request!r}")
    except Exception:  # noqa: BLE001  (reported to the coordinator, which raises it)
        send(False, traceback.format_exc())
        return 1
    return 0


# --- the rounds ---------------------------------------------------------------------------------


def round_order(names: list[str], round_index: int) -> list[str]:
    """Workers' order in a round: as given in even rounds, reversed in odd ones (A B, B A, ...)."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def run_rounds(workers: dict, rounds: int, units: dict[str, int], once: tuple[str, ...] = (),
               log: Callable[[str], None] = print) -> tuple[dict[str, list[dict]], list[float | None]]:
    """Interleave the workers: in each round every worker times `units[name]` units in turn
    (`round_order`); a worker in `once` takes part in the middle round only. Returns every
    worker's round records (each with its round index) and the load at each round's start."""
    records: dict[str, list[dict]] = {name: [] for name in workers}
    loads = []
    for r in range(rounds):
        loads.append(_load_1min())
        for name in round_order(list(workers), r):
            if name in once and r != rounds // 2:
                continue
            record = workers[name].round(units[name])
            records[name].append({"round": r, **record})
        log(f"      round {r + 1}/{rounds} done (load {loads[-1] if loads[-1] is not None else math.nan:.2f})")
    return records, loads


def run_phase(names: list[str], s: BenchSettings, *, isolate: bool, rounds: int, units: dict[str, int],
              once: tuple[str, ...] = (), log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Launch the workers, set them up one at a time (so no set-up or compilation overlaps
    another), run the rounds, collect every worker's memory, and stop them. Returns the measurements by name
    (set-up info + `rounds` + memory) and the phase's load averages.

    In one process (not `isolate`) the jobs share TensorFlow's global seed, and a later job's
    setting it makes tf.function retrace an earlier job's step; so there every worker not in
    `once` does one more untimed unit when all are ready, which absorbs the retrace."""
    workers: dict[str, Any] = {}
    measured: dict[str, dict] = {}
    load = {"before": _load_1min()}
    try:
        for name in names:
            workers[name] = SubprocessWorker(name, s) if isolate else InProcessWorker(name, s)
        for i, name in enumerate(names, 1):
            log(f"[{i}/{len(names)}] setting up {LABELS[name]} ...")
            measured[name] = workers[name].start()
            log(f"      ready in {measured[name]['setup_wall_s']:.1f} s")
        if not isolate:
            for name, worker in workers.items():
                if name not in once:
                    worker.round(1)
        load["rounds_start"] = _load_1min()
        records, load["by_round"] = run_rounds(workers, rounds, units, once, log)
        load["after"] = _load_1min()
        for name, worker in workers.items():
            measured[name].update(rounds=records[name], **worker.finish())
    finally:
        for worker in workers.values():
            worker.close()
    return measured, load


# --- what the measurements say ---------------------------------------------------------------


def spread(by_round: dict[int, float]) -> dict:
    """Median, min and max over rounds, with the values in round order."""
    rounds = sorted(by_round)
    values = [by_round[r] for r in rounds]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": rounds,
            "by_round": values}


def round_medians(entry: dict) -> dict[int, float]:
    """A worker's median unit time (s) in each round it took part in."""
    return {record["round"]: statistics.median(record["times_s"]) for record in entry["rounds"]}


def _ratio_by_round(numerator: dict[int, float], denominator: dict[int, float]) -> dict[int, float]:
    return {r: numerator[r] / denominator[r] for r in numerator if r in denominator}


def summarize(train: dict, sample: dict, peak: dict | None = None, figure: dict | None = None,
              figure_jax: dict | None = None) -> dict:
    """Everything derived from the raw round times: rates, ratios (median of the per-round
    ratios with min and max), FLOP rates and shares of the peak, and the verdicts. Training
    ratios are ours / the faster TFP recipe's steps/s in the same round; sampling ratios are
    TFP's time over ours."""
    summary: dict[str, Any] = {}
    rates = {name: {r: 1.0 / t for r, t in round_medians(entry).items()} for name, entry in train.items()}
    summary["steps_per_s"] = {name: spread(by_round) for name, by_round in rates.items()}
    tfp = {k: summary["steps_per_s"][k]["median"] for k in TFP_TRAIN if k in train}
    ours = [k for k in OUR_TRAIN if k in train]
    if tfp and ours:
        baseline = summary["train_tfp_baseline"] = max(tfp, key=tfp.get)  # TFP's faster recipe
        summary["train_ratio"] = {k: spread(_ratio_by_round(rates[k], rates[baseline])) for k in ours}
        medians = {k: summary["train_ratio"][k]["median"] for k in ours}
        best = summary["train_best"] = max(medians, key=medians.get)
        summary["xla_faster"] = (summary["steps_per_s"].get("train_ours_xla", {}).get("median", 0)
                                 > summary["steps_per_s"].get("train_ours_no_xla", {}).get("median", math.inf))
        summary["train_target"] = TRAIN_TARGET
        summary["train_target_met"] = medians[best] >= TRAIN_TARGET

    counted = next((train[k] for k in OUR_TRAIN if k in train and "train_flops_per_step" in train[k]), None)
    if counted is not None:
        flops = {"per_step_formula": counted["train_flops_per_step"]}
        graph = next((train[k]["graph_flops"] for k in OUR_TRAIN if "graph_flops" in train.get(k, {})), None)
        if graph is not None:
            flops.update(per_step_graph=graph["matmul_flops"],
                         formula_over_graph=counted["train_flops_per_step"] / graph["matmul_flops"],
                         per_step_profiler=graph["profiler_flops"],
                         profiler_elementwise_share=graph["profiler_elementwise_share"])
        summary["flops"] = flops
        if peak is not None:
            peak_by_round = {r: peak["flops_per_call"] / t / 1e9 for r, t in round_medians(peak).items()}
            summary["peak_gflops"] = spread(peak_by_round)
            summary["achieved_gflops"], summary["share_of_peak"], summary["share_of_peak_by_round"] = {}, {}, {}
            for k in ours:
                achieved = flops["per_step_formula"] * summary["steps_per_s"][k]["median"] / 1e9
                summary["achieved_gflops"][k] = achieved
                summary["share_of_peak"][k] = achieved / summary["peak_gflops"]["median"]
                achieved_by_round = {r: flops["per_step_formula"] * rate / 1e9 for r, rate in rates[k].items()}
                summary["share_of_peak_by_round"][k] = spread(_ratio_by_round(achieved_by_round, peak_by_round))

    times = {name: round_medians(entry) for name, entry in sample.items()}
    summary["sample_s"] = {name: spread(by_round) for name, by_round in times.items()}
    if "sample_tfp" in sample:
        tfp_time = summary["sample_s"]["sample_tfp"]["median"]  # timed once
        summary["sample_ratio"] = {k: spread({r: tfp_time / t for r, t in times[k].items()})
                                   for k in OUR_SAMPLERS if k in sample}
        if "sample_ours_pixel" in sample:
            summary["sample_target"] = SAMPLE_TARGET
            summary["sample_target_met"] = summary["sample_ratio"]["sample_ours_pixel"]["median"] >= SAMPLE_TARGET

    jax_over_tf = {}
    for jax_name, tf_name in JAX_PEERS.items():
        measured = train if jax_name in train else sample
        if jax_name in measured and tf_name in measured:
            tf_times, jax_times = round_medians(measured[tf_name]), round_medians(measured[jax_name])
            jax_over_tf[jax_name] = spread(_ratio_by_round(tf_times, jax_times))  # speed ratio: > 1, JAX faster
    if jax_over_tf:
        summary["jax_over_tf"] = jax_over_tf

    if figure is not None:
        summary["figure_s"] = statistics.median(round_medians(figure).values())
        summary["figure_target_s"] = FIGURE_TARGET_S
        summary["figure_target_met"] = summary["figure_s"] <= FIGURE_TARGET_S
    if figure_jax is not None:
        summary["figure_jax_s"] = statistics.median(round_medians(figure_jax).values())
        summary["figure_jax_target_met"] = summary["figure_jax_s"] <= FIGURE_TARGET_S
    return summary


# --- the whole run ----------------------------------------------------------------------


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu_model": model, "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if hasattr(os, "getloadavg"):
        info["load_avg_start"] = list(os.getloadavg())
    try:
        import tensorflow as tf

        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # noqa: BLE001  (info only)
        info["gpus"] = []
    return info


def _versions() -> dict:
    from importlib import metadata

    from invkeras.artifacts import package_versions

    versions = package_versions()
    try:
        versions["tf-keras"] = metadata.version("tf-keras")
    except metadata.PackageNotFoundError:
        pass
    return versions


PARTS = ("train", "sample", "figure")


def run_benchmark(s: BenchSettings, *, isolate: bool = True, only: str | None = None, log=print) -> dict:
    """Run the training rounds (with the matmul peak), the sampling rounds and the figure,
    each phase's workers alive together (in subprocesses when `isolate`), and return the
    raw measurements with their summary."""
    started = time.perf_counter()
    machine = machine_info()
    train, sample, load = {}, {}, {}
    peak = figure = figure_jax = None
    if only in (None, "train"):
        names = phase_names("train", s, isolate)
        units = {name: s.steps_per_round for name in names} | {"peak": s.peak_calls}
        log(f"Training: {s.rounds} interleaved rounds of {s.steps_per_round} steps (matmul peak: {s.peak_calls} calls)")
        train, load["train"] = run_phase(names, s, isolate=isolate, rounds=s.rounds, units=units, log=log)
        peak = train.pop("peak")
    if only in (None, "sample"):
        names = phase_names("sample", s, isolate)
        log(f"Sampling: {s.sample_rounds} interleaved rounds of one draw "
            f"({', '.join(s.sample_once)}: middle round only)")
        sample, load["sample"] = run_phase(names, s, isolate=isolate, rounds=s.sample_rounds,
                                           units={name: 1 for name in names}, once=s.sample_once, log=log)
    if only in (None, "figure"):
        log(f"Figure: {s.figure_samples} samples of one input, {s.figure_batch} per call")
        names = phase_names("figure", s, isolate)
        measured, load["figure"] = run_phase(names, s, isolate=isolate, rounds=1, units={name: 1 for name in names},
                                             log=log)
        figure, figure_jax = measured["figure"], measured.get("figure_jax")
    if hasattr(os, "getloadavg"):
        machine["load_avg_end"] = list(os.getloadavg())
    return {
        "settings": dataclasses.asdict(s),
        "isolated": isolate,
        "machine": machine,
        "versions": _versions(),
        "load": load,
        "train": train,
        "peak": peak,
        "sample": sample,
        "figure": figure,
        "figure_jax": figure_jax,
        "summary": summarize(train, sample, peak, figure, figure_jax),
        "wall_s": time.perf_counter() - started,
    }


# --- output -------------------------------------------------------------------------------


def _call(name: str, kwargs: dict) -> str:
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def _seconds(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _ratio_spread(sp: dict | None) -> str:
    """'1.23× (1.10–1.31)': the median of the per-round ratios, then their min and max."""
    if sp is None:
        return "—"
    if len(sp["by_round"]) == 1:
        return f"{sp['median']:.2f}× (1 round)"
    return f"{sp['median']:.2f}× ({sp['min']:.2f}–{sp['max']:.2f})"


def _value_spread(sp: dict, fmt: Callable[[float], str]) -> str:
    if len(sp["by_round"]) == 1:
        return fmt(sp["median"])
    return f"{fmt(sp['median'])} ({fmt(sp['min'])}–{fmt(sp['max'])})"


def _load(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def render(results: dict):
    """A rich renderable: machine, settings and method, then the training, FLOP, sampling,
    figure and target tables."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s, m, v, summary = results["settings"], results["machine"], results["versions"], results["summary"]
    settings = BenchSettings.from_dict(s)
    load = results.get("load", {})
    h, w, c = s["image_shape"]
    lines = [
        f"Machine: {m['cpu_count']} cores, {m['cpu_model']}, GPU: {', '.join(m['gpus']) or 'none'}",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        *_jax_versions_line(results),
        f"Data: random uint8 images {h}x{w}x{c} and h ~ N(0, 1) of size {s['cond_dim']}; logistic mixture with "
        f"{s['num_mixtures']} components, vector conditioning, dropout {s['dropout_rate']}, 3 resolutions.",
        "Method: every row has its own long-lived worker process (model built once, warmed up); the workers "
        "are timed in interleaved rounds, the order reversed every other round. A ratio is the median of the "
        "per-round ratios (min–max over rounds): the sides it compares ran seconds apart, under the same load.",
        f"Train: {s['train_filters']} filters, {s['train_nr_resnet']} resnet layers, batch {s['batch_size']}, Adam "
        f"{s['learning_rate']} x {s['lr_decay']}/step; {s['warmup_steps']} warm-up steps, then {s['rounds']} rounds of "
        f"{s['steps_per_round']} steps; a round's steps/s = 1 / its median step; a side's = median over rounds.",
        f"Sample: {s['num_images']} images, {s['sample_filters']} filters, {s['sample_nr_resnet']} resnet layer(s); "
        f"one draw per round over {s['sample_rounds']} rounds after a first (compiling) call; "
        f"{', '.join(LABELS[n] for n in s['sample_once'])}: one draw only, in the middle round.",
        f"Ours (train): {_call('PixelCNNConfig', our_kwargs(settings, s['train_filters'], s['train_nr_resnet']))}",
        f"TFP (train): {_call('tfd.PixelCNN', tfp_kwargs(settings, s['train_filters'], s['train_nr_resnet']))}",
        "Sampling uses the same arguments with the sampling filters and resnet layers.",
        "Memory: " + ("each row in its own worker process; peak RSS and growth over the RSS after imports."
                      if results["isolated"] else "all rows in one process (--no-isolate): indicative only."),
    ]
    phases = [f"{phase} {_load(l.get('before'))} before, {_load(l.get('after'))} after (rounds: "
              + " ".join(_load(x) for x in l.get("by_round", [])) + ")" for phase, l in load.items()]
    if phases:
        lines.append("Load average (1 min): " + "; ".join(phases) + ". The cores may be shared with other work.")

    tables = []
    if results["train"]:
        table = Table(title="Training speed (equal size), interleaved rounds", title_justify="left")
        for col in ("Model", "Params effective (stored)", "Steps/s median (min–max)", "Steps/s per round",
                    "Warm-up steps (s)", "vs TFP, per-round ratios: median (min–max)", "GFLOP/s (share of peak)",
                    "Peak RSS MiB (growth)"):
            table.add_column(col, justify="left" if col == "Model" else "right")
        baseline = summary.get("train_tfp_baseline")
        for name, r in _ordered(results["train"]):
            rate = summary["steps_per_s"][name]
            ratio = "1 (baseline)" if name == baseline else _ratio_spread(summary.get("train_ratio", {}).get(name))
            gflops = "—"
            if name in summary.get("achieved_gflops", {}):
                gflops = f"{summary['achieved_gflops'][name]:.3g} ({summary['share_of_peak'][name]:.1%})"
            table.add_row(LABELS[name], f"{r['params_effective']:,} ({r['params']:,})",
                          _value_spread(rate, lambda x: f"{x:.3g}"), " ".join(f"{x:.3g}" for x in rate["by_round"]),
                          " + ".join(_seconds(t) for t in r["warmup_s"]), ratio, gflops, _memory(r))
        tables.append(table)
    if "flops" in summary:
        tables.append(_flops_table(results, Table))
    if results["sample"]:
        table = Table(title=f"Sampling time ({s['num_images']} images), interleaved rounds", title_justify="left")
        for col in ("Sampler", "Params", "Time s: median (min–max)", "Draws timed", "First call / trace (s)",
                    "TFP / ours, per round: median (min–max)", "FLOPs/image (x fwd)", "Peak RSS MiB (growth)"):
            table.add_column(col, justify="left" if col == "Sampler" else "right")
        for name, r in _ordered(results["sample"]):
            ratio = "1 (timed once)" if name == "sample_tfp" else _ratio_spread(
                summary.get("sample_ratio", {}).get(name))
            params = f"{r['params_effective']:,} ({r['params']:,})" if "params_effective" in r else f"{r['params']:,}"
            flops = f"{r['flops_x_forward']:.2f}" if "flops_x_forward" in r else "—"
            table.add_row(LABELS[name], params, _value_spread(summary["sample_s"][name], _seconds),
                          str(len(r["rounds"])), _seconds(r.get("trace_s", r.get("first_call_s", math.nan))), ratio,
                          flops, _memory(r))
        tables.append(table)
    if results.get("figure"):
        tables.append(_figure_table(results, Table))

    targets = Table(title="Targets", title_justify="left")
    for col in ("Measure", "Ratio (min–max over rounds)", "Target", "Met"):
        targets.add_column(col)
    if "train_best" in summary:
        best = summary["train_best"]
        xla = "XLA is faster" if summary["xla_faster"] else "no-XLA is faster"
        targets.add_row(f"Train steps/s, ours / TFP (ours: {LABELS[best]}, {xla}; TFP: "
                        f"{LABELS[summary['train_tfp_baseline']]})", _ratio_spread(summary["train_ratio"][best]),
                        f"≥ {TRAIN_TARGET}×", _yes(summary["train_target_met"]))
    if "sample_target" in summary:
        targets.add_row("Sampling time, TFP / ours ('pixel', the default; TFP timed once)",
                        _ratio_spread(summary["sample_ratio"]["sample_ours_pixel"]), f"≥ {SAMPLE_TARGET:g}×",
                        _yes(summary["sample_target_met"]))
    if "sample_ours_full" in summary.get("sample_ratio", {}):
        targets.add_row("Sampling time, TFP / ours ('full', same algorithm as TFP)",
                        _ratio_spread(summary["sample_ratio"]["sample_ours_full"]), "info", "")
    jax_over_tf = summary.get("jax_over_tf", {})
    for name in (n for n in JAX_PEERS if n in jax_over_tf):  # a fixed order, whatever the JSON's
        sp = jax_over_tf[name]
        what = "train steps/s" if name in results["train"] else "sampling time"
        targets.add_row(f"JAX / TensorFlow backend, {what}: {LABELS[name]} against {LABELS[JAX_PEERS[name]]} "
                        "(> 1: JAX faster)", _ratio_spread(sp), "info", "")
    for key, backend in (("figure", "TensorFlow"), ("figure_jax", "JAX")):
        if f"{key}_s" in summary:
            targets.add_row(f"{s['figure_samples']:,} samples of one {'x'.join(map(str, s['figure_image_shape']))} "
                            f"input ({s['figure_scale']}, 'pixel'), {backend}", f"{_seconds(summary[f'{key}_s'])} s",
                            f"≤ {FIGURE_TARGET_S:g} s", _yes(summary[f"{key}_target_met"]))
    targets.add_row("Peak memory", "see the tables above", "reported", _yes(True))

    measured = {**results["train"], **({"peak": results["peak"]} if results.get("peak") else {}),
                **results["sample"], **{key: results[key] for key in ("figure", "figure_jax") if results.get(key)}}
    how = [f"  {LABELS[name]}: {r['how']}" for name, r in _ordered(measured)]
    tfp_train = results["train"].get("train_tfp")
    if tfp_train is not None:
        done = "yes" if tfp_train["weight_norm_initialised_in_graph"] else "NO"
        how.append(f"  TFP weight norm kept on (as ours); its data-dependent init ran in the tf.function step: {done}")
    if "train_ours_xla" in results["train"]:
        how.append("  (train-inverter's default is jit_compile=false: XLA training is slower on a CPU)")
    if s.get("smoke"):
        lines.insert(0, "QUICK SMOKE RUN (--quick): tiny networks and images, few rounds; its ratios and figures say "
                        "nothing about the targets.")
    parts = [*(Text(line) for line in lines), Text(""), *tables, targets, Text("How each row was measured:")]
    parts += [Text(line) for line in how] + [Text(f"Total wall time: {results['wall_s']:.0f} s")]
    return Group(*parts)


def _jax_versions_line(results: dict) -> list[str]:
    """The JAX workers' Python and versions, as one line (none without JAX rows)."""
    jax_rows = [r for r in (*results["train"].values(), *results["sample"].values()) if "backend_versions" in r]
    if not jax_rows:
        return []
    versions = ", ".join(f"{k} {val}" for k, val in jax_rows[0]["backend_versions"].items())
    return [f"JAX column: {results['settings']['jax_python']} ({versions})"]


def _flops_table(results: dict, Table):
    s, summary = results["settings"], results["summary"]
    flops = summary["flops"]
    table = Table(title="Train step FLOPs and the machine's limit", title_justify="left")
    for col in ("Measure", "Value", "Note"):
        table.add_column(col, justify="left")
    table.add_row("Train step, formula", f"{flops['per_step_formula'] / 1e9:.3g} GFLOP",
                  f"2 x 3 (forward, input grads, weight grads) x batch {s['batch_size']} x forward multiply-adds "
                  "per image (convolutions, 1x1 layers, h projections)")
    if "per_step_graph" in flops:
        table.add_row("Train step, TensorFlow graph count", f"{flops['per_step_graph'] / 1e9:.3g} GFLOP",
                      f"convolutions, their gradients and matmuls of Keras' traced train_step; formula / graph = "
                      f"{flops['formula_over_graph']:.4f}")
        table.add_row("Train step, TF profiler (all ops)", f"{flops['per_step_profiler'] / 1e9:.3g} GFLOP",
                      f"elementwise share {flops['profiler_elementwise_share']:.1%} (left out of the formula); "
                      "approximates conv gradients from padded sizes")
    if "peak_gflops" in summary:
        peak = results["peak"]
        table.add_row(f"float32 matmul peak ({peak['size']}x{peak['size']})",
                      _value_spread(summary["peak_gflops"], lambda x: f"{x:.3g}") + " GFLOP/s",
                      f"keras.ops.matmul, {s['peak_calls']} calls per training round, median per round; "
                      f"peak RSS {_memory(peak)} MiB")
        for name, achieved in summary["achieved_gflops"].items():
            by_round = summary["share_of_peak_by_round"][name]
            table.add_row(f"{LABELS[name]}: achieved", f"{achieved:.3g} GFLOP/s",
                          f"{summary['share_of_peak'][name]:.1%} of the peak (per round "
                          f"{by_round['min']:.1%}–{by_round['max']:.1%})")
    return table


def _figure_table(results: dict, Table):
    s, summary = results["settings"], results["summary"]
    load = results.get("load", {}).get("figure", {})
    table = Table(title=f"The {s['figure_samples']:,}-sample figure", title_justify="left")
    for col in ("Network", "Backend", "Params", "Batch per call", "Time (s)", "Images/s", "First call (s)", "Target",
                "Load before / after", "Peak RSS MiB (growth)"):
        table.add_column(col, justify="left" if col == "Network" else "right")
    for key, backend in (("figure", "TensorFlow"), ("figure_jax", "JAX")):
        figure = results.get(key)
        if not figure:
            continue
        config = figure["config"]
        network = (f"--scale {s['figure_scale']}: {'x'.join(map(str, config['image_shape']))}, {config['filters']} "
                   f"filters, {config['nr_resnet']} resnet, {config['likelihood']}, vector h of {s['figure_h_dim']} "
                   f"({config['vector_conditioning']})")
        seconds = summary[f"{key}_s"]
        table.add_row(network, backend, f"{figure['params']:,}", str(s["figure_batch"]), _seconds(seconds),
                      f"{s['figure_samples'] / seconds:.3g}", _seconds(figure["first_call_s"]),
                      f"≤ {FIGURE_TARGET_S:g} s: " + ("met" if summary[f"{key}_target_met"] else "NOT met"),
                      f"{_load(load.get('before'))} / {_load(load.get('after'))}", _memory(figure))
    return table


def _ordered(measured: dict) -> list[tuple[str, dict]]:
    """Rows in JOBS order (a JSON round trip sorts the keys)."""
    return [(name, measured[name]) for name in JOBS if name in measured]


def _memory(r: dict) -> str:
    return f"{r['peak_rss_mib']:.0f} (+{r['rss_growth_mib']:.0f})"


def _yes(met: bool) -> str:
    return "[green]yes[/green]" if met else "[red]NO[/red]"


def write_results(results: dict, out: str | os.PathLike) -> Path:
    from invkeras import artifacts

    path = artifacts.write_json_atomic(out, results)
    artifacts.write_metadata(path, kind="benchmark", config=results["settings"], seed=results["settings"]["seed"],
                             results=results["summary"], machine=results["machine"])
    return path


# --- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (8x8 images, three short rounds)")
    parser.add_argument("--out", type=Path, help=f"results JSON (default {DEFAULT_OUT}, or {QUICK_OUT} with --quick)")
    parser.add_argument("--warmup-steps", type=int, help="untimed training steps per side")
    parser.add_argument("--rounds", type=int, help="interleaved training rounds")
    parser.add_argument("--steps-per-round", type=int, help="timed training steps per side per round")
    parser.add_argument("--sample-rounds", type=int, help="interleaved sampling rounds")
    parser.add_argument("--only", choices=PARTS, help="run only one part")
    parser.add_argument("--tfp-fit", action=argparse.BooleanOptionalAction, default=None,
                        help="also time TFP's docs recipe, tf_keras Model + fit (default: on, off with --quick)")
    parser.add_argument("--no-isolate", action="store_true", help="run every worker's job in this process")
    parser.add_argument("--jax-python", type=Path, default=DEFAULT_JAX_PYTHON,
                        help=f"Python of a JAX environment for the JAX rows (default {DEFAULT_JAX_PYTHON}, "
                             "built by `make install-jax`; skipped with a note where it is absent)")
    parser.add_argument("--no-jax", action="store_true", help="leave out the JAX rows")
    parser.add_argument("--serve", choices=sorted(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:  # internal: one long-lived worker, driven over stdin/stdout
        return serve(args.serve, BenchSettings.from_dict(json.loads(args.settings_json)))

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)  # logs: don't squeeze the tables
    overrides = {k: v for k, v in {"warmup_steps": args.warmup_steps, "rounds": args.rounds,
                                   "steps_per_round": args.steps_per_round,
                                   "sample_rounds": args.sample_rounds}.items() if v is not None}
    if args.tfp_fit is not None:
        overrides["tfp_fit"] = args.tfp_fit
    if not args.no_jax and not args.no_isolate:
        if args.jax_python.is_file():
            overrides["jax_python"] = str(args.jax_python.absolute())  # not resolved: a venv's python is a link
        else:
            console.print(f"No JAX rows: {args.jax_python} not found (make install-jax builds it).")
    settings = BenchSettings.quick(**overrides) if args.quick else BenchSettings(**overrides)
    if settings.warmup_steps < 1 or min(settings.rounds, settings.steps_per_round, settings.sample_rounds) < 1:
        parser.error("--warmup-steps, --rounds, --steps-per-round and --sample-rounds must be >= 1")
    results = run_benchmark(settings, isolate=not args.no_isolate, only=args.only,
                            log=lambda msg: console.print(msg, highlight=False))
    path = write_results(results, args.out or (QUICK_OUT if args.quick else DEFAULT_OUT))
    console.print(render(results))
    console.print(f"Results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
