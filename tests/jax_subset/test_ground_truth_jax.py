"""`invkeras ground-truth` under KERAS_BACKEND=jax with TensorFlow unimportable: the table of
trained bounds against the exact H(x|h), as a CLI process on the procedural images."""

from __future__ import annotations

import json

import pytest

from jax_helpers import invkeras_cli, unexpected_tf_imports


def test_the_ground_truth_table_is_written_without_tensorflow(tmp_path):
    from invkeras.data import procedural

    out = tmp_path / "ground-truth"
    invkeras_cli("ground-truth", "--subset", "all", "--subset", "none", "--max-steps", 20, "--steps-per-checkpoint",
                 10, "--filters", 8, "--eval-examples", 60, "--out", out, block_tensorflow=True, tmp_path=tmp_path)
    assert unexpected_tf_imports(tmp_path) == []
    rows = {row["subset"]: row for row in json.loads((out / "ground_truth.json").read_text())["rows"]}
    assert rows["all"]["true_nats"] == 0.0 and rows["none"]["true_nats"] == pytest.approx(procedural.ENTROPY_NATS)
    for row in rows.values():  # a cross-entropy: below the truth only by sampling noise
        assert row["estimate_nats"] >= row["true_nats"] - 3 * row["se_nats"] and row["bound_holds"]
        assert row["num_images"] == 60 and row["steps"] == 20
    assert (out / "ground_truth.png").is_file()
