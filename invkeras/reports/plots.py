"""Figures for reports, after Nash et al. (2019): NCE by layer (Fig. 5a), NCE over training (Fig. 5b), accuracy.

Every function takes plain Python data (lists of dicts), so it can be used and tested
without training anything, and writes one PNG atomically with a `.meta.json` beside it
(kind "plot") recording the numbers that were drawn.

Matplotlib is used through `Figure` and the Agg canvas directly, never `pyplot`, so no
global state or display backend is touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from invkeras import artifacts

PLOT_KIND = "plot"
# The paper's layers in network order; anything else follows in order of appearance.
LAYER_ORDER = ("conv1", "conv2", "fc3", "logits", "none")
REGIME_STYLES = {"normal": "-", "overfitted": "--"}
_DPI = 110


# --- reading rows -------------------------------------------------------------------


def _first(row: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = row.get(key)
        if value is not None:
            return value
    return default


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _nce(row: Mapping[str, Any]) -> float:
    """NCE in nats: an explicit 'NCE nats'/'nce', else minus the held-out NLL."""
    value = _first(row, "NCE nats", "nce")
    if value is not None:
        return _number(value)
    nll = _first(row, "H*(x|h) nats", "nll_nats", "nll")
    return -_number(nll) if nll is not None else math.nan


def _se(row: Mapping[str, Any]) -> float:
    return _number(_first(row, "se nats", "se", "se_nats", default=math.nan))


def _group(row: Mapping[str, Any]) -> str:
    """The line a row belongs to: an explicit 'group', else 'dataset / arch' from whatever is given."""
    if row.get("group") is not None:
        return str(row["group"])
    parts = [str(row[k]) for k in ("dataset", "arch") if row.get(k) is not None]
    return " / ".join(parts)


def order_layers(layers: Iterable[str]) -> list[str]:
    """Unique layer names, the paper's layers first in network order, then the rest as they came."""
    seen: list[str] = []
    for layer in layers:
        if layer not in seen:
            seen.append(layer)
    known = [layer for layer in LAYER_ORDER if layer in seen]
    return known + [layer for layer in seen if layer not in LAYER_ORDER]


def _layer_label(layer: str) -> str:
    return "none (p(x))" if layer == "none" else layer


# --- writing ------------------------------------------------------------------------


def _new_figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path, *, plot: str, data: Any, options: dict | None = None) -> Path:
    """Write the PNG atomically, then its metadata (last, so a complete pair means a finished plot)."""
    path = Path(path)
    figure.tight_layout()
    with artifacts.atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    artifacts.write_metadata(path, kind=PLOT_KIND, config={"plot": plot, **(options or {})}, data=data)
    return path


def _check_rows(rows: Sequence[Mapping[str, Any]], what: str) -> list[Mapping[str, Any]]:
    rows = [row for row in rows if isinstance(row, Mapping)]
    if not rows:
        raise ValueError(f"{what}: no rows to plot")
    return rows


# --- plots --------------------------------------------------------------------------


