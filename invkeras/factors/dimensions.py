"""How many dimensions of the representation each factor holds: the estimate that sizes the blocks.

Esser, Rombach & Ommer (2020, sec. 3.3) score a factor F by how strongly pair members that share
F agree, summed over the representation's N dimensions, score the residual with N, and allocate
N dimensions by a softmax of the scores. Exactly what is implemented here (as in the authors'
`dim_callback`, which divides every score by N; the paper's softmax of the raw scores would hand
a residual scored N almost every dimension):

    1. pairs (r_a, r_b) sharing a known factor; the dimensions that are constant over all pair
       members (e.g. dead ReLU units) are dropped from the scores, and each remaining dimension i
       is standardised over all pair members (mean 0, variance 1);
    2. for factor F, over its pairs: m_F,i = (mean_a + mean_b) / 2, and
           c_F,i = mean over F's pairs of (r_a,i - m_F,i)(r_b,i - m_F,i),
       the correlation of the pair members in dimension i (the covariance of two standardised
       variables); the score is the sum over dimensions divided by their count N',
           s_F = (1 / N') sum_i c_F,i            (the paper's sum of correlations, over N'),
       and the residual's score is s_res = N' / N' = 1 (the paper's N, over N');
    3. shares p = softmax(s_1, ..., s_K, s_res); factor F gets floor(p_F N) dimensions,
       raised to 1 if it would get none (every block needs a dimension; the reference code has
       no such floor), and the residual gets the rest, N - sum_F N_F (at least 1).

A score is the share of the representation's (standardised) variance that pair members sharing F
have in common; it is invariant to any rotation of the standardised representation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from invkeras.errors import InvkerasError
from invkeras.factors.network import RESIDUAL


@dataclass
class DimensionEstimate:
    names: list[str]  # the factors, then "residual"
    scores: list[float]  # s_F per factor, then s_res = 1
    shares: list[float]  # softmax of the scores
    sizes: list[int]  # dimensions per block (sum = dim)
    dim: int
    live_dims: int  # N': dimensions that vary over the pairs
    pairs_per_factor: dict[str, int] = field(default_factory=dict)
    method: str = "estimate"  # or "given"

    def as_dict(self) -> dict:
        return {"names": self.names, "scores": self.scores, "shares": self.shares, "sizes": self.sizes,
                "dim": self.dim, "live_dims": self.live_dims, "pairs_per_factor": self.pairs_per_factor,
                "method": self.method}


def allocate(scores: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(shares, sizes): softmax of [factor scores..., residual score]; floor(share * dim), at least
    1 per factor, the remainder to the residual (last)."""
    scores = np.asarray(scores, np.float64)
    shares = np.exp(scores - scores.max())
    shares = shares / shares.sum()
    sizes = np.maximum(np.floor(shares[:-1] * dim).astype(np.int64), 1)
    residual = dim - int(sizes.sum())
    if residual < 1:
        raise InvkerasError(f"factor dimensions: a representation of {dim} dimensions cannot hold {len(sizes)} factor "
                            "block(s) and a residual of at least one dimension each")
    return shares, np.append(sizes, residual)


def estimate_dimensions(r_a: np.ndarray, r_b: np.ndarray, shared: np.ndarray, factor_names: list[str]
                        ) -> DimensionEstimate:
    """The estimate above from pairs (r_a[i], r_b[i]) sharing factor `factor_names[shared[i]]`."""
    r_a, r_b = np.asarray(r_a, np.float64), np.asarray(r_b, np.float64)
    dim = r_a.shape[1]
    both = np.concatenate([r_a, r_b])
    std = both.std(0)
    live = std > 1e-8 * max(1.0, float(np.abs(both).max()))
    if not live.any():
        raise InvkerasError("factor dimensions: the representation is constant over the pairs")
    mean = both.mean(0)
    a = (r_a[:, live] - mean[live]) / std[live]
    b = (r_b[:, live] - mean[live]) / std[live]
    scores, counts = [], {}
    for k, name in enumerate(factor_names):
        rows = np.flatnonzero(shared == k)
        counts[name] = int(len(rows))
        if len(rows) < 2:
            raise InvkerasError(f"factor dimensions: only {len(rows)} pair(s) share factor '{name}'; use more pairs")
        m = 0.5 * (a[rows].mean(0) + b[rows].mean(0))
        c = np.mean((a[rows] - m) * (b[rows] - m), axis=0)
        scores.append(float(c.sum() / live.sum()))
    scores.append(1.0)  # the residual
    shares, sizes = allocate(np.asarray(scores), dim)
    return DimensionEstimate([*factor_names, RESIDUAL], scores, [float(s) for s in shares],
                             [int(s) for s in sizes], int(dim), int(live.sum()), counts)


def given_dimensions(sizes: dict[str, int], factor_names: list[str], dim: int) -> DimensionEstimate:
    """Block sizes the user set for every factor; the residual gets the rest."""
    missing = [name for name in factor_names if name not in sizes]
    extra = [name for name in sizes if name not in factor_names]
    if missing or extra:
        problem = (f"no size for {', '.join(missing)}" if missing else f"{', '.join(extra)} is not a factor of "
                   "this model")
        raise InvkerasError(f"--dims: {problem} (factors: {', '.join(factor_names)}; the residual takes the rest)")
    if any(int(sizes[name]) < 1 for name in factor_names):
        raise InvkerasError("--dims: every factor needs at least one dimension")
    blocks = [int(sizes[name]) for name in factor_names]
    residual = dim - sum(blocks)
    if residual < 1:
        raise InvkerasError(f"--dims: the factors take {sum(blocks)} of the representation's {dim} dimensions, leaving "
                            "none for the residual")
    return DimensionEstimate([*factor_names, RESIDUAL], [], [], [*blocks, residual], int(dim), int(dim), {},
                             method="given")
