"""Datasets from local files: `idx:DIR`, `npz:FILE` and `folder:DIR`.

These readers only turn files into arrays ("pools"); `registry` carves the pools into
train/validation/test the same way for every source (see `registry.plan_splits`).

idx:DIR
    MNIST-style IDX files, optionally gzipped: `train-images-idx3-ubyte[.gz]`,
    `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`,
    `t10k-labels-idx1-ubyte[.gz]` (a dot instead of the dash before `idx`, as some
    mirrors spell it, is accepted too). With both train and t10k files the pools are
    `train` and `test`, and validation is carved from train. With only one of the two
    (e.g. the shared MNIST test set, t10k only, 10,000 images) that set is the single
    pool: test is the last 10% of a seeded permutation and validation the last 10% of
    the rest, i.e. 8,100 / 900 / 1,000 for 10k images. The IDX format is tiny: a
    4-byte magic (0, 0, type code, number of dimensions), one big-endian uint32 per
    dimension, then the data in C order.

npz:FILE
    A NumPy `.npz` with `x` (uint8, NHWC or NHW, which gets C=1) and `y` (integer
    labels, one per image). Optional `x_test` / `y_test` become the test pool;
    otherwise the file is a single pool carved like idx.

folder:DIR
    One sub-folder per class holding `.png` files; class names are the sorted sub-folder
    names (hidden folders are skipped). Greyscale PNGs give C=1, colour PNGs C=3 (alpha
    is dropped); all images must have the same size and channel count. A single pool,
    carved like idx.
"""

from __future__ import annotations

import dataclasses
import gzip
import zipfile
from pathlib import Path

import numpy as np

from invkeras.errors import InvkerasError

Arrays = tuple[np.ndarray, np.ndarray]

# IDX type codes -> big-endian NumPy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_PREFIXES = {"train": "train", "test": "t10k"}


@dataclasses.dataclass(frozen=True)
class LocalPools:
    """Arrays as the files hold them, before carving: pool name ('train', 'test') -> (x, y)."""

    pools: dict[str, Arrays]
    description: str
    class_names: tuple[str, ...] | None = None


