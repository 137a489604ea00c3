"""Extraction streams shards in the documented format; reading accepts extracts and user .npz files."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.data import registry
from invkeras.data.features import ExtractConfig, extract_features, open_features
from cli_errors import assert_one_line_error  # tests/cli_errors.py


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


def test_a_capped_read_of_features_holds_the_images_a_capped_read_of_the_dataset_holds(tiny_classifier):
    """Features and images of one split, both capped, must pair up: estimate-mi subtracts the
    unconditional model's NLL of an image (read from the dataset) from the conditional one's
    (read from the features)."""
    from invkeras.data import load_arrays

    config = ExtractConfig(dataset="procedural", layers=["fc3"], splits=["validation"], workspace=str(tiny_classifier),
                           shard_size=250, limit=600)
    features = open_features(extract_features(config, progress=False)["fc3"]["validation"].parent)
    whole = features.load_all()
    for cap in (1, 37, 599):
        capped = features.load_all(cap)
        images, labels = load_arrays("procedural", "validation", limit=600)
        positions = registry.capped_positions(600, cap)
        assert len(capped["x"]) == cap
        np.testing.assert_array_equal(capped["x"], whole["x"][positions])
        np.testing.assert_array_equal(capped["h"], whole["h"][positions])
        np.testing.assert_array_equal(capped["x"], images[positions])
    np.testing.assert_array_equal(features.load_all(600)["x"], whole["x"])


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

    # Same path, other weights (a classifier retrained in place): extracted again, from them.
    before = json.loads(again.read_text())["model_sha256"], open_features(again.parent).load_all()["h"]
    model = keras.saving.load_model(checkpoint, compile=False)
    model.set_weights([w + 0.5 for w in model.get_weights()])
    model.save(checkpoint)
    moved = extract_features(shared.model_copy(update={"model": str(checkpoint)}), progress=False)["fc3"]["test"]
    assert json.loads(moved.read_text())["model_sha256"] not in (None, before[0])
    assert not np.allclose(open_features(moved.parent).load_all()["h"], before[1])


def test_a_limited_extraction_never_stands_in_for_the_whole_split(tiny_classifier, tmp_path):
    config = ExtractConfig(dataset="procedural", layers=["fc3"], splits=["validation"], workspace=str(tiny_classifier),
                           out=str(tmp_path / "f"), limit=40)
    extract_features(config, progress=False)
    bigger = extract_features(config.model_copy(update={"limit": 70}), progress=False)["fc3"]["validation"]
    assert open_features(bigger.parent).num_examples == 70


# --- feature directories from anywhere: checked where they are read ---------------------------


def write_split(root, split, n, *, image=(8, 8, 1), h=(5,), shard_size=8, seed=0):
    """One split of a small, valid extract directory, written without a model."""
    from invkeras.data.features import write_features

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *image), dtype=np.uint8)
    return write_features(root / split, layer="mine", split=split, x=x, h=rng.normal(size=(n, *h)),
                          y=np.arange(n) % 3, dataset="mine", config={}, seed=0, source="elsewhere",
                          shard_size=shard_size)


@pytest.fixture
def features_dir(tmp_path):
    root = tmp_path / "features"
    for split, n in (("train", 40), ("validation", 6), ("test", 6)):  # train: 5 shards of 8
        write_split(root, split, n, seed=len(split))
    return root


def train_inverter_on(features):
    from typer.testing import CliRunner

    from invkeras.cli import app

    return CliRunner().invoke(app, ["train-inverter", "--features", str(features), "--kind", "mse", "--max-steps", "1",
                                    "--out", str(features.parent / "inverter")])


def edit_manifest(root, split, change):
    path = root / split / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(change(manifest) if callable(change) else change)
    return path


def test_a_valid_features_directory_trains(features_dir):
    result = train_inverter_on(features_dir)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("change, fragments", [
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["expected a JSON object, got a list"]),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "shards"}), ["lacks 'shards'"]),
    (lambda m: json.dumps({**m, "shards": [s["file"] for s in m["shards"]]}),
     ["shards[0]: expected an object, got the string 'shard-00000.npz'"]),
    (lambda m: json.dumps({**m, "shards": [{**m["shards"][0], "file": "../../other.npz"}, *m["shards"][1:]]}),
     ["shards[0].file", "'../../other.npz' is not a file of the manifest's own folder"]),
    (lambda m: json.dumps({**m, "shards": [{**m["shards"][0], "file": "/etc/passwd"}, *m["shards"][1:]]}),
     ["'/etc/passwd' is not a file of the manifest's own folder"]),
    (lambda m: json.dumps({**m, "num_examples": 99}), ["the shards hold 40 examples in all, but num_examples is 99"]),
    (lambda m: json.dumps({**m, "format": "something-else"}), ["unknown format 'something-else'"]),
    (lambda m: json.dumps({**m, "h_shape": "5"}), ["h_shape: expected a list, got the string '5'"]),
])
def test_a_broken_manifest_is_one_line_naming_it(features_dir, change, fragments):
    path = edit_manifest(features_dir, "train", change)
    assert_one_line_error(train_inverter_on(features_dir), f"features {path}:", *fragments)


def test_a_shard_linked_from_outside_its_folder_is_refused(features_dir, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    (features_dir / "train" / "shard-00001.npz").rename(outside)
    (features_dir / "train" / "shard-00001.npz").symlink_to(outside)
    assert_one_line_error(train_inverter_on(features_dir), str(features_dir / "train" / "manifest.json"),
                          "shard shard-00001.npz leads outside")


def _replace_shard(root, name, **arrays):
    with np.load(root / "train" / name) as shard:
        np.savez(root / "train" / name, **{**dict(shard), **arrays})


@pytest.mark.parametrize("change, fragments", [
    # h of another shape than the manifest's (and than the other shards')
    (lambda root: _replace_shard(root, "shard-00001.npz", h=np.zeros((8, 4), np.float32)),
     ["shard-00001.npz: h has shape (4,) per example", "says (5,)"]),
    (lambda root: _replace_shard(root, "shard-00000.npz", h=np.zeros((8, 5, 1), np.float32)),
     ["shard-00000.npz: h has shape (5, 1) per example"]),
    # images of another size
    (lambda root: _replace_shard(root, "shard-00002.npz", x=np.zeros((8, 9, 8, 1), np.uint8)),
     ["shard-00002.npz: x has shape (9, 8, 1) per example", "says (8, 8, 1)"]),
    # fewer examples than the manifest lists
    (lambda root: _replace_shard(root, "shard-00001.npz", x=np.zeros((7, 8, 8, 1), np.uint8),
                                 h=np.zeros((7, 5), np.float32), y=np.zeros(7, np.int64)),
     ["shard-00001.npz: holds 7 examples", "says 8"]),
])
def test_a_shard_unlike_its_manifest_is_one_line_naming_it(features_dir, change, fragments):
    change(features_dir)
    assert_one_line_error(train_inverter_on(features_dir), "features", *fragments)


@pytest.mark.parametrize("split, shapes, fragments", [
    ("validation", dict(image=(9, 9, 1)), ["validation images have shape (9, 9, 1)", "training images", "(8, 8, 1)"]),
    ("validation", dict(image=(8, 8, 3)), ["validation images have shape (8, 8, 3)"]),
    ("test", dict(image=(16, 16, 1)), ["test images have shape (16, 16, 1)"]),
    ("test", dict(h=(6,)), ["test features h have shape (6,)", "(5,)"]),
])
def test_splits_of_other_shapes_than_the_training_split_are_one_line(features_dir, split, shapes, fragments):
    import shutil

    shutil.rmtree(features_dir / split)
    write_split(features_dir, split, 6, **shapes)
    assert_one_line_error(train_inverter_on(features_dir), f"features {features_dir / split / 'manifest.json'}",
                          *fragments)


# --- temporary folders of killed runs ------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _leftover(parent, name, mark, age_s=0):
    """A temporary split folder as a run leaves it: a shard, and the writer's mark (or none)."""
    import os
    import socket
    import tempfile
    import time

    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))  # as artifacts.atomic_dir names it
    (folder / "shard-00000.npz").write_bytes(b"partial")
    if mark is not None:
        (folder / ".writer.json").write_text(json.dumps({"pid": mark, "host": socket.gethostname()}))
    then = time.time() - age_s
    os.utime(folder, (then, then))
    return folder


