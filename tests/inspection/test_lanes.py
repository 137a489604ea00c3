"""Lanes: the deadline hook, and a lane's failure reported as one line."""

from __future__ import annotations

import json
import os
import time

from invkeras.inspection.lanes import LaneDeadline, lane_main


def _watched(step_seconds: float, after) -> LaneDeadline:
    watch = LaneDeadline(time.time() + 5.0, calibrated_step=0.01, after=after)
    watch.ends = [i * step_seconds for i in range(10)]  # steps this far apart
    return watch


def test_a_model_is_stopped_when_what_its_lane_must_still_do_would_pass_the_deadline():
    assert _watched(0.01, lambda speed: 1.0).should_stop(10) is False
    assert _watched(0.01, lambda speed: 6.0).should_stop(10) is True
    # the lane runs three times slower than calibrated: what follows takes three times as long
    slow = _watched(0.03, lambda speed: 2.0 * speed)
    assert abs(slow.slowdown - 3.0) < 1e-6 and slow.should_stop(10) is True
    fresh = LaneDeadline(time.time() + 5.0, 0.01, lambda speed: 100.0)
    fresh.ends = [0.0, 5.0]  # the first steps build the graph: no measure of speed yet
    assert fresh.slowdown is None and fresh.should_stop(2) is False


def test_a_lane_that_fails_on_bad_input_leaves_one_line_and_exit_code_2(tmp_path):
    from invkeras.inspection.config import InspectConfig
    from invkeras.inspection.layers import LayerChoice
    from invkeras.inspection.workspace import Subject, Workspace

    subject = Subject([LayerChoice("fc3", "hidden dense", (8,))], (20, 20, 1), None,
                      {"fc3": tmp_path / "missing.npz"}, "m", "procedural", 100, None, None)
    workspace = Workspace(InspectConfig(features=str(tmp_path)), subject, tmp_path / "out")
    payload = {"workspace": workspace.to_json(), "groups": ["fc3"], "kinds": ["mse"], "jobs": [["mse", "fc3"]],
               "calibrations": {"mse": {"step": 0.01, "setup": 1.0, "first_step": 1.0, "checkpoint": 0.1,
                                        "steps": 6}},
               "deadline": time.time() + 60, "name": "lane 1", "cwd": str(tmp_path),
               "result": str(tmp_path / "result.json")}
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    assert lane_main(os.getppid(), str(tmp_path / "payload.json")) == 2
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["exit_code"] == 2 and "missing.npz" in result["error"] and "\n" not in result["error"]
