"""Running several recipe steps at once: worker processes on this machine, or a Ray cluster.

`invkeras run RECIPE --parallel N` hands the steps to `LocalExecutor`: each step whose waits
(`runner.step_dependencies`) are over starts in a fresh Python process, at most N at a time.
A fresh process per step, rather than a pool of long-lived workers, costs one TensorFlow
import per step (seconds, against steps that take minutes to hours) and buys what matters
for long experiments: a step sees a clean Keras and TensorFlow state as it would from the
command line, its memory (GPU memory included) is returned when it ends, its thread count
and device are set before TensorFlow starts, and a crash (a segfault, the OOM killer) costs
that step only.

`--executor ray --address ADDR` hands the same steps to a Ray cluster (`RayExecutor`): one
task per step, holding one GPU where the cluster has GPUs, else `--cpus-per-step` CPUs.

Whatever the executor, the rules of a sequential run hold. A step whose outputs are complete
is skipped (checked when the step is about to start), long steps resume from their own
checkpoints, and every write is atomic, so a killed run is resumed by running it again. A
worker dies with the `invkeras run` that started it (`invkeras.workers`), so no orphan keeps
writing behind a rerun. Each step writes its output to its own log,
`<workspace>/recipes/<recipe>.logs/<step>.log` (appended to on a rerun); the terminal shows
one line per step as it starts and ends, and the last line of each running step's log. A
failed step stops the steps that wait for it, directly or not; the others run on, and the
run then ends with one line naming the failure, its log and the steps not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.commands import command_class
from invkeras.recipes.runner import StepResult, record_step_settings, step_dependencies, step_finished, step_outputs
from invkeras.recipes.schema import Recipe, step_model
from invkeras.workers import (available_cores, exit_with_parent, last_line, start_worker, stop_worker,
                              thread_environment)

EXECUTORS = ("local", "ray")
POLL_SECONDS = 0.5


class StepFailedError(InvkerasError):
    """One or more steps of a parallel run failed. Exit code 2 when every failure was bad
    input (an `InvkerasError` in the step), 1 when a step crashed or hit a bug."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# --- one step, wherever it runs ------------------------------------------------------------


def step_payload(name: str, step: BaseModel, log: Path) -> dict:
    """What a worker needs to run a step: its keys (a schema rebuilds it there), the working
    directory relative paths mean, and its log. Plain JSON, so any process can read it."""
    return {"name": name, "step": step.model_dump(mode="json"), "cwd": os.getcwd(), "log": str(log)}


def rebuild_step(raw: dict) -> BaseModel:
    """The step a payload stands for, validated again by its own schema."""
    return step_model(raw).model_validate(raw)


def limit_threads(threads: int | None) -> None:
    """Give TensorFlow `threads` threads for ops (intra-op) and at most two to run ops side by
    side (inter-op). The environment variables do it when set before TensorFlow starts (a
    local worker gets them from its parent); the calls cover a worker where TensorFlow was
    imported first, and may only fail once TensorFlow has run something. Under another Keras
    backend only OMP_NUM_THREADS, set by the parent, applies."""
    import keras

    if not threads or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:  # already initialised: the environment variables had to do it
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def execute_step(payload: dict) -> dict:
    """Run one step in this process and say how it went, never raising for the step's own
    failure: bad input is reported as the one-line message it already is, anything else as
    its first line, with the traceback printed to the step's log."""
    name = payload["name"]
    started = time.time()
    try:
        step = rebuild_step(payload["step"])
        print(f"invkeras: step {name} ({step.command}) in process {os.getpid()}", flush=True)
        summary = command_class(step.command).run(step)
    except InvkerasError as exc:
        print(f"invkeras: step {name} failed: {exc}", file=sys.stderr, flush=True)
        return {"status": "failed", "error": str(exc), "exit_code": exc.exit_code, "seconds": time.time() - started}
    except Exception as exc:  # a bug or a crash in a library: keep the traceback for the log
        traceback.print_exc()
        return {"status": "failed", "error": _one_line(exc), "exit_code": 1, "seconds": time.time() - started}
    print(f"invkeras: step {name} done in {time.time() - started:.1f} s: {summary}", flush=True)
    return {"status": "ran", "summary": summary, "seconds": time.time() - started}


