"""Drawing inversions for held-out inputs: K samples of p(x | h(x)) for each of N images.

Works for every inverter kind through the interface (`Inverter.sample`). Outputs, in the
inverter's directory unless `out` says otherwise:
  samples.png   one row per input: the original, then its K samples; for a kind that can
                reconstruct the input from its own latent (`autoencoder_reconstruction`, e.g.
                cinn's D(E(x))), the original, that reconstruction, then the K samples
  samples.npz   x [N,H,W,C] originals, h [N,...] their features, samples [N,K,H,W,C],
                reconstruction [N,H,W,C] uint8 when the kind offers one,
                and, when the classifier is known, samples_h [N,K,...] the samples'
                features re-extracted through the same layer
  samples_reconstruction.png   (`save_samples_with_reconstruction`) original | the point
                estimate of a kind that can `reconstruct` | K samples, as in Nash et al.
                (2019) Figs. 1 and 4
Each with a `.meta.json` saying how it was made (inverter and its kind, split, seed, K, N).
An unconditional inverter (layer 'none') has no inputs: it draws K samples of p(x).

The inputs come from the `split` asked for; when that is only the default (test) and the
inverter's data have no test split (a user's features .npz), from the held-out split they
have, with a note saying so (`invkeras.inverters.data.choose_held_out_split`).

With `misclassified` (`sample --misclassified`, Teterwak et al. 2021), the N inputs are the
first held-out images the classifier gets wrong (among the first MISCLASSIFIED_SEARCH of
the split), and the files are named samples_misclassified.png / .npz (and
samples_reconstruction_misclassified.png): what do the features of a mistake decode to?
The .npz adds y (true labels), predicted, index (in the split) and samples_labels; the
metadata gives the share of samples labelled with the predicted and with the true class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from invkeras import artifacts
from invkeras.errors import InvkerasError

SAMPLES_GRID = "samples.png"
SAMPLES_ARRAYS = "samples.npz"
RECONSTRUCTION_GRID = "samples_reconstruction.png"
MISCLASSIFIED_SUFFIX = "_misclassified"
MISCLASSIFIED_SEARCH = 10_000  # held-out images searched for mistakes


def output_name(name: str, misclassified: bool = False) -> str:
    """samples.png -> samples_misclassified.png when the inputs are the classifier's mistakes."""
    if not misclassified:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}{MISCLASSIFIED_SUFFIX}{dot}{suffix}"


class SampleConfig(BaseModel):
    """Settings of `invkeras sample` (and of the reconstruction grid, which shows the same samples)."""

    model_config = ConfigDict(extra="forbid")

    inverter: str = Field(description="inverter directory or model file")
    num_inputs: int = Field(8, gt=0, description="held-out inputs N (rows of the grid)")
    num_samples: int = Field(8, gt=0, description="samples K per input")
    split: str = Field("test", description="validation | test")
    seed: int = Field(0, description="same seed, same samples")
    batch_size: int = Field(64, gt=0, description="images sampled in parallel")
    method: Optional[str] = Field(None, description="a kind's sampling option (pixelcnn: pixel | cached | full); "
                                                    "passed to the kind only when set")
    temperature: Optional[float] = Field(None, gt=0, description="a kind's sampling temperature (pixelcnn, cinn; "
                                         "below 1 a sharpened model, 1 the model); passed only when set")
    out: Optional[str] = Field(None, description="output directory (default: the inverter's)")
    misclassified: bool = Field(False, description="inputs: held-out images the classifier gets wrong (written to "
                                                   "samples_misclassified.png / .npz)")

    def sample_options(self) -> dict:
        """The kind options given: only those set, so a kind without them is not refused."""
        options = {"method": self.method, "temperature": self.temperature}
        return {name: value for name, value in options.items() if value is not None}

    def output_name(self, name: str) -> str:
        return output_name(name, self.misclassified)


