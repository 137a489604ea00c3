"""Kind `pixelcnn`: the conditional PixelCNN++ of Nash, Kushman and Williams (2019).

Its exact likelihood makes it the kind that measures information: the held-out mean of
-log p(x | h) is a cross-entropy, so it bounds H(x | h) from above (see `analyses.mi`).

Optimisation follows the paper: Adam at 1e-3 decayed by 0.9999 per step, early stopping on
validation NLL, checkpoint intervals of `steps_per_checkpoint` steps (`invkeras.training`).
Weight normalisation is initialised from one training batch before the first step.
"""

from __future__ import annotations

import uuid
import weakref
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.inverters.base import (Inverter, InverterConfig, QuickTraining, headline_summary, nats_to_bits_per_dim,
                                     register_inverter)
from invkeras.inverters.data import fingerprint

PER_IMAGE_NLL_FILE = "per_image_nll.npz"  # beside inverter.keras: {"validation", "test", "token"}
VECTOR_LAYERS_HINT = "vector h (fc3, logits) or spatial h (conv1, conv2)"


class PixelCNNInverterConfig(InverterConfig):
    """Every hyper-parameter of a PixelCNN++ inverter run (`train-inverter --kind pixelcnn`)."""

    kind: Literal["pixelcnn"] = "pixelcnn"
    # Network (None = take the value from the --scale preset).
    scale: Literal["tiny", "small", "paper"] = Field(
        "small", description="network preset: tiny (8 filters, 1 resnet layer), small (32, 2) or paper (64, 3)")
    filters: Optional[int] = Field(None, gt=0, description="filters per convolution")
    nr_resnet: Optional[int] = Field(None, gt=0, description="gated resnet layers per block")
    dropout_rate: Optional[float] = Field(None, ge=0, lt=1, description="dropout inside the gated resnet layers")
    h_dropout: Optional[float] = Field(None, ge=0, lt=1, description="dropout on h before it conditions the network")
    likelihood: Literal["auto", "categorical", "logistic_mixture"] = Field(
        "auto", description="per-pixel likelihood; auto = a 256-way softmax for grey images, a discretised "
                            "logistic mixture for colour (the paper)")
    num_mixtures: int = Field(10, gt=0, description="components of the logistic mixture")
    vector_conditioning: Literal["auto", "global", "deconv"] = Field(
        "auto", description="how a vector h enters: per-channel bias (global, the paper) or learned maps "
                            "(deconv); auto = the --scale preset's (deconv except at paper scale)")
    standardise_h: Literal["auto", "true", "false"] = Field(
        "auto", description="standardise h with training statistics; auto = the preset's (off at paper scale)")
    lr_decay: float = Field(0.9999, gt=0, le=1, description="multiplied into the learning rate every step")
    # auto: off under TensorFlow, where `make bench` measured XLA training 2.5x *slower* on 2
    # CPU cores (and slow to compile; try "true" on a GPU), on under JAX, whose uncompiled path
    # runs op by op (`distribution.training_jit`). Sampling always uses XLA (its row caches need it).
    jit_compile: Literal["auto", "true", "false"] = Field(
        "auto", description="compile training steps with XLA; auto = off under TensorFlow, on under JAX")
    mixed_precision: bool = Field(False, description="train in float16 with float32 weights and loss scaling")
    strategy: Literal["auto", "mirrored", "data-parallel", "default"] = Field(
        "auto", description="devices: mirrored (TensorFlow) or data-parallel (JAX) over all of them, default (one), "
                            "auto (all when there are several); see invkeras.distribution")


