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

Distances are L1 norms, summed over every feature (and every position, for a spatial h);
the JSON also gives them per feature dimension. The nearest-neighbour search is exact and
streams the extracted training split shard by shard, keeping a running top-k, so memory is
bounded by one chunk of training features, whatever the split's size.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError

METHODS = ("1NN", "IM-S", "IM-NN")
MSE_METHOD = "MSE decoder"
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


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean over images: sample standard deviation (ddof=1) / sqrt(n)."""
    values = np.asarray(values, np.float64)
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def distance_table(per_image: dict[str, np.ndarray], feature_dims: int) -> list[dict]:
    """One row per method: n, mean L1 with its standard error, and the mean per feature dimension."""
    rows = []
    for method, values in per_image.items():
        mean = float(np.mean(values))
        se = standard_error(values)
        rows.append({"method": method, "n": len(values), "mean_l1": mean, "se": se,
                     "mean_l1_per_dim": mean / feature_dims, "se_per_dim": se / feature_dims})
    return rows


def table_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- the pipeline -------------------------------------------------------------------


@dataclass
class CompareResult:
    layer: str
    split: str
    rows: list[dict]
    per_image: dict[str, np.ndarray]
    json_path: Path
    csv_path: Path
    arrays_path: Path
    grid_path: Path | None
    seconds: float


def training_features(meta: dict):
    """The extracted training split at the inverter's layer (extracted now if not cached yet)."""
    from invkeras.data.features import ExtractConfig, extract_features, open_features
    from invkeras.train_inverter import InverterConfig

    config = InverterConfig(**meta["config"])
    extract = ExtractConfig(dataset=config.dataset, data_dir=config.data_dir, arch=config.arch, model=config.model,
                            layers=[config.layer], splits=["train"], seed=config.seed, workspace=config.workspace)
    manifest = extract_features(extract, progress=False)[config.layer]["train"]
    return open_features(manifest.parent)


def _limited(batches: Iterator[dict], limit: int | None) -> Iterator[dict]:
    """At most `limit` examples from a stream of batches."""
    seen = 0
    for batch in batches:
        if limit is not None and seen + len(batch["h"]) > limit:
            batch = {k: v[: limit - seen] for k, v in batch.items()}
        if len(batch["h"]):
            yield batch
        seen += len(batch["h"])
        if limit is not None and seen >= limit:
            return


def _with_progress(batches: Iterator[dict], bar, task) -> Iterator[np.ndarray]:
    for batch in batches:
        yield batch["h"]
        bar.advance(task, len(batch["h"]))


def _array_name(method: str) -> str:
    """'IM-NN' -> 'distance_IM_NN': a key that is also a safe file name inside the .npz."""
    return "distance_" + "".join(c if c.isalnum() else "_" for c in method)


def topk_rows(originals: np.ndarray, top_samples: np.ndarray, top_neighbours: np.ndarray) -> list[list[np.ndarray]]:
    """Fig. 2 rows: original | top-k samples | (blank) | top-k training neighbours."""
    blank = np.full(originals.shape[1:], 255, np.uint8)  # the grid's white background: reads as a gap
    return [[originals[i], *top_samples[i], blank, *top_neighbours[i]] for i in range(len(originals))]


