"""Device strategies under TensorFlow (`invkeras.distribution`): MirroredStrategy on two logical CPUs.

TensorFlow's logical devices must be configured before it initialises, which has long happened
in the test process, so the step runs in a fresh Python process. A step of the PixelCNN++ under
MirroredStrategy on two devices must equal the step on one device with the same global batch:
the weights are mirrored, each device takes half the batch, and the gradients are summed over
the replicas of a loss that Keras scales by 1/replicas, i.e. averaged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    from invkeras.distribution import get_strategy, num_replicas, split_logical_cpus

    split_logical_cpus(2)

    from strategy_step import largest_differences, one_step

    def step(strategy, start=None):
        before, after, loss, model = one_step(strategy, start, jit_compile=False)
        devices = sorted({v.device for v in getattr(model.trainable_variables[0].value, "values", [])})
        return before, after, loss, devices

    mirrored = get_strategy("mirrored")
    start, single, single_loss, _ = step(get_strategy("default"))
    _, double, double_loss, devices = step(mirrored, start)
    print("RESULT " + json.dumps({
        "replicas": num_replicas(mirrored), "devices": devices, "losses": [single_loss, double_loss],
        **largest_differences(start, single, double),
    }))
    """
)


def test_a_mirrored_step_on_two_logical_cpus_equals_a_step_on_one():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    # The weights really were mirrored: one copy on each logical CPU.
    assert [d.rsplit("/", 1)[-1] for d in result["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)
    # The step moves a weight by up to 2.5; the two runs' weights differ by a few float32 roundings
    # (2.4e-7), from the order in which the replicas' gradients are added.
    assert result["max_step"] > 0.1
    assert result["max_difference"] < 1e-6
