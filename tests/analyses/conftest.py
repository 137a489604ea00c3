"""A classifier whose logits decode to recognisable images, and an MSE inverter of those logits.

`quadrants`: 16x16 grey images whose class (0..3) is the quadrant holding a bright square
(jittered, of random grey level, on noise). A small conv net learns it in a few dozen steps,
and the class means are distinct pictures, so an MSE decoder of the logits turns a shifted
logit into a square in that quadrant: `edit --shift` has something to show. Ten per cent of
the test labels are wrong on purpose, so the classifier "misclassifies" exactly those
images (for `sample --misclassified`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FLIPPED_TEST_FRACTION = 0.1


def quadrant_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 40, (n, 16, 16, 1))
    for i, label in enumerate(y):
        row, col = divmod(int(label), 2)
        dr, dc = rng.integers(0, 3, 2)
        x[i, row * 8 + dr : row * 8 + dr + 5, col * 8 + dc : col * 8 + dc + 5] = rng.integers(150, 256)
    return x.astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="session")
def quadrants(tmp_path_factory) -> dict:
    """{"dataset": spec, "workspace": dir, "inverter": MSE inverter dir of layer logits, "flipped": test indices}."""
    from invkeras.classifiers.training import ClassifierConfig, train_classifier
    from invkeras.inverters import config_for, inverter_class

    root = tmp_path_factory.mktemp("quadrants")
    rng = np.random.default_rng(0)
    x, y = quadrant_images(1600, rng)
    x_test, y_test = quadrant_images(200, rng)
    flipped = np.flatnonzero(rng.random(len(y_test)) < FLIPPED_TEST_FRACTION)
    y_test[flipped] = (y_test[flipped] + 1) % 4
    np.savez(root / "quadrants.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    dataset, workspace = f"npz:{root / 'quadrants.npz'}", str(root / "runs")
    classifier = train_classifier(ClassifierConfig(dataset=dataset, arch="conv", epochs=2, batch_size=32,
                                                   learning_rate=2e-3, workspace=workspace, strategy="default"),
                                  progress=False)
    assert classifier.test_accuracy > 0.8  # all but the flipped labels
    config = config_for("mse", dict(dataset=dataset, workspace=workspace, layer="logits", max_steps=300,
                                    steps_per_checkpoint=100, batch_size=32, learning_rate=2e-3))
    inverter = inverter_class("mse").train(config, progress=False)
    return {"dataset": dataset, "workspace": Path(workspace), "inverter": inverter.model_path.parent,
            "flipped": flipped, "classifier": classifier.model_path}