@dataclass
class Inversions:
    originals: np.ndarray | None
    h: np.ndarray | None
    samples: np.ndarray
    samples_h: np.ndarray | None
    grid_path: Path
    arrays_path: Path
    seconds: float
    kind: str = ""
    layer: str = ""
    selection: dict | None = None  # misclassified inputs: labels, predictions, how many were searched
    split: str | None = None  # the held-out split the inputs came from (None: no inputs)

    @property
    def mean_l1_to_original(self) -> float | None:
        """Mean L1 distance between h(sample) and h(x) in the layer's space (the paper's IM-S)."""
        if self.samples_h is None or self.h is None:
            return None
        diff = np.abs(self.samples_h - self.h[:, None])
        return float(diff.reshape(*diff.shape[:2], -1).sum(-1).mean())


def _load(inverter, flag: str = "--inverter"):
    from invkeras.inverters import Inverter, load_inverter

    return inverter if isinstance(inverter, Inverter) else load_inverter(inverter, flag=flag)


def _provenance_config(config: SampleConfig, inverter) -> dict:
    """The config as recorded: the inverter resolved to its model file."""
    return {**config.model_dump(exclude={"seed"}), "inverter": str(inverter.path)}


def misclassified_inputs(inverter, split: str, num_inputs: int, *, command: str = "sample --misclassified",
                         search: int = MISCLASSIFIED_SEARCH) -> tuple[dict, dict]:
    """The first `num_inputs` held-out (x, h, y) pairs the inverter's classifier gets wrong, plus
    {"searched", "found", "predicted", "index"}; one line when there are no labels or no mistakes."""
    from invkeras.analyses.common import ClassifierProbe, classifier_of
    from invkeras.inverters.data import held_out_inputs

    where = f"{command}: inverter {inverter.path.parent}"
    if not inverter.conditional:
        raise InvkerasError(f"{where} is unconditional (layer 'none'): it has no inputs to choose")
    probe = ClassifierProbe(classifier_of(inverter, command), inverter.layer)
    pool = held_out_inputs(inverter.config, split, search)
    if "y" not in pool:
        raise InvkerasError(f"{where}: its held-out {split} features carry no labels y, so mistakes cannot be found")
    predicted = probe.labels(pool["x"][:, None])
    if predicted is None:
        raise InvkerasError(f"{where}: the classifier does not end in a vector of class scores")
    predicted = predicted[:, 0]
    wrong = np.flatnonzero(predicted != pool["y"])
    searched = len(pool["x"])
    if len(wrong) == 0:
        raise InvkerasError(f"{where}: the classifier labels all {searched} searched {split} images correctly; "
                            "there is no mistake to show")
    chosen = wrong[:num_inputs]
    inputs = {k: v[chosen] for k, v in pool.items()}
    selection = {"searched": searched, "misclassified": len(wrong), "found": len(chosen), "y": pool["y"][chosen],
                 "predicted": predicted[chosen], "index": chosen}
    return inputs, selection


def with_held_out_split(config: SampleConfig, inverter, command: str) -> SampleConfig:
    """`config` with the split its inputs really come from (see the module docstring)."""
    from invkeras.inverters.data import choose_held_out_split

    split = choose_held_out_split({f"inverter {inverter.path.parent}": inverter.config}, config.split,
                                  given="split" in config.model_fields_set, command=command)
    return config if split == config.split else config.model_copy(update={"split": split})


def _inputs(config: SampleConfig, inverter) -> tuple[dict, dict | None]:
    """The held-out inputs a sample command shows: the first N, or the first N mistakes."""
    from invkeras.inverters.data import held_out_inputs

    if config.misclassified:
        return misclassified_inputs(inverter, config.split, config.num_inputs)
    return held_out_inputs(inverter.config, config.split, config.num_inputs), None


def _draw(inverter, config: SampleConfig, h: np.ndarray | None) -> np.ndarray:
    return inverter.sample(h, config.num_samples, seed=config.seed, batch_size=config.batch_size,
                           **config.sample_options())


