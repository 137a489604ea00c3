"""MI estimation: the report's arithmetic, and the science on data whose H(x) and I(x;h) are known.

On the procedural dataset H(x) = log 6912 exactly, and for a representation h built from
the generative factors I(x;h) = H(h) is known too. A correct, normalised, causal model can
only *over*-estimate H(x|h), so H(x) - H*(x|h) must never exceed the true I(x;h).

That alone is a weak check: a model trained briefly lies many nats above the truth, and a
broken likelihood hides in the slack. So the likelihood is also checked where the slack is
zero: a PixelCNN++ whose output is set by hand to a known distribution must estimate that
distribution's entropy to within `TOLERANCE_NATS`, and the same check is shown to fail for
the likelihood bugs it is there to catch (an unnormalised density, shifted edge bins, a
mixture whose weights are not normalised).
"""

import json
import math

import numpy as np
import pytest

from invkeras import artifacts
from invkeras.analyses.mi import EstimateMIConfig, LayerEstimate, build_report, default_out, estimate_mi, held_out_nll
from invkeras.data import procedural
from invkeras.errors import InvkerasError
from invkeras.inverters import config_for, inverter_class, load_inverter
from invkeras.inverters.data import fingerprint, held_out_inputs


TOLERANCE_NATS = 0.1  # how far above the truth an estimate may lie where the model *is* the truth


def assert_bound_is_tight(estimate_nats, truth_nats, *, se_nats=0.0, tolerance_nats=TOLERANCE_NATS):
    """The check every known-truth estimate must pass: a cross-entropy never lies below the true
    entropy (beyond three standard errors and float32 rounding), and, where a tolerance is given,
    not more than that above it."""
    floor = truth_nats - 3 * se_nats - 1e-3
    assert estimate_nats >= floor, (f"bound violated: H*(x|h) = {estimate_nats:.4f} nats is below the true "
                                    f"H(x|h) = {truth_nats:.4f} (floor {floor:.4f})")
    if tolerance_nats is not None:
        assert estimate_nats - truth_nats <= tolerance_nats, (
            f"estimate not tight: H*(x|h) = {estimate_nats:.4f} nats is {estimate_nats - truth_nats:.4f} above the "
            f"true H(x|h) = {truth_nats:.4f} (tolerance {tolerance_nats})")


def estimate(layer, values, prints=None):
    return LayerEstimate(layer, f"/inv/{layer}", np.asarray(values, dtype=float), 1.0 / (4 * math.log(2)), prints)


def train_pixelcnn(**options):
    return inverter_class("pixelcnn").train(config_for("pixelcnn", options), progress=False)


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
    # Nothing here is beyond what the numbers can mean: no flags, no notes.
    assert all(row["estimate exceeds H(x)"] is False for row in report.rows[:2])
    assert rows["none"]["estimate exceeds H(x)"] is None
    assert rows["conv1"]["lower bound vacuous"] is False and rows["none"]["lower bound vacuous"] is False
    assert all(row["note"] is None for row in report.rows)


def test_report_flags_estimates_the_numbers_cannot_support():
    """An estimate above the exact H(x) and a negative lower bound are flagged; the raw numbers stay."""
    conv1, fc3, none = estimate("conv1", [10, 12, 14]), estimate("fc3", [20, 21, 25]), estimate("none", [30, 30, 33])
    report = build_report([conv1, fc3], split="test", dataset="d", unconditional=none, entropy_nats=15.0)
    rows = {r["layer"]: r for r in report.rows}
    # conv1: H*(x) - H*(x|h) = 31 - 12 = 19 > H(x) = 15: impossible for I <= H(x).
    assert rows["conv1"]["H*(x) - H*(x|h) [estimate]"] == pytest.approx(19.0)
    assert rows["conv1"]["estimate exceeds H(x)"] is True
    assert "undertrained by at least 4.000 nats" in rows["conv1"]["note"]
    # fc3: 31 - 22 = 9 <= 15, fine; but its bound 15 - 22 = -7 says nothing.
    assert rows["fc3"]["estimate exceeds H(x)"] is False
    assert rows["fc3"]["H(x) - H*(x|h) [lower bound on I]"] == pytest.approx(-7.0)
    assert rows["fc3"]["lower bound vacuous"] is True and "says nothing" in rows["fc3"]["note"]
    assert rows["conv1"]["lower bound vacuous"] is False  # 15 - 12 = 3
    assert rows["none"]["lower bound vacuous"] is True and rows["none"]["estimate exceeds H(x)"] is None
    # Without an exact H(x) there is nothing to flag against.
    plain = build_report([conv1, fc3], split="test", dataset="d", unconditional=none)
    assert all(row["estimate exceeds H(x)"] is None and row["lower bound vacuous"] is None for row in plain.rows)
    header = report.to_csv().splitlines()[0]
    assert "estimate exceeds H(x)" in header and "lower bound vacuous" in header


