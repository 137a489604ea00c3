"""The factor INN and its loss: its blocks, the pair likelihood on hand cases and against the joint
Gaussian it stands for, and the saved round trip. Its exact inverse, log-determinant and config are
checked with every other flow layer's in tests/inverters/cinn/test_flows.py."""

import math

import keras
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from invkeras.factors.loss import pair_nll
from invkeras.factors.network import FactorINN, build_factor_model

BLOCKS = (["shape", "size", "residual"], [2, 1, 3])


def _randomise(layer, scale=0.2, seed=0):
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_variables:
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype(variable.dtype))


def _inn():
    rng = np.random.default_rng(0)
    r = (rng.normal(size=(256, 6)) * [1, 5, 0.1, 3, 0, 7] + [3, -2, 10, 0, 1, 4]).astype("float32")  # one dead dim
    inn = FactorINN(6, *BLOCKS, num_blocks=3, hidden=8, seed=2)
    inn.initialize(r)
    _randomise(inn)
    return inn, r


def test_the_factor_inn_takes_no_condition():
    inn, r = _inn()
    with pytest.raises(ValueError, match="unconditional"):
        inn(r, r)
    with pytest.raises(ValueError, match="unconditional"):
        inn.inverse(r, r)


def test_blocks_are_contiguous_and_must_add_up():
    inn, _ = _inn()
    assert (inn.block_slice("shape"), inn.block_slice("size"), inn.block_slice("residual")) == (
        slice(0, 2), slice(2, 3), slice(3, 6))
    shared = keras.ops.convert_to_numpy(inn.shared_dims(np.array([[1, 0, 0], [0, 1, 0]], np.float32)))
    np.testing.assert_array_equal(shared, [[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    with pytest.raises(ValueError, match="add up"):
        FactorINN(6, ["a", "residual"], [2, 3])


def test_the_pair_nll_on_hand_cases():
    rho, d = 0.975, 3
    zero = np.zeros((1, d), np.float32)
    none, first = np.zeros((1, d), np.float32), np.array([[1, 0, 0]], np.float32)
    log_det = np.zeros(1, np.float32)

    def nll(z_a, z_b, shared, logdet_a=log_det, logdet_b=log_det):
        return float(keras.ops.convert_to_numpy(pair_nll(z_a, z_b, logdet_a, logdet_b, shared, rho))[0])

    # nothing shared, both at the mode: two standard normals, d * log(2 pi) / 2 each
    assert nll(zero, zero, none) == pytest.approx(d * math.log(2 * math.pi), rel=1e-6)
    # a shared dimension with z_b = rho z_a: its conditional term is only the normaliser
    z_a, z_b = np.array([[2.0, 0, 0]], np.float32), np.array([[2 * rho, 0, 0]], np.float32)
    expected = 0.5 * 4 + d * math.log(2 * math.pi) + 0.5 * math.log(1 - rho**2)
    assert nll(z_a, z_b, first) == pytest.approx(expected, rel=1e-5)
    # the same z_b unshared pays its full square, and log-dets enter with a minus sign
    assert nll(z_a, z_b, none) == pytest.approx(0.5 * 4 + 0.5 * (2 * rho) ** 2 + d * math.log(2 * math.pi), rel=1e-5)
    assert nll(z_a, z_b, none, np.ones(1, np.float32), 2 * np.ones(1, np.float32)) == pytest.approx(
        nll(z_a, z_b, none) - 3, rel=1e-6)


def test_the_pair_nll_is_the_joint_gaussian_with_correlated_shared_blocks():
    rng = np.random.default_rng(0)
    rho, d, n = 0.9, 4, 6
    z_a, z_b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    shared = (rng.random((n, d)) < 0.5).astype(np.float64)
    got = keras.ops.convert_to_numpy(pair_nll(z_a, z_b, np.zeros(n), np.zeros(n), shared, rho))
    for i in range(n):
        cov = np.block([[np.eye(d), np.diag(rho * shared[i])], [np.diag(rho * shared[i]), np.eye(d)]])
        expected = -multivariate_normal(np.zeros(2 * d), cov).logpdf(np.concatenate([z_a[i], z_b[i]]))
        assert got[i] == pytest.approx(expected, rel=1e-6)
    swapped = keras.ops.convert_to_numpy(pair_nll(z_b, z_a, np.zeros(n), np.zeros(n), shared, rho))
    np.testing.assert_allclose(swapped, got, rtol=1e-6)  # symmetric in the pair


def test_the_training_model_is_the_pair_nll_per_dimension_and_saves(tmp_path):
    model = build_factor_model(6, *BLOCKS, num_blocks=2, hidden=8, rho=0.8, noise=0.1, learning_rate=1e-3)
    rng = np.random.default_rng(1)
    r = rng.normal(size=(64, 6)).astype(np.float32)
    model.inn.initialize(r)
    _randomise(model.inn)
    inputs = {"a": r[:8], "b": r[8:16], "shared": np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1]]}
    z_a, ld_a = model.inn(inputs["a"])
    z_b, ld_b = model.inn(inputs["b"])
    expected = pair_nll(z_a, z_b, ld_a, ld_b, model.inn.shared_dims(inputs["shared"]), 0.8) / 12
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(inputs)), keras.ops.convert_to_numpy(expected),
                               rtol=1e-5)
    noisy = keras.ops.convert_to_numpy(model(inputs, training=True))  # dequantisation noise only in training
    assert np.abs(noisy - keras.ops.convert_to_numpy(expected)).max() > 1e-4
    path = tmp_path / "factor_inn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    assert loaded.inn.block_names == BLOCKS[0] and loaded.rho == 0.8
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs)), keras.ops.convert_to_numpy(model(inputs)),
                               rtol=1e-6)
