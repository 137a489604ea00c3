"""The GPU check: one call on a CUDA machine with JAX, at most 8 minutes, one output folder.

`benchmarks/gpu_check.sh run` installs keras, tfp-nightly and invkeras from wheels made
beforehand (`gpu_check.sh prepare`, on the CPU machine, which also writes the features) and
then runs this under `timeout`. It measures, in order, each phase timed:

1. peak: a large bf16 matmul, and a float32 one: the rate this GPU reaches in this call, the
   yardstick for everything below ("share of the bf16 peak" is share of this measured rate,
   not of the datasheet's);
2. throughput: the paper-size MNIST inverter (PixelCNN++, 64 filters, 3 resnet layers, the
   fc3 vector h entering as a global bias, 256-way softmax) trained for a fixed number of steps
   through Keras's `train_on_batch`, as invkeras's loop trains, in mixed bf16 and in float32:
   compile time, images/s, and the share of the bf16 peak that XLA's FLOP count of one
   forward+backward pass at that rate amounts to;
3. fc3 inverter: the `pixelcnn` kind at paper scale (float32) on the features, for as many
   steps as the measured rate fits into the budget left after a reserve for phase 4; its test
   NLL;
4. sampling: 1,024 samples of one test input with the pixel sampler, timed with and without
   its compilation; then the sample grid (8 test inputs), drawn in a batch of the same size
   so that it reuses the compiled sampler.

Everything goes to <out>/report.json (and is printed); the fc3 inverter, its samples.png and
the features it trained on stay in <out>. `--tiny` is the CPU test of this script
(tests/jax_subset/test_gpu_check.py): tiny network, few steps, small matmul; its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

PAPER = dict(scale="paper", batch_size=64, throughput_steps=100, matmul_size=8192, matmul_reps=50, samples=1024,
             budget=420.0)
TINY = dict(scale="tiny", batch_size=8, throughput_steps=3, matmul_size=256, matmul_reps=5, samples=16,
            budget=240.0)
GRID_INPUTS = 8
SPLITS = ("train", "validation", "test")


class Clock:
    """Seconds since the call began, and what is left of the budget."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment() -> dict:
    import importlib.metadata as metadata

    import jax
    import keras

    devices = jax.devices()
    versions = {}
    for name in ("jax", "jaxlib", "keras", "tfp-nightly", "flax", "numpy", "invkeras"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "backend": keras.backend.backend(),
            "platform": devices[0].platform, "device_kind": devices[0].device_kind, "devices": len(devices),
            "versions": versions, "tensorflow_importable": _importable("tensorflow")}


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- 1. the yardstick ------------------------------------------------------------------


def matmul_rate(n: int, dtype: str, reps: int) -> dict:
    """FLOP/s of an n x n x n matmul in `dtype`, after one call to compile it."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0))
    a, b = (jax.random.normal(k, (n, n), dtype=jnp.dtype(dtype)) for k in keys)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    started = time.perf_counter()
    for _ in range(reps):
        c = matmul(a, b)
    c.block_until_ready()
    seconds = time.perf_counter() - started
    return {"n": n, "dtype": dtype, "reps": reps, "seconds": seconds, "tflops": 2 * n**3 * reps / seconds / 1e12}


# --- 2. training throughput ----------------------------------------------------------------


def network(scale: str, h_dim: int):
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig

    return PixelCNNConfig.from_scale(scale, image_shape=(28, 28, 1), conditioning="vector", h_shape=(h_dim,))


def step_flops(model, net, inputs, x) -> float:
    """XLA's FLOP count of one forward and backward pass (the lowered program, not compiled)."""
    import jax

    from invkeras.inverters.pixelcnn.likelihoods import NegativeLogLikelihood

    loss = NegativeLogLikelihood(likelihood=net.likelihood, num_channels=1)

    def loss_of(trainable, non_trainable, inputs, x):
        params, _ = model.stateless_call(trainable, non_trainable, inputs, training=True)
        return loss(x, params)

    lowered = jax.jit(jax.grad(loss_of)).lower([v.value for v in model.trainable_variables],
                                                [v.value for v in model.non_trainable_variables], inputs, x)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def throughput(policy: str, net, arrays: dict, batch_size: int, steps: int) -> tuple[dict, object]:
    """Train a fresh network for `steps` steps under `policy`; (measurements, the model)."""
    import keras

    from invkeras.inverters.pixelcnn.kind import build_network
    from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_network(net, learning_rate=1e-3, lr_decay=0.9999, jit_compile="true")
        n = len(arrays["x"])
        batches = [{"x": arrays["x"][i : i + batch_size].astype("float32"), "h": arrays["h"][i : i + batch_size]}
                   for i in range(0, n - batch_size + 1, batch_size)][:8]
        started = time.perf_counter()
        initialize_weight_norm(model, batches[0])
        init_s = time.perf_counter() - started
        started = time.perf_counter()
        first_loss = float(model.train_on_batch(batches[0], batches[0]["x"]))
        compile_s = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(steps):
            batch = batches[step % len(batches)]
            loss = float(model.train_on_batch(batch, batch["x"]))  # a float: waits for the step, as the loop does
        seconds = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"policy": policy, "batch_size": batch_size, "steps": steps, "weight_norm_init_s": init_s,
            "compile_and_first_step_s": compile_s, "seconds": seconds, "steps_per_s": steps / seconds,
            "images_per_s": steps * batch_size / seconds, "first_loss": first_loss, "last_loss": loss}, model