def test_report_rejects_mismatched_inputs():
    with pytest.raises(InvkerasError, match="reference"):
        build_report([estimate("fc3", [1, 2])], split="test", dataset="d", reference_layer="conv9")
    with pytest.raises(InvkerasError, match="different numbers"):
        build_report([estimate("a", [1, 2]), estimate("b", [1, 2, 3])], split="test", dataset="d")


def test_report_refuses_estimates_of_different_images():
    """Equal counts are not enough: two datasets with the same --eval-examples must not share a table."""
    a, b = estimate("a", [1, 2], prints="f00d"), estimate("b", [1, 2], prints="beef")
    with pytest.raises(InvkerasError, match="different held-out images") as error:
        build_report([a, b], split="test", dataset="d")
    assert "\n" not in str(error.value) and "/inv/a" in str(error.value) and "/inv/b" in str(error.value)
    with pytest.raises(InvkerasError, match="different held-out images"):
        build_report([a], split="test", dataset="d", unconditional=estimate("none", [3, 4], prints="beef"))
    same = build_report([a, estimate("b", [3, 4], prints="f00d")], split="test", dataset="d")
    assert same.fingerprint == "f00d"


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
    common = dict(scale="tiny", max_steps=150, steps_per_checkpoint=75, batch_size=16, learning_rate=3e-3,
                  jit_compile="false", seed=0)
    out = {}
    for name, (h, information) in representations.items():
        np.savez(root / f"{name}.npz", x=x, h=h)
        result = train_pixelcnn(features=str(root / f"{name}.npz"), layer=name, out=str(root / name), **common)
        out[name] = (result, information)
    # The unconditional model reads the same file's images and ignores h.
    result = train_pixelcnn(features=str(root / "shape.npz"), layer="none", out=str(root / "none"), **common)
    out["none"] = (result, 0.0)
    return out


def test_informative_h_beats_the_unconditional_model(known_information_inverters):
    identity = known_information_inverters["identity"][0].validation
    unconditional = known_information_inverters["none"][0].validation
    margin = unconditional["nll_nats"] - identity["nll_nats"]
    assert margin > 10.0 and margin > 5 * math.hypot(identity["se_nats"], unconditional["se_nats"])


@pytest.mark.parametrize("name", ["identity", "shape", "none"])
def test_bound_never_exceeds_the_true_information(known_information_inverters, name):
    """H(x) - H*(x|h) <= I(x;h), i.e. H*(x|h) >= H(x|h). After 150 steps these models are far
    from tight (that is checked below, where the model is the truth); what a trained model adds
    is that training would exploit an unnormalised likelihood and push its NLL below the truth."""
    result, true_information = known_information_inverters[name]
    assert_bound_is_tight(result.validation["nll_nats"], procedural.ENTROPY_NATS - true_information,
                          se_nats=result.validation["se_nats"], tolerance_nats=None)


# --- the likelihood where the model is the truth ------------------------------------------------

KNOWN_IMAGE_SHAPE = (2, 2, 1)
# Each sub-pixel, independently: a two-component discretised logistic, both components against
# an edge, so the edge bins (0 takes all mass below, 255 all above) and their neighbours carry
# most of the probability and any mistake there shows.
KNOWN_WEIGHTS, KNOWN_LOCS, KNOWN_SCALES = (0.7, 0.3), (-0.985, 0.97), (0.02, 0.03)
LOGIT_OFFSET = 3.0  # added to every logit: a normalised likelihood cannot tell


def known_value_probabilities() -> np.ndarray:
    """P(v) for v = 0..255 under the known mixture, in float64 from the logistic CDF: value v
    owns [v - 0.5, v + 0.5] on the 0..255 scale, 0 also everything below and 255 everything above."""
    values = np.arange(256, dtype=np.float64)
    upper = np.where(values == 255, np.inf, (values + 0.5) / 127.5 - 1.0)
    lower = np.where(values == 0, -np.inf, (values - 0.5) / 127.5 - 1.0)

    def cdf(z):
        return 1.0 / (1.0 + np.exp(-z))

    return sum(w * (cdf((upper - m) / s) - cdf((lower - m) / s))
               for w, m, s in zip(KNOWN_WEIGHTS, KNOWN_LOCS, KNOWN_SCALES))


