"""Running recipe steps at once: the dependency graph, worker processes, Ray, failures and kills.

The slow tests share one small run (module fixture `killed_then_resumed`): `invkeras run
--parallel 2` is SIGKILLed as soon as its second step has started, then run again. What a
worker costs is mostly its TensorFlow import, so the recipe has four steps and no more.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.recipes import load_recipe, run_recipe
from invkeras.recipes.executors import LocalExecutor, make_executor, rebuild_step, step_payload
from invkeras.recipes.runner import step_dependencies

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# --- the graph (no step runs) ---------------------------------------------------------------


PIPELINE = """
name: pipeline
dataset: procedural
workspace: {workspace}
scale: tiny
steps:
  classifier: {{command: train-classifier, epochs: 3}}
  features: {{command: extract, layers: [conv1, fc3]}}
  inverter_conv1: {{command: train-inverter, layer: conv1}}
  inverter_fc3: {{command: train-inverter, layer: fc3}}
  inverter_unconditional: {{command: train-inverter, layer: none}}
  decoder_fc3: {{command: train-inverter, kind: mse, layer: fc3}}
  samples: {{command: sample, layers: [conv1]}}
  samples_fc3_beside_mse: {{command: sample, layers: [fc3], reconstruction: mse}}
  samples_unconditional: {{command: sample, layers: [none]}}
  information: {{command: estimate-mi, layers: [conv1, fc3]}}
