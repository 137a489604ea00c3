"""Inverter training: data sources, presets, resume after a kill, NaN handling, save/reload."""

import json

import keras
import numpy as np
import pytest

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.train_inverter import (
    InverterConfig,
    load_inverter,
    pixelcnn_config_for,
    summarize_nll,
    train_inverter,
)


def test_trained_inverter_writes_model_and_metadata(tiny_inverters, tiny_classifier):
    result = tiny_inverters["fc3"]
    assert result.model_path == artifacts.inverter_dir("procedural", "conv", "fc3", tiny_classifier) / "inverter.keras"
    meta = artifacts.read_metadata(result.model_path)
    assert meta["kind"] == "inverter" and meta["layer"] == "fc3" and meta["h_shape"] == [256]
    assert meta["network"]["conditioning"] == "vector" and meta["network"]["likelihood"] == "categorical"
    assert meta["data"]["classifier"].endswith("classifier/model.keras")
    assert result.steps == 40 and np.isfinite(result.validation["nll_nats"])
    assert not (result.model_path.parent / "backup").exists()  # removed once the artefact is complete
    # bits/dim is the same number in other units: nats / (H*W*C * ln 2)
    assert result.validation["bits_per_dim"] == pytest.approx(result.validation["nll_nats"] / (400 * np.log(2)))


def test_reloaded_inverter_gives_identical_log_likelihoods(tiny_inverters):
    result = tiny_inverters["fc3"]
    from invkeras.analyses.mi import held_out_nll

    load_inverter(result.model_path.parent)  # loads from the directory as well as the file

    again = held_out_nll(result.model_path, split="validation", eval_examples=48, reuse=False)
    assert again.mean == pytest.approx(result.validation["nll_nats"], rel=1e-6)


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


class Interrupt(Exception):
    pass


class KillAfterFirstCheckpoint(keras.callbacks.Callback):
    """Runs after BackupAndRestore has written the first interval's backup, then 'kills' the run."""

    def on_epoch_end(self, epoch, logs=None):
        raise Interrupt


def test_resume_after_kill_loses_at_most_one_interval(tmp_path):
    path = _user_features(tmp_path)
    config = InverterConfig(features=str(path), layer="user", scale="tiny", max_steps=30, steps_per_checkpoint=10,
                            batch_size=8, out=str(tmp_path / "inv"), jit_compile="false", patience=10)
    with pytest.raises(Interrupt):
        train_inverter(config, callbacks=[KillAfterFirstCheckpoint()])
    assert (tmp_path / "inv/backup").exists() and not (tmp_path / "inv/inverter.keras").exists()
    resumed = train_inverter(config)
    assert resumed.resumed_from_step == 10  # the first interval was not redone
    assert resumed.steps == 30  # optimiser step count restored from the backup, not restarted
    assert json.loads((tmp_path / "inv/inverter.keras.meta.json").read_text())["data"] == {
        "features": str(path), "train_examples": 86, "validation_examples": 10}


def test_nan_loss_stops_with_one_clear_line(tmp_path):
    path = _user_features(tmp_path, h_scale=1e38)  # finite h whose projection overflows
    config = InverterConfig(features=str(path), layer="user", scale="tiny", max_steps=10, steps_per_checkpoint=5,
                            batch_size=8, out=str(tmp_path / "nan"), jit_compile="false")
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf)") as info:
        train_inverter(config)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "nan/inverter.keras").exists()


def test_summary_statistics():
    summary = summarize_nll(np.array([10.0, 12.0, 14.0, 16.0]), (2, 2, 1))
    assert summary["nll_nats"] == 13.0
    assert summary["se_nats"] == pytest.approx(np.std([10, 12, 14, 16], ddof=1) / 2)
    assert summary["ci95_nats"][0] < 13.0 < summary["ci95_nats"][1]
    assert summary["bits_per_dim"] == pytest.approx(13.0 / (4 * np.log(2)))


def test_missing_inverter_is_a_user_error(tmp_path):
    with pytest.raises(InvkerasError, match="not found"):
        load_inverter(tmp_path / "nothing")


def test_recorded_per_image_nll_is_reused_only_for_its_own_model(tiny_inverters, monkeypatch):
    """estimate-mi takes the NLLs saved at the end of training instead of evaluating again,
    and only while the file's token matches the model's metadata."""
    import invkeras.train_inverter as train_inverter_module
    from invkeras.analyses.mi import held_out_nll
    from invkeras.train_inverter import PER_IMAGE_NLL_FILE

    model_path = tiny_inverters["fc3"].model_path
    fresh = held_out_nll(model_path, split="test", reuse=False).nll_nats

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated again")

    with monkeypatch.context() as patch:
        patch.setattr(train_inverter_module, "per_image_nll_nats", no_evaluation)
        reused = held_out_nll(model_path, split="test").nll_nats
    np.testing.assert_allclose(reused, fresh, rtol=1e-5)
    assert reused.mean() == pytest.approx(tiny_inverters["fc3"].test["nll_nats"], rel=1e-6)

    # NLLs from another run (a killed retrain) are not trusted: the model is evaluated again.
    saved = model_path.parent / PER_IMAGE_NLL_FILE
    original = saved.read_bytes()
    try:
        np.savez(saved, token=np.array("another run"), test=np.zeros_like(fresh))
        with monkeypatch.context() as patch:
            patch.setattr(train_inverter_module, "per_image_nll_nats", no_evaluation)
            with pytest.raises(AssertionError, match="evaluated again"):
                held_out_nll(model_path, split="test")
        np.testing.assert_allclose(held_out_nll(model_path, split="test").nll_nats, fresh, rtol=1e-5)
    finally:
        saved.write_bytes(original)