def worker_main(parent: int, payload_path: str) -> int:
    """A local worker: run the step of `payload_path` and write its outcome beside it.
    The exit code is the one the same failure would give on the command line."""
    exit_with_parent(parent)
    payload = json.loads(Path(payload_path).read_text())
    os.chdir(payload["cwd"])
    limit_threads(payload.get("threads"))
    outcome = execute_step(payload)
    artifacts.write_json_atomic(payload["outcome"], outcome)
    return 0 if outcome["status"] == "ran" else outcome["exit_code"]


# --- the scheduler every executor shares ------------------------------------------------


@dataclass
class _Running:
    name: str
    handle: Any
    slot: int
    log: Path
    started: float
    task: Any = None  # its line in the progress display


class _Executor:
    """Start ready steps while there is room, collect finished ones, and keep the books.

    Subclasses say how a step starts (`_start`), how to ask whether it has finished
    (`_finished`: its outcome, or None while it runs) and how to stop one (`_stop`).
    """

    def __init__(self, *, console: Console | None = None, capacity: int = 1):
        self.console = console
        self.capacity = capacity

    # -- what subclasses provide --
    def _open(self, recipe: Recipe) -> None: ...
    def _close(self) -> None: ...
    def _describe(self) -> str: return ""
    def _start(self, payload: dict, slot: int) -> Any: raise NotImplementedError
    def _finished(self, handle: Any) -> dict | None: raise NotImplementedError
    def _stop(self, handle: Any) -> None: ...

    def run(self, recipe: Recipe, *, source: str | Path = "") -> list[StepResult]:
        from invkeras.progress import progress_bar

        console = self.console or Console()
        books = None
        try:
            self._open(recipe)
            books = _Books(self, recipe)
            console.print(f"[bold]parallel run[/bold]: {self._describe()}; step logs in {books.log_dir}/",
                          highlight=False)
            for name, waits in books.waits.items():
                if waits:
                    console.print(f"  {name} waits for {', '.join(waits)}", highlight=False, style="dim")
            with progress_bar(console) as bar:
                books.bar, books.overall = bar, bar.add_task(f"recipe {recipe.name}", total=len(recipe.steps))
                while books.pending or books.running:
                    books.start_ready()
                    if books.running:
                        time.sleep(POLL_SECONDS)
                        books.collect_finished()
        except BaseException:
            for entry in (books.running.values() if books else ()):  # Ctrl-C or a bug: workers go down with us
                self._stop(entry.handle)
            raise
        finally:
            self._close()
        books.raise_failures(source or recipe.name)
        return [books.results[name] for name in recipe.steps]


