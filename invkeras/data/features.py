"""Feature extraction: stream (image, representation) pairs out of any named layer of a Keras model.

On-disk format (documented in the README, readable without invkeras):

    <out>/<layer>/<split>/
        manifest.json             # format, layer, split, counts, shapes, shard list
        manifest.json.meta.json   # how it was made (command, model, data, versions)
        shard-00000.npz           # x: uint8 [n,H,W,C] images, h: float32 [n,...] features, y: int64 [n]
        shard-00001.npz
        ...

Shards are written one at a time, so a split never sits in memory whole. A user's single
`.npz` file holding `x` and `h` (and optionally `y`) is accepted wherever features are, so
representations from any framework can be inverted.

Feature directories may come from anywhere, so what is read is checked where it is read:
the manifest against `Manifest` (shard files named inside its own folder, counts that add
up), each shard against the manifest's shapes and counts, and the splits of one directory
against each other (`open_split_sets`); anything off is one `InvkerasError` line naming the
file. A split is written into a hidden temporary folder beside it and renamed into place
when complete; one left behind by a killed run is removed by the next run writing that
split (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError

FORMAT = "invkeras-features-v1"
MANIFEST = "manifest.json"
WRITER_MARK = ".writer.json"  # in a split's temporary folder while a live process writes it


# --- locating and loading models ----------------------------------------------------


def resolve_model_path(model: str | Path) -> Path:
    """Accept a `.keras` file, or a run directory that holds `classifier/model.keras` or `model.keras`."""
    path = Path(model)
    if path.is_dir():
        for candidate in (artifacts.classifier_of_run(path), path / "model.keras"):
            if candidate.is_file():
                return candidate
        raise InvkerasError(f"--model {model}: directory has no model.keras or classifier/model.keras")
    if not path.exists():
        raise InvkerasError(f"--model {model}: file not found")
    if path.suffix != ".keras":
        raise InvkerasError(f"--model {model}: expected a .keras file or a run directory")
    return path


def load_model(model: str | Path):
    """Load a Keras model; importing invkeras.classifiers.architectures registers its custom layers."""
    import invkeras.classifiers.architectures  # noqa: F401  (registers ConvBlock etc. for deserialisation)
    from invkeras.models import load_keras_model

    return load_keras_model(resolve_model_path(model), what="Keras model", flag="--model")


# --- writing features ---------------------------------------------------------------


class ExtractConfig(BaseModel):
    """Everything `invkeras extract` needs; also the `extract` recipe step."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "procedural"
    data_dir: Optional[str] = None
    arch: str = "conv"
    model: Optional[str] = Field(None, description="`.keras` file or run dir; default: the run for dataset+arch")
    layers: list[str] = Field(default_factory=lambda: ["conv1", "conv2", "fc3", "logits"], min_length=1)
    splits: list[str] = Field(default_factory=lambda: ["train", "validation", "test"], min_length=1)
    out: Optional[str] = Field(None, description="root directory; default runs/<dataset>/<arch>/features")
    batch_size: int = Field(256, gt=0)
    shard_size: int = Field(4096, gt=0)
    limit: Optional[int] = Field(None, gt=0, description="at most this many examples per split, a fixed sample of each")
    seed: int = 0
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, splits: list[str]) -> list[str]:
        from invkeras.data import SPLITS

        for split in splits:
            if split not in SPLITS:
                raise ValueError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
        return splits

    def model_path(self) -> Path:
        return Path(self.model) if self.model else artifacts.classifier_path(self.dataset, self.arch, self.workspace)

    def out_root(self) -> Path:
        """Where features go: --out, else beside a non-default model, else the run's features dir.

        A checkpoint or user model gets its own cache (`<model stem>-features/` beside it), so
        features of different models are never mixed up under one run directory.
        """
        if self.out:
            return Path(self.out)
        default_model = artifacts.classifier_path(self.dataset, self.arch, self.workspace)
        if self.model:
            model = Path(self.model)
            if model.is_dir():
                model = artifacts.classifier_of_run(model)
            if model.resolve() != default_model.resolve():
                return model.parent / f"{model.stem}-features"
        return artifacts.run_dir(self.dataset, self.arch, self.workspace) / "features"

    def split_dir(self, layer: str, split: str) -> Path:
        return self.out_root() / artifacts.plain_name(layer, "layer") / artifacts.plain_name(split, "split")


