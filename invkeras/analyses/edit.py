"""Editing a representation and decoding the result: what do shifted, scaled, noisy or mixed logits look like?

Teterwak et al. (2021) decode edited logits of held-out images with their feedforward
inverter. `edit_inverter` does the same with any kind that can `sample` (a GAN, a PixelCNN,
an MSE decoder), on any layer. For N held-out inputs x_i with h_i = h(x_i), every
operation is swept over strengths t (default 0, 0.25, 0.5, 0.75, 1):

    shift C:D      h + t D e_C            add t D to unit C (a logit: class C); needs a vector h
    scale S        h (1 + t (S - 1))      from h (t = 0) to S h (t = 1)
    noise SIGMA    h + t SIGMA z_i        one draw z_i ~ N(0, I) per input, growing along it
    interpolate    (1 - t) h_i + t h_j    towards the next input, j = i + 1 (mod N)

The inverter samples every edited h with the same seed, so a kind whose noise depends only
on the seed and the row shows the edit alone along a grid row. t = 0 is h itself for every
operation; its samples are drawn once and shared (and are the reference the moves to and
from a target label are counted against).

Outputs, in `<inverter dir>/edits/` unless `out` says otherwise, each with its `.meta.json`:
  edit_<operation>.png   one grid per operation: rows are inputs (x K samples), columns
                         the input, then its decodings at each strength (interpolate adds
                         the partner input last)
  edits.json             the classifier's label of every edited sample [input][strength][k],
                         and per strength: the share keeping the input's label, the share
                         labelled with the shifted class (shift) or the partner's label
                         (interpolate), the moves to and from that class relative to the
                         unedited h's sample, and, when h is the classifier's output, the
                         share labelled argmax of the edited h
  edits.npz              x, h, strengths, and per operation <name>__h, the edited h
                         [N, strengths, ...], and <name>__samples [N, strengths, K, H, W, C]
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError

EDITS_DIR = "edits"
EDITS_JSON = "edits.json"
EDITS_ARRAYS = "edits.npz"
DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
_SHIFT = re.compile(r"^\s*(-?\d+)\s*:\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")


def parse_shift(text: str) -> tuple[int, float]:
    """'3:10' -> (3, 10.0); one line naming the flag otherwise."""
    match = _SHIFT.match(str(text))
    if not match:
        raise ValueError(f"--shift {text!r}: expected CLASS:DELTA, e.g. 3:10 (add 10 to logit 3)")
    if not math.isfinite(float(match.group(2))):  # 1e999
        raise ValueError(f"--shift {text!r}: DELTA must be a finite number")
    return int(match.group(1)), float(match.group(2))


def shift_list(value) -> list:
    """A `shift` setting as a list of checked CLASS:DELTA strings (one string is a list of one)."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if isinstance(values, (list, tuple)):
        for text in values:
            parse_shift(str(text))
    return values


class EditConfig(BaseModel):
    """Settings of `invkeras edit` (and of a recipe's `edit` step)."""

    model_config = ConfigDict(extra="forbid")

    inverter: str = Field(description="inverter directory or model file (any kind that can sample)")
    shift: list[str] = Field(default_factory=list, description="CLASS:DELTA: add DELTA to unit CLASS of h (a logit "
                                                               "for layer logits); one grid per shift")
    scale: Optional[float] = Field(None, description="multiply h by S (swept from 1 to S)")
    noise: Optional[float] = Field(None, gt=0, description="add Gaussian noise of standard deviation SIGMA to h "
                                                           "(in h's units; swept from 0 to SIGMA)")
    interpolate: bool = Field(False, description="interpolate from each input's h to the next input's")
    strengths: list[float] = Field(default_factory=lambda: list(DEFAULT_STRENGTHS), min_length=1,
                                   description="the sweep: 0 is h unedited, 1 the full operation")
    num_inputs: int = Field(8, gt=0, description="held-out inputs N")
    num_samples: int = Field(1, gt=0, description="samples K per input and strength")
    split: str = Field("test", description="validation | test")
    seed: int = Field(0, description="same seed, same samples (and the same noise draws)")
    batch_size: int = Field(64, gt=0, description="images sampled in parallel")
    method: Optional[str] = Field(None, description="a kind's sampling option (pixelcnn: pixel | cached | full)")
    out: Optional[str] = Field(None, description="output directory (default <inverter dir>/edits)")

    @field_validator("shift", mode="before")
    @classmethod
    def _shift_list(cls, value):
        return shift_list(value)

    def operations(self) -> list["Operation"]:
        ops = [Operation("shift", *parse_shift(text)) for text in self.shift]
        if self.scale is not None:
            ops.append(Operation("scale", amount=self.scale))
        if self.noise is not None:
            ops.append(Operation("noise", amount=self.noise))
        if self.interpolate:
            ops.append(Operation("interpolate"))
        return list(dict.fromkeys(ops))  # a repeated --shift is one grid

    def sample_options(self) -> dict:
        return {} if self.method is None else {"method": self.method}


