"""The `affnist` TFDS builder (both configs, manual and download paths) and its specs, offline.

Dummy inputs are written to a temporary directory by tests/data/affnist_dummy.py when this module
loads (official: 6 train / 2 validation / 3 test images; generated: 12 MNIST train digits ->
10 train + 2 validation, 4 test digits). TFDS's test classes read the directory from a class
attribute, so it must exist before the classes are defined.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from invkeras.data import affine, dataset_info, load_arrays, registry
from invkeras.data.affnist import Affnist, read_affnist_mat
from invkeras.errors import InvkerasError

from affnist_dummy import write_dummy_affnist  # a helper beside this file; pytest puts this folder on sys.path

DUMMY = write_dummy_affnist(Path(tempfile.mkdtemp(prefix="invkeras-affnist-dummy-")))
atexit.register(shutil.rmtree, DUMMY, ignore_errors=True)
OFFICIAL_SPLITS = {"train": 6, "validation": 2, "test": 3}
GENERATED_SPLITS = {"train": 10, "validation": 2, "test": 4}


# --- TFDS's own builder checks, one class per config and input path -------------------


class OfficialFromManualDirTest(tfds.testing.DatasetBuilderTestCase):
    """The user dropped the .mat files (batch folders and an all-in-one test.mat) into manual_dir."""

    DATASET_CLASS = Affnist
    BUILDER_CONFIG_NAMES_TO_TEST = ["official"]
    EXAMPLE_DIR = str(DUMMY / "official")
    SPLITS = OFFICIAL_SPLITS


class OfficialDownloadTest(tfds.testing.DatasetBuilderTestCase):
    """No files in manual_dir: the three official archives are downloaded and extracted."""

    DATASET_CLASS = Affnist
    BUILDER_CONFIG_NAMES_TO_TEST = ["official"]
    EXAMPLE_DIR = str(DUMMY)  # manual_dir without official files at its top level
    DL_EXTRACT_RESULT = {
        "train": "official/training_batches",
        "validation": "official/validation_batches",
        "test": "official/test.mat",
    }
    SPLITS = OFFICIAL_SPLITS
    SKIP_CHECKSUMS = True  # the official archives' checksums are not registered


class GeneratedFromManualDirTest(tfds.testing.DatasetBuilderTestCase):
    """MNIST IDX files in manual_dir, transformed by invkeras.data.affine."""

    DATASET_CLASS = Affnist
    BUILDER_CONFIG_NAMES_TO_TEST = ["generated"]
    EXAMPLE_DIR = str(DUMMY / "generated")
    SPLITS = GENERATED_SPLITS


class GeneratedDownloadTest(tfds.testing.DatasetBuilderTestCase):
    """No IDX files in manual_dir: MNIST is downloaded."""

    DATASET_CLASS = Affnist
    BUILDER_CONFIG_NAMES_TO_TEST = ["generated"]
    EXAMPLE_DIR = str(DUMMY)
    DL_DOWNLOAD_RESULT = {
        "train_images": "generated/train-images-idx3-ubyte.gz",
        "train_labels": "generated/train-labels-idx1-ubyte.gz",
        "test_images": "generated/t10k-images-idx3-ubyte.gz",
        "test_labels": "generated/t10k-labels-idx1-ubyte.gz",
    }
    SPLITS = GENERATED_SPLITS
    SKIP_CHECKSUMS = True


# --- pieces of the builder -------------------------------------------------------------


def test_mat_reader_keeps_row_major_orientation(tmp_path):
    image = np.zeros((40, 40), dtype=np.uint8)
    image[2, 30] = 255  # top right: a transposed read would put it bottom left
    struct = {"image": image.reshape(1, -1).T, "label_int": np.array([[7]], dtype=np.uint8)}
    scipy.io.savemat(tmp_path / "one.mat", {"affNISTdata": struct})
    images, labels = read_affnist_mat(tmp_path / "one.mat")
    assert images.shape == (1, 40, 40, 1) and images.dtype == np.uint8
    assert images[0, 2, 30, 0] == 255 and images[0, 30, 2, 0] == 0
    assert labels.tolist() == [7] and labels.dtype == np.int64


def test_mat_reader_rejects_other_mat_files(tmp_path):
    scipy.io.savemat(tmp_path / "other.mat", {"something": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="affNISTdata"):
        read_affnist_mat(tmp_path / "other.mat")


def test_generated_config_says_it_is_not_the_official_set():
    builder = tfds.builder("affnist/generated", data_dir="/tmp/unused-invkeras-affnist")
    assert "GENERATED" in builder.info.description and "not the official" in builder.info.description
    assert "not the official" not in tfds.builder("affnist/official", data_dir="/tmp/unused").info.description


# --- the `affnist` specs through the registry -------------------------------------------


def _data_dir_with_manual_files(tmp_path: Path, source: Path) -> Path:
    shutil.copytree(source, tmp_path / "downloads" / "manual")
    return tmp_path


def test_affnist_spec_prepares_from_manual_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_network_available", lambda: pytest.fail("must not probe the network"))
    data_dir = str(_data_dir_with_manual_files(tmp_path, DUMMY / "official"))
    info = dataset_info("affnist", data_dir=data_dir)
    assert info.image_shape == (40, 40, 1) and info.num_classes == 10
    assert info.split_sizes == OFFICIAL_SPLITS  # official validation split used, nothing carved
    x, y = load_arrays("affnist", "test", data_dir=data_dir)
    expected_x, expected_y = read_affnist_mat(DUMMY / "official" / "test.mat")
    assert _as_set(x, y) == _as_set(expected_x, expected_y)  # TFDS shuffles example order when it writes


def _as_set(x: np.ndarray, y: np.ndarray) -> set[tuple[bytes, int]]:
    return {(image.tobytes(), int(label)) for image, label in zip(x, y)}


def test_affnist_generated_spec_matches_the_affine_module(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_network_available", lambda: pytest.fail("must not probe the network"))
    data_dir = str(_data_dir_with_manual_files(tmp_path, DUMMY / "generated"))
    assert dataset_info("affnist/generated", data_dir=data_dir).split_sizes == GENERATED_SPLITS
    x, y = load_arrays("affnist/generated", "test", data_dir=data_dir)
    digits, labels = load_arrays(f"idx:{DUMMY / 'generated'}", "test")  # idx: with train+t10k keeps t10k as test
    assert _as_set(x, y) == _as_set(affine.transform_batch(digits, seed=0, stream=2), labels)


def test_affnist_spec_offline_gives_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_network_available", lambda: False)
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("affnist", data_dir=str(tmp_path))
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("dataset 'affnist':")
    assert "download failed" in message and str(tmp_path / "downloads" / "manual") in message
