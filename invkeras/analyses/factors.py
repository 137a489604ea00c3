"""Editing and scoring factor INNs (Esser, Rombach & Ommer 2020): what each block of z~ = T(r) holds.

An edit works in z~: image A's blocks with block F taken from image B (a *swap*), or moved from
A's value towards B's (a *walk*, z~_F(t) = (1 - t) z~_A,F + t z~_B,F, so t = 0 is A's own
reconstruction and t = 1 the swap). It is read back to an image through the representation:
r = T^-1(z~), then D(t^-1(v | h)) for a cinn inverter's r = (h, v), or the nearest stored
example for stored features.

`edit-factors` draws the grids. `score-factors` measures, per factor model (one per layer):

  * the dimensionality estimate of train-factors (`invkeras.factors.dimensions`), as a table and
    a plot of stacked bars;
  * on procedural images, whose five factors are known: every read-back image is matched to its
    nearest exact rendering of the 6,912 (`invkeras.factors.matching`), which gives its factors.
    - the **disentanglement matrix** M[k, f], for block k of the model and true factor f: over n
      pairs (A, B) drawn independently and uniformly, swap block k from B into A, read the factor
      f of the decoded image, f_swap, and
            M[k, f] = I(f_swap ; f_B) / H(f),        H(f) = log |f|,
      where I is the mutual information of the empirical joint distribution of (f_swap, f_B) over
      the n swaps (plug-in, in nats). f_B is uniform and independent of A, so the entropy is exact
      and M is in [0, 1]: 1 when the swap always carries B's value of f (block k holds f), 0 when
      the decoded f does not depend on B's (block k holds nothing of f). The plug-in estimate of a
      zero MI is biased up by about (|f| - 1)^2 / (2 n) nats (Miller-Madow), reported as
      `mi_bias_nats`; the factors themselves are read exactly, not estimated;
    - **edit accuracy** for factor F: over n pairs (A, B) that differ in every factor, the share
      of swaps of F's block whose decoded image has B's value of F and A's value of each of the
      other four factors; beside it the shares that got F right (`target`) and that kept the
      others (`others_kept`);
    - **reconstruction accuracy**: the share of unedited A (z~_A read back) whose five factors
      are all A's, the ceiling every edit works under (the autoencoder and the cinn's own error);
  * for label pairs: over n pairs with different classes, the share of swaps of the `class`
    block whose read-back image takes B's class (the classifier's label for a cinn; the stored
    label for features), the share of swaps of the residual (the style) that keep A's class, and
    the share of unedited reconstructions that keep A's class.

Outputs (each with its .meta.json):
  edit-factors, in <factors dir>/edits/ unless `out` says otherwise:
    swap_<factor>.png   rows A | B | A read back | A with B's <factor> block
    walk_<factor>.png   rows A | t = 0 ... 1 | B
    edits.json, edits.npz   the read-back factors or labels, and the images
  score-factors:
    scores.json, scores.csv   one row per layer (and the matrices in the JSON)
    dimensions.png, disentanglement_<label>.png
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError

EDITS_DIR = "edits"
EDITS_JSON = "edits.json"
EDITS_ARRAYS = "edits.npz"
SCORES_JSON = "scores.json"
DIMENSIONS_PLOT = "dimensions.png"
DEFAULT_WALK = (0.0, 0.25, 0.5, 0.75, 1.0)
# Random streams of the analyses (the training streams are 11..15).
EDIT_STREAM, MATRIX_STREAM, ACCURACY_STREAM, LABEL_STREAM = 21, 22, 23, 24


class EditFactorsConfig(BaseModel):
    """Settings of `invkeras edit-factors` (and of a recipe's `edit-factors` step)."""

    model_config = ConfigDict(extra="forbid")

    factors: str = Field(description="factor INN directory or factor_inn.keras (train-factors)")
    factor: list[str] = Field(default_factory=list, description="the blocks to edit (default: every factor's)")
    num_pairs: int = Field(8, gt=0, description="pairs (A, B): rows of the grids")
    walk: list[float] = Field(default_factory=lambda: list(DEFAULT_WALK), min_length=2,
                              description="walk positions t: 0 is A's block, 1 is B's")
    seed: int = Field(0, description="same seed, same pairs")
    out: Optional[str] = Field(None, description="output directory (default <factors dir>/edits)")

    @field_validator("factor", mode="before")
    @classmethod
    def _as_list(cls, value):
        return [value] if isinstance(value, str) else value


class ScoreFactorsConfig(BaseModel):
    """Settings of `invkeras score-factors` (and of a recipe's `score-factors` step)."""

    model_config = ConfigDict(extra="forbid")

    factors: list[str] = Field(min_length=1, description="factor INN directories, one per layer")
    labels: Optional[list[str]] = Field(None, description="row names instead of the layers, one per model")
    num_pairs: int = Field(2000, ge=10, description="swaps per block (and per edited factor)")
    seed: int = Field(0, description="same seed, same pairs")
    out: Optional[str] = Field(None, description="output directory (default: the one model's directory; required "
                                                 "with several)")


# --- reading back ---------------------------------------------------------------------


def read_back(model, z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(images, labels or None, procedural factors or None) of blocks z~ [N, dim]."""
    from invkeras.data.procedural import IMAGE_SHAPE
    from invkeras.factors.matching import nearest_factors

    images, labels = model.representation.to_images(model.decode(z))
    factors = nearest_factors(images) if tuple(images.shape[1:]) == IMAGE_SHAPE else None
    return images, labels, factors


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """I(x; y) in nats of the empirical joint distribution of two integer arrays (plug-in)."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    joint = np.zeros((int(x.max()) + 1, int(y.max()) + 1))
    np.add.at(joint, (x, y), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    seen = joint > 0
    return float(np.sum(joint[seen] * np.log(joint[seen] / outer[seen])))


def _procedural(table) -> bool:
    return table.factors is not None


def _different_label_pairs(labels: np.ndarray, n: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of rows whose labels differ (drawn uniformly, again where they coincide)."""
    rng = np.random.default_rng([seed, stream])
    if len(np.unique(labels)) < 2:
        raise InvkerasError("factor scores: every example has the same label, so no swap can change it")
    a, b = rng.integers(0, len(labels), n), rng.integers(0, len(labels), n)
    same = labels[a] == labels[b]
    while same.any():
        b[same] = rng.integers(0, len(labels), int(same.sum()))
        same = labels[a] == labels[b]
    return a, b


def _edit_pairs(model, table, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs that make edits visible: differing in every factor (procedural), else in label."""
    from invkeras.factors.pairs import all_different_pairs, independent_pairs

    if _procedural(table):
        return all_different_pairs(table.factors, n, seed, EDIT_STREAM)
    labels = model.representation.labels_of(table)
    if labels is not None and len(np.unique(labels)) > 1:
        return _different_label_pairs(labels, n, seed, EDIT_STREAM)
    return independent_pairs(len(table), n, seed, EDIT_STREAM)


# --- edit-factors -----------------------------------------------------------------------


@dataclass
class FactorEdits:
    grids: dict[str, list[Path]]
    json_path: Path
    arrays_path: Path
    summary: dict[str, dict]
    seconds: float


def edit_factors(config: EditFactorsConfig, *, model=None) -> FactorEdits:
    """Swap and walk grids for each chosen factor's block, with what the edited images read back as."""
    from invkeras.factors.network import RESIDUAL
    from invkeras.factors.training import load_factor_model
    from invkeras.reports.grids import save_grid

    started = time.time()
    model = model if model is not None else load_factor_model(config.factors)
    names = config.factor or [name for name in model.block_names if name != RESIDUAL]
    for name in names:
        model.block_slice(name)  # one line for an unknown block
    table = model.representation.scoring_table()
    a, b = _edit_pairs(model, table, config.num_pairs, config.seed)
    z_a, z_b = model.encode(table.r[a]), model.encode(table.r[b])
    recon, recon_labels, recon_factors = read_back(model, z_a)
    out_dir = Path(config.out) if config.out else model.path.parent / EDITS_DIR
    walk = [float(t) for t in config.walk]
    arrays = {"a": a, "b": b, "x_a": table.x[a], "x_b": table.x[b], "reconstruction": recon,
              "walk": np.asarray(walk, np.float32)}
    provenance = dict(config={**config.model_dump(), "factors": str(model.path)}, seed=config.seed,
                      data=model.meta.get("data"), layer=model.layer, pairs=model.pairs)
    grids, summary, entries = {}, {}, []
    for name in names:
        part = model.block_slice(name)
        steps = []
        for t in walk:
            z = np.array(z_a, copy=True)
            z[:, part] = (1.0 - t) * z_a[:, part] + t * z_b[:, part]
            steps.append(read_back(model, z))
        swap = read_back(model, model.swap(z_a, z_b, name))
        swap_path = save_grid(out_dir / f"swap_{name}.png",
                              [[table.x[a[i]], table.x[b[i]], recon[i], swap[0][i]] for i in range(len(a))],
                              separator_after=2)
        walk_path = save_grid(out_dir / f"walk_{name}.png",
                              [[table.x[a[i]], *[s[0][i] for s in steps], table.x[b[i]]] for i in range(len(a))],
                              separator_after=1)
        grids[name] = [swap_path, walk_path]
        entry = {"factor": name, "swap_grid": swap_path.name, "walk_grid": walk_path.name}
        if swap[2] is not None and _procedural(table):
            entry.update(_swap_readout(table.factors[a], table.factors[b], swap[2], name))
            entry["walk_factors"] = [s[2].tolist() for s in steps]
        if swap[1] is not None:
            entry["swap_labels"] = swap[1].tolist()
            entry["walk_labels"] = [s[1].tolist() for s in steps]
        summary[name] = {k: v for k, v in entry.items() if k.startswith("share")}
        entries.append(entry)
        arrays[f"{name}__swap"] = swap[0]
        arrays[f"{name}__walk"] = np.stack([s[0] for s in steps], axis=1)
        for path, columns in ((swap_path, ["A", "B", "A read back", f"A with B's {name} block"]),
                              (walk_path, ["A", *[f"t={t:g}" for t in walk], "B"])):
            artifacts.write_metadata(path, kind="factor-edit-grid", columns=columns, rows=f"{len(a)} pairs (A, B)",
                                     results={"factor": name, **summary[name]}, **provenance)
    seconds = time.time() - started
    arrays_path = artifacts.save_npz_atomic(out_dir / EDITS_ARRAYS, **arrays)
    artifacts.write_metadata(arrays_path, kind="factor-edit-arrays", results={"seconds": seconds}, **provenance)
    payload = {"factors_model": str(model.path), "layer": model.layer, "pairs": model.pairs, "num_pairs": len(a),
               "walk": walk, "readout": model.representation.readout, "edits": entries,
               "factors_a": None if not _procedural(table) else table.factors[a].tolist(),
               "factors_b": None if not _procedural(table) else table.factors[b].tolist(),
               "reconstruction_factors": None if recon_factors is None else recon_factors.tolist(),
               "reconstruction_labels": None if recon_labels is None else recon_labels.tolist(), "seconds": seconds}
    json_path = artifacts.write_json_atomic(out_dir / EDITS_JSON, payload)
    artifacts.write_metadata(json_path, kind="factor-edits", results={"seconds": seconds, "summary": summary},
                             **provenance)
    return FactorEdits(grids, json_path, arrays_path, summary, seconds)


def _swap_readout(factors_a: np.ndarray, factors_b: np.ndarray, decoded: np.ndarray, name: str) -> dict:
    """Edit accuracy of swaps of factor `name`'s block (procedural factors read back exactly)."""
    from invkeras.data.procedural import FACTOR_NAMES

    result = {"factors_swap": decoded.tolist()}
    if name not in FACTOR_NAMES:
        return result
    f = FACTOR_NAMES.index(name)
    others = [g for g in range(len(FACTOR_NAMES)) if g != f]
    target = decoded[:, f] == factors_b[:, f]
    kept = np.all(decoded[:, others] == factors_a[:, others], axis=1)
    return {**result, "share_edit_accuracy": float(np.mean(target & kept)), "share_target": float(np.mean(target)),
            "share_others_kept": float(np.mean(kept))}


# --- score-factors ------------------------------------------------------------------------


def score_model(model, num_pairs: int, seed: int, *, advance=lambda: None) -> dict:
    """Every score of one factor model (see the module docstring), as a JSON-able dict; `advance()`
    is called after each batch of swaps read back (a progress bar's tick)."""
    from invkeras.data.procedural import FACTOR_NAMES, FACTOR_SIZES
    from invkeras.factors.network import RESIDUAL
    from invkeras.factors.pairs import all_different_pairs, independent_pairs

    started = time.time()
    table = model.representation.scoring_table()
    dims = model.meta.get("dimensions") or {}
    result = {"layer": model.layer, "pairs": model.pairs, "shuffled": bool(model.meta.get("shuffled")),
              "factors_model": str(model.path), "readout": model.representation.readout, "dim": model.inn.dim,
              "blocks": [{"name": n, "size": s} for n, s in zip(model.block_names, model.inn.block_sizes)],
              "dimension_scores": dict(zip(dims.get("names", []), dims.get("scores", []))) or None,
              "dimension_method": dims.get("method"), "num_pairs": num_pairs,
              "validation_pair_nll_nats_per_dim": ((model.meta.get("results") or {}).get("validation") or {}).get(
                  "pair_nll_nats_per_dim")}
    z = model.encode(table.r)
    if _procedural(table):
        a, b = independent_pairs(len(table), num_pairs, seed, MATRIX_STREAM)
        _, _, recon = read_back(model, z[a])
        advance()
        result["reconstruction_accuracy"] = float(np.mean(np.all(recon == table.factors[a], axis=1)))
        matrix = []
        for name in model.block_names:
            _, _, decoded = read_back(model, model.swap(z[a], z[b], name))
            advance()
            matrix.append([mutual_information(decoded[:, f], table.factors[b, f]) / math.log(FACTOR_SIZES[f])
                           for f in range(len(FACTOR_NAMES))])
        result["disentanglement"] = {"blocks": model.block_names, "factors": list(FACTOR_NAMES), "matrix": matrix,
                                     "mi_bias_nats": {n: (s - 1) ** 2 / (2 * num_pairs)
                                                      for n, s in zip(FACTOR_NAMES, FACTOR_SIZES)}}
        a, b = all_different_pairs(table.factors, num_pairs, seed, ACCURACY_STREAM)
        accuracy = {}
        for name in model.block_names:
            if name in FACTOR_NAMES:
                _, _, decoded = read_back(model, model.swap(z[a], z[b], name))
                advance()
                scores = _swap_readout(table.factors[a], table.factors[b], decoded, name)
                accuracy[name] = {k.removeprefix("share_"): v for k, v in scores.items() if k.startswith("share")}
        result["edit_accuracy"] = accuracy
    labels = model.representation.labels_of(table)
    if "class" in model.block_names and labels is not None:
        a, b = _different_label_pairs(labels, num_pairs, seed, LABEL_STREAM)
        _, recon_labels, _ = read_back(model, z[a])
        _, class_labels, _ = read_back(model, model.swap(z[a], z[b], "class"))
        _, style_labels, _ = read_back(model, model.swap(z[a], z[b], RESIDUAL))
        if recon_labels is not None:
            result["label_swaps"] = {"class_swap_takes_b_label": float(np.mean(class_labels == labels[b])),
                                     "class_swap_keeps_a_label": float(np.mean(class_labels == labels[a])),
                                     "residual_swap_keeps_a_label": float(np.mean(style_labels == labels[a])),
                                     "reconstruction_keeps_a_label": float(np.mean(recon_labels == labels[a])),
                                     "label_source": model.representation.label_source}
    result["seconds"] = time.time() - started
    return result


@dataclass
class FactorScores:
    rows: list[dict]
    json_path: Path
    csv_path: Path
    plots: list[Path]
    seconds: float


def _row_label(model, label: str | None, taken: set) -> str:
    label = label or model.layer + ("-shuffled" if model.meta.get("shuffled") else "")
    if label in taken:
        label = f"{label}-{len(taken)}"
    return label


def flat_row(row: dict) -> dict:
    """One CSV/table row: the layer's block sizes, accuracies, label shares and the matrix diagonal."""
    flat = {"label": row["label"], "layer": row["layer"], "pairs": row["pairs"], "shuffled": row["shuffled"],
            "dim": row["dim"], "blocks": " ".join(f"{b['name']}:{b['size']}" for b in row["blocks"]),
            "reconstruction_accuracy": row.get("reconstruction_accuracy")}
    for name, scores in (row.get("edit_accuracy") or {}).items():
        flat[f"edit_accuracy_{name}"] = scores["edit_accuracy"]
    matrix = row.get("disentanglement")
    if matrix:
        for k, block in enumerate(matrix["blocks"]):
            if block in matrix["factors"]:
                flat[f"mi_{block}"] = matrix["matrix"][k][matrix["factors"].index(block)]
    flat.update(row.get("label_swaps") or {})
    return flat


def score_factors(config: ScoreFactorsConfig, *, models=None, progress: bool = True) -> FactorScores:
    """Score every given factor model; write scores.json, scores.csv and the plots."""
    from rich.console import Console

    from invkeras.progress import progress_bar
    from invkeras.analyses.mi import rows_csv
    from invkeras.factors.training import load_factor_model
    from invkeras.reports.plots import plot_disentanglement, plot_factor_dimensions

    started = time.time()
    if config.labels is not None and len(config.labels) != len(config.factors):
        raise InvkerasError(f"score-factors: {len(config.labels)} label(s) for {len(config.factors)} factor models")
    if config.out is None and len(config.factors) > 1:
        raise InvkerasError("score-factors: give --out when scoring several factor models")
    models = models or [load_factor_model(path) for path in config.factors]
    out_dir = Path(config.out) if config.out else models[0].path.parent
    rows, plots, taken = [], [], set()
    with progress_bar(Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("score-factors", total=sum(2 * len(m.block_names) + 1 for m in models))
        for i, model in enumerate(models):
            label = _row_label(model, config.labels[i] if config.labels else None, taken)
            taken.add(label)
            bar.update(task, description=f"score-factors {label}")
            rows.append({"label": label, **score_model(model, config.num_pairs, config.seed,
                                                        advance=lambda: bar.advance(task))})
    provenance = dict(config=config, seed=config.seed, data={"factors_models": [str(m.path) for m in models]})
    plots.append(plot_factor_dimensions([{"label": r["label"], "dim": r["dim"], "blocks": r["blocks"]} for r in rows],
                                        out_dir / DIMENSIONS_PLOT))
    for row in rows:
        matrix = row.get("disentanglement")
        if matrix:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", row["label"])
            plots.append(plot_disentanglement(matrix["matrix"], out_dir / f"disentanglement_{name}.png",
                                              blocks=matrix["blocks"], factors=matrix["factors"],
                                              title=f"{row['label']}: I(f of swap; f of B) / H(f)"))
    seconds = time.time() - started
    json_path = artifacts.write_json_atomic(out_dir / SCORES_JSON, {"rows": rows, "seconds": seconds,
                                                                     "num_pairs": config.num_pairs})
    csv_path = artifacts.write_text_atomic(out_dir / "scores.csv", rows_csv([flat_row(r) for r in rows]))
    for path in (csv_path, json_path):  # the JSON's metadata last: it marks the scores complete
        artifacts.write_metadata(path, kind="factor-scores", results={"rows": [flat_row(r) for r in rows],
                                                                      "seconds": seconds}, **provenance)
    return FactorScores(rows, json_path, csv_path, plots, seconds)
