"""`make bench`'s JAX column: its two workers (an invkeras train step and the 'pixel' sampler)
run as the bench runs them, each in its own process under the JAX backend, speaking the same
line protocol as the TensorFlow workers. The coordinator times them beside the TensorFlow rows
(`tests/test_bench.py` checks the JAX / TF ratios)."""

from __future__ import annotations

import importlib.util
import math
import sys

from jax_helpers import REPO_ROOT

# The harness is a script beside the package, not part of it: load it from its file.
_spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "benchmarks" / "bench.py")
bench = sys.modules["bench"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _run_worker(name: str, settings: bench.BenchSettings) -> tuple[dict, dict, dict]:
    worker = bench.SubprocessWorker(name, settings)
    try:
        info = worker.start()
        record = worker.round(2)
        memory = worker.finish()
        assert worker.proc.returncode == 0
        return info, record, memory
    finally:
        worker.close()


def test_the_jax_train_and_sample_workers_time_rounds_under_jax():
    settings = bench.BenchSettings.quick(jax_python=sys.executable)
    info, record, memory = _run_worker("train_ours_jax", settings)
    assert info["backend_versions"]["keras"] and "jax backend" in info["how"] and "XLA" in info["how"]
    assert math.isfinite(info["first_loss"]) and info["train_flops_per_step"] > 0
    assert len(record["times_s"]) == 2 and all(math.isfinite(v) for v in record["values"])  # the step's losses
    assert memory["peak_rss_mib"] >= memory["rss_baseline_mib"] > 0

    info, record, _ = _run_worker("sample_ours_pixel_jax", settings)
    assert "jax backend" in info["how"] and info["flops_x_forward"] > 0
    assert len(record["times_s"]) == 2 and min(record["times_s"]) > 0
