"""Under KERAS_BACKEND=jax with TensorFlow unimportable: features written beforehand -> a tiny
PixelCNN++ inverter (and its unconditional twin) -> samples -> an information table, each step
a CLI process; then exact resume after a simulated kill.

The features are the procedural images with h = one-hot row and column, so H(x|h) is known
exactly and the table has a true lower bound to report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jax_helpers import invkeras_cli, unexpected_tf_imports

LAYER = "row+col"
SPLITS = {"train": 256, "validation": 32, "test": 32}
TRAIN = ["--scale", "tiny", "--batch-size", "16", "--max-steps", "20", "--steps-per-checkpoint", "10"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """An extract directory written with NumPy alone, as a user's own pipeline would."""
    from invkeras.analyses.ground_truth import one_hot_factors
    from invkeras.data import procedural
    from invkeras.data.features import write_features

    root = tmp_path_factory.mktemp("features") / LAYER
    for stream, (split, n) in enumerate(SPLITS.items()):
        x, y, factors = procedural.generate(n, seed=(0, stream))
        write_features(root / split, layer=LAYER, split=split, x=x, h=one_hot_factors(factors, ("row", "col")), y=y,
                       dataset="procedural", config={"factors": ["row", "col"]}, seed=0,
                       source="one-hot row and column")
    return root


def test_features_to_samples_and_information_without_tensorflow(features, tmp_path):
    conditional, unconditional = tmp_path / "inverters" / LAYER, tmp_path / "inverters" / "none"
    blocked = dict(block_tensorflow=True, tmp_path=tmp_path)
    invkeras_cli("train-inverter", "--features", features, *TRAIN, "--out", conditional, **blocked)
    invkeras_cli("train-inverter", "--features", features, "--layer", "none", *TRAIN, "--out", unconditional,
                 **blocked)
    invkeras_cli("sample", "--inverter", conditional, "--num-inputs", 2, "--num-samples", 3, "--seed", 1, **blocked)
    invkeras_cli("estimate-mi", "--inverter", conditional, "--unconditional", unconditional,
                 "--out", tmp_path / "mi.json", **blocked)

    assert unexpected_tf_imports(tmp_path) == []
    meta = json.loads((conditional / "inverter.keras.meta.json").read_text())
    assert meta["versions"]["keras_backend"] == "jax" and "tensorflow" not in meta["versions"]
    assert meta["results"]["steps"] == 20
    with np.load(conditional / "samples.npz") as saved:
        assert saved["samples"].shape == (2, 3, 20, 20, 1) and saved["samples"].dtype == np.uint8
    rows = {row["layer"]: row for row in json.loads((tmp_path / "mi.json").read_text())["rows"]}
    assert set(rows) == {LAYER, "none"}
    assert 0 < rows[LAYER]["H*(x|h) nats"] < rows["none"]["H*(x|h) nats"]  # h helps, even after 20 steps


def test_a_killed_run_resumes_to_the_same_weights(features, tmp_path):
    """Killed after step 15 (its last checkpoint at 10), rerun: the same weights as a run never
    interrupted, under JAX too (the weights, Adam's slots and the seed states are all resumed)."""
    from invkeras.inverters import config_for, inverter_class
    from killing import Interrupt, KillAt  # tests/killing.py

    def config(out):
        return config_for("pixelcnn", dict(features=str(features), scale="tiny", batch_size=16, max_steps=20,
                                           steps_per_checkpoint=10, dropout_rate=0.2, out=str(tmp_path / out)))

    pixelcnn = inverter_class("pixelcnn")
    whole = pixelcnn.train(config("whole"), progress=False)
    with pytest.raises(Interrupt):
        pixelcnn.train(config("killed"), hooks=[KillAt(15)], progress=False)
    resumed = pixelcnn.train(config("killed"), progress=False)
    assert resumed.resumed_from_step == 10 and resumed.steps == whole.steps == 20

    from invkeras.inverters import load_inverter

    expected = load_inverter(whole.model_path).model.get_weights()
    got = load_inverter(resumed.model_path).model.get_weights()
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