def known_entropy_nats() -> float:
    p = known_value_probabilities()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    return float(-np.sum(p * np.log(p)) * math.prod(KNOWN_IMAGE_SHAPE))


@pytest.fixture(scope="module")
def pixelcnns_set_to_the_truth():
    """{likelihood: (model, network config)}: tiny PixelCNN++s whose output ignores the image
    (the output layer's gain is zero) and whose output bias is the known distribution: its
    log-probabilities for the softmax, its weights, means and log-scales for the mixture, the
    logits shifted by LOGIT_OFFSET."""
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn

    models = {}
    for likelihood in ("categorical", "logistic_mixture"):
        net = PixelCNNConfig.from_scale("tiny", KNOWN_IMAGE_SHAPE, likelihood=likelihood,
                                        num_mixtures=len(KNOWN_WEIGHTS))
        model = build_pixelcnn(net)
        if likelihood == "categorical":
            bias = np.log(known_value_probabilities()) + LOGIT_OFFSET
        else:
            bias = np.concatenate([np.log(KNOWN_WEIGHTS) + LOGIT_OFFSET, KNOWN_LOCS, np.log(KNOWN_SCALES)])
        model.output_nin.g.assign(np.zeros(model.output_nin.g.shape, "float32"))
        model.output_nin.b.assign(bias.astype("float32"))
        models[likelihood] = (model, net)
    return models


def cross_entropy_with_the_truth(model, net) -> float:
    """E_p[-log q(x)] in nats per image, exactly, through the per-image NLL that held-out
    estimates use. The model's output is the same at every pixel whatever the image, so
    q(x) = prod_i q(x_i) and, the truth's pixels being i.i.d., the expectation is
    sum_v P(v) * NLL(the image whose every pixel is v)."""
    from invkeras.inverters.pixelcnn.kind import per_image_nll_nats

    images = np.broadcast_to(np.arange(256, dtype=np.float32)[:, None, None, None], (256, *KNOWN_IMAGE_SHAPE))
    nll = per_image_nll_nats(model, net, {"x": np.ascontiguousarray(images)})
    return float(known_value_probabilities() @ nll)


@pytest.mark.parametrize("likelihood", ["categorical", "logistic_mixture"])
def test_a_model_that_is_the_truth_estimates_its_entropy(pixelcnns_set_to_the_truth, likelihood):
    """Unconditional, so I(x;h) = 0 and the bound H(x) - H*(x) <= 0 holds with equality."""
    estimate_nats = cross_entropy_with_the_truth(*pixelcnns_set_to_the_truth[likelihood])
    assert_bound_is_tight(estimate_nats, known_entropy_nats())
    assert estimate_nats == pytest.approx(known_entropy_nats(), abs=1e-3)  # float32 rounding only


def _logistic(loc, log_scale):
    import keras

    from invkeras.inverters.pixelcnn import likelihoods

    return likelihoods.tfp_module().distributions.Logistic(loc=loc, scale=keras.ops.exp(log_scale))


def _edge_bins_shifted_one_value_in(original):
    """1 also takes all the mass below it and 254 all above it: the edge test off by one."""
    from keras import ops

    def log_prob(x, loc, log_scale):
        x = ops.cast(x, "float32")
        at = lambda value: original(ops.full_like(x, value), loc, log_scale)  # noqa: E731
        shifted = ops.where(x == 1.0, ops.logaddexp(at(0.0), at(1.0)), original(x, loc, log_scale))
        return ops.where(x == 254.0, ops.logaddexp(at(254.0), at(255.0)), shifted)

    return log_prob


def _edge_bins_closed(original):
    """0 and 255 own only their own bins, like the interior values: the tails are lost."""
    from keras import ops

    def log_prob(x, loc, log_scale):
        x = ops.cast(x, "float32")
        logistic, centred = _logistic(loc, log_scale), x / 127.5 - 1.0
        own_bin = ops.log(logistic.cdf(centred + 1.0 / 255.0) - logistic.cdf(centred - 1.0 / 255.0))
        return ops.where((x < 0.5) | (x > 254.5), own_bin, original(x, loc, log_scale))

    return log_prob


def _density_instead_of_bin_mass(original):
    """The logistic's density at the value, not the mass of its bin: not normalised over 0..255."""
    from keras import ops

    def log_prob(x, loc, log_scale):
        return _logistic(loc, log_scale).log_prob(ops.cast(x, "float32") / 127.5 - 1.0)

    return log_prob