def network_config(config: PixelCNNInverterConfig, image_shape, h_shape):
    """The network config: the --scale preset, then any explicit overrides."""
    from invkeras.inverters.pixelcnn.network import PixelCNNConfig

    likelihood = config.likelihood
    if likelihood == "auto":
        # The paper: a 256-way softmax for grey images, a logistic mixture for colour.
        likelihood = "categorical" if image_shape[-1] == 1 else "logistic_mixture"
    if h_shape is None:
        conditioning = "none"
    else:
        conditioning = "vector" if len(h_shape) == 1 else "spatial"
        if len(h_shape) not in (1, 3):
            raise InvkerasError(f"layer '{config.layer}': features of shape {h_shape} are neither {VECTOR_LAYERS_HINT}")
    net = PixelCNNConfig.from_scale(config.scale, image_shape=tuple(image_shape), likelihood=likelihood,
                                    conditioning=conditioning, h_shape=tuple(h_shape) if h_shape else None)
    overrides = {k: v for k, v in {"filters": config.filters, "nr_resnet": config.nr_resnet,
                                   "dropout_rate": config.dropout_rate, "h_dropout": config.h_dropout,
                                   "num_mixtures": config.num_mixtures}.items() if v is not None}
    if config.vector_conditioning != "auto":
        overrides["vector_conditioning"] = config.vector_conditioning
    if config.standardise_h != "auto":
        overrides["standardise_h"] = config.standardise_h == "true"
    return PixelCNNConfig(**{**net.model_dump(), **overrides})  # re-validated


def build_network(net_config, *, learning_rate: float, lr_decay: float, jit_compile="auto"):
    """The PixelCNN++ compiled with the exact NLL loss (nats per image) and the paper's optimiser."""
    import keras

    from invkeras.distribution import training_jit
    from invkeras.inverters.pixelcnn.likelihoods import NegativeLogLikelihood
    from invkeras.inverters.pixelcnn.network import build_pixelcnn

    model = build_pixelcnn(net_config)
    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=1, decay_rate=lr_decay)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=NegativeLogLikelihood(likelihood=net_config.likelihood, num_channels=net_config.image_shape[-1]),
                  jit_compile=training_jit(jit_compile))
    return model


def per_image_nll_nats(model, net_config, arrays: dict, batch_size: int = 64) -> np.ndarray:
    """Exact -log p(x|h) in nats for every image (inference mode, no dropout)."""
    import keras

    from invkeras.inverters.pixelcnn.likelihoods import log_prob_per_image

    compiled = _compiled_log_prob(model, net_config)
    out = []
    for start in range(0, len(arrays["x"]), batch_size):
        x = np.asarray(arrays["x"][start : start + batch_size], "float32")
        inputs = {"x": x}
        if arrays.get("h") is not None and net_config.conditioning != "none":
            inputs["h"] = np.asarray(arrays["h"][start : start + batch_size], "float32")
        if compiled is not None:
            logp = compiled(inputs, len(x), batch_size)
        else:
            params = model(inputs, training=False)
            logp = log_prob_per_image(params, keras.ops.convert_to_tensor(x), net_config.likelihood,
                                      net_config.image_shape[-1])
        out.append(np.asarray(keras.ops.convert_to_numpy(logp), dtype=np.float64))
    return -np.concatenate(out)


_LOG_PROB: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # per model: its jitted log p


