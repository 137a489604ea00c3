"""Where an inverter's (x, h) pairs come from; every kind trains and is evaluated on these.

The pairs come from one of:
  * a classifier run plus a layer (`--dataset D --arch A --layer fc3`): features are
    extracted once into runs/<D>/<A>/features/<layer>/<split> (resumable) and reused;
  * an extract directory or a user's own `.npz` with `x` and `h` (`--features PATH`);
  * `--layer none`: images only, for a kind that can model p(x) unconditionally.
All kinds read the same pairs, splits and order, so their held-out scores are paired.

Held-out splits: a classifier run (or --layer none) has validation and test; given features
have validation (their own, or carved out of their training pairs) and test only where an
extract directory has one (a user's .npz has none). `held_out_splits` says which exist;
`choose_held_out_split` is how the analyses (sample, compare, estimate-mi) pick one: the
split asked for when it exists, else, when the split was only the default, the one that
exists (with a note on stderr saying so), else one line naming the splits there are.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError

UNCONDITIONAL = "none"
HELD_OUT_SPLITS = ("validation", "test")


class PairedDataConfig(BaseModel):
    """The data fields every inverter config shares."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "procedural"
    data_dir: Optional[str] = None
    arch: str = "conv"
    layer: str = Field("fc3", description="layer name, or 'none' for the unconditional model")
    model: Optional[str] = Field(None, description="classifier .keras or run dir; default the run for dataset+arch")
    features: Optional[str] = Field(None, description="extract directory or user .npz with x and h")
    train_examples: Optional[int] = Field(None, gt=0)
    eval_examples: Optional[int] = Field(None, gt=0, description="cap on validation/test images evaluated")
    seed: int = 0
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)

    @field_validator("layer")
    @classmethod
    def _layer_not_empty(cls, layer: str) -> str:
        if not layer.strip():
            raise ValueError("layer name is empty")
        return layer

    @model_validator(mode="after")
    def _layer_of_features(self):
        """With --features and no --layer, the layer is the one the features' manifest records
        (a user's .npz records none: then 'features'), never the default 'fc3'."""
        if self.features and "layer" not in self.model_fields_set:
            self.layer = _manifest_layer(Path(self.features) / "train" / "manifest.json") or "features"
        return self

    @property
    def conditional(self) -> bool:
        return self.layer != UNCONDITIONAL


def _manifest_layer(manifest: Path) -> str | None:
    """The layer a features manifest names, if it can be read and names one: only a default
    for the config; the manifest itself is checked where the features are read."""
    try:
        layer = json.loads(manifest.read_text()).get("layer")
    except (OSError, ValueError, AttributeError):
        return None
    return layer if isinstance(layer, str) and layer.strip() else None


def fingerprint(x: np.ndarray) -> str:
    """A short digest of held-out images: two evaluations are paired only if theirs agree."""
    x = np.ascontiguousarray(x)
    return hashlib.sha256(str(x.shape).encode() + x.tobytes()).hexdigest()[:16]


