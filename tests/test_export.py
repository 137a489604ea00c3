"""SavedModel export: the reloaded `serve` endpoint computes what the Keras model computes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from invkeras.artifacts import read_metadata
from invkeras.classifiers.architectures import build_classifier
from invkeras.errors import InvkerasError
from invkeras.export import export_saved_model


def test_exported_saved_model_matches_keras_outputs(tmp_path):
    model = build_classifier("conv", (20, 20, 1), 4)
    source = tmp_path / "model.keras"
    model.save(source)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "stale.txt").write_text("replaced by the export")

    assert export_saved_model(source, out) == out
    assert (out / "saved_model.pb").exists() and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    meta = read_metadata(out)
    assert meta["kind"] == "saved_model" and meta["results"]["endpoint"] == "serve"
    assert meta["results"]["outputs"][0]["shape"] == [None, 4]

    x = np.random.default_rng(0).integers(0, 256, (5, 20, 20, 1)).astype("float32")
    loaded = tf.saved_model.load(str(out))  # keep a reference: `serve` needs its variables alive
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_export_accepts_an_in_memory_model(tmp_path):
    model = build_classifier("fc", (16, 16, 3), 3, fc_units=32)
    out = export_saved_model(model, tmp_path / "fc")
    x = np.full((2, 16, 16, 3), 128, "float32")
    loaded = tf.saved_model.load(str(out))
    np.testing.assert_allclose(loaded.serve(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_bad_model_paths_are_user_errors(tmp_path):
    with pytest.raises(InvkerasError, match="file not found"):
        export_saved_model(tmp_path / "missing.keras", tmp_path / "out")
    broken = tmp_path / "broken.keras"
    broken.write_text("not a zip")
    with pytest.raises(InvkerasError, match=r"not a loadable Keras model \(not a \.keras archive: truncated"):
        export_saved_model(broken, tmp_path / "out")
    (tmp_path / "model.h5").touch()
    with pytest.raises(InvkerasError, match=r"expected a \.keras file"):
        export_saved_model(tmp_path / "model.h5", tmp_path / "out")
    assert not (tmp_path / "out").exists()
