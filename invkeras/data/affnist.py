"""A TFDS builder for affNIST (`affnist`), with an `official` and a `generated` config.

affNIST (https://www.cs.toronto.edu/~tijmen/affNIST/) puts MNIST digits through random
affine transforms onto a 40x40 canvas. Importing this module registers the builder, so
`tfds.builder("affnist/official", data_dir=...)` works like any catalogue dataset.

`official` (default)
    Reads the official transformed set: the `affNISTdata` struct of each MATLAB file,
    whose `image` field is uint8 [1600, N] (column n is image n, 40x40 in row-major
    order) and whose `label_int` field holds the N digit labels. Splits follow the
    official ones: train (1.6M images from 50k MNIST training digits, 32 transforms
    each), validation (320k, from the other 10k) and test (320k, from MNIST test).
    Either `download_and_prepare` fetches `training_batches.zip`,
    `validation_batches.zip` and `test_batches.zip` from the affNIST page, or the user
    puts them (zipped or extracted) or the all-in-one `training.mat`, `validation.mat`,
    `test.mat` into the manual directory, `DATA_DIR/downloads/manual/` by default.

`generated`
    NOT the official set: affNIST-style data that invkeras generates from MNIST with
    the official transformation ranges (`invkeras.data.affine`): one transformed
    copy of each MNIST digit, train = the first 50,000 MNIST training digits,
    validation = the last 10,000 (the last sixth for other sizes), test = the 10,000
    MNIST test digits. MNIST comes from the IDX files (`train-images-idx3-ubyte.gz`,
    ...) in the manual directory, or is downloaded. Example i of a split always gets
    the transform drawn from `affine.example_rng(GENERATED_SEED, split stream, i)`.

File access goes through `epath` (TFDS's own path layer), never `os` or `open`, as
TFDS requires of builders.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath

from invkeras.data import affine, local

IMAGE_SHAPE = (affine.CANVAS_SIZE, affine.CANVAS_SIZE, 1)
NUM_CLASSES = 10
HOMEPAGE = "https://www.cs.toronto.edu/~tijmen/affNIST/"

OFFICIAL_URLS = {
    "train": HOMEPAGE + "32x/transformed/training_batches.zip",
    "validation": HOMEPAGE + "32x/transformed/validation_batches.zip",
    "test": HOMEPAGE + "32x/transformed/test_batches.zip",
}
# Name stems of the official files for each split: `<stem>_batches[.zip]` or `<stem>.mat[.zip]`.
OFFICIAL_STEMS = {"train": "training", "validation": "validation", "test": "test"}

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
GENERATED_SEED = 0
GENERATED_STREAMS = {"train": 0, "validation": 1, "test": 2}
_GENERATE_CHUNK = 1000

_DESCRIPTIONS = {
    "official": (
        "affNIST, the official transformed set: MNIST digits under random affine transforms "
        "(rotation up to 20 degrees, shear up to 0.2, scale 0.8-1.2 per axis, free placement) on a 40x40 canvas, "
        "read from the .mat files published by Tijmen Tieleman."
    ),
    "generated": (
        "GENERATED affNIST-style data, not the official affNIST set: invkeras applies the affNIST transformation "
        "ranges to MNIST (one transformed copy per digit; train/validation = MNIST train digits 1-50,000 / "
        "50,001-60,000, test = MNIST test)."
    ),
}

_CITATION = """@misc{tieleman2013affnist,
  author = {Tieleman, Tijmen},
  title = {The affNIST dataset for machine learning},
  year = {2013},
  howpublished = {\\url{https://www.cs.toronto.edu/~tijmen/affNIST/}}
}"""


class Affnist(tfds.core.GeneratorBasedBuilder):
    """affNIST 40x40 digits: the official .mat files, or a generated affNIST-style set."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: `official` and `generated` configs."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="official", description="The official affNIST transformed set (.mat files)."),
        tfds.core.BuilderConfig(
            name="generated",
            description="Generated from MNIST by invkeras with affNIST's ranges; not the official set.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "official"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Optional (otherwise the files are downloaded). For the `official` config, put into the
    manual directory either `training_batches.zip`, `validation_batches.zip` and
    `test_batches.zip` (zipped or extracted) from
    https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/ or the all-in-one
    `training.mat`, `validation.mat`, `test.mat`. For the `generated` config, put the four
    MNIST IDX files there (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
    `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, gzipped or not).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTIONS[self.builder_config.name],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self.builder_config.name == "official":
            mat_files = _official_mat_files(dl_manager)
            return {split: self._generate_examples(mat_files=files) for split, files in mat_files.items()}
        mnist = _mnist_files(dl_manager)
        train_x, train_y = _read_idx_pair(mnist["train_images"], mnist["train_labels"])
        test_x, test_y = _read_idx_pair(mnist["test_images"], mnist["test_labels"])
        num_validation = len(train_x) // 6  # 10,000 of MNIST's 60,000, as in affNIST
        num_train = len(train_x) - num_validation
        digits = {
            "train": (train_x[:num_train], train_y[:num_train]),
            "validation": (train_x[num_train:], train_y[num_train:]),
            "test": (test_x, test_y),
        }
        return {
            split: self._generate_examples(digits=x, labels=y, stream=GENERATED_STREAMS[split])
            for split, (x, y) in digits.items()
        }

    def _generate_examples(self, mat_files=None, digits=None, labels=None, stream=0) -> Iterator[tuple[str, dict]]:
        """Official: every image of every .mat file, in file order. Generated: transformed MNIST digits."""
        if mat_files is not None:
            for file_index, path in enumerate(mat_files):
                images, file_labels = read_affnist_mat(path)
                for i, (image, label) in enumerate(zip(images, file_labels)):
                    yield f"{file_index:03d}_{i:06d}", {"image": image, "label": int(label)}
            return
        for start in range(0, len(digits), _GENERATE_CHUNK):
            chunk = affine.transform_batch(digits[start : start + _GENERATE_CHUNK], GENERATED_SEED, stream, start)
            for offset, image in enumerate(chunk):
                index = start + offset
                yield f"{index:06d}", {"image": image, "label": int(labels[index])}


# --- official .mat files -----------------------------------------------------------


def read_affnist_mat(path: epath.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 40, 40, 1] and labels int64 [N] from one official affNIST .mat file."""
    path = epath.Path(path)
    with path.open("rb") as file:
        contents = scipy.io.loadmat(file)
    if "affNISTdata" not in contents:
        raise ValueError(f"{path.name}: no `affNISTdata` struct; is this an affNIST .mat file?")
    record = contents["affNISTdata"][0, 0]
    pixels = np.asarray(record["image"])  # [1600, N], one image per column
    labels = np.asarray(record["label_int"]).reshape(-1).astype(np.int64)
    if pixels.shape[0] != np.prod(IMAGE_SHAPE) or pixels.shape[1] != len(labels):
        raise ValueError(f"{path.name}: expected image [1600, {len(labels)}], got {pixels.shape}")
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return pixels.T.reshape((-1,) + IMAGE_SHAPE), labels


def _natural_key(path: epath.Path) -> list:
    """Sort `2.mat` before `10.mat`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _mat_files_under(root: epath.Path, depth: int = 3) -> list[epath.Path]:
    """`.mat` files in `root` and a few levels below (archives may wrap them in a folder)."""
    if root.is_file():
        return [root] if root.suffix == ".mat" else []
    if depth == 0 or not root.is_dir():
        return []
    found = [f for child in root.iterdir() for f in _mat_files_under(child, depth - 1)]
    return sorted(found, key=_natural_key)


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
    """The manual directory if the user filled one; TFDS raises when it is absent or empty."""
    try:
        return epath.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):
        return None


def _official_from_manual(dl_manager, manual_dir: epath.Path) -> dict[str, list[epath.Path]]:
    found = {}
    for split, stem in OFFICIAL_STEMS.items():
        for name in (f"{stem}_batches", f"{stem}.mat", f"{stem}_batches.zip", f"{stem}.mat.zip"):
            candidate = manual_dir / name
            if candidate.exists():
                root = dl_manager.extract(candidate) if name.endswith(".zip") else candidate
                files = _mat_files_under(epath.Path(root))
                if files:
                    found[split] = files
                    break
    return found


def _official_mat_files(dl_manager) -> dict[str, list[epath.Path]]:
    """Split -> .mat files, from the manual directory when it holds them, else downloaded."""
    manual_dir = _manual_dir(dl_manager)
    found = _official_from_manual(dl_manager, manual_dir) if manual_dir is not None else {}
    if found and len(found) < len(OFFICIAL_STEMS):
        missing = ", ".join(OFFICIAL_STEMS[s] for s in OFFICIAL_STEMS if s not in found)
        raise ValueError(f"affnist/official: the manual directory {manual_dir} lacks the {missing} files")
    if not found:
        extracted = dl_manager.download_and_extract(OFFICIAL_URLS)
        found = {split: _mat_files_under(epath.Path(extracted[split])) for split in OFFICIAL_URLS}
        empty = [split for split, files in found.items() if not files]
        if empty:
            raise ValueError(f"affnist/official: no .mat files in the downloaded {', '.join(empty)} archive(s)")
    return found


# --- MNIST for the generated config ------------------------------------------------


def _mnist_files(dl_manager) -> dict[str, epath.Path]:
    """The four MNIST IDX files, from the manual directory when all are there, else downloaded."""
    manual_dir = _manual_dir(dl_manager)
    if manual_dir is not None:
        found = {}
        for key in MNIST_FILES:
            split, kind = key.split("_")
            path = local.find_idx_file(manual_dir, "train" if split == "train" else "t10k", kind)
            if path is not None:
                found[key] = path
        if len(found) == len(MNIST_FILES):
            return found
    downloaded = dl_manager.download({key: MNIST_URL + name for key, name in MNIST_FILES.items()})
    return {key: epath.Path(path) for key, path in downloaded.items()}


def _read_idx_pair(images_path: epath.Path, labels_path: epath.Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = local.read_idx_file(images_path), local.read_idx_file(labels_path)
    if images.shape[1:] != (affine.DIGIT_SIZE, affine.DIGIT_SIZE) or len(images) != len(labels):
        raise ValueError(f"{images_path.name}: expected 28x28 MNIST digits matching {labels_path.name}")
    return images, labels.astype(np.int64)
