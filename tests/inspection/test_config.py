"""InspectConfig: the budget's notation, the kinds, and what must be given."""

from __future__ import annotations

import pytest

from invkeras.errors import InvkerasError
from invkeras.inspection.config import InspectConfig, format_duration, parse_duration


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("90s", 90), ("1h", 3600), ("1h30m", 5400),
                                           ("2m30s", 150), ("0.5h", 1800), (" 45 s ", 45), ("10min", 600)])
def test_a_budget_is_written_with_its_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, hint", [("30", "a bare number needs a unit"), ("half an hour", "not a duration"),
                                        ("0m", "more than 0"), ("", "not a duration")])
def test_a_budget_without_a_readable_duration_is_refused_in_one_line(text, hint):
    with pytest.raises(InvkerasError) as info:
        parse_duration(text)
    assert hint in str(info.value) and "\n" not in str(info.value) and str(info.value).startswith("--budget")


def test_durations_are_written_back_in_the_largest_units():
    assert [format_duration(s) for s in (42, 250, 3900, 0.4)] == ["42s", "4m10s", "1h05m", "0s"]


def test_the_config_defaults_to_auto_kinds_a_half_hour_budget_and_runs_dataset_inspect():
    config = InspectConfig(model="m.keras", dataset="npz:data/my_images.npz")
    assert config.auto_kinds and config.budget == 1800
    assert config.out_dir().as_posix() == "runs/npz-my_images/inspect"
    named = InspectConfig(model="m.keras", dataset="procedural", kinds="pixelcnn, mse", layers="conv1,fc3",
                          budget="90s")
    assert (named.kinds, named.layers, named.budget, named.auto_kinds) == (["pixelcnn", "mse"], ["conv1", "fc3"],
                                                                           90, False)


def test_a_model_without_images_or_auto_among_named_kinds_is_refused():
    with pytest.raises(InvkerasError, match="give --dataset"):
        InspectConfig(model="m.keras")
    with pytest.raises(InvkerasError, match="'auto' stands alone"):
        InspectConfig(model="m.keras", dataset="procedural", kinds="auto,mse")
    assert InspectConfig(features="feats").dataset_label == "features-feats"


def test_a_config_writes_back_the_command_line_that_asks_for_it():
    config = InspectConfig(model="m.keras", dataset="npz:d.npz", layers="conv1,fc3", kinds="pixelcnn,mse",
                           budget="5m30s")
    assert config.command_line() == ("invkeras inspect --model m.keras --dataset npz:d.npz --layers conv1,fc3 "
                                "--kinds pixelcnn,mse --budget 5m30s --seed 0")
