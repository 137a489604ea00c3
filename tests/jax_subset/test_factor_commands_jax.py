"""The factor INN's three commands under KERAS_BACKEND=jax with TensorFlow unimportable, each a
CLI process: `train-factors` on features of the procedural images whose h is a rotated code of
their factors, then `score-factors` and `edit-factors` on what it wrote. Tiny budgets: the
checks are the outputs' shapes and ranges and that training lowered the pair NLL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from factor_codes import write_synthetic_features  # tests/factor_codes.py
from jax_helpers import invkeras_cli, unexpected_tf_imports

TINY = ["--num-blocks", 2, "--hidden", 16, "--max-steps", 40, "--steps-per-checkpoint", 20, "--num-pairs", 2000,
        "--eval-pairs", 200, "--dim-pairs", 1000, "--batch-size", 64]
FACTORS = ["shape", "size", "row", "col", "intensity"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """train-factors on features .npz written with NumPy alone: every procedural rendering, h a
    random rotation of the known factor code (tests/factor_codes.py), y the shape."""
    root = tmp_path_factory.mktemp("factors")
    write_synthetic_features(root / "mixed.npz")
    invkeras_cli("train-factors", "--features", root / "mixed.npz", "--out", root / "inn", *TINY,
                 block_tensorflow=True, tmp_path=root)
    assert unexpected_tf_imports(root) == []
    return root


def test_train_factors_lowers_the_pair_nll_without_tensorflow(trained):
    meta = json.loads((trained / "inn" / "factor_inn.keras.meta.json").read_text())
    validation = meta["results"]["validation"]
    assert meta["results"]["steps"] == 40 and validation["n_pairs"] == 200
    assert validation["pair_nll_nats_per_dim"] < validation["initial_pair_nll_nats_per_dim"] - 3 * validation["se"]


def test_score_factors_writes_a_disentanglement_matrix_of_every_block_and_factor(trained, tmp_path):
    invkeras_cli("score-factors", "--factors", trained / "inn", "--num-pairs", 60, "--out", tmp_path / "scores",
                 block_tensorflow=True, tmp_path=tmp_path)
    assert unexpected_tf_imports(tmp_path) == []
    (row,) = json.loads((tmp_path / "scores" / "scores.json").read_text())["rows"]
    matrix = np.array(row["disentanglement"]["matrix"])
    assert row["disentanglement"]["factors"] == FACTORS and row["disentanglement"]["blocks"] == [*FACTORS, "residual"]
    assert matrix.shape == (6, 5) and np.all((matrix >= 0) & (matrix <= 1))
    assert (tmp_path / "scores" / "dimensions.png").is_file()


def test_edit_factors_swaps_and_walks_a_factor(trained, tmp_path):
    invkeras_cli("edit-factors", "--factors", trained / "inn", "--factor", "size", "--num-pairs", 3, "--walk",
                 "0,0.5,1", "--out", tmp_path / "edits", block_tensorflow=True, tmp_path=tmp_path)
    assert unexpected_tf_imports(tmp_path) == []
    edits = json.loads((tmp_path / "edits" / "edits.json").read_text())
    (edit,) = edits["edits"]
    assert edits["num_pairs"] == 3 and edits["walk"] == [0.0, 0.5, 1.0] and edit["factor"] == "size"
    assert np.array(edit["factors_swap"]).shape == (3, 5) and 0 <= edit["share_target"] <= 1
    assert (tmp_path / "edits" / "swap_size.png").is_file() and (tmp_path / "edits" / "walk_size.png").is_file()
