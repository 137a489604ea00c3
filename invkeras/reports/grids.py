"""PNG grids of images: one row per input, e.g. the original followed by its samples.

Pure NumPy + Pillow so it works under any Keras backend and in tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from invkeras import artifacts


def tile_rows(rows: Sequence[Sequence[np.ndarray]], *, pad: int = 2, separator_after: int | None = 1,
              scale: int = 2) -> np.ndarray:
    """Tile rows of equally sized uint8 HWC images into one uint8 RGB array.

    A wider gap after the first `separator_after` columns sets the originals apart from the samples.
    """
    if not rows or not rows[0]:
        raise ValueError("tile_rows needs at least one image")
    h, w = np.asarray(rows[0][0]).shape[:2]
    n_cols = max(len(r) for r in rows)
    gap = [pad] * (n_cols + 1)
    if separator_after is not None and 0 < separator_after < n_cols:
        gap[separator_after] = pad * 4
    width = sum(gap) + n_cols * w
    height = len(rows) * h + (len(rows) + 1) * pad
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        top = pad + r * (h + pad)
        left = gap[0]
        for c, image in enumerate(row):
            image = np.asarray(image, dtype=np.uint8)
            if image.ndim == 2:
                image = image[..., None]
            if image.shape[-1] == 1:
                image = np.repeat(image, 3, axis=-1)
            canvas[top : top + h, left : left + w] = image
            left += w + gap[c + 1]
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return canvas


def save_grid(path: str | Path, rows: Sequence[Sequence[np.ndarray]], **kwargs) -> Path:
    """Write a PNG grid atomically."""
    from PIL import Image

    canvas = tile_rows(rows, **kwargs)
    with artifacts.atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return Path(path)


def originals_and_samples(originals: np.ndarray | None, samples: np.ndarray) -> list[list[np.ndarray]]:
    """Rows for `sample`: [original, sample_1, ..., sample_K] per input ([N, K, H, W, C] samples)."""
    rows = []
    for i in range(samples.shape[0]):
        row = [] if originals is None else [originals[i]]
        rows.append(row + [samples[i, k] for k in range(samples.shape[1])])
    return rows


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float pixel values (a reconstruction, say) as the uint8 images grids show: rounded, clipped."""
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)