def extract_features(config: ExtractConfig, *, progress: bool = True) -> dict[str, dict[str, Path]]:
    """Run the model once per split and write sharded features for every requested layer.

    Returns {layer: {split: manifest path}}. Splits whose manifests are already complete
    are skipped, so an interrupted extraction resumes where it stopped.
    """
    from invkeras.classifiers.architectures import layer_output_model
    from invkeras.data import dataset_info, iter_batches

    if not config.model and not config.model_path().is_file():
        raise InvkerasError(f"no classifier trained yet for --dataset {config.dataset} --arch {config.arch} (looked for "
                            f"{config.model_path()}); train one with `invkeras train-classifier --dataset "
                            f"{config.dataset} --arch {config.arch}`, or give --model")
    model_path = resolve_model_path(config.model_path())
    model = load_model(model_path)
    model_digest = file_digest(model_path)
    extractor = layer_output_model(model, config.layers)
    info = dataset_info(config.dataset, data_dir=config.data_dir, seed=config.seed)
    expected = tuple(int(d) for d in model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if expected and expected != tuple(info.image_shape):
        raise InvkerasError(
            f"--model {model_path}: expects images of shape {expected}, "
            f"but dataset '{config.dataset}' has {tuple(info.image_shape)}"
        )

    results: dict[str, dict[str, Path]] = {layer: {} for layer in config.layers}
    for layer in config.layers:
        for split in config.splits:
            remove_stale_temporaries(config.split_dir(layer, split))
    for split in config.splits:
        total = info.split_sizes[split] if config.limit is None else min(config.limit, info.split_sizes[split])
        todo = [
            layer for layer in config.layers
            if not _complete_for(config.split_dir(layer, split) / MANIFEST, model_path, model_digest, total)
        ]
        for layer in set(config.layers) - set(todo):
            results[layer][split] = config.split_dir(layer, split) / MANIFEST
        if not todo:
            continue
        batches = iter_batches(config.dataset, split, config.batch_size, data_dir=config.data_dir, seed=config.seed,
                               limit=config.limit)
        manifests = _write_split(
            batches,
            extractor,
            todo,
            {layer: config.split_dir(layer, split) for layer in todo},
            shard_size=config.shard_size,
            total=total,
            description=f"extract {split}",
            progress=progress,
            provenance={
                "model": str(model_path),
                "model_sha256": model_digest,
                "dataset": config.dataset,
                "split": split,
                "seed": config.seed,
                "config": config,
                "data": info,
            },
        )
        for layer, path in manifests.items():
            results[layer][split] = path
    return results


def file_digest(path: Path) -> str:
    """SHA-256 of a model file (or of every file under a model directory, in sorted order)."""
    digest = hashlib.sha256()
    path = Path(path)
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _complete_for(manifest_path: Path, model_path: Path, model_digest: str, num_examples: int) -> bool:
    """A finished extraction is reused only if it came from this very model (path and bytes: a
    classifier retrained in place makes it stale) and holds exactly the examples asked for (a
    `--limit` run must not stand in for a whole split)."""
    if not artifacts.is_complete(manifest_path):
        return False
    try:
        manifest = read_manifest(manifest_path)
    except InvkerasError:  # a damaged cache is extracted again (and replaced)
        return False
    recorded = manifest.get("model")
    same_model = (recorded is not None and Path(recorded).resolve() == Path(model_path).resolve()
                  and manifest.get("model_sha256") == model_digest)
    return same_model and manifest.get("num_examples") == num_examples


def _write_split(batches, extractor, layers, out_dirs, *, shard_size, total, description, progress, provenance):
    """Stream batches through the extractor into per-layer shard directories (atomically)."""
    from contextlib import ExitStack

    from invkeras.progress import progress_bar

    with ExitStack() as stack:
        tmp_dirs = {layer: stack.enter_context(_split_writer(out_dirs[layer])) for layer in layers}
        writers = {layer: _ShardWriter(tmp_dirs[layer], shard_size) for layer in layers}
        bar = stack.enter_context(progress_bar(disable=not progress))
        task = bar.add_task(description, total=total)
        started = time.time()
        for images, labels in batches:
            outputs = extractor(images.astype("float32"), training=False)
            for layer in layers:
                writers[layer].add(images, np.asarray(outputs[layer], dtype=np.float32), labels)
            bar.advance(task, len(images))
        for layer in layers:
            writers[layer].close()
            manifest = writers[layer].manifest(layer=layer, seconds=time.time() - started, **provenance)
            artifacts.write_json_atomic(tmp_dirs[layer] / MANIFEST, manifest)
            artifacts.write_metadata(
                tmp_dirs[layer] / MANIFEST,
                kind="features",
                config=provenance["config"],
                seed=provenance["seed"],
                data=provenance["data"],
                results={"num_examples": manifest["num_examples"], "h_shape": manifest["h_shape"]},
                model=provenance["model"],
                layer=layer,
                split=provenance["split"],
            )
    return {layer: out_dirs[layer] / MANIFEST for layer in layers}


def write_features(directory: str | Path, *, layer: str, split: str, x: np.ndarray, h: np.ndarray, y: np.ndarray,
                   dataset: str, config, seed: int, source: str, shard_size: int = 4096) -> Path:
    """Write in-memory (x, h, y) as one split in the extract format (atomically), for
    representations that come from somewhere other than a Keras layer. Returns the manifest."""
    started = time.time()
    remove_stale_temporaries(Path(directory))
    with _split_writer(Path(directory)) as tmp:
        writer = _ShardWriter(Path(tmp), shard_size)
        writer.add(np.asarray(x, np.uint8), np.asarray(h, np.float32), np.asarray(y, np.int64))
        writer.close()
        manifest = writer.manifest(layer=layer, seconds=time.time() - started, split=split, dataset=dataset,
                                   model=source)
        artifacts.write_json_atomic(Path(tmp) / MANIFEST, manifest)
        artifacts.write_metadata(Path(tmp) / MANIFEST, kind="features", config=config, seed=seed,
                                 results={"num_examples": manifest["num_examples"], "h_shape": manifest["h_shape"]},
                                 source=source, layer=layer, split=split)
    return Path(directory) / MANIFEST


@contextlib.contextmanager
def _split_writer(directory: Path) -> Iterator[Path]:
    """`artifacts.atomic_dir` whose temporary folder says, while it is written, which process
    writes it: a folder whose writer is gone was left by a kill (`remove_stale_temporaries`)."""
    with artifacts.atomic_dir(directory) as tmp:
        mark = Path(tmp) / WRITER_MARK
        mark.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        yield Path(tmp)
        mark.unlink()


def _writer_alive(mark: Path) -> bool | None:
    """Whether the process a temporary folder's mark names may still be writing it (a process
    on another host counts as alive); None when the mark is missing or not (yet) readable."""
    try:
        writer = json.loads(mark.read_text())
        pid, host = int(writer["pid"]), str(writer["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


_SPLIT_FILE = re.compile(r"(shard-\d+\.npz|manifest\.json(\.meta\.json)?|\.writer\.json|\.(shard-\d+|manifest)\..+)")


def _holds_only_split_files(folder: Path) -> bool:
    """Whether a folder holds nothing but what a split is made of (shards, manifest, their
    temporaries), so that an unmarked one is known to be a split's and not someone's folder."""
    return all(_SPLIT_FILE.fullmatch(entry.name) and entry.is_file() for entry in folder.iterdir())


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary folders of `directory` left by a killed run: `.NAME.XXXXXXXX`
    beside it (as `artifacts.atomic_dir` names them) whose writer is gone, and unmarked ones
    (a kill before the mark, or an older invkeras) that hold only split files and are more
    than a minute old (a live writer marks its folder as soon as it has made it). Returns
    what was removed."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return []
    temporary = re.compile(rf"\.{re.escape(directory.name)}\.[a-z0-9_]{{8}}")
    removed = []
    for candidate in sorted(directory.parent.iterdir()):
        if not temporary.fullmatch(candidate.name) or not candidate.is_dir() or candidate.is_symlink():
            continue
        alive = _writer_alive(candidate / WRITER_MARK)
        if alive is None:
            alive = time.time() - candidate.stat().st_mtime < 60 or not _holds_only_split_files(candidate)
        if alive:
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


@dataclass
class _ShardWriter:
    """Buffers at most `shard_size` examples, then writes one `.npz` shard."""

    directory: Path
    shard_size: int
    shards: list[dict] = field(default_factory=list)
    _x: list[np.ndarray] = field(default_factory=list)
    _h: list[np.ndarray] = field(default_factory=list)
    _y: list[np.ndarray] = field(default_factory=list)
    _buffered: int = 0
    h_shape: tuple[int, ...] | None = None
    x_shape: tuple[int, ...] | None = None

    def add(self, x: np.ndarray, h: np.ndarray, y: np.ndarray) -> None:
        self.x_shape, self.h_shape = x.shape[1:], h.shape[1:]
        start = 0
        while start < len(x):
            take = min(self.shard_size - self._buffered, len(x) - start)
            self._x.append(x[start : start + take])
            self._h.append(h[start : start + take])
            self._y.append(y[start : start + take])
            self._buffered += take
            start += take
            if self._buffered == self.shard_size:
                self._flush()

    def close(self) -> None:
        if self._buffered:
            self._flush()

    def _flush(self) -> None:
        name = f"shard-{len(self.shards):05d}.npz"
        artifacts.save_npz_atomic(
            self.directory / name,
            x=np.concatenate(self._x).astype(np.uint8),
            h=np.concatenate(self._h).astype(np.float32),
            y=np.concatenate(self._y).astype(np.int64),
        )
        self.shards.append({"file": name, "num_examples": self._buffered})
        self._x, self._h, self._y, self._buffered = [], [], [], 0

    def manifest(self, *, layer: str, seconds: float, **provenance) -> dict:
        return {
            "format": FORMAT,
            "layer": layer,
            "split": provenance["split"],
            "dataset": provenance["dataset"],
            "model": provenance["model"],
            "model_sha256": provenance.get("model_sha256"),  # None: not from a model file
            "num_examples": sum(s["num_examples"] for s in self.shards),
            "x_shape": list(self.x_shape or ()),
            "x_dtype": "uint8",
            "h_shape": list(self.h_shape or ()),
            "h_dtype": "float32",
            "shards": self.shards,
            "seconds": round(seconds, 3),
        }


# --- reading features ---------------------------------------------------------------


class ShardEntry(BaseModel):
    """One shard as a manifest lists it: a file of its own folder and its example count."""

    model_config = ConfigDict(extra="allow")

    file: StrictStr
    num_examples: StrictInt = Field(ge=1)

    @field_validator("file")
    @classmethod
    def _inside_its_folder(cls, file: str) -> str:
        parts = PurePosixPath(file.replace("\\", "/")).parts
        if (not parts or PurePosixPath(file).is_absolute() or PureWindowsPath(file).is_absolute()
                or PureWindowsPath(file).drive or ".." in parts):
            raise ValueError(f"shard {file!r} is not a file of the manifest's own folder")
        return file


class Manifest(BaseModel):
    """`manifest.json` of one split, as `open_features` checks it before reading a shard."""

    model_config = ConfigDict(extra="allow")

    format: StrictStr
    num_examples: StrictInt = Field(ge=0)
    x_shape: list[StrictInt]
    h_shape: list[StrictInt]
    shards: list[ShardEntry]
    layer: Optional[StrictStr] = None
    split: Optional[StrictStr] = None
    dataset: Optional[StrictStr] = None
    model: Optional[StrictStr] = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != FORMAT:
            raise ValueError(f"unknown format {value!r} (expected {FORMAT!r})")
        return value

    @field_validator("x_shape", "h_shape")
    @classmethod
    def _positive(cls, shape: list[int]) -> list[int]:
        if any(d < 1 for d in shape):
            raise ValueError(f"dimensions must be >= 1, got {shape}")
        return shape

    @model_validator(mode="after")
    def _counts_add_up(self):
        if self.num_examples and len(self.x_shape) not in (2, 3):
            raise ValueError(f"x_shape must be [height, width, channels], got {self.x_shape}")
        total = sum(shard.num_examples for shard in self.shards)
        if total != self.num_examples:
            raise ValueError(f"the shards hold {total} examples in all, but num_examples is {self.num_examples}")
        files = [shard.file for shard in self.shards]
        if len(set(files)) != len(files):
            raise ValueError("a shard file is listed twice")
        return self


def read_manifest(path: Path) -> dict:
    """A split's manifest, checked against `Manifest`; one line naming it when anything is off."""
    manifest = artifacts.read_json_object(path, Manifest, "features")
    if len(manifest["x_shape"]) == 2:  # NHW images are stored with C=1
        manifest["x_shape"] = [*manifest["x_shape"], 1]
    return manifest


@dataclass(frozen=True)
class FeatureSet:
    """A readable set of (x, h[, y]) examples: an extract directory or a single user `.npz`."""

    path: Path
    shard_files: tuple[Path, ...]
    num_examples: int
    x_shape: tuple[int, ...]
    h_shape: tuple[int, ...]
    layer: str | None = None
    dataset: str | None = None
    model: str | None = None

    shard_sizes: tuple[int, ...] | None = None  # per shard, as the manifest lists them

    def read_shard(self, index: int) -> dict[str, np.ndarray]:
        """Shard `index`, checked against what the manifest says of it: one line when it differs."""
        path = self.shard_files[index]
        arrays = _read_arrays(path)
        for key, expected in (("x", self.x_shape), ("h", self.h_shape)):
            found = tuple(arrays[key].shape[1:])
            if found != tuple(expected):
                raise InvkerasError(f"features {path}: {key} has shape {found} per example, but "
                                    f"{self.path / MANIFEST if self.path.is_dir() else self.path} says {tuple(expected)}")
        if self.shard_sizes is not None and len(arrays["x"]) != self.shard_sizes[index]:
            raise InvkerasError(f"features {path}: holds {len(arrays['x'])} examples, but {self.path / MANIFEST} "
                                f"says {self.shard_sizes[index]}")
        return arrays

    def iter_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield dicts of NumPy batches (x uint8, h float32, y if present), one shard in memory at a time."""
        carry: dict[str, np.ndarray] | None = None
        for index in range(len(self.shard_files)):
            arrays = self.read_shard(index)
            if carry is not None:
                arrays = {k: np.concatenate([carry[k], arrays[k]]) for k in arrays if k in carry}
            n = len(arrays["x"])
            full = n - n % batch_size
            for start in range(0, full, batch_size):
                yield {k: v[start : start + batch_size] for k, v in arrays.items()}
            carry = {k: v[full:] for k, v in arrays.items()} if full < n else None
        if carry is not None and len(carry["x"]):
            yield carry

    def as_dataset(self):
        """An unbatched tf.data.Dataset of {"x", "h"} streaming shard by shard, for TensorFlow
        users' own pipelines. invkeras itself reads features with `iter_batches` and `load_all`
        (NumPy), so training, sampling and estimate-mi need no TensorFlow."""
        try:
            import tensorflow as tf
        except ImportError:
            raise InvkerasError(f"features {self.path}: as_dataset needs TensorFlow, which is not installed; "
                                "iter_batches gives the same examples as NumPy batches") from None

        def generate():
            for index in range(len(self.shard_files)):
                arrays = self.read_shard(index)
                for x, h in zip(arrays["x"], arrays["h"]):
                    yield {"x": x, "h": h}

        signature = {
            "x": tf.TensorSpec(self.x_shape, tf.uint8),
            "h": tf.TensorSpec(self.h_shape, tf.float32),
        }
        return tf.data.Dataset.from_generator(generate, output_signature=signature).apply(
            tf.data.experimental.assert_cardinality(self.num_examples)
        )

    def load_all(self, limit: int | None = None) -> dict[str, np.ndarray]:
        """Everything in memory, or with `limit` the capped read of the data module's rule
        (`capped_positions`): the same examples, in the same order, as a capped read of the
        images the features were extracted from."""
        from invkeras.data.registry import in_capped_order, capped_batches, capped_positions

        positions = capped_positions(self.num_examples, limit)
        parts: dict[str, list[np.ndarray]] = {}
        for batch in capped_batches(self.iter_batches(4096), positions):
            for k, v in batch.items():
                parts.setdefault(k, []).append(v)
        if not parts:
            raise InvkerasError(f"features {self.path}: no examples")
        keys = list(parts)
        arrays = [np.concatenate(parts[k]) for k in keys]
        if positions is not None:  # from the stream's order to the shuffle's
            arrays = in_capped_order(arrays, positions)
        return dict(zip(keys, arrays))


def open_features(path: str | Path) -> FeatureSet:
    """Open an extract directory (with manifest.json) or a single `.npz` holding `x` and `h`."""
    path = Path(path)
    if path.is_dir():
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise InvkerasError(f"features {path}: no {MANIFEST} (is this an `invkeras extract` output directory?)")
        manifest = read_manifest(manifest_path)
        shard_files = tuple(path / s["file"] for s in manifest["shards"])
        folder = path.resolve()
        for shard in shard_files:  # a link may still lead elsewhere
            if folder not in shard.resolve().parents:
                raise InvkerasError(f"features {manifest_path}: shard {shard.relative_to(path)} leads outside {path}")
        missing = [str(p.relative_to(path)) for p in shard_files if not p.is_file()]
        if missing:
            raise InvkerasError(f"features {path}: missing shard files {', '.join(missing)}")
        return FeatureSet(
            path=path,
            shard_files=shard_files,
            num_examples=manifest["num_examples"],
            x_shape=tuple(manifest["x_shape"]),
            h_shape=tuple(manifest["h_shape"]),
            layer=manifest.get("layer"),
            dataset=manifest.get("dataset"),
            model=manifest.get("model"),
            shard_sizes=tuple(s["num_examples"] for s in manifest["shards"]),
        )
    if path.suffix == ".npz":
        if not path.exists():
            raise InvkerasError(f"features {path}: file not found")
        arrays = _read_arrays(path)
        return FeatureSet(
            path=path,
            shard_files=(path,),
            num_examples=len(arrays["x"]),
            x_shape=tuple(arrays["x"].shape[1:]),
            h_shape=tuple(arrays["h"].shape[1:]),
        )
    raise InvkerasError(f"features {path}: expected an extract directory or a .npz file with arrays x and h")


def open_split_sets(path: str | Path) -> dict[str, FeatureSet]:
    """The splits of an extract directory (`path/<split>/manifest.json`; train is required),
    checked to agree: every split's images and features have the training split's shapes."""
    from invkeras.data import SPLITS

    path = Path(path)
    sets = {split: open_features(path / split) for split in SPLITS if (path / split / MANIFEST).exists()}
    if "train" not in sets:
        raise InvkerasError(f"features {path}: no train/{MANIFEST}")
    train = sets["train"]
    for split, feature_set in sets.items():
        for what, found, expected in (("images", feature_set.x_shape, train.x_shape),
                                      ("features h", feature_set.h_shape, train.h_shape)):
            if tuple(found) != tuple(expected):
                raise InvkerasError(f"features {feature_set.path / MANIFEST}: {split} {what} have shape "
                                    f"{tuple(found)}, but the training {what} ({train.path}) have {tuple(expected)}")
    return sets


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read and validate one shard or user file: x uint8 NHWC (NHW accepted), h float32, same length."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        if "Object arrays" in str(exc):
            raise InvkerasError(f"features {path}: holds object arrays, which are not accepted (they would need "
                                "pickle); save x and h as numeric arrays") from None
        raise InvkerasError(f"features {path}: not a readable .npz file ({type(exc).__name__})") from None
    for key in ("x", "h"):
        if key not in arrays:
            raise InvkerasError(f"features {path}: missing array '{key}' (found: {', '.join(sorted(arrays)) or 'none'})")
    x, h = arrays["x"], arrays["h"]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise InvkerasError(f"features {path}: x must be images NHWC, got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 255:
            raise InvkerasError(f"features {path}: x must hold uint8 pixel values 0..255, got dtype {x.dtype}")
        x = x.astype(np.uint8)
    if len(h) != len(x):
        raise InvkerasError(f"features {path}: x has {len(x)} examples but h has {len(h)}")
    if len(x) == 0:
        raise InvkerasError(f"features {path}: no examples (x and h are empty)")
    h = h.astype(np.float32)
    if not np.all(np.isfinite(h)):
        raise InvkerasError(f"features {path}: h contains NaN or inf")
    out = {"x": x, "h": h}
    if "y" in arrays:
        out["y"] = arrays["y"].astype(np.int64)
    return out
