"""The data-processing check: a deeper layer above a shallower one beyond noise is flagged, within noise it is not."""

import numpy as np
import pytest

from invkeras.analyses import data_processing
from invkeras.analyses.mi import LayerEstimate, build_report

NOISE = np.array([0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.1])  # mean 0


def estimate(layer, values):
    return LayerEstimate(layer, f"/inv/{layer}", np.asarray(values, float), 1.0)


def test_a_deeper_layer_above_a_shallower_one_beyond_the_interval_is_a_breach():
    nce = {"conv1": -20 + NOISE, "fc3": -15 + NOISE[::-1]}
    (breach,) = data_processing.breaches(["conv1", "fc3"], nce)
    assert (breach.shallower, breach.deeper) == ("conv1", "fc3")
    assert breach.gap.mean == pytest.approx(5.0) and breach.gap.low > 0
    assert "undertrained" in breach.sentence() and "not established" in breach.sentence()


def test_a_deeper_layer_above_by_less_than_the_interval_is_not_flagged():
    nce = {"conv1": -20 + 10 * NOISE, "fc3": -19.8 + 10 * NOISE[::-1]}
    gap = next(data_processing.gaps(["conv1", "fc3"], nce))[2]
    assert 0 < gap.mean < gap.half_width
    assert data_processing.breaches(["conv1", "fc3"], nce) == []


def test_a_deeper_layer_below_the_shallower_one_is_what_the_inequality_expects():
    assert data_processing.breaches(["conv1", "fc3"], {"conv1": -10 + NOISE, "fc3": -30 + NOISE}) == []


def test_the_seed_spread_can_turn_a_breach_into_an_ordering_not_established():
    # One seed each: fc3 is 1 nat above conv1, far beyond the image noise. fc3's other seeds
    # land 4 nats either side: the difference is then within the training noise.
    conv1, fc3 = -20 + NOISE, -19 + NOISE
    assert data_processing.breaches(["conv1", "fc3"], {"conv1": conv1, "fc3": fc3})
    seeded = np.stack([fc3, fc3 + 4, fc3 - 4])
    assert data_processing.breaches(["conv1", "fc3"], {"conv1": conv1, "fc3": seeded}) == []


def test_the_information_table_puts_the_flag_under_the_deeper_layer():
    conv1, fc3 = estimate("conv1", 30 + NOISE), estimate("fc3", 25 + NOISE[::-1])  # fc3: lower H*(x|h)
    report = build_report([conv1, fc3], split="test", dataset="d", order=["conv1", "fc3"])
    rows = {r["layer"]: r for r in report.rows}
    assert rows["conv1"]["note"] is None
    assert "fc3 exceeds the shallower conv1 by 5.000 nats" in rows["fc3"]["note"]
    assert report.data_processing["breaches"][0]["deeper"] == "fc3"
    within = build_report([conv1, estimate("fc3", 29.9 + 10 * NOISE)], split="test", dataset="d",
                          order=["conv1", "fc3"])
    assert all(r["note"] is None for r in within.rows) and within.data_processing["breaches"] == []


def test_without_an_order_the_table_checks_nothing():
    report = build_report([estimate("conv1", 30 + NOISE), estimate("fc3", 25 + NOISE)], split="test", dataset="d")
    assert report.data_processing is None and all(r["note"] is None for r in report.rows)


def test_label_agreement_gaps_are_never_called_breaches():
    agreement = {"conv1": np.full(8, 0.5) + NOISE / 10, "fc3": np.full(8, 0.95) + NOISE[::-1] / 10}
    (sentence,) = data_processing.label_gaps(["conv1", "fc3"], agreement)
    assert "not a breach" in sentence and "conv1 inverter falls short" in sentence
    assert data_processing.label_gaps(["conv1", "fc3"], {"conv1": agreement["fc3"], "fc3": agreement["fc3"]}) == []


def test_the_graph_order_is_the_models_and_a_skip_connection_breaks_the_chain():
    import keras

    inputs = keras.Input((4,))
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name="b")(a)
    c = keras.layers.Dense(3, name="c")(b)
    chain = keras.Model(inputs, c)
    assert data_processing.graph_order(chain, ["c", "a"]) == ["a", "c"]
    assert data_processing.graph_order(chain, ["a", "missing"]) is None
    skip = keras.Model(inputs, keras.layers.Add(name="d")([a, c]))
    assert data_processing.graph_order(skip, ["b", "d"]) is None  # d sees a around b
    assert data_processing.graph_order(skip, ["a", "d"]) == ["a", "d"]


def test_label_agreement_across_layers_reads_each_layers_comparison(tmp_path):
    from invkeras.analyses.compare import label_agreement_across_layers

    for layer, share in (("conv1", 0.5), ("fc3", 0.95)):
        (tmp_path / layer).mkdir()
        np.savez(tmp_path / layer / "compare.npz", label_agreement_pixelcnn=np.full(8, share) + NOISE / 10)
    (sentence,) = label_agreement_across_layers({"conv1": tmp_path / "conv1", "fc3": tmp_path / "fc3"},
                                                ["conv1", "fc3"])
    assert sentence.startswith("pixelcnn: samples of fc3 keep the label more often") and "not a breach" in sentence

