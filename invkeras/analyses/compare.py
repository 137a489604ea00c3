"""How close do inversion-model samples come to the input, measured in the layer's own space?

Nash et al. (2019, Table 1 and Fig. 2) ask whether an inversion model's samples x' ~ p(x|h(x))
really are "the same" as x to the layer: if they are, h(x') should be close to h(x). They
report the mean L1 distance ||h(x) - h(x')||_1 for three choices of x':

  1NN    the nearest *training* image in representation space: what a model that only
         memorised the training set could offer at best;
  IM-S   one sample of the inversion model;
  IM-NN  the closest of K samples.

Samples whose features land closer to h(x) than the nearest training image show the model
generates new images the layer cannot tell from x, rather than retrieving old ones. Fig. 2
shows the same thing as pictures: for a few inputs, the top-k of K' samples next to the
top-k training neighbours, both ranked by L1 in representation space.

`compare_inverters` puts inverters of any kinds side by side on one layer: every one is
scored on the same held-out images, with K samples each, in the same table. Beside IM-S and
IM-NN each row has what tells the kinds apart:

  label agreement   the share of samples to which the classifier gives the input's label;
  diversity         the mean pairwise L1 distance between the K samples of one input, in
                    pixels and in the layer's space: 0 for a point estimate (an MSE decoder
                    "samples" its one reconstruction K times), which shows nothing of what
                    the layer is invariant to;
  NLL               the held-out -log p(x|h) in nats, for kinds with a pixel likelihood.

Inverters trained on given features (`train-inverter --features`) have no classifier to put
their samples through: their rows keep what needs none (the 1NN distance over the features'
own training pairs, pixel diversity and distance, NLL) and leave IM-S, IM-NN, label agreement
and the diversity in h empty, with a note saying why; their grids show the first top-k
samples, unranked. The held-out split is chosen as `sample` chooses it
(`invkeras.inverters.data.choose_held_out_split`).

Inverters of one kind and layer that differ only in their seed are one row: each seed is
scored on the same images, the row's statistics are those of the per-image values averaged
over the seeds, and "seed_intervals" adds, for each of them, the 95% interval that counts
the spread between training runs too (`invkeras.analyses.seeds`); the per-seed values are in
the .npz as <value>_<label>_seeds. With one seed per row the table is as it always was.
Several layers' comparisons are read together by `label_agreement_across_layers`, which
says what a gap in label agreement between layers of one chain means
(`invkeras.analyses.data_processing.label_gaps`).

Distances are L1 norms, summed over every feature (and every position, for a spatial h);
the JSON also gives them per feature dimension. The nearest-neighbour search is exact and
streams the extracted training split shard by shard, keeping a running top-k, so memory is
bounded by one chunk of training features, whatever the split's size.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.stats import mean_and_se, standard_error

METHODS = ("1NN", "IM-S", "IM-NN")
DISTANCE = "L1 (sum over features)"
DIVERSITY = ("mean pairwise L1 distance between the K samples of one input (over all K(K-1)/2 pairs), then "
             "averaged over inputs: diversity_pixel_l1 summed over pixels and channels (0..255 units), "
             "diversity_h_l1 summed over the layer's features; pixel_l1_to_input: mean L1 distance from a sample to its "
             "input, summed over pixels and channels (0..255 units), beside the diversity")
# Upper bound on the elements of one |query - train| difference block (float32: 16 MB).
BLOCK_ELEMENTS = 1 << 22


# --- exact nearest neighbours in representation space ---------------------------------


def l1_distances(queries: np.ndarray, candidates: np.ndarray, block_elements: int = BLOCK_ELEMENTS) -> np.ndarray:
    """All pairwise L1 distances [N, M] between rows of [N, D] and [M, D].

    The difference tensor is built a block of queries at a time, so at most about
    `block_elements` values (and never N x M x D) are in memory at once.
    """
    queries = queries.reshape(len(queries), -1)
    candidates = candidates.reshape(len(candidates), -1)
    per_query = max(1, candidates.shape[0] * candidates.shape[1])
    block = max(1, block_elements // per_query)
    out = np.empty((len(queries), len(candidates)), dtype=np.float32)
    for start in range(0, len(queries), block):
        diff = np.abs(queries[start : start + block, None, :] - candidates[None, :, :])
        out[start : start + block] = diff.sum(axis=-1)
    return out


def nearest_neighbours(
    queries: np.ndarray, candidate_batches: Iterable[np.ndarray], k: int = 1, block_elements: int = BLOCK_ELEMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest candidates (L1) of every query, streaming over candidate chunks.

    `candidate_batches` yields [m, ...] arrays; indices count across all of them in order.
    A running top-k is merged with each chunk by a stable sort in which the kept
    neighbours come first, so among equal distances the lowest index wins, exactly as a
    stable sort of the full N x M distance matrix would choose.
    Returns (distances [N, k'], indices [N, k']) with k' = min(k, total candidates).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
    best_d = np.empty((len(queries), 0), np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    offset = 0
    for batch in candidate_batches:
        batch = np.asarray(batch, np.float32).reshape(len(batch), -1)
        if batch.shape[1] != queries.shape[1]:
            raise InvkerasError(f"nearest neighbours: candidates have {batch.shape[1]} features, queries {queries.shape[1]}")
        d = l1_distances(queries, batch, block_elements)
        index = np.broadcast_to(np.arange(offset, offset + len(batch), dtype=np.int64), d.shape)
        all_d, all_i = np.concatenate([best_d, d], axis=1), np.concatenate([best_i, index], axis=1)
        order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(all_d, order, 1), np.take_along_axis(all_i, order, 1)
        offset += len(batch)
    if offset == 0:
        raise InvkerasError("nearest neighbours: the training split is empty")
    return best_d, best_i


def gather_examples(batches: Iterable[dict], indices: np.ndarray, key: str = "x") -> np.ndarray:
    """Rows `indices` (any shape) of array `key`, streaming over batches as `nearest_neighbours` counted them."""
    indices = np.asarray(indices, np.int64)
    flat = indices.ravel()
    found: dict[int, np.ndarray] = {}
    offset = 0
    for batch in batches:
        n = len(batch[key])
        for i in flat[(flat >= offset) & (flat < offset + n)]:
            found[int(i)] = batch[key][i - offset]
        offset += n
        if len(found) == len(set(flat.tolist())):
            break
    missing = sorted(set(flat.tolist()) - set(found))
    if missing:
        raise InvkerasError(f"gather: indices {missing[:5]} are past the end of the training split ({offset})")
    return np.stack([found[int(i)] for i in flat]).reshape(*indices.shape, *found[int(flat[0])].shape)


# --- distance table -----------------------------------------------------------------


def l1_to_reference(h: np.ndarray, samples_h: np.ndarray) -> np.ndarray:
    """||h_n - samples_h[n, k]||_1 for every input n and sample k: [N, K]."""
    diff = np.abs(np.asarray(samples_h, np.float64) - np.asarray(h, np.float64)[:, None])
    return diff.reshape(*diff.shape[:2], -1).sum(axis=-1)


def per_image_distances(nn_distance: np.ndarray, sample_distances: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image distances of the paper's three rows, from 1NN distances [N] and sample distances [N, K].

    IM-S takes the first sample (samples are i.i.d., so the first is a random one); IM-NN
    the closest of all K, hence IM-NN <= IM-S image by image.
    """
    sample_distances = np.asarray(sample_distances, np.float64)
    return {
        "1NN": np.asarray(nn_distance, np.float64),
        "IM-S": sample_distances[:, 0],
        "IM-NN": sample_distances.min(axis=1),
    }