"""


def test_a_pipelines_graph_waits_only_for_what_each_step_reads(tmp_path):
    recipe = load_recipe(write(tmp_path / "pipeline.yaml", PIPELINE.format(workspace=tmp_path / "ws")))
    assert step_dependencies(recipe) == {
        "classifier": [],
        "features": ["classifier"],
        "inverter_conv1": ["features"],
        "inverter_fc3": ["features"],
        "inverter_unconditional": [],  # reads the dataset only: it trains beside the classifier
        "decoder_fc3": ["features"],
        # each grid waits for its own model only, not for the long unconditional one
        "samples": ["inverter_conv1"],
        "samples_fc3_beside_mse": ["inverter_fc3", "decoder_fc3"],
        "samples_unconditional": ["inverter_unconditional"],
        "information": ["inverter_conv1", "inverter_fc3", "inverter_unconditional"],
    }


def test_inverters_that_extract_their_own_features_take_turns(tmp_path):
    """Without an extract step the first inverter of a layer extracts it and the second waits;
    once whole features are on disk they train together."""
    path = write(tmp_path / "r.yaml", f"""
        name: g
        workspace: {tmp_path / 'ws'}
        steps:
          clf: {{command: train-classifier}}
          partial: {{command: extract, layers: [fc3], limit: 10}}
          pixelcnn: {{command: train-inverter, layer: fc3}}
          mse: {{command: train-inverter, kind: mse, layer: fc3}}
          logits: {{command: train-inverter, kind: mse, layer: logits, features: {tmp_path / 'mine'}}}
          again: {{command: train-classifier}}
    """)
    waits = step_dependencies(load_recipe(path))
    # a limited extraction does not stand in for whole splits: pixelcnn extracts again (after it)
    assert waits["pixelcnn"] == ["partial"] and waits["mse"] == ["pixelcnn"]
    assert waits["logits"] == []  # given features: it reads nothing any step writes
    # Rewriting the classifier waits for everything that reads it: partial, pixelcnn and mse,
    # of which only the last is listed (it waits for the other two).
    assert waits["again"] == ["mse"]

    ws = tmp_path / "ws/procedural/conv/features/fc3"
    for split in ("train", "validation", "test"):  # whole features on disk, as a finished extract leaves them
        manifest = ws / split / "manifest.json"
        artifacts.write_json_atomic(manifest, {})
        artifacts.write_metadata(manifest, kind="features", config={"limit": None})
    path = write(tmp_path / "r2.yaml", f"""
        name: g
        workspace: {tmp_path / 'ws'}
        steps:
          pixelcnn: {{command: train-inverter, layer: fc3}}
          mse: {{command: train-inverter, kind: mse, layer: fc3}}
    """)
    assert step_dependencies(load_recipe(path)) == {"pixelcnn": [], "mse": []}


def test_a_step_whose_command_declares_no_paths_waits_for_all_before_it_and_all_after_wait_for_it(tmp_path):
    from pydantic import BaseModel

    from invkeras.commands import Command, register_command
    from invkeras.recipes.schema import Recipe

    class Plugin(BaseModel):
        command: str = "plugin-step"

    @register_command
    class PluginStep(Command):  # no `access`: ordered against every other step
        name = "plugin-step"
        step_schema = Plugin

    steps = load_recipe(write(tmp_path / "r.yaml", f"""
        name: g
        workspace: {tmp_path}
        steps:
          a: {{command: train-classifier, arch: conv}}
          b: {{command: train-classifier, arch: fc}}
          c: {{command: train-classifier, arch: conv-gpool}}
    """)).steps
    recipe = Recipe.model_construct(name="g", workspace=str(tmp_path),
                                    steps={"a": steps["a"], "b": steps["b"], "x": Plugin(), "c": steps["c"]})
    assert step_dependencies(recipe) == {"a": [], "b": [], "x": ["a", "b"], "c": ["x"]}


def test_every_step_of_every_recipe_travels_to_a_worker_unchanged():
    for path in sorted((REPO / "recipes").rglob("*.yaml")):
        for overrides in ([], ["scale=small"]):
            for name, step in load_recipe(path, overrides, allow_outside_workspace=True).steps.items():
                again = rebuild_step(step_payload(name, step, Path("x.log"))["step"])
                assert type(again) is type(step) and again == step, (path.name, name)


@pytest.mark.parametrize("kwargs, message", [
    (dict(executor="slurm"), r"--executor slurm: choose from local, ray"),
    (dict(parallel=0), r"--parallel 0: expected at least 1"),
    (dict(parallel=2, address="auto"), r"--address auto: only used with --executor ray"),
    (dict(cpus_per_step=0), r"--cpus-per-step 0: expected at least 1"),
])
def test_bad_executor_options_are_one_line(kwargs, message):
    with pytest.raises(InvkerasError, match=message):
        make_executor(**kwargs)


def test_the_plain_run_stays_in_process_and_ray_missing_is_one_line(monkeypatch):
    assert make_executor() is None and make_executor(parallel=1) is None
    assert isinstance(make_executor(parallel=2), LocalExecutor)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(InvkerasError, match=r"Ray is not installed; install it with pip install -e \"\.\[cluster\]\""):
        make_executor("ray")


def test_workers_get_a_share_of_the_cores_and_one_gpu_each(tmp_path, monkeypatch):
    """Slot i gets GPU i mod G; with more workers than GPUs, memory grows as needed (no worker
    runs here: Popen only records what it was asked to start)."""
    import invkeras.recipes.executors as executors
    import invkeras.workers as workers

    started = []

    class Recorded:
        def __init__(self, args, env, **kwargs):
            started.append(env)

    monkeypatch.setattr(workers.subprocess, "Popen", Recorded)
    monkeypatch.setattr(executors, "available_cores", lambda: 8)
    executor = LocalExecutor(3, gpus=["4", "7"])
    executor._open(SimpleNamespace(workspace=str(tmp_path), name="r"))
    try:
        for slot in range(3):
            executor._start({"name": "s", "log": str(tmp_path / "s.log")}, slot)
    finally:
        executor._close()
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["4", "7", "4"]
    assert all(env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == "2" for env in started)  # 8 // 3
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for env in started)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert executors.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executors.visible_gpus() == []


# --- real runs ------------------------------------------------------------------------------


RECIPE = """
    name: tiny-parallel
    dataset: procedural
    workspace: {ws}
    steps:
      clf: {{command: train-classifier, epochs: 1, train_examples: 256, batch_size: 64}}
      feats: {{command: extract, layers: [fc3, logits], limit: 96}}
      dec_fc3: {{command: train-inverter, kind: mse, layer: fc3, features: {features}/fc3, max_steps: 4,
                 steps_per_checkpoint: 2, filters: 4, eval_examples: 16}}
      dec_logits: {{command: train-inverter, kind: mse, layer: logits, features: {features}/logits, max_steps: 4,
                    steps_per_checkpoint: 2, filters: 4, eval_examples: 16}}
