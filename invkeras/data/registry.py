"""Dataset specs -> deterministic NumPy arrays and batches (and tf.data pipelines).

A *spec* names where images come from:

==========================  =================================================================
spec                        source
==========================  =================================================================
``procedural``              embedded 20x20 shapes with exactly known H(x) (`procedural.py`)
``mnist`` ``fashion_mnist`` TFDS catalogue datasets (``tfds:NAME`` for any other TFDS name,
``kmnist`` ``svhn_cropped`` e.g. ``tfds:emnist/digits``), read from ``data_dir``
``cifar10``
``affnist``                 official affNIST through the invkeras TFDS builder (`affnist.py`)
``affnist/generated``       affNIST-style data generated from MNIST by that builder
``idx:DIR``                 MNIST-style IDX files (`local.py`)
``npz:FILE``                a NumPy archive with ``x`` and ``y`` (`local.py`)
``folder:DIR``              ``DIR/<class>/*.png`` (`local.py`)
``affnist-style:INNER``     any 28x28x1 spec, each image affNIST-transformed onto 40x40
==========================  =================================================================

Every source ends up with the three SPLITS. Splits a source lacks are carved out of
its training pool by index selection, the same way for every source, so the rule is
easy to state and to test (`plan_splits`):

* shuffle the training pool's indices with ``np.random.default_rng(seed)``;
* if there is no test split, test = the last 10% of that permutation;
* if there is no validation split, validation = the last 10% of what remains;
* train = the rest.

A carved split comes in the order of that permutation, not the source's: analyses take
the first N held-out images (`compare --num-images`, `sample --num-inputs`, evaluation
limits), and some files are sorted by class (the shared CIFAR-10 archive is), where the
first N of a source-ordered split would all be airplanes. TFDS streams its carved splits
in TFDS's own order (a mask over the stream); the catalogue datasets are not class-sorted.
Splits a source declares keep the source's order.

So TFDS train/test datasets get a validation split of 10% of train (MNIST: 54,000 /
6,000 / 10,000), and a single pool, such as the shared 10k MNIST test set, becomes
81% / 9% / 10% (8,100 / 900 / 1,000). The same seed always gives the same splits; the
splits are disjoint.

TFDS datasets are read from ``data_dir`` (TFDS's default, ``~/tensorflow_datasets``, when
None). If one is not prepared there, we try to download it; on a machine without network
that fails at once (a 3-second reachability check first, because TFDS itself retries for
minutes) with an `InvkerasError` saying how to point at a local copy instead.

Relative paths in specs are resolved against the current working directory.

TensorFlow is imported only where it is really needed: by the TFDS sources (``mnist``,
``tfds:NAME``, ``affnist``, ...) and by `load`, which hands out a tf.data pipeline. The
procedural and local sources and the affNIST-style transform are NumPy throughout, and
`iter_batches` streams any source as NumPy batches, so extraction and training work under
``KERAS_BACKEND=jax`` in an environment without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from invkeras.data import affine, local, procedural
from invkeras.errors import InvkerasError

SPLITS = ("train", "validation", "test")
HELD_OUT_FRACTION = 0.1  # carved test = 10% of the pool; carved validation = 10% of what is left
TFDS_SHORTCUTS = ("mnist", "fashion_mnist", "kmnist", "svhn_cropped", "cifar10")
AFFNIST_CONFIGS = {  # spec -> TFDS name of the invkeras affnist builder config
    "affnist": "affnist/official",
    "affnist/official": "affnist/official",
    "affnist/generated": "affnist/generated",
}
_LOCAL_KINDS = ("idx", "npz", "folder")
_NETWORK_PROBE = ("storage.googleapis.com", 443)
_NETWORK_TIMEOUT_S = 3.0
_LOCAL_HINT = "pass --data-dir DIR holding a prepared TFDS copy, or use idx:DIR, npz:FILE or folder:DIR"
_KNOWN_SPECS = (
    "procedural, " + ", ".join(TFDS_SHORTCUTS) + ", tfds:NAME, affnist, affnist/generated, "
    "idx:DIR, npz:FILE, folder:DIR, affnist-style:INNER"
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a spec yields: shapes, classes and split sizes (carved splits included)."""

    spec: str
    image_shape: tuple[int, int, int]
    num_classes: int
    split_sizes: dict[str, int]
    source: str
    class_names: tuple[str, ...] | None = None
    entropy_nats: float | None = None  # exact H(x) per image when known (procedural), else None


# --- split carving -----------------------------------------------------------------


