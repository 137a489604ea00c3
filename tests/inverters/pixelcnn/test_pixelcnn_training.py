"""Kind pixelcnn: data sources, presets, exact resume after kills, NaN handling, save/reload."""

import json

import numpy as np
import pytest

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.inverters import load_inverter
from invkeras.inverters.pixelcnn.kind import (
    PER_IMAGE_NLL_FILE,
    PixelCNNInverter,
    PixelCNNInverterConfig as InverterConfig,
    network_config as pixelcnn_config_for,
    summarize_nll,
)
from killing import Interrupt, KillAt  # tests/killing.py


def train_inverter(config, hooks=()):
    return PixelCNNInverter.train(config, hooks=hooks, progress=False)


def test_trained_inverter_writes_model_and_metadata(tiny_inverters, tiny_classifier):
    result = tiny_inverters["fc3"]
    assert result.model_path == (artifacts.inverter_dir("procedural", "conv", "fc3", tiny_classifier, kind="pixelcnn")
                                 / "inverter.keras")
    meta = artifacts.read_metadata(result.model_path)
    assert meta["kind"] == "inverter" and meta["layer"] == "fc3" and meta["h_shape"] == [256]
    assert meta["inverter_kind"] == "pixelcnn" and meta["capabilities"] == ["pixel_log_prob", "sample"]
    assert meta["results"]["validation"]["headline"]["name"] == "NLL nats"
    assert meta["network"]["conditioning"] == "vector" and meta["network"]["likelihood"] == "categorical"
    assert meta["data"]["classifier"].endswith("classifier/model.keras")
    assert result.steps == 40 and np.isfinite(result.validation["nll_nats"])
    assert not (result.model_path.parent / "backup").exists()  # removed once the artefact is complete
    # bits/dim is the same number in other units: nats / (H*W*C * ln 2)
    assert result.validation["bits_per_dim"] == pytest.approx(result.validation["nll_nats"] / (400 * np.log(2)))


def test_reloaded_inverter_gives_identical_log_likelihoods(tiny_inverters):
    from invkeras.inverters.data import paired_arrays

    result = tiny_inverters["fc3"]
    inverter = load_inverter(result.model_path.parent)  # from the directory as well as the file
    assert isinstance(inverter, PixelCNNInverter) and inverter.layer == "fc3"
    _, val, _, _ = paired_arrays(inverter.config)
    nll = -inverter.log_prob(val["x"], val["h"])
    assert nll.shape == (48,) and nll.mean() == pytest.approx(result.validation["nll_nats"], rel=1e-6)


def test_spatial_layers_get_spatial_conditioning():
    config = InverterConfig(layer="conv1", scale="tiny")
    net = pixelcnn_config_for(config, (20, 20, 1), (8, 8, 32))
    assert net.conditioning == "spatial" and net.h_shape == (8, 8, 32) and net.filters == 8
    colour = pixelcnn_config_for(InverterConfig(layer="none", scale="paper"), (32, 32, 3), None)
    assert colour.likelihood == "logistic_mixture" and colour.filters == 196 and colour.nr_resnet == 3
    override = pixelcnn_config_for(InverterConfig(layer="fc3", scale="small", filters=12, h_dropout=0.2), (20, 20, 1), (10,))
    assert (override.filters, override.h_dropout, override.conditioning) == (12, 0.2, "vector")
    with pytest.raises(InvkerasError, match="neither"):
        pixelcnn_config_for(InverterConfig(layer="odd"), (20, 20, 1), (4, 4))


def _user_features(tmp_path, h_scale=1.0, n=96):
    from invkeras.data import load_arrays

    x, y = load_arrays("procedural", "train", limit=n)
    h = np.eye(4, dtype=np.float32)[y] * h_scale
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, h=h)
    return path


def test_three_kills_resume_exactly(tmp_path):
    """Killed three times, at random steps, and resumed: the same NLL as a run never interrupted."""
    path = _user_features(tmp_path)
    common = dict(features=str(path), layer="user", scale="tiny", max_steps=30, steps_per_checkpoint=10, batch_size=8,
                  jit_compile="false", patience=10, dropout_rate=0.3)
    straight = train_inverter(InverterConfig(**common, out=str(tmp_path / "straight")))
    config = InverterConfig(**common, out=str(tmp_path / "inv"))
    for step in sorted(np.random.default_rng(1).choice(np.arange(1, 30), 3, replace=False)):
        with pytest.raises(Interrupt):
            train_inverter(config, hooks=[KillAt(int(step))])
    assert (tmp_path / "inv/backup").exists() and not (tmp_path / "inv/inverter.keras").exists()
    resumed = train_inverter(config)
    assert resumed.resumed_from_step > 0 and resumed.steps == 30
    assert abs(resumed.validation["nll_nats"] - straight.validation["nll_nats"]) < 1e-4
    a, b = (load_inverter(r.model_path).model.get_weights() for r in (straight, resumed))
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "inv/inverter.keras.meta.json").read_text())
    assert meta["data"] == {"features": str(path), "train_examples": 86, "validation_examples": 10}
    assert len(meta["history"]["val_loss"]) == 3  # every interval, not only those since the last restart


