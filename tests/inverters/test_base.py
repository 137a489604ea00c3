"""The inverter interface: the registry, configs by kind, loading any kind, and the one-line
refusals for files that are not inverters."""

from __future__ import annotations

import json
import shutil
import keras
import numpy as np
import pytest

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.inverters import (
    Inverter,
    config_for,
    inverter_class,
    inverter_kinds,
    load_inverter,
    register_inverter,
    train_inverter,
)


def test_built_in_kinds_declare_what_they_can_do():
    kinds = inverter_kinds()
    assert {"pixelcnn", "mse"} <= set(kinds)
    assert kinds["pixelcnn"].capabilities == {"sample", "pixel_log_prob"}
    assert kinds["mse"].capabilities == {"sample", "reconstruct"}
    for name, cls in kinds.items():
        assert cls.config_class().kind == name  # each config names its own kind


def test_registration_checks_the_contract():
    class NoKind(Inverter):
        capabilities = frozenset({"sample"})

    class Mute(Inverter):
        kind = "mute"
        capabilities = frozenset({"reconstruct"})

    class WrongConfig(Inverter):
        kind = "wrong"
        capabilities = frozenset({"sample"})

    for cls, message in ((NoKind, "kind"), (Mute, "sample"), (WrongConfig, "config_class")):
        with pytest.raises(TypeError, match=message):
            register_inverter(cls)
    assert "mute" not in inverter_kinds()


def test_configs_by_kind_and_options_a_kind_lacks():
    config = config_for("pixelcnn", {"layer": "conv1", "scale": "tiny", "filters": None, "batch_size": None})
    assert config.kind == "pixelcnn" and config.scale == "tiny" and config.batch_size == 16  # None keeps defaults
    assert config_for("mse", {"layer": "fc3", "scale": "tiny"}).batch_size == 32  # not given: ignored
    with pytest.raises(InvkerasError, match="--scale: not an option of inverter kind 'mse'"):
        config_for("mse", {"layer": "fc3", "scale": "tiny"}, given={"scale"})
    with pytest.raises(InvkerasError, match="unknown inverter kind; choose from .*mse.*pixelcnn"):
        inverter_class("vae")


def test_kinds_never_share_a_directory(tmp_path):
    dirs = {kind: config_for(kind, {"layer": "fc3", "workspace": str(tmp_path)}).out_dir() for kind in ("pixelcnn", "mse")}
    assert dirs["pixelcnn"] != dirs["mse"]
    assert dirs["mse"] == tmp_path / "procedural/conv/inverters/mse/fc3"


def test_a_workspace_from_before_kinds_gets_one_line_saying_how_to_move_it(tmp_path):
    old = artifacts.run_dir("procedural", "conv", tmp_path) / "inverters/fc3"  # where pixelcnn inverters were
    old.mkdir(parents=True)
    (old / "inverter.keras").write_bytes(b"old")
    config = config_for("pixelcnn", {"layer": "fc3", "workspace": str(tmp_path)})
    with pytest.raises(InvkerasError) as info:
        train_inverter(config, progress=False)
    message = str(info.value)
    assert "\n" not in message and f"mv {old} {config.out_dir()}" in message
    assert (old / "inverter.keras").read_bytes() == b"old"  # nothing touched


def test_legacy_metadata_loads_as_its_kind(tiny_inverters, tmp_path):
    """An MSE decoder saved before the interface (decoder.keras, kind mse-decoder) loads as kind mse."""
    source = tiny_inverters["mse_fc3"].model_path
    legacy = tmp_path / "decoders/fc3"
    legacy.mkdir(parents=True)
    shutil.copy(source, legacy / "decoder.keras")
    meta = json.loads(artifacts.metadata_path(source).read_text())
    meta["kind"] = "mse-decoder"
    meta.pop("inverter_kind")
    artifacts.metadata_path(legacy / "decoder.keras").write_text(json.dumps(meta))
    inverter = load_inverter(legacy)
    assert inverter.kind == "mse" and inverter.has("reconstruct") and inverter.layer == "fc3"