def plan_splits(pool_sizes: Mapping[str, int], seed: int) -> dict[str, tuple[str, np.ndarray | None]]:
    """For each of SPLITS: (pool it comes from, indices into that pool in shuffled order, or None
    for all of it in the source's order).

    `pool_sizes` maps the splits a source really has to their sizes; a source with a
    single unnamed pool passes it as "train". See the module docstring for the rule.
    """
    if "train" not in pool_sizes:
        raise ValueError(f"a source needs a train pool to carve from, got {sorted(pool_sizes)}")
    plan: dict[str, tuple[str, np.ndarray | None]] = {s: (s, None) for s in SPLITS if s in pool_sizes}
    missing = [s for s in ("test", "validation") if s not in pool_sizes]
    if not missing:
        return plan
    remaining = np.random.default_rng(seed).permutation(pool_sizes["train"])
    for split in missing:  # test first, then validation from what is left
        held_out = int(round(HELD_OUT_FRACTION * len(remaining)))
        cut = len(remaining) - held_out
        plan[split] = ("train", remaining[cut:])
        remaining = remaining[:cut]
    plan["train"] = ("train", remaining)
    return plan


def _split_size(pool_sizes: Mapping[str, int], entry: tuple[str, np.ndarray | None]) -> int:
    pool, indices = entry
    return pool_sizes[pool] if indices is None else len(indices)


# --- spec parsing ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed spec: `kind` is procedural, tfds, idx, npz, folder or affnist-style."""

    text: str
    kind: str
    target: str = ""  # TFDS name, filesystem path, or the inner spec


