"""Kind `gan`: a feedforward inversion model x = G(h, eps), trained adversarially.

Teterwak et al. (2021) train a BigGAN whose class embedding is replaced by conditioning on a
classifier's logits; one forward pass gives a sample, and resampling eps shows what the
representation is invariant to. This kind is that model at small scale (see `network`):
hinge loss, Adam with beta1 = 0 and separate learning rates for G and D, `d_steps` D steps
per G step, spectral normalisation everywhere, and an EMA of G's weights, which is the model
that is sampled and saved.

It has no likelihood: `estimate-mi` refuses it, `compare` shows it without an NLL. Its
point estimate (`reconstruct`) is G(h, 0), the image at the mode of the noise prior; it
is a sample like the others, not a posterior mean.

Validation (every checkpoint, and the headline of the saved results) is the mean absolute
pixel difference, 0..255 units, between G_ema(h, 0) and the image x, on the validation
pairs. A GAN is not trained to minimise it and a good GAN need not have a low one, so early
stopping is off unless `patience` is set; with it off, the saved model is the last EMA.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.inverters.base import Inverter, InverterConfig, QuickTraining, headline_summary, register_inverter

BASE_LEARNING_RATE = InverterConfig.model_fields["learning_rate"].default
HEADLINE = "pixel L1 of G(h, 0)"


class GANInverterConfig(InverterConfig):
    """Every setting of a GAN inverter run (`train-inverter --kind gan`)."""

    kind: Literal["gan"] = "gan"
    scale: Literal["tiny", "small", "paper"] = Field(
        "small", description="network preset: tiny (tests), small (28x28 grey / 32x32 colour on a CPU), paper "
                             "(BigGAN's 32x32 widths, a GPU)")
    g_channels: Optional[int] = Field(None, gt=0, description="generator width (default: the scale's)")
    d_channels: Optional[int] = Field(None, gt=0, description="discriminator width (default: the scale's)")
    noise_dim: Optional[int] = Field(None, gt=0, description="size of eps (default: the scale's)")
    embed_dim: Optional[int] = Field(None, gt=0, description="size of G's linear embedding of h (default: the scale's)")
    batch_size: int = Field(64, gt=0, description="pairs per D step (a step of the loop reads d_steps batches)")
    max_steps: int = Field(5000, gt=0, description="generator steps")
    steps_per_checkpoint: int = Field(500, gt=0)
    patience: Optional[int] = Field(
        None, ge=0, description="checkpoint intervals without a lower validation pixel L1 of G(h, 0) before "
                                "stopping; default off (a GAN does not minimise it)")
    g_learning_rate: float = Field(2e-4, gt=0, description="Adam (beta1 0, beta2 0.999) learning rate of G")
    d_learning_rate: float = Field(2e-4, gt=0, description="Adam (beta1 0, beta2 0.999) learning rate of D")
    d_steps: int = Field(2, gt=0, description="discriminator steps per generator step")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the generator's weight average (the saved "
                                                            "model), warmed up as min(decay, (1+t)/(10+t))")
    feature_matching: float = Field(
        0.0, ge=0, description="weight of a feature-matching term (D's pooled features, real vs generated) added to "
                               "G's loss; NOT part of Teterwak et al. (2021), an opt-in extension; default 0 (off)")

    @model_validator(mode="after")
    def _own_learning_rates(self):
        if self.learning_rate != BASE_LEARNING_RATE:
            raise ValueError("learning_rate: kind gan has two, g_learning_rate and d_learning_rate; set those")
        return self


def _generate(model, h: np.ndarray, eps: np.ndarray, batch_size: int) -> np.ndarray:
    """G(h, eps) in inference mode, float32 [N, H, W, C] in [0, 255]."""
    import keras

    parts = [keras.ops.convert_to_numpy(model({"h": h[i : i + batch_size], "eps": eps[i : i + batch_size]},
                                              training=False))
             for i in range(0, len(h), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def pixel_l1(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference (0..255 units), one value per image."""
    diff = np.abs(np.asarray(images, np.float64) - np.asarray(targets, np.float64))
    return diff.reshape(len(diff), -1).mean(axis=1)