def test_truncated_and_unsafe_files_are_refused_in_one_line(tiny_inverters, tmp_path):
    source = tiny_inverters["fc3"].model_path
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "inverter.keras").write_bytes(source.read_bytes()[:2000])
    shutil.copy(artifacts.metadata_path(source), artifacts.metadata_path(truncated / "inverter.keras"))
    with pytest.raises(InvkerasError) as info:
        load_inverter(truncated)
    assert "\n" not in str(info.value) and "not a loadable inverter (not a .keras archive" in str(info.value)
    assert "File not found" not in str(info.value)

    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(unsafe / "inverter.keras")
    shutil.copy(artifacts.metadata_path(source), artifacts.metadata_path(unsafe / "inverter.keras"))
    with pytest.raises(InvkerasError) as info:
        load_inverter(unsafe)
    assert "\n" not in str(info.value) and "not a loadable inverter" in str(info.value)

    with pytest.raises(InvkerasError, match="file not found"):
        load_inverter(tmp_path / "nothing")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(source, bare / "inverter.keras")
    with pytest.raises(InvkerasError, match="no inverter metadata"):
        load_inverter(bare)


def test_a_capability_a_kind_lacks_is_one_line(tiny_inverters):
    inverter = load_inverter(tiny_inverters["mse_fc3"].model_path)
    with pytest.raises(InvkerasError) as info:
        inverter.require("pixel_log_prob", "estimate-mi")
    assert str(info.value).startswith("estimate-mi: inverter") and "kind 'mse'" in str(info.value)
    with pytest.raises(InvkerasError, match="NaN or inf"):
        inverter.reconstruct(np.full((1, 256), np.nan, np.float32))


def test_features_without_a_layer_take_the_manifests_layer(tmp_path):
    manifest = tmp_path / "feats/train/manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layer": "dense_7"}))
    assert config_for("pixelcnn", {"features": str(tmp_path / "feats")}).layer == "dense_7"
    assert config_for("pixelcnn", {"features": str(tmp_path / "mine.npz")}).layer == "features"
    assert config_for("pixelcnn", {"features": str(tmp_path / "feats"), "layer": "fc3"}).layer == "fc3"


@pytest.mark.parametrize("name", ["fc3", "mse_fc3"])
def test_a_fresh_process_loads_and_samples_every_kind(tiny_inverters, name):
    """Loading must not depend on modules a test happened to import first."""
    import subprocess
    import sys

    script = ("import sys, numpy as np\n"
              "from invkeras.inverters import load_inverter\n"
              "inverter = load_inverter(sys.argv[1])\n"
              "print('SHAPE', inverter.sample(np.zeros((1, 256), np.float32), 2, seed=0).shape)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_inverters[name].model_path)], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0 and "SHAPE (1, 2, 20, 20, 1)" in proc.stdout, proc.stderr[-2000:]


def test_inverters_of_identical_features_start_alike_whatever_the_classifier_draws(tmp_path):
    """Loading a classifier to extract its features draws from the global RNG (a dropout layer
    draws a seed); the inverter is seeded after loading, so its weights depend on its seed alone."""
    from invkeras.classifiers.architectures import build_classifier

    weights = []
    for rate in (0.3, 0.0):  # one seed: the same network, with and without dropout layers
        keras.utils.set_random_seed(0)
        path = tmp_path / f"classifier-{rate}.keras"
        build_classifier("conv", (20, 20, 1), 5, dropout_rate=rate).save(path)
        config = config_for("mse", dict(dataset="procedural", model=str(path), layer="fc3", workspace=str(tmp_path),
                                        out=str(tmp_path / f"mse-{rate}"), max_steps=2, steps_per_checkpoint=2,
                                        train_examples=64, eval_examples=16, batch_size=16))
        inverter = inverter_class("mse").train(config, progress=False)
        weights.append([w.numpy() for w in keras.saving.load_model(inverter.model_path).weights])
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