@dataclass(frozen=True)
class Operation:
    kind: str  # shift | scale | noise | interpolate
    unit: int | None = None  # shift: the class (unit of h)
    amount: float | None = None  # shift: delta; scale: S; noise: sigma

    @property
    def name(self) -> str:
        if self.kind == "shift":
            return f"shift_{self.unit}_{self.amount:+g}"
        return self.kind if self.amount is None else f"{self.kind}_{self.amount:g}"

    def describe(self, strength: float) -> str:
        """What the operation does at strength t, for tables."""
        if self.kind == "shift":
            return f"logit {self.unit} {strength * self.amount:+.3g}"
        if self.kind == "scale":
            return f"x {1 + strength * (self.amount - 1):.3g}"
        if self.kind == "noise":
            return f"sigma {strength * self.amount:.3g}"
        return f"{1 - strength:.2f} h_i + {strength:.2f} h_j"

    def apply(self, h: np.ndarray, strength: float, *, noise: np.ndarray | None = None) -> np.ndarray:
        h = np.asarray(h, np.float32)
        t = np.float32(strength)
        if self.kind == "shift":
            edited = h.copy()
            edited[:, self.unit] += t * np.float32(self.amount)
            return edited
        if self.kind == "scale":
            return h * np.float32(1 + strength * (self.amount - 1))
        if self.kind == "noise":
            return h + t * np.float32(self.amount) * noise
        return (1 - t) * h + t * np.roll(h, -1, axis=0)  # input i towards input i + 1 (mod N)


@dataclass
class Edits:
    operations: list[dict]  # edits.json's entries, labels included
    grid_paths: dict[str, Path]
    json_path: Path
    arrays_path: Path
    seconds: float
    kind: str = ""
    layer: str = ""
    input_labels: list[int] = field(default_factory=list)


def _check(config: EditConfig, inverter, operations: list[Operation]) -> None:
    where = f"edit: inverter {inverter.path.parent}"
    if not operations:
        raise InvkerasError("edit: give at least one operation: --shift CLASS:DELTA, --scale S, --noise SIGMA or "
                            "--interpolate")
    inverter.require("sample", "edit")
    if not inverter.conditional:
        raise InvkerasError(f"{where} is unconditional (layer 'none'): there is no h to edit")
    shape = inverter.h_shape or ()
    shifts = [op for op in operations if op.kind == "shift"]
    if shifts and len(shape) != 1:
        raise InvkerasError(f"edit --shift: layer '{inverter.layer}' gives a spatial h of shape {tuple(shape)}, and "
                            "--shift adds to one unit of a vector h (logits, fc3); use --scale, --noise or "
                            "--interpolate here, or an inverter of a vector layer")
    for op in shifts:
        if not 0 <= op.unit < shape[0]:
            raise InvkerasError(f"edit --shift {op.unit}:{op.amount:g}: class {op.unit} is out of range; layer "
                                f"'{inverter.layer}' has {shape[0]} units (0..{shape[0] - 1})")
    if config.interpolate and config.num_inputs < 2:
        raise InvkerasError("edit --interpolate: needs at least 2 inputs (--num-inputs)")


