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


def test_compare_makes_one_row_of_a_kinds_seeds_with_the_interval_over_them(tiny_classifier, tmp_path):
    import shutil

    from invkeras.analyses.compare import CompareConfig, compare_inverters
    from invkeras.inverters import config_for, inverter_class

    workspace = tmp_path / "ws"  # a private copy of the tiny classifier: the decoders and features land here
    shutil.copytree(tiny_classifier / "procedural/conv/classifier", workspace / "procedural/conv/classifier")
    decoders = []
    for seed in (0, 1):  # the first extracts the features, the second trains on the same ones
        config = config_for("mse", dict(dataset="procedural", workspace=str(workspace), layer="fc3", seed=seed,
                                        max_steps=10, steps_per_checkpoint=10, train_examples=256, eval_examples=16,
                                        batch_size=32, out=str(workspace / f"mse-fc3-seed{seed}")))
        decoders.append(inverter_class("mse").train(config, progress=False).model_path.parent)
    result = compare_inverters(CompareConfig(inverters=[str(d) for d in decoders], num_images=4, num_samples=2,
                                             grid_inputs=0, max_train_examples=50, out=str(tmp_path / "compare")),
                               progress=False)
    (row,) = result.rows
    assert row["label"] == "mse" and row["n_seeds"] == 2 and row["seeds"] == [0, 1]
    with np.load(result.arrays_path) as arrays:
        by_seed = arrays["label_agreement_mse_seeds"]
        pixel = arrays["pixel_l1_to_input_mse_seeds"]
    assert by_seed.shape == (2, 4)
    assert row["label_agreement"]["mean"] == pytest.approx(by_seed.mean())
    assert not np.allclose(pixel[0], pixel[1])  # two runs, two decoders
    expected = seeds.interval(pixel.astype(np.float64))
    interval = row["seed_intervals"]["pixel_l1_to_input"]
    assert [interval["low"], interval["high"]] == pytest.approx([expected.low, expected.high], rel=1e-5)
