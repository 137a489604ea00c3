"""Benchmark: invkeras' conditional PixelCNN++ against `tfp.distributions.PixelCNN`.

Run with `make bench` (or `python -m invkeras.bench`; `--quick` is a smoke run of a minute or two
on 8x8 images). Both columns are measured in one run on the same machine, with the same
synthetic data: random uint8 images (as float32 0..255) and random normal conditioning
vectors h of size `cond_dim`. Both sides use the discretised logistic-mixture likelihood
and vector conditioning.

What is measured
----------------
* Training speed at equal size (28x28x1, 64 filters, 3 resnet layers per block, three
  resolutions, 10 mixture components, dropout 0.5, batch 32). Ours is the model exactly as
  `invkeras train-inverter` builds it (`build_network`: Adam with the per-step decay and the
  NLL loss, weight norm with data-dependent init), measured with XLA (`jit_compile=True`) and
  without. TFP's network is tf-keras layers; we train it with a `tf.function` train step
  (GradientTape over `dist.network.trainable_variables`, the same Adam schedule, loss
  -mean log_prob, dropout on). Its docstring says weight norm "works only in Eager mode";
  in fact the `WeightNorm` wrapper's call is itself a `tf.function` and its data-dependent
  init runs inside our compiled step, which the worker checks, so TFP keeps its default
  `use_weight_norm=True` and both sides do the same kind of work. TFP's docs show a second
  recipe (a tf_keras Model whose output is log_prob, `add_loss`, compile, fit); it is timed
  too (stepped with `train_on_batch`), and the faster of the two TFP recipes is the baseline
  the ratios use. (`jit_compile=True` on the TFP step was also tried while writing this: it
  compiled but ran ~50x slower on this CPU, so it is not TFP's fast path.)
  Each side does `warmup_steps` untimed steps first (tracing/compilation and weight-norm
  init), then `timed_steps` steps each timed to completion; steps/s = 1 / median step time
  (the median resists the noise of a shared machine). Ours is stepped with
  `train_on_batch`, which runs the same compiled train function `fit` does.
* Parameter counts. TFP's causal convolutions are masked 3x3 (and 4x4 strided) kernels
  whose masked entries are stored but always zero; ours are shifted 2x3 / 2x2 kernels with
  no dead weights. So both the stored count and the effective (unmasked) count are shown;
  "equal size" means equal effective parameters. TFP still pays the FLOPs of the masked
  taps, which is part of why the two differ in speed.
* Sampling time for `num_images` images (28x28x1, 32 filters, 1 resnet layer). TFP:
  `dist.sample(n, conditional_input=h, seed=...)` inside a `tf.function` (graph mode; one
  full forward pass per pixel), traced first and then timed once (it takes minutes on two
  cores). Ours: `invkeras.inverters.pixelcnn.sampling.sample` with method "pixel" (the default: per-pixel
  caches, each activation computed once), "cached" (per-layer row caches, one
  row per resolution per pixel) and "full" (one full forward pass per pixel, i.e. TFP's
  algorithm, XLA-compiled); each timed on its second call, the first call (compilation +
  one run) reported beside it.
* Peak memory. Every measurement runs in its own fresh Python subprocess, so XLA caches,
  allocator pools and the other side's weights cannot leak between them. A worker reports
  its peak resident set size (max of `ru_maxrss` and a 20 ms RSS poll) and the growth over
  its RSS after importing TensorFlow, Keras, TFP and invkeras (both sides import the same
  modules, so the growth is the model's own cost). `--no-isolate` runs everything in one
  process (used by the tests); then only the poll is used and the numbers are indicative.

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
from pathlib import Path
from typing import Any, Callable

DEFAULT_OUT = Path("bench-results") / "bench.json"
QUICK_OUT = Path("bench-results") / "bench-quick.json"
TRAIN_TARGET = 1.5  # ours / TFP train steps per second
SAMPLE_TARGET = 150.0  # TFP / ours (the default "pixel" sampler) sampling time, issue 13


# --- settings -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Every knob of one benchmark run (stored in the JSON)."""

    image_shape: tuple[int, int, int] = (28, 28, 1)
    cond_dim: int = 10  # a logits-like conditioning vector
    num_mixtures: int = 10
    dropout_rate: float = 0.5
    # Training comparison.
    train_filters: int = 64
    train_nr_resnet: int = 3
    batch_size: int = 32
    warmup_steps: int = 2
    timed_steps: int = 5
    learning_rate: float = 1e-3
    lr_decay: float = 0.9999
    # Sampling comparison.
    sample_filters: int = 32
    sample_nr_resnet: int = 1
    num_images: int = 16
    seed: int = 0
    tfp_fit: bool = True  # also time TFP's docs recipe (tf_keras Model + add_loss + fit)
    smoke: bool = False  # set by quick(): its timings say nothing about the targets

    @classmethod
    def quick(cls, **overrides) -> "BenchSettings":
        """A smoke run: tiny images and networks, a couple of steps."""
        base = dict(
            image_shape=(8, 8, 1), cond_dim=3, num_mixtures=3, train_filters=8, train_nr_resnet=0,
            batch_size=4, warmup_steps=1, timed_steps=2, sample_filters=8, sample_nr_resnet=0, num_images=4,
            tfp_fit=False, smoke=True,
        )
        return cls(**{**base, **overrides})


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