# --- IDX ---------------------------------------------------------------------------


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode one IDX file's (already un-gzipped) bytes into an array; ValueError if malformed."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{name}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{name}: IDX header truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header_end != count * dtype.itemsize:
        raise ValueError(f"{name}: IDX body has {len(data) - header_end} bytes, header says {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, offset=header_end).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_file(path: Path) -> np.ndarray:
    """Read a (possibly gzipped) IDX file."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    return parse_idx(raw, path.name)


def write_idx_file(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write uint8 `array` as IDX (gzipped if `compress`, default: if the name ends in .gz); for tests and fixtures."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)


def find_idx_file(directory: Path, prefix: str, kind: str) -> Path | None:
    """`{prefix}-{kind}-idx{3|1}-ubyte[.gz]` (or with a dot before idx) in `directory`, if present."""
    rank = 3 if kind == "images" else 1
    for separator in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = directory / f"{prefix}-{kind}{separator}idx{rank}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def idx_count(path: Path) -> int:
    """The number of items (first dimension) an IDX file holds, read from its header alone."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as handle:
        header = handle.read(8)
    if len(header) < 8 or header[0] != 0 or header[1] != 0 or header[2] not in _IDX_DTYPES or header[3] < 1:
        raise ValueError(f"{path.name}: not an IDX file (bad magic number)")
    return int.from_bytes(header[4:8], "big")


def idx_pool_sizes(directory: Path) -> dict[str, int]:
    """Pool sizes of an IDX directory as `read_idx_dir` would find them, from the headers alone:
    {"train": n, "test": m}, or {"train": n} for a lone set; {} when it holds no IDX images."""
    sizes = {}
    for pool, prefix in _IDX_PREFIXES.items():
        images_path = find_idx_file(directory, prefix, "images")
        if images_path is not None and find_idx_file(directory, prefix, "labels") is not None:
            sizes[pool] = idx_count(images_path)
    if len(sizes) == 1:
        return {"train": next(iter(sizes.values()))}
    return sizes


def _read_idx_pair(spec: str, images_path: Path, labels_path: Path | None) -> Arrays:
    if labels_path is None:
        raise InvkerasError(f"dataset {spec!r}: {images_path.name} has no matching labels file in {images_path.parent}")
    try:
        images, labels = read_idx_file(images_path), read_idx_file(labels_path)
    except (ValueError, OSError, EOFError) as exc:
        raise InvkerasError(f"dataset {spec!r}: {exc}") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InvkerasError(
            f"dataset {spec!r}: {images_path.name}: expected uint8 images [N,H,W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise InvkerasError(
            f"dataset {spec!r}: {labels_path.name}: expected {len(images)} integer labels, "
            f"got {labels.dtype} {labels.shape}"
        )
    if images.ndim == 3:
        images = images[..., None]
    return images, labels.astype(np.int64)


def read_idx_dir(spec: str, directory: Path) -> LocalPools:
    """Pools from an MNIST-style IDX directory (see the module docstring for the carving rule)."""
    if not directory.is_dir():
        raise InvkerasError(f"dataset {spec!r}: directory not found: {directory}")
    pools = {}
    for pool, prefix in _IDX_PREFIXES.items():
        images_path = find_idx_file(directory, prefix, "images")
        if images_path is not None:
            pools[pool] = _read_idx_pair(spec, images_path, find_idx_file(directory, prefix, "labels"))
    if not pools:
        raise InvkerasError(
            f"dataset {spec!r}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] in {directory}"
        )
    if len(pools) == 1:  # a lone test (or train) set is the only pool and gets carved three ways
        pools = {"train": next(iter(pools.values()))}
    files = "train+t10k" if len(pools) == 2 else "single set"
    return LocalPools(pools, description=f"MNIST-style IDX files in {directory} ({files})")


# --- npz ---------------------------------------------------------------------------


def _check_xy(spec: str, where: str, x: np.ndarray, y: np.ndarray) -> Arrays:
    if x.dtype != np.uint8:
        raise InvkerasError(f"dataset {spec!r}: {where}: images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InvkerasError(f"dataset {spec!r}: {where}: images must be NHWC (C=1 or 3) or NHW, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise InvkerasError(f"dataset {spec!r}: {where}: expected {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise InvkerasError(f"dataset {spec!r}: {where}: labels must be >= 0")
    return x, y.astype(np.int64)


def npz_pool_sizes(path: Path) -> dict[str, int]:
    """Pool sizes of a `.npz` as `read_npz` would find them ({"train": len(x)}, plus "test":
    len(x_test) when there is one), from the archive's array headers alone; {} without x."""
    sizes = {}
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for pool, key in (("train", "x"), ("test", "x_test")):
            if f"{key}.npy" not in names:
                continue
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(member)
            sizes[pool] = int(shape[0]) if shape else 0
    return sizes if "train" in sizes else {}


def read_npz(spec: str, path: Path) -> LocalPools:
    """Pools from a `.npz` with `x`, `y` and optionally `x_test`, `y_test`."""
    if not path.is_file():
        raise InvkerasError(f"dataset {spec!r}: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:  # zipfile, pickle and value errors all mean "not a usable npz"
        if "Object arrays" in str(exc):
            raise InvkerasError(f"dataset {spec!r}: {path} holds object arrays, which are not accepted (they would "
                                "need pickle); save x and y as numeric arrays") from None
        raise InvkerasError(f"dataset {spec!r}: cannot read {path} as .npz ({type(exc).__name__})") from None
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise InvkerasError(f"dataset {spec!r}: {path} lacks array(s) {', '.join(sorted(missing))} (needs x and y)")
    if len(arrays["x"]) == 0:
        raise InvkerasError(f"dataset {spec!r}: {path} holds no images (x is empty)")
    pools = {"train": _check_xy(spec, f"{path.name}[x, y]", arrays["x"], arrays["y"])}
    if "x_test" in arrays or "y_test" in arrays:
        if not {"x_test", "y_test"} <= arrays.keys():
            raise InvkerasError(f"dataset {spec!r}: {path} has only one of x_test / y_test")
        pools["test"] = _check_xy(spec, f"{path.name}[x_test, y_test]", arrays["x_test"], arrays["y_test"])
        if pools["test"][0].shape[1:] != pools["train"][0].shape[1:]:
            raise InvkerasError(f"dataset {spec!r}: {path}: x_test images differ in shape from x")
    return LocalPools(pools, description=f"NumPy archive {path}")


# --- folder of PNGs ----------------------------------------------------------------

_GREY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"RGB", "RGBA", "P"}


def _read_png(spec: str, path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _GREY_MODES:
                return np.asarray(image.convert("L"))[..., None]
            if image.mode in _COLOUR_MODES:
                return np.asarray(image.convert("RGB"))
            raise InvkerasError(f"dataset {spec!r}: {path}: unsupported PNG mode {image.mode} (use 8-bit grey or RGB)")
    except InvkerasError:
        raise
    except Exception as exc:
        raise InvkerasError(f"dataset {spec!r}: cannot read image {path} ({type(exc).__name__})") from None


def read_folder(spec: str, directory: Path) -> LocalPools:
    """One pool from `directory/<class name>/*.png`."""
    if not directory.is_dir():
        raise InvkerasError(f"dataset {spec!r}: directory not found: {directory}")
    class_dirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InvkerasError(f"dataset {spec!r}: no class sub-folders in {directory} (expected DIR/<class>/*.png)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png")
        if not files:
            raise InvkerasError(f"dataset {spec!r}: class folder {class_dir} has no .png files")
        for path in files:
            image = _read_png(spec, path)
            if images and image.shape != images[0].shape:
                raise InvkerasError(
                    f"dataset {spec!r}: {path} is {image.shape}, not {images[0].shape} (all images must match)"
                )
            images.append(image)
            labels.append(label)
    x = np.stack(images).astype(np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    class_names = tuple(p.name for p in class_dirs)
    return LocalPools({"train": (x, y)}, description=f"PNG folders in {directory}", class_names=class_names)
