"""Artefacts on disk: atomic writes, metadata JSON beside every output, and the workspace layout.

Every artefact `foo.ext` gets a `foo.ext.meta.json` saying how it was made: command,
config, seed, data, package versions and time. Writes go to a temporary file in the
same directory and are renamed into place, so a kill never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from invkeras.errors import InvkerasError

DEFAULT_WORKSPACE = Path("runs")
META_SUFFIX = ".meta.json"


# --- atomic writes -----------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the final extension (Keras insists on `.keras`, NumPy on `.npz`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes) or ".tmp"
    with _naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            # mkstemp makes the file private (0600); give it the permissions a plain write would.
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        with _naming(path):
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError of the temporary file names `path` instead: the user asked for `path` (a folder
    where the file should go, a read-only directory) and has never heard of the other."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700, as with atomic_path
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_not_folder(value: str | os.PathLike | None) -> str | os.PathLike | None:
    """For a config's output-file setting: an existing folder there is refused when the config
    is made, before any work, naming it (a file cannot be written over a folder)."""
    if value is not None and Path(value).is_dir():
        raise ValueError(f"{value} is a folder; give the path of the file to write")
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "model_dump"):  # pydantic models
        return _jsonable(obj.model_dump(mode="json"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return obj


# --- metadata -----------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("invkeras", "keras", "tensorflow", "tensorflow-probability", "tfp-nightly", "tensorflow-datasets",
                 "jax", "jaxlib", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    with contextlib.suppress(Exception):
        import keras

        versions["keras_backend"] = keras.backend.backend()
    return versions


def current_command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def metadata_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.parent / (artifact.name + META_SUFFIX)


def write_metadata(
    artifact: str | os.PathLike,
    *,
    kind: str,
    config: Any = None,
    seed: int | None = None,
    data: Any = None,
    results: Any = None,
    command: str | None = None,
    **extra: Any,
) -> Path:
    """Write `<artifact>.meta.json`: what the artefact is and exactly how it was made."""
    meta = {
        "artifact": Path(artifact).name,
        "kind": kind,
        "command": command if command is not None else current_command(),
        "config": config,
        "seed": seed,
        "data": data,
        "results": results,
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    return write_json_atomic(metadata_path(artifact), meta)


class Metadata(BaseModel):
    """What `write_metadata` writes, as `read_metadata` checks it: a JSON object whose shared
    keys have the types written there (each kind adds keys of its own, kept as they are)."""

    model_config = ConfigDict(extra="allow")

    artifact: Optional[StrictStr] = None
    kind: Optional[StrictStr] = None
    command: Optional[StrictStr] = None
    config: Optional[dict[str, Any]] = None
    seed: Optional[StrictInt] = None
    data: Any = None
    results: Optional[dict[str, Any]] = None
    versions: Optional[dict[str, Any]] = None
    created: Optional[StrictStr] = None
    # keys that inverters (and other models) add, read back when they are loaded
    layer: Optional[StrictStr] = None
    inverter_kind: Optional[StrictStr] = None
    image_shape: Optional[list[StrictInt]] = None
    h_shape: Optional[list[StrictInt]] = None


def read_json_object(path: str | os.PathLike, model: type[BaseModel], what: str) -> dict[str, Any]:
    """The JSON object in `path`, checked against `model`: one `InvkerasError` line naming the
    file and what is wrong when it is unreadable, not JSON, not an object or not the model."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise InvkerasError(f"{what} {path}: not a JSON text file") from None
    except json.JSONDecodeError as exc:
        raise InvkerasError(f"{what} {path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except OSError as exc:
        raise InvkerasError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(value, dict):
        raise InvkerasError(f"{what} {path}: expected a JSON object, got {json_type(value)}")
    try:
        model.model_validate(value)
    except ValidationError as exc:
        raise InvkerasError(f"{what} {path}: {describe_invalid(exc)}") from None
    return value


_EXPECTED = {"dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
             "list_type": "a list", "int_type": "an integer", "int_parsing": "an integer", "string_type": "a string",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
             "literal_error": None}


def json_type(value: Any) -> str:
    """How a message names a JSON value's type (with a short string shown as itself)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if len(value) <= 40 else "a string"
    if value is None:
        return "null"
    return f"the number {value}" if isinstance(value, (int, float)) else type(value).__name__


def describe_invalid(exc: ValidationError) -> str:
    """The first problem of a pydantic ValidationError, as 'where: what' in the file's own
    terms (shards[0].file: expected a string, got a list)."""
    error = exc.errors()[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    kind = error["type"]
    if kind == "missing":
        return f"lacks '{where}'"
    if kind in _EXPECTED and _EXPECTED[kind]:
        return f"{where}: expected {_EXPECTED[kind]}, got {json_type(error.get('input'))}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def read_metadata(artifact: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata beside `artifact` (None when there is none), checked against `Metadata`:
    a file that is not JSON, not an object, or with a shared key of the wrong type is one
    `InvkerasError` line naming it."""
    path = metadata_path(artifact)
    if not path.exists():
        return None
    return read_json_object(path, Metadata, "metadata")


def is_complete(artifact: str | os.PathLike) -> bool:
    """An artefact is complete when it and its metadata exist (metadata is written last)."""
    artifact = Path(artifact)
    return artifact.exists() and metadata_path(artifact).exists()


# --- workspace layout ---------------------------------------------------------------


def dataset_slug(spec: str) -> str:
    """A directory name for a dataset spec: 'idx:data/mnist' -> 'idx-mnist'."""
    kind, _, rest = spec.partition(":")
    if not rest:
        name = kind
    else:
        stem = Path(rest.rstrip("/")).name
        stem = re.sub(r"\.(npz|gz)$", "", stem)
        name = f"{kind}-{stem}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "dataset"


def plain_name(value: str, what: str) -> str:
    """`value`, a name that becomes one folder or file name of the workspace layout (a layer,
    an architecture, a kind, a dataset's slug, a model's name), checked to be just that.

    A separator, `.`/`..` or an absolute path would put the artefact somewhere else, outside
    the workspace even: it is refused here, where the layout's paths are built, so every field
    that reaches a path is checked whichever command or recipe key it came from."""
    text = str(value)
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    if (not text.strip() or text in (".", "..") or any(s in text for s in separators) or "\0" in text
            or Path(text).is_absolute()):
        raise InvkerasError(f"{what} {text!r}: must be a plain name (no '/', '\\' or '..'), as it names a folder of "
                            "the workspace")
    return text


def dataset_folder(dataset: str) -> str:
    """The dataset's folder in the workspace (its slug), refused where it would be '.' or '..'."""
    slug = dataset_slug(dataset)
    if slug in (".", ".."):
        raise InvkerasError(f"dataset {dataset!r}: its folder name would be {slug!r}, outside the workspace layout; "
                            "name the dataset another way")
    return plain_name(slug, "dataset")


def run_dir(dataset: str, arch: str, workspace: str | os.PathLike = DEFAULT_WORKSPACE) -> Path:
    """`runs/<dataset>/<arch>`: where a classifier and everything built on it live."""
    return Path(workspace) / dataset_folder(dataset) / plain_name(arch, "arch")


def classifier_path(dataset: str, arch: str, workspace: str | os.PathLike = DEFAULT_WORKSPACE) -> Path:
    return classifier_of_run(run_dir(dataset, arch, workspace))


def classifier_of_run(run: str | os.PathLike) -> Path:
    """The classifier of a run directory `runs/<dataset>/<arch>`."""
    return Path(run) / "classifier" / "model.keras"


def features_dir(
    dataset: str, arch: str, layer: str, split: str, workspace: str | os.PathLike = DEFAULT_WORKSPACE
) -> Path:
    return run_dir(dataset, arch, workspace) / "features" / plain_name(layer, "layer") / plain_name(split, "split")


def inverter_dir(dataset: str, arch: str, layer: str, workspace: str | os.PathLike = DEFAULT_WORKSPACE, *,
                 kind: str) -> Path:
    """`runs/<dataset>/<arch>/inverters/<kind>/<layer>`: kinds never share a directory."""
    return run_dir(dataset, arch, workspace) / "inverters" / plain_name(kind, "kind") / plain_name(layer, "layer")


def comparison_dir(dataset: str, arch: str, layer: str, workspace: str | os.PathLike = DEFAULT_WORKSPACE) -> Path:
    """`runs/<dataset>/<arch>/comparisons/<layer>`: kinds compared side by side on one layer."""
    return run_dir(dataset, arch, workspace) / "comparisons" / plain_name(layer, "layer")


def autoencoder_dir(dataset: str, name: str, workspace: str | os.PathLike = DEFAULT_WORKSPACE) -> Path:
    """`runs/<dataset>/autoencoders/<name>`: autoencoders belong to a dataset, not a classifier."""
    return Path(workspace) / dataset_folder(dataset) / "autoencoders" / plain_name(name, "name")
