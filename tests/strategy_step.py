"""One PixelCNN++ training step under a device strategy, shared by the tests that check a step
on several devices against the step on one (`tests/test_distribution.py` under TensorFlow,
`tests/jax_subset/test_data_parallel.py` under JAX). Those tests run it in a fresh process,
since devices must be set up before the backend starts, with this folder on PYTHONPATH."""

from __future__ import annotations

import keras
import numpy as np

from invkeras.distribution import strategy_scope
from invkeras.inverters.pixelcnn.likelihoods import NegativeLogLikelihood
from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn
from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm

NET = PixelCNNConfig.from_scale("tiny", image_shape=(8, 8, 1), conditioning="vector", h_shape=(6,))
_rng = np.random.default_rng(0)
BATCH = {"x": _rng.integers(0, 256, (8, 8, 8, 1)).astype("float32"), "h": _rng.normal(size=(8, 6)).astype("float32")}


def one_step(strategy, start=None, *, jit_compile: bool):
    """(weights before, weights after, loss, model) of one SGD step on BATCH under `strategy`,
    from `start` (else a fresh data-dependent initialisation)."""
    with strategy_scope(strategy):
        model = build_pixelcnn(NET)
        if start is None:
            initialize_weight_norm(model, BATCH)
        else:
            model.set_weights(start)
        before = model.get_weights()
        # Plain SGD, so the step is linear in the gradient (Adam's first step is lr * sign(g)).
        model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit_compile,
                      loss=NegativeLogLikelihood(likelihood=NET.likelihood, num_channels=1))
        loss = float(model.train_on_batch(BATCH, BATCH["x"]))
        return before, model.get_weights(), loss, model


def largest_differences(start, single, double) -> dict:
    """How far the one-device step moved the weights, and how far the two steps' weights differ."""
    return {"max_step": max(float(np.abs(a - b).max()) for a, b in zip(single, start)),
            "max_difference": max(float(np.abs(a - b).max()) for a, b in zip(single, double))}
