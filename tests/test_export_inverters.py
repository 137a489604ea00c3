"""Inverters exported as SavedModels: the reloaded signatures agree with the library."""

from __future__ import annotations

import numpy as np
import pytest

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.export import export_inverter
from invkeras.inverters import load_inverter
from invkeras.inverters.data import held_out_inputs


@pytest.mark.slow
def test_pixelcnn_signatures_round_trip(tiny_inverters, tmp_path):
    import tensorflow as tf

    inverter = load_inverter(tiny_inverters["fc3"].model_path)
    out = export_inverter(inverter.path, tmp_path / "fc3", batch_size=4)
    meta = artifacts.read_metadata(out)
    assert meta["results"]["serve"] == "log_prob" and set(meta["results"]["signatures"]) == {"log_prob", "sample"}
    reloaded = tf.saved_model.load(str(out))
    inputs = held_out_inputs(inverter.config, "test", 4)
    x, h = inputs["x"].astype("float32"), inputs["h"].astype("float32")

    exported = reloaded.log_prob(tf.constant(x), tf.constant(h)).numpy()
    np.testing.assert_allclose(exported, inverter.log_prob(x, h), atol=1e-4, rtol=0)
    np.testing.assert_allclose(reloaded.serve(tf.constant(x), tf.constant(h)).numpy(), exported, atol=1e-4, rtol=0)

    drawn = reloaded.sample(tf.constant(h), tf.constant(7, tf.int32)).numpy()
    library = inverter.sample(h, 1, seed=7, batch_size=4)[:, 0]
    assert drawn.dtype == np.uint8 and drawn.shape == library.shape
    np.testing.assert_array_equal(drawn, library)
    assert not np.array_equal(reloaded.sample(tf.constant(h), tf.constant(8, tf.int32)).numpy(), drawn)


@pytest.mark.slow
def test_mse_signatures_round_trip_and_bad_targets(tiny_inverters, tmp_path):
    import tensorflow as tf

    inverter = load_inverter(tiny_inverters["mse_fc3"].model_path)
    out = export_inverter(inverter.path, tmp_path / "mse")
    reloaded = tf.saved_model.load(str(out))
    h = held_out_inputs(inverter.config, "test", 3)["h"].astype("float32")
    np.testing.assert_allclose(reloaded.reconstruct(tf.constant(h)).numpy(), inverter.reconstruct(h), atol=1e-4)
    np.testing.assert_array_equal(reloaded.sample(tf.constant(h), tf.constant(0)).numpy(),
                                  inverter.sample(h, 1)[:, 0])

    occupied = tmp_path / "file"
    occupied.write_text("keep")
    with pytest.raises(InvkerasError, match="not a directory"):
        export_inverter(inverter.path, occupied)
    assert occupied.read_text() == "keep"