def test_resuming_under_another_config_is_refused(tmp_path):
    path = _user_features(tmp_path)
    common = dict(features=str(path), layer="user", scale="tiny", max_steps=20, steps_per_checkpoint=10, batch_size=8,
                  jit_compile="false", out=str(tmp_path / "inv"))
    with pytest.raises(Interrupt):
        train_inverter(InverterConfig(**common), hooks=[KillAt(12)])
    for change, fragment in (({"learning_rate": 2e-3}, "learning_rate 0.001 -> 0.002"), ({"scale": "small"}, "scale")):
        with pytest.raises(InvkerasError) as info:
            train_inverter(InverterConfig(**{**common, **change}))
        assert "\n" not in str(info.value) and fragment in str(info.value) and "delete" in str(info.value)
    assert train_inverter(InverterConfig(**{**common, "max_steps": 30})).steps == 30  # a longer run resumes


def test_nan_loss_stops_with_one_clear_line(tmp_path):
    path = _user_features(tmp_path, h_scale=1e38)  # finite h whose projection overflows
    # Without standardisation: with it, such features are refused before training (below).
    config = InverterConfig(features=str(path), layer="user", scale="tiny", max_steps=10, steps_per_checkpoint=5,
                            batch_size=8, out=str(tmp_path / "nan"), jit_compile="false", standardise_h="false")
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf)") as info:
        train_inverter(config)
    assert "\n" not in str(info.value)
    assert "no resume state saved yet" in str(info.value) and "|h| = 1e+38" in str(info.value)
    assert not (tmp_path / "nan/inverter.keras").exists()


def test_features_beyond_float32_cannot_be_standardised(tmp_path):
    path = _user_features(tmp_path, h_scale=1e38)
    config = InverterConfig(features=str(path), layer="user", scale="tiny", max_steps=10, steps_per_checkpoint=5,
                            batch_size=8, out=str(tmp_path / "big"), jit_compile="false")
    with pytest.raises(InvkerasError, match=r"cannot standardise h: the features reach \|h\| = 1e\+38") as info:
        train_inverter(config)
    assert "\n" not in str(info.value) and not (tmp_path / "big/inverter.keras").exists()


def test_summary_statistics():
    summary = summarize_nll(np.array([10.0, 12.0, 14.0, 16.0]), (2, 2, 1))
    assert summary["nll_nats"] == 13.0
    assert summary["se_nats"] == pytest.approx(np.std([10, 12, 14, 16], ddof=1) / 2)
    assert summary["ci95_nats"][0] < 13.0 < summary["ci95_nats"][1]
    assert summary["bits_per_dim"] == pytest.approx(13.0 / (4 * np.log(2)))


def test_missing_inverter_is_a_user_error(tmp_path):
    with pytest.raises(InvkerasError, match="not found"):
        load_inverter(tmp_path / "nothing")


def test_recorded_per_image_nll_belongs_to_its_own_model(tiny_inverters):
    """The NLLs saved at the end of training are the model's own, and only while the file's token
    matches the model's metadata (a killed retrain can leave new NLLs beside an old model)."""
    from invkeras.inverters.data import fingerprint, paired_arrays

    model_path = tiny_inverters["fc3"].model_path
    inverter = load_inverter(model_path)
    recorded, recorded_print = inverter.recorded_nll("test")
    _, _, test, _ = paired_arrays(inverter.config)
    np.testing.assert_allclose(recorded, -inverter.log_prob(test["x"], test["h"]), rtol=1e-5)
    assert recorded_print == fingerprint(test["x"])

    saved = model_path.parent / PER_IMAGE_NLL_FILE
    original = saved.read_bytes()
    try:
        np.savez(saved, token=np.array("another run"), test=np.zeros_like(recorded))
        assert inverter.recorded_nll("test") is None
    finally:
        saved.write_bytes(original)


def test_mixed_precision_trains_in_float16_on_float32_weights_and_restores_the_policy(tmp_path):
    """--mixed-precision: float16 compute with float32 weights and a loss-scaling optimiser while
    training; the loss falls, the saved weights are finite float32, and the process's policy is
    float32 again afterwards."""
    import keras

    from invkeras.training import TrainingHook

    class Policies(TrainingHook):
        seen = None

        def on_step_end(self, step, logs):
            model = self.trainee.model
            self.seen = self.seen or dict(
                policy=keras.mixed_precision.global_policy().name, compute=model.output_nin.compute_dtype,
                weights={v.dtype for v in model.trainable_variables},
                loss_scaling=isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer))

    hook = Policies()
    config = InverterConfig(features=str(_user_features(tmp_path)), layer="user", scale="tiny", max_steps=20,
                            steps_per_checkpoint=10, batch_size=8, jit_compile="false", mixed_precision=True,
                            out=str(tmp_path / "mixed"))
    result = train_inverter(config, hooks=[hook])
    assert hook.seen == dict(policy="mixed_float16", compute="float16", weights={"float32"}, loss_scaling=True)
    assert keras.mixed_precision.global_policy().name == "float32"
    history = artifacts.read_metadata(result.model_path)["history"]
    assert history["loss"][-1] < history["loss"][0] and history["val_loss"][-1] < history["val_loss"][0]
    weights = load_inverter(result.model_path).model.get_weights()
    assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in weights)
    assert np.isfinite(result.validation["nll_nats"])