def edit_inverter(config: EditConfig, *, inverter=None) -> Edits:
    """Edit the h of N held-out inputs, decode every edit with the inverter, label the results."""
    from invkeras.analyses.common import ClassifierProbe, classifier_of
    from invkeras.analyses.samples import _load
    from invkeras.inverters.data import held_out_inputs
    from invkeras.reports.grids import save_grid

    started = time.time()
    inverter = _load(inverter if inverter is not None else config.inverter)
    operations = config.operations()
    _check(config, inverter, operations)
    probe = ClassifierProbe(classifier_of(inverter, "edit"), inverter.layer, config.batch_size)
    out_dir = Path(config.out) if config.out else inverter.path.parent / EDITS_DIR
    inputs = held_out_inputs(inverter.config, config.split, config.num_inputs)
    x, h = inputs["x"], inputs["h"].astype(np.float32)
    n, k = len(x), config.num_samples
    input_labels = probe.labels(x[:, None])
    if input_labels is None:
        raise InvkerasError(f"edit: the classifier of inverter {inverter.path.parent} does not end in a vector of "
                            "class scores, so its labels cannot be read")
    input_labels = input_labels[:, 0]
    # h is the classifier's output: its argmax is the class an edited h asks for.
    h_is_output = inverter.layer == probe.final and len(inverter.h_shape or ()) == 1

    def draw(h_edit):
        return inverter.sample(h_edit, k, seed=config.seed, batch_size=config.batch_size, **config.sample_options())

    strengths = [float(t) for t in config.strengths]
    # t = 0 is h itself for every operation: drawn once, when shown or needed to count moves.
    needs_reference = 0.0 in strengths or any(op.kind in ("shift", "interpolate") for op in operations)
    reference = draw(h) if needs_reference else None
    reference_labels = probe.labels(reference) if needs_reference else None
    noise = np.random.default_rng([config.seed, n]).standard_normal(h.shape).astype(np.float32)
    arrays = {"x": x, "h": h, "strengths": np.asarray(strengths, np.float32)}
    entries, grid_paths = [], {}
    recorded = {**config.model_dump(), "inverter": str(inverter.path)}
    provenance = dict(config=recorded, seed=config.seed, data=inverter.meta.get("data"), layer=inverter.layer,
                      inverter_kind=inverter.kind)
    for op in operations:
        edited_h = np.stack([op.apply(h, t, noise=noise) for t in strengths], axis=1)  # [N, S, ...]
        samples = np.stack([reference if t == 0 else draw(edited_h[:, s]) for s, t in enumerate(strengths)],
                           axis=1)  # [N, S, K, H, W, C]
        labels = probe.labels(samples.reshape(n, -1, *samples.shape[3:])).reshape(n, len(strengths), k)
        target = None
        if op.kind == "shift":
            target = np.full(n, op.unit)
        elif op.kind == "interpolate":
            target = np.roll(input_labels, -1)
        per_strength = []
        for s, t in enumerate(strengths):
            row = {"strength": t, "edit": op.describe(t),
                   "share_input_label": float((labels[:, s] == input_labels[:, None]).mean())}
            if target is not None:
                hit, before = labels[:, s] == target[:, None], reference_labels == target[:, None]
                key = "target_class" if op.kind == "shift" else "partner_label"
                row[f"share_{key}"] = float(hit.mean())
                row["moved_towards"] = int((hit & ~before).sum())
                row["moved_away"] = int((~hit & before).sum())
            if h_is_output:
                asked = np.argmax(edited_h[:, s].reshape(n, -1), axis=1)
                row["share_argmax_h"] = float((labels[:, s] == asked[:, None]).mean())
            per_strength.append(row)
        grid = out_dir / f"edit_{op.name}.png"
        rows = []
        for i in range(n):
            for j in range(k):
                row = [x[i], *[samples[i, s, j] for s in range(len(strengths))]]
                rows.append(row + [x[(i + 1) % n]] if op.kind == "interpolate" else row)
        grid_paths[op.name] = save_grid(grid, rows, separator_after=1)
        columns = ["input", *[f"t={t:g}: {op.describe(t)}" for t in strengths]]
        entry = {"name": op.name, "operation": op.kind, "unit": op.unit, "amount": op.amount, "grid": grid.name,
                 "per_strength": per_strength, "labels": labels.tolist()}
        if target is not None:
            entry["target_labels"] = target.tolist()
        entries.append(entry)
        arrays[f"{op.name}__h"] = edited_h
        arrays[f"{op.name}__samples"] = samples
        artifacts.write_metadata(grid, kind="edit-grid", results={"operation": op.name, "per_strength": per_strength},
                                 columns=columns + (["partner input"] if op.kind == "interpolate" else []),
                                 rows=f"{n} inputs x {k} samples", **provenance)

    seconds = time.time() - started
    arrays_path = artifacts.save_npz_atomic(out_dir / EDITS_ARRAYS, **arrays)
    artifacts.write_metadata(arrays_path, kind="edit-arrays", results={"seconds": seconds}, **provenance)
    payload = {"inverter": str(inverter.path), "kind": inverter.kind, "layer": inverter.layer, "split": config.split,
               "n_inputs": n, "samples_per_input": k, "strengths": strengths, "h_is_classifier_output": h_is_output,
               "h_std": float(h.std()), "input_labels": input_labels.tolist(),
               "true_labels": inputs["y"].tolist() if "y" in inputs else None,
               "reference_labels": None if reference_labels is None else reference_labels.tolist(), "operations": entries, "seconds": seconds}
    json_path = artifacts.write_json_atomic(out_dir / EDITS_JSON, payload)
    artifacts.write_metadata(json_path, kind="edits", results={"seconds": seconds,
                                                               "grids": [p.name for p in grid_paths.values()]},
                             **provenance)
    return Edits(entries, grid_paths, json_path, arrays_path, seconds, inverter.kind, inverter.layer,
                 input_labels.tolist())