def plot_nce_by_layer(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    reference: str | None = None,
    *,
    title: str | None = None,
) -> Path:
    """NCE per layer with ±1 SE error bars; one line per group (dataset/arch) if there are several.

    Each row needs "layer" and the NCE ("NCE nats" or "nce", else "H*(x|h) nats" negated) with
    its SE ("se nats" or "se"); "group" (or "dataset"/"arch") separates lines. With `reference`,
    each group's NCE is drawn relative to its reference layer's, as in the paper's Fig. 5a: rows
    carrying "NCE - NCE(ref)" and "se (paired)" for that same reference ("reference" key equal
    to it) use those paired values; otherwise the difference is taken here with an unpaired SE.
    Groups without the reference layer are left out of a relative plot.

    Rows of layers with several training seeds also carry the SE that adds the spread between
    the seeds ("se seeds+images nats", and "se (paired, seeds+images)" relative to the
    reference): it is drawn as a second, wider bar behind the test-image one, so both intervals
    show. Rows of one seed draw as ever.
    """
    rows = _check_rows(rows, "plot_nce_by_layer")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_group(row), []).append(row)
    layers = order_layers(str(row["layer"]) for row in rows)
    position = {layer: i for i, layer in enumerate(layers)}

    figure = _new_figure()
    axes = figure.add_subplot(1, 1, 1)
    drawn = []
    width = 0.25 if len(groups) > 1 else 0.0
    for g, (name, members) in enumerate(groups.items()):
        points = []
        by_layer = {str(r["layer"]): r for r in members}
        ref_row = by_layer.get(reference) if reference else None
        if reference and ref_row is None:
            continue
        for layer in order_layers(by_layer):
            row = by_layer[layer]
            y, se = _nce(row), _se(row)
            seeded = _number(row.get("se seeds+images nats"))
            if reference:
                paired = row.get("NCE - NCE(ref)")
                if paired is not None and row.get("reference") == reference:
                    y, se = _number(paired), _number(row.get("se (paired)"))
                    seeded = _number(row.get("se (paired, seeds+images)"))
                else:
                    y = y - _nce(ref_row)
                    se = 0.0 if layer == reference else math.hypot(se, _se(ref_row))
                    seeded = math.nan
            points.append((position[layer], y, se, layer, seeded))
        if not points:
            continue
        offset = (g - (len(groups) - 1) / 2) * width / max(1, len(groups) - 1) if width else 0.0
        xs = [p[0] + offset for p in points]
        ys = [p[1] for p in points]
        errors = [0.0 if math.isnan(p[2]) else p[2] for p in points]
        line = axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, label=name or None)
        seeded = [(x, p) for x, p in zip(xs, points) if not math.isnan(p[4])]
        if seeded:
            colour = line.lines[0].get_color()
            axes.errorbar([x for x, _ in seeded], [p[1] for _, p in seeded], yerr=[p[4] for _, p in seeded],
                          fmt="none", ecolor=colour, alpha=0.35, elinewidth=6, capsize=0,
                          label=(f"{name}: " if name else "") + "± SE with the seeds' spread")
        drawn.append({"group": name, "points": [{"layer": p[3], "y": p[1], "se": p[2],
                                                 **({} if math.isnan(p[4]) else {"se_seeds": p[4]})}
                                                for p in points]})
    if not drawn:
        raise ValueError(f"plot_nce_by_layer: no group has the reference layer '{reference}'")

    axes.set_xticks(range(len(layers)))
    axes.set_xticklabels([_layer_label(layer) for layer in layers])
    axes.set_xlabel("layer")
    if reference:
        axes.axhline(0.0, color="grey", linewidth=0.8)
        axes.set_ylabel(f"NCE - NCE({reference}) (nats per image)")
    else:
        axes.set_ylabel("NCE = -H*(x|h) (nats per image)")
    axes.set_title(title or ("Information kept by each layer" + (f", relative to {reference}" if reference else "")))
    axes.grid(True, alpha=0.3)
    with_seeds = any("se_seeds" in point for d in drawn for point in d["points"])
    if (any(d["group"] for d in drawn) and len(drawn) > 1) or with_seeds:
        axes.legend()
    return _save(figure, path, plot="nce_by_layer", data=drawn, options={"reference": reference})


def _step_label(step: float) -> str:
    step = int(step)
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if step >= size and step % size == 0:
            return f"{step // size}{suffix}"
    return str(step)


def plot_nce_over_training(
    points: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """NCE against classifier training steps, one line per (layer, regime), as in the paper's Fig. 5b.

    Each point needs "step", "layer", the NCE ("nce"/"NCE nats", else an NLL negated) and
    optionally "se" and "regime" ("normal" solid, "overfitted" dashed). The x axis is
    logarithmic; step 0 (the untrained network) sits on a short linear stretch at the left
    (a symmetric-log axis whose linear part ends at the first non-zero step).
    """
    points = _check_rows(points, "plot_nce_over_training")
    lines: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for point in points:
        key = (str(point["layer"]), str(point.get("regime") or "normal"))
        lines.setdefault(key, []).append((_number(point["step"]), _nce(point), _se(point)))
    layers = order_layers(layer for layer, _ in lines)
    colours = {layer: f"C{i % 10}" for i, layer in enumerate(layers)}

    figure = _new_figure()
    axes = figure.add_subplot(1, 1, 1)
    drawn = []
    for (layer, regime), values in sorted(lines.items(), key=lambda kv: (layers.index(kv[0][0]), kv[0][1])):
        values.sort()
        xs, ys = [v[0] for v in values], [v[1] for v in values]
        errors = [0.0 if math.isnan(v[2]) else v[2] for v in values]
        axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color=colours[layer],
                      linestyle=REGIME_STYLES.get(regime, ":"), label=f"{_layer_label(layer)} ({regime})")
        drawn.append({"layer": layer, "regime": regime, "points": [{"step": x, "nce": y, "se": s} for x, y, s in values]})

    steps = sorted({v[0] for values in lines.values() for v in values})
    positive = [s for s in steps if s > 0]
    if positive:
        axes.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    axes.set_xticks(steps)
    axes.set_xticklabels([_step_label(s) for s in steps])
    axes.set_xlabel("classifier training steps (log scale; 0 = untrained)")
    axes.set_ylabel("NCE = -H*(x|h) (nats per image)")
    axes.set_title(title or "Information in each layer over training")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path, plot="nce_over_training", data=drawn)


