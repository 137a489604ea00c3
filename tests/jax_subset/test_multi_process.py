"""A multi-host JAX run, played by two processes on this machine.

Each process is configured as a host of a real multi-host run is: the KERAS_DISTRIBUTION_*
variables name the coordinator (localhost here), the process count and the process's rank;
`initialize_multi_host` (what the CLI calls when those variables are set) joins the run through
`jax.distributed.initialize`; `--strategy data-parallel` then spans both processes' devices, and
the shared training loop (`invkeras.training.train`) hands each process its half of every global
batch (`process_share`). Cross-process collectives on CPU go through gloo over TCP.

One PixelCNN++ step in both processes must leave both with the weights of the one-process step on
the same global batch.

What one machine cannot show: a network between hosts (here the coordinator and gloo talk over
the loopback interface), devices other than CPUs (the all-reduce of GPUs and TPUs is NCCL or the
TPU interconnect, not gloo), and a filesystem the hosts do not share (both processes here read
the same files; each writes its own backup).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jax_helpers import REPO_ROOT

PROCESSES = 2
GLOBAL_BATCH = 8

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from invkeras.distribution import enable_compilation_cache, get_strategy, initialize_multi_host, strategy_scope

    enable_compilation_cache()
    initialize_multi_host()  # from KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES, _PROCESS_ID, as the CLI does

    import jax, keras, numpy as np
    from invkeras.inverters.pixelcnn.likelihoods import NegativeLogLikelihood
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn
    from invkeras.training import CompiledModelTrainee, Schedule, train

    out = Path(sys.argv[1])
    data = dict(np.load(out.parent / "data.npz"))
    start = list(np.load(out.parent / "start.npz").values())
    net = PixelCNNConfig.from_scale("tiny", image_shape=(8, 8, 1), conditioning="vector", h_shape=(6,))
    strategy = get_strategy("data-parallel")
    with strategy_scope(strategy):
        model = build_pixelcnn(net)
        model.set_weights(start)
        model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True,
                      loss=NegativeLogLikelihood(likelihood=net.likelihood, num_channels=1))
        trainee = CompiledModelTrainee(model, inputs=lambda b: {"x": b["x"], "h": b["h"]}, targets=lambda b: b["x"],
                                       validate=lambda: {})
        outcome = train(trainee, data, Schedule(max_steps=1, steps_per_checkpoint=1, patience=1,
                                                batch_size=int(sys.argv[2]), seed=3),
                        out_dir=out.parent / f"backup-{jax.process_index()}", settings={}, what="multi-process",
                        progress=False)
    variable = model.trainable_variables[0].value
    np.savez(out, *model.get_weights())
    print("RESULT " + json.dumps({
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "devices": len(strategy.device_mesh.devices.flatten()), "local_devices": jax.local_device_count(),
        "weight_devices": len(variable.sharding.device_set), "steps": outcome.steps,
        "collectives": jax.config.jax_cpu_collectives_implementation,
    }))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_pixelcnn(data, first):
    """The model both processes train, with the starting weights they load: data-dependent
    weight-norm initialisation, done once here so that every process (and the reference step)
    starts from the same weights."""
    import keras

    from invkeras.inverters.pixelcnn.likelihoods import NegativeLogLikelihood
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn
    from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

    keras.utils.set_random_seed(0)
    net = PixelCNNConfig.from_scale("tiny", image_shape=(8, 8, 1), conditioning="vector", h_shape=(6,))
    model = build_pixelcnn(net)
    initialize_weight_norm(model, {k: v[first] for k, v in data.items()})
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True,
                  loss=NegativeLogLikelihood(likelihood=net.likelihood, num_channels=1))
    return model


def test_two_processes_take_the_step_one_process_takes_on_the_same_global_batch(tmp_path):
    from invkeras.training import BatchOrder

    rng = np.random.default_rng(0)
    data = {"x": rng.integers(0, 256, (16, 8, 8, 1)).astype("float32"), "h": rng.normal(size=(16, 6)).astype("float32")}
    np.savez(tmp_path / "data.npz", **data)
    first = BatchOrder(len(data["x"]), GLOBAL_BATCH, 3).indices(0)  # the global batch of step 0
    model = _tiny_pixelcnn(data, first)
    start = model.get_weights()
    np.savez(tmp_path / "start.npz", *start)

    port = _free_port()
    procs = []
    for rank in range(PROCESSES):
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
               "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
               "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": str(PROCESSES), "KERAS_DISTRIBUTION_PROCESS_ID": str(rank)}
        log = open(tmp_path / f"process-{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"weights-{rank}.npz"),
                                        str(GLOBAL_BATCH)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=str(REPO_ROOT)), log))
    results = []
    try:
        # The reference, while they run: the same step in this process, on one device, on the
        # whole global batch.
        model.train_on_batch({k: data[k][first] for k in ("x", "h")}, data["x"][first])
        reference = model.get_weights()
        # One process failing leaves the other waiting for it: stop at the first failure.
        deadline = time.monotonic() + 600
        while any(proc.poll() is None for proc, _ in procs) and time.monotonic() < deadline:
            if any(proc.poll() not in (None, 0) for proc, _ in procs):
                break
            time.sleep(0.5)
        for rank, (proc, log) in enumerate(procs):
            log.close()
            output = (tmp_path / f"process-{rank}.log").read_text()
            lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                pytest.fail(f"process {rank} failed (rc {proc.returncode}):\n{output[-4000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()

    assert [r["process_index"] for r in results] == list(range(PROCESSES))
    for result in results:
        assert result["process_count"] == PROCESSES and result["local_devices"] == 1
        # The mesh and every weight span both processes' devices: one data-parallel run, not two.
        assert result["devices"] == result["weight_devices"] == PROCESSES
        assert result["steps"] == 1 and result["collectives"] == "gloo"

    moved = max(float(np.abs(a - b).max()) for a, b in zip(reference, start))
    assert moved > 0.1, moved  # the step moved the weights far more than the tolerance below
    for rank in range(PROCESSES):
        weights = list(np.load(tmp_path / f"weights-{rank}.npz").values())
        assert len(weights) == len(reference)
        for a, b in zip(weights, reference):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"process {rank}")
