"""Training seeds as a second source of noise in a held-out estimate.

An inverter's held-out NLL varies for two reasons: which test images it is evaluated on,
and which training run produced it (initial weights, batch order). The standard error over
images says nothing about the second. Several inverters of one layer that differ only in
their seed measure it; this module combines both into one interval.

Write v[s, i] for the value of seed s (of S) on test image i (of n, the same images for
every seed) and model it as a crossed design, v[s, i] = mu + a_s + b_i + e_si, with
independent training-run effects a_s (variance sigma_a^2), image effects b_i (sigma_b^2)
and noise e_si (sigma_e^2). The estimate is the grand mean, whose variance is

    sigma_a^2 / S + sigma_b^2 / n + sigma_e^2 / (S n).

Two observable pieces estimate it:

  * the image part, se_images^2: the squared standard error over images of the seed-averaged
    values u_i = mean_s v[s, i]. This is the paired error: the seeds share their images, so
    their image errors do not average out (dividing each seed's own se^2 by S would pretend
    they do). It estimates sigma_b^2 / n + sigma_e^2 / (S n);
  * the seed part, var_seeds / S: the sample variance (ddof=1) over seeds of the per-seed
    means m_s = mean_i v[s, i], divided by S. It estimates sigma_a^2 / S + sigma_e^2 / (S n).

    se^2 = se_images^2 + var_seeds / S

counts the small interaction term sigma_e^2 / (S n) twice, so the interval errs on the wide
side. The interval is mean ± t * se with t the 97.5% quantile of Student's t on the
Welch-Satterthwaite degrees of freedom

    df = se^4 / ((se_images^2)^2 / (n - 1) + (var_seeds / S)^2 / (S - 1)),

so that a handful of seeds (whose variance is itself poorly known) widen it as they should.
With one seed there is no seed part: none of this is computed and tables read as before.

The same two pieces, summed over both members, give the interval of a difference between
two layers evaluated on the same images (`difference`): the image part from the per-image
differences of the seed-averaged values, the seed part from each layer's own seeds (the runs
of two layers are independent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from invkeras.errors import InvkerasError
from invkeras.stats import standard_error

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its combined standard error, the parts it is made of, and its 95% interval."""

    mean: float
    se_images: float  # over test images, of the seed-averaged values (paired across seeds)
    seed_variance: float  # the seed part of se^2: sum over members of var_seeds / S (0 with one seed each)
    df: float  # Welch-Satterthwaite degrees of freedom of se
    n_seeds: int  # the fewest seeds of any member

    @property
    def se(self) -> float:
        return math.sqrt(self.se_images ** 2 + self.seed_variance)

    @property
    def half_width(self) -> float:
        return t_quantile(self.df) * self.se

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t on `df` degrees of freedom (normal when infinite)."""
    from scipy import stats

    if not math.isfinite(df):
        return float(stats.norm.ppf(0.5 + level / 2))
    return float(stats.t.ppf(0.5 + level / 2, df))


def as_seeds(values) -> np.ndarray:
    """Values as [seeds, images]: a 1-D array is one seed."""
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.shape[1] < 2:
        raise InvkerasError(f"seeds: need per-image values of at least two images per seed, got shape {values.shape}")
    return values


def seed_part(values) -> float:
    """var_seeds / S: the between-seed variance of the per-seed means, over the number of seeds (0 for one)."""
    values = as_seeds(values)
    if len(values) < 2:
        return 0.0
    return float(np.var(values.mean(axis=1), ddof=1) / len(values))


def _df(pieces: Sequence[tuple[float, int]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates, each (variance, its
    degrees of freedom); pieces with none (a single seed's zero seed part) add nothing."""
    total = sum(v for v, d in pieces if d > 0)
    denominator = sum(v * v / d for v, d in pieces if d > 0)
    return total * total / denominator if denominator > 0 else math.inf


def _seed_pieces(*members: np.ndarray) -> list[tuple[float, int]]:
    return [(seed_part(member), len(member) - 1) for member in members]


def interval(values) -> Interval:
    """The mean over seeds and images of `values` ([seeds, images], or one seed's [images]) and its
    combined interval (the module docstring gives the formula)."""
    values = as_seeds(values)
    per_image = values.mean(axis=0)
    se_images = standard_error(per_image)
    pieces = _seed_pieces(values)
    return Interval(float(per_image.mean()), se_images, pieces[0][0],
                    _df([(se_images ** 2, values.shape[1] - 1), *pieces]), len(values))


def difference(first, second, *, paired: bool = True) -> Interval:
    """first - second (each [seeds, images], or one seed's [images]) with the seed part from each
    member's own seeds. Paired (the same images, in the same order): the image part is the
    standard error of the per-image differences of the seed-averaged values. Unpaired (other
    images, or other numbers of them): the sum of the two members' own image parts."""
    first, second = as_seeds(first), as_seeds(second)
    if paired and first.shape[1] != second.shape[1]:
        raise InvkerasError(f"seeds: a paired difference needs the same images, got {first.shape[1]} and "
                            f"{second.shape[1]}")
    pieces = _seed_pieces(first, second)
    if paired:
        per_image = first.mean(axis=0) - second.mean(axis=0)
        se_images = standard_error(per_image)
        image_pieces = [(se_images ** 2, len(per_image) - 1)]
    else:
        own = [standard_error(member.mean(axis=0)) for member in (first, second)]
        se_images = math.hypot(*own)
        image_pieces = [(own[0] ** 2, first.shape[1] - 1), (own[1] ** 2, second.shape[1] - 1)]
    return Interval(float(first.mean() - second.mean()), se_images, sum(v for v, _ in pieces),
                    _df([*image_pieces, *pieces]), min(len(first), len(second)))


# --- where the runs of several seeds live -------------------------------------------


def seeded_dir(base: str | Path, seed: int, first_seed: int) -> Path:
    """The directory of the run with `seed` among runs whose first seed is `first_seed`: the
    first keeps the plain directory (so one seed is laid out as ever), the others sit beside it
    as <dir>-seed<seed>, e.g. inverters/pixelcnn/fc3 and inverters/pixelcnn/fc3-seed1."""
    base = Path(base)
    return base if seed == first_seed else base.with_name(f"{base.name}-seed{seed}")


def seed_list(first_seed: int, count: int) -> list[int]:
    """seed, seed + 1, ..., seed + count - 1."""
    return list(range(first_seed, first_seed + count))
