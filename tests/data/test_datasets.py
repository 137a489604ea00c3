"""Dataset specs: procedural, idx:, npz:, folder:, TFDS (mocked and offline), affine, affnist-style.

No test touches the network: `no_network` makes every socket connection fail.
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invkeras.data import SPLITS, DatasetInfo, dataset_info, iter_batches, list_sources, load, load_arrays
from invkeras.data import affine, procedural, registry
from invkeras.data.local import parse_idx, write_idx_file
from invkeras.errors import InvkerasError

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared/data/mnist"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # also stops requests/urllib3, should a probe be skipped


def hashes(x: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in x}


def assert_one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- procedural ----------------------------------------------------------------------


def test_procedural_renders_every_factor_combination_distinctly():
    factors = procedural.all_factor_combinations()
    images = procedural.render(factors)
    assert len(factors) == procedural.NUM_COMBINATIONS == 4 * 3 * 12 * 12 * 4 == 6912
    assert images.shape == (6912, 20, 20, 1) and images.dtype == np.uint8
    assert len(hashes(images)) == 6912  # injective: x determines the factors


def test_procedural_entropy_is_log_of_the_number_of_combinations():
    assert procedural.ENTROPY_NATS == pytest.approx(math.log(6912))
    assert procedural.ENTROPY_NATS == pytest.approx(8.8410, abs=1e-4)
    assert dataset_info("procedural").entropy_nats == procedural.ENTROPY_NATS


def test_procedural_shapes_are_never_clipped_and_use_their_grey_level():
    factors = procedural.all_factor_combinations()
    images = procedural.render(factors)[..., 0]
    for shape, size_index, _, _, intensity_index in factors[::97]:
        mask = procedural.shape_mask(shape, procedural.SHAPE_SIZES_PX[size_index])
        image = procedural.render([shape, size_index, 0, 0, intensity_index])[..., 0]
        assert (image > 0).sum() == mask.sum()  # the whole mask is on the canvas
        assert set(np.unique(image)) == {0, procedural.INTENSITIES[intensity_index]}
    # the 9-px shapes at the extreme centres touch row/col 0 and 19 but are not cut
    assert images[:, 0, :].any() and images[:, -1, :].any()


def test_procedural_factor_names_sizes_and_render_agree():
    assert procedural.FACTOR_NAMES == ("shape", "size", "row", "col", "intensity")
    assert procedural.FACTOR_SIZES == (4, 3, 12, 12, 4)
    image = procedural.render([1, 0, 0, 11, 3])  # disc, 5 px, centre (4, 15), grey 255
    assert image.shape == (20, 20, 1)
    rows, cols = np.nonzero(image[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 6, 13, 17)
    with pytest.raises(ValueError):
        procedural.render([4, 0, 0, 0, 0])


def test_procedural_splits_sizes_dtypes_and_factors():
    for split, size in {"train": 20000, "validation": 2000, "test": 2000}.items():
        x, y, factors = procedural.load_split_with_factors(split, seed=0)
        assert x.shape == (size, 20, 20, 1) and x.dtype == np.uint8
        assert y.shape == (size,) and y.dtype == np.int64 and factors.shape == (size, 5)
        np.testing.assert_array_equal(y, factors[:, 0])
        np.testing.assert_array_equal(x[:200], procedural.render(factors[:200]))
    info = dataset_info("procedural")
    assert info == DatasetInfo(
        spec="procedural", image_shape=(20, 20, 1), num_classes=4,
        split_sizes={"train": 20000, "validation": 2000, "test": 2000}, source=info.source,
        class_names=("square", "disc", "triangle", "cross"), entropy_nats=procedural.ENTROPY_NATS,
    )


def test_procedural_draws_are_uniform_and_seeded():
    _, _, factors = procedural.load_split_with_factors("train", seed=0)
    for column, size in enumerate(procedural.FACTOR_SIZES):
        counts = np.bincount(factors[:, column], minlength=size)
        expected = len(factors) / size
        assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), (column, counts)
    x0, _ = load_arrays("procedural", "test", seed=0)
    np.testing.assert_array_equal(x0, load_arrays("procedural", "test", seed=0)[0])
    assert not np.array_equal(x0, load_arrays("procedural", "test", seed=1)[0])
    assert not np.array_equal(x0, load_arrays("procedural", "validation", seed=0)[0])


def test_procedural_generation_is_fast():
    procedural.generate(1, seed=0)  # build the render table first, as any real use does
    start = time.perf_counter()
    for split in SPLITS:
        load_arrays("procedural", split)
    assert time.perf_counter() - start < 2.0


def test_load_gives_the_same_examples_as_load_arrays():
    x, y = load_arrays("procedural", "validation")
    x, y = x[:50], y[:50]
    ds = load("procedural", "validation")
    assert ds.element_spec[0].shape == (20, 20, 1) and ds.element_spec[0].dtype.name == "uint8"
    assert ds.element_spec[1].shape == () and ds.element_spec[1].dtype.name == "int64"
    pairs = list(ds.take(50).as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([p[0] for p in pairs]), x)
    np.testing.assert_array_equal(np.array([p[1] for p in pairs]), y)


@pytest.mark.parametrize("source", ["procedural", "affnist-style over npz"])
def test_iter_batches_gives_the_examples_of_load_arrays_in_numpy_batches(source, tmp_path):
    """The batches extraction reads (no tf.data for non-TFDS sources, so no TensorFlow)."""
    spec = "procedural"
    if source != "procedural":  # a 28x28x1 local source under the affNIST-style transform
        x28 = np.pad(procedural.generate(30, seed=3)[0], ((0, 0), (4, 4), (4, 4), (0, 0)))
        np.savez(tmp_path / "d.npz", x=x28, y=np.arange(30) % 4)
        spec = f"affnist-style:npz:{tmp_path / 'd.npz'}"
    x, y = load_arrays(spec, "train", limit=23)
    batches = list(iter_batches(spec, "train", 10, limit=23))
    assert [len(b[0]) for b in batches] == [10, 10, 3]
    assert all(b[0].dtype == np.uint8 and b[1].dtype == np.int64 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    with pytest.raises(InvkerasError, match="batch size must be >= 1"):
        next(iter_batches(spec, "train", 0))


# --- split carving ------------------------------------------------------------------


def test_plan_splits_carves_disjoint_deterministic_splits_from_one_pool():
    plan = registry.plan_splits({"train": 1000}, seed=3)
    sizes = {split: len(plan[split][1]) for split in SPLITS}
    assert sizes == {"train": 810, "validation": 90, "test": 100}
    everything = np.concatenate([plan[split][1] for split in SPLITS])
    assert sorted(everything.tolist()) == list(range(1000))  # disjoint and complete
    # Shuffled order, so the first N of a held-out split are a uniform sample of it.
    assert not any(np.all(np.diff(plan[split][1]) > 0) for split in SPLITS)
    again = registry.plan_splits({"train": 1000}, seed=3)
    other = registry.plan_splits({"train": 1000}, seed=4)
    assert all(np.array_equal(plan[s][1], again[s][1]) for s in SPLITS)
    assert not np.array_equal(plan["test"][1], other["test"][1])


def test_plan_splits_only_carves_what_is_missing():
    plan = registry.plan_splits({"train": 600, "test": 100}, seed=0)
    assert plan["test"] == ("test", None)
    assert (len(plan["train"][1]), len(plan["validation"][1])) == (540, 60)
    full = registry.plan_splits({"train": 5, "validation": 2, "test": 3}, seed=0)
    assert full == {"train": ("train", None), "validation": ("validation", None), "test": ("test", None)}


# --- idx: -------------------------------------------------------------------------------


def write_idx_set(directory: Path, prefix: str, n: int, seed: int, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    write_idx_file(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx_file(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def test_idx_parser_reads_header_and_rejects_bad_magic():
    data = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    np.testing.assert_array_equal(parse_idx(data), np.arange(6, dtype=np.uint8).reshape(2, 3))
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x01\x00\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="bytes"):
        parse_idx(data[:-1])


def test_idx_test_set_only_is_carved_81_9_10(tmp_path):
    images, labels = write_idx_set(tmp_path, "t10k", 200, seed=0, gz=False)
    spec = f"idx:{tmp_path}"
    info = dataset_info(spec)
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.split_sizes == {"train": 162, "validation": 18, "test": 20}
    splits = {s: load_arrays(spec, s) for s in SPLITS}
    for split, (x, y) in splits.items():
        assert x.dtype == np.uint8 and y.dtype == np.int64 and len(x) == info.split_sizes[split]
    seen = [hashes(splits[s][0]) for s in SPLITS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set().union(*seen) == hashes(images)
    same = load_arrays(spec, "test", seed=0)[0]
    other = load_arrays(spec, "test", seed=1)[0]
    np.testing.assert_array_equal(splits["test"][0], same)
    assert hashes(other) != seen[2]


def test_idx_with_train_and_t10k_keeps_the_official_test_set(tmp_path):
    write_idx_set(tmp_path, "train", 100, seed=1)
    test_images, test_labels = write_idx_set(tmp_path, "t10k", 30, seed=2)
    spec = f"idx:{tmp_path}"
    assert dataset_info(spec).split_sizes == {"train": 90, "validation": 10, "test": 30}
    x, y = load_arrays(spec, "test")
    np.testing.assert_array_equal(x[..., 0], test_images)
    np.testing.assert_array_equal(y, test_labels)
    assert load_arrays(spec, "train", limit=7)[0].shape == (7, 28, 28, 1)


def test_idx_errors_name_the_spec_and_the_problem(tmp_path):
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"idx:{tmp_path / 'nope'}")
    assert_one_line_error(excinfo, f"dataset 'idx:{tmp_path / 'nope'}'", "directory not found")
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"idx:{tmp_path}")
    assert_one_line_error(excinfo, "no train-images-idx3-ubyte")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"nor this")
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"idx:{tmp_path}")
    assert_one_line_error(excinfo, "t10k-images-idx3-ubyte", "magic")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no shared MNIST copy at {SHARED_MNIST}")
def test_real_mnist_test_set_via_idx():
    spec = f"idx:{SHARED_MNIST}"
    info = dataset_info(spec)
    assert info.split_sizes == {"train": 8100, "validation": 900, "test": 1000}
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    x, y = load_arrays(spec, "validation")
    assert x.shape == (900, 28, 28, 1) and x.dtype == np.uint8 and set(np.unique(y)) == set(range(10))
    assert 0.1 < x.mean() / 255 < 0.2  # MNIST: mostly black, ~13% ink
    test_x = load_arrays(spec, "test")[0]
    assert not hashes(x) & hashes(test_x)
    np.testing.assert_array_equal(test_x, load_arrays(spec, "test")[0])


# --- npz: and folder: -------------------------------------------------------------------


def test_npz_single_pool_with_nhw_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 8, 8), dtype=np.uint8)
    y = np.arange(60) % 3
    np.savez(tmp_path / "data.npz", x=x, y=y)
    spec = f"npz:{tmp_path / 'data.npz'}"
    info = dataset_info(spec)
    assert (info.image_shape, info.num_classes) == ((8, 8, 1), 3)
    assert info.split_sizes == {"train": 49, "validation": 5, "test": 6}  # 10% of 60, then 10% of 54 (rounded)
    parts = [load_arrays(spec, s)[0] for s in SPLITS]
    assert sum(len(p) for p in parts) == 60 and len(set().union(*map(hashes, parts))) == 60


def test_a_capped_read_of_a_class_sorted_file_spreads_over_every_class(tmp_path):
    # Some archives are sorted by class: the first 25 examples of a declared test split in the
    # file's order would all be class 0. A cap takes the first 25 of a fixed shuffle.
    x = np.arange(1000, dtype=np.uint32).view(np.uint8).reshape(1000, 2, 2)  # each image unique
    y = np.repeat(np.arange(10), 100)
    np.savez(tmp_path / "sorted.npz", x=x, y=y, x_test=x, y_test=y)
    spec = f"npz:{tmp_path / 'sorted.npz'}"
    for split in ("test", "validation", "train"):
        whole_x, whole_y = load_arrays(spec, split)
        capped_x, capped_y = load_arrays(spec, split, limit=25)
        assert len(set(capped_y.tolist())) >= 6, (split, capped_y)
        positions = registry.capped_positions(len(whole_y), 25)
        np.testing.assert_array_equal(capped_x, whole_x[positions])
        np.testing.assert_array_equal(capped_y, whole_y[positions])
        np.testing.assert_array_equal(load_arrays(spec, split, limit=8)[0], capped_x[:8])  # nested
    np.testing.assert_array_equal(load_arrays(spec, "test", limit=1000)[1], y)  # a cap of everything keeps it all


def test_the_capped_sample_is_fixed_uniform_and_nested():
    positions = registry.capped_positions(10_000, 1_000)
    np.testing.assert_array_equal(positions, registry.capped_positions(10_000, 1_000))
    np.testing.assert_array_equal(positions[:10], registry.capped_positions(10_000, 10))
    assert len(set(positions.tolist())) == 1_000 and positions.min() >= 0 and positions.max() < 10_000
    # Uniform: each tenth of the split holds about a tenth of the sample (sd about 9.5).
    per_tenth = np.bincount(positions // 1_000, minlength=10)
    assert per_tenth.min() >= 60 and per_tenth.max() <= 140, per_tenth
    assert registry.capped_positions(50, None) is None and registry.capped_positions(50, 50) is None
    assert len(registry.capped_positions(50, 0)) == 0


def test_npz_with_its_own_test_arrays(tmp_path):
    x = np.zeros((20, 4, 4, 3), np.uint8) + np.arange(20, dtype=np.uint8)[:, None, None, None]
    x_test = np.full((5, 4, 4, 3), 200, np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(20, np.int64), x_test=x_test, y_test=np.ones(5, np.int64))
    spec = f"npz:{tmp_path / 'd.npz'}"
    assert dataset_info(spec).split_sizes == {"train": 18, "validation": 2, "test": 5}
    np.testing.assert_array_equal(load_arrays(spec, "test")[0], x_test)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 2, 2), np.float32), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"npz:{tmp_path / 'float.npz'}")
    assert_one_line_error(excinfo, "uint8", "float32")
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"npz:{tmp_path / 'nolabels.npz'}")
    assert_one_line_error(excinfo, "lacks", "y")
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"npz:{tmp_path / 'missing.npz'}")
    assert_one_line_error(excinfo, "file not found")


def write_pngs(root: Path, classes: dict[str, int], size=(6, 5), mode="L") -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = size[::-1] + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(root / name / f"{i}.png")


def test_folder_of_pngs(tmp_path):
    write_pngs(tmp_path, {"cats": 12, "dogs": 8})
    spec = f"folder:{tmp_path}"
    info = dataset_info(spec)
    assert info.class_names == ("cats", "dogs") and info.num_classes == 2
    assert info.image_shape == (5, 6, 1)
    assert sum(info.split_sizes.values()) == 20 and info.split_sizes["test"] == 2
    x, y = load_arrays(spec, "train")
    assert x.dtype == np.uint8 and set(y.tolist()) <= {0, 1}


def test_folder_rgb_and_errors(tmp_path):
    write_pngs(tmp_path / "rgb", {"a": 3, "b": 3}, mode="RGB")
    assert dataset_info(f"folder:{tmp_path / 'rgb'}").image_shape == (5, 6, 3)
    write_pngs(tmp_path / "mixed", {"a": 2})
    write_pngs(tmp_path / "mixed_b", {"b": 2}, size=(7, 7))
    (tmp_path / "mixed_b" / "b").rename(tmp_path / "mixed" / "b")
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"folder:{tmp_path / 'mixed'}")
    assert_one_line_error(excinfo, "all images must match")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info(f"folder:{tmp_path / 'empty'}")
    assert_one_line_error(excinfo, "has no .png files")


# --- local copies of catalogue names in the data directory -------------------------------


@pytest.fixture
def no_data_dir_variable(monkeypatch):
    """Catalogue names as on a machine where INVKERAS_DATA_DIR is not set."""
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)


def write_npz_copy(path: Path, n: int, n_test: int = 0, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(x=np.full((n, 28, 28), value, np.uint8), y=np.arange(n) % 10)
    if n_test:
        arrays.update(x_test=np.full((n_test, 28, 28), value, np.uint8), y_test=np.arange(n_test) % 10)
    np.savez(path, **arrays)


def test_a_catalogue_name_reads_its_idx_copy_in_the_data_directory(tmp_path, no_data_dir_variable):
    write_idx_set(tmp_path / "mnist", "train", 40, seed=3)
    test_images, _ = write_idx_set(tmp_path / "mnist", "t10k", 12, seed=4)
    info = dataset_info("mnist", data_dir=str(tmp_path))
    assert info.spec == "mnist" and str(tmp_path / "mnist") in info.source
    assert info.split_sizes == {"train": 36, "validation": 4, "test": 12}
    np.testing.assert_array_equal(load_arrays("mnist", "test", data_dir=str(tmp_path))[0][..., 0], test_images)
    np.testing.assert_array_equal(load_arrays("mnist", "train", data_dir=str(tmp_path))[0],
                                  load_arrays(f"idx:{tmp_path / 'mnist'}", "train")[0])
    batches = list(iter_batches("tfds:mnist", "validation", 3, data_dir=str(tmp_path)))
    assert sum(len(x) for x, _ in batches) == 4


def test_a_catalogue_name_reads_an_npz_copy_with_its_own_test_arrays(tmp_path, no_data_dir_variable):
    write_npz_copy(tmp_path / "cifar10" / "images.npz", 30, n_test=7, value=9)
    info = dataset_info("cifar10", data_dir=str(tmp_path))
    assert info.split_sizes == {"train": 27, "validation": 3, "test": 7}
    assert str(tmp_path / "cifar10" / "images.npz") in info.source


@pytest.mark.parametrize("layout, expected", [
    # a test-set-only folder never shadows the full copy beside it
    ({"mnist": ("idx", 30, 0), "mnist-full": ("idx", 50, 20)}, "mnist-full"),
    # the exact name loses to a larger suffixed folder, and an .npz competes with IDX folders
    ({"mnist": ("idx", 50, 20), "mnist-big/a.npz": ("npz", 80, 0), "mnist-small": ("idx", 10, 10)},
     "mnist-big/a.npz"),
    # of several archives in one folder, the one with the most training images
    ({"cifar10/full.npz": ("npz", 60, 10), "cifar10/test.npz": ("npz", 10, 0)}, "cifar10/full.npz"),
    # equal training images: the copy with more images in all, then the first in name order
    ({"cifar10/a.npz": ("npz", 40, 0), "cifar10/b.npz": ("npz", 40, 5)}, "cifar10/b.npz"),
    ({"mnist": ("idx", 40, 5), "mnist-2": ("idx", 40, 5)}, "mnist"),
])
def test_the_copy_with_the_most_training_images_wins(tmp_path, layout, expected):
    for relative, (kind, n, n_test) in layout.items():
        if kind == "npz":
            write_npz_copy(tmp_path / relative, n, n_test)
        else:
            write_idx_set(tmp_path / relative, "train" if n_test else "t10k", n, seed=0)
            if n_test:
                write_idx_set(tmp_path / relative, "t10k", n_test, seed=1)
    name = expected.split("/")[0].split("-")[0]
    copy = registry.find_local_copy(name, tmp_path)
    assert copy is not None and copy.path == tmp_path / expected


def test_choosing_a_copy_reads_headers_only(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist", "t10k", 20, seed=0)
    write_npz_copy(tmp_path / "mnist-npz" / "d.npz", 25)

    def refuse(*args, **kwargs):
        raise AssertionError("a whole file was read to choose a copy")

    monkeypatch.setattr(registry.local, "read_idx_file", refuse)
    monkeypatch.setattr(np, "load", refuse)
    copy = registry.find_local_copy("mnist", tmp_path)
    assert (copy.kind, copy.pool_sizes) == ("npz", {"train": 25})


def test_files_that_are_no_copy_are_passed_over(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "broken.npz").write_bytes(b"not a zip archive")
    np.savez(tmp_path / "cifar10" / "no_x.npz", images=np.zeros((90, 2, 2), np.uint8))
    (tmp_path / "cifar10" / "notes.txt").write_text("x")
    assert registry.find_local_copy("cifar10", tmp_path) is None
    write_npz_copy(tmp_path / "cifar10-ok" / "d.npz", 5)
    assert registry.find_local_copy("cifar10", tmp_path).path == tmp_path / "cifar10-ok" / "d.npz"
    assert registry.find_local_copy("../cifar10", tmp_path / "cifar10-ok") is None  # names stay inside DIR


def test_the_data_dir_option_wins_over_the_environment_variable(tmp_path, monkeypatch):
    write_npz_copy(tmp_path / "from_env" / "mnist" / "d.npz", 20)
    write_npz_copy(tmp_path / "from_option" / "mnist" / "d.npz", 30)
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "from_env"))
    assert sum(dataset_info("mnist").split_sizes.values()) == 20
    assert sum(dataset_info("mnist", data_dir=str(tmp_path / "from_option")).split_sizes.values()) == 30
    monkeypatch.setenv(registry.DATA_DIR_ENV, "")  # set but empty: as if not set
    assert registry.data_directory(None) is None


def test_without_a_local_copy_or_network_one_line_names_the_directory_and_what_was_looked_for(tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("fashion_mnist")
    assert time.perf_counter() - start < 5
    assert_one_line_error(excinfo, "dataset 'fashion_mnist'", f"no local copy (fashion_mnist/ or fashion_mnist-*/ "
                          f"holding IDX or .npz files) in {tmp_path} (from {registry.DATA_DIR_ENV})",
                          "download failed (no network)")
    option_dir = tmp_path / "given"
    with pytest.raises(InvkerasError) as excinfo:
        load_arrays("mnist", "train", data_dir=str(option_dir))
    assert_one_line_error(excinfo, f"in {option_dir} (from --data-dir)", "mnist/ or mnist-*/")


def test_the_dataset_table_shows_where_each_catalogue_name_resolves(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist-full", "train", 30, seed=0)
    write_idx_set(tmp_path / "mnist-full", "t10k", 10, seed=1)
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path))
    rows = {row["spec"]: row["loads_from"] for row in list_sources()}
    assert rows["mnist"] == f"local copy: IDX files in {tmp_path / 'mnist-full'} (30 training + 10 test images)"
    assert rows["cifar10"].startswith(f"TFDS in {tmp_path} (from {registry.DATA_DIR_ENV})")
    other = tmp_path / "other"
    write_npz_copy(other / "cifar10" / "c.npz", 12)
    rows = {row["spec"]: row["loads_from"] for row in list_sources(data_dir=str(other))}
    assert "NumPy archive" in rows["cifar10"] and "12 images in one pool" in rows["cifar10"]
    assert rows["mnist"].startswith(f"TFDS in {other} (from --data-dir)")


SHARED_DATA = SHARED_MNIST.parent


@pytest.mark.skipif(not (SHARED_DATA / "mnist-full").is_dir(), reason=f"no shared data at {SHARED_DATA}")
def test_the_offline_folder_gives_the_full_mnist_and_cifar10():
    mnist = registry.find_local_copy("mnist", SHARED_DATA)
    assert (mnist.path.name, mnist.pool_sizes) == ("mnist-full", {"train": 60000, "test": 10000})
    cifar10 = registry.find_local_copy("cifar10", SHARED_DATA)
    assert (cifar10.path.name, cifar10.pool_sizes) == ("cifar10-full-jpeg.npz", {"train": 50000, "test": 10000})


# --- spec and argument errors -----------------------------------------------------------


def test_unknown_spec_lists_the_known_ones():
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("imagenet_please")
    assert_one_line_error(excinfo, "unknown dataset 'imagenet_please'", "procedural", "idx:DIR", "affnist-style:INNER")
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("idx:")
    assert_one_line_error(excinfo, "nothing after 'idx:'")


def test_unknown_split_and_bad_limit():
    with pytest.raises(InvkerasError) as excinfo:
        load("procedural", "dev")
    assert_one_line_error(excinfo, "unknown split 'dev'", "train, validation, test")
    with pytest.raises(InvkerasError):
        load_arrays("procedural", "val")
    with pytest.raises(InvkerasError):
        load_arrays("procedural", "test", limit=-1)
    assert load_arrays("procedural", "test", limit=0)[0].shape == (0, 20, 20, 1)


def test_list_sources_covers_every_spec_kind():
    rows = list_sources()
    assert all(set(row) == {"spec", "kind", "description", "loads_from"} for row in rows)
    specs = {row["spec"] for row in rows}
    for expected in ("procedural", "mnist", "fashion_mnist", "kmnist", "svhn_cropped", "cifar10", "tfds:NAME",
                     "affnist", "affnist/generated", "idx:DIR", "npz:FILE", "folder:DIR", "affnist-style:INNER"):
        assert expected in specs


# --- TFDS ---------------------------------------------------------------------------------


def test_tfds_via_mock_data_carves_validation(monkeypatch, no_data_dir_variable):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(registry, "_network_available", lambda: True)  # mock_data makes the download a no-op
    with tfds.testing.mock_data(num_examples=20):
        info = dataset_info("mnist")
        assert info.image_shape == (28, 28, 1) and info.num_classes == 10
        assert info.split_sizes == {"train": 18, "validation": 2, "test": 20}
        ds = load("mnist", "validation")
        assert ds.element_spec[0].dtype.name == "uint8" and ds.element_spec[1].dtype.name == "int64"
        validation = list(ds.as_numpy_iterator())
        batches = list(iter_batches("mnist", "validation", 1))  # streamed through tf.data
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), np.stack([v[0] for v in validation]))
        train_x, train_y = load_arrays("tfds:mnist", "train")
        assert len(validation) == 2 and train_x.shape == (18, 28, 28, 1) and train_y.dtype == np.int64
        assert not hashes(np.stack([v[0] for v in validation])) & hashes(train_x)
        assert load_arrays("fashion_mnist", "test", limit=5)[0].shape == (5, 28, 28, 1)
        # TFDS keeps a cap's positions as the stream passes: the same sample as the whole split's.
        whole = load_arrays("mnist", "test")[0]
        np.testing.assert_array_equal(load_arrays("mnist", "test", limit=5)[0],
                                      whole[registry.capped_positions(len(whole), 5)])
        np.testing.assert_array_equal(np.concatenate([b[0] for b in iter_batches("mnist", "test", 2, limit=5)]),
                                      whole[registry.capped_positions(len(whole), 5)])


def test_tfds_offline_fails_fast_with_one_line(tmp_path):
    start = time.perf_counter()
    with pytest.raises(InvkerasError) as excinfo:
        load("mnist", "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    assert_one_line_error(excinfo, "dataset 'mnist'", "download failed", "--data-dir", "INVKERAS_DATA_DIR",
                          "idx:DIR")


def test_tfds_download_error_is_wrapped(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def refuse_download(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'\nretries exhausted")

    monkeypatch.setattr(registry, "_network_available", lambda: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse_download)
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("tfds:kmnist", data_dir=str(tmp_path))
    assert_one_line_error(excinfo, "dataset 'tfds:kmnist'", "ConnectionError", "storage.googleapis.com", "--data-dir")


def test_network_probe_reports_offline():
    assert registry._network_available() is False  # `no_network` refuses the connection


def test_unknown_tfds_name(tmp_path):
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
    assert_one_line_error(excinfo, "dataset 'tfds:no_such_dataset_xyz'", "TFDS cannot load")


# --- affine transform and affnist-style -------------------------------------------------


def digit_like(seed: int) -> np.ndarray:
    """A 28x28 image with ink in the central 20x20 box, like an MNIST digit."""
    rng = np.random.default_rng(seed)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 4:24] = rng.integers(0, 256, (20, 20)) * (rng.random((20, 20)) < 0.4)
    return digit


def test_affine_output_keeps_the_whole_digit_inside_the_canvas():
    for seed in range(40):
        digit = digit_like(seed)
        params = affine.sample_params(digit, np.random.default_rng(seed))
        image = affine.apply(digit, params)[..., 0]
        assert image.shape == (40, 40) and image.dtype == np.uint8
        # Nothing ink on the border: nothing could have been clipped.
        assert not image[0].any() and not image[-1].any() and not image[:, 0].any() and not image[:, -1].any()
        # Same transform on a canvas 100 px larger, shifted by an integer: identical pixels, nothing outside.
        big = affine.apply(digit, AffineShift(params, 50), canvas_size=140)[..., 0]
        assert big.sum() == image.astype(np.int64).sum()
        np.testing.assert_array_equal(big[50:90, 50:90], image)
        # Mass scales with the area change |det A| (bilinear resampling, rounding to uint8).
        ratio = image.sum() / (digit.astype(np.int64).sum() * abs(np.linalg.det(params.matrix())))
        assert 0.9 < ratio < 1.1


def AffineShift(params: affine.AffineParams, shift: int) -> affine.AffineParams:
    return affine.AffineParams(params.rotation_degrees, params.shear, params.scale_y, params.scale_x,
                               params.offset_y + shift, params.offset_x + shift)


def test_affine_identity_is_a_pure_translation():
    digit = digit_like(0)
    params = affine.AffineParams(0.0, 0.0, 1.0, 1.0, 19.5, 19.5)  # digit centre 13.5 -> 19.5: shift by 6
    np.testing.assert_array_equal(affine.apply(digit, params)[6:34, 6:34, 0], digit)


def test_affine_parameters_stay_in_the_affnist_ranges():
    rng = np.random.default_rng(0)
    params = [affine.sample_params(digit_like(i), rng) for i in range(200)]
    assert max(abs(p.rotation_degrees) for p in params) <= 20 and max(abs(p.rotation_degrees) for p in params) > 15
    assert max(abs(p.shear) for p in params) <= 0.2
    scales = [s for p in params for s in (p.scale_y, p.scale_x)]
    assert 0.8 <= min(scales) < 0.85 and 1.15 < max(scales) <= 1.2
    offsets = [o for p in params for o in (p.offset_y, p.offset_x)]
    assert min(offsets) < 15 and max(offsets) > 24  # placed all over the canvas, not just centred


def test_affine_batch_is_deterministic_per_example():
    digits = np.stack([digit_like(i) for i in range(8)])
    out = affine.transform_batch(digits, seed=5, stream=1)
    assert out.shape == (8, 40, 40, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, affine.transform_batch(digits, seed=5, stream=1))
    np.testing.assert_array_equal(out[3:], affine.transform_batch(digits[3:], seed=5, stream=1, start_index=3))
    assert not np.array_equal(out, affine.transform_batch(digits, seed=6, stream=1))
    assert not np.array_equal(out, affine.transform_batch(digits, seed=5, stream=2))


def test_affnist_style_wraps_any_28x28_source(tmp_path):
    write_idx_set(tmp_path, "t10k", 50, seed=0)
    inner = f"idx:{tmp_path}"
    spec = f"affnist-style:{inner}"
    info = dataset_info(spec)
    assert info.image_shape == (40, 40, 1) and info.spec == spec
    assert info.split_sizes == dataset_info(inner).split_sizes
    x, y = load_arrays(spec, "test")
    inner_x, inner_y = load_arrays(inner, "test")
    np.testing.assert_array_equal(y, inner_y)
    np.testing.assert_array_equal(x, affine.transform_batch(inner_x, seed=0, stream=SPLITS.index("test")))
    # A capped read transforms each example as it is transformed in the whole split.
    np.testing.assert_array_equal(load_arrays(spec, "test", limit=3)[0], x[registry.capped_positions(len(x), 3)])
    assert not np.array_equal(load_arrays(spec, "test", seed=1)[0].sum(), x.sum())
    ds = load(spec, "test")
    assert ds.element_spec[0].shape == (40, 40, 1)


def test_affnist_style_rejects_non_mnist_shapes():
    with pytest.raises(InvkerasError) as excinfo:
        dataset_info("affnist-style:procedural")
    assert_one_line_error(excinfo, "affnist-style needs 28x28x1", "(20, 20, 1)")
