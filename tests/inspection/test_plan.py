"""The plan: auto's choice of kinds, the calibration stopwatch, and the budget's split."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.inspection.plan import (AUTOENCODER, MIN_SHARE, Calibration, EvaluationSizes, allocate, assign_lanes,
                                      calibrate, choose_kinds, jobs_for, make_plan, minimum_seconds, plan_table)
from invkeras.training import BACKUP_DIR, CompiledModelTrainee, Schedule, train

PIXELCNN = Calibration(step=0.15, setup=3.0, first_step=8.0, checkpoint=1.0, steps=6)
MSE = Calibration(step=0.02, setup=1.0, first_step=0.5, checkpoint=0.1, steps=6)
CALIBRATIONS = {"pixelcnn": PIXELCNN, "mse": MSE}


def test_auto_picks_pixelcnn_for_small_grey_images_cinn_for_colour_and_mse_always():
    assert choose_kinds(["auto"], (20, 20, 1), auto=True)[0] == ["pixelcnn", "mse"]
    assert choose_kinds(["auto"], (32, 32, 3), auto=True)[0] == ["cinn", "mse"]
    kinds, notes = choose_kinds(["auto"], (64, 64, 1), auto=True)
    assert kinds == ["mse"] and any("larger than 32x32" in note for note in notes)
    assert choose_kinds(["gan", "mse", "gan"], (20, 20, 1), auto=False)[0] == ["gan", "mse"]
    with pytest.raises(InvkerasError, match="unknown kind flow"):
        choose_kinds(["pixelcnn", "flow"], (20, 20, 1), auto=False)


def test_jobs_go_layer_by_layer_with_the_autoencoder_first_and_the_unconditional_model_last():
    keys = [job.key for job in jobs_for(["conv1", "fc3"], ["cinn", "pixelcnn", "mse"])]
    assert keys == [AUTOENCODER, "cinn/conv1", "pixelcnn/conv1", "mse/conv1", "cinn/fc3", "pixelcnn/fc3", "mse/fc3",
                    "pixelcnn/none"]
    assert [job.key for job in jobs_for(["logits"], ["mse"])] == ["mse/logits"]


def test_images_of_exactly_known_entropy_need_no_unconditional_model():
    keys = [job.key for job in jobs_for(["conv1"], ["pixelcnn", "mse"], exact_entropy=True)]
    assert keys == ["pixelcnn/conv1", "mse/conv1"]


def test_the_layers_models_share_the_time_in_proportion_to_their_needs_and_use_all_of_it():
    jobs = jobs_for(["conv1", "fc3"], ["pixelcnn", "mse"])
    rows = allocate(jobs, CALIBRATIONS, 600.0)
    pixelcnn = [row for row in rows if row.job.kind == "pixelcnn"]
    assert len({round(row.share, 9) for row in pixelcnn}) == 1 and pixelcnn[0].share < 1
    assert sum(row.seconds for row in rows) == pytest.approx(600.0, rel=0.01)
    steps = {row.job.key: row.steps for row in rows}
    assert steps["pixelcnn/none"] == pytest.approx(2.6 * steps["pixelcnn/conv1"], rel=0.01)  # H*(x) needs most
    # an MSE decoder's whole need is seconds: it gets all of it
    assert steps["mse/fc3"] == steps["mse/conv1"] == 800
    more = allocate(jobs, CALIBRATIONS, 1200.0)
    assert all(b.steps >= a.steps for a, b in zip(rows, more)) and more[0].steps > rows[0].steps
    roomy = allocate(jobs, CALIBRATIONS, 3000.0)
    assert len({round(row.share, 9) for row in roomy}) == 1 and roomy[0].share > 1


def _plan(budget, jobs=None, optional=()):
    jobs = jobs or jobs_for(["conv1", "fc3"], ["pixelcnn", "mse"])
    return make_plan(jobs, CALIBRATIONS, budget=budget, spent=20.0, evaluation_of=lambda selected: 30.0,
                     optional=optional)


def test_a_budget_too_small_to_train_anything_is_one_line_naming_the_minimum():
    jobs = jobs_for(["conv1", "fc3"], ["pixelcnn", "mse"])
    needed = 20.0 + 30.0 + 10.0 + minimum_seconds(jobs, CALIBRATIONS)
    with pytest.raises(InvkerasError) as info:
        _plan(needed - 5)
    message = str(info.value)
    assert "\n" not in message and "too small to train anything" in message and "need at least" in message
    assert f"give --budget {int(-(-needed // 60))}m00s or more" in message
    plan = _plan(needed + 5)
    assert plan.rows[0].share >= MIN_SHARE and plan.total == pytest.approx(needed + 5, rel=0.01)


def test_auto_leaves_pixelcnn_out_when_the_budget_gives_it_under_a_quarter_of_its_steps():
    tight = _plan(250.0, optional=("pixelcnn",))
    assert {row.job.kind for row in tight.rows} == {"mse"} and any("pixelcnn left out" in n for n in tight.notes)
    roomy = _plan(1500.0, optional=("pixelcnn",))
    assert {row.job.kind for row in roomy.rows} == {"pixelcnn", "mse"} and roomy.rows[0].share >= 0.25


def test_groups_go_heaviest_first_onto_the_least_loaded_lane_and_keep_their_order():
    lanes = assign_lanes({"conv1": 5.0, "conv2": 4.0, "fc3": 3.0, "logits": 2.0, "none": 9.0}, 2)
    assert lanes == [["fc3", "none"], ["conv1", "conv2", "logits"]]  # loads 12 and 11
    assert assign_lanes({"conv1": 5.0, "fc3": 3.0}, 1) == [["conv1", "fc3"]]
    assert assign_lanes({"conv1": 5.0}, 4) == [["conv1"]]


def test_two_lanes_train_side_by_side_each_within_the_time_left():
    jobs = jobs_for(["conv1", "fc3"], ["pixelcnn", "mse"])
    one = make_plan(jobs, CALIBRATIONS, budget=1500.0, spent=20.0, evaluation_of=lambda selected: 30.0)
    two = make_plan(jobs, CALIBRATIONS, budget=1500.0, spent=20.0, lanes=2, evaluation_of=lambda selected: 30.0)
    assert len(two.lanes) == 2 and sorted(sum(two.lanes, [])) == ["conv1", "fc3", "none"]
    assert two.total <= 1500.0 * 1.01 and one.total <= 1500.0 * 1.01
    steps = lambda plan, key: next(r.steps for r in plan.rows if r.job.key == key)  # noqa: E731
    assert steps(two, "pixelcnn/conv1") > 1.5 * steps(one, "pixelcnn/conv1")  # about twice the steps


def test_the_plan_table_lists_each_model_with_its_steps_and_minutes():
    from rich.console import Console

    plan = _plan(1500.0)
    console = Console(width=120, record=True)
    console.print(plan_table(plan, CALIBRATIONS))
    text = console.export_text()
    assert "(images only)" in text and "pixelcnn" in text and f"{plan.rows[0].steps:,}" in text
    assert "150 ms" in text and "of 25m00s" in text
    assert json.loads(json.dumps(plan.to_json()))["rows"][0]["kind"] == "pixelcnn"


def test_the_evaluation_estimate_grows_with_the_images_sampled():
    from invkeras.inspection.plan import evaluation_seconds

    small = EvaluationSizes(400, 64, 64, 4, 64, 20000, 256)
    large = EvaluationSizes(400, 64, 256, 4, 64, 20000, 256)
    assert 0 < evaluation_seconds(["mse"], CALIBRATIONS, small) < evaluation_seconds(["pixelcnn"], CALIBRATIONS, small)
    assert evaluation_seconds(["pixelcnn"], CALIBRATIONS, large) > evaluation_seconds(["pixelcnn"], CALIBRATIONS, small)


def _regression(tmp_path, max_steps):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(64, 4)).astype("float32"), "y": rng.normal(size=(64, 1)).astype("float32")}
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    trainee = CompiledModelTrainee(model, inputs=lambda b: b["x"], targets=lambda b: b["y"],
                                   validate=lambda: {"val_loss": 0.0})

    def run(hooks):
        return train(trainee, arrays, Schedule(max_steps, 50, 100, 8), out_dir=tmp_path, settings={}, what="t",
                     hooks=hooks, progress=False)

    return run


def test_calibration_times_a_few_steps_and_leaves_them_for_the_real_run(tmp_path):
    calibration = calibrate(_regression(tmp_path, 6))
    assert calibration.steps == 6 and 0 < calibration.step < 1.0 and calibration.checkpoint >= 0
    assert calibration.fixed() >= calibration.setup
    progress = json.loads((tmp_path / BACKUP_DIR / "progress.json").read_text())
    assert progress["step"] == 6
    outcome = _regression(tmp_path, 20)([])
    assert outcome.resumed_from_step == 6 and outcome.steps == 20


def test_a_new_kind_is_planned_from_its_own_quick_settings_with_no_edit_to_inspect(monkeypatch):
    """A kind registered with `quick` settings is picked by auto, trained for its own steps,
    and shown as samples beside the point estimate; nothing in inspect names it."""
    from invkeras.inspection.workspace import shown_kinds
    from invkeras.inverters import Inverter, InverterConfig, QuickTraining, base

    class BlobConfig(InverterConfig):
        kind: str = "blob"

    class BlobInverter(Inverter):
        kind, config_class = "blob", BlobConfig
        capabilities = frozenset({"sample"})
        quick = QuickTraining(needed_steps=321, steps_per_checkpoint=7, settings={"scale": "tiny"}, auto_for="colour")

    monkeypatch.setitem(base._KINDS, "blob", BlobInverter)
    kinds, notes = choose_kinds(["auto"], (32, 32, 3), auto=True)
    assert kinds[-1] == "mse" and "blob" in kinds and "blob: colour images" in notes
    assert "blob" not in choose_kinds(["auto"], (28, 28, 1), auto=True)[0]
    job = next(job for job in jobs_for(["fc3"], kinds) if job.kind == "blob")
    assert (job.needed_steps, job.steps_per_checkpoint) == (321, 7)
    shown, beside = shown_kinds(["mse", "blob"])
    assert shown == ["blob"] and beside == ("blob", "mse")
    assert shown_kinds(["mse"]) == (["mse"], None)  # a point estimate alone gets a grid of its own
