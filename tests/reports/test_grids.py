import numpy as np
import pytest

from invkeras.reports.grids import originals_and_samples, save_grid, tile_rows


def test_tiles_land_where_expected():
    a = np.full((2, 3, 1), 10, np.uint8)
    b = np.full((2, 3, 3), 200, np.uint8)
    canvas = tile_rows([[a, b]], pad=1, separator_after=1, scale=1)
    # width: gap 1 + 3 + gap 4 (separator) + 3 + gap 1; height: 1 + 2 + 1
    assert canvas.shape == (4, 12, 3)
    assert (canvas[1:3, 1:4] == 10).all() and (canvas[1:3, 8:11] == 200).all()
    assert (canvas[0] == 255).all() and (canvas[:, 4:8] == 255).all()


def test_rows_and_png(tmp_path):
    originals = np.zeros((2, 4, 4, 1), np.uint8)
    samples = np.ones((2, 3, 4, 4, 1), np.uint8)
    rows = originals_and_samples(originals, samples)
    assert [len(r) for r in rows] == [4, 4] and np.shares_memory(rows[1][0], originals[1])
    assert len(originals_and_samples(None, samples)[0]) == 3
    path = save_grid(tmp_path / "g.png", rows)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        tile_rows([])