def compare_representations(
    inverter: str | Path,
    *,
    num_images: int = 500,
    num_samples: int = 10,
    split: str = "test",
    seed: int = 0,
    top_k: int = 8,
    grid_samples: int = 64,
    grid_inputs: int = 4,
    batch_size: int = 64,
    method: str = "cached",
    chunk_size: int = 2048,
    max_train_examples: int | None = None,
    decoder: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> CompareResult:
    """Table 1 and Fig. 2 of Nash et al. (2019) for one inverter; writes JSON, CSV, NPZ and PNG.

    `num_images` held-out inputs; `num_samples` = K samples each for IM-S/IM-NN; the grid
    shows `grid_inputs` inputs with the top `top_k` of `grid_samples` samples and of all
    training images. `decoder` (an MSE decoder of the same layer) adds a row for its
    reconstruction. `max_train_examples` caps the 1NN search (default: the whole split).
    """
    from invkeras.reports.grids import save_grid
    from invkeras.analyses.samples import held_out_inputs, reextract
    from invkeras.progress import progress_bar
    from invkeras.inverters.pixelcnn.sampling import sample
    from invkeras.train_inverter import load_inverter

    if min(num_images, num_samples, top_k, grid_samples, chunk_size) < 1 or grid_inputs < 0:
        raise InvkerasError("compare: --num-images, --num-samples, --top-k, --grid-samples must be >= 1")
    started = time.time()
    model, net_config, meta = load_inverter(inverter)
    model_file = Path(inverter) / "inverter.keras" if Path(inverter).is_dir() else Path(inverter)
    layer = meta.get("layer")
    if net_config.conditioning == "none":
        raise InvkerasError(f"--inverter {inverter}: unconditional (layer 'none'); there is no representation to compare in")
    classifier = (meta.get("data") or {}).get("classifier")
    if not classifier:
        raise InvkerasError(f"--inverter {inverter}: trained on user features (--features), so there is no classifier "
                            "to re-extract the samples' features with; compare needs a classifier run and layer")
    if not Path(classifier).exists():
        raise InvkerasError(f"--inverter {inverter}: its classifier {classifier} no longer exists")

    inputs = held_out_inputs(meta, split, num_images)
    x, h = inputs["x"], inputs["h"].astype(np.float32)
    feature_dims = int(np.prod(h.shape[1:]))
    train_set = training_features(meta)
    k_neighbours = max(1, top_k)

    with progress_bar(disable=not progress) as bar:
        total = train_set.num_examples if max_train_examples is None else min(max_train_examples, train_set.num_examples)
        task = bar.add_task(f"1NN over {total} training images", total=total)
        batches = _limited(train_set.iter_batches(chunk_size), max_train_examples)
        nn_d, nn_i = nearest_neighbours(h, _with_progress(batches, bar, task), k=k_neighbours)

    samples = sample(model, net_config, h, num_samples=num_samples, seed=seed, batch_size=batch_size, method=method)
    sample_d = l1_to_reference(h, reextract(classifier, layer, samples))
    per_image = per_image_distances(nn_d[:, 0], sample_d)
    if decoder is not None:
        from invkeras.decoders import reconstruct

        recon = reconstruct(decoder, h=h)
        per_image[MSE_METHOD] = l1_to_reference(h, reextract(classifier, layer, recon[:, None]))[:, 0]
    rows = distance_table(per_image, feature_dims)

    out_dir = Path(out) if out else model_file.parent
    grid_path = None
    if grid_inputs > 0:
        shown = min(grid_inputs, len(x))
        # Its own seed stream, so the grid's samples do not repeat the table's.
        many = sample(model, net_config, h[:shown], num_samples=grid_samples, seed=seed + 1, batch_size=batch_size,
                      method=method)
        many_d = l1_to_reference(h[:shown], reextract(classifier, layer, many))
        k = min(top_k, grid_samples)
        order = np.argsort(many_d, axis=1, kind="stable")[:, :k]
        top_samples = np.take_along_axis(many, order[:, :, None, None, None], axis=1)
        neighbours = gather_examples(_limited(train_set.iter_batches(chunk_size), max_train_examples),
                                     nn_i[:shown, :top_k])
        grid_path = save_grid(out_dir / "compare_topk.png", topk_rows(x[:shown], top_samples, neighbours))

    config = {"inverter": str(model_file), "num_images": num_images, "num_samples": num_samples, "split": split,
              "top_k": top_k, "grid_samples": grid_samples, "grid_inputs": grid_inputs, "batch_size": batch_size,
              "method": method, "chunk_size": chunk_size, "max_train_examples": max_train_examples,
              "decoder": str(decoder) if decoder else None}
    facts = {"layer": layer, "split": split, "n_images": len(x), "samples_per_image": num_samples,
             "training_examples_searched": int(total), "feature_dims": feature_dims, "distance": "L1 (sum over features)"}
    json_path = artifacts.write_json_atomic(out_dir / "compare.json", {**facts, "rows": rows})
    csv_path = artifacts.write_text_atomic(out_dir / "compare.csv", table_csv(rows))
    arrays_path = artifacts.save_npz_atomic(out_dir / "compare.npz", nn_index=nn_i, nn_distance=nn_d,
                                            sample_distance=sample_d.astype(np.float32),
                                            **{_array_name(m): v for m, v in per_image.items()})
    seconds = time.time() - started
    for path in (json_path, csv_path, arrays_path, grid_path):
        if path is not None:
            artifacts.write_metadata(path, kind="representation-comparison", config=config, seed=seed,
                                     data=meta.get("data"), results={"rows": rows, "seconds": seconds}, **facts)
    return CompareResult(layer, split, rows, per_image, json_path, csv_path, arrays_path, grid_path, seconds)
