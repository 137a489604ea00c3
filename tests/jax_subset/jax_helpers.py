"""Running invkeras in a fresh process under JAX, optionally with TensorFlow unimportable."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Put in front of sys.meta_path by `sitecustomize` in a subprocess: any import of TensorFlow,
# TFDS or tf-keras fails, and each attempt is logged with the file whose import statement made
# it. Libraries probe for TensorFlow and get on without it (TFP's JAX substrate in
# try/except, keras's LazyModule.available); an attempt made by invkeras's own code is a
# failure of the test.
BLOCKER = textwrap.dedent(
    """
    import os, sys, traceback

    class _BlockTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith(("tensorflow.", "tensorflow_datasets", "tf_keras")):
                frames = [f.filename for f in traceback.extract_stack()
                          if "importlib" not in f.filename and f.filename != __file__]
                with open(os.environ["INVKERAS_TF_ATTEMPTS"], "a") as log:
                    log.write(f"{name}\\t{frames[-1] if frames else '?'}\\n")
                raise ImportError(f"{name} is blocked in this test (TensorFlow not installed)")
            return None

    sys.meta_path.insert(0, _BlockTensorFlow())
    """
)


def run_python(args, *, env_extra=None, block_tensorflow=False, tmp_path=None, timeout=900):
    """Run `python ARGS` in a fresh process under the JAX backend; returns the CompletedProcess.
    With `block_tensorflow`, TensorFlow cannot be imported there, and the attempts are in
    `tmp_path / "tf_attempts.txt"`."""
    import subprocess

    env = {**os.environ, "KERAS_BACKEND": "jax", **(env_extra or {})}
    if block_tensorflow:
        hook = tmp_path / "block_tf"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(BLOCKER)
        env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["INVKERAS_TF_ATTEMPTS"] = str(tmp_path / "tf_attempts.txt")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(REPO_ROOT))


def invkeras_cli(*args, **kwargs):
    """`invkeras ARGS` in a fresh process (see `run_python`); fails the test on a non-zero exit."""
    proc = run_python(["-m", "invkeras.cli", *map(str, args)], **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"invkeras {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc


def unexpected_tf_imports(tmp_path) -> list[str]:
    """Attempts to import TensorFlow made by invkeras's own code (not by a library's probe)."""
    log = tmp_path / "tf_attempts.txt"
    if not log.exists():
        return []
    package = str(REPO_ROOT / "invkeras")
    lines = [line.split("\t") for line in log.read_text().splitlines() if line]
    return sorted({f"{name} from {where}" for name, where in lines if where.startswith(package)})
