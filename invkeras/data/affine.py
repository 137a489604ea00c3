"""affNIST-style affine transforms: a 28x28 digit onto a 40x40 canvas, never cut off.

affNIST (Tijmen Tieleman, cs.toronto.edu/~tijmen/affNIST) takes MNIST digits and applies
random affine transformations within these ranges, which we use unchanged:

* rotation: uniform in [-20, +20] degrees;
* shear: uniform in [-0.2, +0.2];
* vertical and horizontal scale: each independently uniform in [0.8, 1.2];
* translation: anywhere on the 40x40 canvas such that the digit is not cut off.

We draw the translation uniformly (continuous, per axis) over every position that keeps
the transformed digit's support inside the canvas with a one-pixel black border, so no
digit mass is ever lost to clipping. A rotation/shear/scale draw for which no such
position exists (rare, only for very wide digits) is redrawn. Resampling is bilinear
(scipy.ndimage.affine_transform, order 1); pixel values are rounded back to uint8.

Everything is deterministic given the generator: `transform_batch` seeds one NumPy
generator per example from `(seed, stream, index)`, so example i's transform does not
depend on which other examples are transformed or in what order. That is what lets
`affnist-style:INNER` transform any 28x28 source on the fly and reproducibly.

Conventions: coordinates are (row, col) of pixel centres. The digit's centre (13.5, 13.5)
is mapped to `offset` on the canvas by output = A @ (input - centre) + offset, with
A = rotation @ shear @ diag(scale_y, scale_x).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

DIGIT_SIZE = 28
CANVAS_SIZE = 40
MAX_ROTATION_DEGREES = 20.0
MAX_SHEAR = 0.2
SCALE_RANGE = (0.8, 1.2)
MAX_REDRAWS = 100

_DIGIT_CENTRE = np.array([(DIGIT_SIZE - 1) / 2.0] * 2)


@dataclasses.dataclass(frozen=True)
class AffineParams:
    """One affNIST-style transform; `offset` is where the digit's centre lands on the canvas."""

    rotation_degrees: float
    shear: float
    scale_y: float
    scale_x: float
    offset_y: float
    offset_x: float

    def matrix(self) -> np.ndarray:
        """The 2x2 linear part A in (row, col) coordinates."""
        theta = math.radians(self.rotation_degrees)
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        shear = np.array([[1.0, 0.0], [self.shear, 1.0]])  # column shifts in proportion to row
        scale = np.diag([self.scale_y, self.scale_x])
        return rotation @ shear @ scale


def _as_digit(digit: np.ndarray) -> np.ndarray:
    digit = np.asarray(digit)
    if digit.ndim == 3 and digit.shape[-1] == 1:
        digit = digit[..., 0]
    if digit.shape != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"expected a {DIGIT_SIZE}x{DIGIT_SIZE}(x1) digit, got shape {digit.shape}")
    return digit


def support_extent(digit: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds (low, high), relative to the mapped centre, that contain every nonzero output pixel.

    Bilinear resampling lights an output pixel only if it maps back to within one pixel
    (per axis) of a nonzero input pixel, so we transform the nonzero bounding box grown
    by one pixel. Returns None for an all-black digit.
    """
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    if rows.size == 0:
        return None
    corners = np.array(
        [[r, c] for r in (rows[0] - 1, rows[-1] + 1) for c in (cols[0] - 1, cols[-1] + 1)], dtype=np.float64
    )
    mapped = (corners - _DIGIT_CENTRE) @ matrix.T
    return mapped.min(axis=0), mapped.max(axis=0)


def sample_params(digit: np.ndarray, rng: np.random.Generator, canvas_size: int = CANVAS_SIZE) -> AffineParams:
    """Draw rotation, shear and scales in the affNIST ranges, then a translation that keeps the digit whole."""
    digit = _as_digit(digit)
    last = canvas_size - 1  # pixel centres run 0 .. last; keeping support inside (0, last) leaves a black border
    for _ in range(MAX_REDRAWS):
        rotation = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
        shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR)
        scale_y, scale_x = rng.uniform(*SCALE_RANGE, size=2)
        linear = AffineParams(rotation, shear, scale_y, scale_x, 0.0, 0.0)
        extent = support_extent(digit, linear.matrix())
        if extent is None:  # nothing to keep inside: centre it
            return dataclasses.replace(linear, offset_y=last / 2, offset_x=last / 2)
        low, high = extent
        offset_min, offset_max = -low, last - high
        if np.all(offset_min <= offset_max):
            offset_y, offset_x = rng.uniform(offset_min, offset_max)
            return dataclasses.replace(linear, offset_y=float(offset_y), offset_x=float(offset_x))
    raise ValueError(f"could not fit the digit on a {canvas_size}x{canvas_size} canvas in {MAX_REDRAWS} draws")


def apply(digit: np.ndarray, params: AffineParams, canvas_size: int = CANVAS_SIZE) -> np.ndarray:
    """Render `digit` under `params` on a black canvas: uint8 [canvas_size, canvas_size, 1]."""
    digit = _as_digit(digit)
    inverse = np.linalg.inv(params.matrix())
    offset = np.array([params.offset_y, params.offset_x])
    # scipy maps each output coordinate o to the input coordinate inverse @ o + shift.
    shift = _DIGIT_CENTRE - inverse @ offset
    canvas = ndimage.affine_transform(
        digit.astype(np.float32), inverse, offset=shift, output_shape=(canvas_size, canvas_size),
        order=1, mode="constant", cval=0.0,
    )
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)[..., None]


def transform_digit(digit: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, AffineParams]:
    """One random affNIST-style transform of `digit`: (uint8 [40, 40, 1], the parameters used)."""
    params = sample_params(digit, rng)
    return apply(digit, params), params


def example_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator for example `index` of `stream` (e.g. a split): independent of all other examples."""
    return np.random.default_rng([seed, stream, index])


def transform_batch(digits: np.ndarray, seed: int, stream: int = 0, start_index: int = 0) -> np.ndarray:
    """Transform digits [N, 28, 28(, 1)] to uint8 [N, 40, 40, 1].

    Digit i uses `example_rng(seed, stream, start_index + i)`, so a slice of a batch
    transforms exactly as it would inside the whole batch.
    """
    digits = np.asarray(digits)
    out = np.empty((len(digits), CANVAS_SIZE, CANVAS_SIZE, 1), dtype=np.uint8)
    for i, digit in enumerate(digits):
        out[i], _ = transform_digit(digit, example_rng(seed, stream, start_index + i))
    return out