# --- 3. the fc3 inverter -------------------------------------------------------------------


def write_feature_dirs(npz: Path, out: Path) -> Path:
    """The bundle's arrays as an extract directory (train / validation / test) under `out`."""
    from invkeras.data.features import write_features

    root = out / "features" / "fc3"
    with np.load(npz) as data:
        for split in SPLITS:
            if (root / split / "manifest.json").exists():
                continue
            x, h = data[f"x_{split}"], data[f"h_{split}"]
            y = data[f"y_{split}"] if f"y_{split}" in data.files else np.zeros(len(x), np.int64)
            write_features(root / split, layer="fc3", split=split, x=x, h=h, y=y, dataset="mnist (gpu-check bundle)",
                           config={"bundle": str(npz)}, seed=0, source=f"gpu-check bundle {npz.name}")
    return root


def train_fc3(features: Path, out: Path, scale: str, batch_size: int, steps: int, eval_examples: int | None):
    from invkeras.inverters import config_for, inverter_class

    config = config_for("pixelcnn", dict(features=str(features), scale=scale, batch_size=batch_size, max_steps=steps,
                                         steps_per_checkpoint=max(1, math.ceil(steps / 4)), patience=1000,
                                         jit_compile="true", eval_examples=eval_examples, out=str(out)))
    return inverter_class("pixelcnn").train(config, progress=True)


# --- 4. sampling ------------------------------------------------------------------------


