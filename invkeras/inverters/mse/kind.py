"""Kind `mse`: the point-estimate baseline x_hat = f(h), trained with squared error.

It has no likelihood and no randomness: `sample` returns its one reconstruction K times.
So its samples have zero diversity, which is exactly what `compare` makes visible: a point
estimate can land close to h(x) while showing nothing of what the layer is invariant to.
Its held-out score is the mean squared error per pixel (0..255 units), beside that of the
mean training image, the baseline it has to beat.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.inverters.base import Inverter, InverterConfig, QuickTraining, headline_summary, register_inverter
from invkeras.inverters.mse.network import DEFAULT_FILTERS, build_mse_decoder, h_statistics


class MSEInverterConfig(InverterConfig):
    """Every setting of an MSE-decoder run (`train-inverter --kind mse`)."""

    kind: Literal["mse"] = "mse"
    filters: int = Field(DEFAULT_FILTERS, gt=0, description="width of the decoder's convolutions")
    batch_size: int = Field(32, gt=0)


def per_image_mse(predictions: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Mean squared error per pixel (0..255 units), one value per image."""
    diff = np.asarray(predictions, np.float64) - np.asarray(images, np.float64)
    return (diff**2).reshape(len(diff), -1).mean(axis=1)


def summarize_mse(mse: np.ndarray, baseline: np.ndarray | None = None) -> dict:
    """Mean per-pixel MSE with its standard error over images; `baseline` is the mean image's."""
    summary = headline_summary("MSE per pixel", mse)
    mean, se = summary["headline"]["value"], summary["headline"]["se"]
    summary.update(mse_per_pixel=mean, se=se, rmse=math.sqrt(mean),
                   psnr_db=10 * math.log10(255.0**2 / mean) if mean > 0 else float("inf"))
    if baseline is not None:
        summary["mean_image_mse_per_pixel"] = float(np.mean(baseline))
    return summary


def _predict(model, h: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import keras

    parts = [keras.ops.convert_to_numpy(model(h[i : i + batch_size], training=False))
             for i in range(0, len(h), batch_size)]
    return np.concatenate(parts).astype(np.float32)


@register_inverter
class MSEInverter(Inverter):
    """x_hat(h) with its squared error; `sample` repeats it, `reconstruct` returns it unrounded."""

    kind, config_class = "mse", MSEInverterConfig
    description = "point-estimate decoder x_hat(h) trained with squared error (Dosovitskiy & Brox 2016)"
    capabilities = frozenset({"sample", "reconstruct"})  # no likelihood: estimate-mi refuses it
    legacy_artifact_kind, legacy_layout = "mse-decoder", "decoders/{layer}"
    point_estimate = True
    quick = QuickTraining(needed_steps=800, steps_per_checkpoint=100, auto_for="any")  # converges in ~800 steps

    @classmethod
    def train(cls, config: MSEInverterConfig, *, hooks=(), progress: bool = True):
        import keras

        from invkeras.training import CompiledModelTrainee

        data = cls.prepare(config)
        val, test = data.validation, data.test
        mean_image = data.train["x"].astype(np.float64).mean(axis=0)
        h_mean, h_variance = h_statistics(data.train["h"])
        model = build_mse_decoder(data.image_shape, data.h_shape, config.filters, h_mean=h_mean, h_variance=h_variance)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mean_squared_error")

        def evaluate(arrays):
            mse = per_image_mse(_predict(model, arrays["h"]), arrays["x"])
            baseline = per_image_mse(np.broadcast_to(mean_image, arrays["x"].shape), arrays["x"])
            return summarize_mse(mse, baseline)

        trainee = CompiledModelTrainee(
            model, inputs=lambda batch: np.asarray(batch["h"], "float32"),
            targets=lambda batch: np.asarray(batch["x"], "float32"),
            validate=lambda: {"val_loss": float(np.mean(per_image_mse(_predict(model, val["h"]), val["x"])))})
        outcome = cls.fit(trainee, data, config, hooks=hooks, progress=progress)
        validation = evaluate(val)
        if not math.isfinite(validation["mse_per_pixel"]):
            raise NonFiniteLossError(f"--kind mse layer '{config.layer}': validation MSE is not finite")
        return cls.save(model, config, data, validation=validation, test=evaluate(test) if test is not None else None,
                        outcome=outcome)

    def reconstruct(self, h, *, batch_size: int = 256):
        return _predict(self.model, self.check_h(h, "reconstruct"), batch_size)

    def export_functions(self, batch_size: int):
        from keras import ops

        def reconstruct(h):
            return self.model(h, training=False)

        def sample(h, seed):  # a point estimate: the seed changes nothing
            return ops.cast(ops.clip(ops.round(self.model(h, training=False)), 0, 255), "uint8")

        spec = ((None, *self.h_shape), "float32")
        return {"reconstruct": (reconstruct, [spec]), "sample": (sample, [spec, ((), "int32")])}

    def sample(self, h, num_samples: int = 1, *, seed: int = 0, batch_size: int = 256, **options):
        """The reconstruction, K times: a point estimate has one 'sample' per h."""
        if options:
            raise InvkerasError(f"sample: kind mse has no sampling option {', '.join(sorted(options))}")
        if num_samples < 1:
            raise InvkerasError("sample: num_samples must be >= 1")
        from invkeras.reports.grids import to_uint8

        images = to_uint8(self.reconstruct(h, batch_size=batch_size))
        return np.repeat(images[:, None], num_samples, axis=1)
