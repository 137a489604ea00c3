"""What the factor INN works on: a vector r per image, where its rows come from, and the way back.

    CinnRepresentation     r = (h, v) of a cinn inverter: h the classifier layer's vector
                           features, v = t(E(x) | h) the residual. Together they are the whole
                           autoencoder latent (z = t^-1(v | h)), so r -> images exactly as
                           the cinn decodes: D(t^-1(v | h)). On the procedural dataset its rows
                           can be rendered: the `population` table holds r of all 6,912
                           renderings (h from the inverter's classifier), so factor pairs are
                           drawn from the exact data distribution.
    FeatureRepresentation  r = h of stored features (an extract directory or a user .npz); there
                           is no decoder, so r -> images is the image of the nearest stored
                           example in r's own space (squared L2), and its label.

A `Table` holds rows of r with their images and, where known, the factors (procedural images,
found exactly by `matching`) and class labels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invkeras.errors import InvkerasError

POPULATION = "population"  # every procedural rendering once (cinn on procedural data only)


@dataclass
class Table:
    r: np.ndarray  # float32 [n, dim]
    x: np.ndarray  # uint8 [n, H, W, C]
    factors: np.ndarray | None  # int64 [n, 5] for procedural images
    labels: np.ndarray | None  # int64 [n]

    def __len__(self) -> int:
        return len(self.r)

    def keys(self, pairs: str, what: str) -> np.ndarray:
        """The factor tuples (pairs 'factors') or labels (pairs 'labels') the pair sampler needs."""
        from invkeras.factors.pairs import FACTOR_PAIRS

        if pairs == FACTOR_PAIRS:
            if self.factors is None:
                raise InvkerasError(f"{what}: pairs 'factors' need images of the procedural dataset, whose factors are "
                                    "known; these are not (use --pairs labels)")
            return self.factors
        if self.labels is None:
            raise InvkerasError(f"{what}: pairs 'labels' need class labels, and these examples have none (a .npz "
                                "needs an array y)")
        return self.labels

    def subset(self, rows: np.ndarray) -> "Table":
        return Table(self.r[rows], self.x[rows], None if self.factors is None else self.factors[rows],
                     None if self.labels is None else self.labels[rows])


def _procedural_factors(x: np.ndarray) -> np.ndarray | None:
    """The exact factors when every image is a procedural rendering, else None."""
    from invkeras.data.procedural import IMAGE_SHAPE
    from invkeras.factors.matching import factors_of_renderings

    if tuple(x.shape[1:]) != IMAGE_SHAPE:
        return None
    try:
        return factors_of_renderings(x)
    except InvkerasError:
        return None


class Representation:
    """Base: the layer, the parts of r, its tables and the way from r back to images."""

    kind = ""
    label_source = ""  # what gives an edited representation its class label (score-factors)
    readout = ""

    def __init__(self, source: str, layer: str, parts: list[tuple[str, int]], dataset: str | None):
        self.source, self.layer, self.parts, self.dataset = str(source), layer, parts, dataset

    @property
    def dim(self) -> int:
        return sum(size for _, size in self.parts)

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "layer": self.layer, "dataset": self.dataset,
                "dim": self.dim, "parts": [{"name": n, "size": s} for n, s in self.parts], "readout": self.readout}

    def table(self, split: str, limit: int | None = None) -> Table:
        raise NotImplementedError

    def training_tables(self, pairs: str, limit: int | None = None) -> tuple[Table, Table]:
        """(training rows, validation rows) for pairs of this source."""
        return self.table("train", limit), self.table("validation")

    def scoring_table(self) -> Table:
        """The rows analyses draw their images from."""
        raise NotImplementedError

    def to_images(self, r: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 images [N, H, W, C], class labels [N] or None) for representations r [N, dim]."""
        raise NotImplementedError

    def labels_of(self, table: Table) -> np.ndarray | None:
        """The labels a read-back image is compared with: the table's own (stored) labels."""
        return table.labels

    def check(self, r: np.ndarray, what: str) -> np.ndarray:
        r = np.asarray(r, np.float32)
        if r.ndim != 2 or r.shape[1] != self.dim:
            raise InvkerasError(f"{what}: representations of shape {tuple(r.shape[1:])}, expected ({self.dim},)")
        return r