def draw_inversions(config: SampleConfig, *, inverter=None) -> Inversions:
    """K samples for each of N held-out inputs (or K samples of p(x) for layer 'none'), any kind.

    `inverter` may pass the already loaded inverter of `config.inverter`.
    """
    from invkeras.analyses.common import ClassifierProbe
    from invkeras.reports.grids import originals_and_samples, save_grid

    started = time.time()
    inverter = _load(inverter if inverter is not None else config.inverter)
    out_dir = Path(config.out) if config.out else inverter.path.parent

    originals = h = samples_h = selection = None
    arrays = {}
    if not inverter.conditional and not config.misclassified:
        samples = _draw(inverter, config, None)
    else:
        config = with_held_out_split(config, inverter, "sample")
        inputs, selection = _inputs(config, inverter)
        originals, h = inputs["x"], inputs["h"]
        samples = _draw(inverter, config, h)
        classifier = inverter.classifier_path
        if classifier and Path(classifier).exists():
            samples_h, samples_labels = ClassifierProbe(classifier, inverter.layer)(samples)
            if selection is not None and samples_labels is not None:
                y, predicted = selection["y"], selection["predicted"]
                selection.update(share_samples_predicted_label=float((samples_labels == predicted[:, None]).mean()),
                                 share_samples_true_label=float((samples_labels == y[:, None]).mean()))
                arrays.update(y=y, predicted=predicted, index=selection["index"], samples_labels=samples_labels)

    # A kind with a latent of the input's own (an autoencoder's D(E(x))) adds it beside the input.
    reconstruction = (None if originals is None else
                      inverter.autoencoder_reconstruction(originals, batch_size=config.batch_size))
    if reconstruction is not None:
        from invkeras.reports.grids import to_uint8

        reconstruction = to_uint8(reconstruction)
        rows, separator = grid_rows_with_reconstruction(originals, reconstruction, samples), 2
        arrays["reconstruction"] = reconstruction
    else:
        rows, separator = originals_and_samples(originals, samples), None if originals is None else 1
    grid_path = save_grid(out_dir / config.output_name(SAMPLES_GRID), rows, separator_after=separator)
    arrays["samples"] = samples
    if originals is not None:
        arrays.update(x=originals, h=h)
    if samples_h is not None:
        arrays["samples_h"] = samples_h.astype(np.float32)
    arrays_path = artifacts.save_npz_atomic(out_dir / config.output_name(SAMPLES_ARRAYS), **arrays)
    result = Inversions(originals, h, samples, samples_h, grid_path, arrays_path, time.time() - started,
                        inverter.kind, inverter.layer, selection, None if originals is None else config.split)
    provenance = dict(
        kind="inversion-samples",
        config=_provenance_config(config, inverter),
        seed=config.seed,
        data=inverter.meta.get("data"),
        results={"seconds": result.seconds, "mean_l1_h_sample_to_h_x": result.mean_l1_to_original,
                 **({"misclassified": selection} if selection is not None else {})},
        layer=inverter.layer,
        inverter_kind=inverter.kind,
        columns=([] if originals is None else ["input"])
        + (["reconstruction of the input's own latent"] if reconstruction is not None else [])
        + [f"sample {k + 1}" for k in range(samples.shape[1])],
    )
    artifacts.write_metadata(grid_path, **provenance)
    artifacts.write_metadata(arrays_path, **provenance)
    return result


# --- samples beside a point estimate ------------------------------------------------------


def grid_rows_with_reconstruction(originals: np.ndarray, reconstructions: np.ndarray,
                                  samples: np.ndarray) -> list[list[np.ndarray]]:
    """Rows as in the paper's Figs. 1 and 4: [original, reconstruction, sample_1..K] per input."""
    if not (len(originals) == len(reconstructions) == len(samples)):
        raise ValueError(f"{len(originals)} originals, {len(reconstructions)} reconstructions, {len(samples)} sample sets")
    from invkeras.reports.grids import to_uint8

    recon = to_uint8(reconstructions)
    return [[originals[i], recon[i], *samples[i]] for i in range(len(originals))]


@dataclass
class ReconstructionGrid:
    grid_path: Path
    mse_per_pixel: float  # the reconstructions' mean squared error per pixel on these inputs (0..255 units)
    seconds: float
    reused_samples: bool = False  # the samples came from a samples.npz drawn with the same settings