def plot_accuracy(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Test accuracy per classifier as a bar chart, each bar labelled with its value.

    Each row needs "accuracy" (or "test_accuracy") and a "label" (else "dataset / arch",
    plus "checkpoint" when given).
    """
    rows = _check_rows(rows, "plot_accuracy")
    labels, values = [], []
    for row in rows:
        label = row.get("label")
        if label is None:
            label = _group(row) or "classifier"
            if row.get("checkpoint") is not None:
                label += f" @ {row['checkpoint']}"
        labels.append(str(label))
        values.append(_number(_first(row, "accuracy", "test_accuracy")))

    figure = _new_figure(width=max(4.0, 1.1 * len(labels) + 2.0))
    axes = figure.add_subplot(1, 1, 1)
    bars = axes.bar(range(len(labels)), values, color=[f"C{i % 10}" for i in range(len(labels))])
    for bar, value in zip(bars, values):
        if not math.isnan(value):
            axes.annotate(f"{value:.4f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                          fontsize="small", xytext=(0, 2), textcoords="offset points")
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    axes.set_ylim(0.0, 1.08)
    axes.set_ylabel("test accuracy")
    axes.set_title(title or "Classifier test accuracy")
    axes.grid(True, axis="y", alpha=0.3)
    drawn = [{"label": label, "accuracy": value} for label, value in zip(labels, values)]
    return _save(figure, path, plot="accuracy", data=drawn)


def plot_factor_dimensions(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Dimensions per factor block of each layer's factor INN, as stacked horizontal bars.

    Each row needs "label" (the layer), "dim" and "blocks": a list of {"name", "size"} (the
    factors, then the residual), e.g. from the dimensionality estimate of `train-factors`.
    """
    rows = _check_rows(rows, "plot_factor_dimensions")
    names = list(dict.fromkeys(block["name"] for row in rows for block in row["blocks"]))
    colours = {name: ("lightgrey" if name == "residual" else f"C{i % 10}") for i, name in enumerate(names)}
    figure = _new_figure(width=7.5, height=1.6 + 0.45 * len(rows))
    axes = figure.add_subplot(1, 1, 1)
    # Each bar is its layer's share of dimensions, so a 20-d layer is as readable as a 272-d one.
    totals = [sum(int(block["size"]) for block in row["blocks"]) for row in rows]
    for y, (row, total) in enumerate(zip(rows, totals)):
        left = 0.0
        for block in row["blocks"]:
            share = int(block["size"]) / max(total, 1)
            axes.barh(y, share, left=left, color=colours[block["name"]], edgecolor="white", label=block["name"])
            if block["size"]:
                axes.annotate(str(int(block["size"])), (left + share / 2, y), ha="center", va="center",
                              fontsize="small")
            left += share
    axes.set_xlim(0, 1)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([f"{row['label']} ({total})" for row, total in zip(rows, totals)])
    axes.invert_yaxis()
    axes.set_xlabel("share of the representation's dimensions (each block labelled with its count)")
    axes.set_title(title or "Dimensions per semantic factor (estimate)")
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one legend entry per factor, not per bar
    axes.legend(unique.values(), unique.keys(), fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    drawn = [{"label": row["label"], "dim": row.get("dim"), "blocks": [dict(b) for b in row["blocks"]]} for row in rows]
    return _save(figure, path, plot="factor_dimensions", data=drawn)


def plot_disentanglement(
    matrix: Sequence[Sequence[float]],
    path: str | Path,
    *,
    blocks: Sequence[str],
    factors: Sequence[str],
    title: str | None = None,
) -> Path:
    """Heat map of a disentanglement matrix: rows the INN's blocks, columns the true factors,
    cells the normalised mutual information in [0, 1], each written in its cell."""
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    if values.shape != (len(blocks), len(factors)):
        raise ValueError(f"plot_disentanglement: matrix {values.shape} for {len(blocks)} blocks x {len(factors)} "
                         "factors")
    figure = _new_figure(width=1.2 + 0.9 * len(factors), height=1.0 + 0.55 * len(blocks))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(len(blocks)):
        for j in range(len(factors)):
            axes.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize="small",
                      color="black" if values[i, j] > 0.6 else "white")
    axes.set_xticks(range(len(factors)))
    axes.set_xticklabels(list(factors))
    axes.set_yticks(range(len(blocks)))
    axes.set_yticklabels([f"block {b}" for b in blocks])
    axes.set_xlabel("true factor")
    axes.set_title(title or "I(factor of swap; factor of donor) / H(factor)", fontsize="medium")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    return _save(figure, path, plot="disentanglement", data={"blocks": list(blocks), "factors": list(factors),
                                                             "matrix": values.tolist()})
