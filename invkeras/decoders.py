"""A point-estimate baseline: a decoder x_hat = f(h) trained with squared error.

Why it exists: Nash et al. (2019, Figs. 1 and 4) set their inversion-model samples beside
the reconstruction of a network trained to minimise mean squared error, in the style of
Dosovitskiy & Brox (2016). Where a layer has thrown information away, p(x|h) has several
modes; an MSE decoder must predict their *average*, so it draws a blur exactly where the
samples disagree. Showing both side by side is what makes "what the layer cannot tell
apart" visible.

The decoder is a plain up-sampling convolutional network on the same (x, h) pairs an
inverter trains on (`train_inverter.inverter_arrays`), with the same checkpoint-interval
loop: early stopping on validation MSE, `BackupAndRestore` so a killed run resumes, an
atomic `decoder.keras` with a `.meta.json` giving validation/test MSE per pixel (in 0..255
units) and the mean-image baseline it has to beat.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import keras
import numpy as np
from pydantic import Field

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.train_inverter import InverterResult, PairedDataConfig

DECODER_FILE = "decoder.keras"
DEFAULT_FILTERS = 32
# Fields whose change alters the optimisation trajectory: a backup made under different
# values would resume a different run, so it is discarded instead.
_TRAJECTORY_FIELDS = ("dataset", "data_dir", "arch", "layer", "model", "features", "seed", "batch_size",
                      "learning_rate", "steps_per_checkpoint", "train_examples", "filters")


# --- the network --------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="invkeras")
class PixelRange(keras.layers.Layer):
    """Clip to [0, 255] on the way forward; pass gradients straight through on the way back.

    A sigmoid output does not work here: most pixels of sparse images (the procedural
    shapes, MNIST digits) are exactly 0, so the first steps drive every logit deep into the
    sigmoid's flat tail, its gradient vanishes and the decoder is stuck at a black image.
    A plain clip would stall the same way on pixels predicted outside the range. With the
    straight-through clip, the loss sees valid pixel values, and a pixel that is predicted
    below 0 but should be bright still gets the full gradient.
    """

    def call(self, x):
        return x + keras.ops.stop_gradient(keras.ops.clip(x, 0.0, 255.0) - x)


def _upsampling_stage(x, filters: int, name: str):
    """Double the resolution with a learned transposed conv, then refine with a 3x3 conv."""
    x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu", name=f"{name}_up")(x)
    return keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv")(x)


def build_mse_decoder(
    image_shape,
    h_shape,
    filters: int = DEFAULT_FILTERS,
    *,
    h_mean: np.ndarray | None = None,
    h_variance: np.ndarray | None = None,
):
    """An up-sampling conv decoder h -> x_hat with x_hat in [0, 255], shaped exactly `image_shape`.

    * vector h [D]: Dense to a map of ceil(H/4) x ceil(W/4), two x2 up-sampling stages, then
      crop to H x W (exact for 20, 28, 32 and 40 px images, cropped otherwise);
    * spatial h [s, s, c]: two 3x3 convs at h's resolution, round(log2(H/s)) x2 stages,
      then a bilinear resize to H x W when the doublings do not land on it exactly.

    `h_mean`/`h_variance` (per feature, or per channel for spatial h) standardise h inside
    the model, so the saved decoder takes raw features as the classifier emits them.
    Output: a 3x3 conv to C channels, x255, clipped to [0, 255] with straight-through
    gradients (`PixelRange`), so the squared error is in pixel units.
    """
    height, width, channels = (int(d) for d in image_shape)
    h_shape = tuple(int(d) for d in h_shape)
    if len(h_shape) not in (1, 3):
        raise InvkerasError(f"MSE decoder: features of shape {h_shape} are neither a vector nor a [H, W, C] map")
    h = keras.Input(h_shape, name="h")
    x = h
    if h_mean is not None and h_variance is not None:
        x = keras.layers.Normalization(axis=-1, mean=np.asarray(h_mean), variance=np.asarray(h_variance),
                                       name="standardise_h")(x)

    if len(h_shape) == 1:
        base_h, base_w = math.ceil(height / 4), math.ceil(width / 4)
        x = keras.layers.Dense(base_h * base_w * 4 * filters, activation="relu", name="project")(x)
        x = keras.layers.Reshape((base_h, base_w, 4 * filters), name="to_map")(x)
        x = _upsampling_stage(x, 2 * filters, "stage1")
        x = _upsampling_stage(x, filters, "stage2")
        extra_h, extra_w = 4 * base_h - height, 4 * base_w - width
        if extra_h or extra_w:
            x = keras.layers.Cropping2D(((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
                                        name="crop")(x)
    else:
        x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="h_conv1")(x)
        x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="h_conv2")(x)
        doublings = max(0, int(round(math.log2(height / h_shape[0]))))
        for stage in range(doublings):
            x = _upsampling_stage(x, filters if stage == doublings - 1 else 2 * filters, f"stage{stage + 1}")
        size = (h_shape[0] * 2**doublings, h_shape[1] * 2**doublings)
        if size != (height, width):
            x = keras.layers.Resizing(height, width, interpolation="bilinear", name="resize")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="refine")(x)

    x = keras.layers.Conv2D(channels, 3, padding="same", name="pixels")(x)  # predicts x / 255
    x = keras.layers.Rescaling(255.0, name="to_pixel_units")(x)
    x = PixelRange(name="reconstruction")(x)
    return keras.Model(h, x, name="mse_decoder")


def _h_statistics(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (or per-channel) mean and variance for standardising h.

    The variance is floored at 1% of the average variance: a unit that is almost constant
    on the training set (a nearly dead ReLU) must not turn a small test-time change into a
    huge standardised input.
    """
    flat = h.reshape(-1, h.shape[-1]).astype(np.float64)
    mean, variance = flat.mean(0), flat.var(0)
    floor = max(1e-2 * float(variance.mean()), 1e-8)
    return mean.astype(np.float32), np.maximum(variance, floor).astype(np.float32)


