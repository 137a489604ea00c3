"""benchmarks/gpu_check.sh on the CPU, in its tiny mode: the script runs end to end and writes
every figure its GPU run would (the figures themselves mean nothing here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from jax_helpers import REPO_ROOT


def _bundle(directory):
    """A stand-in for `gpu_check.sh prepare`: 28x28 images (procedural shapes, padded) and an h."""
    from invkeras.analyses.ground_truth import one_hot_factors
    from invkeras.data import procedural

    arrays = {}
    for stream, (split, n) in enumerate({"train": 64, "validation": 16, "test": 16}.items()):
        x, y, factors = procedural.generate(n, seed=(1, stream))
        arrays[f"x_{split}"] = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
        arrays[f"h_{split}"] = one_hot_factors(factors, ("shape", "row", "col"))
        arrays[f"y_{split}"] = y
    directory.mkdir()
    np.savez_compressed(directory / "mnist_fc3.npz", **arrays)


def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    _bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_NO_INSTALL": "1", "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
           "GPU_CHECK_BUNDLE": str(tmp_path / "bundle"), "GPU_CHECK_OUT": str(out)}
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "run", "--tiny", "--fc3-steps", "4"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["environment"]["backend"] == "jax"
    assert not report["environment"]["tensorflow_importable"]
    assert report["matmul"]["bfloat16"]["tflops"] > 0
    for policy in ("mixed_bfloat16", "float32"):
        result = report["throughput"][policy]
        assert result["images_per_s"] > 0 and np.isfinite(result["last_loss"])
        assert result["xla_flops_per_step"] > 0 and 0 < result["share_of_bf16_peak"] < 10
    assert report["fc3"]["steps"] == 4 and np.isfinite(report["fc3"]["test_nll_nats"]) and report["fc3"]["test_n"] == 16
    assert report["sampling"]["samples"] == 16 and report["sampling"]["run_s"] > 0
    assert (out / "fc3" / "samples.png").stat().st_size > 0 and (out / "fc3" / "inverter.keras").exists()
    assert "fc3 inverter: 4 steps, test NLL" in (out / "gpu_check.log").read_text()
