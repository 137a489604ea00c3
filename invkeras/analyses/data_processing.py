"""The data-processing check: no deeper layer of a feed-forward chain can know more than a shallower one.

In a chain x -> h1 -> h2 -> ..., each layer is a function of the one before it, so by the
data-processing inequality I(x; h_deep) <= I(x; h_shallow). An estimate that says otherwise
by more than its noise cannot be right about both layers: at least one of the two inverters
is undertrained (a loose H*(x|h) at the shallower layer is the usual culprit), so the
ordering of the two is not established by these inverters. `breaches` finds such pairs;
the information table (`invkeras.analyses.mi`) puts each under the deeper layer's row.

"More than its noise" means the 95% interval of the difference, deeper minus shallower,
lies wholly above zero. The difference is paired over the images both were evaluated on,
and with several seeds per layer its interval adds the spread between training runs
(`invkeras.analyses.seeds.difference`).

The chain's order comes from the classifier's graph (`graph_order`): the layers as the model
computes them, kept only when each one lies on every path from the input to the deeper
ones, i.e. when it is a chain for those layers (a skip connection around a layer breaks the
inequality for it, and then nothing is checked). Given features have no graph: there the
order is the one declared.

What the check does not cover: `compare`'s label agreement. The classifier's label is a
function of every layer of the chain, so the inequality there is an equality: a perfect
inverter of any layer keeps the input's label in every sample. A shallower layer whose
samples keep the label less often than a deeper one's says its inverter falls short of
that, not that the deeper layer knows more; `label_gaps` reports such gaps beyond noise as
what they are, and never as a breach of the inequality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from invkeras.analyses import seeds

FLAG = "deeper layer exceeds a shallower one"
MEANING = ("a deeper layer of a feed-forward chain cannot keep more information than a shallower one (data-processing "
           "inequality): at least one of the two inverters is undertrained, so the ordering is not established")


@dataclass(frozen=True)
class Breach:
    """A deeper layer whose estimate exceeds a shallower one's beyond the difference's 95% interval."""

    shallower: str
    deeper: str
    gap: seeds.Interval  # deeper minus shallower

    def sentence(self, unit: str = "nats") -> str:
        return (f"{self.deeper} exceeds the shallower {self.shallower} by {self.gap.mean:.3f} {unit} "
                f"(95% interval ±{self.gap.half_width:.3f}): {MEANING}")

    def as_dict(self) -> dict:
        return {"shallower": self.shallower, "deeper": self.deeper, "excess": self.gap.mean,
                "half_width": self.gap.half_width, "se": self.gap.se, "df": self.gap.df}


def _paired(values: Mapping[str, np.ndarray], names: Sequence[str]) -> bool:
    return len({np.shape(seeds.as_seeds(values[name]))[1] for name in names}) == 1


def gaps(order: Sequence[str], values: Mapping[str, np.ndarray], *, paired: bool = True):
    """Every (shallower, deeper, interval of deeper minus shallower) of the layers in `order`
    (shallow to deep) that have values ([seeds, images], or one seed's [images]); paired when
    `paired` and all have the same number of images."""
    present = [name for name in order if name in values]
    paired = paired and _paired(values, present)
    for i, shallower in enumerate(present):
        for deeper in present[i + 1:]:
            yield shallower, deeper, seeds.difference(values[deeper], values[shallower], paired=paired)


def breaches(order: Sequence[str], values: Mapping[str, np.ndarray], *, paired: bool = True) -> list[Breach]:
    """The pairs of `order` (shallow to deep) in which the deeper layer's value exceeds the
    shallower one's beyond the 95% interval of the difference. `values` hold a quantity that
    grows with what a layer keeps (per-image NCE = -NLL), per name."""
    return [Breach(shallower, deeper, gap) for shallower, deeper, gap in gaps(order, values, paired=paired)
            if gap.low > 0]


def label_gaps(order: Sequence[str], agreement: Mapping[str, np.ndarray], *, paired: bool = True) -> list[str]:
    """Sentences for the pairs of `order` whose label agreement differs beyond the 95% interval of
    the difference, either way: never a breach of the inequality (see the module docstring), but
    the inverter with the lower agreement falls short of the perfect inverter's 1."""
    sentences = []
    for shallower, deeper, gap in gaps(order, agreement, paired=paired):
        if gap.low <= 0 <= gap.high:
            continue
        better, worse = (deeper, shallower) if gap.mean > 0 else (shallower, deeper)
        sentences.append(f"samples of {better} keep the label more often than those of {worse} "
                         f"({abs(gap.mean):.1%} ± {gap.half_width:.1%}): not a breach of the data-processing "
                         f"inequality, which makes the label equally recoverable from every layer of the chain; the "
                         f"{worse} inverter falls short")
    return sentences


# --- the chain's order ----------------------------------------------------------------


def graph_order(model, layers: Sequence[str]) -> list[str] | None:
    """`layers` in the order the model computes them, or None when some are not layers of the
    model or they do not form a chain: a later layer reachable from the input by a path around
    an earlier one (a skip connection) is not a function of it alone."""
    by_name = {layer.name: layer for layer in getattr(model, "layers", [])}
    if not layers or any(name not in by_name for name in layers):
        return None
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    ordered = sorted(dict.fromkeys(layers), key=position.__getitem__)
    for i, shallower in enumerate(ordered):
        for deeper in ordered[i + 1:]:
            if _reaches_input_around(by_name[deeper], by_name[shallower]):
                return None
    return ordered


def _parents(operation) -> list:
    return [parent.operation for node in getattr(operation, "_inbound_nodes", []) for parent in node.parent_nodes]


def _reaches_input_around(start, blocked) -> bool:
    """Whether some path back from `start` reaches an input without passing through `blocked`."""
    seen, stack = set(), [start]
    while stack:
        operation = stack.pop()
        if operation is blocked or id(operation) in seen:
            continue
        seen.add(id(operation))
        parents = _parents(operation)
        if not parents:
            return True
        stack.extend(parents)
    return False


def classifier_order(classifier: str | Path, layers: Sequence[str]) -> list[str] | None:
    """`graph_order` of the classifier saved at `classifier` (None when it cannot be read)."""
    from invkeras.data.features import load_model

    try:
        model = load_model(classifier)
    except Exception:  # an unreadable classifier only means no check, never a failed table
        return None
    return graph_order(model, layers)
