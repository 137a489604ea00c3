"""A synthetic representation of the procedural images whose factor structure is known, shared by
the factor INN tests (tests/factors) and their JAX-subset twins (tests/jax_subset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_code(factors: np.ndarray, rng: np.random.Generator, jitter: float = 0.05) -> np.ndarray:
    """A known code of the five factors, 7 dimensions: shape at the corners of a square, size, row,
    column and intensity each on one evenly spaced axis, plus a small jitter dimension."""
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float64)
    return np.concatenate([corners[factors[:, 0]], (factors[:, 1:2] - 1.0), (factors[:, 2:3] - 5.5) * 0.35,
                           (factors[:, 3:4] - 5.5) * 0.35, (factors[:, 4:5] - 1.5) * 0.7,
                           jitter * rng.standard_normal((len(factors), 1))], axis=1)


def write_synthetic_features(path: Path) -> Path:
    """features .npz: x = all 6,912 procedural renderings, h = a random rotation of their factor code
    (so no single dimension of h is a factor), y = the shape."""
    from invkeras.data.procedural import _render_table, all_factor_combinations

    factors = all_factor_combinations()
    rng = np.random.default_rng(0)
    code = synthetic_code(factors, rng)
    rotation, _ = np.linalg.qr(rng.standard_normal((code.shape[1], code.shape[1])))
    np.savez(path, x=np.array(_render_table()), h=(code @ rotation.T).astype(np.float32), y=factors[:, 0])
    return path