# --- shared helpers ---------------------------------------------------------------------


def _import_everything():
    """Both sides import the same modules, so RSS growth after this is the model's cost."""
    import keras  # noqa: F401
    import tensorflow as tf  # noqa: F401
    import tensorflow_probability as tfp
    from tensorflow_probability.python.internal import tf_keras  # noqa: F401

    tfp.distributions.PixelCNN  # noqa: B018  (TFP imports lazily; load it now)
    import invkeras.inverters.pixelcnn.network  # noqa: F401
    import invkeras.inverters.pixelcnn.sampling  # noqa: F401
    import invkeras.inverters.pixelcnn.kind  # noqa: F401


def _synthetic_batch(s: BenchSettings, batch: int, seed_offset: int = 0):
    import numpy as np

    rng = np.random.default_rng(s.seed + seed_offset)
    x = rng.integers(0, 256, (batch, *s.image_shape)).astype("float32")
    h = rng.normal(size=(batch, s.cond_dim)).astype("float32")
    return x, h


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


def _timed_steps(step: Callable[[], float], warmup: int, timed: int) -> dict:
    """Run `step` (which must block until done and return the loss) warmup + timed times."""
    warmup_times, step_times, losses = [], [], []
    for i in range(warmup + timed):
        start = time.perf_counter()
        loss = float(step())
        (warmup_times if i < warmup else step_times).append(time.perf_counter() - start)
        losses.append(loss)
    median = statistics.median(step_times)
    return {
        "warmup_s": warmup_times,
        "step_times_s": step_times,
        "median_step_s": median,
        "mean_step_s": statistics.fmean(step_times),
        "steps_per_s": 1.0 / median,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


# --- workers: one measurement each, normally in a fresh subprocess ------------------------


def _train_ours(s: BenchSettings, jit: bool) -> dict:
    import keras

    from invkeras.inverters.pixelcnn.kind import build_network
    from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

    keras.utils.set_random_seed(s.seed)
    x, h = _synthetic_batch(s, s.batch_size)
    inputs = {"x": x, "h": h}
    config = _our_config(s, s.train_filters, s.train_nr_resnet)
    start = time.perf_counter()
    model = build_network(config, learning_rate=s.learning_rate, lr_decay=s.lr_decay, jit_compile=str(jit).lower())
    initialize_weight_norm(model, inputs)  # as the pixelcnn kind does before training
    build_s = time.perf_counter() - start
    params = sum(int(math.prod(v.shape)) for v in model.trainable_variables)
    result = _timed_steps(lambda: model.train_on_batch(inputs, x), s.warmup_steps, s.timed_steps)
    how = "build_network + train_on_batch, " + ("XLA (jit_compile=True)" if jit else "no XLA (jit_compile=False)")
    return {**result, "build_s": build_s, "params": params, "params_effective": params, "how": how}


def _train_tfp(s: BenchSettings) -> dict:
    import tensorflow as tf
    from tensorflow_probability.python.internal import tf_keras

    tf.random.set_seed(s.seed)
    x_np, h_np = _synthetic_batch(s, s.batch_size)
    x, h = tf.constant(x_np), tf.constant(h_np)
    start = time.perf_counter()
    dist = _tfp_pixelcnn(s, s.train_filters, s.train_nr_resnet)
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(s.learning_rate, decay_steps=1, decay_rate=s.lr_decay)
    optimizer = tf_keras.optimizers.Adam(schedule)
    variables = dist.network.trainable_variables

    @tf.function
    def train_step(x, h):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x, conditional_input=h, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    build_s = time.perf_counter() - start
    stored, effective = _tfp_param_counts(dist)
    result = _timed_steps(lambda: train_step(x, h).numpy(), s.warmup_steps, s.timed_steps)
    return {
        **result, "build_s": build_s, "params": stored, "params_effective": effective,
        "weight_norm_initialised_in_graph": _tfp_weight_norm_initialised(dist),
        "how": "tf.function GradientTape step, graph mode, no XLA; use_weight_norm=True",
    }


def _train_tfp_fit(s: BenchSettings) -> dict:
    """The docs' recipe: a tf_keras Model whose output is log_prob, add_loss, compile, fit."""
    import tensorflow as tf
    from tensorflow_probability.python.internal import tf_keras

    tf.random.set_seed(s.seed)
    x, h = _synthetic_batch(s, s.batch_size)
    start = time.perf_counter()
    dist = _tfp_pixelcnn(s, s.train_filters, s.train_nr_resnet)
    image_input = tf_keras.layers.Input(shape=s.image_shape)
    h_input = tf_keras.layers.Input(shape=(s.cond_dim,))
    log_prob = dist.log_prob(image_input, conditional_input=h_input)
    model = tf_keras.Model(inputs=[image_input, h_input], outputs=log_prob)
    model.add_loss(-tf.reduce_mean(log_prob))
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(s.learning_rate, decay_steps=1, decay_rate=s.lr_decay)
    model.compile(optimizer=tf_keras.optimizers.Adam(schedule))
    build_s = time.perf_counter() - start
    stored, effective = _tfp_param_counts(dist)
    result = _timed_steps(lambda: model.train_on_batch([x, h]), s.warmup_steps, s.timed_steps)
    return {
        **result, "build_s": build_s, "params": stored, "params_effective": effective,
        "how": "docs recipe: tf_keras Model(log_prob) + add_loss + compile, train_on_batch",
    }


def _sample_ours(s: BenchSettings, method: str) -> dict:
    import keras
    import numpy as np

    from invkeras.inverters.pixelcnn.network import build_pixelcnn
    from invkeras.inverters.pixelcnn.sampling import macs_per_image, sample
    from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

    keras.utils.set_random_seed(s.seed)
    x, h = _synthetic_batch(s, s.num_images)
    config = _our_config(s, s.sample_filters, s.sample_nr_resnet)
    start = time.perf_counter()
    model = build_pixelcnn(config)
    initialize_weight_norm(model, {"x": x, "h": h})
    build_s = time.perf_counter() - start

    def draw():
        begin = time.perf_counter()
        images = sample(model, config, h, num_samples=1, seed=s.seed, batch_size=s.num_images, method=method)
        return time.perf_counter() - begin, images

    first_call_s, _ = draw()  # compiles the whole pixel loop with XLA, then runs it
    sample_s, images = draw()
    assert images.shape == (s.num_images, 1, *s.image_shape) and images.dtype == np.uint8, images.shape
    return {
        "sample_s": sample_s, "first_call_s": first_call_s, "compile_s": max(first_call_s - sample_s, 0.0),
        "build_s": build_s, "params": sum(int(math.prod(v.shape)) for v in model.trainable_variables),
        # Multiply-accumulates per image, as a multiple of one forward pass (counted from the shapes).
        "flops_x_forward": macs_per_image(config, method) / macs_per_image(config),
        "how": f"invkeras.inverters.pixelcnn.sampling.sample(method='{method}'), XLA; timed on the 2nd call",
    }


def _sample_tfp(s: BenchSettings) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.random.set_seed(s.seed)
    _, h = _synthetic_batch(s, s.num_images)
    start = time.perf_counter()
    dist = _tfp_pixelcnn(s, s.sample_filters, s.sample_nr_resnet)
    build_s = time.perf_counter() - start
    draw = tf.function(lambda h: dist.sample(s.num_images, conditional_input=h, seed=s.seed))
    start = time.perf_counter()
    draw.get_concrete_function(tf.TensorSpec(h.shape, tf.float32))  # trace only, runs nothing
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    images = draw(tf.constant(h)).numpy()
    sample_s = time.perf_counter() - start
    assert images.shape == (s.num_images, *s.image_shape) and np.all((images >= 0) & (images <= 255)), images.shape
    stored, effective = _tfp_param_counts(dist)
    return {
        "sample_s": sample_s, "trace_s": trace_s, "build_s": build_s, "params": stored,
        "params_effective": effective,
        "how": "tf.function(dist.sample(n, conditional_input=h, seed)), graph mode; traced, then timed once",
    }


WORKERS: dict[str, tuple[str, Callable[[BenchSettings], dict]]] = {
    "train_tfp": ("train", _train_tfp),
    "train_tfp_fit": ("train", _train_tfp_fit),
    "train_ours_xla": ("train", lambda s: _train_ours(s, jit=True)),
    "train_ours_no_xla": ("train", lambda s: _train_ours(s, jit=False)),
    "sample_tfp": ("sample", _sample_tfp),
    "sample_ours_cached": ("sample", lambda s: _sample_ours(s, "cached")),
    "sample_ours_full": ("sample", lambda s: _sample_ours(s, "full")),
    "sample_ours_pixel": ("sample", lambda s: _sample_ours(s, "pixel")),
}
LABELS = {
    "train_tfp": "TFP PixelCNN (tf.function step)",
    "train_tfp_fit": "TFP PixelCNN (docs: Model + fit)",
    "train_ours_xla": "invkeras, XLA",
    "train_ours_no_xla": "invkeras, no XLA",
    "sample_tfp": "TFP dist.sample",
    "sample_ours_cached": "invkeras 'cached'",
    "sample_ours_full": "invkeras 'full'",
    "sample_ours_pixel": "invkeras 'pixel' (per-pixel caches)",
}


def run_worker(name: str, s: BenchSettings, isolated: bool) -> dict:
    """One measurement, with its peak memory; `isolated` means this process runs nothing else."""
    _import_everything()
    _, fn = WORKERS[name]
    with PeakRSS() as rss:
        start = time.perf_counter()
        result = fn(s)
        result["worker_wall_s"] = time.perf_counter() - start
    peak = max(rss.peak_mib, _maxrss_mib()) if isolated else rss.peak_mib
    result.update(rss_baseline_mib=rss.baseline_mib, peak_rss_mib=peak, rss_growth_mib=peak - rss.baseline_mib)
    return result


def _run_isolated(name: str, s: BenchSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="invkeras-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "invkeras.bench", "--worker", name,
                   "--settings-json", json.dumps(dataclasses.asdict(s)), "--result", str(out)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
            raise RuntimeError(f"benchmark worker '{name}' failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


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


def summarize(train: dict, sample: dict) -> dict:
    """Ratios and verdicts. Train: ours steps/s over TFP's (its faster recipe). Sample: TFP's
    time over ours."""
    summary: dict[str, Any] = {}
    tfp_rates = {k: train[k]["steps_per_s"] for k in ("train_tfp", "train_tfp_fit") if k in train}
    if tfp_rates:
        summary["train_tfp_baseline"] = max(tfp_rates, key=tfp_rates.get)  # TFP's faster recipe
        tfp_rate = tfp_rates[summary["train_tfp_baseline"]]
        ours = {k: train[k]["steps_per_s"] for k in ("train_ours_xla", "train_ours_no_xla") if k in train}
        summary["train_ratio"] = {k: rate / tfp_rate for k, rate in ours.items()}
        if ours:
            best = max(ours, key=ours.get)
            summary["train_best"] = best
            summary["xla_faster"] = (ours.get("train_ours_xla", 0) > ours.get("train_ours_no_xla", math.inf))
            summary["train_target"] = TRAIN_TARGET
            summary["train_target_met"] = summary["train_ratio"][best] >= TRAIN_TARGET
    if "sample_tfp" in sample:
        tfp_time = sample["sample_tfp"]["sample_s"]
        summary["sample_ratio"] = {
            k: tfp_time / sample[k]["sample_s"]
            for k in ("sample_ours_cached", "sample_ours_full", "sample_ours_pixel") if k in sample
        }
        if "sample_ours_pixel" in sample:
            summary["sample_target"] = SAMPLE_TARGET
            summary["sample_target_met"] = summary["sample_ratio"]["sample_ours_pixel"] >= SAMPLE_TARGET
    return summary


def run_benchmark(s: BenchSettings, *, isolate: bool = True, only: str | None = None, log=print) -> dict:
    """Run every measurement (each in its own subprocess when `isolate`) and return the results."""
    started = time.perf_counter()
    machine = machine_info()
    names = [n for n, (part, _) in WORKERS.items() if only in (None, part) and (n != "train_tfp_fit" or s.tfp_fit)]
    measured: dict[str, dict] = {}
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {WORKERS[name][0]}: {LABELS[name]} ...")
        measured[name] = _run_isolated(name, s) if isolate else run_worker(name, s, isolated=False)
        log(f"      done in {measured[name]['worker_wall_s']:.1f} s")
    if hasattr(os, "getloadavg"):
        machine["load_avg_end"] = list(os.getloadavg())
    train = {n: r for n, r in measured.items() if WORKERS[n][0] == "train"}
    sample = {n: r for n, r in measured.items() if WORKERS[n][0] == "sample"}
    return {
        "settings": dataclasses.asdict(s),
        "isolated": isolate,
        "machine": machine,
        "versions": _versions(),
        "train": train,
        "sample": sample,
        "summary": summarize(train, sample),
        "wall_s": time.perf_counter() - started,
    }


# --- output -------------------------------------------------------------------------------


def _call(name: str, kwargs: dict) -> str:
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def _seconds(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def render(results: dict):
    """A rich renderable: machine and settings, then the training, sampling and target tables."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s, m, v, summary = results["settings"], results["machine"], results["versions"], results["summary"]
    load = ""
    if "load_avg_start" in m:
        load = (f"; load average {m['load_avg_start'][0]:.2f} at start, {m.get('load_avg_end', [math.nan])[0]:.2f}"
                " at end (the cores may be shared with other work, which slows both sides and adds noise)")
    h, w, c = s["image_shape"]
    lines = [
        f"Machine: {m['cpu_count']} cores, {m['cpu_model']}, GPU: {', '.join(m['gpus']) or 'none'}{load}",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"Data: random uint8 images {h}x{w}x{c} and h ~ N(0, 1) of size {s['cond_dim']}; logistic mixture with "
        f"{s['num_mixtures']} components, vector conditioning, dropout {s['dropout_rate']}, 3 resolutions.",
        f"Train: {s['train_filters']} filters, {s['train_nr_resnet']} resnet layers, batch {s['batch_size']}, "
        f"Adam {s['learning_rate']} x {s['lr_decay']}/step; {s['warmup_steps']} warm-up + {s['timed_steps']} timed "
        "steps, steps/s = 1 / median step.",
        f"Sample: {s['num_images']} images, {s['sample_filters']} filters, {s['sample_nr_resnet']} resnet layer(s); "
        "TFP timed once after tracing, ours on the 2nd call.",
        f"Ours (train): {_call('PixelCNNConfig', our_kwargs(_settings(s), s['train_filters'], s['train_nr_resnet']))}",
        f"TFP (train): {_call('tfd.PixelCNN', tfp_kwargs(_settings(s), s['train_filters'], s['train_nr_resnet']))}",
        "Sampling uses the same arguments with the sampling filters and resnet layers.",
        "Memory: " + ("each row in its own subprocess; peak RSS and growth over the RSS after imports."
                      if results["isolated"] else "all rows in one process (--no-isolate): indicative only."),
    ]

    train = Table(title="Training speed (equal size)", title_justify="left")
    for col in ("Model", "Params effective (stored)", "Steps/s", "Step s: median (min–max)", "Warm-up steps (s)",
                "vs TFP", "Peak RSS MiB (growth)"):
        train.add_column(col, justify="left" if col == "Model" else "right")
    baseline = summary.get("train_tfp_baseline")
    tfp_rate = results["train"][baseline]["steps_per_s"] if baseline else None
    for name, r in _ordered(results["train"]):
        ratio = r["steps_per_s"] / tfp_rate if tfp_rate else None
        times = r["step_times_s"]
        spread = f"{_seconds(r['median_step_s'])} ({_seconds(min(times))}–{_seconds(max(times))})"
        train.add_row(LABELS[name], f"{r['params_effective']:,} ({r['params']:,})", f"{r['steps_per_s']:.3f}", spread,
                      " + ".join(_seconds(t) for t in r["warmup_s"]), _ratio(ratio), _memory(r))

    sample = Table(title=f"Sampling time ({s['num_images']} images)", title_justify="left")
    for col in ("Sampler", "Params", "Time (s)", "Compile/trace (s)", "vs TFP", "FLOPs/image (x fwd)",
                "Peak RSS MiB (growth)"):
        sample.add_column(col, justify="left" if col == "Sampler" else "right")
    for name, r in _ordered(results["sample"]):
        ratio = 1.0 if name == "sample_tfp" else summary.get("sample_ratio", {}).get(name)
        setup = r.get("trace_s", r.get("compile_s"))
        params = f"{r['params_effective']:,} ({r['params']:,})" if "params_effective" in r else f"{r['params']:,}"
        flops = f"{r['flops_x_forward']:.2f}" if "flops_x_forward" in r else "—"
        sample.add_row(LABELS[name], params, _seconds(r["sample_s"]), _seconds(setup), _ratio(ratio), flops,
                       _memory(r))

    targets = Table(title="Targets", title_justify="left")
    for col in ("Measure", "Ratio", "Target", "Met"):
        targets.add_column(col)
    if "train_best" in summary:
        best = summary["train_best"]
        xla = "XLA is faster" if summary["xla_faster"] else "no-XLA is faster"
        targets.add_row(f"Train steps/s, ours / TFP (ours: {LABELS[best]}, {xla}; TFP: "
                        f"{LABELS[summary['train_tfp_baseline']]})",
                        _ratio(summary["train_ratio"][best]), f"≥ {TRAIN_TARGET}×",
                        _yes(summary["train_target_met"]))
    if "sample_target" in summary:
        targets.add_row("Sampling time, TFP / ours ('pixel', the default)", _ratio(summary["sample_ratio"]["sample_ours_pixel"]),
                        f"≥ {SAMPLE_TARGET:g}×", _yes(summary["sample_target_met"]))
    if "sample_ours_full" in summary.get("sample_ratio", {}):
        targets.add_row("Sampling time, TFP / ours ('full', same algorithm as TFP)",
                        _ratio(summary["sample_ratio"]["sample_ours_full"]), "info", "")
    if "sample_ours_pixel" in summary.get("sample_ratio", {}):
        targets.add_row("Sampling time, TFP / ours ('pixel', the default sampler)",
                        _ratio(summary["sample_ratio"]["sample_ours_pixel"]), "info", "")
    targets.add_row("Peak memory", "see the tables above", "reported", _yes(True))
    how = [f"  {LABELS[name]}: {r['how']}" for name, r in _ordered({**results["train"], **results["sample"]})]
    tfp_train = results["train"].get("train_tfp")
    if tfp_train is not None:
        done = "yes" if tfp_train["weight_norm_initialised_in_graph"] else "NO"
        how.append(f"  TFP weight norm kept on (as ours); its data-dependent init ran in the tf.function step: {done}")
    if "train_ours_xla" in results["train"]:
        how.append("  (train-inverter's default jit_compile='auto' is Keras' rule: XLA off on a CPU-only machine)")
    if s.get("smoke"):
        lines.insert(0, "QUICK SMOKE RUN (--quick): tiny networks and images; its ratios say nothing "
                        "about the targets.")
    parts = [*(Text(line) for line in lines), Text("")]
    parts += [t for t in (train, sample) if t.row_count] + [targets, Text("How each row was measured:")]
    parts += [Text(line) for line in how] + [Text(f"Total wall time: {results['wall_s']:.0f} s")]
    return Group(*parts)


def _ordered(measured: dict) -> list[tuple[str, dict]]:
    """Rows in WORKERS order (a JSON round trip sorts the keys)."""
    return [(name, measured[name]) for name in WORKERS if name in measured]


def _settings(settings: dict) -> BenchSettings:
    return BenchSettings(**{**settings, "image_shape": tuple(settings["image_shape"])})


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
    parser = argparse.ArgumentParser(prog="python -m invkeras.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (8x8 images, few steps)")
    parser.add_argument("--out", type=Path, help=f"results JSON (default {DEFAULT_OUT}, or {QUICK_OUT} with --quick)")
    parser.add_argument("--warmup-steps", type=int, help="untimed training steps per side")
    parser.add_argument("--timed-steps", type=int, help="timed training steps per side")
    parser.add_argument("--only", choices=["train", "sample"], help="run only one half")
    parser.add_argument("--tfp-fit", action=argparse.BooleanOptionalAction, default=None,
                        help="also time TFP's docs recipe, tf_keras Model + fit (default: on, off with --quick)")
    parser.add_argument("--no-isolate", action="store_true", help="run everything in this process")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # internal: one measurement in this fresh process
        result = run_worker(args.worker, _settings(json.loads(args.settings_json)), isolated=True)
        args.result.write_text(json.dumps(result))
        return 0

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=160)  # logs: don't squeeze the tables
    overrides = {k: v for k, v in {"warmup_steps": args.warmup_steps, "timed_steps": args.timed_steps}.items()
                 if v is not None}
    if args.tfp_fit is not None:
        overrides["tfp_fit"] = args.tfp_fit
    settings = BenchSettings.quick(**overrides) if args.quick else BenchSettings(**overrides)
    if settings.warmup_steps < 1 or settings.timed_steps < 1:
        parser.error("--warmup-steps and --timed-steps must be >= 1")
    results = run_benchmark(settings, isolate=not args.no_isolate, only=args.only,
                            log=lambda msg: console.print(msg, highlight=False))
    path = write_results(results, args.out or (QUICK_OUT if args.quick else DEFAULT_OUT))
    console.print(render(results))
    console.print(f"Results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
