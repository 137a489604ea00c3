"""MI estimation: the report's arithmetic, and the science on data whose H(x) and I(x;h) are known.

On the procedural dataset H(x) = log 6912 exactly, and for a representation h built from
the generative factors I(x;h) = H(h) is known too. A correct, normalised, causal model can
only *over*-estimate H(x|h), so H(x) - H*(x|h) must never exceed the true I(x;h).
"""

import math

import numpy as np
import pytest

from invkeras.data import procedural
from invkeras.errors import InvkerasError
from invkeras.analyses.mi import LayerEstimate, build_report, held_out_nll
from invkeras.train_inverter import InverterConfig, train_inverter


def estimate(layer, values):
    return LayerEstimate(layer, f"/inv/{layer}", np.asarray(values, dtype=float), 1.0 / (4 * math.log(2)))


def test_report_arithmetic_with_paired_differences():
    conv1, fc3, none = estimate("conv1", [10, 12, 14]), estimate("fc3", [20, 21, 25]), estimate("none", [30, 30, 33])
    report = build_report([conv1, fc3], split="test", dataset="d", unconditional=none, reference_layer="conv1",
                          entropy_nats=40.0)
    rows = {r["layer"]: r for r in report.rows}
    assert rows["fc3"]["H*(x|h) nats"] == pytest.approx(22.0)
    assert rows["fc3"]["NCE nats"] == pytest.approx(-22.0)
    assert rows["fc3"]["NCE - NCE(ref)"] == pytest.approx(-10.0)  # fc3 keeps 10 nats less than conv1
    assert rows["fc3"]["se (paired)"] == pytest.approx(np.std([10, 9, 11], ddof=1) / math.sqrt(3))
    assert rows["conv1"]["NCE - NCE(ref)"] == 0
    assert rows["conv1"]["H*(x) - H*(x|h) [estimate]"] == pytest.approx(19.0)
    assert rows["none"]["H*(x) - H*(x|h) [estimate]"] is None
    assert rows["fc3"]["H(x) - H*(x|h) [lower bound on I]"] == pytest.approx(18.0)
    assert rows["fc3"]["bits/dim"] == pytest.approx(22.0 / (4 * math.log(2)))
    assert "H*(x|h) nats" in report.to_csv().splitlines()[0]


def test_report_rejects_mismatched_inputs():
    with pytest.raises(InvkerasError, match="reference"):
        build_report([estimate("fc3", [1, 2])], split="test", dataset="d", reference_layer="conv9")
    with pytest.raises(InvkerasError, match="different numbers"):
        build_report([estimate("a", [1, 2]), estimate("b", [1, 2, 3])], split="test", dataset="d")


@pytest.fixture(scope="module")
def known_information_inverters(tmp_path_factory):
    """Inverters on the same images for h = x itself (I = H(x)), h = the shape one-hot
    (I = log 4) and no h (I = 0). Same seed, data and order: they differ only in h."""
    root = tmp_path_factory.mktemp("known")
    x, _, factors = procedural.load_split_with_factors("train")
    x, factors = x[:3300], factors[:3300]  # the inverter carves 10% for validation
    representations = {
        "identity": (x.astype(np.float32) / 255.0, procedural.ENTROPY_NATS),
        "shape": (np.eye(4, dtype=np.float32)[factors[:, 0]], math.log(4)),
    }
    common = dict(scale="tiny", max_steps=300, steps_per_checkpoint=100, batch_size=16, learning_rate=3e-3,
                  jit_compile="false", seed=0)
    out = {}
    for name, (h, information) in representations.items():
        np.savez(root / f"{name}.npz", x=x, h=h)
        result = train_inverter(InverterConfig(features=str(root / f"{name}.npz"), layer=name, out=str(root / name), **common))
        out[name] = (result, information)
    # The unconditional model reads the same file's images and ignores h.
    result = train_inverter(InverterConfig(features=str(root / "shape.npz"), layer="none", out=str(root / "none"), **common))
    out["none"] = (result, 0.0)
    return out


def test_informative_h_beats_the_unconditional_model(known_information_inverters):
    identity = known_information_inverters["identity"][0].validation
    unconditional = known_information_inverters["none"][0].validation
    margin = unconditional["nll_nats"] - identity["nll_nats"]
    assert margin > 10.0 and margin > 5 * math.hypot(identity["se_nats"], unconditional["se_nats"])


@pytest.mark.parametrize("name", ["identity", "shape", "none"])
def test_bound_never_exceeds_the_true_information(known_information_inverters, name):
    result, true_information = known_information_inverters[name]
    bound = procedural.ENTROPY_NATS - result.validation["nll_nats"]
    assert bound <= true_information


def test_conditional_model_starts_identical_to_the_unconditional_one():
    """What makes the paired comparisons above fair: h's projections start at zero."""
    import keras

    from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn

    x = np.random.default_rng(0).integers(0, 256, (2, 20, 20, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    unconditional = build_pixelcnn(PixelCNNConfig.from_scale("tiny", (20, 20, 1)))
    keras.utils.set_random_seed(0)
    conditional = build_pixelcnn(PixelCNNConfig.from_scale("tiny", (20, 20, 1), conditioning="vector", h_shape=(7,)))
    np.testing.assert_array_equal(
        np.asarray(unconditional({"x": x})), np.asarray(conditional({"x": x, "h": np.ones((2, 7), "float32")}))
    )


def test_labelled_rows_compare_inverters_of_one_layer_paired(known_information_inverters, tmp_path):
    """Rows named by label (as for one layer across architectures), with paired differences to a label."""
    from invkeras.analyses.mi import estimate_mi

    identity = known_information_inverters["identity"][0].model_path
    shape = known_information_inverters["shape"][0].model_path
    report, path = estimate_mi([identity, shape], split="validation", labels=["a/h", "b/h"], reference_layer="a/h",
                               out=tmp_path / "mi.json")
    rows = {r["layer"]: r for r in report.rows}
    assert list(rows) == ["a/h", "b/h"]
    each = {label: held_out_nll(p, split="validation").nll_nats for label, p in (("a/h", identity), ("b/h", shape))}
    assert rows["b/h"]["NCE - NCE(ref)"] == pytest.approx(float(np.mean(each["a/h"] - each["b/h"])), rel=1e-5)
    assert rows["b/h"]["NCE - NCE(ref)"] < 0  # the shape alone says less about x than x itself
    assert path.exists()
    with pytest.raises(InvkerasError, match="distinct label"):
        estimate_mi([identity, shape], split="validation", labels=["same", "same"], out=tmp_path / "x.json")