def _compiled_log_prob(model, net_config):
    """Under JAX, log p(x|h) per image as one jitted function of the weights and a batch
    (padded to `batch_size`, so one compilation serves every batch), or None under
    TensorFlow, whose eager call is cheap. JAX runs an uncompiled call one operation at a
    time, compiling each on first use: minutes of start-up for a validation pass on a CPU."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    if model in _LOG_PROB:
        return _LOG_PROB[model]
    import jax

    from invkeras.inverters.pixelcnn.likelihoods import log_prob_per_image

    model_ref = weakref.ref(model)  # the cache must not keep the model alive

    @jax.jit
    def log_prob(trainable, non_trainable, inputs):
        params, _ = model_ref().stateless_call(trainable, non_trainable, inputs, training=False)
        return log_prob_per_image(params, inputs["x"], net_config.likelihood, net_config.image_shape[-1])

    def run(inputs, count, batch_size):
        if count < batch_size:  # pad with copies of the last example; their values are dropped
            inputs = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - count, axis=0)]) for k, v in inputs.items()}
        weights = model_ref()
        return log_prob([v.value for v in weights.trainable_variables],
                        [v.value for v in weights.non_trainable_variables], inputs)[:count]

    _LOG_PROB[model] = run
    return run


def summarize_nll(nll_nats: np.ndarray, image_shape) -> dict:
    """Mean NLL with its standard error and 95% interval over images, in nats and bits/dim."""
    summary = headline_summary("NLL nats", nll_nats)
    mean, se = summary["headline"]["value"], summary["headline"]["se"]
    to_bpd = nats_to_bits_per_dim(image_shape)
    return {**summary, "nll_nats": mean, "se_nats": se, "ci95_nats": [mean - 1.96 * se, mean + 1.96 * se],
            "bits_per_dim": mean * to_bpd, "se_bits_per_dim": se * to_bpd}


def saved_per_image_nll(model_path: str | Path, split: str) -> tuple[np.ndarray, str | None] | None:
    """(per-image NLLs, fingerprint of the images) recorded when the inverter at `model_path`
    was trained, or None if that split was not recorded or the file belongs to another model."""
    model_path = Path(model_path)
    meta = artifacts.read_metadata(model_path) or {}
    token = (meta.get("results") or {}).get("per_image_nll_token")
    path = model_path.parent / PER_IMAGE_NLL_FILE
    if token is None or not path.is_file():
        return None
    with np.load(path) as saved:
        if str(saved["token"]) != token or split not in saved.files:
            return None
        prints = (meta.get("results") or {}).get("fingerprints") or {}
        return saved[split], prints.get(split)


def _non_finite_hint(h: np.ndarray | None):
    def hint() -> str:
        largest = float(np.max(np.abs(h))) if h is not None and h.size else 0.0
        if largest > 1e6:
            return f"the features h reach |h| = {largest:.3g}: rescale them; a lower --learning-rate will not help"
        return "try a lower --learning-rate"

    return hint


@register_inverter
class PixelCNNInverter(Inverter):
    """p(x | h) with an exact likelihood: samples through the compiled sampler, NLL per image."""

    kind = "pixelcnn"
    config_class = PixelCNNInverterConfig
    capabilities = frozenset({"sample", "pixel_log_prob"})
    description = "conditional PixelCNN++ p(x|h) with an exact likelihood (Nash et al. 2019)"
    unconditional_ok = True
    legacy_artifact_kind, legacy_layout = "inverter", "inverters/{layer}"
    # Measured on the procedural images at the tiny scale: conv1 needed 1,000 steps for near
    # copies, the unconditional model 2,600 to come within a nat of the exact H(x); 16 filters
    # and learning rate 0.003 beat other settings at the same wall time.
    quick = QuickTraining(needed_steps=1000, steps_per_checkpoint=200, unconditional_steps=2600,
                          settings={"scale": "tiny", "filters": 16, "learning_rate": 0.003},
                          auto_for="grey", auto_max_side=32, auto_if_affordable=True)

    @classmethod
    def register_layers(cls) -> None:
        import invkeras.inverters.pixelcnn.network  # noqa: F401  (PixelCNNPlusPlus, GatedResnet, ...)

    @property
    def network_config(self):
        from invkeras.inverters.pixelcnn.network import PixelCNNConfig

        return PixelCNNConfig(**self.meta["network"])

    @classmethod
    def train(cls, config: PixelCNNInverterConfig, *, hooks=(), progress: bool = True):
        import keras

        from invkeras.distribution import check_batch_split, get_strategy, strategy_scope
        from invkeras.inverters.pixelcnn.weight_norm import initialize_weight_norm
        from invkeras.training import BatchOrder, CompiledModelTrainee

        data = cls.prepare(config)
        train_arrays, val, test, image_shape = data.train, data.validation, data.test, data.image_shape
        net_config = network_config(config, image_shape, data.h_shape)
        out_dir = config.out_dir()
        strategy = get_strategy(config.strategy)
        check_batch_split(strategy, config.batch_size)
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            # Training too runs in the strategy's scope: a JAX distribution shards each batch
            # only while it is current.
            with strategy_scope(strategy):
                model = build_network(net_config, learning_rate=config.learning_rate, lr_decay=config.lr_decay,
                                      jit_compile=config.jit_compile)

                def inputs(batch):
                    return {k: np.asarray(v, "float32") for k, v in batch.items()}

                if model.h_standardise is not None:
                    model.h_standardise.set_statistics(train_arrays["h"])
                # Data-dependent weight-norm initialisation from the first batch; a resumed run
                # then overwrites these values from its backup.
                first = BatchOrder(len(train_arrays["x"]), config.batch_size, config.seed).indices(0)
                initialize_weight_norm(model, inputs({k: v[first] for k, v in train_arrays.items()}))
                trainee = CompiledModelTrainee(
                    model, inputs=inputs, targets=lambda batch: np.asarray(batch["x"], "float32"),
                    validate=lambda: {"val_loss": float(np.mean(per_image_nll_nats(model, net_config, val)))})
                outcome = cls.fit(trainee, data, config, hooks=hooks, progress=progress,
                                  non_finite_hint=_non_finite_hint(train_arrays.get("h")))
        finally:
            if config.mixed_precision:
                keras.mixed_precision.set_global_policy("float32")

        per_image = {"validation": per_image_nll_nats(model, net_config, val)}
        prints = {"validation": fingerprint(val["x"])}
        if test is not None:
            per_image["test"] = per_image_nll_nats(model, net_config, test)
            prints["test"] = fingerprint(test["x"])
        validation = summarize_nll(per_image["validation"], image_shape)
        test_summary = summarize_nll(per_image["test"], image_shape) if "test" in per_image else None
        if not np.isfinite(validation["nll_nats"]):
            raise NonFiniteLossError(f"train-inverter layer '{config.layer}': validation NLL is not finite")
        # Per-image NLLs, kept so that estimate-mi need not evaluate the model again. The token,
        # also in the model's metadata, ties them to this model.
        token = uuid.uuid4().hex
        nll_path = artifacts.save_npz_atomic(out_dir / PER_IMAGE_NLL_FILE, token=np.array(token), **per_image)
        artifacts.write_metadata(nll_path, kind="per-image-nll", config=config, seed=config.seed, data=data.source,
                                 results={split: len(v) for split, v in per_image.items()},
                                 inverter=str(config.model_path()))
        return cls.save(model, config, data, validation=validation, test=test_summary, outcome=outcome,
                        network=net_config, results={"per_image_nll_token": token, "fingerprints": prints})

    def sample(self, h, num_samples: int = 1, *, seed: int = 0, batch_size: int = 64, method: str = "pixel",
               temperature: float = 1.0, **options):
        from invkeras.inverters.pixelcnn.sampling import sample

        if options:
            raise InvkerasError(f"sample: kind pixelcnn has no sampling option {', '.join(sorted(options))}")
        h = self.check_h(h, "sample") if self.conditional else None
        return sample(self.model, self.network_config, h, num_samples=num_samples, seed=seed, batch_size=batch_size,
                      method=method, temperature=temperature)

    def log_prob(self, x, h=None, *, batch_size: int = 64):
        arrays = {"x": np.asarray(x), "h": self.check_h(h, "log_prob") if self.conditional else None}
        return -per_image_nll_nats(self.model, self.network_config, arrays, batch_size=batch_size)

    def export_functions(self, batch_size: int):
        from invkeras.inverters.pixelcnn.likelihoods import log_prob_per_image
        from invkeras.inverters.pixelcnn.network import model_inputs
        from invkeras.inverters.pixelcnn.sampling import traceable_sampler

        net = self.network_config
        h_spec = [((None, *self.h_shape), "float32")] if self.conditional else []

        def log_prob(x, *h):
            params = self.model(model_inputs(net, x, h[0] if h else None), training=False)
            return log_prob_per_image(params, x, net.likelihood, net.image_shape[-1])

        draw = traceable_sampler(self.model, net, batch_size)

        def sample(*args):
            h, seed = (args[0], args[1]) if self.conditional else (None, args[0])
            return draw(h, seed)

        fixed_h = [((batch_size, *self.h_shape), "float32")] if self.conditional else []
        return {"log_prob": (log_prob, [((None, *net.image_shape), "float32"), *h_spec]),
                "sample": (sample, [*fixed_h, ((), "int32")])}

    def recorded_nll(self, split: str):
        """The per-image NLLs recorded at the end of training (None if absent or stale)."""
        return saved_per_image_nll(self.path, split)