class _Books:
    """The state of one parallel run: which steps wait, run, are done or are stopped."""

    def __init__(self, executor: _Executor, recipe: Recipe):
        self.executor, self.recipe = executor, recipe
        self.waits = step_dependencies(recipe)
        self.log_dir = Path(recipe.workspace) / "recipes" / f"{recipe.name}.logs"
        self.pending = list(recipe.steps)  # in the recipe's order, which is also the order they start in
        self.running: dict[str, _Running] = {}
        self.done: set[str] = set()  # ran or skipped
        self.stopped: dict[str, str] = {}  # failed or not run -> the step that failed
        self.failures: list[tuple[str, dict, Path]] = []
        self.results: dict[str, StepResult] = {}
        self.bar = self.overall = None

    def _report(self, result: StepResult, style: str, detail: str) -> None:
        self.results[result.name] = result
        self.bar.advance(self.overall)
        self.bar.console.print(f"  [{style}]{result.status:>8}[/{style}] {result.name}  {detail}", highlight=False)

    def _outputs(self, name: str) -> list[str]:
        return [str(p) for p in step_outputs(self.recipe.steps[name])]

    def start_ready(self) -> None:
        """Settle every pending step that can be settled now: not run (it waits for a failed
        step), skipped (outputs complete) or started, while there is room; again until
        nothing changes, since a skip can make later steps ready."""
        changed = True
        while changed and len(self.running) < self.executor.capacity:
            changed = False
            for name in list(self.pending):
                command = self.recipe.steps[name].command
                cause = next((self.stopped[w] for w in self.waits[name] if w in self.stopped), None)
                if cause is None and not all(w in self.done for w in self.waits[name]):
                    continue
                self.pending.remove(name)
                changed = True
                outputs = self._outputs(name)
                if cause is not None:
                    self.stopped[name] = cause
                    self._report(StepResult(name, command, "not run", 0.0, f"'{cause}' failed", outputs),
                                 "yellow", f"(waits for '{cause}', which failed)")
                elif step_finished(self.recipe, name, outputs, self.waits[name]):
                    self.done.add(name)
                    self._report(StepResult(name, command, "skipped", 0.0, "outputs complete", outputs),
                                 "dim", "(outputs complete)")
                else:
                    self._start(name)
                    if len(self.running) >= self.executor.capacity:
                        break

    def _start(self, name: str) -> None:
        slot = min(set(range(self.executor.capacity)) - {r.slot for r in self.running.values()})
        log = self.log_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") + ".log")
        handle = self.executor._start(step_payload(name, self.recipe.steps[name], log), slot)
        entry = self.running[name] = _Running(name, handle, slot, log, time.time())
        entry.task = self.bar.add_task(f"  {name}", total=None, info="")
        self.bar.console.print(f"  [cyan]{'started':>8}[/cyan] {name}  (worker {slot + 1})", highlight=False)

    def collect_finished(self) -> None:
        for name, entry in list(self.running.items()):
            outcome = self.executor._finished(entry.handle)
            if outcome is None:
                self.bar.update(entry.task, info=last_line(entry.log))
                continue
            del self.running[name]
            self.bar.remove_task(entry.task)
            command, seconds = self.recipe.steps[name].command, time.time() - entry.started
            if outcome["status"] == "ran":
                record_step_settings(self.recipe, name, self.waits[name])
                self.done.add(name)
                self._report(StepResult(name, command, "ran", seconds, outcome["summary"], self._outputs(name),
                                        started=entry.started, log=str(entry.log)),
                             "green", f"{seconds:.1f} s  {outcome['summary']}")
            else:
                self.stopped[name] = name
                self.failures.append((name, outcome, entry.log))
                self._report(StepResult(name, command, "failed", seconds, outcome["error"], self._outputs(name),
                                        started=entry.started, log=str(entry.log)),
                             "red", f"{seconds:.1f} s  {outcome['error']}  (log: {entry.log})")

    def raise_failures(self, where: str | Path) -> None:
        """One line for the whole run: the first failure in full, then the others and the
        steps not run by name. Exit code 2 if every failure was bad input, else 1."""
        if not self.failures:
            return
        name, outcome, log = self.failures[0]
        others = [f[0] for f in self.failures[1:]]
        not_run = [n for n in self.recipe.steps if self.results[n].status == "not run"]
        text = f"recipe {where}: step '{name}': {outcome['error']} (log: {log})"
        text += f"; also failed: {', '.join(others)}" if others else ""
        text += f"; not run: {', '.join(not_run)}" if not_run else ""
        raise StepFailedError(text, 2 if all(f[1]["exit_code"] == 2 for f in self.failures) else 1)


# --- worker processes on this machine ------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs a worker may be given, as CUDA_VISIBLE_DEVICES names them: those it already
    lists, else those `nvidia-smi -L` lists. Asked without TensorFlow or JAX, since JAX would
    take most of a GPU's memory for this process just to count them."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() not in ("", "-1")]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


