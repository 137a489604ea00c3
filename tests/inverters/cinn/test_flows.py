"""The flow layers: every `FlowLayer` subclass in invkeras inverts exactly, reports the
log-determinant of its Jacobian, and round-trips through its config under its registered
name; then ActNorm's data init, the permutation's seed and the saved model round trip.

The checks run over every subclass found, so a new flow layer is tested as soon as it has an
example in `EXAMPLES` (and fails until it has one). Weights are randomised, so that no
coupling is the identity."""

from __future__ import annotations

import contextlib
import inspect

import keras
import numpy as np
import pytest

from invkeras.factors.network import FactorINN
from invkeras.inverters.cinn.flows import ActNorm, DoubleCoupling, FixedPermutation, FlowLayer
from invkeras.inverters.cinn.network import ConditionalINN, build_latent_flow

# The names old saved inverters and factor INNs refer to: changing one stops them loading.
SAVED_NAMES = {"invkeras>ActNorm", "invkeras>DoubleCoupling", "invkeras>FixedPermutation", "invkeras>ConditionalINN",
               "invkeras>FactorINN"}


def _randomise(layer, scale=0.3, seed=0):
    """Random weights everywhere (the couplings start as the identity otherwise)."""
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_variables:
        variable.assign(rng.normal(scale=scale, size=variable.shape).astype(variable.dtype))


def _normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(keras.config.floatx())


def _h(h_shape, n, seed=1):
    return None if h_shape is None else _normal(n, *h_shape, seed=seed)


@contextlib.contextmanager
def _float64():
    """Layers built inside compute in float64, so a Jacobian comparison can be tight."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")


# --- one small example of each flow layer: () -> (layer, x, condition) ----------------------


def _actnorm():
    layer = ActNorm(5)
    _randomise(layer)
    return layer, _normal(6, 5), None


def _coupling(cond_dim):
    def make():
        layer = DoubleCoupling(5, cond_dim=cond_dim, hidden=8)
        _randomise(layer)
        return layer, _normal(6, 5), _normal(6, cond_dim, seed=1) if cond_dim else None

    make.__name__ = f"coupling_cond{cond_dim}"
    return make


def _permutation():
    return FixedPermutation(5, seed=4), _normal(6, 5), None


def _conditional_inn(h_shape):
    def make():
        flow = ConditionalINN(5, h_shape, num_blocks=3, hidden=8, embed_dim=4, seed=1)
        z, h = _normal(6, 5), _h(h_shape, 6)
        flow.initialize(z, h)
        _randomise(flow, scale=0.2)
        return flow, z, h

    make.__name__ = "cinn_" + ("unconditional" if h_shape is None else "x".join(map(str, h_shape)))
    return make


def _factor_inn():
    r = (_normal(64, 6) * [1, 5, 0.1, 3, 0, 7] + [3, -2, 10, 0, 1, 4]).astype(keras.config.floatx())  # a dead dim
    inn = FactorINN(6, ["shape", "size", "residual"], [2, 1, 3], num_blocks=3, hidden=8, seed=2)
    inn.initialize(r)
    _randomise(inn, scale=0.2)
    return inn, r[:6], None


EXAMPLES = {
    ActNorm: [_actnorm],
    DoubleCoupling: [_coupling(3), _coupling(0)],
    FixedPermutation: [_permutation],
    ConditionalINN: [_conditional_inn((3,)), _conditional_inn((6, 6, 2)), _conditional_inn(None)],
    FactorINN: [_factor_inn],
}


def flow_layer_classes() -> list[type]:
    """Every concrete FlowLayer subclass that invkeras defines."""
    found, pending = set(), [FlowLayer]
    while pending:
        for cls in pending.pop().__subclasses__():
            pending.append(cls)
            if cls.__module__.startswith("invkeras.") and not inspect.isabstract(cls):
                found.add(cls)
    return sorted(found, key=lambda cls: cls.__name__)


CASES = [pytest.param(cls, make, id=f"{cls.__name__}-{make.__name__.strip('_') if make else 'no-example'}")
         for cls in flow_layer_classes() for make in EXAMPLES.get(cls, [None])]


def _example(cls, make):
    if make is None:
        pytest.fail(f"{cls.__name__} is a FlowLayer without an example: add one to EXAMPLES in {__name__}")
    layer, x, condition = make()
    assert type(layer) is cls
    return layer, x, condition


# --- the checks every flow layer passes ------------------------------------------------------


def assert_inverts(layer, x, condition, atol=1e-5):
    """inverse(forward(x)) == x, and forward really moves x."""
    y, _ = layer(x, condition)
    y = keras.ops.convert_to_numpy(y)
    assert np.abs(y - x).max() > 1e-2, "the example's layer is the identity: the check would prove nothing"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.inverse(y, condition)), x, atol=atol, rtol=0)


def assert_log_det_is_the_jacobians(layer, x, condition):
    """The reported log-det equals log|det dy/dx| of TensorFlow's autodiff Jacobian, per example."""
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y, log_det = layer(xt, condition)
    jacobian = tape.batch_jacobian(y, xt).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), np.linalg.slogdet(jacobian)[1], atol=1e-8)