def _mixture_weights_not_normalised(original):
    """The mixture's raw logits used as its log-weights."""

    def component_log_probs(params, x, num_channels):
        _, components, locs, log_scales = original(params, x, num_channels)
        return params[..., : components.shape[-1]], components, locs, log_scales

    return component_log_probs


def _softmax_left_out(original):
    """The categorical's raw logit of the value used as its log-probability."""
    from keras import ops

    def log_prob(params, x, likelihood, num_channels):
        return ops.take_along_axis(params, ops.cast(x, "int32")[..., None], axis=-1)[..., 0]

    return log_prob


def _mean_over_pixels(original):
    """The per-image log-likelihood averaged over sub-pixels instead of summed."""
    from keras import ops

    from invkeras.inverters.pixelcnn import likelihoods

    def log_prob(params, x, likelihood, num_channels):
        return ops.mean(likelihoods.log_prob_per_subpixel(params, x, likelihood, num_channels), axis=(1, 2, 3))

    return log_prob


BROKEN_LIKELIHOODS = {  # the bug: (likelihood, the function of `likelihoods` it replaces, the replacement)
    "edge bins shifted one value in": ("logistic_mixture", "discretized_logistic_log_prob",
                                       _edge_bins_shifted_one_value_in),
    "edge bins closed": ("logistic_mixture", "discretized_logistic_log_prob", _edge_bins_closed),
    "density instead of bin mass": ("logistic_mixture", "discretized_logistic_log_prob", _density_instead_of_bin_mass),
    "mixture weights not normalised": ("logistic_mixture", "_mixture_component_log_probs",
                                       _mixture_weights_not_normalised),
    "softmax left out": ("categorical", "log_prob_per_subpixel", _softmax_left_out),
    "mean over pixels": ("categorical", "log_prob_per_image", _mean_over_pixels),
}


@pytest.mark.parametrize("bug", list(BROKEN_LIKELIHOODS))
def test_the_same_check_fails_for_a_broken_likelihood(pixelcnns_set_to_the_truth, monkeypatch, bug):
    """What makes the check above worth passing: each plausible bug puts the estimate below the
    truth (the bound is violated) or more than the tolerance above it."""
    from invkeras.inverters.pixelcnn import kind, likelihoods

    likelihood, function, replacement = BROKEN_LIKELIHOODS[bug]
    monkeypatch.setattr(likelihoods, function, replacement(getattr(likelihoods, function)))
    # The uncompiled path, so that no compiled copy of the real likelihood is reused.
    monkeypatch.setattr(kind, "_compiled_log_prob", lambda model, net: None)
    estimate_nats = cross_entropy_with_the_truth(*pixelcnns_set_to_the_truth[likelihood])
    with pytest.raises(AssertionError, match="bound violated|not tight") as failure:
        assert_bound_is_tight(estimate_nats, known_entropy_nats())
    print(f"{bug}: {failure.value}")


