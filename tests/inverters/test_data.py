"""Where an inverter's pairs come from: the held-out inputs the analyses take are the held-out
splits of `paired_arrays`, read without the training split wherever that split stands alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.inverters.data import PairedDataConfig, held_out_inputs, paired_arrays


def _assert_same(held_out: dict, full: dict, count: int):
    assert sorted(held_out) == sorted(full)
    for key in full:
        np.testing.assert_array_equal(held_out[key], full[key][:count])


@pytest.fixture(scope="module")
def extracted(tiny_classifier, tmp_path_factory):
    """fc3 features of the tiny classifier extracted into a workspace of this module's own."""
    workspace = tmp_path_factory.mktemp("paired")
    run = Path("procedural") / "conv" / "classifier"
    shutil.copytree(tiny_classifier / run, workspace / run)  # its features land in this workspace only
    config = PairedDataConfig(dataset="procedural", layer="fc3", workspace=str(workspace), eval_examples=40)
    _, val, test, _ = paired_arrays(config)
    features = workspace / "procedural" / "conv" / "features" / "fc3"
    assert (features / "train").is_dir()
    return config, {"validation": val, "test": test}, features


def test_held_out_inputs_are_the_held_out_pairs_and_never_read_the_train_split(extracted):
    config, full, features = extracted
    aside = features.parent / "train-aside"
    (features / "train").rename(aside)  # extracting it again would bring it back
    try:
        for split in ("validation", "test"):
            _assert_same(held_out_inputs(config, split, 7), full[split], 7)
        assert not (features / "train").exists()
    finally:
        shutil.rmtree(features / "train", ignore_errors=True)
        aside.rename(features / "train")
    unconditional = config.model_copy(update={"layer": "none"})
    _, val, test, _ = paired_arrays(unconditional)
    _assert_same(held_out_inputs(unconditional, "test", 5), test, 5)
    assert sorted(held_out_inputs(unconditional, "validation", 5)) == ["x"]


def test_held_out_inputs_of_given_features_with_and_without_their_own_splits(extracted, tmp_path):
    config, _, features = extracted
    given = PairedDataConfig(features=str(features), eval_examples=40)  # validation and test stand alone
    _, val, test, _ = paired_arrays(given)
    _assert_same(held_out_inputs(given, "validation", 6), val, 6)
    _assert_same(held_out_inputs(given, "test", 6), test, 6)
    # A user's single .npz: validation is carved out of it, and there is no test split.
    pairs = held_out_inputs(config, "test", 40)
    np.savez(tmp_path / "mine.npz", x=pairs["x"], h=pairs["h"])
    own = PairedDataConfig(features=str(tmp_path / "mine.npz"))
    _, val, _, _ = paired_arrays(own)
    _assert_same(held_out_inputs(own, "validation", 3), val, 3)
    with pytest.raises(InvkerasError, match="no held-out 'test' data"):
        held_out_inputs(own, "test", 3)
    with pytest.raises(InvkerasError, match="choose validation or test"):
        held_out_inputs(own, "train", 3)
