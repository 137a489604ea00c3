"""Classifier training under tf.distribute.MirroredStrategy on two logical CPUs.

Logical devices must be configured before TensorFlow initialises, which has long happened
in the test process, so the training runs in a fresh Python subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from invkeras.distribution import get_strategy, split_logical_cpus

    split_logical_cpus(2)
    replicas = get_strategy("mirrored").num_replicas_in_sync

    from invkeras.classifiers.training import ClassifierConfig, train_classifier

    result = train_classifier(ClassifierConfig(
        dataset="procedural", arch="conv", epochs=1, batch_size=32, train_examples=128,
        strategy="mirrored", workspace=sys.argv[1],
    ))
    print("RESULT " + json.dumps({
        "replicas": replicas, "model": str(result.model_path), "steps": result.steps,
        "test_accuracy": result.test_accuracy,
    }))
    """
)


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["replicas"] == 2
    assert result["steps"] == 4  # global batch 32 = 2 replicas x 16: 128 examples in 4 steps
    model = tmp_path / "procedural" / "conv" / "classifier" / "model.keras"
    assert result["model"] == str(model) and model.exists()
    meta = json.loads((model.parent / "model.keras.meta.json").read_text())
    assert meta["results"]["replicas"] == 2
    assert 0.0 <= result["test_accuracy"] <= 1.0


def test_a_strategy_the_backend_cannot_do_is_one_line():
    """Under TensorFlow, JAX's data-parallel is refused in one line naming the alternative."""
    from invkeras.distribution import check_batch_split, get_strategy, training_jit
    from invkeras.errors import InvkerasError

    with pytest.raises(InvkerasError, match="data-parallel is JAX's keras.distribution.DataParallel; under "
                                            "KERAS_BACKEND=tensorflow use --strategy mirrored"):
        get_strategy("data-parallel")
    check_batch_split(get_strategy("default"), 7, remainders={"train": 9})  # one device: any batch
    assert training_jit("auto") is False and training_jit("true") is True  # XLA measured slower on 2 CPU cores
