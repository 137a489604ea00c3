"""Dataset specs -> deterministic NumPy arrays and batches (and tf.data pipelines).

A *spec* names where images come from:

==========================  =================================================================
spec                        source
==========================  =================================================================
``procedural``              embedded 20x20 shapes with exactly known H(x) (`procedural.py`)
``mnist`` ``fashion_mnist`` catalogue datasets (``tfds:NAME`` for any other TFDS name,
``kmnist`` ``svhn_cropped`` e.g. ``tfds:emnist/digits``): a local copy in the data
``cifar10``                 directory if there is one, else TFDS (see below)
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

A carved split comes in the order of that permutation, not the source's. TFDS streams its
carved splits in TFDS's own order (a mask over the stream). Splits a source declares keep the
source's order.

A *capped* read (``limit=N`` below a split's size: `compare --num-images`, `sample
--num-inputs`, `--eval-examples`, `--train-examples`, `extract --limit`) takes the first N of
one fixed shuffle of the split (`capped_positions`), never the split's own first N: some files
are sorted by class (CIFAR-10's test set is, in some archives), where the first 100 test images
would all be airplanes. The shuffle depends only on the split's size, so every reader of the
split (images, extracted features, TFDS streams) takes the same examples in the same order,
and a smaller cap takes a prefix of a larger one's.

So TFDS train/test datasets get a validation split of 10% of train (MNIST: 54,000 /
6,000 / 10,000), and a single pool, such as the shared 10k MNIST test set, becomes
81% / 9% / 10% (8,100 / 900 / 1,000). The same seed always gives the same splits; the
splits are disjoint.

Catalogue names and the data directory
--------------------------------------
A catalogue name (``mnist``, ``cifar10``, ..., or the NAME of ``tfds:NAME``) is looked up in
the *data directory*: the ``data_dir`` option (``--data-dir``) when given, else the
environment variable ``INVKERAS_DATA_DIR`` (`DATA_DIR_ENV`). A local copy of NAME there is

* a folder ``DIR/NAME/`` or ``DIR/NAME-*/`` (any suffix: ``mnist-full/``, ``cifar10-2024/``)
  holding MNIST-style IDX files (read as ``idx:`` reads them), and
* every ``.npz`` file directly inside such a folder (read as ``npz:`` reads them: ``x``, ``y``
  and optionally ``x_test``, ``y_test``).

Of several copies, the one with the most training images wins (the train pool: the train
IDX file, or a lone IDX set, or ``x`` of an archive), so a folder holding only a test set
never shadows a full copy beside it; then the one with the most images in all; then the
first in name order (``DIR/NAME`` before ``DIR/NAME-*``, folders and files in sorted order).
Sizes come from the IDX headers and the archives' array headers: choosing reads no image.
The copy is read like the matching ``idx:``/``npz:`` spec, but the dataset keeps the name the
user gave: its workspace is ``runs/NAME/...`` wherever the copy lives, so recipes stay
portable. `find_local_copy` applies the rule; `list_sources` shows where each name resolves.

Without a local copy, a catalogue name is read by TFDS from the same directory (TFDS's
default, ``~/tensorflow_datasets``, when neither the option nor the variable is set). If it is
not prepared there, we try to download it; on a machine without network that fails at once
(a 3-second reachability check first, because TFDS itself retries for minutes) with an
`InvkerasError` naming the directory, what was looked for there, and how to point at a
local copy instead.

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
import os
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
DATA_DIR_ENV = "INVKERAS_DATA_DIR"
_LOCAL_HINT = (f"put a copy in DIR/NAME/ (IDX or .npz files) and pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, "
               "or use idx:DIR, npz:FILE or folder:DIR")
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
    "idx": "data/mnist",
    "npz": "data/my_images.npz",
    "folder": "data/my_pngs",
    "affnist-style": "idx:data/mnist",
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


CAP_SEED = 0  # the capped sample is one fixed sample of each split size: the same for every reader


def capped_positions(total: int, limit: int | None) -> np.ndarray | None:
    """The positions a capped read of `limit` examples takes from a split of `total`: the first
    `limit` of one fixed shuffle of the split (fixed by `total` alone); None when nothing is
    dropped (no cap, or a cap of at least `total`). A uniform sample, so a class-sorted split
    still gives every class its share; and nested, so the first 8 of a 500-example read are the
    8 a read of 8 takes."""
    if limit is None or limit >= total:
        return None
    return np.random.default_rng(CAP_SEED).permutation(total)[:limit]


def in_capped_order(arrays: list[np.ndarray], positions: np.ndarray) -> list[np.ndarray]:
    """Examples collected in ascending position order, put in the order of `positions`."""
    ranks = np.searchsorted(np.sort(positions), positions)
    return [a[ranks] for a in arrays]


def capped_batches(batches: Iterator[dict], positions: np.ndarray | None) -> Iterator[dict]:
    """The rows at `positions` of a stream of dict batches, in the stream's (ascending) order;
    every row when `positions` is None. Stops reading after the last wanted row."""
    wanted = None if positions is None else np.sort(positions)
    start = 0
    for batch in batches:
        size = len(next(iter(batch.values())))
        if wanted is not None:
            lo, hi = np.searchsorted(wanted, [start, start + size])
            batch = {k: v[wanted[lo:hi] - start] for k, v in batch.items()}
        if len(next(iter(batch.values()))):
            yield batch
        start += size
        if wanted is not None and (len(wanted) == 0 or start > wanted[-1]):
            return


def _take(x: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    positions = capped_positions(len(x), limit)
    return (x, y) if positions is None else (x[positions], y[positions])


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
            positions = capped_positions(len(indices), limit)
            indices = indices if positions is None else indices[positions]
            return x[indices], y[indices]  # fancy indexing copies
        x, y = _take(x, y, limit)
        return x.copy(), y.copy()  # never hand out the cached arrays themselves


# --- the data directory and local copies of catalogue names ---------------------------


@dataclasses.dataclass(frozen=True)
class DataDirectory:
    """Where catalogue names are looked up, and who named it (for messages)."""

    path: Path
    named_by: str  # "--data-dir" or the environment variable

    def describe(self) -> str:
        return f"{self.path} (from {self.named_by})"


def data_directory(data_dir: str | os.PathLike | None = None) -> DataDirectory | None:
    """The data directory: `data_dir` (the --data-dir option) when given, else $INVKERAS_DATA_DIR,
    else None. An empty value counts as not set."""
    if data_dir is not None and str(data_dir).strip():
        return DataDirectory(Path(data_dir).expanduser(), "--data-dir")
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    if value:
        return DataDirectory(Path(value).expanduser(), DATA_DIR_ENV)
    return None


@dataclasses.dataclass(frozen=True)
class LocalCopy:
    """A local copy of a catalogue dataset: read as `kind`:`path` (idx or npz)."""

    kind: str
    path: Path
    pool_sizes: dict[str, int]

    @property
    def train_images(self) -> int:
        return self.pool_sizes.get("train", 0)

    def describe(self) -> str:
        what = "IDX files in" if self.kind == "idx" else "NumPy archive"
        if "test" in self.pool_sizes:
            sizes = f"{self.train_images:,} training + {self.pool_sizes['test']:,} test images"
        else:
            sizes = f"{self.train_images:,} images in one pool, carved 81/9/10"
        return f"local copy: {what} {self.path} ({sizes})"


def local_copy_pattern(name: str) -> str:
    """What `find_local_copy` looks for, as messages say it."""
    return f"{name}/ or {name}-*/ holding IDX or .npz files"


def _copy_folders(name: str, directory: Path) -> list[Path]:
    """DIR/NAME, then DIR/NAME-* in sorted order: the folders that may hold a copy of NAME."""
    exact = directory / name
    parent, stem = exact.parent, exact.name  # NAME may have a '/' (tfds:emnist/digits)
    folders = [exact] if exact.is_dir() else []
    if parent.is_dir():
        folders += sorted(p for p in parent.glob(f"{stem}-*") if p.is_dir())
    return folders


def _copies_in(folder: Path) -> list[LocalCopy]:
    """The copies one folder offers: its IDX files (if any), then each .npz inside, by name.
    A file whose header cannot be read offers nothing (it is not a copy of anything)."""
    copies = []
    try:
        sizes = local.idx_pool_sizes(folder)
    except (OSError, ValueError, EOFError):
        sizes = {}
    if sizes:
        copies.append(LocalCopy("idx", folder, sizes))
    for archive in sorted(p for p in folder.glob("*.npz") if p.is_file() and not p.name.startswith(".")):
        try:
            sizes = local.npz_pool_sizes(archive)
        except Exception:  # zipfile, header and OS errors alike: not a readable archive
            sizes = {}
        if sizes:
            copies.append(LocalCopy("npz", archive, sizes))
    return copies


def find_local_copy(name: str, directory: str | os.PathLike) -> LocalCopy | None:
    """The local copy of catalogue dataset `name` in `directory`, or None (the rule is in the
    module docstring: most training images, then most images, then name order)."""
    directory = Path(directory)
    if not name or name.startswith((".", "/")) or ".." in Path(name).parts or not directory.is_dir():
        return None
    candidates = [copy for folder in _copy_folders(name, directory) for copy in _copies_in(folder)]
    if not candidates:
        return None
    # max() keeps the first of equals, so name order breaks ties.
    return max(candidates, key=lambda copy: (copy.train_images, sum(copy.pool_sizes.values())))


def _catalogue_name(spec: Spec) -> str | None:
    """The name a local copy would be filed under: a shortcut or the NAME of tfds:NAME (without
    a TFDS version); None for specs that are not catalogue names (affnist has its own builder)."""
    if spec.kind != "tfds" or spec.text in AFFNIST_CONFIGS:
        return None
    return spec.target.split(":")[0].strip("/") or None


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


def _download_and_prepare(builder, spec: str, looked_for: str = "") -> None:
    """Prepare `builder` in its data_dir, failing fast and in one line when that is impossible.
    `looked_for` says which local copy was searched for first (empty when none was)."""
    tfds = _tfds()
    root = Path(builder.data_dir_root)
    manual_dir = root / "downloads" / "manual"
    has_manual_files = manual_dir.is_dir() and any(manual_dir.iterdir())
    hint = _LOCAL_HINT
    if builder.name == "affnist":
        hint = f"put the affNIST files in {manual_dir} (see invkeras.data.affnist), or use affnist-style:idx:DIR"
    where = f"{looked_for}, not prepared for TFDS there" if looked_for else f"not prepared under {root}"
    if not has_manual_files and not _network_available():
        raise InvkerasError(f"dataset {spec!r}: {where}, and the download failed (no network); {hint}")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as exc:
        raise InvkerasError(f"dataset {spec!r}: {where}, and the download failed ({_one_line(exc)}); {hint}") from exc


class _TfdsSource:
    def __init__(self, spec: Spec, data_dir: str | None, seed: int, looked_for: str = ""):
        self.spec, self.seed = spec, seed
        tfds = _tfds()
        if spec.target.split("/")[0].split(":")[0] == "affnist":
            import invkeras.data.affnist  # noqa: F401  (registers the builder with TFDS)
        try:
            self.builder = tfds.builder(spec.target, data_dir=data_dir)
        except Exception as exc:
            raise InvkerasError(f"dataset {spec.text!r}: TFDS cannot load {spec.target!r} ({_one_line(exc)})") from None
        if not self.builder.is_prepared():
            _download_and_prepare(self.builder, spec.text, looked_for)
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

    def _stream(self, split: str, positions: np.ndarray | None):
        """The split's dataset, keeping `positions` of it (in ascending order) as they stream past."""
        tf = _tf()
        ds = self.dataset(split)
        if positions is None:
            return ds
        keep = np.zeros(positions.max() + 1 if len(positions) else 0, dtype=bool)
        keep[positions] = True
        keep = tf.constant(keep)
        ds = ds.take(len(keep)).enumerate()
        return ds.filter(lambda i, example: keep[i]).map(lambda i, example: example)

    def batches(self, split: str, batch_size: int, limit: int | None):
        """Streamed through tf.data, so a large split never sits in memory whole; a capped read
        is gathered first, to be put in its shuffled order."""
        if capped_positions(_split_size(self.pool_sizes, self.plan[split]), limit) is not None:
            return _array_batches(*self.arrays(split, limit), batch_size)
        return self._stream(split, None).batch(batch_size).prefetch(2).as_numpy_iterator()

    def arrays(self, split: str, limit: int | None):
        positions = capped_positions(_split_size(self.pool_sizes, self.plan[split]), limit)
        xs, ys = [], []
        for x, y in self._stream(split, positions).batch(4096).as_numpy_iterator():
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.zeros((0,) + self.image_shape, np.uint8), np.zeros((0,), np.int64)
        x, y = np.concatenate(xs), np.concatenate(ys)
        return (x, y) if positions is None else tuple(in_capped_order([x, y], positions))


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
        x, y = self.inner.arrays(split, None)
        positions = capped_positions(len(x), limit)
        if positions is None:
            return affine.transform_batch(x, seed=self.seed, stream=SPLITS.index(split)), y
        # Each example keeps the transform of its place in the whole split.
        out = [affine.transform_batch(x[i : i + 1], seed=self.seed, stream=SPLITS.index(split), start_index=int(i))
               for i in positions]
        return (np.concatenate(out) if out else np.zeros((0,) + self.info().image_shape, np.uint8)), y[positions]