def test_a_rerun_removes_the_temporary_folders_killed_runs_left_and_keeps_live_ones(tmp_path):
    import os

    from invkeras.data.features import remove_stale_temporaries

    root = tmp_path / "features"
    killed = _leftover(root, "train", _dead_pid())
    unmarked_old = _leftover(root, "train", None, age_s=3600)  # from a kill before the mark, or an older version
    running = _leftover(root, "train", os.getpid())  # a writer still at work
    unmarked_new = _leftover(root, "train", None)  # just made: not marked yet
    other_split = _leftover(root, "test", _dead_pid())
    someones = _leftover(root, "train", None, age_s=3600)  # named alike, but not a split's
    (someones / "notes.txt").write_text("keep me")
    write_split(root, "train", 10)
    assert not killed.exists() and not unmarked_old.exists()
    assert running.exists() and unmarked_new.exists() and other_split.exists() and someones.exists()
    assert sorted(p.name for p in (root / "train").iterdir()) == ["manifest.json", "manifest.json.meta.json",
                                                                  "shard-00000.npz", "shard-00001.npz"]
    assert remove_stale_temporaries(root / "test") == [other_split]


def test_extract_cleans_up_after_a_killed_extraction_of_the_same_output(tiny_classifier, tmp_path):
    config = ExtractConfig(dataset="procedural", layers=["fc3"], splits=["test"], workspace=str(tiny_classifier),
                           limit=16, out=str(tmp_path / "out"))
    killed = _leftover(tmp_path / "out" / "fc3", "test", _dead_pid())
    extract_features(config, progress=False)
    assert not killed.exists()
    assert [p.name for p in (tmp_path / "out" / "fc3").iterdir()] == ["test"]
    killed = _leftover(tmp_path / "out" / "fc3", "test", _dead_pid())
    extract_features(config, progress=False)  # complete already: nothing to write, still cleaned
    assert not killed.exists()
