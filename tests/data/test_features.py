"""Extraction streams shards in the documented format; reading accepts extracts and user .npz files."""

import json

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.data.features import ExtractConfig, extract_features, open_features


def test_extract_writes_documented_shards(tiny_classifier):
    config = ExtractConfig(
        dataset="procedural", layers=["conv1", "fc3"], splits=["test"], workspace=str(tiny_classifier),
        shard_size=300, batch_size=128, limit=700,
    )
    written = extract_features(config, progress=False)
    manifest_path = written["conv1"]["test"]
    manifest = json.loads(manifest_path.read_text())
    # 700 examples in shards of at most 300: 300 + 300 + 100, whatever the batch size.
    assert [s["num_examples"] for s in manifest["shards"]] == [300, 300, 100]
    assert manifest["h_shape"] == [8, 8, 32]  # 20x20 -> conv5 16 -> pool 8
    assert json.loads(written["fc3"]["test"].read_text())["h_shape"] == [256]
    assert (manifest_path.parent / "manifest.json.meta.json").exists()

    with np.load(manifest_path.parent / "shard-00000.npz") as shard:
        assert shard["x"].dtype == np.uint8 and shard["x"].shape == (300, 20, 20, 1)
        assert shard["h"].dtype == np.float32 and shard["h"].shape == (300, 8, 8, 32)
        assert shard["y"].shape == (300,)

    # The stored features are exactly what the model's layer computes for the stored images.
    from invkeras.classifiers.architectures import layer_output_model
    from invkeras.data.features import load_model

    model = load_model(config.model_path())
    with np.load(manifest_path.parent / "shard-00001.npz") as shard:
        expected = layer_output_model(model, ["conv1"])(shard["x"][:16].astype("float32"))["conv1"]
        np.testing.assert_allclose(shard["h"][:16], np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_open_features_streams_batches_across_shard_boundaries(tiny_classifier):
    config = ExtractConfig(dataset="procedural", layers=["fc3"], splits=["validation"], workspace=str(tiny_classifier),
                           shard_size=250, limit=600)
    path = extract_features(config, progress=False)["fc3"]["validation"].parent
    features = open_features(path)
    assert features.num_examples == 600 and features.h_shape == (256,) and features.layer == "fc3"
    sizes = [len(b["x"]) for b in features.iter_batches(128)]
    assert sizes == [128, 128, 128, 128, 88]
    everything = features.load_all()
    assert everything["x"].shape == (600, 20, 20, 1) and everything["h"].shape == (600, 256)
    first = next(iter(features.as_dataset().batch(600)))
    np.testing.assert_array_equal(first["x"].numpy(), everything["x"])


def test_extract_skips_complete_splits(tiny_classifier):
    config = ExtractConfig(dataset="procedural", layers=["logits"], splits=["test"], workspace=str(tiny_classifier), limit=64)
    first = extract_features(config, progress=False)["logits"]["test"]
    stamp = first.stat().st_mtime_ns
    again = extract_features(config, progress=False)["logits"]["test"]
    assert again == first and again.stat().st_mtime_ns == stamp


def test_user_npz_is_accepted(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(10, 6, 6), dtype=np.uint8)  # NHW: channel added
    np.savez(tmp_path / "mine.npz", x=x, h=np.ones((10, 3)))
    features = open_features(tmp_path / "mine.npz")
    assert features.x_shape == (6, 6, 1) and features.h_shape == (3,)
    assert features.load_all()["h"].dtype == np.float32


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 5, 5, 1), np.uint8)}, "missing array 'h'"),
        ({"x": np.zeros((4, 5, 5, 1), np.uint8), "h": np.zeros((3, 2))}, "x has 4 examples but h has 3"),
        ({"x": np.full((2, 5, 5, 1), 300), "h": np.zeros((2, 2))}, "uint8 pixel values"),
        ({"x": np.zeros((2, 5, 5, 1), np.uint8), "h": np.full((2, 2), np.nan)}, "NaN"),
    ],
)
def test_bad_user_npz_gets_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvkerasError, match=message):
        open_features(tmp_path / "bad.npz").load_all()


def test_extract_works_on_any_user_keras_model(tmp_path):
    inputs = keras.Input((20, 20, 1))
    hidden = keras.layers.Dense(7, name="my_dense")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden))
    model.save(tmp_path / "user.keras")
    config = ExtractConfig(dataset="procedural", model=str(tmp_path / "user.keras"), layers=["my_dense"],
                           splits=["test"], out=str(tmp_path / "feats"), limit=50)
    features = open_features(extract_features(config, progress=False)["my_dense"]["test"].parent)
    assert features.h_shape == (7,) and features.num_examples == 50

    with pytest.raises(InvkerasError, match="my_dense"):  # the error lists the model's layers
        extract_features(config.model_copy(update={"layers": ["nope"]}), progress=False)


def test_model_input_shape_must_match_dataset(tmp_path):
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(inputs))).save(tmp_path / "m.keras")
    config = ExtractConfig(dataset="procedural", model=str(tmp_path / "m.keras"), layers=["d"], splits=["test"],
                           out=str(tmp_path / "f"))
    with pytest.raises(InvkerasError, match=r"expects images of shape \(28, 28, 1\)"):
        extract_features(config, progress=False)


def test_features_of_different_models_never_mix(tiny_classifier):
    """A checkpoint gets its own feature cache, and a cache made from another model is redone."""
    checkpoint = tiny_classifier / "procedural/conv/classifier/checkpoints/step-000000.keras"
    import shutil

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_classifier / "procedural/conv/classifier/model.keras", checkpoint)
    config = ExtractConfig(dataset="procedural", model=str(checkpoint), layers=["fc3"], splits=["test"],
                           workspace=str(tiny_classifier), limit=16)
    assert config.out_root() == checkpoint.parent / "step-000000-features"
    default = ExtractConfig(dataset="procedural", layers=["fc3"], splits=["test"], workspace=str(tiny_classifier), limit=16)
    assert default.out_root() == tiny_classifier / "procedural/conv/features"

    # Same output directory, different model: the finished extraction is not reused.
    shared = default.model_copy(update={"out": str(tiny_classifier / "shared")})
    first = extract_features(shared, progress=False)["fc3"]["test"]
    assert json.loads(first.read_text())["model"].endswith("classifier/model.keras")
    again = extract_features(shared.model_copy(update={"model": str(checkpoint)}), progress=False)["fc3"]["test"]
    assert json.loads(again.read_text())["model"] == str(checkpoint)


def test_a_limited_extraction_never_stands_in_for_the_whole_split(tiny_classifier, tmp_path):
    config = ExtractConfig(dataset="procedural", layers=["fc3"], splits=["validation"], workspace=str(tiny_classifier),
                           out=str(tmp_path / "f"), limit=40)
    extract_features(config, progress=False)
    bigger = extract_features(config.model_copy(update={"limit": 70}), progress=False)["fc3"]["validation"]
    assert open_features(bigger.parent).num_examples == 70
