"""Kind `cinn`: a conditional INN over an autoencoder latent (Rombach, Esser & Ommer, ECCV 2020).

An autoencoder (`invkeras train-autoencoder`) gives z = E(x) (its mean: deterministic). The
conditional INN maps z to a residual v = t(z | h), trained with the exact likelihood
-log p(z | h) = |v|^2 / 2 + (d/2) log 2 pi - log|det dt/dz|, reported in nats per latent
dimension and per image. v holds what z has and h lacks: the layer's invariances.

    sample       v ~ N(0, I) -> z = t^-1(v | h) -> D(z): uint8 [N, K, H, W, C], fixed by the seed
    reconstruct  D(t^-1(0 | h)), the decoded mode of v
    latent_log_prob(z, h), residual(x, h), mix(x_a, h_b) = D(t^-1(v_a | h_b))

It has no pixel likelihood: its NLL is a differential entropy in the AE's latent space
(`latent_nll_nats`, headline "latent NLL nats/dim"), a latent-space estimate never to be
mixed with the pixel NCE of kind pixelcnn. `--layer none` trains an unconditional flow on z.

The saved `inverter.keras` holds the flow and the frozen encoder and decoder, so it is
used without the autoencoder file; the metadata records which autoencoder it came from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.inverters.base import Inverter, InverterConfig, QuickTraining, headline_summary, register_inverter

HEADLINE = "latent NLL nats/dim"
SPACE_NOTE = ("latent-space estimate: a differential entropy of the autoencoder's latent z, not comparable with "
              "pixel-space NLL or NCE")


class CINNInverterConfig(InverterConfig):
    """Every setting of a cinn run (`train-inverter --kind cinn --autoencoder PATH`)."""

    kind: Literal["cinn"] = "cinn"
    autoencoder: Optional[str] = Field(None, description="autoencoder directory or .keras (train-autoencoder)")
    num_blocks: int = Field(12, gt=0, description="blocks of ActNorm, double coupling, permutation")
    hidden: int = Field(64, gt=0, description="width of the coupling and embedding networks")
    depth: int = Field(2, gt=0, description="hidden layers per scale/shift network")
    embed_dim: int = Field(32, gt=0, description="size of the embedded h each coupling sees")
    lr_decay: float = Field(0.9995, gt=0, le=1, description="multiplied into the learning rate every step")
    init_examples: int = Field(512, gt=0, description="training examples for the data-dependent ActNorm init")
    batch_size: int = Field(64, gt=0)


def _batched(fn, arrays, batch_size):
    import keras

    n = len(arrays[0])
    parts = [keras.ops.convert_to_numpy(fn(*[None if a is None else a[i : i + batch_size] for a in arrays]))
             for i in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def encode(encoder, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """z = E(x), float32 [N, d]."""
    return _batched(lambda b: encoder(np.asarray(b, "float32"), training=False), [x], batch_size).astype(np.float32)


def summarize_latent_nll(nll_per_dim: np.ndarray, latent_dim: int) -> dict:
    """Held-out latent NLL per dimension (headline) and per image, with standard errors."""
    summary = headline_summary(HEADLINE, nll_per_dim)
    mean, se = summary["headline"]["value"], summary["headline"]["se"]
    return {**summary, "latent_nll_nats_per_dim": mean, "se_per_dim": se, "latent_nll_nats": mean * latent_dim,
            "se_nats": se * latent_dim, "latent_dim": int(latent_dim), "space": "latent", "note": SPACE_NOTE}


@register_inverter
class CINNInverter(Inverter):
    """t(z | h) over an autoencoder latent: samples decode t^-1(v | h) for v ~ N(0, I)."""

    kind, config_class = "cinn", CINNInverterConfig
    description = "conditional INN over an autoencoder latent, exact latent likelihood (Rombach et al. 2020)"
    capabilities = frozenset({"sample", "reconstruct"})  # its likelihood is in latent space, not pixels
    unconditional_ok = True
    latent_likelihood = True
    quick = QuickTraining(needed_steps=2000, steps_per_checkpoint=250, auto_for="colour")

    @classmethod
    def register_layers(cls) -> None:
        import invkeras.autoencoders.network  # noqa: F401  (LatentRegulariser, PixelRange)
        import invkeras.inverters.cinn.network  # noqa: F401  (LatentFlowModel, ConditionalINN, ...)

    @classmethod
    def train(cls, config: CINNInverterConfig, *, hooks=(), progress: bool = True):
        from invkeras.autoencoders.network import decoder_of, encoder_of
        from invkeras.autoencoders.training import autoencoder_file, load_autoencoder
        from invkeras.inverters.cinn.network import build_latent_flow
        from invkeras.training import BatchOrder, CompiledModelTrainee

        if not config.autoencoder:
            raise InvkerasError("--kind cinn needs --autoencoder PATH (train one with `invkeras train-autoencoder`)")
        autoencoder, ae_meta = load_autoencoder(config.autoencoder)
        data = cls.prepare(config)
        ae_shape = tuple(int(d) for d in ae_meta.get("image_shape") or autoencoder.input_shape[1:])
        if ae_shape != data.image_shape:
            raise InvkerasError(f"--autoencoder {config.autoencoder}: it was trained on images of shape {ae_shape}, "
                                f"but the data of layer '{config.layer}' has images of shape {data.image_shape}")
        if data.h_shape is not None and len(data.h_shape) not in (1, 3):
            raise InvkerasError(f"layer '{config.layer}': features of shape {data.h_shape} are neither a vector nor "
                                "a [H, W, C] map")
        encoder, decoder = encoder_of(autoencoder), decoder_of(autoencoder)
        latent_dim = int(encoder.output_shape[-1])
        if latent_dim < 2:
            raise InvkerasError(f"--autoencoder {config.autoencoder}: a latent of {latent_dim} dimension(s) cannot be "
                                "split by a coupling; use --latent-dim 2 or more")

        def latent(arrays):
            out = {"z": encode(encoder, arrays["x"])}
            if config.conditional:
                out["h"] = np.asarray(arrays["h"], np.float32)
            return out

        train_z, val_z = latent(data.train), latent(data.validation)
        test_z = latent(data.test) if data.test is not None else None
        model = build_latent_flow(latent_dim, data.h_shape, num_blocks=config.num_blocks, hidden=config.hidden,
                                  depth=config.depth, embed_dim=config.embed_dim, seed=config.seed, encoder=encoder,
                                  decoder=decoder, learning_rate=config.learning_rate,
                                  lr_decay=config.lr_decay)
        # Data-dependent ActNorm init from the first training examples of the first pass; a
        # resumed run then overwrites these values from its backup.
        n = len(train_z["z"])
        first = BatchOrder(n, min(n, max(config.batch_size, config.init_examples)), config.seed).indices(0)
        model.flow.initialize(train_z["z"][first], train_z["h"][first] if config.conditional else None)

        def inputs(batch):
            return {k: np.asarray(v, "float32") for k, v in batch.items()}

        def nll_per_dim(arrays):
            h = arrays.get("h")
            return _batched(lambda z, hh: model.flow.nll_per_dim(z, hh), [arrays["z"], h], 256).astype(np.float64)

        initial = float(np.mean(nll_per_dim(val_z)))  # the data-initialised flow: what training improves on
        trainee = CompiledModelTrainee(model, inputs=inputs, targets=lambda batch: np.zeros(len(batch["z"]), "float32"),
                                       validate=lambda: {"val_loss": float(np.mean(nll_per_dim(val_z)))})
        outcome = cls.fit(trainee, dataclasses.replace(data, train=train_z), config, hooks=hooks, progress=progress,
                          non_finite_hint=lambda: "try a lower --learning-rate or fewer --num-blocks")
        validation = summarize_latent_nll(nll_per_dim(val_z), latent_dim)
        if not np.isfinite(validation["latent_nll_nats"]):
            raise NonFiniteLossError(f"--kind cinn layer '{config.layer}': validation latent NLL is not finite")
        test = summarize_latent_nll(nll_per_dim(test_z), latent_dim) if test_z is not None else None
        ae_results = (ae_meta.get("results") or {}).get("validation") or {}
        source = {"path": str(autoencoder_file(config.autoencoder).resolve()), "latent_dim": latent_dim,
                  "image_shape": list(ae_shape), "l1_per_pixel": ae_results.get("l1_per_pixel"),
                  "psnr_db": ae_results.get("psnr_db"), "created": ae_meta.get("created")}
        network = {"latent_dim": latent_dim, "h_shape": list(data.h_shape) if data.h_shape else None,
                   "num_blocks": config.num_blocks, "hidden": config.hidden, "depth": config.depth,
                   "embed_dim": config.embed_dim}
        headline = (test or validation)
        return cls.save(model, config, data, validation=validation, test=test, outcome=outcome, autoencoder=source,
                        network=network, results={"latent_nll_nats": headline["latent_nll_nats"],
                                                  "latent_nll_nats_per_dim": headline["latent_nll_nats_per_dim"],
                                                  "latent_nll_split": "test" if test else "validation",
                                                  "initial_val_latent_nll_nats_per_dim": initial,
                                                  "space": "latent", "note": SPACE_NOTE})

    # --- the pieces -------------------------------------------------------------------

    @property
    def flow(self):
        return self.model.flow

    @property
    def latent_dim(self) -> int:
        return int(self.flow.latent_dim)

    def _h(self, h, what: str, n: int | None = None):
        h = self.check_h(h, what) if self.conditional else None
        if h is not None and n is not None and len(h) != n:
            raise InvkerasError(f"{what}: {n} latents but {len(h)} rows of h")
        return h

    def encode(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """z = E(x), the autoencoder's (deterministic) latent."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != self.image_shape:
            raise InvkerasError(f"encode: images of shape {tuple(x.shape[1:])}, but the autoencoder takes "
                                f"{self.image_shape}")
        return encode(self.model.encoder, x, batch_size)

    def decode(self, z: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """D(z), float32 [N, H, W, C] in [0, 255]."""
        return _batched(lambda b: self.model.decoder(np.asarray(b, "float32"), training=False), [z],
                        batch_size).astype(np.float32)

    def to_residual(self, z: np.ndarray, h=None, *, batch_size: int = 256) -> np.ndarray:
        """v = t(z | h)."""
        z = np.asarray(z, np.float32)
        h = self._h(h, "to_residual", len(z))
        return _batched(lambda zz, hh: self.flow(zz, hh)[0], [z, h], batch_size).astype(np.float32)

    def from_residual(self, v: np.ndarray, h=None, *, batch_size: int = 256) -> np.ndarray:
        """z = t^-1(v | h)."""
        v = np.asarray(v, np.float32)
        h = self._h(h, "from_residual", len(v))
        return _batched(lambda vv, hh: self.flow.inverse(vv, hh), [v, h], batch_size).astype(np.float32)

    def residual(self, x: np.ndarray, h=None, *, batch_size: int = 256) -> np.ndarray:
        """v = t(E(x) | h): what of x's latent the representation h does not hold."""
        return self.to_residual(self.encode(x, batch_size=batch_size), h, batch_size=batch_size)

    def latent_log_prob(self, z: np.ndarray, h=None, *, batch_size: int = 256) -> np.ndarray:
        """log p(z | h) in nats per image (a latent-space density, not a pixel likelihood)."""
        z = np.asarray(z, np.float32)
        h = self._h(h, "latent_log_prob", len(z))
        per_dim = _batched(lambda zz, hh: self.flow.nll_per_dim(zz, hh), [z, h], batch_size)
        return -per_dim.astype(np.float64) * self.latent_dim

    def mix(self, x_a: np.ndarray, h_b, *, h_a=None, batch_size: int = 256) -> np.ndarray:
        """D(t^-1(v_a | h_b)): image A's residual under image B's representation, float32 pixels."""
        v = self.residual(x_a, h_a, batch_size=batch_size)
        return self.decode(self.from_residual(v, h_b, batch_size=batch_size), batch_size=batch_size)

    def latent_space(self) -> dict:
        """The autoencoder latent this flow models: latent NLLs are comparable only within one."""
        source = self.meta.get("autoencoder") or {}
        return {"space": "autoencoder latent", "latent_dim": self.latent_dim, "autoencoder": source.get("path"),
                "autoencoder_created": source.get("created")}

    def autoencoder_reconstruction(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """D(E(x)), float32 pixels: the best any residual can do (t^-1(t(z | h) | h) = z)."""
        return self.decode(self.encode(x, batch_size=batch_size), batch_size=batch_size)

    # --- capabilities -----------------------------------------------------------------

    def reconstruct(self, h, *, batch_size: int = 256):
        h = self.check_h(h, "reconstruct")
        z = self.from_residual(np.zeros((len(h), self.latent_dim), np.float32), h, batch_size=batch_size)
        return self.decode(z, batch_size=batch_size)

    def sample(self, h, num_samples: int = 1, *, seed: int = 0, batch_size: int = 256, temperature: float = 1.0,
               **options):
        """K decoded samples per row of h: v ~ N(0, temperature^2 I), x = D(t^-1(v | h))."""
        if options:
            raise InvkerasError(f"sample: kind cinn has no sampling option {', '.join(sorted(options))}")
        if num_samples < 1:
            raise InvkerasError("sample: num_samples must be >= 1")
        from invkeras.reports.grids import to_uint8

        h = self.check_h(h, "sample") if self.conditional else None
        rows = len(h) if h is not None else 1
        v = np.random.default_rng(seed).standard_normal((rows * num_samples, self.latent_dim)).astype(np.float32)
        repeated = np.repeat(h, num_samples, axis=0) if h is not None else None
        z = self.from_residual(float(temperature) * v, repeated, batch_size=batch_size)
        images = to_uint8(self.decode(z, batch_size=batch_size))
        return images.reshape(rows, num_samples, *images.shape[1:])

    @property
    def autoencoder_path(self) -> Optional[Path]:
        path = (self.meta.get("autoencoder") or {}).get("path")
        return Path(path) if path else None
