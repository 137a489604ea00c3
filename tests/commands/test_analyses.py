"""The analysis commands' recipe steps: what `compare` prints after a recipe, across layers."""

from __future__ import annotations

import numpy as np

from invkeras import artifacts
from invkeras.commands.analyses import CompareStep, label_agreement_lines


def _comparisons(step: CompareStep, agreement: dict[str, np.ndarray]) -> None:
    for layer, values in agreement.items():
        step.out(layer).mkdir(parents=True, exist_ok=True)
        artifacts.save_npz_atomic(step.out(layer) / "compare.npz", label_agreement_pixelcnn=values)


def test_compare_says_which_layers_samples_keep_the_label_better_in_the_classifiers_order(tiny_classifier):
    step = CompareStep(command="compare", dataset="procedural", arch="conv", workspace=str(tiny_classifier),
                       layers=["fc3", "conv1"], kinds=["pixelcnn"])
    images = np.arange(200)
    _comparisons(step, {"conv1": (images % 10 < 9).astype(float), "fc3": (images % 10 < 3).astype(float)})
    lines = label_agreement_lines(step)
    assert len(lines) == 1 and lines[0].startswith("pixelcnn: samples of conv1 keep the label more often than "
                                                   "those of fc3 (60.0% ± ")
    assert "the fc3 inverter falls short" in lines[0]

    _comparisons(step, {"fc3": (images % 10 < 9).astype(float)})  # as often as conv1's: nothing to say
    assert label_agreement_lines(step) == []
    assert label_agreement_lines(step.model_copy(update={"layers": ["fc3"]})) == []  # one layer: no chain
