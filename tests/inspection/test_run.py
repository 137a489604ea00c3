"""The inspect run end to end on small data: a report on every layer within the budget, a
rerun that skips what is done, an interrupted run that continues, and one-line refusals."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.inspection import InspectConfig, inspect_classifier


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> str:
    """600 procedural images as the user's own npz (carved 486 / 54 / 60)."""
    from invkeras.data import load_arrays

    x, y = load_arrays("procedural", "train", limit=600)
    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


def _model(workspace: Path) -> str:
    return str(workspace / "procedural" / "conv" / "classifier" / "model.keras")


def _config(tiny_classifier, small_images, out, **changes) -> InspectConfig:
    settings = dict(model=_model(tiny_classifier), dataset=small_images, layers="conv1,logits", kinds="mse",
                    budget="40s", out=str(out), eval_examples=32, grid_inputs=4, grid_samples=2, compare_images=16,
                    compare_samples=2)
    return InspectConfig(**{**settings, **changes})


def _console():
    from rich.console import Console

    return Console(width=120, record=True, force_terminal=False)


def test_inspect_writes_a_report_on_every_layer_within_its_budget(tiny_classifier, small_images, tmp_path):
    console = _console()
    started = time.monotonic()
    result = inspect_classifier(_config(tiny_classifier, small_images, tmp_path / "inspect"), console=console)
    assert time.monotonic() - started <= 40 * 1.1
    assert [layer.name for layer in result.layers] == ["conv1", "logits"] and result.kinds == ["mse"]
    assert result.spent <= 40 * 1.1 and result.steps["mse/conv1"] > 6 and result.steps["mse/logits"] > 6
    text = console.export_text()
    assert "Plan for a budget of 40s, 2 lanes side by side" in text and "calibrating mse" in text
    assert "lane 1: conv1" in text and "lane 2: logits" in text and "report:" in text
    assert "train mse conv1" in (result.out_dir / "logs" / "lane-1.log").read_text()
    html = result.report_html.read_text()
    assert "The deepest layer inverted, logits" in html and "Layer conv1" in html and "Layer logits" in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(not s.startswith("data:") and (result.out_dir / s).is_file() for s in sources)
    assert "invkeras sample --inverter" in html and "(seed 0)" in html  # every figure's command and seed
    markdown = result.report_markdown.read_text()
    assert len(re.findall(r"^## Layer ", markdown, re.M)) == 2 and "![" in markdown
    assert 0 <= result.accuracy <= 1 and f"{result.accuracy:.1%}" in result.reading
    for layer in ("conv1", "logits"):
        assert (result.out_dir / "comparisons" / layer / "compare.json").is_file()
        assert (result.out_dir / "classifier-features" / layer / "test" / "manifest.json").is_file()


def test_an_interrupted_run_continues_and_a_finished_one_is_not_redone(tiny_classifier, small_images, tmp_path,
                                                                       monkeypatch):
    from invkeras.inspection import lanes

    config = _config(tiny_classifier, small_images, tmp_path / "inspect", layers="fc3,logits", budget="60s")
    evaluate = lanes.evaluate_layer

    def interrupted_after_the_first_layer(workspace, layer, kinds):
        evaluate(workspace, layer, kinds)
        raise KeyboardInterrupt

    monkeypatch.setattr(lanes, "available_cores", lambda: 1)  # one lane, in this process
    monkeypatch.setattr(lanes, "evaluate_layer", interrupted_after_the_first_layer)
    with pytest.raises(KeyboardInterrupt):
        inspect_classifier(config, console=_console())
    monkeypatch.setattr(lanes, "evaluate_layer", evaluate)
    state = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    first_fc3 = state["trained"]["mse/fc3"]["steps"]
    assert not state["complete"] and state["spent"] > 0 and "mse/logits" not in state["trained"]

    console = _console()
    resumed = inspect_classifier(config, console=console)
    assert resumed.spent >= state["spent"] and resumed.spent <= 60 * 1.1  # the interrupted run's time counts
    assert resumed.steps["mse/fc3"] == first_fc3 and "fc3: trained already" in console.export_text()

    started = time.monotonic()
    again = inspect_classifier(config, console=_console())
    assert time.monotonic() - started < 20 and again.steps == resumed.steps
    assert again.reading == resumed.reading


def test_a_model_that_is_not_a_classifier_is_refused_in_one_line(small_images, tmp_path):
    inputs = keras.Input((20, 20, 1))
    path = tmp_path / "autoencoder.keras"
    keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(inputs)).save(path)
    with pytest.raises(InvkerasError) as info:
        inspect_classifier(InspectConfig(model=str(path), dataset=small_images, out=str(tmp_path / "out")))
    assert "\n" not in str(info.value) and "is not a classifier" in str(info.value)


def test_images_that_do_not_fit_the_models_input_are_refused_in_one_line(tiny_classifier, tmp_path):
    path = tmp_path / "digits.npz"
    np.savez(path, x=np.zeros((50, 28, 28), np.uint8), y=np.arange(50) % 5)
    with pytest.raises(InvkerasError) as info:
        inspect_classifier(InspectConfig(model=_model(tiny_classifier), dataset=f"npz:{path}",
                                         out=str(tmp_path / "out")))
    message = str(info.value)
    assert "\n" not in message and "have shape (28, 28, 1)" in message and "takes images of shape (20, 20, 1)" in message


def test_an_unknown_layer_is_refused_with_the_valid_names(tiny_classifier, small_images, tmp_path):
    with pytest.raises(InvkerasError) as info:
        inspect_classifier(_config(tiny_classifier, small_images, tmp_path / "out", layers="conv1,fc9"))
    assert "'fc9'" in str(info.value) and "conv1, conv1_dropout, conv2" in str(info.value)


def test_a_budget_too_small_to_train_anything_says_the_minimum(tiny_classifier, small_images, tmp_path):
    with pytest.raises(InvkerasError) as info:
        inspect_classifier(_config(tiny_classifier, small_images, tmp_path / "out", budget="12s"),
                           console=_console())
    assert re.search(r"^--budget 12s: too small to train anything here: .* need at least \d+", str(info.value))