@register_inverter
class GANInverter(Inverter):
    """x = G_ema(h, eps): samples from one forward pass; no likelihood."""

    kind, config_class = "gan", GANInverterConfig
    description = "conditional GAN x = G(h, eps), hinge loss, spectral norm, EMA (Teterwak et al. 2021)"
    capabilities = frozenset({"sample", "reconstruct"})  # no likelihood: estimate-mi refuses it
    quick = QuickTraining(needed_steps=2000, steps_per_checkpoint=250, settings={"scale": "tiny"})

    @classmethod
    def register_layers(cls) -> None:
        import invkeras.inverters.gan.network  # noqa: F401  (SNDense, SNConv2D, ConditionalBatchNorm, ...)

    @property
    def network(self):
        from invkeras.inverters.gan.network import GANNetwork

        return GANNetwork(**self.meta["network"])

    @staticmethod
    def fit(trainee, data, config: GANInverterConfig, *, hooks=(), progress: bool = True, non_finite_hint=None):
        """The shared loop, reading `d_steps` batches per step, early stopping only with `patience`."""
        from invkeras.training import Schedule, train

        early = config.patience is not None
        schedule = Schedule(config.max_steps, config.steps_per_checkpoint,
                            config.patience if early else config.max_steps + 1, config.batch_size * config.d_steps,
                            config.seed, monitor="val_loss" if early else "(early stopping off)",
                            max_time=config.max_time)
        return train(trainee, data.train, schedule, out_dir=config.out_dir(), settings=config.trajectory(),
                     what=f"train-inverter --kind gan layer '{config.layer}'", hooks=hooks, progress=progress,
                     non_finite_hint=non_finite_hint, data_source=data.described(config))

    @classmethod
    def train(cls, config: GANInverterConfig, *, hooks=(), progress: bool = True):
        from invkeras.inverters.gan.network import build_discriminator, build_generator, network_for
        from invkeras.inverters.gan.trainee import GANTrainee, _require_backend
        from invkeras.inverters.mse.network import h_statistics

        _require_backend()
        data = cls.prepare(config)
        if len(data.h_shape) not in (1, 3):
            raise InvkerasError(f"--kind gan layer '{config.layer}': features of shape {data.h_shape} are neither a "
                                "vector nor a [H, W, C] map")
        needed = config.batch_size * config.d_steps
        if len(data.train["x"]) < needed:
            raise InvkerasError(f"--kind gan: {len(data.train['x'])} training pairs, but a step reads batch_size x "
                                f"d_steps = {needed}")
        net = network_for(config.scale, data.image_shape, data.h_shape, g_channels=config.g_channels,
                          d_channels=config.d_channels, noise_dim=config.noise_dim, embed_dim=config.embed_dim)
        net.noise_chunks()  # refuses a noise_dim too small, in one line
        h_mean, h_variance = h_statistics(data.train["h"])
        generator = build_generator(net, h_mean=h_mean, h_variance=h_variance, name="generator")
        ema = build_generator(net, h_mean=h_mean, h_variance=h_variance, name="generator_ema")
        discriminator = build_discriminator(net, h_mean=h_mean, h_variance=h_variance)

        def evaluate(arrays) -> dict:
            eps = np.zeros((len(arrays["h"]), net.noise_dim), np.float32)
            values = pixel_l1(_generate(ema, np.asarray(arrays["h"], np.float32), eps, 256), arrays["x"])
            return headline_summary(HEADLINE, values, pixel_l1=float(np.mean(values)))

        trainee = GANTrainee(generator, discriminator, ema, batch_size=config.batch_size, d_steps=config.d_steps,
                             noise_dim=net.noise_dim, g_learning_rate=config.g_learning_rate,
                             d_learning_rate=config.d_learning_rate, ema_decay=config.ema_decay,
                             feature_matching=config.feature_matching, seed=config.seed,
                             validate=lambda: {"val_loss": evaluate(data.validation)["pixel_l1"]})
        outcome = cls.fit(trainee, data, config, hooks=hooks, progress=progress,
                          non_finite_hint=lambda: "try lower --g-learning-rate / --d-learning-rate")
        validation = evaluate(data.validation)
        if not math.isfinite(validation["pixel_l1"]):
            raise NonFiniteLossError(f"--kind gan layer '{config.layer}': the generator's validation images are not "
                                     "finite")
        test = evaluate(data.test) if data.test is not None else None
        return cls.save(ema, config, data, validation=validation, test=test, outcome=outcome, network=net)

    # --- a trained GAN ----------------------------------------------------------------

    def reconstruct(self, h, *, batch_size: int = 256):
        """G_ema(h, 0): the image at the noise prior's mode, float32 [N, H, W, C] in [0, 255]."""
        h = self.check_h(h, "reconstruct")
        return _generate(self.model, h, np.zeros((len(h), self.network.noise_dim), np.float32), batch_size)

    def sample(self, h, num_samples: int = 1, *, seed: int = 0, batch_size: int = 64, **options):
        """K images G_ema(h, eps) per row of h, eps drawn from `seed` alone: uint8 [N, K, H, W, C].
        Sample k of input n uses row n * K + k of one draw of N * K noise vectors, so the
        samples do not depend on `batch_size`."""
        from keras import ops

        from invkeras.reports.grids import to_uint8

        if options:
            raise InvkerasError(f"sample: kind gan has no sampling option {', '.join(sorted(options))}")
        if num_samples < 1 or batch_size < 1:
            raise InvkerasError("sample: num_samples and batch_size must be >= 1")
        from invkeras.inverters.gan.network import noise

        h = self.check_h(h, "sample")
        total = len(h) * num_samples
        eps = np.asarray(ops.convert_to_numpy(noise(total, self.network.noise_dim, int(seed) & 0x7FFFFFFF)),
                         np.float32)
        images = _generate(self.model, np.repeat(h, num_samples, axis=0), eps, batch_size)
        return to_uint8(images).reshape(len(h), num_samples, *self.image_shape)

    def export_functions(self, batch_size: int):
        from keras import ops

        from invkeras.inverters.gan.network import noise

        noise_dim = self.network.noise_dim

        def sample(h, seed):
            # eps from the seed alone, so a seed gives the same images every call. Not the
            # numbers GANInverter.sample draws for that seed: the export compiles `sample` with
            # XLA, whose stateless normal generator differs from TensorFlow's own kernel.
            eps = noise(batch_size, noise_dim, seed)
            images = self.model({"h": h, "eps": eps}, training=False)
            return ops.cast(ops.clip(ops.round(images), 0, 255), "uint8")

        def reconstruct(h):
            eps = ops.zeros((ops.shape(h)[0], noise_dim), "float32")
            return self.model({"h": h, "eps": eps}, training=False)

        return {"sample": (sample, [((batch_size, *self.h_shape), "float32"), ((), "int32")]),
                "reconstruct": (reconstruct, [((None, *self.h_shape), "float32")])}