@pytest.mark.parametrize("vector_conditioning", ["deconv", "global"])
def test_conditional_model_starts_identical_to_the_unconditional_one(vector_conditioning):
    """What makes the paired comparisons above fair: h's projections start at zero, and the
    layers that only h needs are made last, so every other weight starts the same."""
    import keras

    from invkeras.inverters.pixelcnn.network import PixelCNNConfig, build_pixelcnn

    x = np.random.default_rng(0).integers(0, 256, (2, 20, 20, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    unconditional = build_pixelcnn(PixelCNNConfig.from_scale("tiny", (20, 20, 1)))
    keras.utils.set_random_seed(0)
    conditional = build_pixelcnn(PixelCNNConfig.from_scale("tiny", (20, 20, 1), conditioning="vector", h_shape=(7,),
                                                           vector_conditioning=vector_conditioning))
    np.testing.assert_array_equal(
        np.asarray(unconditional({"x": x})), np.asarray(conditional({"x": x, "h": np.ones((2, 7), "float32")}))
    )


def test_labelled_rows_compare_inverters_of_one_layer_paired(known_information_inverters, tmp_path):
    """Rows named by label (as for one layer across architectures), with paired differences to a label."""
    identity = known_information_inverters["identity"][0].model_path
    shape = known_information_inverters["shape"][0].model_path
    report, path = estimate_mi(EstimateMIConfig(inverters=[str(identity), str(shape)], split="validation",
                                                labels=["a/h", "b/h"], reference="a/h", out=str(tmp_path / "mi.json")))
    rows = {r["layer"]: r for r in report.rows}
    assert list(rows) == ["a/h", "b/h"]
    each = {label: held_out_nll(p, split="validation").nll_nats for label, p in (("a/h", identity), ("b/h", shape))}
    assert rows["b/h"]["NCE - NCE(ref)"] == pytest.approx(float(np.mean(each["a/h"] - each["b/h"])), rel=1e-5)
    assert rows["b/h"]["NCE - NCE(ref)"] < 0  # the shape alone says less about x than x itself
    assert path.exists()
    with pytest.raises(InvkerasError, match="distinct label"):
        estimate_mi(EstimateMIConfig(inverters=[str(identity), str(shape)], split="validation", labels=["same", "same"],
                                     out=str(tmp_path / "x.json")))
    # User features: no exact H(x), so nothing is flagged; the rows carry the images' fingerprint.
    assert report.entropy_nats is None and report.fingerprint is not None
    assert all(row["lower bound vacuous"] is None for row in report.rows)


def test_config_defaults():
    config = EstimateMIConfig(inverters=["a"])
    assert (config.unconditional, config.reference, config.split, config.eval_examples, config.out, config.labels) == (
        None, None, "test", None, None, None)
    with pytest.raises(ValueError):
        EstimateMIConfig(inverters=[])
    with pytest.raises(ValueError):
        EstimateMIConfig(inverters=["a"], reference_layer="fc3")


def test_kind_without_a_pixel_likelihood_is_refused_in_one_line(tiny_inverters, tmp_path):
    mse = str(tiny_inverters["mse_fc3"].model_path.parent)
    for call in (lambda: held_out_nll(mse, split="test"),
                 lambda: estimate_mi(EstimateMIConfig(inverters=[mse], out=str(tmp_path / "mi.json"))),
                 lambda: estimate_mi(EstimateMIConfig(inverters=[str(tiny_inverters["fc3"].model_path)],
                                                      unconditional=mse, out=str(tmp_path / "mi.json")))):
        with pytest.raises(InvkerasError, match="estimate-mi") as error:
            call()
        message = str(error.value)
        assert "\n" not in message and "'mse'" in message and "pixel log prob" in message
    assert not (tmp_path / "mi.json").exists()


def test_estimates_carry_fingerprints_and_reuse_recorded_nlls(tiny_inverters, tmp_path):
    fc3, none = tiny_inverters["fc3"].model_path, tiny_inverters["none"].model_path
    inverter = load_inverter(fc3)
    images = held_out_inputs(inverter.config, "test", 48)["x"]
    reused = held_out_nll(inverter, split="test")
    assert reused.fingerprint == fingerprint(images) and reused.n == 48 and reused.kind == "pixelcnn"
    fresh = held_out_nll(fc3, split="test", eval_examples=48, reuse=False)
    assert fresh.fingerprint == reused.fingerprint
    np.testing.assert_allclose(fresh.nll_nats, reused.nll_nats, rtol=1e-5)
    fewer = held_out_nll(fc3, split="test", eval_examples=5)
    assert fewer.n == 5 and fewer.fingerprint == fingerprint(images[:5])
    np.testing.assert_allclose(fewer.nll_nats, reused.nll_nats[:5], rtol=1e-5)

    # The unconditional model sees the same images: one table, with procedural's exact H(x) and its flags.
    report, path = estimate_mi(EstimateMIConfig(inverters=[str(fc3)], unconditional=str(none), reference="fc3",
                                                out=str(tmp_path / "mi.json")))
    assert report.fingerprint == fingerprint(images) and report.entropy_nats == pytest.approx(procedural.ENTROPY_NATS)
    rows = {row["layer"]: row for row in report.rows}
    assert rows["fc3"]["lower bound vacuous"] is (procedural.ENTROPY_NATS < rows["fc3"]["H*(x|h) nats"])
    assert isinstance(rows["fc3"]["estimate exceeds H(x)"], bool)
    meta = artifacts.read_metadata(path)
    assert meta["kind"] == "mi-estimate" and meta["config"]["reference"] == "fc3"
    assert json.loads(path.read_text())["fingerprint"] == report.fingerprint

    # The default output is the run's mi/<split>.json, from the inverter's config, whatever its directory depth.
    workspace = inverter.config.workspace
    assert default_out(inverter, "validation") == artifacts.run_dir("procedural", "conv", workspace) / "mi" / "validation.json"