# --- config -------------------------------------------------------------------------


class MSEDecoderConfig(PairedDataConfig):
    """Every setting of an MSE-decoder run; the data fields are exactly an inverter's."""

    filters: int = Field(DEFAULT_FILTERS, gt=0)
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    max_steps: int = Field(2000, gt=0)
    steps_per_checkpoint: int = Field(200, gt=0)
    patience: int = Field(5, ge=0, description="checkpoint intervals without validation improvement")
    out: Optional[str] = Field(None, description="output dir; default runs/<dataset>/<arch>/decoders/<layer>")

    @classmethod
    def from_options(cls, options: dict) -> "MSEDecoderConfig":
        """The fields of a larger option set (e.g. `train-inverter`'s) that this config has.

        Options left at None keep this config's defaults (`train-inverter --filters` is None
        unless given, and then sets the decoder's width).
        """
        return cls(**{k: v for k, v in options.items() if k in cls.model_fields and v is not None})

    def inverter_config(self):
        """The InverterConfig whose data this decoder trains on (the same pairs, order and splits)."""
        from invkeras.train_inverter import UNCONDITIONAL, InverterConfig

        if self.layer == UNCONDITIONAL:
            raise InvkerasError("--kind mse --layer none: an MSE decoder needs a representation h to decode")
        return InverterConfig(**self.model_dump(include=set(PairedDataConfig.model_fields)), batch_size=self.batch_size)

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return artifacts.decoder_dir(self.dataset, self.arch, self.layer, self.workspace)

    def model_path(self) -> Path:
        return self.out_dir() / DECODER_FILE


# --- evaluation ---------------------------------------------------------------------


