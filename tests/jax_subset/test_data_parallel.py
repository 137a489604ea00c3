"""Data-parallel training under JAX (`--strategy data-parallel`: keras.distribution.DataParallel).

XLA is told to show two host devices, which must happen before JAX starts, so the checks run in
a fresh process. A step on two devices must equal the step on one with the same global batch:
the weights are replicated, each device takes half the batch, and the gradients are averaged.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from jax_helpers import run_python
from invkeras.errors import InvkerasError

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from invkeras.distribution import check_batch_split, get_strategy, num_replicas
    from invkeras.errors import InvkerasError
    from strategy_step import largest_differences, one_step

    def step(strategy, start=None):
        before, after, loss, model = one_step(strategy, start, jit_compile=True)
        return before, after, loss, len(model.trainable_variables[0].value.sharding.device_set)

    strategy = get_strategy("data-parallel")
    start, single, single_loss, single_devices = step(get_strategy("default"))
    _, double, double_loss, double_devices = step(strategy, start)
    try:
        check_batch_split(strategy, 7)
        refused = None
    except InvkerasError as exc:
        refused = str(exc)

    from invkeras.classifiers.training import ClassifierConfig, train_classifier

    result = train_classifier(ClassifierConfig(dataset="procedural", arch="conv", epochs=1, batch_size=32,
                                               train_examples=128, strategy="data-parallel", workspace=sys.argv[1]),
                              progress=False)
    meta = json.loads((result.model_path.parent / "model.keras.meta.json").read_text())
    print("RESULT " + json.dumps({
        "devices": len(jax.devices()), "replicas": num_replicas(strategy), "auto": num_replicas(get_strategy("auto")),
        "single_devices": single_devices, "double_devices": double_devices, "refused": refused,
        "losses": [single_loss, double_loss],
        **largest_differences(start, single, double),
        "classifier_steps": result.steps, "classifier_replicas": meta["results"]["replicas"],
    }))
    """
)


def test_a_step_on_two_devices_equals_a_step_on_one(tmp_path):
    proc = run_python(["-c", SCRIPT, str(tmp_path)],
                      env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
                                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["devices"] == 2 and result["replicas"] == 2 and result["auto"] == 2
    assert result["single_devices"] == 1 and result["double_devices"] == 2  # the weights really were replicated
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)
    # Measured: the step moves a weight by up to 2.3; the two runs' weights differ by at most 8e-7.
    assert result["max_step"] > 0.1
    assert result["max_difference"] < 1e-5 * result["max_step"]
    assert "divisible by 2" in result["refused"]
    assert result["classifier_steps"] == 4 and result["classifier_replicas"] == 2  # 128 examples, global batch 32


def test_a_strategy_the_backend_cannot_do_is_one_line():
    from invkeras.distribution import get_strategy

    with pytest.raises(InvkerasError, match="mirrored is TensorFlow's MirroredStrategy; under KERAS_BACKEND=jax use "
                                            "--strategy data-parallel"):
        get_strategy("mirrored")
    with pytest.raises(InvkerasError, match="unknown strategy 'tpu'"):
        get_strategy("tpu")
    assert get_strategy("default") is None
