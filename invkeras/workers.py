"""Worker processes on this machine that die with the process that started them.

Both the recipe runner's local executor (one process per step) and `inspect` (one process
per lane) start fresh Python processes that train for minutes. If the parent is killed (a
Ctrl-C, kill -9, a closed terminal), an orphan would keep training and writing behind a
rerun. So a worker is started with `python -c` running a few lines that, before anything
slow (TensorFlow) is imported, ask Linux to kill it when its parent dies
(PR_SET_PDEATHSIG), check that the parent is still the one that started it, and only then
import the entry point. Where PR_SET_PDEATHSIG does not exist (macOS), the entry point calls
`exit_with_parent`, which polls for the parent instead.

An entry point is a function `module:function(parent_pid, payload_path) -> exit code`; the
payload is a JSON file it reads. Its output goes to a log the parent can show the last line
of (`last_line`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

_BOOTSTRAP = """\
import ctypes, importlib, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)
module, _, function = sys.argv[2].partition(":")
sys.exit(getattr(importlib.import_module(module), function)(int(sys.argv[1]), sys.argv[3]))
"""


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that hold a worker's TensorFlow (and OpenMP) to `threads` threads."""
    return {"OMP_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads),
            "TF_NUM_INTEROP_THREADS": str(min(2, threads))}


def start_worker(entry: str, payload_path: Path | str, *, log: Path, env: Mapping[str, str] | None = None,
                 banner: str = "") -> subprocess.Popen:
    """Start `entry` ("module:function") on `payload_path` in a fresh Python process that dies
    with this one; its output is appended to `log`, after a line `=== <time> <banner> ===`."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        if banner:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {banner} ===\n")
            out.flush()
        return subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), entry, str(payload_path)],
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop_worker(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a worker that still runs, and kill it if it does not end within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def exit_with_parent(parent: int) -> None:
    """In a worker: where PR_SET_PDEATHSIG does not exist (macOS), poll for the parent and exit
    when it is gone."""
    if sys.platform.startswith("linux"):
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(70)

    threading.Thread(target=watch, daemon=True).start()


def last_line(log: Path, width: int = 70) -> str:
    """The last non-empty line of a log, cut to `width`, for a progress display."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"
