"""Summary statistics over held-out images, written once for every table in invkeras."""

from __future__ import annotations

import math

import numpy as np


def standard_error(values) -> float:
    """Standard error of the mean over images: sample standard deviation (ddof=1) / sqrt(n)."""
    values = np.asarray(values, np.float64)
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def mean_and_se(values) -> dict:
    """{"mean", "se"} of per-image values (for paired differences, pass the differences)."""
    values = np.asarray(values, np.float64)
    return {"mean": float(np.mean(values)), "se": standard_error(values)}
