"""`seeds: N` on a train-inverter step: N runs differing only in their training seed, read together by estimate-mi."""

import json
import shutil
import textwrap

import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.recipes import load_recipe, run_recipe
from invkeras.recipes.runner import step_dependencies

INVERTER = ("{command: train-inverter, layer: fc3, scale: tiny, jit_compile: 'false', max_steps: 10, "
            "steps_per_checkpoint: 10, train_examples: 256, eval_examples: 16%s}")


def recipe(tmp_path, workspace, seeds: str = "", extra: str = ""):
    path = tmp_path / "seeds.yaml"
    path.write_text(textwrap.dedent(f"""
        name: seeds
        dataset: procedural
        workspace: {workspace}
        steps:
          inverter: {INVERTER % seeds}
          information: {{command: estimate-mi, layers: [fc3], unconditional: false, eval_examples: 16{extra}}}
    """))
    return path


def test_a_step_with_three_seeds_plans_three_inverters_that_differ_only_in_training_seed_and_path(tmp_path):
    loaded = load_recipe(recipe(tmp_path, tmp_path / "runs", ", seed: 2, seeds: 3"))
    assert list(loaded.steps) == ["inverter", "inverter-seed3", "inverter-seed4", "information"]
    runs = [loaded.steps[name] for name in ("inverter", "inverter-seed3", "inverter-seed4")]
    assert [run.run_seed for run in runs] == [2, 3, 4]
    assert [run.seed for run in runs] == [2, 2, 2]  # the data's seed: every run trains on the same pairs
    base = runs[0].out_dir()
    assert base == tmp_path / "runs/procedural/conv/inverters/pixelcnn/fc3"
    assert [run.out_dir() for run in runs[1:]] == [base.with_name("fc3-seed3"), base.with_name("fc3-seed4")]
    assert runs[1].model_dump(exclude={"training_seed", "out"}) == runs[0].model_dump(exclude={"training_seed", "out"})
    information = loaded.steps["information"]
    assert information.seeds == {"pixelcnn/fc3": [2, 3, 4]}
    assert [path for _, path in information.rows()] == [run.out_dir() for run in runs]
    waits = step_dependencies(loaded)

    def before(name):  # every step `name` waits for, directly or not
        return set(waits[name]).union(*(before(w) for w in waits[name]))

    assert before("information") == {"inverter", "inverter-seed3", "inverter-seed4"}


def test_one_seed_plans_exactly_what_a_step_without_seeds_plans(tmp_path):
    plain = load_recipe(recipe(tmp_path, tmp_path / "runs"))
    one = load_recipe(recipe(tmp_path, tmp_path / "runs", ", seeds: 1"))
    assert list(one.steps) == list(plain.steps) == ["inverter", "information"]
    assert {n: s.model_dump() for n, s in one.steps.items()} == {n: s.model_dump() for n, s in plain.steps.items()}
    assert one.steps["information"].seeds is None


def test_seeds_in_the_defaults_expand_every_train_inverter_step_that_sets_none_of_its_own(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text(textwrap.dedent(f"""
        name: seeds
        workspace: {tmp_path / "runs"}
        defaults:
          train-inverter: {{seeds: 2, scale: tiny}}
        steps:
          conv1: {{command: train-inverter, layer: conv1}}
          fc3: {{command: train-inverter, layer: fc3, seeds: 1}}
          information: {{command: estimate-mi, layers: [conv1, fc3], unconditional: false}}
    """))
    loaded = load_recipe(path)
    assert list(loaded.steps) == ["conv1", "conv1-seed1", "fc3", "information"]
    assert loaded.steps["information"].seeds == {"pixelcnn/conv1": [0, 1]}


@pytest.mark.parametrize("seeds", ["0", "two", "true"])
def test_a_bad_number_of_seeds_is_one_line_naming_the_step(tmp_path, seeds):
    with pytest.raises(InvkerasError, match=r"steps\.inverter\.seeds: expected a whole number"):
        load_recipe(recipe(tmp_path, tmp_path / "runs", f", seeds: {seeds}"))


def test_estimate_mi_reports_three_seeds_with_the_interval_over_them(tiny_classifier, tmp_path):
    from invkeras.analyses import seeds
    from invkeras.analyses.mi import EstimateMIConfig, estimate_mi, held_out_nll

    workspace = tmp_path / "ws"
    # A private copy of the tiny classifier alone: the first seed's step extracts the features
    # every seed then trains on.
    shutil.copytree(tiny_classifier / "procedural/conv/classifier", workspace / "procedural/conv/classifier")
    path = recipe(tmp_path, workspace, ", seeds: 3")
    results = run_recipe(load_recipe(path), source=path)
    assert [r.status for r in results] == ["ran"] * 4
    table = json.loads((workspace / "procedural/conv/mi/test.json").read_text())
    (row,) = table["rows"]
    assert row["layer"] == "fc3" and row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    base = workspace / "procedural/conv/inverters/pixelcnn/fc3"
    runs = [base, base.with_name("fc3-seed1"), base.with_name("fc3-seed2")]
    nll = np.stack([held_out_nll(d).nll_nats for d in runs])
    assert not np.allclose(nll[0], nll[1])  # the runs do differ
    metadata = [json.loads((d / "inverter.keras.meta.json").read_text()) for d in runs]
    assert [m["config"]["seed"] for m in metadata] == [0, 0, 0]
    assert [m["config"]["training_seed"] for m in metadata] == [None, 1, 2]
    expected = seeds.interval(nll)
    assert row["H*(x|h) nats"] == pytest.approx(expected.mean)
    assert row["se nats"] == pytest.approx(expected.se_images)
    assert row["se seeds+images nats"] == pytest.approx(expected.se)
    assert [row["ci95 low (seeds)"], row["ci95 high (seeds)"]] == pytest.approx([expected.low, expected.high])
    # A declared chain must name rows of the table.
    with pytest.raises(InvkerasError, match=r"--order conv1,fc3: conv1 not among the rows \(fc3\)"):
        estimate_mi(EstimateMIConfig(inverters=[str(d) for d in runs], order=["conv1", "fc3"],
                                     out=str(tmp_path / "mi.json")))
