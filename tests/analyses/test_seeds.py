"""Seeds as a second source of noise: the combined interval against a hand computation."""

import math

import numpy as np
import pytest
from scipy import stats

from invkeras.analyses import seeds
from invkeras.errors import InvkerasError

# Three seeds of one layer on four shared test images.
VALUES = np.array([[10.0, 12.0, 11.0, 15.0],
                   [11.0, 13.0, 13.0, 16.0],
                   [9.0, 12.0, 10.0, 13.0]])


def test_the_seed_interval_adds_the_between_seed_spread_to_the_paired_image_error():
    # By hand: seed-averaged images u = [10, 12.333, 11.333, 14.667]; per-seed means m = [12, 13.25, 11].
    u = np.array([10.0, 37 / 3, 34 / 3, 44 / 3])
    m = np.array([12.0, 13.25, 11.0])
    se_images2 = np.var(u, ddof=1) / 4
    seed_part = np.var(m, ddof=1) / 3
    se = math.sqrt(se_images2 + seed_part)
    df = se ** 4 / (se_images2 ** 2 / 3 + seed_part ** 2 / 2)
    result = seeds.interval(VALUES)
    assert result.mean == pytest.approx(u.mean())
    assert result.n_seeds == 3
    assert result.se_images == pytest.approx(math.sqrt(se_images2))
    assert result.seed_variance == pytest.approx(seed_part)
    assert result.se == pytest.approx(se)
    assert result.df == pytest.approx(df)
    assert result.half_width == pytest.approx(stats.t.ppf(0.975, df) * se)
    assert result.low == pytest.approx(u.mean() - stats.t.ppf(0.975, df) * se)


def test_one_seed_has_no_seed_part_and_a_t_interval_over_the_images():
    result = seeds.interval(VALUES[0])
    se = np.std(VALUES[0], ddof=1) / 2
    assert result.n_seeds == 1 and result.seed_variance == 0
    assert result.se == pytest.approx(se)
    assert result.df == pytest.approx(3)


def test_seeds_that_disagree_widen_the_interval_that_images_alone_give():
    shifted = VALUES + np.array([[0.0], [3.0], [-3.0]])  # same images, training runs far apart
    assert seeds.interval(shifted).se_images == pytest.approx(seeds.interval(VALUES).se_images)
    assert seeds.interval(shifted).half_width > 2 * seeds.interval(VALUES).half_width


def test_a_paired_difference_takes_the_image_part_from_per_image_differences_and_both_seed_parts():
    other = VALUES[:2] + np.array([[1.0, 2.0, 3.0, 4.0]])
    result = seeds.difference(other, VALUES)
    per_image = other.mean(axis=0) - VALUES.mean(axis=0)
    parts = np.var(other.mean(axis=1), ddof=1) / 2 + np.var(VALUES.mean(axis=1), ddof=1) / 3
    assert result.mean == pytest.approx(per_image.mean())
    assert result.se == pytest.approx(math.sqrt(np.var(per_image, ddof=1) / 4 + parts))
    assert result.n_seeds == 2


def test_an_unpaired_difference_adds_both_image_errors():
    first, second = np.array([1.0, 2.0, 3.0]), np.array([5.0, 7.0, 6.0, 8.0])
    result = seeds.difference(first, second, paired=False)
    expected = math.sqrt(np.var(first, ddof=1) / 3 + np.var(second, ddof=1) / 4)
    assert result.mean == pytest.approx(2.0 - 6.5) and result.se == pytest.approx(expected)
    with pytest.raises(InvkerasError, match="same images"):
        seeds.difference(first, second)


def test_the_first_seed_keeps_the_plain_directory_and_the_others_sit_beside_it(tmp_path):
    base = tmp_path / "inverters" / "pixelcnn" / "fc3"
    assert seeds.seed_list(4, 3) == [4, 5, 6]
    assert [seeds.seeded_dir(base, s, 4) for s in (4, 5)] == [base, base.parent / "fc3-seed5"]
