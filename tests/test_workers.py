"""Worker processes: they run their entry point on their payload, and die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from invkeras.workers import last_line, start_worker, stop_worker

ENTRY = """
import json, os, sys, time
from pathlib import Path

def write_pid_and_wait(parent, payload_path):
    payload = json.loads(Path(payload_path).read_text())
    Path(payload["pid_file"]).write_text(str(os.getpid()))
    print(f"worker of {parent} started", flush=True)
    time.sleep(payload["seconds"])
    return payload["exit_code"]
"""


def _entry_module(tmp_path):
    (tmp_path / "entry_module.py").write_text(textwrap.dedent(ENTRY))
    return {"PYTHONPATH": str(tmp_path)}


def _alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for(path, seconds=60.0):
    deadline = time.time() + seconds
    while not path.exists() or not path.read_text():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return int(path.read_text())


def test_a_worker_runs_its_entry_point_and_returns_its_exit_code_with_its_output_in_the_log(tmp_path):
    env = _entry_module(tmp_path)
    payload = tmp_path / "payload.json"
    payload.write_text(f'{{"pid_file": "{tmp_path / "pid"}", "seconds": 0, "exit_code": 3}}')
    log = tmp_path / "logs" / "worker.log"
    process = start_worker("entry_module:write_pid_and_wait", payload, log=log, env=env, banner="worker 1")
    assert process.wait(timeout=60) == 3
    assert _wait_for(tmp_path / "pid") == process.pid
    text = log.read_text()
    assert "=== " in text and "worker 1 ===" in text
    assert last_line(log) == f"worker of {os.getpid()} started"
    assert last_line(log, width=10) == "worker of…"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_when_the_process_that_started_it_is_killed(tmp_path):
    """A parent (itself a process) starts a long worker and is killed with SIGKILL: the worker
    must not outlive it, or it would keep writing behind a rerun."""
    env = _entry_module(tmp_path)
    payload = tmp_path / "payload.json"
    payload.write_text(f'{{"pid_file": "{tmp_path / "pid"}", "seconds": 300, "exit_code": 0}}')
    parent_code = textwrap.dedent(f"""
        import time
        from invkeras.workers import start_worker
        start_worker("entry_module:write_pid_and_wait", {str(payload)!r}, log={str(tmp_path / "w.log")!r},
                     env={env!r})
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        worker = _wait_for(tmp_path / "pid")
        assert _alive(worker)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and _alive(worker):
            time.sleep(0.1)
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_stopping_a_worker_ends_it(tmp_path):
    env = _entry_module(tmp_path)
    payload = tmp_path / "payload.json"
    payload.write_text(f'{{"pid_file": "{tmp_path / "pid"}", "seconds": 300, "exit_code": 0}}')
    process = start_worker("entry_module:write_pid_and_wait", payload, log=tmp_path / "w.log", env=env)
    _wait_for(tmp_path / "pid")
    stop_worker(process, timeout=10)
    assert process.poll() is not None
