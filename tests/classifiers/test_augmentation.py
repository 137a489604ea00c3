"""Flip-and-shift augmentation: every image is its input, flipped or not and moved by at most
four pixels, and the draws are a function of (seed, step) alone."""

from __future__ import annotations

import numpy as np
import pytest

from invkeras.classifiers.augmentation import MAX_SHIFT, augmenter, flip_and_shift


def _moves(image: np.ndarray, original: np.ndarray) -> list[tuple[bool, int, int]]:
    """Every (flipped, dy, dx) that turns `original` into `image`, borders filled with zeros."""
    found = []
    height, width = original.shape[:2]
    for flipped in (False, True):
        source = original[:, ::-1] if flipped else original
        padded = np.pad(source, ((MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)))
        for top in range(2 * MAX_SHIFT + 1):
            for left in range(2 * MAX_SHIFT + 1):
                if np.array_equal(padded[top:top + height, left:left + width], image):
                    found.append((flipped, MAX_SHIFT - top, MAX_SHIFT - left))
    return found


def test_each_image_is_its_input_flipped_or_not_and_moved_by_at_most_four_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (400, 12, 10, 3), dtype=np.uint8)  # no zeros: every move is identifiable
    out = flip_and_shift(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    moves = [_moves(a, b) for a, b in zip(out, images)]
    assert all(len(m) == 1 for m in moves)
    flips, dys, dxs = zip(*(m[0] for m in moves))
    assert 0.4 < np.mean(flips) < 0.6
    assert set(dys) == set(dxs) == set(range(-MAX_SHIFT, MAX_SHIFT + 1))  # every shift, both ways


def test_the_draws_depend_on_the_seed_and_step_alone():
    batch = {"x": np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3), dtype=np.uint8), "y": np.arange(64)}
    transform = augmenter("flip-shift", seed=3)
    first, again = transform(batch, 5), augmenter("flip-shift", seed=3)(batch, 5)
    np.testing.assert_array_equal(first["x"], again["x"])
    np.testing.assert_array_equal(first["y"], batch["y"])
    assert not np.array_equal(first["x"], transform(batch, 6)["x"])
    assert not np.array_equal(first["x"], augmenter("flip-shift", seed=4)(batch, 5)["x"])


def test_no_augmentation_is_no_transform():
    assert augmenter("none", seed=0) is None