def sampling(inverter_dir: Path, features: Path, count: int, grid_path: Path) -> dict:
    from invkeras.data.features import open_features
    from invkeras.inverters import load_inverter
    from invkeras.reports.grids import originals_and_samples, save_grid

    inverter = load_inverter(inverter_dir)
    test = open_features(features / "test").load_all(GRID_INPUTS)
    started = time.perf_counter()
    inverter.sample(test["h"][:1], count, seed=0, batch_size=count, method="pixel")
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    inverter.sample(test["h"][:1], count, seed=1, batch_size=count, method="pixel")
    run_s = time.perf_counter() - started
    # The grid: GRID_INPUTS inputs x (count / GRID_INPUTS) samples is one batch of `count`, so
    # the sampler compiled above serves it; the grid shows the first 8 of each row.
    per_input = max(1, count // GRID_INPUTS)
    samples = inverter.sample(test["h"], per_input, seed=2, batch_size=count, method="pixel")
    save_grid(grid_path, originals_and_samples(test["x"], samples[:, :8]))
    np.savez_compressed(grid_path.with_suffix(".npz"), x=test["x"], h=test["h"], samples=samples)
    return {"samples": count, "method": "pixel", "batch_size": count, "compile_and_run_s": first_s, "run_s": run_s,
            "samples_per_s": count / run_s, "grid": str(grid_path)}


# --- the call -------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, type=Path,
                        help="npz with x_/h_ train, validation, test (gpu_check.sh prepare)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--tiny", action="store_true", help="CPU test settings; the numbers mean nothing")
    parser.add_argument("--budget", type=float, help="seconds for the whole call (default 420; tiny 240)")
    parser.add_argument("--throughput-steps", type=int, help="timed steps per precision (default 100; tiny 3)")
    parser.add_argument("--batch-size", type=int, help="(default 64; tiny 8)")
    parser.add_argument("--fc3-steps", type=int, help="train the fc3 inverter this many steps instead of for the "
                                                      "budget left (the CPU test)")
    args = parser.parse_args(argv)
    settings = dict(TINY if args.tiny else PAPER)
    for key in ("budget", "throughput_steps", "batch_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    clock = Clock(settings["budget"])
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("INVKERAS_JAX_CACHE", str(out / "jax-cache"))  # phase 3 recompiles phase 2's f32 step

    import keras

    if keras.backend.backend() != "jax":
        print(f"gpu-check: needs KERAS_BACKEND=jax, not {keras.backend.backend()}", file=sys.stderr)
        return 2
    from invkeras.distribution import enable_compilation_cache

    enable_compilation_cache()
    report = {"settings": settings, "environment": environment(), "phases": {}, "notes": []}
    log(f"devices: {report['environment']['devices']} x {report['environment']['device_kind']} "
        f"({report['environment']['platform']}); budget {settings['budget']:.0f} s")

    def save():
        report["total_s"] = clock.elapsed()
        (out / "report.json").write_text(json.dumps(report, indent=2, default=float))

    # 1. the yardstick
    started = clock.elapsed()
    peak = {dtype: matmul_rate(settings["matmul_size"], dtype, settings["matmul_reps"])
            for dtype in ("bfloat16", "float32")}
    report["matmul"] = peak
    report["phases"]["matmul_s"] = clock.elapsed() - started
    log(f"matmul {settings['matmul_size']}^3: bf16 {peak['bfloat16']['tflops']:.1f} TFLOP/s, "
        f"float32 {peak['float32']['tflops']:.1f} TFLOP/s")
    save()

    # 2. throughput in both precisions
    features = write_feature_dirs(args.features, out)
    from invkeras.data.features import open_features

    train = open_features(features / "train").load_all(settings["batch_size"] * 8)
    net = network(settings["scale"], train["h"].shape[1])
    started = clock.elapsed()
    report["throughput"] = {}
    for policy in ("mixed_bfloat16", "float32"):
        result, model = throughput(policy, net, train, settings["batch_size"], settings["throughput_steps"])
        report["throughput"][policy] = result
        log(f"{policy}: {result['images_per_s']:.0f} img/s ({result['steps_per_s']:.2f} steps/s at batch "
            f"{settings['batch_size']}), compile + first step {result['compile_and_first_step_s']:.1f} s")
    flops = step_flops(model, net, {"x": train["x"][: settings["batch_size"]].astype("float32"),
                                    "h": train["h"][: settings["batch_size"]]},
                       train["x"][: settings["batch_size"]].astype("float32"))
    bf16_peak = peak["bfloat16"]["tflops"] * 1e12
    for policy, result in report["throughput"].items():
        result["xla_flops_per_step"] = flops
        result["achieved_tflops"] = flops * result["steps_per_s"] / 1e12
        result["share_of_bf16_peak"] = flops * result["steps_per_s"] / bf16_peak
        log(f"{policy}: {result['achieved_tflops']:.2f} TFLOP/s = {100 * result['share_of_bf16_peak']:.1f}% of the "
            "measured bf16 matmul rate")
    report["phases"]["throughput_s"] = clock.elapsed() - started
    del model
    save()

    # 3. the fc3 inverter, for what is left but a reserve for sampling
    f32 = report["throughput"]["float32"]
    reserve = 2 * f32["compile_and_first_step_s"] + (30 if not args.tiny else 10)
    setup = f32["compile_and_first_step_s"] + f32["weight_norm_init_s"]
    available = clock.left() - reserve - setup
    steps = max(1, int(available * f32["steps_per_s"] * 0.8))  # 0.8: validation passes, saving
    if args.fc3_steps:
        steps = args.fc3_steps
    elif available < 0:
        report["notes"].append(f"budget short by {-available:.0f} s before the fc3 inverter; trained 1 step")
    log(f"fc3 inverter: {steps} steps ({available:.0f} s of training left, {reserve:.0f} s kept for sampling)")
    started = clock.elapsed()
    trained = train_fc3(features, out / "fc3", settings["scale"], settings["batch_size"], steps,
                        eval_examples=64 if args.tiny else None)
    report["fc3"] = {"steps": trained.steps, "seconds": clock.elapsed() - started,
                     "test_nll_nats": trained.test["nll_nats"], "test_se_nats": trained.test["se_nats"],
                     "test_bits_per_dim": trained.test["bits_per_dim"], "test_n": trained.test["n"],
                     "validation_nll_nats": trained.validation["nll_nats"], "model": str(trained.model_path)}
    report["phases"]["fc3_s"] = report["fc3"]["seconds"]
    test = trained.test
    log(f"fc3 inverter: {trained.steps} steps, test NLL {test['nll_nats']:.2f} ± {test['se_nats']:.2f} nats "
        f"({test['bits_per_dim']:.4f} bits/dim, n={test['n']})")
    save()

    # 4. sampling
    started = clock.elapsed()
    report["sampling"] = sampling(out / "fc3", features, settings["samples"], out / "fc3" / "samples.png")
    report["phases"]["sampling_s"] = clock.elapsed() - started
    log(f"sampling: {settings['samples']} samples of one input in {report['sampling']['run_s']:.2f} s "
        f"({report['sampling']['samples_per_s']:.0f}/s; {report['sampling']['compile_and_run_s']:.1f} s with "
        "compilation)")
    report["status"] = "complete"
    save()
    log(f"done in {clock.elapsed():.0f} s of {settings['budget']:.0f}; {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