def parse_spec(spec: str) -> Spec:
    """Parse a spec string; unknown specs raise `InvkerasError` listing the known ones."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvkerasError(f"dataset {spec!r}: empty spec; known: {_KNOWN_SPECS}")
    text = spec.strip()
    prefix, sep, rest = text.partition(":")
    if text == "procedural":
        return Spec(text, "procedural")
    if text in TFDS_SHORTCUTS:
        return Spec(text, "tfds", text)
    if text in AFFNIST_CONFIGS:
        return Spec(text, "tfds", AFFNIST_CONFIGS[text])
    if sep and prefix in ("tfds",) + _LOCAL_KINDS + ("affnist-style",):
        if not rest.strip():
            raise InvkerasError(f"dataset {text!r}: nothing after '{prefix}:'; e.g. {prefix}:{_EXAMPLES[prefix]}")
        return Spec(text, prefix, rest.strip())
    raise InvkerasError(f"unknown dataset {text!r}; known: {_KNOWN_SPECS}")


_EXAMPLES = {
    "tfds": "emnist/digits",
    "idx": "../shared/data/mnist",
    "npz": "data/my_images.npz",
    "folder": "data/my_pngs",
    "affnist-style": "idx:../shared/data/mnist",
}


def _check_split(spec: str, split: str) -> None:
    if split not in SPLITS:
        raise InvkerasError(f"dataset {spec!r}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- sources -----------------------------------------------------------------------


def _tf():
    try:
        import tensorflow as tf
    except ImportError:
        raise InvkerasError("this needs TensorFlow (tf.data), which is not installed in this environment; "
                            "data.iter_batches and data.load_arrays read every non-TFDS source without it") from None
    return tf


def _arrays_to_dataset(x: np.ndarray, y: np.ndarray):
    return _tf().data.Dataset.from_tensor_slices((x, y))


def _take(x: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    return (x, y) if limit is None else (x[:limit], y[:limit])


def _array_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


class _InMemorySource:
    """A source whose splits are NumPy arrays anyway: batches are slices of them."""

    def batches(self, split: str, batch_size: int, limit: int | None):
        return _array_batches(*self.arrays(split, limit), batch_size)

    def dataset(self, split: str):
        return _arrays_to_dataset(*self.arrays(split, None))


class _ProceduralSource(_InMemorySource):
    def __init__(self, spec: Spec, seed: int):
        self.spec, self.seed = spec, seed

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            spec=self.spec.text,
            image_shape=procedural.IMAGE_SHAPE,
            num_classes=procedural.NUM_CLASSES,
            split_sizes=dict(procedural.SPLIT_SIZES),
            source="embedded procedural shapes (generated in memory, no download)",
            class_names=procedural.CLASS_NAMES,
            entropy_nats=procedural.ENTROPY_NATS,
        )

    def arrays(self, split: str, limit: int | None):
        x, y, _ = procedural.load_split_with_factors(split, seed=self.seed)
        return _take(x, y, limit)


@functools.lru_cache(maxsize=4)
def _read_local_pools(spec: str, kind: str, path: str, modified_ns: int) -> local.LocalPools:
    """Read (and remember) a local source; `modified_ns` makes an edited file a new cache entry."""
    del modified_ns
    reader = {"idx": local.read_idx_dir, "npz": local.read_npz, "folder": local.read_folder}[kind]
    return reader(spec, Path(path))


class _LocalSource(_InMemorySource):
    def __init__(self, spec: Spec, seed: int):
        self.spec, self.seed = spec, seed
        path = Path(spec.target).expanduser()
        if not path.exists():
            what = "file" if spec.kind == "npz" else "directory"
            raise InvkerasError(f"dataset {spec.text!r}: {what} not found: {path}")
        self.local = _read_local_pools(spec.text, spec.kind, str(path.resolve()), path.stat().st_mtime_ns)
        self.pool_sizes = {name: len(y) for name, (_, y) in self.local.pools.items()}
        self.plan = plan_splits(self.pool_sizes, seed)

    def info(self) -> DatasetInfo:
        xs = [x for x, _ in self.local.pools.values()]
        shapes = {x.shape[1:] for x in xs}
        if len(shapes) != 1:
            raise InvkerasError(f"dataset {self.spec.text!r}: train and test images differ in shape: {sorted(shapes)}")
        max_label = max((int(y.max()) for _, y in self.local.pools.values() if len(y)), default=-1)
        num_classes = len(self.local.class_names) if self.local.class_names else max_label + 1
        return DatasetInfo(
            spec=self.spec.text,
            image_shape=tuple(int(d) for d in xs[0].shape[1:]),
            num_classes=num_classes,
            split_sizes={s: _split_size(self.pool_sizes, self.plan[s]) for s in SPLITS},
            source=self.local.description,
            class_names=self.local.class_names,
        )

    def arrays(self, split: str, limit: int | None):
        pool, indices = self.plan[split]
        x, y = self.local.pools[pool]
        if indices is not None:
            indices = indices if limit is None else indices[:limit]
            return x[indices], y[indices]  # fancy indexing copies
        x, y = _take(x, y, limit)
        return x.copy(), y.copy()  # never hand out the cached arrays themselves


def _network_available() -> bool:
    """Whether a TFDS download could possibly work; answers within a few seconds."""
    try:
        with socket.create_connection(_NETWORK_PROBE, timeout=_NETWORK_TIMEOUT_S):
            return True
    except OSError:
        return False


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise InvkerasError("TFDS datasets (mnist, cifar10, tfds:NAME, affnist, ...) need tensorflow-datasets and "
                            "TensorFlow, which are not installed in this environment; use idx:DIR, npz:FILE, "
                            "folder:DIR or procedural, or --features") from None
    return tfds


def _download_and_prepare(builder, spec: str) -> None:
    """Prepare `builder` in its data_dir, failing fast and in one line when that is impossible."""
    tfds = _tfds()
    root = Path(builder.data_dir_root)
    manual_dir = root / "downloads" / "manual"
    has_manual_files = manual_dir.is_dir() and any(manual_dir.iterdir())
    hint = _LOCAL_HINT
    if builder.name == "affnist":
        hint = f"put the affNIST files in {manual_dir} (see invkeras.data.affnist), or use affnist-style:idx:DIR"
    if not has_manual_files and not _network_available():
        raise InvkerasError(f"dataset {spec!r}: not prepared under {root} and the download failed (no network); {hint}")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as exc:
        raise InvkerasError(
            f"dataset {spec!r}: not prepared under {root} and the download failed ({_one_line(exc)}); {hint}"
        ) from exc


class _TfdsSource:
    def __init__(self, spec: Spec, data_dir: str | None, seed: int):
        self.spec, self.seed = spec, seed
        tfds = _tfds()
        if spec.target.split("/")[0].split(":")[0] == "affnist":
            import invkeras.data.affnist  # noqa: F401  (registers the builder with TFDS)
        try:
            self.builder = tfds.builder(spec.target, data_dir=data_dir)
        except Exception as exc:
            raise InvkerasError(f"dataset {spec.text!r}: TFDS cannot load {spec.target!r} ({_one_line(exc)})") from None
        if not self.builder.is_prepared():
            _download_and_prepare(self.builder, spec.text)
        self.image_key, self.label_key, self.image_shape, self.label_feature = self._check_features()
        self.pool_sizes = self._pool_sizes()
        self.plan = plan_splits(self.pool_sizes, seed)

    def _check_features(self):
        tfds = _tfds()
        info = self.builder.info
        keys = info.supervised_keys
        if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
            raise InvkerasError(
                f"dataset {self.spec.text!r}: not an (image, label) dataset (TFDS supervised_keys={keys})"
            )
        image_key, label_key = keys
        image, label = info.features[image_key], info.features[label_key]
        shape = tuple(image.shape)
        if len(shape) != 3 or None in shape or np.dtype(image.np_dtype) != np.uint8:
            raise InvkerasError(
                f"dataset {self.spec.text!r}: images must be uint8 with a fixed HxWxC shape, "
                f"got {image.np_dtype} {shape}"
            )
        if not isinstance(label, tfds.features.ClassLabel):
            raise InvkerasError(f"dataset {self.spec.text!r}: the label {label_key!r} is not a TFDS ClassLabel")
        return image_key, label_key, tuple(int(d) for d in shape), label

    def _pool_sizes(self) -> dict[str, int]:
        sizes = {name: int(split.num_examples) for name, split in self.builder.info.splits.items() if name in SPLITS}
        if sizes:
            return sizes
        # TFDS reports no splits (e.g. under tfds.testing.mock_data): take train and test as they come.
        sizes = {}
        for name in ("train", "test"):
            cardinality = int(self._raw(name).cardinality())
            if cardinality >= 0:
                sizes[name] = cardinality
        if "train" not in sizes:
            raise InvkerasError(f"dataset {self.spec.text!r}: TFDS reports no train split")
        return sizes

    def _raw(self, pool: str):
        return self.builder.as_dataset(split=pool, shuffle_files=False, as_supervised=True)

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            spec=self.spec.text,
            image_shape=self.image_shape,
            num_classes=int(self.label_feature.num_classes),
            split_sizes={s: _split_size(self.pool_sizes, self.plan[s]) for s in SPLITS},
            source=f"TFDS {self.builder.info.full_name} in {self.builder.data_dir_root}",
            class_names=tuple(self.label_feature.names) if self.label_feature.names else None,
        )

    def dataset(self, split: str):
        tf = _tf()
        pool, indices = self.plan[split]
        ds = self._raw(pool)
        if indices is not None:
            keep = np.zeros(self.pool_sizes[pool], dtype=bool)
            keep[indices] = True
            keep = tf.constant(keep)
            ds = ds.enumerate().filter(lambda i, example: keep[i]).map(lambda i, example: example)
        return ds.map(lambda image, label: (tf.cast(image, tf.uint8), tf.cast(label, tf.int64)))

    def batches(self, split: str, batch_size: int, limit: int | None):
        """Streamed through tf.data, so a large split never sits in memory whole."""
        ds = self.dataset(split)
        if limit is not None:
            ds = ds.take(limit)
        return ds.batch(batch_size).prefetch(2).as_numpy_iterator()

    def arrays(self, split: str, limit: int | None):
        ds = self.dataset(split)
        if limit is not None:
            ds = ds.take(limit)
        xs, ys = [], []
        for x, y in ds.batch(4096).as_numpy_iterator():
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.zeros((0,) + self.image_shape, np.uint8), np.zeros((0,), np.int64)
        return np.concatenate(xs), np.concatenate(ys)


class _AffineStyleSource(_InMemorySource):
    """Any 28x28x1 source, each image placed on 40x40 by an affNIST-style transform.

    Example i of split s always gets the transform from `affine.example_rng(seed, s, i)`,
    so the data are reproducible and independent of batching or `limit`.
    """

    def __init__(self, spec: Spec, data_dir: str | None, seed: int):
        self.spec, self.seed = spec, seed
        self.inner = _make_source(spec.target, data_dir, seed)
        self.inner_info = self.inner.info()
        expected = (affine.DIGIT_SIZE, affine.DIGIT_SIZE, 1)
        if self.inner_info.image_shape != expected:
            raise InvkerasError(
                f"dataset {spec.text!r}: affnist-style needs 28x28x1 images, "
                f"{spec.target!r} has {self.inner_info.image_shape}"
            )

    def info(self) -> DatasetInfo:
        return dataclasses.replace(
            self.inner_info,
            spec=self.spec.text,
            image_shape=(affine.CANVAS_SIZE, affine.CANVAS_SIZE, 1),
            source=f"affNIST-style transforms (generated, seed {self.seed}) of {self.inner_info.source}",
            entropy_nats=None,
        )

    def arrays(self, split: str, limit: int | None):
        x, y = self.inner.arrays(split, limit)
        return affine.transform_batch(x, seed=self.seed, stream=SPLITS.index(split)), y


def _make_source(spec: str, data_dir: str | None, seed: int):
    parsed = parse_spec(spec)
    if parsed.kind == "procedural":
        return _ProceduralSource(parsed, seed)
    if parsed.kind in _LOCAL_KINDS:
        return _LocalSource(parsed, seed)
    if parsed.kind == "tfds":
        return _TfdsSource(parsed, data_dir, seed)
    if parsed.kind == "affnist-style":
        return _AffineStyleSource(parsed, data_dir, seed)
    raise AssertionError(parsed.kind)


# --- public API ----------------------------------------------------------------------


def dataset_info(spec: str, *, data_dir: str | None = None, seed: int = 0) -> DatasetInfo:
    """Shapes, classes and split sizes of `spec` (TFDS datasets are prepared if needed)."""
    return _make_source(spec, data_dir, seed).info()


def load(spec: str, split: str, *, data_dir: str | None = None, seed: int = 0):
    """Unbatched tf.data.Dataset of (image uint8 [H, W, C], label int64), in a fixed order."""
    _check_split(spec, split)
    return _make_source(spec, data_dir, seed).dataset(split)


def iter_batches(spec: str, split: str, batch_size: int, *, data_dir: str | None = None, seed: int = 0,
                 limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split as NumPy batches (x uint8 NHWC, y int64) in its fixed order; the last may be
    smaller. TFDS splits are streamed through tf.data; every other source is NumPy only."""
    _check_split(spec, split)
    if batch_size < 1:
        raise InvkerasError(f"dataset {spec!r}: batch size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise InvkerasError(f"dataset {spec!r}: limit must be >= 0, got {limit}")
    for x, y in _make_source(spec, data_dir, seed).batches(split, batch_size, limit):
        yield np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


def load_arrays(
    spec: str, split: str, *, data_dir: str | None = None, seed: int = 0, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The split as NumPy: x uint8 NHWC, y int64; `limit` keeps the first `limit` examples."""
    _check_split(spec, split)
    if limit is not None and limit < 0:
        raise InvkerasError(f"dataset {spec!r}: limit must be >= 0, got {limit}")
    x, y = _make_source(spec, data_dir, seed).arrays(split, limit)
    return np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


def list_sources() -> list[dict]:
    """Rows for the `invkeras datasets` table: spec, kind, description, where it loads from."""
    tfds_where = "TFDS --data-dir (default ~/tensorflow_datasets); downloaded if missing"
    carved = "validation carved: 10% of train"
    rows = [
        ("procedural", "embedded", "20x20 grey shapes, 4 classes, exact H(x) = 8.84 nats", "generated in memory"),
        ("mnist", "tfds", f"handwritten digits 28x28x1, 10 classes; {carved}", tfds_where),
        ("fashion_mnist", "tfds", f"clothing 28x28x1, 10 classes; {carved}", tfds_where),
        ("kmnist", "tfds", f"Kuzushiji characters 28x28x1, 10 classes; {carved}", tfds_where),
        ("svhn_cropped", "tfds", f"house-number digits 32x32x3, 10 classes; {carved}", tfds_where),
        ("cifar10", "tfds", f"natural images 32x32x3, 10 classes; {carved}", tfds_where),
        ("tfds:NAME", "tfds", "any TFDS (image, label) dataset; missing splits carved", tfds_where),
        ("affnist", "tfds (invkeras)", "official affNIST 40x40x1 digits, 10 classes",
         "TFDS --data-dir; cs.toronto.edu download or .mat files in DATA_DIR/downloads/manual"),
        ("affnist/generated", "tfds (invkeras)", "affNIST-style 40x40x1 GENERATED from MNIST (not the official set)",
         "TFDS --data-dir; MNIST download or IDX files in DATA_DIR/downloads/manual"),
        ("idx:DIR", "local", "MNIST-style IDX files; t10k-only sets carved 81/9/10",
         "DIR/{train,t10k}-*-idx*-ubyte[.gz]"),
        ("npz:FILE", "local", "arrays x (uint8 NHWC or NHW), y; optional x_test, y_test", "FILE"),
        ("folder:DIR", "local", "one sub-folder of PNGs per class; carved 81/9/10", "DIR/<class>/*.png"),
        ("affnist-style:INNER", "derived", "any 28x28x1 spec, each image affNIST-transformed to 40x40x1",
         "wherever INNER loads from; transforms seeded per example"),
    ]
    return [dict(zip(("spec", "kind", "description", "loads_from"), row)) for row in rows]