def _catalogue_source(spec: Spec, data_dir: str | None, seed: int):
    """A TFDS spec: its local copy in the data directory if there is one, else TFDS there."""
    directory = data_directory(data_dir)
    name = _catalogue_name(spec)
    if directory is None:
        return _TfdsSource(spec, None, seed)
    looked_for = ""
    if name is not None:
        copy = find_local_copy(name, directory.path)
        if copy is not None:
            return _LocalSource(Spec(spec.text, copy.kind, str(copy.path)), seed)
        looked_for = f"no local copy ({local_copy_pattern(name)}) in {directory.describe()}"
    return _TfdsSource(spec, str(directory.path), seed, looked_for)


def _make_source(spec: str, data_dir: str | None, seed: int):
    parsed = parse_spec(spec)
    if parsed.kind == "procedural":
        return _ProceduralSource(parsed, seed)
    if parsed.kind in _LOCAL_KINDS:
        return _LocalSource(parsed, seed)
    if parsed.kind == "tfds":
        return _catalogue_source(parsed, data_dir, seed)
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
    """The split as NumPy: x uint8 NHWC, y int64; `limit` keeps the first `limit` examples of a
    fixed shuffle of the split (`capped_positions`)."""
    _check_split(spec, split)
    if limit is not None and limit < 0:
        raise InvkerasError(f"dataset {spec!r}: limit must be >= 0, got {limit}")
    x, y = _make_source(spec, data_dir, seed).arrays(split, limit)
    return np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


