"""The benchmark harness (`python benchmarks/bench.py --quick`): workers are timed in
interleaved rounds, every ratio is the median of the per-round ratios of what was measured,
the FLOP count agrees with TensorFlow's graph, and the table and JSON carry all of it."""

import dataclasses
import importlib.util
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

import pytest
from rich.console import Console

from invkeras.inverters.pixelcnn import flops

# The harness is a script beside the package, not part of it: load it from its file.
_spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py")
bench = sys.modules["bench"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

slow = pytest.mark.slow  # the quick run compiles seven small models in this process


@pytest.fixture(scope="module")
def quick_results():
    # In-process (every worker's job in this process) to skip nine imports of TensorFlow;
    # `test_a_subprocess_worker_speaks_the_line_protocol` covers the subprocess side.
    return bench.run_benchmark(bench.BenchSettings.quick(), isolate=False, log=lambda msg: None)


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _rates(entry) -> dict:
    """Steps/s per round, recomputed from the raw step times."""
    return {rec["round"]: 1.0 / statistics.median(rec["times_s"]) for rec in entry["rounds"]}


@slow
def test_every_measurement_is_present_and_finite(quick_results):
    s = quick_results["settings"]
    train, sample, peak, figure = (quick_results[k] for k in ("train", "sample", "peak", "figure"))
    assert set(train) == {"train_tfp", "train_ours_xla", "train_ours_no_xla"}
    assert set(sample) == {"sample_tfp", "sample_ours_pixel", "sample_ours_cached", "sample_ours_full"}
    for name, r in train.items():
        assert [rec["round"] for rec in r["rounds"]] == list(range(s["rounds"])), name
        for rec in r["rounds"]:
            assert len(rec["times_s"]) == s["steps_per_round"] and all(map(_finite_positive, rec["times_s"])), name
            assert all(math.isfinite(loss) for loss in rec["values"]), name  # the losses
        assert len(r["warmup_s"]) == s["warmup_steps"] and all(map(_finite_positive, r["warmup_s"])), name
        assert math.isfinite(r["first_loss"]), name
    for name, r in sample.items():
        expected = [s["sample_rounds"] // 2] if name in s["sample_once"] else list(range(s["sample_rounds"]))
        assert [rec["round"] for rec in r["rounds"]] == expected, name
        assert all(_finite_positive(t) for rec in r["rounds"] for t in rec["times_s"]), name
    assert all(len(rec["times_s"]) == s["peak_calls"] for rec in peak["rounds"])
    assert len(figure["rounds"]) == 1 and _finite_positive(figure["rounds"][0]["times_s"][0])
    assert figure["config"]["image_shape"] == list(s["figure_image_shape"])
    for name, r in {**train, **sample, "peak": peak, "figure": figure}.items():
        assert _finite_positive(r["peak_rss_mib"]), name
        assert r["rss_growth_mib"] == pytest.approx(r["peak_rss_mib"] - r["rss_baseline_mib"]), name
    for name, r in {**train, **sample, "figure": figure}.items():
        assert _finite_positive(r["params"]), name
    summary = quick_results["summary"]
    for value in (summary["peak_gflops"]["median"], summary["figure_s"], *summary["achieved_gflops"].values(),
                  *summary["share_of_peak"].values(), summary["flops"]["per_step_formula"]):
        assert _finite_positive(value)
    for phase in ("train", "sample", "figure"):
        load = quick_results["load"][phase]
        assert load["before"] >= 0 and load["after"] >= 0 and len(load["by_round"]) >= 1, phase
    # TFP's data-dependent weight-norm init really ran inside the compiled train step.
    assert train["train_tfp"]["weight_norm_initialised_in_graph"] is True


@slow
def test_rounds_alternate_between_the_workers(quick_results):
    """Sorted by their start times, the timed rounds follow `round_order` exactly (each worker
    once per round, the order reversed every other round) and never overlap."""
    s = quick_results["settings"]
    for part, rounds, once in (("train", s["rounds"], ()), ("sample", s["sample_rounds"], s["sample_once"])):
        measured = dict(quick_results[part])
        if part == "train":
            measured["peak"] = quick_results["peak"]
        names = [name for name in bench.JOBS if name in measured]
        stamps = sorted((rec["start"], rec["end"], rec["round"], name)
                        for name, entry in measured.items() for rec in entry["rounds"])
        expected = [(r, name) for r in range(rounds) for name in bench.round_order(names, r)
                    if name not in once or r == rounds // 2]
        assert [(r, name) for _, _, r, name in stamps] == expected, part
        assert all(end <= next_start for (_, end, *_), (next_start, *_) in zip(stamps, stamps[1:])), part


@slow
def test_ratios_are_medians_of_the_per_round_ratios(quick_results):
    train, sample, summary = quick_results["train"], quick_results["sample"], quick_results["summary"]
    assert summary["train_tfp_baseline"] == "train_tfp"  # the only TFP recipe a quick run times
    tfp = _rates(train["train_tfp"])
    for name in ("train_ours_xla", "train_ours_no_xla"):
        ours = _rates(train[name])
        per_round = [ours[r] / tfp[r] for r in sorted(tfp)]
        ratio = summary["train_ratio"][name]
        assert ratio["by_round"] == pytest.approx(per_round)
        assert ratio["median"] == pytest.approx(statistics.median(per_round))
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
        assert (ratio["min"], ratio["max"]) == pytest.approx((min(per_round), max(per_round)))
        assert summary["steps_per_s"][name]["median"] == pytest.approx(statistics.median(ours.values()))
    best = summary["train_best"]
    assert summary["train_ratio"][best]["median"] == max(r["median"] for r in summary["train_ratio"].values())
    assert summary["train_target_met"] == (summary["train_ratio"][best]["median"] >= bench.TRAIN_TARGET)

    (tfp_round,) = sample["sample_tfp"]["rounds"]
    tfp_time = tfp_round["times_s"][0]
    for name in ("sample_ours_pixel", "sample_ours_cached", "sample_ours_full"):
        per_round = [tfp_time / statistics.median(rec["times_s"]) for rec in sample[name]["rounds"]]
        ratio = summary["sample_ratio"][name]
        assert ratio["median"] == pytest.approx(statistics.median(per_round))
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
    pixel = summary["sample_ratio"]["sample_ours_pixel"]["median"]
    assert summary["sample_target_met"] == (pixel >= bench.SAMPLE_TARGET)
    assert summary["figure_s"] == quick_results["figure"]["rounds"][0]["times_s"][0]
    assert summary["figure_target_met"] == (summary["figure_s"] <= bench.FIGURE_TARGET_S)


@slow
def test_flop_count_agrees_with_the_graph_and_share_is_achieved_over_peak(quick_results):
    """The formula matches TensorFlow's graph of the train step within 1% (1.0002 on the
    quick network), and the share of the peak is achieved / peak."""
    settings = bench.BenchSettings.from_dict(quick_results["settings"])
    summary, train, peak = quick_results["summary"], quick_results["train"], quick_results["peak"]
    config = bench._our_config(settings, settings.train_filters, settings.train_nr_resnet)
    assert summary["flops"]["per_step_formula"] == flops.train_step_flops(config, settings.batch_size)
    assert summary["flops"]["formula_over_graph"] == pytest.approx(1.0, abs=0.01)
    assert 0 < summary["flops"]["profiler_elementwise_share"] < 0.1
    peak_by_round = [peak["flops_per_call"] / statistics.median(rec["times_s"]) / 1e9 for rec in peak["rounds"]]
    assert summary["peak_gflops"]["median"] == pytest.approx(statistics.median(peak_by_round))
    for name in ("train_ours_xla", "train_ours_no_xla"):
        achieved = summary["flops"]["per_step_formula"] * statistics.median(_rates(train[name]).values()) / 1e9
        assert summary["achieved_gflops"][name] == pytest.approx(achieved)
        assert summary["share_of_peak"][name] == pytest.approx(achieved / summary["peak_gflops"]["median"])
        by_round = summary["share_of_peak_by_round"][name]
        assert by_round["min"] <= by_round["median"] <= by_round["max"]


@slow
def test_table_and_json_carry_every_part(quick_results, tmp_path):
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(bench.render(quick_results))
    text = out.getvalue()
    summary = quick_results["summary"]
    for heading in ("QUICK SMOKE RUN", "Training speed", "Train step FLOPs and the machine's limit",
                    "Sampling time", "sample figure", "Targets", "Machine:", "Versions:", "Load average (1 min)",
                    "formula / graph", "of the peak", "matmul peak"):
        assert heading in text, heading
    best = summary["train_ratio"][summary["train_best"]]
    assert f"{best['median']:.2f}× ({best['min']:.2f}–{best['max']:.2f})" in text
    pixel = summary["sample_ratio"]["sample_ours_pixel"]
    assert f"{pixel['median']:.2f}× ({pixel['min']:.2f}–{pixel['max']:.2f})" in text
    assert f"{summary['share_of_peak']['train_ours_xla']:.1%}" in text

    path = bench.write_results(quick_results, tmp_path / "bench.json")
    saved = json.loads(path.read_text())
    # The saved summary is what the saved raw measurements give.
    again = bench.summarize(saved["train"], saved["sample"], saved["peak"], saved["figure"])
    for key in ("train_ratio", "sample_ratio", "steps_per_s", "sample_s"):
        for name, ratio in saved["summary"][key].items():
            assert again[key][name]["by_round"] == pytest.approx(ratio["by_round"]), (key, name)
    assert again["share_of_peak"] == pytest.approx(saved["summary"]["share_of_peak"])
    assert again["figure_s"] == pytest.approx(saved["summary"]["figure_s"])
    meta = json.loads((tmp_path / "bench.json.meta.json").read_text())
    assert meta["kind"] == "benchmark" and meta["results"]["train_best"] == summary["train_best"]
    Console(file=io.StringIO(), width=250).print(bench.render(saved))  # the saved results render too


# --- fast tests: no model is built ---------------------------------------------------------


def _entry(times_by_round: dict[int, list[float]], **info) -> dict:
    return {**info, "rounds": [{"round": r, "times_s": t} for r, t in times_by_round.items()]}


def test_summary_takes_tfps_faster_recipe_and_reports_an_unmet_target():
    """Training ratios are per round against the faster TFP recipe; a slower 'ours' misses the
    targets; sampling ratios divide TFP's one time by ours per round."""
    train = {
        "train_tfp": _entry({0: [1.0], 1: [1.0], 2: [1.0]}),
        "train_tfp_fit": _entry({0: [0.5, 0.6, 0.4], 1: [1.0], 2: [0.5]}),  # 2, 1, 2 steps/s: faster
        "train_ours_xla": _entry({0: [0.4], 1: [0.5], 2: [0.8]}, train_flops_per_step=4e9),  # 2.5, 2, 1.25
        "train_ours_no_xla": _entry({0: [1.0], 1: [1.0], 2: [1.0]}, train_flops_per_step=4e9),
    }
    sample = {"sample_tfp": _entry({1: [60.0]}), "sample_ours_pixel": _entry({0: [2.0], 1: [1.0], 2: [3.0]}),
              "sample_ours_cached": _entry({0: [6.0], 1: [6.0], 2: [6.0]}), "sample_ours_full": _entry({1: [50.0]})}
    peak = _entry({0: [0.5, 0.4, 0.6], 1: [1.0], 2: [0.5]}, flops_per_call=1e10)  # 20, 10, 20 GFLOP/s
    figure = _entry({0: [31.0]})
    summary = bench.summarize(train, sample, peak, figure)
    assert summary["train_tfp_baseline"] == "train_tfp_fit"
    xla = summary["train_ratio"]["train_ours_xla"]
    assert xla["by_round"] == pytest.approx([1.25, 2.0, 0.625]) and xla["median"] == pytest.approx(1.25)
    assert (xla["min"], xla["max"]) == pytest.approx((0.625, 2.0))
    assert summary["train_best"] == "train_ours_xla" and summary["xla_faster"] and not summary["train_target_met"]
    assert summary["sample_ratio"]["sample_ours_pixel"]["by_round"] == pytest.approx([30.0, 60.0, 20.0])
    assert summary["sample_ratio"]["sample_ours_pixel"]["median"] == pytest.approx(30.0)
    assert summary["sample_ratio"]["sample_ours_full"]["by_round"] == pytest.approx([1.2])
    assert not summary["sample_target_met"]
    assert summary["peak_gflops"]["median"] == pytest.approx(20.0)
    assert summary["achieved_gflops"]["train_ours_xla"] == pytest.approx(4.0 * 2.0)  # 4 GFLOP x 2 steps/s
    assert summary["share_of_peak"]["train_ours_xla"] == pytest.approx(8.0 / 20.0)
    assert summary["share_of_peak_by_round"]["train_ours_xla"]["by_round"] == pytest.approx([0.5, 0.8, 0.25])
    assert summary["figure_s"] == 31.0 and not summary["figure_target_met"]
    assert "figure_jax_s" not in summary
    with_jax = bench.summarize(train, sample, peak, figure, _entry({0: [14.0]}))
    assert with_jax["figure_jax_s"] == 14.0 and with_jax["figure_jax_target_met"]
    assert with_jax["figure_s"] == 31.0 and "figure_jax" not in with_jax.get("jax_over_tf", {})


class _FakeWorker:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def round(self, n):
        self.log.append(self.name)
        return {"times_s": [0.1] * n}


def test_rounds_reverse_order_and_slow_workers_take_the_middle_round():
    log = []
    workers = {name: _FakeWorker(name, log) for name in ("a", "b", "slow")}
    records, loads = bench.run_rounds(workers, 4, {"a": 2, "b": 1, "slow": 1}, once=("slow",), log=lambda m: None)
    assert log == ["a", "b", "b", "a", "a", "b", "slow", "b", "a"]  # round 2, the middle one, runs forward
    assert [rec["round"] for rec in records["slow"]] == [2] and len(loads) == 4
    assert [len(rec["times_s"]) for rec in records["a"]] == [2, 2, 2, 2]


def test_settings_round_trip_through_json():
    s = bench.BenchSettings.quick()
    assert bench.BenchSettings.from_dict(json.loads(json.dumps(dataclasses.asdict(s)))) == s


def test_a_subprocess_worker_speaks_the_line_protocol():
    """A real worker process: it sets up and replies, times rounds on request, reports a
    failure as an error (and stays usable), then reports its memory and exits cleanly."""
    worker = bench.SubprocessWorker("peak", bench.BenchSettings.quick(peak_size=64))
    try:
        info = worker.start()
        assert info["pid"] != os.getpid() and info["flops_per_call"] == 2 * 64**3
        record = worker.round(2)
        assert len(record["times_s"]) == 2 and record["start"] <= record["end"]
        with pytest.raises(RuntimeError, match="unknown request"):
            worker._request({"cmd": "bogus"})
        assert len(worker.round(1)["times_s"]) == 1
        memory = worker.finish()
        assert memory["peak_rss_mib"] >= memory["rss_baseline_mib"] > 0
        assert worker.proc.returncode == 0
    finally:
        worker.close()


def test_jax_rows_take_part_only_in_isolated_runs_with_a_jax_python():
    """The JAX workers need their own Python and backend, so a run in one process, or one
    without a JAX environment, has no JAX rows."""
    with_jax = bench.BenchSettings.quick(jax_python="/envs/jax/bin/python")
    assert "train_ours_jax" in bench.phase_names("train", with_jax, isolate=True)
    assert "sample_ours_pixel_jax" in bench.phase_names("sample", with_jax, isolate=True)
    assert bench.phase_names("figure", with_jax, isolate=True) == ["figure", "figure_jax"]
    for settings, isolate in ((with_jax, False), (bench.BenchSettings.quick(), True)):
        names = [name for part in bench.PARTS for name in bench.phase_names(part, settings, isolate)]
        assert not [name for name in names if name.endswith("_jax")]
    assert bench.phase_names("train", bench.BenchSettings(), True)[-1] == "peak"  # the peak runs with every phase


def test_a_jax_worker_is_launched_in_the_jax_python_under_the_jax_backend(monkeypatch):
    launched = []

    class _Popen:
        def __init__(self, command, env, **kwargs):
            launched.append((command, env))

    monkeypatch.setattr(bench.subprocess, "Popen", _Popen)
    settings = bench.BenchSettings.quick(jax_python="/envs/jax/bin/python")
    bench.SubprocessWorker("train_ours_jax", settings)
    bench.SubprocessWorker("train_ours_no_xla", settings)
    (jax_command, jax_env), (tf_command, tf_env) = launched
    assert jax_command[0] == "/envs/jax/bin/python" and jax_env["KERAS_BACKEND"] == "jax"
    assert tf_command[0] == sys.executable and tf_env["KERAS_BACKEND"] == "tensorflow"
    with pytest.raises(ValueError, match="jax_python"):
        bench.SubprocessWorker("sample_ours_pixel_jax", bench.BenchSettings.quick())


def test_summary_compares_the_jax_rows_with_the_same_code_under_tensorflow():
    """JAX / TF is a speed ratio per round (> 1: JAX faster), against the TensorFlow row that
    runs as `train-inverter` does by default (no XLA) and the same sampler."""
    train = {
        "train_tfp": _entry({0: [1.0], 1: [1.0], 2: [1.0]}),
        "train_ours_xla": _entry({0: [0.1], 1: [0.1], 2: [0.1]}),  # not the peer: must not enter the ratio
        "train_ours_no_xla": _entry({0: [1.0], 1: [2.0], 2: [1.0]}),
        "train_ours_jax": _entry({0: [0.5], 1: [0.5], 2: [2.0]}),
    }
    sample = {"sample_tfp": _entry({1: [60.0]}), "sample_ours_pixel": _entry({0: [2.0], 1: [3.0], 2: [2.0]}),
              "sample_ours_pixel_jax": _entry({0: [4.0], 1: [1.0], 2: [2.0]})}
    summary = bench.summarize(train, sample)
    assert summary["jax_over_tf"]["train_ours_jax"]["by_round"] == pytest.approx([2.0, 4.0, 0.5])
    assert summary["jax_over_tf"]["train_ours_jax"]["median"] == pytest.approx(2.0)
    assert summary["jax_over_tf"]["sample_ours_pixel_jax"]["by_round"] == pytest.approx([0.5, 3.0, 1.0])
    assert summary["train_ratio"]["train_ours_jax"]["by_round"] == pytest.approx([2.0, 2.0, 0.5])  # vs TFP
    assert summary["sample_ratio"]["sample_ours_pixel_jax"]["by_round"] == pytest.approx([15.0, 60.0, 30.0])
    assert "jax_over_tf" not in bench.summarize({k: train[k] for k in ("train_tfp", "train_ours_no_xla")}, {})
