"""`load_keras_model`: a good `.keras` file loads; every kind of bad one is refused with one
InvkerasError line that names the file and what it was meant to be."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.models import load_keras_model

KERNEL = np.arange(6, dtype="float32").reshape(3, 2)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    inputs = keras.Input((3,))
    path = tmp_path_factory.mktemp("good") / "model.keras"
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    model.get_layer("dense").set_weights([KERNEL, np.array([0.5, -0.5], "float32")])
    model.save(path)
    return path


def _rewrite_archive(source, target, change):
    """Copy a .keras archive, passing each member's bytes through `change(name, data)`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for name in src.namelist():
            out.writestr(name, change(name, src.read(name)))
    return target


def _unknown_layer(config: bytes) -> bytes:
    """The model's config with its Dense layer turned into a class nobody registered."""
    model = json.loads(config)
    (dense,) = [layer for layer in model["config"]["layers"] if layer["class_name"] == "Dense"]
    dense.update(module=None, class_name="NoSuchLayer", registered_name="tests>NoSuchLayer")
    return json.dumps(model).encode()


def _missing(tmp_path, good):
    return tmp_path / "missing.keras"


def _empty(tmp_path, good):
    (tmp_path / "empty.keras").write_bytes(b"")
    return tmp_path / "empty.keras"


def _text(tmp_path, good):
    (tmp_path / "notes.keras").write_text("these are notes,\nnot a model\n")
    return tmp_path / "notes.keras"


def _truncated(tmp_path, good):
    (tmp_path / "truncated.keras").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return tmp_path / "truncated.keras"


def _other_zip(tmp_path, good):
    with zipfile.ZipFile(tmp_path / "photos.keras", "w") as archive:
        archive.writestr("photo.txt", "not a model")
    return tmp_path / "photos.keras"


def _corrupt_config(tmp_path, good):
    return _rewrite_archive(good, tmp_path / "config.keras",
                            lambda name, data: b"{not json" if name == "config.json" else data)


def _corrupt_weights(tmp_path, good):
    return _rewrite_archive(good, tmp_path / "weights.keras",
                            lambda name, data: data[:50] if name.endswith(".h5") else data)


def _unregistered_layer(tmp_path, good):
    return _rewrite_archive(good, tmp_path / "unknown.keras",
                            lambda name, data: _unknown_layer(data) if name == "config.json" else data)


def _lambda_layer(tmp_path, good):
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "lambda.keras")
    return tmp_path / "lambda.keras"


def _directory(tmp_path, good):
    (tmp_path / "folder.keras").mkdir()
    return tmp_path / "folder.keras"


def _wrong_suffix(tmp_path, good):
    (tmp_path / "model.h5").write_bytes(good.read_bytes())
    return tmp_path / "model.h5"


BAD_FILES = {
    _missing: "file not found",
    _empty: "empty file",
    _text: "not a .keras archive: truncated or corrupted",
    _truncated: "not a .keras archive: truncated or corrupted",
    _other_zip: "a zip archive without the config.json of a .keras file",
    _corrupt_config: "JSONDecodeError",
    _corrupt_weights: "OSError",
    _unregistered_layer: "it uses the class 'NoSuchLayer', which is not registered with Keras",
    _lambda_layer: "safe mode refuses it",
    _directory: "a directory, not a .keras file",
    _wrong_suffix: "expected a .keras file",
}


@pytest.mark.parametrize("make_bad_file", BAD_FILES, ids=lambda make: make.__name__.strip("_"))
def test_a_bad_file_is_one_line_naming_the_file_what_it_should_be_and_why(make_bad_file, good_file, tmp_path):
    path = make_bad_file(tmp_path, good_file)
    with pytest.raises(InvkerasError) as info:
        load_keras_model(path, what="test model", flag="--model")
    message = str(info.value)
    assert message.startswith(f"--model {path}: not a loadable test model (")
    assert BAD_FILES[make_bad_file] in message
    assert "\n" not in message and len(message) < len(str(path)) + 250


def test_without_a_flag_the_message_starts_with_the_path(tmp_path):
    with pytest.raises(InvkerasError) as info:
        load_keras_model(tmp_path / "gone.keras", what="decoder")
    assert str(info.value) == f"{tmp_path / 'gone.keras'}: not a loadable decoder (file not found)"


def test_a_good_file_loads_with_its_weights(good_file):
    model = load_keras_model(good_file, what="test model")
    y = keras.ops.convert_to_numpy(model(np.ones((1, 3), "float32")))
    np.testing.assert_allclose(y, KERNEL.sum(axis=0, keepdims=True) + [[0.5, -0.5]])
