"""Shared fixtures: one tiny, really trained classifier reused by the extract/recipe/CLI tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_MNIST = SHARED_DATA / "mnist"

# Catalogue names (mnist, cifar10) resolve to the offline copies beside the checkout, where
# there are any; a machine without them reads TFDS as users' machines do.
if SHARED_DATA.is_dir():
    os.environ.setdefault("INVKERAS_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A conv classifier trained for one short epoch on 512 procedural images; returns the workspace."""
    from invkeras.classifiers.training import ClassifierConfig, train_classifier

    workspace = tmp_path_factory.mktemp("workspace")
    train_classifier(
        ClassifierConfig(
            dataset="procedural", arch="conv", epochs=1, batch_size=64, train_examples=512, workspace=str(workspace)
        )
    )
    return workspace


@pytest.fixture(scope="session")
def tiny_inverters(tiny_classifier) -> dict:
    """Tiny, briefly trained inverters in the tiny classifier's workspace: PixelCNN fc3 and
    unconditional ("fc3", "none"), and an MSE decoder of fc3 ("mse_fc3"), all on the same data."""
    from invkeras.inverters import config_for, inverter_class

    common = dict(dataset="procedural", workspace=str(tiny_classifier), max_steps=40, steps_per_checkpoint=20,
                  train_examples=512, eval_examples=48)
    results = {}
    for layer in ("fc3", "none"):
        config = config_for("pixelcnn", dict(common, layer=layer, scale="tiny", jit_compile="false"))
        results[layer] = inverter_class("pixelcnn").train(config, progress=False)
    config = config_for("mse", dict(common, layer="fc3", batch_size=32))
    results["mse_fc3"] = inverter_class("mse").train(config, progress=False)
    return results