def assert_config_round_trips(layer, x, condition):
    """`get_config` holds exactly `__init__`'s arguments; serialising by the registered name and
    loading the weights back gives a layer that computes the same."""
    base_keys = set(keras.layers.Layer(name="base").get_config())
    init_args = {name for name, p in inspect.signature(type(layer).__init__).parameters.items()
                 if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert set(layer.get_config()) - base_keys == init_args
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"invkeras>{type(layer).__name__}"
    clone = keras.saving.deserialize_keras_object(serialized)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone.set_weights(layer.get_weights())
    for a, b in zip(clone(x, condition), layer(x, condition)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6)


@pytest.mark.parametrize("cls, make", CASES)
def test_a_flow_layer_inverts_to_1e_5(cls, make):
    assert_inverts(*_example(cls, make))


@pytest.mark.parametrize("cls, make", CASES)
def test_a_flow_layers_log_det_equals_the_autodiff_jacobian(cls, make):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Jacobian is taken with TensorFlow's GradientTape")
    with _float64():
        layer, x, condition = _example(cls, make)
        assert {v.dtype for v in layer.variables} <= {"float64"} and x.dtype == np.float64
        assert_log_det_is_the_jacobians(layer, x, condition)


@pytest.mark.parametrize("cls, make", CASES)
def test_a_flow_layer_round_trips_through_its_config(cls, make):
    assert_config_round_trips(*_example(cls, make))


def test_every_flow_layer_is_found_and_keeps_the_name_saved_files_use():
    classes = flow_layer_classes()
    assert set(EXAMPLES) <= set(classes)  # no example of a layer that is gone or no longer a FlowLayer
    assert {keras.saving.get_registered_name(cls) for cls in classes} >= SAVED_NAMES


class _LogDetOffByOne(ActNorm):
    """A deliberately broken flow layer: right map, log-det one nat too high."""

    def forward_and_log_det(self, x, condition=None):
        y, log_det = super().forward_and_log_det(x, condition)
        return y, log_det + 1.0


def test_the_log_det_check_catches_a_log_det_off_by_a_constant():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Jacobian is taken with TensorFlow's GradientTape")
    with _float64():
        broken, x = _LogDetOffByOne(5), _normal(6, 5)
        _randomise(broken)
        assert_inverts(broken, x, None)  # its map is right ...
        with pytest.raises(AssertionError):
            assert_log_det_is_the_jacobians(broken, x, None)  # ... its log-det is not
    assert _LogDetOffByOne not in flow_layer_classes()  # test-only: not one of invkeras' layers


def test_a_flow_layer_must_define_its_forward_map_and_inverse():
    class NoInverse(FlowLayer):
        def forward_and_log_det(self, x, condition=None):
            return x, keras.ops.zeros_like(x[:, 0])

    with pytest.raises(TypeError, match="inverse"):
        NoInverse()


# --- the conditional INN and its pieces ------------------------------------------------------


@pytest.mark.parametrize("h_shape", [(7,), (12, 12, 3)], ids=["vector", "spatial"])
def test_a_deep_conditional_inn_inverts_to_1e_5_and_depends_on_h(h_shape):
    flow = ConditionalINN(9, h_shape, num_blocks=6, hidden=16, embed_dim=8, seed=3)
    z, h = _normal(64, 9), _h(h_shape, 64)
    flow.initialize(z, h)
    _randomise(flow, scale=0.1)
    assert_inverts(flow, z, h)
    v = keras.ops.convert_to_numpy(flow(z, h)[0])
    other = keras.ops.convert_to_numpy(flow(z, _h(h_shape, 64, seed=2))[0])
    assert np.abs(other - v).max() > 1e-2


def test_the_permutation_is_fixed_by_its_seed():
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
