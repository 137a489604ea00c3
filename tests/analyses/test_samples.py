"""`invkeras sample`'s pipeline: held-out inputs, seeded samples, PNG grid, re-extracted features."""

import numpy as np
from PIL import Image

from invkeras import artifacts
from invkeras.analyses.samples import draw_inversions


def test_conditional_samples_grid_and_reextracted_features(tiny_inverters, tmp_path):
    inverter = tiny_inverters["fc3"].model_path.parent
    result = draw_inversions(inverter, num_inputs=3, num_samples=4, seed=5, batch_size=6, out=tmp_path / "a")
    assert result.samples.shape == (3, 4, 20, 20, 1) and result.samples.dtype == np.uint8
    assert result.originals.shape == (3, 20, 20, 1) and result.h.shape == (3, 256)
    assert result.samples_h.shape == (3, 4, 256)  # the samples' own fc3 features
    with np.load(result.arrays_path) as saved:
        np.testing.assert_array_equal(saved["samples"], result.samples)
        np.testing.assert_array_equal(saved["x"], result.originals)
    # Grid: 3 rows of (original + 4 samples), 20 px images, 2 px padding, wider gap, scaled x2.
    width, height = Image.open(result.grid_path).size
    assert height == 2 * (3 * 20 + 4 * 2) and width == 2 * (5 * 20 + 5 * 2 + 8)
    assert artifacts.is_complete(result.grid_path) and artifacts.is_complete(result.arrays_path)
    assert result.mean_l1_to_original > 0

    same = draw_inversions(inverter, num_inputs=3, num_samples=4, seed=5, batch_size=6, out=tmp_path / "b")
    other = draw_inversions(inverter, num_inputs=3, num_samples=4, seed=6, batch_size=6, out=tmp_path / "c")
    np.testing.assert_array_equal(same.samples, result.samples)
    assert not np.array_equal(other.samples, result.samples)


def test_unconditional_samples_have_no_originals(tiny_inverters, tmp_path):
    result = draw_inversions(tiny_inverters["none"].model_path.parent, num_samples=5, out=tmp_path)
    assert result.samples.shape == (1, 5, 20, 20, 1) and result.originals is None and result.samples_h is None
    assert Image.open(result.grid_path).size[0] == 2 * (5 * 20 + 6 * 2)
