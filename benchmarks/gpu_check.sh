#!/usr/bin/env bash
# The GPU check (README, "Scaling up"): how fast invkeras trains and samples on a CUDA GPU with JAX.
#
#   benchmarks/gpu_check.sh prepare       on the CPU machine, beforehand: the bundle
#   benchmarks/gpu_check.sh run [ARGS]    on the GPU machine: one call of at most 8 minutes
#   make gpu-check                        = run (GPU_CHECK_ARGS="..." passes ARGS)
#
# The GPU machine needs Python with JAX (CUDA), numpy and scipy (JAX's own dependencies); it
# needs no TensorFlow, no keras and no network. `prepare` writes into the bundle
# (GPU_CHECK_BUNDLE, default gpu-check/bundle):
#   mnist_fc3.npz   x and fc3 h of MNIST (conv classifier trained here under JAX):
#                   train 20,000 / validation 1,000 / test 2,000, x_<split>, h_<split>, y_<split>
#   wheels/         keras, tfp-nightly and the rest of what .venv-jax has that JAX does not
#                   bring, pinned to .venv-jax's versions, plus invkeras's own wheel
#   requirements.txt  what `run` installs from wheels/ (with --no-index)
# `run` installs the bundle's wheels (with --no-index --no-deps: requirements.txt is the
# whole closure) into a folder of the output folder (GPU_CHECK_OUT, default gpu-check/out)
# that goes in front of $PYTHON's path, so the machine's environment, wherever its JAX lives
# (system, venv, conda), is left as it was; then it runs benchmarks/gpu_check.py with $PYTHON
# (default python3) under `timeout` (GPU_CHECK_TIMEOUT, default 480 s). ARGS go to
# gpu_check.py: --tiny (the CPU test), --budget S, --throughput-steps N, --batch-size B,
# --fc3-steps N. GPU_CHECK_NO_INSTALL=1 uses $PYTHON as it is (the CPU test does).
# The wheels are for this machine's Python and platform; for another Python on the GPU
# machine, set GPU_PYTHON_VERSION=3.12 (say) when preparing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="${GPU_CHECK_BUNDLE:-$ROOT/gpu-check/bundle}"
OUT="${GPU_CHECK_OUT:-$ROOT/gpu-check/out}"
COMMAND="${1:-run}"
[ $# -gt 0 ] && shift

prepare() {
    local py="${PREPARE_PYTHON:-$ROOT/.venv-jax/bin/python}"
    local mnist="${MNIST_DIR:-$ROOT/../shared/data/mnist-full}"
    local workspace="$ROOT/gpu-check/workspace"
    mkdir -p "$BUNDLE/wheels"
    if [ ! -f "$BUNDLE/mnist_fc3.npz" ]; then
        # Under JAX and without TensorFlow: the idx source and extraction are NumPy throughout.
        KERAS_BACKEND=jax "$py" -m invkeras.cli train-classifier --dataset "idx:$mnist" --arch conv --epochs 3 \
            --workspace "$workspace"
        KERAS_BACKEND=jax "$py" -m invkeras.cli extract --dataset "idx:$mnist" --arch conv --layer fc3 \
            --limit 20000 --workspace "$workspace"
        KERAS_BACKEND=jax "$py" - "$workspace" "$mnist" "$BUNDLE/mnist_fc3.npz" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from invkeras import artifacts
from invkeras.data.features import open_features

workspace, mnist, out = sys.argv[1:]
root = artifacts.run_dir(f"idx:{mnist}", "conv", workspace) / "features" / "fc3"
sizes = {"train": 20000, "validation": 1000, "test": 2000}
arrays = {}
for split, n in sizes.items():
    data = open_features(root / split).load_all(n)
    for key in ("x", "h", "y"):
        arrays[f"{key}_{split}"] = data[key]
np.savez_compressed(out, **arrays)
print(f"wrote {out}: " + ", ".join(f"{split} {len(arrays['x_' + split])}" for split in sizes))
EOF
    fi
    # Everything .venv-jax has, at its versions, but what JAX itself brings (and test tools,
    # and matplotlib, which only the reports use).
    "$ROOT/.venv-jax/bin/python" -m pip freeze --exclude-editable \
        | grep -viE '^(jax|jaxlib|jax-cuda.*|numpy|scipy|ml.dtypes|opt.einsum|pytest|iniconfig|pluggy|matplotlib|contourpy|cycler|fonttools|kiwisolver|pyparsing|python-dateutil|invkeras)==' \
        > "$BUNDLE/requirements.txt"
    local version="${GPU_PYTHON_VERSION:-$("$ROOT/.venv-jax/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
    "$ROOT/.venv-jax/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any -d "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt"
    "$ROOT/.venv-jax/bin/python" -m pip wheel --quiet --no-deps -w "$BUNDLE/wheels" "$ROOT"
    echo "bundle ready: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1))"
}

run() {
    local py="${PYTHON:-python3}"
    mkdir -p "$OUT"
    if [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
        rm -rf "$OUT/site"
        "$py" -m pip install --quiet --no-index --no-deps --find-links "$BUNDLE/wheels" --target "$OUT/site" \
            -r "$BUNDLE/requirements.txt" "$BUNDLE"/wheels/invkeras-*.whl
        export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    cd "$OUT"  # not the checkout: the installed invkeras is the one measured
    KERAS_BACKEND=jax timeout --signal=INT --kill-after=15 "${GPU_CHECK_TIMEOUT:-480}" \
        "$py" "$ROOT/benchmarks/gpu_check.py" --features "$BUNDLE/mnist_fc3.npz" --out "$OUT" "$@" \
        2>&1 | tee "$OUT/gpu_check.log"
    return "${PIPESTATUS[0]}"
}

case "$COMMAND" in
    prepare) prepare ;;
    run) run "$@" ;;
    *) echo "usage: $0 prepare | run [--tiny] [--budget S] [--throughput-steps N] [--batch-size B]" >&2; exit 2 ;;
esac