def l1_summary(values: np.ndarray, feature_dims: int) -> dict:
    """Mean L1 over images with its standard error, also per feature dimension."""
    mean, se = float(np.mean(values)), standard_error(values)
    return {"mean_l1": mean, "se": se, "mean_l1_per_dim": mean / feature_dims, "se_per_dim": se / feature_dims}


def pairwise_l1(samples: np.ndarray) -> np.ndarray:
    """Mean L1 distance between the K samples of each input, over all pairs: [N] from [N, K, ...] (K >= 2)."""
    flat = np.asarray(samples, np.float64).reshape(samples.shape[0], samples.shape[1], -1)
    k = flat.shape[1]
    if k < 2:
        raise InvkerasError(f"sample diversity needs at least 2 samples per input, got {k}")
    total = np.zeros(len(flat))
    for i in range(k):
        for j in range(i + 1, k):
            total += np.abs(flat[:, i] - flat[:, j]).sum(axis=1)
    return total / (k * (k - 1) / 2)


def l1_to_inputs(samples: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Mean L1 distance from each input's K samples to the input itself: [N] from [N, K, ...] and [N, ...].

    Summed over pixels and channels like the diversity, so the two read together: samples as far
    from their input as from each other vary freely; far from it but close together, they agree
    on something other than the input."""
    flat = np.asarray(samples, np.float64).reshape(samples.shape[0], samples.shape[1], -1)
    reference = np.asarray(inputs, np.float64).reshape(len(inputs), 1, -1)
    return np.abs(flat - reference).sum(axis=2).mean(axis=1)


def label_agreement(input_labels: np.ndarray, sample_labels: np.ndarray) -> np.ndarray:
    """Per input, the share of its samples given the input's predicted label: [N] from [N] and [N, K]."""
    return (np.asarray(sample_labels) == np.asarray(input_labels).reshape(-1, 1)).mean(axis=1)


def _flatten(row: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key} "))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def table_csv(rows: list[dict]) -> str:
    """CSV of rows; nested statistics become columns like 'IM-S mean_l1', a null one empty cells."""
    from invkeras.analyses.mi import rows_csv

    return rows_csv([_flatten(row) for row in rows])




# --- the pipeline -------------------------------------------------------------------


class CompareConfig(BaseModel):
    """Settings of `invkeras compare` (and of the recipe step): inverters of one layer, side by side."""

    model_config = ConfigDict(extra="forbid")

    inverters: list[str] = Field(min_length=1, description="inverter directories or model files, of one layer")
    labels: Optional[list[str]] = Field(None, description="row names; default the kinds, numbered when repeated")
    num_images: int = Field(500, gt=0, description="held-out images N")
    num_samples: int = Field(10, gt=0, description="samples K per image (>= 2, for diversity)")
    split: str = Field("test", description="validation | test")
    seed: int = Field(0, description="same seed, same samples")
    top_k: int = Field(8, gt=0, description="samples and training neighbours shown per grid row")
    grid_samples: int = Field(64, gt=0, description="samples K' drawn per grid row, of which the top-k are shown")
    grid_inputs: int = Field(4, ge=0, description="grid rows (0: no grids)")
    batch_size: int = Field(64, gt=0, description="images sampled in parallel")
    chunk_size: int = Field(2048, gt=0, description="training features per nearest-neighbour chunk")
    max_train_examples: Optional[int] = Field(None, gt=0, description="search N training images only (a fixed sample)")
    out: Optional[str] = Field(None, description="output directory; default runs/<dataset>/<arch>/comparisons/<layer>")


@dataclass
class CompareResult:
    layer: str
    split: str
    rows: list[dict]  # one per inverter, as in compare.json
    nearest_training: dict
    per_image: dict[str, dict[str, np.ndarray]]  # label -> {"IM-S", "IM-NN", "label_agreement", ...}
    json_path: Path
    csv_path: Path
    arrays_path: Path
    grid_paths: dict[str, Path]  # label -> top-k grid
    seconds: float

    @property
    def grid_path(self) -> Path | None:
        """The first inverter's grid (None without grids)."""
        return next(iter(self.grid_paths.values()), None)


NO_CLASSIFIER = ("the inverters were trained on given features (--features), so there is no classifier to put "
                 "their samples through: IM-S, IM-NN, label agreement and diversity in h are not measured, and the "
                 "grids show samples unranked; 1NN searches the features' own training pairs")


def training_features(config):
    """The training pairs at an inverter config's layer: extracted now if not cached yet, or
    the given features' own (`invkeras.inverters.data.training_pairs`)."""
    from invkeras.data.features import ExtractConfig, extract_features, open_features
    from invkeras.inverters.data import training_pairs

    if config.features:
        return training_pairs(config)

    extract = ExtractConfig(dataset=config.dataset, data_dir=config.data_dir, arch=config.arch, model=config.model,
                            layers=[config.layer], splits=["train"], seed=config.seed, workspace=config.workspace)
    manifest = extract_features(extract, progress=False)[config.layer]["train"]
    return open_features(manifest.parent)


def _capped(batches: Iterator[dict], total: int, limit: int | None) -> Iterator[dict]:
    """The examples of a capped read (`capped_positions` of `total`) from a stream of batches,
    in the stream's order: a sample spread over the whole split, not its first `limit`."""
    from invkeras.data.registry import capped_batches, capped_positions

    return capped_batches(batches, capped_positions(total, limit))


def _with_progress(batches: Iterator[dict], bar, task) -> Iterator[np.ndarray]:
    for batch in batches:
        yield batch["h"]
        bar.advance(task, len(batch["h"]))


def _array_name(method: str) -> str:
    """'IM-NN' -> 'distance_IM_NN': a key that is also a safe file name inside the .npz."""
    return "distance_" + _safe(method, "_")


def _safe(text: str, fill: str = "-") -> str:
    """A label as part of a file or array name."""
    return re.sub(r"[^A-Za-z0-9_.-]+" if fill == "-" else r"[^A-Za-z0-9]", fill, text).strip(fill) or "inverter"


def topk_rows(originals: np.ndarray, top_samples: np.ndarray, top_neighbours: np.ndarray) -> list[list[np.ndarray]]:
    """Fig. 2 rows: original | top-k samples | (blank) | top-k training neighbours."""
    blank = np.full(originals.shape[1:], 255, np.uint8)  # the grid's white background: reads as a gap
    return [[originals[i], *top_samples[i], blank, *top_neighbours[i]] for i in range(len(originals))]


def default_labels(kinds: list[str]) -> list[str]:
    """The kind names, numbered from the second of a kind: pixelcnn, mse, pixelcnn-2, ..."""
    seen: dict[str, int] = {}
    labels = []
    for kind in kinds:
        seen[kind] = seen.get(kind, 0) + 1
        labels.append(kind if seen[kind] == 1 else f"{kind}-{seen[kind]}")
    return labels


def _data_key(config) -> str:
    """The settings that decide an inverter's held-out images (not how many of them)."""
    import json

    from invkeras.inverters.data import PairedDataConfig

    fields = set(PairedDataConfig.model_fields) - {"train_examples", "eval_examples"}
    return json.dumps(config.model_dump(include=fields), sort_keys=True, default=str)


def _checked_inverters(config: CompareConfig) -> tuple[list, list[str], Path | None, list[list[int]]]:
    """The inverters, the label of each row, their one classifier (None when all were trained on
    given features) and the inverters of each row (several where they differ only in seed); one
    line for anything that does not fit."""
    from invkeras.analyses.common import classifier_of, inverter_label
    from invkeras.analyses.mi import group_seeds
    from invkeras.inverters import load_inverter

    inverters = [load_inverter(path) for path in config.inverters]
    if config.labels is not None and len(config.labels) != len(inverters):
        raise InvkerasError(f"compare: need one distinct label per inverter ({len(inverters)}), got {config.labels}")
    groups = group_seeds(inverters, config.labels)
    if config.labels is not None:
        labels = [config.labels[group[0]] for group in groups]
        if len(set(labels)) != len(labels):
            raise InvkerasError(f"compare: need one distinct label per inverter ({len(inverters)}), got {config.labels}")
    else:
        labels = default_labels([inverters[group[0]].kind for group in groups])
    first = inverters[0]
    for inverter in inverters:
        if not inverter.conditional:
            raise InvkerasError(f"compare: inverter {inverter_label(inverter)} is unconditional (layer 'none'); "
                                "there is no representation to compare in")
    classifiers = [None if inverter.config.features else classifier_of(inverter, "compare") for inverter in inverters]
    for inverter, classifier in zip(inverters[1:], classifiers[1:]):
        if inverter.layer != first.layer:
            raise InvkerasError(f"compare: inverters of different layers: {inverter_label(first)} inverts layer "
                                f"'{first.layer}', {inverter_label(inverter)} layer '{inverter.layer}'; "
                                "compare inverters of one layer")
        if (classifier is None) != (classifiers[0] is None) or (
                classifier is not None and not _same_file(classifier, classifiers[0])):
            def inverts(path):
                return f"inverts {path}" if path is not None else "was trained on given features (no classifier)"

            raise InvkerasError(f"compare: inverters of different classifiers: {inverter_label(first)} "
                                f"{inverts(classifiers[0])}, {inverter_label(inverter)} {inverts(classifier)}")
    return inverters, labels, classifiers[0], groups


def _same_file(a: Path, b: Path) -> bool:
    """One classifier: the same path, or a byte-identical copy (a workspace copied elsewhere)."""
    import filecmp

    a, b = Path(a), Path(b)
    return a.resolve() == b.resolve() or (a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False))