class LocalExecutor(_Executor):
    """N worker processes on this machine, one fresh process per step.

    Threads: each worker's TensorFlow gets the machine's cores divided among the N workers
    (at least 1), or `threads` each, so that N steps together do not oversubscribe the CPU.
    Devices: where GPUs are visible, worker slot i is given GPU i mod G alone
    (CUDA_VISIBLE_DEVICES), so N = G runs one step per GPU; with more workers than GPUs
    TensorFlow (or JAX) allocates GPU memory as it needs it, so that slots sharing a GPU fit.
    """

    def __init__(self, workers: int, *, threads: int | None = None, gpus: list[str] | None = None,
                 console: Console | None = None):
        super().__init__(console=console, capacity=workers)
        self.threads = threads or max(1, available_cores() // workers)
        self.gpus = gpus
        self._tmp: Path | None = None

    def _open(self, recipe: Recipe) -> None:
        if self.gpus is None:
            self.gpus = visible_gpus()
        # What parent and workers pass each other: beside the logs, so that a killed run
        # leaves nothing elsewhere; the next run clears it.
        self._tmp = Path(recipe.workspace) / "recipes" / f"{recipe.name}.logs" / ".workers"
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True)
        self._count = 0

    def _close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _describe(self) -> str:
        devices = f", GPU(s) {', '.join(self.gpus)} assigned round-robin" if self.gpus else ""
        return (f"{self.capacity} worker process(es), {self.threads} TensorFlow thread(s) each"
                f" of {available_cores()} core(s){devices}")

    def _start(self, payload: dict, slot: int) -> Any:
        env = thread_environment(self.threads)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
            if self.capacity > len(self.gpus):  # workers share a GPU: none may take all its memory
                env.update(TF_FORCE_GPU_ALLOW_GROWTH="true", XLA_PYTHON_CLIENT_PREALLOCATE="false")
        self._count += 1
        path = self._tmp / f"step-{self._count}.json"
        payload = {**payload, "threads": self.threads, "outcome": str(path.with_suffix(".outcome.json"))}
        path.write_text(json.dumps(payload))
        gpu = f", GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else ""
        process = start_worker("invkeras.recipes.executors:worker_main", path, log=Path(payload["log"]), env=env,
                               banner=f"step {payload['name']}: worker {slot + 1}, {self.threads} TensorFlow "
                                      f"thread(s){gpu}")
        return process, Path(payload["outcome"])

    def _finished(self, handle: Any) -> dict | None:
        process, outcome = handle
        code = process.poll()
        if code is None:
            return None
        if outcome.is_file():
            return json.loads(outcome.read_text())
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return {"status": "failed", "error": f"the worker process ended without a result ({how})", "exit_code": 1}

    def _stop(self, handle: Any) -> None:
        stop_worker(handle[0])


# --- a Ray cluster ---------------------------------------------------------------------


