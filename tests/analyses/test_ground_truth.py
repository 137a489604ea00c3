"""The ground-truth table: exact conditional entropies of the procedural factors, and trained
bounds that must never fall below them.

Models trained for a few steps lie far above the truth, so the table's check `bound_holds` is
shown to fail where it should: a likelihood that is not the per-image log-likelihood puts the
estimate below the exact entropy. How close a correct likelihood comes where the model is the
truth is checked in `test_mi.py` (to 0.1 nats, with the bugs it catches).
"""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from invkeras import artifacts
from invkeras.analyses.ground_truth import (GroundTruthConfig, ground_truth, one_hot_factors, parse_subset,
                                            true_conditional_entropy)
from invkeras.cli import app
from invkeras.data import procedural
from invkeras.errors import InvkerasError


def test_subsets_parse_in_the_datasets_order():
    assert parse_subset("all") == procedural.FACTOR_NAMES
    assert parse_subset("none") == ()
    assert parse_subset("size+shape") == ("shape", "size")
    for bad, fragment in (("colour", "unknown factor colour"), ("row+row", "named twice")):
        with pytest.raises(InvkerasError, match=fragment):
            parse_subset(bad)


@pytest.mark.parametrize("subset", ["all", "none", "shape", "row+col", "size+intensity", "shape+size+row+col"])
def test_exact_entropy_is_the_log_count_of_images_each_h_leaves_open(subset):
    """Counted from the renders themselves: group all 6,912 images by the subset's factor
    values; with uniform factors, H(x|h) is the mean log-count of distinct images per group."""
    factors = parse_subset(subset)
    combos = procedural.all_factor_combinations()
    keys = combos[:, [procedural.FACTOR_NAMES.index(f) for f in factors]]
    groups: dict[tuple, set] = {}
    for key, image in zip(map(tuple, keys), procedural.render(combos)):
        groups.setdefault(key, set()).add(image.tobytes())
    counted = np.mean([math.log(len(g)) for g in groups.values()])
    assert true_conditional_entropy(factors) == pytest.approx(counted, abs=1e-12)


def test_one_hot_codes_name_exactly_the_subsets_values():
    combos = procedural.all_factor_combinations()[:50]
    h = one_hot_factors(combos, ("size", "col"))
    assert h.shape == (50, 3 + 12) and np.all(h.sum(axis=1) == 2)
    np.testing.assert_array_equal(h[:, :3].argmax(axis=1), combos[:, 1])
    np.testing.assert_array_equal(h[:, 3:].argmax(axis=1), combos[:, 3])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ground-truth")
    config = GroundTruthConfig(subsets=["all", "none"], max_steps=20, steps_per_checkpoint=10, filters=8,
                               eval_examples=60, out=str(out))
    return config, ground_truth(config, progress=False)


def test_trained_bounds_never_fall_below_the_exact_entropy(trained):
    config, result = trained
    rows = {r["subset"]: r for r in result["rows"]}
    assert rows["all"]["true_nats"] == 0.0 and rows["none"]["true_nats"] == pytest.approx(procedural.ENTROPY_NATS)
    for row in rows.values():  # a cross-entropy: below the truth only by sampling noise
        assert row["estimate_nats"] >= row["true_nats"] - 3 * row["se_nats"] and row["bound_holds"]
        assert row["gap_nats"] == pytest.approx(row["estimate_nats"] - row["true_nats"])
        assert row["num_images"] == 60 and row["steps"] == 20
    saved = json.loads((config.out_dir() / "ground_truth.json").read_text())
    assert saved["rows"] == result["rows"] and artifacts.is_complete(config.out_dir() / "ground_truth.json")
    assert artifacts.read_metadata(config.out_dir() / "ground_truth.png")["results"]["plot"] == "ground-truth"


def test_the_tables_bound_check_fails_for_a_likelihood_averaged_over_pixels(tmp_path, monkeypatch):
    """Nats per sub-pixel taken for nats per image: the same training (Adam does not see the
    scale), an estimate 400 times too small, below the exact H(x) = 8.84 nats. The table says so."""
    from keras import ops

    from invkeras.inverters.pixelcnn import likelihoods

    def per_subpixel_mean(params, x, likelihood, num_channels):
        return ops.mean(likelihoods.log_prob_per_subpixel(params, x, likelihood, num_channels), axis=(1, 2, 3))

    monkeypatch.setattr(likelihoods, "log_prob_per_image", per_subpixel_mean)
    config = GroundTruthConfig(subsets=["none"], max_steps=20, steps_per_checkpoint=10, filters=8, eval_examples=60,
                               out=str(tmp_path / "broken"))
    result = ground_truth(config, progress=False)
    (row,) = result["rows"]
    assert row["estimate_nats"] < row["true_nats"] - 3 * row["se_nats"]
    assert not row["bound_holds"] and not result["all_bounds_hold"]


def test_finished_models_are_reused_only_under_the_same_settings(trained):
    config, result = trained
    again = ground_truth(config, progress=False)  # no training: the same recorded NLLs
    assert [r["estimate_nats"] for r in again["rows"]] == [r["estimate_nats"] for r in result["rows"]]
    with pytest.raises(InvkerasError, match=r"trained with other settings \(max_steps\)"):
        ground_truth(config.model_copy(update={"max_steps": 40}), progress=False)


def test_a_kind_without_a_pixel_likelihood_is_refused():
    with pytest.raises(InvkerasError, match="needs a kind with a pixel likelihood"):
        GroundTruthConfig(kind="mse")


def test_cli_refuses_an_unknown_factor_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["ground-truth", "--subset", "colour", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown factor colour" in result.output
    assert len(result.output.strip().splitlines()) == 1