def per_image_mse(predictions: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Mean squared error per pixel (0..255 units), one value per image."""
    diff = np.asarray(predictions, np.float64) - np.asarray(images, np.float64)
    return (diff**2).reshape(len(diff), -1).mean(axis=1)


def summarize_mse(mse: np.ndarray, baseline: np.ndarray | None = None) -> dict:
    """Mean per-pixel MSE with its standard error over images; `baseline` is the mean image's."""
    n = len(mse)
    mean = float(np.mean(mse))
    summary = {
        "n": n,
        "mse_per_pixel": mean,
        "se": float(np.std(mse, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "rmse": math.sqrt(mean),
        "psnr_db": 10 * math.log10(255.0**2 / mean) if mean > 0 else float("inf"),
    }
    if baseline is not None:
        summary["mean_image_mse_per_pixel"] = float(np.mean(baseline))
    return summary


def _predict(model, h: np.ndarray, batch_size: int = 256) -> np.ndarray:

    parts = [keras.ops.convert_to_numpy(model(h[i : i + batch_size], training=False))
             for i in range(0, len(h), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def _evaluate(model, arrays: dict, mean_image: np.ndarray) -> dict:
    mse = per_image_mse(_predict(model, arrays["h"]), arrays["x"])
    baseline = per_image_mse(np.broadcast_to(mean_image, arrays["x"].shape), arrays["x"])
    return summarize_mse(mse, baseline)


# --- training -----------------------------------------------------------------------


# A decoder run reports exactly what an inverter run does: model, steps, held-out summaries, timing.
DecoderResult = InverterResult


def _prepare_backup(backup_dir: Path, config: MSEDecoderConfig) -> None:
    """Keep a backup only if the same trajectory made it; otherwise start afresh."""
    marker = backup_dir / "config.json"
    wanted = {key: getattr(config, key) for key in _TRAJECTORY_FIELDS}
    if backup_dir.exists():
        found = json.loads(marker.read_text()) if marker.exists() else None
        if found != wanted:
            shutil.rmtree(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(marker, wanted)


def _pipelines(train: dict, val: dict, config: MSEDecoderConfig):
    import tensorflow as tf

    def to_pair(batch):
        return batch["h"], tf.cast(batch["x"], tf.float32)

    train_ds = (
        tf.data.Dataset.from_tensor_slices({"x": train["x"], "h": train["h"]})
        .shuffle(min(len(train["x"]), 20_000), seed=config.seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(config.batch_size, drop_remainder=True)
        .map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices({"x": val["x"], "h": val["h"]}).batch(256).map(to_pair)
    return train_ds, val_ds


def train_mse_decoder(config: MSEDecoderConfig, *, callbacks=(), progress: bool = True) -> DecoderResult:
    """Train an MSE decoder on one layer's (x, h) pairs; write decoder.keras plus its metadata.

    Extra Keras `callbacks` run after the built-in ones (tests use this to simulate a kill).
    """

    from invkeras.progress import RichProgressCallback
    from invkeras.train_classifier import ResumableEarlyStopping
    from invkeras.train_inverter import inverter_arrays

    started = time.time()
    keras.utils.set_random_seed(config.seed)
    train, val, test, source = inverter_arrays(config.inverter_config())
    if "h" not in train:
        raise InvkerasError(f"--kind mse: the data for layer '{config.layer}' has no features h")
    if len(train["x"]) < config.batch_size:
        raise InvkerasError(f"--batch-size {config.batch_size}: only {len(train['x'])} training examples")
    image_shape = tuple(int(d) for d in train["x"].shape[1:])
    h_shape = tuple(int(d) for d in train["h"].shape[1:])
    mean_image = train["x"].astype(np.float64).mean(axis=0)

    out_dir = config.out_dir()
    backup_dir = out_dir / "backup"
    _prepare_backup(backup_dir, config)
    h_mean, h_variance = _h_statistics(train["h"])
    model = build_mse_decoder(image_shape, h_shape, config.filters, h_mean=h_mean, h_variance=h_variance)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mean_squared_error")
    train_ds, val_ds = _pipelines(train, val, config)

    epochs = max(1, math.ceil(config.max_steps / config.steps_per_checkpoint))
    bar = RichProgressCallback(f"mse decoder {config.layer}", live=None if progress else False)
    try:
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            steps_per_epoch=config.steps_per_checkpoint,
            callbacks=[
                # First, so weights, optimiser and epoch are restored before the others look.
                keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True, delete_checkpoint=False),
                ResumableEarlyStopping(backup_dir, monitor="val_loss", mode="min", patience=config.patience,
                                       restore_best_weights=True),
                keras.callbacks.TerminateOnNaN(),
                *callbacks,
                bar,
            ],
            shuffle=False,  # the pipeline shuffles already
            verbose=0,
        )
    finally:
        bar.close()

    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    first_epoch = history.epoch[0] if history.epoch else epochs
    last_epoch = history.epoch[-1] if history.epoch else epochs - 1
    validation = _evaluate(model, val, mean_image)
    if not math.isfinite(validation["mse_per_pixel"]):
        raise NonFiniteLossError(f"--kind mse layer '{config.layer}': validation MSE is not finite; the last good "
                                 f"state is in {backup_dir} (rerun with a lower --learning-rate)")
    test_summary = _evaluate(model, test, mean_image) if test is not None else None

    path = config.model_path()
    with artifacts.atomic_path(path) as tmp:
        model.save(tmp)
    seconds = time.time() - started
    resumed_from_step = first_epoch * config.steps_per_checkpoint
    artifacts.write_metadata(
        path,
        kind="mse-decoder",
        config=config,
        seed=config.seed,
        data=source,
        results={"validation": validation, "test": test_summary, "steps": steps, "seconds": seconds,
                 "resumed_from_step": resumed_from_step},
        layer=config.layer,
        image_shape=list(image_shape),
        h_shape=list(h_shape),
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
    )
    shutil.rmtree(backup_dir, ignore_errors=True)  # only once the artefact is complete
    return DecoderResult(path, config.layer, steps, validation, test_summary, seconds,
                         stopped_early=last_epoch + 1 < epochs, resumed_from_step=resumed_from_step)


# --- using a trained decoder ---------------------------------------------------------


def load_decoder(path: str | Path):
    """(model, metadata) of a trained decoder directory or decoder.keras file."""
    path = Path(path)
    if path.is_dir():
        path = path / DECODER_FILE
    if not path.exists():
        raise InvkerasError(f"--decoder {path}: file not found (train one with `invkeras train-inverter --kind mse`)")
    meta = artifacts.read_metadata(path)
    if meta is None or meta.get("kind") != "mse-decoder":
        raise InvkerasError(f"--decoder {path}: no MSE-decoder metadata beside it ({artifacts.metadata_path(path).name})")
    return keras.saving.load_model(path, compile=False), meta


def reconstruct(decoder, *, h: np.ndarray | None = None, x: np.ndarray | None = None,
                batch_size: int = 256) -> np.ndarray:
    """The decoder's reconstructions, float32 [N, H, W, C] in [0, 255].

    `decoder` is a path or a `(model, meta)` pair from `load_decoder`. Give the features
    `h`, or images `x`, whose features are then extracted through the classifier recorded
    in the decoder's metadata (so the reconstruction is of what that layer kept of x).
    """
    model, meta = load_decoder(decoder) if isinstance(decoder, (str, Path)) else decoder
    if (h is None) == (x is None):
        raise InvkerasError("reconstruct: give exactly one of h or x")
    if h is None:
        from invkeras.invert import reextract

        classifier = (meta.get("data") or {}).get("classifier")
        if not classifier:
            raise InvkerasError("reconstruct: the decoder was trained on user features, so there is no classifier "
                                "to extract h from x; pass h instead")
        h = reextract(classifier, meta["layer"], np.asarray(x)[:, None])[:, 0]
    h = np.asarray(h, np.float32)
    if list(h.shape[1:]) != list(meta["h_shape"]):
        raise InvkerasError(f"reconstruct: features of shape {tuple(h.shape[1:])}, but the decoder was trained on "
                            f"{tuple(meta['h_shape'])} (layer '{meta['layer']}')")
    return _predict(model, h, batch_size)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def grid_rows_with_reconstruction(originals: np.ndarray, reconstructions: np.ndarray,
                                  samples: np.ndarray) -> list[list[np.ndarray]]:
    """Rows as in the paper's Figs. 1 and 4: [original, MSE reconstruction, sample_1..K] per input."""
    if not (len(originals) == len(reconstructions) == len(samples)):
        raise ValueError(f"{len(originals)} originals, {len(reconstructions)} reconstructions, {len(samples)} sample sets")
    recon = to_uint8(reconstructions)
    return [[originals[i], recon[i], *samples[i]] for i in range(len(originals))]


@dataclass
class ReconstructionGrid:
    grid_path: Path
    mse_per_pixel: float  # the reconstructions' mean squared error on these inputs
    seconds: float


def _drawn_samples(path: Path, config: dict, seed: int, originals: np.ndarray) -> np.ndarray | None:
    """The samples of `invkeras sample` at `path` if they were drawn exactly as asked, else None."""
    if not artifacts.is_complete(path):
        return None
    meta = artifacts.read_metadata(path)
    if meta.get("config") != config or meta.get("seed") != seed:
        return None
    with np.load(path) as arrays:
        if "x" not in arrays.files or not np.array_equal(arrays["x"], originals):
            return None
        return arrays["samples"]


def save_samples_with_reconstruction(
    inverter_dir: str | Path,
    decoder_dir: str | Path,
    out: str | Path | None = None,
    num_inputs: int = 8,
    num_samples: int = 8,
    seed: int = 0,
    *,
    split: str = "test",
    batch_size: int = 64,
    method: str = "cached",
    reuse_samples: bool = True,
) -> ReconstructionGrid:
    """Write samples_mse.png: original | MSE reconstruction | K samples of p(x|h(x)), one row per input.

    With `reuse_samples`, the samples of a complete `samples.npz` beside the grid that was drawn
    with the same inputs, count, seed and sampler are shown instead of being drawn again: they
    are exactly what this call would draw, and sampling is the slow part.
    """
    from invkeras.grids import save_grid
    from invkeras.invert import held_out_inputs
    from invkeras.sampling import sample
    from invkeras.train_inverter import load_inverter

    if num_inputs < 1 or num_samples < 1:
        raise InvkerasError("sample-grid: --num-inputs and --num-samples must be >= 1")
    started = time.time()
    model, net_config, meta = load_inverter(inverter_dir)
    if net_config.conditioning == "none":
        raise InvkerasError(f"--inverter {inverter_dir}: unconditional; there is no h to reconstruct from")
    decoder = load_decoder(decoder_dir)
    if list(decoder[1]["h_shape"]) != list(meta["h_shape"]):
        raise InvkerasError(f"--decoder {decoder_dir}: decodes h of shape {tuple(decoder[1]['h_shape'])}, but the "
                            f"inverter's layer '{meta['layer']}' has {tuple(meta['h_shape'])}")
    inputs = held_out_inputs(meta, split, num_inputs)
    model_file = Path(inverter_dir) / "inverter.keras" if Path(inverter_dir).is_dir() else Path(inverter_dir)
    out_dir = Path(out) if out else model_file.parent
    wanted = {"inverter": str(model_file), "num_inputs": num_inputs, "num_samples": num_samples, "split": split,
              "batch_size": batch_size, "method": method}
    samples = _drawn_samples(out_dir / "samples.npz", wanted, seed, inputs["x"]) if reuse_samples else None
    if samples is None:
        samples = sample(model, net_config, inputs["h"], num_samples=num_samples, seed=seed, batch_size=batch_size,
                         method=method)
    recon = reconstruct(decoder, h=inputs["h"])
    grid_path = save_grid(out_dir / "samples_mse.png", grid_rows_with_reconstruction(inputs["x"], recon, samples),
                          separator_after=2)
    mse = float(per_image_mse(recon, inputs["x"]).mean())
    result = ReconstructionGrid(grid_path, mse, time.time() - started)
    artifacts.write_metadata(
        grid_path,
        kind="inversion-samples-with-mse",
        config={"inverter": str(model_file), "decoder": str(decoder_dir), "num_inputs": num_inputs,
                "num_samples": num_samples, "split": split, "batch_size": batch_size, "method": method},
        seed=seed,
        data=meta.get("data"),
        results={"seconds": result.seconds, "reconstruction_mse_per_pixel": mse},
        layer=meta.get("layer"),
        columns=["original", "MSE reconstruction", *[f"sample {k + 1}" for k in range(num_samples)]],
    )
    return result