def _held_out(inverters: list, split: str, num_images: int) -> dict:
    """The first inverter's held-out images, after checking that every other one's are the same."""
    from invkeras.analyses.common import inverter_label
    from invkeras.inverters import data

    by_key: dict[str, dict] = {}
    first = None
    for inverter in inverters:
        key = _data_key(inverter.config)
        if key not in by_key:
            by_key[key] = data.held_out_inputs(inverter.config, split, num_images)
        inputs = by_key[key]
        if first is None:
            first, first_print = (inverter, inputs), data.fingerprint(inputs["x"])
            continue
        found = data.fingerprint(inputs["x"])
        if found != first_print:
            raise InvkerasError(f"compare: inverters {inverter_label(first[0])} and {inverter_label(inverter)} have "
                                f"different held-out {split} images (fingerprints {first_print} and {found}); "
                                "compare inverters trained on the same data")
    return first[1]


def compare_inverters(config: CompareConfig, *, progress: bool = True) -> CompareResult:
    """Table 1 and Fig. 2 of Nash et al. (2019) for several inverters of one layer, any kinds.

    All are scored on the same `num_images` held-out images (those of the first inverter's
    data, checked by fingerprint for the others), with K = `num_samples` samples each. Writes
    compare.json, .csv and .npz, and one top-k grid per inverter, compare_topk_<label>.png,
    showing `grid_inputs` inputs with the top `top_k` of `grid_samples` samples and of the
    training images. `max_train_examples` caps the 1NN search (default: the whole split) to a
    fixed sample of the split, as every capped read takes.
    """
    from invkeras.analyses.common import ClassifierProbe
    from invkeras.progress import progress_bar
    from invkeras.reports.grids import save_grid

    if config.num_samples < 2:
        raise InvkerasError(f"compare: --num-samples {config.num_samples}: sample diversity needs at least 2 samples "
                            "per image")
    from invkeras.analyses.common import inverter_label
    from invkeras.inverters.data import choose_held_out_split

    started = time.time()
    inverters, labels, classifier, groups = _checked_inverters(config)
    first = inverters[0]
    layer = first.layer
    split = choose_held_out_split({f"inverter {inverter_label(i)}": i.config for i in inverters}, config.split,
                                  given="split" in config.model_fields_set, command="compare")
    config = config if split == config.split else config.model_copy(update={"split": split})
    inputs = _held_out(inverters, config.split, config.num_images)
    x, h = inputs["x"], np.asarray(inputs["h"], np.float32)
    feature_dims = int(np.prod(h.shape[1:]))
    probe = ClassifierProbe(classifier, layer) if classifier is not None else None
    input_labels = probe.labels(x[:, None]) if probe is not None else None
    input_labels = None if input_labels is None else input_labels[:, 0]

    train_set = training_features(first.config)
    limit = config.max_train_examples
    with progress_bar(disable=not progress) as bar:
        total = train_set.num_examples if limit is None else min(limit, train_set.num_examples)
        task = bar.add_task(f"1NN over {total} training images", total=total)
        batches = _capped(train_set.iter_batches(config.chunk_size), train_set.num_examples, limit)
        nn_d, nn_i = nearest_neighbours(h, _with_progress(batches, bar, task), k=config.top_k)
    nearest = l1_summary(nn_d[:, 0], feature_dims)

    def sample(inverter, h_rows, count, seed):
        return inverter.sample(h_rows, count, seed=seed, batch_size=config.batch_size)

    def measure(inverter) -> dict[str, np.ndarray]:
        samples = sample(inverter, h, config.num_samples, config.seed)
        values = {"diversity_pixel_l1": pairwise_l1(samples), "pixel_l1_to_input": l1_to_inputs(samples, x)}
        if probe is not None:
            samples_h, sample_labels = probe(samples)
            sample_d = l1_to_reference(h, samples_h)
            distances = per_image_distances(nn_d[:, 0], sample_d)
            values.update({"IM-S": distances["IM-S"], "IM-NN": distances["IM-NN"], "sample_distance": sample_d,
                           "diversity_h_l1": pairwise_l1(samples_h)})
            if input_labels is not None and sample_labels is not None:
                values["label_agreement"] = label_agreement(input_labels, sample_labels)
        if inverter.has("pixel_log_prob"):
            values["nll_nats"] = -np.asarray(inverter.log_prob(x, h, batch_size=config.batch_size), np.float64)
        return values

    rows, per_image, arrays = [], {}, {"nn_index": nn_i, "nn_distance": nn_d, "distance_1NN": nn_d[:, 0]}
    row_inverters = [inverters[group[0]] for group in groups]
    for group, label in zip(groups, labels):
        inverter = inverters[group[0]]
        by_seed = [measure(inverters[i]) for i in group]
        values = by_seed[0] if len(by_seed) == 1 else {
            key: np.mean([seed[key] for seed in by_seed], axis=0) for key in by_seed[0]}
        per_image[label] = values

        def summary(key, summarise=mean_and_se):
            return summarise(values[key]) if key in values else None

        row = {
            "label": label, "kind": inverter.kind, "inverter": str(inverter.path),
            "IM-S": summary("IM-S", lambda v: l1_summary(v, feature_dims)),
            "IM-NN": summary("IM-NN", lambda v: l1_summary(v, feature_dims)),
            "label_agreement": summary("label_agreement"),
            "diversity_pixel_l1": summary("diversity_pixel_l1"),
            "diversity_h_l1": summary("diversity_h_l1"),
            "pixel_l1_to_input": summary("pixel_l1_to_input"),
            "nll_nats": summary("nll_nats"),
        }
        name = _safe(label, "_")
        arrays.update({f"{key}_{name}": np.asarray(value, np.float32) for key, value in values.items()})
        if len(group) > 1:
            row.update(seed_columns([inverters[i].config.run_seed for i in group], by_seed))
            arrays.update({f"{key}_{name}_seeds": np.stack([seed[key] for seed in by_seed]).astype(np.float32)
                           for key in SEEDED if key in values})
        rows.append(row)

    out_dir = Path(config.out) if config.out else _default_out(first)
    recorded = {**config.model_dump(), "inverters": [str(inverter.path) for inverter in inverters], "labels": labels}
    facts = {"layer": layer, "split": config.split, "n_images": len(x), "samples_per_image": config.num_samples,
             "feature_dims": feature_dims, "training_examples_searched": int(total), "distance": DISTANCE,
             **({"note": NO_CLASSIFIER} if probe is None else {})}
    grid_paths: dict[str, Path] = {}
    if config.grid_inputs > 0:
        shown = min(config.grid_inputs, len(x))
        k = min(config.top_k, config.grid_samples)
        neighbours = gather_examples(_capped(train_set.iter_batches(config.chunk_size), train_set.num_examples, limit),
                                     nn_i[:shown, : config.top_k])
        for inverter, label in zip(row_inverters, labels):
            # Its own seed stream, so the grid's samples do not repeat the table's.
            if probe is None:  # nothing to rank them by: the first k
                top_samples = sample(inverter, h[:shown], k, config.seed + 1)
            else:
                many = sample(inverter, h[:shown], config.grid_samples, config.seed + 1)
                many_d = l1_to_reference(h[:shown], probe.features(many))
                order = np.argsort(many_d, axis=1, kind="stable")[:, :k]
                top_samples = np.take_along_axis(many, order[:, :, None, None, None], axis=1)
            grid_paths[label] = save_grid(out_dir / f"compare_topk_{_safe(label)}.png",
                                          topk_rows(x[:shown], top_samples, neighbours))

    payload = {**facts, "nearest_training": nearest, "rows": rows, "diversity": DIVERSITY}
    json_path = artifacts.write_json_atomic(out_dir / "compare.json", payload)
    csv_path = artifacts.write_text_atomic(out_dir / "compare.csv",
                                           table_csv([{**row, "1NN": nearest} for row in rows]))
    arrays_path = artifacts.save_npz_atomic(out_dir / "compare.npz", **arrays)
    seconds = time.time() - started
    common = dict(kind="representation-comparison", seed=config.seed, data=first.meta.get("data"),
                  results={"rows": rows, "seconds": seconds}, **facts)
    for path in (json_path, csv_path, arrays_path):
        artifacts.write_metadata(path, config=recorded, **common)
    for inverter, label in zip(row_inverters, labels):
        if label in grid_paths:
            artifacts.write_metadata(grid_paths[label], config={**recorded, "inverter": str(inverter.path)},
                                     label=label, inverter_kind=inverter.kind, **common)
    return CompareResult(layer, config.split, rows, nearest, per_image, json_path, csv_path, arrays_path, grid_paths,
                         seconds)


