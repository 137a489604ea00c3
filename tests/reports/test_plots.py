"""The report's figures from plain rows: a PNG each, written atomically, with metadata of what was drawn."""

import json
import math

import pytest

from invkeras import artifacts
from invkeras.reports.plots import order_layers, plot_accuracy, plot_nce_by_layer, plot_nce_over_training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def drawn(path):
    assert path.read_bytes().startswith(PNG_MAGIC)
    meta = artifacts.read_metadata(path)
    assert meta["kind"] == "plot"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    return meta


def mi_rows(group, offset=0.0):
    # Rows as invkeras.analyses.mi writes them, NCE relative to conv1 with paired SEs.
    nll = {"conv1": 100.0, "conv2": 120.0, "fc3": 180.0, "logits": 240.0, "none": 300.0}
    rows = []
    for layer, value in nll.items():
        value += offset
        rows.append({"layer": layer, "H*(x|h) nats": value, "se nats": 2.0, "NCE nats": -value,
                     "NCE - NCE(ref)": 100.0 + offset - value, "se (paired)": 0.5, "group": group, "reference": "conv1"})
    return rows


def test_nce_by_layer_absolute_and_relative(tmp_path):
    rows = mi_rows("mnist / conv") + mi_rows("svhn / conv", offset=1000.0)
    meta = drawn(plot_nce_by_layer(rows, tmp_path / "absolute.png"))
    groups = {g["group"]: g["points"] for g in meta["data"]}
    assert set(groups) == {"mnist / conv", "svhn / conv"}
    assert [p["layer"] for p in groups["mnist / conv"]] == ["conv1", "conv2", "fc3", "logits", "none"]
    assert groups["mnist / conv"][2]["y"] == -180.0 and groups["mnist / conv"][2]["se"] == 2.0

    meta = drawn(plot_nce_by_layer(rows, tmp_path / "relative.png", reference="conv1"))
    assert meta["config"]["reference"] == "conv1"
    svhn = {p["layer"]: p for p in {g["group"]: g["points"] for g in meta["data"]}["svhn / conv"]}
    assert svhn["conv1"]["y"] == 0.0 and svhn["fc3"]["y"] == -80.0 and svhn["fc3"]["se"] == 0.5  # paired values


def test_nce_by_layer_computes_unpaired_differences(tmp_path):
    rows = [{"layer": "fc3", "nce": -50.0, "se": 3.0}, {"layer": "conv2", "nce": -20.0, "se": 4.0}]
    meta = drawn(plot_nce_by_layer(rows, tmp_path / "p.png", reference="conv2"))
    points = {p["layer"]: p for p in meta["data"][0]["points"]}
    assert [p["layer"] for p in meta["data"][0]["points"]] == ["conv2", "fc3"]
    assert points["fc3"]["y"] == -30.0 and points["fc3"]["se"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="reference layer 'conv1'"):
        plot_nce_by_layer(rows, tmp_path / "q.png", reference="conv1")
    with pytest.raises(ValueError, match="no rows"):
        plot_nce_by_layer([], tmp_path / "r.png")


def test_nce_over_training_places_step_zero(tmp_path):
    points = []
    for regime, shift in (("normal", 0.0), ("overfitted", 30.0)):
        for step, nll in ((0, 150.0), (100, 120.0), (1000, 110.0), (10000, 130.0), (100000, 140.0)):
            points.append({"step": step, "layer": "fc3", "regime": regime, "nce": -(nll + shift), "se": 1.0})
            points.append({"step": step, "layer": "conv1", "regime": regime, "NCE nats": -(nll - 80), "se": 1.0})
    path = tmp_path / "sub" / "training.png"
    meta = drawn(plot_nce_over_training(points, path))
    lines = {(d["layer"], d["regime"]): d["points"] for d in meta["data"]}
    assert set(lines) == {("conv1", "normal"), ("conv1", "overfitted"), ("fc3", "normal"), ("fc3", "overfitted")}
    assert [p["step"] for p in lines[("fc3", "overfitted")]] == [0, 100, 1000, 10000, 100000]
    assert lines[("fc3", "overfitted")][0]["nce"] == -180.0


def test_accuracy_bars(tmp_path):
    rows = [{"dataset": "affnist", "arch": "conv", "test_accuracy": 0.98},
            {"label": "fc", "accuracy": 0.91}, {"label": "broken", "accuracy": None}]
    meta = drawn(plot_accuracy(rows, tmp_path / "acc.png"))
    assert [d["label"] for d in meta["data"]] == ["affnist / conv", "fc", "broken"]
    assert meta["data"][0]["accuracy"] == 0.98 and math.isnan(meta["data"][2]["accuracy"])
    json.dumps(meta["config"])  # metadata is plain JSON


def test_layer_order():
    assert order_layers(["none", "fc3", "dense_7", "conv1", "fc3"]) == ["conv1", "fc3", "none", "dense_7"]


def test_factor_dimensions_draw_each_layer_as_shares_of_its_own_dimensions(tmp_path, monkeypatch):
    """A 20-d layer beside a 272-d one: each bar spans the whole axis, split in proportion to
    its blocks, and every block is labelled with its count."""
    from invkeras.reports import plots

    rows = [{"label": "fc3", "dim": 272, "blocks": [{"name": "shape", "size": 48}, {"name": "residual", "size": 224}]},
            {"label": "logits", "dim": 20, "blocks": [{"name": "shape", "size": 2}, {"name": "residual", "size": 18}]}]
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path, **kw: figures.append(figure) or save(figure, path, **kw))
    meta = drawn(plots.plot_factor_dimensions(rows, tmp_path / "dimensions.png"))
    assert meta["data"] == rows
    axes = figures[0].axes[0]
    widths = [[(p.get_x(), p.get_width()) for p in axes.patches if p.get_y() < y < p.get_y() + p.get_height()]
              for y in (0, 1)]
    assert [sum(w for _, w in row) for row in widths] == pytest.approx([1.0, 1.0])
    assert [w for _, w in widths[1]] == pytest.approx([0.1, 0.9])
    assert [t.get_text() for t in axes.get_yticklabels()] == ["fc3 (272)", "logits (20)"]
    assert sorted(t.get_text() for t in axes.texts) == ["18", "2", "224", "48"]
