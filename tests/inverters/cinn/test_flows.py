"""The conditional INN's pieces: exact inverse, exact log-determinant, ActNorm's data init, and
the saved model round trip. Weights are randomised so that no coupling is the identity."""

import keras
import numpy as np
import pytest

from invkeras.inverters.cinn.flows import ActNorm, DoubleCoupling, FixedPermutation
from invkeras.inverters.cinn.network import ConditionalINN, build_latent_flow


def _randomise(layer, scale=0.3, seed=0):
    """Random weights everywhere (the couplings start as the identity otherwise)."""
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_variables:
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype("float32"))


def _h(h_shape, n, seed=1):
    return None if h_shape is None else np.random.default_rng(seed).normal(size=(n, *h_shape)).astype("float32")


@pytest.mark.parametrize("h_shape", [(7,), (12, 12, 3), None], ids=["vector", "spatial", "unconditional"])
def test_inverse_recovers_z_to_1e_5(h_shape):
    flow = ConditionalINN(9, h_shape, num_blocks=6, hidden=16, embed_dim=8, seed=3)
    z = np.random.default_rng(0).normal(size=(64, 9)).astype("float32")
    h = _h(h_shape, 64)
    flow.initialize(z, h)
    _randomise(flow, scale=0.1)
    v, _ = flow(z, h)
    v = keras.ops.convert_to_numpy(v)
    assert np.abs(v - z).max() > 0.1  # the flow really transforms z
    back = keras.ops.convert_to_numpy(flow.inverse(v, h))
    np.testing.assert_allclose(back, z, atol=1e-5, rtol=0)
    if h_shape is not None:  # and it depends on h
        other = keras.ops.convert_to_numpy(flow(z, _h(h_shape, 64, seed=2))[0])
        assert np.abs(other - v).max() > 1e-2


@pytest.mark.parametrize("h_shape", [(3,), (6, 6, 2), None], ids=["vector", "spatial", "unconditional"])
def test_log_det_equals_the_autodiff_jacobian(h_shape):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Jacobian is taken with TensorFlow's GradientTape")
    import tensorflow as tf

    keras.config.set_floatx("float64")  # float64 throughout, so the comparison can be tight
    keras.config.set_dtype_policy("float64")
    try:
        flow = ConditionalINN(5, h_shape, num_blocks=3, hidden=8, embed_dim=4, seed=1)
        z = np.random.default_rng(0).normal(size=(6, 5))
        h = None if h_shape is None else _h(h_shape, 6).astype("float64")
        flow.initialize(z, h)
        _randomise(flow, scale=0.2)
        zt = tf.constant(z)
        with tf.GradientTape() as tape:
            tape.watch(zt)
            v, logdet = flow(zt, h)
        jacobian = tape.batch_jacobian(v, zt).numpy()
        assert {v.dtype for v in flow.variables} == {"float64"}
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    expected = np.linalg.slogdet(jacobian)[1]
    assert np.abs(expected).max() > 0.1  # not volume-preserving: the test has teeth
    np.testing.assert_allclose(logdet.numpy(), expected, atol=1e-8)


def test_each_piece_inverts_and_the_permutation_is_fixed_by_its_seed():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype("float32")
    c = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    coupling = DoubleCoupling(7, cond_dim=3, hidden=8)
    _randomise(coupling)
    for layer, cond in ((coupling, c), (FixedPermutation(7, seed=4), None), (ActNorm(7), None)):
        y, _ = layer(x, cond)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.inverse(y, cond)), x, atol=1e-5)
    assert (FixedPermutation(7, seed=4).order == FixedPermutation(7, seed=4).order).all()
    assert not (FixedPermutation(7, seed=4).order == FixedPermutation(7, seed=5).order).all()


def test_actnorm_data_init_gives_zero_mean_unit_variance_in_every_block():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(500, 6)) * [1, 5, 0.1, 3, 2, 7] + [3, -2, 10, 0, 1, 4]).astype("float32")
    h = rng.normal(size=(500, 4)).astype("float32")
    flow = ConditionalINN(6, (4,), num_blocks=3, hidden=8, embed_dim=4, seed=0)
    _randomise(flow)  # so the couplings change the statistics between ActNorms
    flow.initialize(z, h)
    c = flow.embed(h)
    x = z
    checked = 0
    for layer in flow.flow_layers:
        y = keras.ops.convert_to_numpy(layer(x, c)[0])
        if isinstance(layer, ActNorm):
            np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
            np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
            checked += 1
        x = y
    assert checked == 3
    # and the log-det of an ActNorm is the sum of its log-scales, per example
    layer = flow.flow_layers[0]
    _, logdet = layer(z, None)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logdet), np.log(1 / z.std(0)).sum(), rtol=1e-4)


def test_saved_model_loads_back_with_the_same_nll(tmp_path):
    rng = np.random.default_rng(0)
    model = build_latent_flow(6, (4, 4, 2), num_blocks=2, hidden=8, embed_dim=4, learning_rate=1e-3)
    z, h = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 4, 4, 2)).astype("float32")
    model.flow.initialize(z, h)
    _randomise(model.flow)
    path = tmp_path / "flow.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded({"z": z, "h": h})),
                               keras.ops.convert_to_numpy(model({"z": z, "h": h})), atol=1e-6)