def _ray_step(payload: dict) -> dict:
    """A Ray task: run one step on whichever node Ray chose, its output going to the step's
    log in the shared workspace, and return its outcome (never raising for the step)."""
    import socket

    cwd = payload["cwd"]
    if not os.path.isdir(cwd):
        return {"status": "failed", "exit_code": 2,
                "error": f"the working directory {cwd} does not exist on Ray node {socket.gethostname()}: run "
                         "from a directory on the filesystem every node shares"}
    os.chdir(cwd)
    log = Path(payload["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} step {payload['name']}: Ray task on "
                  f"{socket.gethostname()}, {payload.get('threads') or 'all'} TensorFlow thread(s) ===\n")
        out.flush()
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1), os.dup2(out.fileno(), 2)
        try:
            limit_threads(payload.get("threads"))
            return execute_step(payload)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InvkerasError("--executor ray: Ray is not installed; install it with "
                            "pip install -e \".[cluster]\" (or pip install \"ray[default]\")") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a host:port nobody answers on: Ray itself would retry for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto` and other forms: Ray resolves them and fails quickly
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InvkerasError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


class RayExecutor(_Executor):
    """Each ready step becomes a Ray task holding one GPU when the cluster has GPUs, else
    `cpus_per_step` CPUs (TensorFlow then uses as many threads); Ray queues the tasks until
    a node has room, so `parallel` (at most this many tasks at once) is optional.

    Tasks run in a fresh worker process each (`max_calls=1`), for the reasons a local worker
    does. Paths are those of the machine that runs `invkeras run`: the workspace (and the
    directory it is run from, if the recipe's paths are relative) must be on a filesystem
    every node shares, e.g. `--set workspace=/shared/runs`. Ray retries a task whose worker
    or node died (not one whose step failed), which resumes the step from its checkpoints.
    """

    def __init__(self, address: str | None = None, *, parallel: int | None = None, cpus_per_step: int | None = None,
                 console: Console | None = None):
        super().__init__(console=console, capacity=parallel or 0)
        self.address = address
        self.cpus_per_step = cpus_per_step
        self._ray = _import_ray()
        self._started_ray = False
        self._options: dict = {}

    def _open(self, recipe: Recipe) -> None:
        ray = self._ray
        if not ray.is_initialized():
            local = self.address in (None, "", "local")
            if not local:
                _check_reachable(self.address)
            try:
                ray.init(address="local" if local else self.address, log_to_driver=False, logging_level="error",
                         include_dashboard=False if local else None)
            except Exception as exc:  # no cluster at `auto`, a refused client connection
                raise InvkerasError(f"--address {self.address or 'local'}: cannot reach a Ray cluster "
                                    f"({_one_line(exc)})") from None
            self._started_ray = True
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = self.cpus_per_step or 1
        self._options = {"num_gpus": 1, "num_cpus": cpus} if gpus else {"num_cpus": cpus}
        self._threads = self.cpus_per_step if gpus else cpus  # a GPU step keeps TensorFlow's own default
        if not self.capacity:
            self.capacity = len(recipe.steps)  # no cap of our own: Ray queues what does not fit
        self._task = ray.remote(max_calls=1)(_ray_step).options(**self._options)

    def _close(self) -> None:
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def _describe(self) -> str:
        resources = ", ".join(f"{k.replace('num_', '')} {v}" for k, v in self._options.items())
        return f"Ray tasks holding {resources} each, at most {self.capacity} at once"

    def _start(self, payload: dict, slot: int) -> Any:
        return self._task.remote({**payload, "threads": self._threads})

    def _finished(self, handle: Any) -> dict | None:
        ready, _ = self._ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return self._ray.get(handle)
        except Exception as exc:  # the worker or its node died and retries ran out
            return {"status": "failed", "error": f"the Ray task did not finish ({_one_line(exc)})", "exit_code": 1}

    def _stop(self, handle: Any) -> None:
        try:
            self._ray.cancel(handle, force=True)
        except Exception:
            pass


def make_executor(executor: str = "local", *, parallel: int | None = None, address: str | None = None,
                  cpus_per_step: int | None = None, console: Console | None = None) -> _Executor | None:
    """The executor the `run` command's options ask for; None for the plain in-process run
    (the default: one step at a time on this machine, with no thread count asked for)."""
    if executor not in EXECUTORS:
        raise InvkerasError(f"--executor {executor}: choose from {', '.join(EXECUTORS)}")
    if parallel is not None and parallel < 1:
        raise InvkerasError(f"--parallel {parallel}: expected at least 1 step at a time")
    if cpus_per_step is not None and cpus_per_step < 1:
        raise InvkerasError(f"--cpus-per-step {cpus_per_step}: expected at least 1")
    if executor == "ray":
        return RayExecutor(address, parallel=parallel, cpus_per_step=cpus_per_step, console=console)
    if address is not None:
        raise InvkerasError(f"--address {address}: only used with --executor ray")
    if (parallel or 1) == 1 and cpus_per_step is None:
        return None
    return LocalExecutor(parallel or 1, threads=cpus_per_step, console=console)
