"""The factor INN learns what the pairs teach: on a representation that is a random rotation of a known
code of the five procedural factors, training on true pairs finds a block per factor (a near-diagonal
disentanglement matrix, exact factors read back), and the shuffled-pair control does not. Plus the
exact resume of a killed run, and the edit and score outputs."""

import json

import numpy as np
import pytest

from invkeras import artifacts
from invkeras.analyses.factors import (EditFactorsConfig, ScoreFactorsConfig, edit_factors, mutual_information,
                                       score_factors, score_model)
from invkeras.data.procedural import FACTOR_NAMES
from invkeras.factors.training import load_factor_model


@pytest.fixture(scope="module")
def scores(synthetic_models):
    return {name: score_model(load_factor_model(path), num_pairs=1000, seed=0)
            for name, path in synthetic_models.items()}


def _diagonal(matrix):
    return np.array([matrix["matrix"][k][f] for k, f in enumerate(range(len(FACTOR_NAMES)))])


def test_true_pairs_give_a_near_diagonal_disentanglement_matrix(scores):
    matrix = scores["true"]["disentanglement"]
    assert matrix["blocks"] == [*FACTOR_NAMES, "residual"] and matrix["factors"] == list(FACTOR_NAMES)
    values = np.asarray(matrix["matrix"])
    diagonal = _diagonal(matrix)
    off = values[:5][~np.eye(5, dtype=bool)]
    assert diagonal.min() > 0.35 and diagonal.mean() > 0.6, values.round(2)
    assert off.max() < 0.1, values.round(2)  # a swapped block carries its own factor, no other
    assert values[5].max() < 0.1, values.round(2)  # and the residual holds none of them
    assert scores["true"]["reconstruction_accuracy"] == 1.0  # nearest stored example: exact read-back
    accuracy = scores["true"]["edit_accuracy"]
    assert set(accuracy) == set(FACTOR_NAMES) and np.mean([a["edit_accuracy"] for a in accuracy.values()]) > 0.35


def test_the_shuffled_control_does_not(scores):
    values = np.asarray(scores["shuffled"]["disentanglement"]["matrix"])
    diagonal = _diagonal(scores["shuffled"]["disentanglement"])
    assert diagonal.mean() < 0.25, values.round(2)
    assert diagonal.mean() < _diagonal(scores["true"]["disentanglement"]).mean() - 0.4
    assert np.mean([a["edit_accuracy"] for a in scores["shuffled"]["edit_accuracy"].values()]) < 0.15


def test_block_correlations_approach_rho_only_for_true_pairs(synthetic_models):
    true = load_factor_model(synthetic_models["true"]).meta["results"]["validation"]["block_correlations"]
    shuffled = load_factor_model(synthetic_models["shuffled"]).meta["results"]["validation"]["block_correlations"]
    assert min(true[k][k] for k in range(5)) > 0.75
    assert max(shuffled[k][k] for k in range(5)) < 0.5


def test_mutual_information_is_exact_on_known_joints():
    x = np.repeat(np.arange(4), 3)
    assert mutual_information(x, x) == pytest.approx(np.log(4))  # a copy: all of H
    assert mutual_information(x, np.tile(np.arange(3), 4)) == pytest.approx(0.0, abs=1e-12)  # independent


def test_a_killed_run_resumes_to_the_weights_of_the_uninterrupted_one(synthetic, tmp_path):
    from killing import Interrupt, KillAt  # tests/killing.py

    from invkeras.factors.config import FactorConfig
    from invkeras.factors.training import train_factors

    common = dict(features=str(synthetic), max_steps=40, steps_per_checkpoint=20, num_blocks=2, hidden=16,
                  batch_size=64, num_pairs=2000, eval_pairs=100, dim_pairs=500)
    straight = train_factors(FactorConfig(**common, out=str(tmp_path / "straight")), progress=False)
    config = FactorConfig(**common, out=str(tmp_path / "resumed"))
    with pytest.raises(Interrupt):
        train_factors(config, hooks=[KillAt(30)], progress=False)
    resumed = train_factors(config, progress=False)
    assert resumed.resumed_from_step == 20 and resumed.steps == 40
    a, b = load_factor_model(straight.model_path), load_factor_model(resumed.model_path)
    for va, vb in zip(a.model.get_weights(), b.model.get_weights()):  # noise draws included
        np.testing.assert_array_equal(va, vb)
    assert not (tmp_path / "resumed" / "backup").exists()
    estimate = a.meta["dimensions"]  # the estimate sized the blocks (no dims given)
    assert estimate["method"] == "estimate" and sum(estimate["sizes"]) == 7 and len(estimate["scores"]) == 6


def test_edit_and_score_outputs_on_stored_features(synthetic_models, tmp_path):
    result = edit_factors(EditFactorsConfig(factors=str(synthetic_models["true"]), factor=["intensity"],
                                            num_pairs=4, out=str(tmp_path / "edits")))
    for name in ("swap_intensity.png", "walk_intensity.png", "edits.json", "edits.npz"):
        assert artifacts.is_complete(tmp_path / "edits" / name), name
    payload = json.loads((tmp_path / "edits" / "edits.json").read_text())
    entry = payload["edits"][0]
    assert entry["factor"] == "intensity" and len(entry["factors_swap"]) == 4
    assert len(entry["walk_factors"]) == 5 and payload["walk"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_array_equal(entry["walk_factors"][0], payload["factors_a"])  # t = 0 is A read back
    with np.load(tmp_path / "edits" / "edits.npz") as arrays:
        assert arrays["intensity__walk"].shape == (4, 5, 20, 20, 1)
    assert "share_edit_accuracy" in result.summary["intensity"]

    scored = score_factors(ScoreFactorsConfig(factors=[str(p) for p in synthetic_models.values()], num_pairs=100,
                                              out=str(tmp_path / "scores")), progress=False)
    assert [r["label"] for r in scored.rows] == ["features", "features-shuffled"]
    for name in ("scores.json", "scores.csv", "dimensions.png", "disentanglement_features.png",
                 "disentanglement_features-shuffled.png"):
        assert artifacts.is_complete(tmp_path / "scores" / name), name
    header = (tmp_path / "scores" / "scores.csv").read_text().splitlines()[0]
    assert "edit_accuracy_shape" in header and "mi_row" in header
