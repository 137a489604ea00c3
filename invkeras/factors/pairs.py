"""Pairs for the factor INN: two rows of a representation table that share a known factor.

Two pair sources:

    factors   the procedural dataset's own five factors. The anchor a is a uniform row; the
              shared factor F is uniform over the model's named factors; the partner b has a's
              value of F and, for every other factor g of the five (named or not), a value drawn
              uniformly from the |g| - 1 values that differ from a's. So a pair shares EXACTLY one
              factor. On a cinn inverter's table (all 6,912 renderings) the partner always exists,
              and a pair is simply rendered; on stored features the partner is a stored row with
              that factor tuple, drawn again if none is stored.
    labels    the partner is a uniform row of the same class (another row when the class has
              more than one); the shared block is `class`, nothing else is constrained.

`shuffled=True` is the control: for `factors` the shared-factor labels are permuted across the
pairs, so the loss correlates a block with a factor the pair does not, in general, share; for
`labels` the partner is a uniform row of any class. A model trained on shuffled pairs shows what
the analyses give when the pairs carry no information.

Everything is a pure function of (rows, seed, stream), so a resumed run sees the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invkeras.errors import InvkerasError

FACTOR_PAIRS, LABEL_PAIRS = "factors", "labels"
PAIR_SOURCES = (FACTOR_PAIRS, LABEL_PAIRS)
CLASS_BLOCK = "class"
# Independent random streams of one seed.
TRAIN_STREAM, VALIDATION_STREAM, DIMENSION_STREAM, SCORE_STREAM = 11, 12, 13, 14
MAX_REDRAWS = 200


@dataclass(frozen=True)
class Pairs:
    """Row indices a, b (int64 [n]) and the index of the shared factor among the named ones."""

    a: np.ndarray
    b: np.ndarray
    shared: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"a": self.a, "b": self.b, "shared": self.shared}


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


class _RowsByFactors:
    """Rows grouped by their flat factor index, to draw a row with a wanted factor tuple."""

    def __init__(self, factors: np.ndarray):
        from invkeras.data.procedural import FACTOR_SIZES

        self.factors = np.asarray(factors, np.int64)
        flat = np.ravel_multi_index(tuple(self.factors.T), FACTOR_SIZES)
        self.order = np.argsort(flat, kind="stable")
        self.sorted_flat = flat[self.order]

    def draw(self, wanted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniform row with each wanted tuple (int [m, 5]); -1 where no row has it."""
        from invkeras.data.procedural import FACTOR_SIZES

        flat = np.ravel_multi_index(tuple(np.asarray(wanted).T), FACTOR_SIZES)
        lo = np.searchsorted(self.sorted_flat, flat, "left")
        count = np.searchsorted(self.sorted_flat, flat, "right") - lo
        pick = lo + np.floor(rng.random(len(flat)) * np.maximum(count, 1)).astype(np.int64)
        return np.where(count > 0, self.order[np.minimum(pick, len(self.order) - 1)], -1)


def _partners(rows: _RowsByFactors, a: np.ndarray, keep: np.ndarray, rng: np.random.Generator, what: str, *,
              independent: bool = False) -> np.ndarray:
    """For each anchor row a, a row that has a's value of every factor where `keep` [n, 5] is
    True and, in every other factor, one of the other values (uniform; with `independent`, any
    value, uniform), drawn again until a stored row has the tuple."""
    from invkeras.data.procedural import FACTOR_SIZES

    sizes = np.asarray(FACTOR_SIZES, np.int64)
    b = np.full(len(a), -1, np.int64)
    todo = np.arange(len(a))
    for _ in range(MAX_REDRAWS):
        # 1 .. |g| - 1: another value (0 .. |g| - 1, any value, when independent)
        offsets = rng.integers(0 if independent else 1, sizes, size=(len(todo), len(sizes)))
        target = rows.factors[a[todo]]
        target = np.where(keep[todo], target, (target + offsets) % sizes)
        found = rows.draw(target, rng)
        b[todo] = found
        todo = todo[found < 0]
        if not len(todo):
            return b
    raise InvkerasError(f"{what}: {len(rows.factors)} stored examples are too few: for {len(todo)} anchors no partner "
                        f"was found after {MAX_REDRAWS} draws")


