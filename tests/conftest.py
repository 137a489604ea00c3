"""Shared fixtures: one tiny, really trained classifier reused by the extract/recipe/CLI tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A conv classifier trained for one short epoch on 512 procedural images; returns the workspace."""
    from invkeras.train_classifier import ClassifierConfig, train_classifier

    workspace = tmp_path_factory.mktemp("workspace")
    train_classifier(
        ClassifierConfig(
            dataset="procedural", arch="conv", epochs=1, batch_size=64, train_examples=512, workspace=str(workspace)
        )
    )
    return workspace


@pytest.fixture(scope="session")
def tiny_inverters(tiny_classifier) -> dict:
    """fc3 and unconditional inverters, tiny and briefly trained, in the tiny classifier's workspace."""
    from invkeras.train_inverter import InverterConfig, train_inverter

    results = {}
    for layer in ("fc3", "none"):
        results[layer] = train_inverter(
            InverterConfig(
                dataset="procedural", layer=layer, scale="tiny", workspace=str(tiny_classifier), max_steps=40,
                steps_per_checkpoint=20, train_examples=512, eval_examples=48, jit_compile="false",
            )
        )
    return results
