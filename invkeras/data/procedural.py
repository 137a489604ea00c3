"""The embedded `procedural` dataset: grey shapes whose image entropy is known exactly.

Why it exists: an inversion model's log-likelihood bounds H(x|h) from above, so
I(x; h) >= H(x) - H_model(x|h) only becomes a number when H(x) is known. Real image
sets never give us H(x); this one does, and it needs no download, so it is the
default for the demo and the tests.

Each image is a 20x20x1 uint8 canvas, black (0) everywhere except one filled shape.
Five generative factors, each discrete, uniform and independent of the others:

=========  =====  ===============================================================
factor     size   values
=========  =====  ===============================================================
shape      4      square, disc, triangle (apex up), cross (1-px plus sign)
size       3      5, 7, 9 pixels (the shape's bounding box is size x size)
row        12     centre row 4 .. 15
col        12     centre column 4 .. 15
intensity  4      grey levels 64, 128, 192, 255
=========  =====  ===============================================================

The label is the shape (4 classes). Centres run over 4..15 so that the largest
shape (9 px, reaching 4 px either side of its centre) always lies fully inside the
canvas. Every image is a distinct function of its factors (the bounding box fixes
size and centre, the grey level fixes intensity, the mask fixes the shape; the test
suite checks all 6,912 renders are pairwise distinct), so x is a bijection of the
factor tuple and

    H(x) = log(4 * 3 * 12 * 12 * 4) = log(6912) = 8.8410 nats per image, exactly.

Splits are i.i.d. uniform draws over the 6,912 combinations (train 20,000,
validation 2,000, test 2,000), each from its own fixed seed, so every split follows
exactly the uniform distribution whose entropy is quoted above. Because draws are
i.i.d., the same image may occur in several splits; that is intended: the splits
are samples of one known distribution, not a partition of a finite set.

All 6,912 images are rendered once into a lookup table (2.7 MB); drawing a split is
then a random integer draw plus a gather, well under a second for 24k images.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from invkeras.errors import InvkerasError

IMAGE_SIZE = 20
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)

SHAPE_NAMES = ("square", "disc", "triangle", "cross")
SHAPE_SIZES_PX = (5, 7, 9)
CENTRE_POSITIONS = tuple(range(4, 16))  # 12 values; 9-px shapes span centre-4 .. centre+4
INTENSITIES = (64, 128, 192, 255)

FACTOR_NAMES = ("shape", "size", "row", "col", "intensity")
FACTOR_SIZES = (len(SHAPE_NAMES), len(SHAPE_SIZES_PX), len(CENTRE_POSITIONS), len(CENTRE_POSITIONS), len(INTENSITIES))
NUM_COMBINATIONS = math.prod(FACTOR_SIZES)  # 6912
ENTROPY_NATS = math.log(NUM_COMBINATIONS)  # 8.8410 nats: x is a bijection of the uniform factors
NUM_CLASSES = len(SHAPE_NAMES)
CLASS_NAMES = SHAPE_NAMES

SPLIT_SIZES = {"train": 20_000, "validation": 2_000, "test": 2_000}
# Each split draws from its own stream; the user's seed is mixed in (seed, stream).
_SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}


def shape_mask(shape: int, size_px: int) -> np.ndarray:
    """Boolean [size_px, size_px] mask of one shape; every mask touches all four box edges."""
    half = (size_px - 1) // 2
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
    name = SHAPE_NAMES[shape]
    if name == "square":
        return np.ones((size_px, size_px), dtype=bool)
    if name == "disc":
        # Radius half + 0.5 reaches the edge midpoints but cuts the corners.
        return dy**2 + dx**2 <= (half + 0.5) ** 2
    if name == "triangle":
        # Row k from the top has half-width k // 2: apex of 1 px, base of size_px px.
        return np.abs(dx) <= (dy + half) // 2
    if name == "cross":
        return (dy == 0) | (dx == 0)
    raise ValueError(f"unknown shape index {shape}")


@functools.lru_cache(maxsize=1)
def _render_table() -> np.ndarray:
    """All NUM_COMBINATIONS images, indexed by the flat (C-order) factor index; read-only."""
    table = np.zeros(FACTOR_SIZES + (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    levels = np.asarray(INTENSITIES, dtype=np.uint8)
    for shape in range(FACTOR_SIZES[0]):
        for size_index, size_px in enumerate(SHAPE_SIZES_PX):
            mask = shape_mask(shape, size_px)
            half = (size_px - 1) // 2
            for row_index, row in enumerate(CENTRE_POSITIONS):
                for col_index, col in enumerate(CENTRE_POSITIONS):
                    box = (slice(row - half, row + half + 1), slice(col - half, col + half + 1))
                    # Broadcast over the 4 intensities at once: [4, size, size].
                    table[(shape, size_index, row_index, col_index, slice(None)) + box] = mask * levels[:, None, None]
    table = table.reshape(NUM_COMBINATIONS, IMAGE_SIZE, IMAGE_SIZE, 1)
    table.flags.writeable = False
    return table


def _flat_index(factor_indices: np.ndarray) -> np.ndarray:
    factor_indices = np.asarray(factor_indices, dtype=np.int64)
    if factor_indices.shape[-1] != len(FACTOR_SIZES):
        raise ValueError(f"factor indices need a last axis of size 5 {FACTOR_NAMES}, got {factor_indices.shape}")
    if np.any(factor_indices < 0) or np.any(factor_indices >= np.asarray(FACTOR_SIZES)):
        raise ValueError(f"factor indices out of range; sizes are {dict(zip(FACTOR_NAMES, FACTOR_SIZES))}")
    return np.ravel_multi_index(tuple(np.moveaxis(factor_indices, -1, 0)), FACTOR_SIZES)


def render(factor_indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Image(s) for factor index tuple(s) `(shape, size, row, col, intensity)`.

    A single tuple gives uint8 [20, 20, 1]; an array [..., 5] gives [..., 20, 20, 1].
    Indices are positions in the value lists above, not pixel values.
    """
    return _render_table()[_flat_index(np.asarray(factor_indices))].copy()


def all_factor_combinations() -> np.ndarray:
    """Every factor tuple, int64 [NUM_COMBINATIONS, 5], in flat-index order."""
    return np.stack(np.unravel_index(np.arange(NUM_COMBINATIONS), FACTOR_SIZES), axis=1).astype(np.int64)


def generate(n: int, seed: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` i.i.d. uniform draws: (x uint8 [n,20,20,1], y int64 [n], factors int64 [n,5]).

    `seed` is anything `np.random.default_rng` accepts (an int or a sequence of ints).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, NUM_COMBINATIONS, size=n)
    factors = np.stack(np.unravel_index(flat, FACTOR_SIZES), axis=1).astype(np.int64)
    images = _render_table()[flat]  # fancy indexing copies: the result is writeable
    labels = factors[:, 0].copy()
    return images, labels, factors


def load_split_with_factors(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's (x, y, factors); the same (split, seed) always gives the same arrays."""
    if split not in SPLIT_SIZES:
        raise InvkerasError(f"dataset 'procedural': unknown split {split!r}; expected one of {', '.join(SPLIT_SIZES)}")
    return generate(SPLIT_SIZES[split], seed=(seed, _SPLIT_STREAMS[split]))