def factor_pairs(factors: np.ndarray, named: list[str], n: int, seed: int, stream: int, *,
                 shuffled: bool = False, others: str = "differ") -> Pairs:
    """n pairs of rows of `factors` (int [rows, 5]) sharing one of the `named` factors; every other
    factor differs (`others="differ"`: the pair shares exactly one) or is drawn independently of the
    anchor's, uniformly, so that it may coincide (`others="independent"`)."""
    from invkeras.data.procedural import FACTOR_NAMES

    named_index = np.asarray([FACTOR_NAMES.index(name) for name in named], np.int64)
    rng = _rng(seed, stream)
    rows = _RowsByFactors(factors)
    a = rng.integers(0, len(rows.factors), n)
    shared = rng.integers(0, len(named), n)
    keep = np.arange(len(FACTOR_NAMES))[None, :] == named_index[shared][:, None]
    b = _partners(rows, a, keep, rng, "pairs 'factors'", independent=others == "independent")
    if shuffled:
        shared = rng.permutation(shared)
    return Pairs(a, b, shared.astype(np.int64))


def label_pairs(labels: np.ndarray, n: int, seed: int, stream: int, *, shuffled: bool = False) -> Pairs:
    """n pairs of rows with the same label (any label when `shuffled`); shared block 0 (`class`)."""
    labels = np.asarray(labels, np.int64)
    if len(labels) < 2:
        raise InvkerasError(f"pairs 'labels': {len(labels)} labelled example(s); at least 2 are needed")
    rng = _rng(seed, stream)
    a = rng.integers(0, len(labels), n)
    if shuffled:
        b = rng.integers(0, len(labels), n)
    else:
        order = np.argsort(labels, kind="stable")  # rows of one class are contiguous in `order`
        lo = np.searchsorted(labels[order], labels[a], "left")
        count = np.searchsorted(labels[order], labels[a], "right") - lo
        rank = np.empty(len(labels), np.int64)
        rank[order] = np.arange(len(labels))
        own = rank[a] - lo  # a's position within its class
        # Another row of the class, uniform over the count - 1 others (a itself when it is alone).
        offset = np.floor(rng.random(n) * np.maximum(count - 1, 1)).astype(np.int64)
        b = order[lo + np.where(count > 1, (own + 1 + offset) % count, own)]
    return Pairs(a, b.astype(np.int64), np.zeros(n, np.int64))


def make_pairs(source: str, keys: np.ndarray, named: list[str], n: int, seed: int, stream: int, *,
               shuffled: bool = False, others: str = "differ") -> Pairs:
    """Pairs of either source: `keys` are factor tuples (factors) or class labels (labels)."""
    if source == FACTOR_PAIRS:
        return factor_pairs(keys, named, n, seed, stream, shuffled=shuffled, others=others)
    if source == LABEL_PAIRS:
        return label_pairs(keys, n, seed, stream, shuffled=shuffled)
    raise InvkerasError(f"--pairs {source}: unknown pair source; choose from {', '.join(PAIR_SOURCES)}")


def independent_pairs(rows: int, n: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of rows drawn independently and uniformly (the swaps the disentanglement matrix scores)."""
    rng = _rng(seed, stream)
    return rng.integers(0, rows, n), rng.integers(0, rows, n)


def all_different_pairs(factors: np.ndarray, n: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of rows whose factor tuples differ in every factor (the swaps edit accuracy scores)."""
    rng = _rng(seed, stream)
    rows = _RowsByFactors(factors)
    a = rng.integers(0, len(rows.factors), n)
    keep = np.zeros((n, rows.factors.shape[1]), bool)
    return a, _partners(rows, a, keep, rng, "edit accuracy")