# The per-image values whose seed intervals a row of several seeds has.
SEEDED = ("IM-S", "IM-NN", "label_agreement", "diversity_pixel_l1", "diversity_h_l1", "pixel_l1_to_input", "nll_nats")


def seed_columns(seed_numbers: list[int], by_seed: list[dict[str, np.ndarray]]) -> dict:
    """A row's seeds and, per value, the interval over seeds and images (`invkeras.analyses.seeds`)."""
    from invkeras.analyses import seeds

    intervals = {}
    for key in SEEDED:
        if key in by_seed[0]:
            combined = seeds.interval(np.stack([seed[key] for seed in by_seed]))
            intervals[key] = {"mean": combined.mean, "se": combined.se, "low": combined.low, "high": combined.high}
    return {"n_seeds": len(seed_numbers), "seeds": list(seed_numbers), "seed_intervals": intervals}


def label_agreement_across_layers(comparisons: dict[str, str | Path], order: list[str]) -> list[str]:
    """What the label agreement of each row label (kind) says across layers of one chain
    (`order`, shallow to deep), from each layer's compare.npz (`comparisons`: layer -> its
    folder): the sentences of `invkeras.analyses.data_processing.label_gaps`, per label."""
    from invkeras.analyses.data_processing import label_gaps

    per_layer = {}
    for layer, folder in comparisons.items():
        path = Path(folder) / "compare.npz"
        if path.exists():
            with np.load(path) as arrays:
                per_layer[layer] = {key: arrays[key] for key in arrays.files if key.startswith("label_agreement_")}
    sentences = []
    names = sorted({key.removeprefix("label_agreement_").removesuffix("_seeds")
                    for found in per_layer.values() for key in found})
    for name in names:
        agreement = {}
        for layer, found in per_layer.items():
            value = found.get(f"label_agreement_{name}_seeds", found.get(f"label_agreement_{name}"))
            if value is not None:
                agreement[layer] = value
        sentences += [f"{name}: {sentence}" for sentence in label_gaps(order, agreement)]
    return sentences


def label_agreement_in_chain(classifier: str | Path, comparisons: dict[str, str | Path]) -> tuple[list[str], list[str]] | None:
    """(the chain, shallow to deep; `label_agreement_across_layers` on it) for the comparisons
    of one classifier's layers (layer -> its folder), or None: fewer than two layers, no
    classifier at `classifier`, or layers that are not one chain of its graph."""
    from invkeras.analyses.data_processing import classifier_order

    if len(comparisons) < 2 or not Path(classifier).is_file():
        return None
    order = classifier_order(classifier, list(comparisons))
    if order is None:
        return None
    return order, label_agreement_across_layers(comparisons, order)


def _default_out(inverter) -> Path:
    """runs/<dataset>/<arch>/comparisons/<layer> of the inverter's run; its own directory for user features."""
    config = inverter.config
    if config.features:
        return inverter.path.parent
    return artifacts.comparison_dir(config.dataset, config.arch, inverter.layer, config.workspace)
