"""`invkeras train-inverter --kind K --help` lists K's own options, each with its default and help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from invkeras.commands.inverter import own_options
from invkeras.inverters import inverter_kinds


@pytest.fixture(autouse=True)
def wide_help(monkeypatch):
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", 250)  # no option name folded


def _help(argv: list[str]) -> str:
    from invkeras.cli import build_app

    result = CliRunner().invoke(build_app(argv), argv, terminal_width=250)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("kind", sorted(inverter_kinds()))
def test_each_kinds_help_lists_its_own_options_with_defaults(kind):
    text = _help(["train-inverter", "--kind", kind, "--help"])
    config = inverter_kinds()[kind].config_class
    own = own_options(config)
    assert own, f"kind {kind} has no options of its own"
    for name in own:
        assert f"--{name.replace('_', '-')}" in text
    assert text.count(f"{kind}: ") >= len(own)  # every own option's help names its kind
    assert f"{kind}:  [" not in text  # ... and says what the option does
    assert "[default:" in text


def test_another_kinds_options_are_not_listed_under_one_kind():
    text = _help(["train-inverter", "--kind", "mse", "--help"])
    assert "--g-learning-rate" not in text and "--num-blocks" not in text


def test_the_installed_command_shows_a_kinds_options_in_its_help():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "invkeras.cli", "train-inverter", "--kind", "gan", "--help"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--g-learning-rate" in proc.stdout and "--ema-decay" in proc.stdout