def list_sources(data_dir: str | None = None) -> list[dict]:
    """Rows for the `invkeras datasets` table: spec, kind, description, where it loads from.

    A catalogue name's row says where it resolves now: its local copy in the data directory
    (`data_dir`, else $INVKERAS_DATA_DIR) when there is one, else TFDS in that directory."""
    directory = data_directory(data_dir)
    tfds_dir = directory.describe() if directory else "--data-dir, else $" + DATA_DIR_ENV + ", else ~/tensorflow_datasets"
    tfds_where = f"TFDS in {tfds_dir}; downloaded if missing"
    carved = "validation carved: 10% of train"

    def catalogue(name: str) -> str:
        copy = find_local_copy(name, directory.path) if directory else None
        return copy.describe() if copy else tfds_where

    rows = [
        ("procedural", "embedded", "20x20 grey shapes, 4 classes, exact H(x) = 8.84 nats", "generated in memory"),
        ("mnist", "tfds", f"handwritten digits 28x28x1, 10 classes; {carved}", catalogue("mnist")),
        ("fashion_mnist", "tfds", f"clothing 28x28x1, 10 classes; {carved}", catalogue("fashion_mnist")),
        ("kmnist", "tfds", f"Kuzushiji characters 28x28x1, 10 classes; {carved}", catalogue("kmnist")),
        ("svhn_cropped", "tfds", f"house-number digits 32x32x3, 10 classes; {carved}", catalogue("svhn_cropped")),
        ("cifar10", "tfds", f"natural images 32x32x3, 10 classes; {carved}", catalogue("cifar10")),
        ("tfds:NAME", "tfds", "any TFDS (image, label) dataset; missing splits carved",
         f"a local copy NAME/ or NAME-*/ in the data directory, else {tfds_where}"),
        ("affnist", "tfds (invkeras)", "official affNIST 40x40x1 digits, 10 classes",
         f"TFDS in {tfds_dir}; cs.toronto.edu download or .mat files in DIR/downloads/manual"),
        ("affnist/generated", "tfds (invkeras)", "affNIST-style 40x40x1 GENERATED from MNIST (not the official set)",
         f"TFDS in {tfds_dir}; MNIST download or IDX files in DIR/downloads/manual"),
        ("idx:DIR", "local", "MNIST-style IDX files; t10k-only sets carved 81/9/10",
         "DIR/{train,t10k}-*-idx*-ubyte[.gz]"),
        ("npz:FILE", "local", "arrays x (uint8 NHWC or NHW), y; optional x_test, y_test", "FILE"),
        ("folder:DIR", "local", "one sub-folder of PNGs per class; carved 81/9/10", "DIR/<class>/*.png"),
        ("affnist-style:INNER", "derived", "any 28x28x1 spec, each image affNIST-transformed to 40x40x1",
         "wherever INNER loads from; transforms seeded per example"),
    ]
    return [dict(zip(("spec", "kind", "description", "loads_from"), row)) for row in rows]