class CinnRepresentation(Representation):
    # Any inverter that offers a latent residual v (`to_residual`; today the cinn kind) will do.
    kind = "inverter"
    readout = "decoded: D(t^-1(v | h))"
    label_source = "classifier"

    def __init__(self, path: str | Path):
        from invkeras.inverters import load_inverter

        inverter = load_inverter(path)
        if not callable(getattr(inverter, "to_residual", None)):
            raise InvkerasError(f"--inverter {inverter.path.parent}: kind '{inverter.kind}' has no latent residual v; "
                                "the factor INN needs a cinn inverter (or --features)")
        if not inverter.conditional:
            raise InvkerasError(f"--inverter {inverter.path.parent}: unconditional (layer 'none'): there is no h; "
                                "use a cinn inverter of a layer")
        if inverter.h_shape is None or len(inverter.h_shape) != 1:
            raise InvkerasError(f"--inverter {inverter.path.parent}: layer '{inverter.layer}' has features of shape "
                                f"{inverter.h_shape}; the factor INN needs a vector h (e.g. fc3, logits)")
        self.inverter = inverter
        self.h_dim = int(inverter.h_shape[0])
        data = inverter.meta.get("data") or {}
        super().__init__(str(inverter.path.parent), inverter.layer, [("h", self.h_dim), ("v", inverter.latent_dim)],
                         data.get("dataset"))

    @functools.cached_property
    def _probe(self):
        from invkeras.analyses.common import ClassifierProbe

        classifier = self.inverter.classifier_path
        if not classifier or not Path(classifier).exists():
            return None
        return ClassifierProbe(classifier, self.inverter.layer)

    @functools.cached_property
    def _paired(self):
        from invkeras.inverters.data import paired_arrays

        return paired_arrays(self.inverter.config)

    @functools.cached_property
    def _encoder(self):
        """(x, h) -> r = (h, t(E(x) | h)), compiled (`predict_on_batch`)."""
        from keras import ops

        from invkeras.factors.network import Compiled

        flow, encoder = self.inverter.flow, self.inverter.model.encoder
        return Compiled(lambda inputs: ops.concatenate(
            [inputs[1], flow(encoder(inputs[0], training=False), inputs[1])[0]], axis=-1), [flow, encoder])

    def _rows(self, x: np.ndarray, h: np.ndarray, labels, factors=None) -> Table:
        if tuple(x.shape[1:]) != self.inverter.image_shape:
            raise InvkerasError(f"inverter {self.source}: images of shape {tuple(x.shape[1:])}, but its autoencoder "
                                f"takes {self.inverter.image_shape}")
        r = self._encoder.apply_batched((x, self.inverter.check_h(h, "train-factors")), 512)
        factors = _procedural_factors(x) if factors is None else factors
        return Table(r.astype(np.float32), x, factors, labels)

    def table(self, split: str, limit: int | None = None) -> Table:
        if split == POPULATION:
            return self._population
        train, val, test, _ = self._paired
        arrays = {"train": train, "validation": val, "test": test}.get(split)
        if arrays is None:
            raise InvkerasError(f"inverter {self.source}: no '{split}' split")
        arrays = {k: v[:limit] for k, v in arrays.items()} if limit else arrays
        return self._rows(arrays["x"], arrays["h"], arrays.get("y"))

    @functools.cached_property
    def _population(self) -> Table:
        from invkeras.data.procedural import _render_table, all_factor_combinations

        if self.dataset != "procedural" or self._probe is None:
            why = (f"was trained on dataset {self.dataset!r}" if self.dataset != "procedural"
                   else "has no classifier to compute h of the renderings with")
            raise InvkerasError(f"--inverter {self.source}: pairs 'factors' render procedural images, but this "
                                f"inverter {why} (use --pairs labels, or --features with procedural images)")
        x = np.array(_render_table())
        factors = all_factor_combinations()
        h = self._probe.features(x[:, None])[:, 0]
        return self._rows(x, h, factors[:, 0].copy(), factors)

    def training_tables(self, pairs: str, limit: int | None = None) -> tuple[Table, Table]:
        from invkeras.factors.pairs import FACTOR_PAIRS

        if pairs == FACTOR_PAIRS:  # rendered: both are the population, with pairs from other streams
            return self._population, self._population
        return super().training_tables(pairs, limit)

    def scoring_table(self) -> Table:
        if self.dataset == "procedural" and self._probe is not None:
            return self._population
        _, _, test, _ = self._paired
        return self.table("test" if test is not None else "validation")

    @functools.cached_property
    def _decoder(self):
        """r = (h, v) -> D(t^-1(v | h)), compiled (`predict_on_batch`)."""
        from invkeras.factors.network import Compiled

        flow, decoder, h_dim = self.inverter.flow, self.inverter.model.decoder, self.h_dim
        return Compiled(lambda r: decoder(flow.inverse(r[:, h_dim:], r[:, :h_dim]), training=False),
                        [flow, decoder])

    def to_images(self, r: np.ndarray, *, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
        from invkeras.reports.grids import to_uint8

        r = self.check(r, "decode")
        images = to_uint8(self._decoder.apply_batched(r, batch_size))
        labels = self._probe.labels(images[:, None])[:, 0] if self._probe is not None else None
        return images, labels

    def labels_of(self, table: Table) -> np.ndarray | None:
        """The classifier's labels of the table's own images (the reference a swap is judged by)."""
        if self._probe is None:
            return table.labels
        return self._probe.labels(table.x[:, None])[:, 0]


class FeatureRepresentation(Representation):
    kind = "features"
    label_source = "nearest stored example"
    readout = "nearest stored example in r (squared L2)"

    def __init__(self, path: str | Path, train_examples: int | None = None):
        from invkeras.inverters.data import PairedDataConfig, paired_arrays

        config = PairedDataConfig(features=str(path), train_examples=train_examples)
        train, val, test, source = paired_arrays(config)
        if train["h"].ndim != 2:
            raise InvkerasError(f"--features {path}: features of shape {tuple(train['h'].shape[1:])}; the factor INN "
                                "needs vector features")
        self.splits = {"train": train, "validation": val, "test": test}
        dataset = None
        manifest = Path(path) / "train"
        if manifest.is_dir():
            from invkeras.data.features import open_features

            dataset = open_features(manifest).dataset
        super().__init__(str(path), config.layer, [("h", int(train["h"].shape[1]))], dataset)

    @functools.lru_cache(maxsize=4)
    def table(self, split: str, limit: int | None = None) -> Table:
        arrays = self.splits.get(split)
        if arrays is None:
            raise InvkerasError(f"--features {self.source}: no '{split}' split")
        arrays = {k: v[:limit] for k, v in arrays.items()} if limit else arrays
        return Table(arrays["h"].astype(np.float32), arrays["x"], _procedural_factors(arrays["x"]), arrays.get("y"))

    @functools.cached_property
    def _reference(self) -> Table:
        """Every stored example (train, validation, test): the images r is read back to."""
        tables = [self.table(s) for s in ("train", "validation", "test") if self.splits.get(s) is not None]
        factors = None if any(t.factors is None for t in tables) else np.concatenate([t.factors for t in tables])
        labels = None if any(t.labels is None for t in tables) else np.concatenate([t.labels for t in tables])
        return Table(np.concatenate([t.r for t in tables]), np.concatenate([t.x for t in tables]), factors, labels)

    def scoring_table(self) -> Table:
        return self._reference

    def nearest(self, r: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        reference = self._reference.r.astype(np.float32)
        squared = np.sum(np.square(reference), axis=1)
        rows = np.empty(len(r), np.int64)
        for start in range(0, len(r), batch_size):
            chunk = r[start : start + batch_size]
            rows[start : start + len(chunk)] = np.argmin(squared[None, :] - 2.0 * chunk @ reference.T, axis=1)
        return rows

    def to_images(self, r: np.ndarray, *, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
        rows = self.nearest(self.check(r, "read back"), batch_size)
        reference = self._reference
        return reference.x[rows], None if reference.labels is None else reference.labels[rows]


def _stamp(path: str) -> tuple:
    """What identifies a source on disk: its resolved path and the modification times of its files."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                 and "factor_inn" not in p.parts)[:64]
    return (str(path), tuple(p.stat().st_mtime_ns for p in files))


@functools.lru_cache(maxsize=4)
def _open(kind: str, source: str, train_examples: int | None, stamp: tuple) -> Representation:
    if kind == "inverter":
        return CinnRepresentation(source)
    return FeatureRepresentation(source, train_examples)


def open_representation(*, inverter: str | None = None, features: str | None = None,
                        train_examples: int | None = None) -> Representation:
    """The representation a factor INN works on: a cinn inverter's (h, v), or stored vector features.

    Opened once per process and source (its tables, e.g. all 6,912 renderings, are computed once):
    training, editing and scoring the models of one inverter share it, until its files change."""
    if (inverter is None) == (features is None):
        raise InvkerasError("train-factors: give exactly one of --inverter (a cinn inverter) or --features")
    kind, source = ("inverter", inverter) if inverter is not None else ("features", features)
    if not Path(source).exists():
        raise InvkerasError(f"--{kind} {source}: not found")
    return _open(kind, str(source), train_examples if kind == "features" else None, _stamp(source))
