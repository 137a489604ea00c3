"""Image mixing (Rombach, Esser & Ommer 2020): image A's residual under image B's representation.

For a kind with a latent residual (a `mix(x_a, h_b, h_a=...)` method, as kind cinn has), each
cell (i, j) of the grid is D(t^-1(v_i | h_j)): what the layer keeps comes from image j (the
column), what it throws away from image i (the row). The diagonal is the autoencoder's own
reconstruction of each image, since t^-1(t(z | h) | h) = z.

Outputs, in the inverter's directory unless `out` says otherwise, each with metadata:
  mix.png   the top row holds the B images, the left column the A images, and the cells the mixes
  mix.npz   x [N, H, W, C], h [N, ...], mixed [N (A), N (B), H, W, C] uint8, and, when the
            classifier is known, labels [N, N] of the mixes and labels_x [N] of the inputs
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from invkeras import artifacts
from invkeras.errors import InvkerasError

MIX_GRID = "mix.png"
MIX_ARRAYS = "mix.npz"
COMMAND = "mix"


class MixConfig(BaseModel):
    """Settings of `invkeras mix`."""

    model_config = ConfigDict(extra="forbid")

    inverter: str = Field(description="inverter directory or model file of a kind with a latent residual (cinn)")
    num_inputs: int = Field(6, ge=2, description="held-out images N: the grid is N x N")
    split: str = Field("test", description="validation | test")
    batch_size: int = Field(256, gt=0)
    out: Optional[str] = Field(None, description="output directory (default: the inverter's)")


@dataclass
class Mixes:
    x: np.ndarray
    mixed: np.ndarray
    grid_path: Path
    arrays_path: Path
    seconds: float
    share_label_of_b: float | None = None  # off-diagonal mixes the classifier labels as it labels image B
    share_label_of_a: float | None = None


def mix_images(config: MixConfig, *, inverter=None) -> Mixes:
    from invkeras.analyses.common import ClassifierProbe
    from invkeras.inverters import load_inverter
    from invkeras.inverters.data import held_out_inputs
    from invkeras.reports.grids import save_grid, to_uint8

    started = time.time()
    inverter = inverter if inverter is not None else load_inverter(config.inverter)
    if not callable(getattr(inverter, "mix", None)):
        raise InvkerasError(f"{COMMAND}: inverter {inverter.path.parent} is of kind '{inverter.kind}', which has no "
                            "latent residual to mix (kind cinn has one)")
    if not inverter.conditional:
        raise InvkerasError(f"{COMMAND}: inverter {inverter.path.parent} is unconditional (layer 'none'): there is no "
                            "representation to swap")
    inputs = held_out_inputs(inverter.config, config.split, config.num_inputs)
    x, h = inputs["x"], inputs["h"]
    n = len(x)
    if n < 2:
        raise InvkerasError(f"{COMMAND}: only {n} held-out {config.split} image(s); mixing needs 2 or more")
    rows = np.repeat(np.arange(n), n)  # A: the row
    cols = np.tile(np.arange(n), n)  # B: the column
    mixed = inverter.mix(x[rows], h[cols], h_a=h[rows], batch_size=config.batch_size)
    mixed = to_uint8(mixed).reshape(n, n, *x.shape[1:])

    arrays = {"x": x, "h": h, "mixed": mixed}
    share_b = share_a = None
    classifier = inverter.classifier_path
    if classifier and Path(classifier).exists():
        probe = ClassifierProbe(classifier, inverter.layer)
        labels = probe.labels(mixed)
        labels_x = probe.labels(x[:, None])
        if labels is not None and labels_x is not None:
            labels_x = labels_x[:, 0]
            off = ~np.eye(n, dtype=bool)
            share_b = float((labels == labels_x[None, :])[off].mean())
            share_a = float((labels == labels_x[:, None])[off].mean())
            arrays.update(labels=labels, labels_x=labels_x)

    blank = np.full(x.shape[1:], 255, np.uint8)
    grid_rows = [[blank, *x]] + [[x[i], *mixed[i]] for i in range(n)]
    out_dir = Path(config.out) if config.out else inverter.path.parent
    grid_path = save_grid(out_dir / MIX_GRID, grid_rows, separator_after=1)
    arrays_path = artifacts.save_npz_atomic(out_dir / MIX_ARRAYS, **arrays)
    result = Mixes(x, mixed, grid_path, arrays_path, time.time() - started, share_b, share_a)
    provenance = dict(config={**config.model_dump(), "inverter": str(inverter.path)}, data=inverter.meta.get("data"),
                      layer=inverter.layer, inverter_kind=inverter.kind,
                      results={"seconds": result.seconds, "num_inputs": n,
                               "share_mixes_with_label_of_b": share_b, "share_mixes_with_label_of_a": share_a},
                      layout="row i = image A (residual v), column j = image B (representation h); cell = "
                             "D(t^-1(v_A | h_B)); the diagonal is the autoencoder reconstruction")
    artifacts.write_metadata(arrays_path, kind="mix-arrays", **provenance)
    artifacts.write_metadata(grid_path, kind="mix-grid", **provenance)
    return result