"""


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _worker_pid(log: Path) -> int | None:
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("invkeras: step ") and " in process " in line:
            return int(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """`invkeras run --parallel 2`, SIGKILLed once its first step is done and the second has
    started, then run again to the end (in this process, with 2 workers)."""
    tmp = tmp_path_factory.mktemp("parallel")
    ws = tmp / "ws"
    path = write(tmp / "tiny.yaml", RECIPE.format(ws=ws, features=ws / "procedural/conv/features"))
    model = ws / "procedural/conv/classifier/model.keras"
    logs = ws / "recipes/tiny-parallel.logs"
    started = time.monotonic()
    with open(tmp / "first.out", "w") as out:
        parent = subprocess.Popen([sys.executable, "-m", "invkeras.cli", "run", str(path), "--parallel", "2"],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        worker = None
        while worker is None:
            assert parent.poll() is None, (tmp / "first.out").read_text()
            assert time.monotonic() - started < 900, "the first step did not finish in time"
            worker = _worker_pid(logs / "feats.log")
            time.sleep(0.1)
        assert artifacts.is_complete(model)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
    clf_stamp = model.stat().st_mtime_ns
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphan_alive = _alive(worker)
    results = run_recipe(load_recipe(path), source=path, executor=LocalExecutor(2))
    return dict(ws=ws, path=path, model=model, clf_stamp=clf_stamp, orphan_alive=orphan_alive, logs=logs,
                results={r.name: r for r in results})


@pytest.mark.slow
def test_a_killed_parallel_run_resumes_without_redoing_finished_steps(killed_then_resumed):
    run = killed_then_resumed
    assert not run["orphan_alive"], "a worker outlived the killed `invkeras run`"
    results = run["results"]
    assert results["clf"].status == "skipped" and run["model"].stat().st_mtime_ns == run["clf_stamp"]
    assert results["feats"].status in ("ran", "skipped")  # killed mid-extraction, or just after it
    assert results["dec_fc3"].status == results["dec_logits"].status == "ran"
    for name in ("dec_fc3", "dec_logits"):
        model = run["ws"] / f"procedural/conv/inverters/mse/{name[4:]}/inverter.keras"
        assert artifacts.is_complete(model)
    assert artifacts.is_complete(run["ws"] / "recipes/tiny-parallel.json")
    assert not (run["logs"] / ".workers").exists()  # what the killed run left there is cleared
    # A third run finds everything done.
    again = run_recipe(load_recipe(run["path"]), source=run["path"], executor=LocalExecutor(2))
    assert [r.status for r in again] == ["skipped"] * 4


@pytest.mark.slow
def test_a_parallel_run_redoes_the_steps_after_one_that_ran_again(killed_then_resumed, tmp_path):
    """A copy of the finished workspace is finished too; once the features are marked as
    extracted again (a run killed just after), both decoders train again, and nothing else."""
    ws = tmp_path / "ws"
    shutil.copytree(killed_then_resumed["ws"], ws)
    path = write(tmp_path / "tiny.yaml", RECIPE.format(ws=ws, features=ws / "procedural/conv/features"))
    assert [r.status for r in run_recipe(load_recipe(path), source=path, executor=LocalExecutor(2))] == ["skipped"] * 4
    record = ws / "recipes/tiny-parallel.steps/feats.json"
    older = json.loads(record.read_text()) if record.exists() else {}  # none if killed just after it
    record.write_text(json.dumps({**older, "run": "a later run"}))
    results = {r.name: r.status for r in run_recipe(load_recipe(path), source=path, executor=LocalExecutor(2))}
    assert results == {"clf": "skipped", "feats": "skipped", "dec_fc3": "ran", "dec_logits": "ran"}


@pytest.mark.slow
def test_independent_steps_ran_at_once_each_with_its_own_log(killed_then_resumed):
    results = killed_then_resumed["results"]
    a, b = results["dec_fc3"], results["dec_logits"]
    assert max(a.started, b.started) < min(a.started + a.seconds, b.started + b.seconds)  # overlapping
    for result in (a, b):
        log = Path(result.log).read_text()
        assert f"step {result.name}: worker" in log and "1 TensorFlow thread(s)" in log  # 2 cores / 2 workers
        assert f"invkeras: step {result.name} done in" in log
        other = "dec_logits" if result.name == "dec_fc3" else "dec_fc3"
        assert f"step {other}" not in log
    # The killed run's log was appended to, not replaced.
    feats = (killed_then_resumed["logs"] / "feats.log").read_text()
    assert feats.count("=== ") == (2 if results["feats"].status == "ran" else 1)


def _die_once_after_the_first_checkpoint_of_fc3():
    """A Ray worker's setup hook (run as each worker process starts): the first worker to save
    a checkpoint of the fc3 decoder SIGKILLs itself right after it, as a node's OOM killer or
    a lost machine would, and leaves a marker so that the retried task runs to its end."""
    import os
    import signal
    from pathlib import Path

    from invkeras import training

    marker = Path(os.environ["INVKERAS_TEST_KILL_MARKER"])
    save = training.Backup.save

    def save_then_die(self, trainee, progress, *args, **kwargs):
        save(self, trainee, progress, *args, **kwargs)
        if self.directory.parent.name == "fc3" and not marker.exists():
            marker.write_text(f"{os.getpid()} {progress['step']}")
            os.kill(os.getpid(), signal.SIGKILL)

    training.Backup.save = save_then_die


def _inverter_weights(ws: Path, layer: str) -> list:
    import keras

    model = keras.saving.load_model(ws / f"procedural/conv/inverters/mse/{layer}/inverter.keras", compile=False)
    return model.get_weights()


@pytest.mark.slow
def test_a_ray_task_whose_worker_is_killed_is_retried_and_ends_as_a_serial_run_does(killed_then_resumed, tmp_path,
                                                                                  monkeypatch):
    """A local Ray instance (2 CPUs) runs the two decoder steps as tasks; the fc3 decoder's
    worker process is SIGKILLed after its first checkpoint. Ray retries the task in a fresh
    worker, which resumes from that checkpoint, and both decoders end with the weights the
    same steps get run one after the other in this process."""
    import numpy as np
    import ray
    from ray import cloudpickle

    from invkeras.recipes.executors import RayExecutor

    def workspace(name: str) -> Path:
        ws = tmp_path / name
        shutil.copytree(killed_then_resumed["ws"], ws)
        shutil.rmtree(ws / "procedural/conv/inverters")
        return write(tmp_path / f"{name}.yaml", RECIPE.format(ws=ws, features=ws / "procedural/conv/features"))

    serial_path, ray_path = workspace("serial"), workspace("ray")
    serial = {r.name: r for r in run_recipe(load_recipe(serial_path), source=serial_path)}
    assert [serial[n].status for n in ("clf", "feats", "dec_fc3", "dec_logits")] == ["skipped", "skipped",
                                                                                   "ran", "ran"]

    marker = tmp_path / "killed"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a new instance of the test's own, not a cluster named there
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the hook travels as code: workers cannot import this file
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": _die_once_after_the_first_checkpoint_of_fc3,
                              "env_vars": {"INVKERAS_TEST_KILL_MARKER": str(marker)}})
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    try:
        results = {r.name: r for r in run_recipe(load_recipe(ray_path), source=ray_path, executor=RayExecutor())}
        assert ray.is_initialized()  # the test's instance: the executor leaves it running
    finally:
        ray.shutdown()
    assert [results[n].status for n in ("clf", "feats", "dec_fc3", "dec_logits")] == ["skipped", "skipped",
                                                                                    "ran", "ran"]
    killed_pid, killed_at = map(int, marker.read_text().split())
    assert killed_at == 2 and not _alive(killed_pid)
    log = Path(results["dec_fc3"].log).read_text()
    assert log.count("step dec_fc3: Ray task on") == 2  # the killed attempt and the retry, in one log
    assert f"invkeras: step dec_fc3 (train-inverter) in process {killed_pid}" in log
    assert "resuming from step 2" in log and "invkeras: step dec_fc3 done in" in log
    assert Path(results["dec_logits"].log).read_text().count("Ray task on") == 1
    ray_ws, serial_ws = ray_path.parent / "ray", serial_path.parent / "serial"
    for layer in ("fc3", "logits"):
        assert artifacts.is_complete(ray_ws / f"procedural/conv/inverters/mse/{layer}/inverter.keras")
        for a, b in zip(_inverter_weights(ray_ws, layer), _inverter_weights(serial_ws, layer), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=layer)


@pytest.mark.slow
def test_a_failing_step_stops_what_waits_for_it_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from invkeras.cli import app

    ws = tmp_path / "ws"
    path = write(tmp_path / "broken.yaml", f"""
        name: broken
        workspace: {ws}
        steps:
          bad: {{command: extract, model: {tmp_path / 'missing.keras'}, layers: [fc3], out: {ws / 'feats'}}}
          after: {{command: train-inverter, kind: mse, layer: fc3, features: {ws / 'feats/fc3'}}}
    """)
    result = CliRunner().invoke(app, ["run", str(path), "--parallel", "2"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "step 'bad': --model" in errors[0] and "missing.keras: file not found" in errors[0]
    assert errors[0].endswith("; not run: after")
    log = ws / "recipes/broken.logs/bad.log"
    assert f"(log: {log})" in errors[0] and "file not found" in log.read_text()
    assert not (ws / "recipes/broken.logs/after.log").exists()
