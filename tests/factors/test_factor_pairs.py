"""Pair sources, exact factor matching and the dimensionality estimate: pure NumPy, no training."""

import numpy as np
import pytest

from invkeras.data.procedural import FACTOR_NAMES, FACTOR_SIZES, _render_table, all_factor_combinations
from invkeras.errors import InvkerasError
from invkeras.factors.dimensions import allocate, estimate_dimensions, given_dimensions
from invkeras.factors.matching import factors_of_renderings, nearest_factors, nearest_rendering
from invkeras.factors.pairs import all_different_pairs, factor_pairs, label_pairs

ALL = all_factor_combinations()


@pytest.mark.parametrize("rows", ["population", "stored"])
def test_a_factor_pair_shares_exactly_one_factor(rows):
    factors = ALL if rows == "population" else ALL[np.random.default_rng(0).random(len(ALL)) < 0.8]
    named = ["shape", "row", "intensity"]
    pairs = factor_pairs(factors, named, 20_000, seed=3, stream=1)
    equal = factors[pairs.a] == factors[pairs.b]
    assert (equal.sum(1) == 1).all()  # exactly one factor in common ...
    shared_index = np.asarray([FACTOR_NAMES.index(n) for n in named])[pairs.shared]
    assert equal[np.arange(len(pairs)), shared_index].all()  # ... and it is the labelled one
    assert np.bincount(pairs.shared, minlength=3).min() > 0.3 * len(pairs)  # uniform over the named factors
    for f, size in enumerate(FACTOR_SIZES):  # every value of every factor occurs in the partners
        assert len(np.unique(factors[pairs.b, f])) == size
    again = factor_pairs(factors, named, 20_000, seed=3, stream=1)
    np.testing.assert_array_equal(again.b, pairs.b)  # a pure function of (seed, stream)
    assert not np.array_equal(factor_pairs(factors, named, 20_000, seed=3, stream=2).a, pairs.a)


def test_independent_others_may_coincide_and_the_control_shuffles_labels():
    pairs = factor_pairs(ALL, list(FACTOR_NAMES), 20_000, seed=0, stream=1, others="independent")
    equal = ALL[pairs.a] == ALL[pairs.b]
    assert equal[np.arange(len(pairs)), pairs.shared].all()
    assert (equal.sum(1) > 1).mean() > 0.3  # size alone coincides a third of the time
    control = factor_pairs(ALL, list(FACTOR_NAMES), 20_000, seed=0, stream=1, shuffled=True)
    equal = ALL[control.a] == ALL[control.b]
    assert (equal.sum(1) == 1).all()  # still exactly one shared factor ...
    assert equal[np.arange(len(control)), control.shared].mean() < 0.3  # ... but the label names it by chance


def test_pairs_that_differ_in_every_factor_and_label_pairs():
    a, b = all_different_pairs(ALL, 5000, seed=0, stream=1)
    assert (ALL[a] != ALL[b]).all()
    labels = np.random.default_rng(0).integers(0, 5, 300)
    labels[0] = 7  # a class of one: its partner is itself
    pairs = label_pairs(labels, 5000, seed=0, stream=1)
    assert (labels[pairs.a] == labels[pairs.b]).all() and (pairs.shared == 0).all()
    assert (pairs.a != pairs.b)[labels[pairs.a] != 7].all()
    shuffled = label_pairs(labels, 5000, seed=0, stream=1, shuffled=True)
    assert (labels[shuffled.a] == labels[shuffled.b]).mean() < 0.4


def test_too_few_stored_examples_is_one_line():
    with pytest.raises(InvkerasError, match="too few"):
        factor_pairs(ALL[:3], ["shape"], 10, seed=0, stream=1)


def test_exact_matching_recovers_the_factors_of_every_procedural_image():
    images = np.array(_render_table())
    np.testing.assert_array_equal(factors_of_renderings(images), ALL)
    index, distance = nearest_rendering(images)
    np.testing.assert_array_equal(index, np.arange(len(ALL)))
    assert distance.max() == 0.0
    noisy = np.clip(images.astype(int) + np.random.default_rng(0).integers(-20, 21, images.shape), 0, 255)
    np.testing.assert_array_equal(nearest_factors(noisy.astype(np.uint8)), ALL)  # decoded images are never exact
    with pytest.raises(InvkerasError, match="not a rendering"):
        factors_of_renderings(noisy[:3].astype(np.uint8))
    with pytest.raises(InvkerasError, match="not procedural images"):
        nearest_factors(np.zeros((2, 28, 28, 1), np.uint8))


def test_the_dimension_estimate_on_a_hand_built_representation():
    """r = [2 dims of shape's code, 1 dim of size's, 3 dims of pure noise, 1 dead unit]: a pair sharing
    shape has identical shape dims and independent others, so its score is 2 / 6 of the live variance."""
    rng = np.random.default_rng(0)
    n = 40_000
    shared = rng.integers(0, 2, n)

    def rows(code_shape, code_size):
        return np.concatenate([code_shape, code_size, rng.normal(size=(n, 3)), np.zeros((n, 1))], axis=1)

    shape_a, shape_b = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    size_a, size_b = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    keep_shape, keep_size = (shared == 0)[:, None], (shared == 1)[:, None]
    r_a = rows(shape_a, size_a)
    r_b = rows(np.where(keep_shape, shape_a, shape_b), np.where(keep_size, size_a, size_b))
    estimate = estimate_dimensions(r_a, r_b, shared, ["shape", "size"])
    assert estimate.live_dims == 6 and estimate.dim == 7
    np.testing.assert_allclose(estimate.scores, [2 / 6, 1 / 6, 1.0], atol=0.02)
    shares = np.exp(estimate.scores) / np.exp(estimate.scores).sum()
    np.testing.assert_allclose(estimate.shares, shares, rtol=1e-9)
    floors = np.maximum(np.floor(shares[:2] * 7), 1).astype(int)
    assert estimate.sizes == [*floors, 7 - floors.sum()] and estimate.names == ["shape", "size", "residual"]


def test_allocation_floors_every_factor_at_one_and_given_sizes_are_checked():
    shares, sizes = allocate(np.array([0.0, 0.0, 1.0]), 10)
    assert list(sizes) == [2, 2, 6] and shares.sum() == pytest.approx(1)
    assert list(allocate(np.array([-5.0, 1.0]), 4)[1]) == [1, 3]  # no factor is left without a dimension
    with pytest.raises(InvkerasError, match="cannot hold"):
        allocate(np.array([0.0, 0.0, 0.0, 1.0]), 3)
    assert given_dimensions({"shape": 2, "size": 1}, ["shape", "size"], 7).sizes == [2, 1, 4]
    for sizes, message in (({"shape": 2}, "no size for size"), ({"shape": 2, "size": 1, "row": 1}, "row"),
                           ({"shape": 4, "size": 3}, "none for the residual")):
        with pytest.raises(InvkerasError, match=message):
            given_dimensions(sizes, ["shape", "size"], 7)