def _drawn_samples(path: Path, config: dict, seed: int, originals: np.ndarray) -> np.ndarray | None:
    """The samples of `draw_inversions` at `path` if they were drawn exactly as asked, else None."""
    if not artifacts.is_complete(path):
        return None
    meta = artifacts.read_metadata(path) or {}
    recorded = dict(meta.get("config") or {})
    recorded.pop("out", None)
    recorded.setdefault("misclassified", False)  # samples drawn before the option existed
    if meta.get("kind") != "inversion-samples" or recorded != config or meta.get("seed") != seed:
        return None
    with np.load(path) as arrays:
        if "x" not in arrays.files or not np.array_equal(arrays["x"], originals):
            return None
        return arrays["samples"]


def save_samples_with_reconstruction(config: SampleConfig, reconstructor, *, inverter=None,
                                     reuse_samples: bool = True) -> ReconstructionGrid:
    """Write samples_reconstruction.png: original | x_hat(h(x)) | K samples of p(x|h(x)), one row per input.

    `config.inverter` draws the samples (any kind); `reconstructor` (a path or a loaded
    inverter) is any inverter with the `reconstruct` capability, of the same layer's h (an
    MSE decoder today). With `reuse_samples`, the samples of a complete samples.npz beside
    the grid, drawn with the same inverter, inputs, count, seed and options, are shown
    instead of being drawn again: they are exactly what this call would draw. The two must
    share their data, as `compare`'s inverters must (`common.check_same_data`).
    """
    from invkeras.analyses.common import check_same_data
    from invkeras.reports.grids import save_grid

    started = time.time()
    inverter = _load(inverter if inverter is not None else config.inverter)
    reconstructor = _load(reconstructor, flag="--reconstructor")
    reconstructor.require("reconstruct", "sample-grid")
    if not inverter.conditional:
        raise InvkerasError(f"sample-grid: inverter {inverter.path.parent} is unconditional (layer 'none'); "
                            "there is no h to reconstruct from")
    if reconstructor.layer != inverter.layer or reconstructor.h_shape != inverter.h_shape:
        raise InvkerasError(f"sample-grid: reconstructor {reconstructor.path.parent} decodes h of shape "
                            f"{reconstructor.h_shape} (layer '{reconstructor.layer}'), but inverter "
                            f"{inverter.path.parent} has {inverter.h_shape} (layer '{inverter.layer}')")
    config = with_held_out_split(config, inverter, "sample-grid")
    check_same_data([inverter, reconstructor], command="sample-grid", split=config.split, count=config.num_inputs)
    inputs, _ = _inputs(config, inverter)
    out_dir = Path(config.out) if config.out else inverter.path.parent
    recorded = _provenance_config(config, inverter)
    wanted = {k: v for k, v in recorded.items() if k != "out"}
    samples = (_drawn_samples(out_dir / config.output_name(SAMPLES_ARRAYS), wanted, config.seed, inputs["x"])
               if reuse_samples else None)
    reused = samples is not None
    if samples is None:
        samples = _draw(inverter, config, inputs["h"])
    recon = reconstructor.reconstruct(inputs["h"])
    grid_path = save_grid(out_dir / config.output_name(RECONSTRUCTION_GRID),
                          grid_rows_with_reconstruction(inputs["x"], recon, samples), separator_after=2)
    diff = np.asarray(recon, np.float64) - np.asarray(inputs["x"], np.float64)
    mse = float((diff**2).mean())
    result = ReconstructionGrid(grid_path, mse, time.time() - started, reused)
    artifacts.write_metadata(
        grid_path,
        kind="inversion-samples-with-reconstruction",
        config={**recorded, "reconstructor": str(reconstructor.path)},
        seed=config.seed,
        data=inverter.meta.get("data"),
        results={"seconds": result.seconds, "reconstruction_mse_per_pixel": mse, "reused_samples": reused},
        layer=inverter.layer,
        inverter_kind=inverter.kind,
        reconstruction_kind=reconstructor.kind,
        columns=["original", f"{reconstructor.kind} reconstruction",
                 *[f"sample {k + 1}" for k in range(config.num_samples)]],
    )
    return result