def _carve(arrays: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """Split in-memory arrays deterministically into (train, validation)."""
    n = len(arrays["x"])
    if n < 2:
        raise InvkerasError(f"features: {n} example(s); at least 2 are needed to carve a validation split")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    val, train = order[:n_val], order[n_val:]
    return {k: v[train] for k, v in arrays.items()}, {k: v[val] for k, v in arrays.items()}


def _feature_arrays(config: PairedDataConfig) -> tuple[dict, dict, dict | None, dict]:
    from invkeras.data.features import MANIFEST, extract_features, open_features, open_split_sets

    if config.features:
        path = Path(config.features)
        if path.is_dir() and (path / "train" / MANIFEST).exists():
            sets = open_split_sets(path)
            train = sets["train"].load_all(config.train_examples)
            if "validation" in sets:
                val = sets["validation"].load_all(config.eval_examples)
            else:
                train, val = _carve(train, 0.1, config.seed)
            test = sets["test"].load_all(config.eval_examples) if "test" in sets else None
            layer = sets["train"].layer
        else:
            everything = open_features(path).load_all()
            train, val = _carve(everything, 0.1, config.seed)
            test = None
            if config.train_examples:
                train = {k: v[: config.train_examples] for k, v in train.items()}
            layer = None
        source = {"features": str(path)}
        if layer:
            source["layer"] = layer
        return train, val, test, source

    extract = _extract_config(config, ["train", "validation", "test"])
    manifests = extract_features(extract)[config.layer]
    train = open_features(manifests["train"].parent).load_all(config.train_examples)
    val = open_features(manifests["validation"].parent).load_all(config.eval_examples)
    test = open_features(manifests["test"].parent).load_all(config.eval_examples)
    source = {"dataset": config.dataset, "classifier": str(extract.model_path()), "layer": config.layer}
    return train, val, test, source


def _extract_config(config: PairedDataConfig, splits: list[str]):
    from invkeras.data.features import ExtractConfig

    return ExtractConfig(dataset=config.dataset, data_dir=config.data_dir, arch=config.arch, model=config.model,
                         layers=[config.layer], splits=splits, seed=config.seed, workspace=config.workspace)


def _image_split(config: PairedDataConfig, split: str, limit: int | None) -> dict:
    from invkeras.data import load_arrays

    x, _ = load_arrays(config.dataset, split, data_dir=config.data_dir, seed=config.seed, limit=limit)
    return {"x": x}


def _image_arrays(config: PairedDataConfig) -> tuple[dict, dict, dict, dict]:
    return (_image_split(config, "train", config.train_examples),
            _image_split(config, "validation", config.eval_examples),
            _image_split(config, "test", config.eval_examples),
            {"dataset": config.dataset, "layer": UNCONDITIONAL})


def paired_arrays(config: PairedDataConfig) -> tuple[dict, dict, dict | None, dict]:
    """Train, validation and test arrays {"x", "h"} (test may be None), plus where they came from."""
    if config.conditional or config.features:
        # An unconditional model given --features uses those images (and ignores h), so it
        # can be compared with a conditional model on exactly the same data and order.
        train, val, test, source = _feature_arrays(config)
    else:
        train, val, test, source = _image_arrays(config)
    for name, arrays in (("train", train), ("validation", val)):
        if len(arrays["x"]) == 0:
            raise InvkerasError(f"layer '{config.layer}': the {name} split has no examples")
    if not config.conditional:
        train, val = {"x": train["x"]}, {"x": val["x"]}
        test = {"x": test["x"]} if test is not None else None
    return train, val, test, source


def _held_out_split(config: PairedDataConfig, split: str) -> dict | None:
    """One held-out split of `paired_arrays` (capped at eval_examples), read without the
    training split wherever the held-out split exists on its own: the train features of a
    conv layer of the full MNIST are over a gigabyte, for 8 or 500 held-out pairs. Only a
    validation split carved out of the user's own training features needs them."""
    from invkeras.data.features import MANIFEST, extract_features, open_features, open_split_sets

    if not (config.conditional or config.features):
        return _image_split(config, split, config.eval_examples)
    if config.features:
        path = Path(config.features)
        own = path / split / MANIFEST
        if not (path.is_dir() and (path / "train" / MANIFEST).exists() and own.exists()):
            _, val, test, _ = paired_arrays(config)
            return {"validation": val, "test": test}[split]
        arrays = open_split_sets(path)[split].load_all(config.eval_examples)
    else:
        manifest = extract_features(_extract_config(config, [split]))[config.layer][split]
        arrays = open_features(manifest.parent).load_all(config.eval_examples)
    return arrays if config.conditional else {"x": arrays["x"]}


class InMemoryPairs:
    """Pairs already in memory, read like a `FeatureSet`: `num_examples` and `iter_batches`."""

    def __init__(self, arrays: dict):
        self.arrays = arrays
        self.num_examples = len(arrays["x"])

    def iter_batches(self, batch_size: int):
        for start in range(0, self.num_examples, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.arrays.items()}


def training_pairs(config: PairedDataConfig):
    """The training pairs of given features (`config.features`), for a nearest-neighbour search:
    an extract directory's train split, streamed shard by shard, when its validation split
    stands on its own; else the pairs `paired_arrays` trains on once validation is carved out
    (so no carved held-out pair is among them)."""
    from invkeras.data.features import MANIFEST, open_split_sets

    if not config.features:
        raise ValueError("training_pairs reads given features; a classifier run's come from extract_features")
    path = Path(config.features)
    if path.is_dir() and all((path / split / MANIFEST).exists() for split in ("train", "validation")):
        return open_split_sets(path)["train"]
    train, _, _, _ = paired_arrays(config)
    return InMemoryPairs(train)


def held_out_splits(config: PairedDataConfig) -> tuple[str, ...]:
    """The held-out splits the data of `config` have, in HELD_OUT_SPLITS order (see the module
    docstring); found from the files' names, without reading them."""
    from invkeras.data.features import MANIFEST

    if not config.features:
        return HELD_OUT_SPLITS
    path = Path(config.features)
    if path.is_dir() and (path / "train" / MANIFEST).exists() and (path / "test" / MANIFEST).exists():
        return HELD_OUT_SPLITS
    return ("validation",)


def _missing_split(split: str, owner: str, available: tuple[str, ...]) -> InvkerasError:
    """The one line for a split that is not there: which splits are."""
    has = ", ".join(available) or "none"
    if split not in HELD_OUT_SPLITS:
        return InvkerasError(f"--split {split}: not a held-out split; {owner} has: {has}")
    return InvkerasError(f"--split {split}: {owner} has no held-out '{split}' split; it has: {has}")


def notice(message: str) -> None:
    """A note on stderr about a choice made for the user (results go to stdout and files)."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def choose_held_out_split(owners: dict[str, PairedDataConfig], split: str, *, given: bool, command: str) -> str:
    """The held-out split `command` evaluates `owners` ({how messages name it: its config}) on.

    `split` when every owner has it. When it was only the default (`given` False), the first
    split of HELD_OUT_SPLITS they all have, with a `notice` saying so. Otherwise one line
    naming the splits the first owner lacking `split` has."""
    available = {name: held_out_splits(config) for name, config in owners.items()}
    lacking = [name for name, splits in available.items() if split not in splits]
    if not lacking:
        return split
    common = tuple(s for s in HELD_OUT_SPLITS if all(s in splits for splits in available.values()))
    if not given and common:
        chosen = common[0]
        notice(f"{command}: {lacking[0]} has no held-out '{split}' split; using its '{chosen}' split")
        return chosen
    if split not in HELD_OUT_SPLITS and len(owners) > 1:
        raise InvkerasError(f"--split {split}: not a held-out split; the inverters all have: {', '.join(common) or 'none'}")
    raise _missing_split(split, lacking[0], available[lacking[0]])


def held_out_inputs(config: PairedDataConfig, split: str, num_inputs: int) -> dict:
    """`num_inputs` held-out (x, h) pairs of the data an inverter was trained on: a capped read
    of the split (the first `num_inputs` of its fixed shuffle; see `invkeras.data.registry`),
    the same pairs, in the same order, as `paired_arrays` reads with that cap."""
    if num_inputs < 1:
        raise InvkerasError("held-out inputs: the number of inputs must be >= 1")
    available = held_out_splits(config)
    if split not in available:
        raise _missing_split(split, "this inverter's data", available)
    limited = config.model_copy(update={"eval_examples": num_inputs})
    arrays = _held_out_split(limited, split)
    found = len(arrays["x"])
    if found < num_inputs:  # fewer exist than were asked for: the results say how many were used
        notice(f"{found:,} held-out {split} images exist (asked for {num_inputs:,}); using all of them")
    return {k: v[:num_inputs] for k, v in arrays.items()}
