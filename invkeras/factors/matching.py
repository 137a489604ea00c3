"""Exact factors of procedural images.

Every procedural image is a distinct function of its five factors (the dataset's own test
renders all 6,912 and checks that they differ pairwise), so

  * an image that IS a rendering has exactly one factor tuple: `factors_of_renderings` looks it
    up by its bytes and refuses, in one line, images that are not renderings;
  * any other image (a decoded edit) is given the factors of its nearest rendering in pixel
    space (squared L2 over the 6,912): `nearest_factors`. Two distinct renderings differ by at
    least one pixel of at least 64 grey levels, so a rendering is its own nearest rendering with
    a margin far above float32 rounding: matching recovers the factors of every rendering.
"""

from __future__ import annotations

import functools

import numpy as np

from invkeras.errors import InvkerasError


@functools.lru_cache(maxsize=1)
def _lookup() -> dict[bytes, int]:
    from invkeras.data.procedural import _render_table

    table = _render_table()
    return {table[i].tobytes(): i for i in range(len(table))}


@functools.lru_cache(maxsize=1)
def _flat_table() -> tuple[np.ndarray, np.ndarray]:
    from invkeras.data.procedural import _render_table

    flat = _render_table().reshape(len(_render_table()), -1).astype(np.float32)
    return flat, np.sum(np.square(flat), axis=1)


def _check_shape(images: np.ndarray, what: str) -> np.ndarray:
    from invkeras.data.procedural import IMAGE_SHAPE

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise InvkerasError(f"{what}: images of shape {tuple(images.shape[1:])} are not procedural images "
                            f"{IMAGE_SHAPE}")
    return images


def factors_of_renderings(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Factor indices int64 [N, 5] of images that are procedural renderings; one line if one is not."""
    from invkeras.data.procedural import all_factor_combinations

    images = _check_shape(images, what)
    lookup = _lookup()
    flat = np.empty(len(images), np.int64)
    for i, image in enumerate(np.asarray(images, np.uint8)):
        index = lookup.get(image.tobytes())
        if index is None:
            raise InvkerasError(f"{what}: image {i} is not a rendering of the procedural dataset, so its factors are "
                                "unknown (pairs 'factors' need procedural images)")
        flat[i] = index
    return all_factor_combinations()[flat]


def nearest_rendering(images: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(flat index of the nearest rendering, its squared L2 distance) per image, in pixel space."""
    images = _check_shape(images, "nearest rendering")
    table, table_sq = _flat_table()
    flat = images.reshape(len(images), -1).astype(np.float32)
    index = np.empty(len(images), np.int64)
    distance = np.empty(len(images), np.float64)
    for start in range(0, len(images), batch_size):
        chunk = flat[start : start + batch_size]
        d = np.sum(np.square(chunk), axis=1)[:, None] - 2.0 * chunk @ table.T + table_sq[None, :]
        best = np.argmin(d, axis=1)
        index[start : start + len(chunk)] = best
        distance[start : start + len(chunk)] = np.maximum(d[np.arange(len(chunk)), best], 0.0)
    return index, distance


def nearest_factors(images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Factor indices int64 [N, 5] of each image's nearest rendering (exact for renderings: those are
    looked up by their bytes, and only the others are compared with all 6,912)."""
    from invkeras.data.procedural import all_factor_combinations

    images = _check_shape(images, "nearest rendering")
    lookup = _lookup()
    flat = np.asarray([lookup.get(image.tobytes(), -1) for image in np.asarray(images, np.uint8)], np.int64)
    misses = np.flatnonzero(flat < 0)
    if len(misses):
        flat[misses] = nearest_rendering(images[misses], batch_size)[0]
    return all_factor_combinations()[flat]
