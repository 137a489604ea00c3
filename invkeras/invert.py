"""Drawing inversions for held-out inputs: K samples of p(x | h(x)) for each of N images.

Outputs, in the inverter's directory unless `out` says otherwise:
  samples.png   one row per input: the original, then its K samples
  samples.npz   x [N,H,W,C] originals, h [N,...] their features, samples [N,K,H,W,C],
                and, when the classifier is known, samples_h [N,K,...] the samples'
                features re-extracted through the same layer
Each with a `.meta.json` saying how it was made (inverter, split, seed, K, N).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError


@dataclass
class Inversions:
    originals: np.ndarray | None
    h: np.ndarray | None
    samples: np.ndarray
    samples_h: np.ndarray | None
    grid_path: Path
    arrays_path: Path
    seconds: float

    @property
    def mean_l1_to_original(self) -> float | None:
        """Mean L1 distance between h(sample) and h(x) in the layer's space (the paper's IM-S)."""
        if self.samples_h is None or self.h is None:
            return None
        diff = np.abs(self.samples_h - self.h[:, None])
        return float(diff.reshape(*diff.shape[:2], -1).sum(-1).mean())


def held_out_inputs(inverter_meta: dict, split: str, num_inputs: int) -> dict:
    """The first `num_inputs` held-out (x, h) pairs of the data the inverter was trained for."""
    from invkeras.train_inverter import InverterConfig, inverter_arrays

    config = InverterConfig(**inverter_meta["config"]).model_copy(update={"eval_examples": num_inputs})
    _, val, test, _ = inverter_arrays(config)
    arrays = {"validation": val, "test": test}.get(split)
    if arrays is None:
        raise InvkerasError(f"--split {split}: no held-out '{split}' data for this inverter (choose validation or test)")
    return {k: v[:num_inputs] for k, v in arrays.items()}


def reextract(classifier_path: str, layer: str, samples: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Features of the samples at the same layer: [N, K, ...]."""
    from invkeras.classifiers import layer_output_model
    from invkeras.features import load_model

    extractor = layer_output_model(load_model(classifier_path), [layer])
    flat = samples.reshape(-1, *samples.shape[2:]).astype("float32")
    parts = [np.asarray(extractor(flat[i : i + batch_size], training=False)[layer]) for i in range(0, len(flat), batch_size)]
    return np.concatenate(parts).reshape(*samples.shape[:2], *parts[0].shape[1:])


def draw_inversions(
    inverter: str | Path,
    *,
    num_inputs: int = 8,
    num_samples: int = 8,
    split: str = "test",
    seed: int = 0,
    batch_size: int = 64,
    method: str = "cached",
    out: str | Path | None = None,
) -> Inversions:
    from invkeras.sampling import sample
    from invkeras.train_inverter import load_inverter

    if num_inputs < 1 or num_samples < 1:
        raise InvkerasError("sample: --num-inputs and --num-samples must be >= 1")
    started = time.time()
    model, net_config, meta = load_inverter(inverter)
    model_file = Path(inverter) / "inverter.keras" if Path(inverter).is_dir() else Path(inverter)
    out_dir = Path(out) if out else model_file.parent
    layer = meta.get("layer")

    originals = h = samples_h = None
    if net_config.conditioning == "none":
        samples = sample(model, net_config, None, num_samples=num_samples, seed=seed, batch_size=batch_size, method=method)
    else:
        inputs = held_out_inputs(meta, split, num_inputs)
        originals, h = inputs["x"], inputs["h"]
        samples = sample(model, net_config, h, num_samples=num_samples, seed=seed, batch_size=batch_size, method=method)
        classifier = (meta.get("data") or {}).get("classifier")
        if classifier and Path(classifier).exists():
            samples_h = reextract(classifier, layer, samples)

    from invkeras.grids import originals_and_samples, save_grid

    grid_path = save_grid(out_dir / "samples.png", originals_and_samples(originals, samples),
                          separator_after=None if originals is None else 1)
    arrays = {"samples": samples}
    if originals is not None:
        arrays.update(x=originals, h=h)
    if samples_h is not None:
        arrays["samples_h"] = samples_h.astype(np.float32)
    arrays_path = artifacts.save_npz_atomic(out_dir / "samples.npz", **arrays)
    result = Inversions(originals, h, samples, samples_h, grid_path, arrays_path, time.time() - started)
    provenance = dict(
        kind="inversion-samples",
        config={"inverter": str(model_file), "num_inputs": num_inputs, "num_samples": num_samples, "split": split,
                "batch_size": batch_size, "method": method},
        seed=seed,
        data=meta.get("data"),
        results={"seconds": result.seconds, "mean_l1_h_sample_to_h_x": result.mean_l1_to_original},
        layer=layer,
    )
    artifacts.write_metadata(grid_path, **provenance)
    artifacts.write_metadata(arrays_path, **provenance)
    return result
