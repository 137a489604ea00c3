"""Training an inversion model p(x | h): config, input pipeline and train loop.

The data are (image x, representation h) pairs. They come from one of:
  * a classifier run plus a layer (`--dataset D --arch A --layer fc3`): features are
    extracted once into runs/<D>/<A>/features/<layer>/<split> (resumable) and reused;
  * an extract directory or a user's own `.npz` with `x` and `h` (`--features PATH`);
  * `--layer none`: the unconditional model p(x), whose NLL estimates H(x).

Optimisation follows Nash et al. (2019): Adam at 1e-3 decayed by 0.9999 per step, early
stopping on validation NLL. An "epoch" here is a checkpoint interval of
`steps_per_checkpoint` steps, so a kill loses at most one interval: rerunning the same
command restores weights, optimiser state and step count from the backup.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError

UNCONDITIONAL = "none"
PER_IMAGE_NLL_FILE = "per_image_nll.npz"  # beside inverter.keras: {"validation", "test", "token"}
VECTOR_LAYERS_HINT = "vector h (fc3, logits) or spatial h (conv1, conv2)"


class PairedDataConfig(BaseModel):
    """Where the (x, h) pairs come from. Inverters and MSE decoders share it, so both see
    exactly the same pairs, splits and order."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "procedural"
    data_dir: Optional[str] = None
    arch: str = "conv"
    layer: str = Field("fc3", description="layer name, or 'none' for the unconditional model")
    model: Optional[str] = Field(None, description="classifier .keras or run dir; default the run for dataset+arch")
    features: Optional[str] = Field(None, description="extract directory or user .npz with x and h")
    train_examples: Optional[int] = Field(None, gt=0)
    eval_examples: Optional[int] = Field(None, gt=0, description="cap on validation/test images evaluated")
    seed: int = 0
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)

    @field_validator("layer")
    @classmethod
    def _layer_not_empty(cls, layer: str) -> str:
        if not layer.strip():
            raise ValueError("layer name is empty")
        return layer


class InverterConfig(PairedDataConfig):
    """Every hyper-parameter of an inverter run; also the `train-inverter` recipe step."""

    # Network (None = take the value from the --scale preset).
    scale: Literal["tiny", "small", "paper"] = "small"
    filters: Optional[int] = Field(None, gt=0)
    nr_resnet: Optional[int] = Field(None, gt=0)
    dropout_rate: Optional[float] = Field(None, ge=0, lt=1)
    h_dropout: Optional[float] = Field(None, ge=0, lt=1)
    likelihood: Literal["auto", "categorical", "logistic_mixture"] = "auto"
    num_mixtures: int = Field(10, gt=0)
    # Optimisation.
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    lr_decay: float = Field(0.9999, gt=0, le=1, description="multiplied into the learning rate every step")
    max_steps: int = Field(2000, gt=0)
    steps_per_checkpoint: int = Field(200, gt=0)
    patience: int = Field(5, ge=0, description="checkpoint intervals without validation improvement")
    # Execution.
    # Off by default: `make bench` measured XLA training 2.5x *slower* on 2 CPU cores (and slow
    # to compile); try "true" on a GPU. Sampling always uses XLA (its row caches need it).
    jit_compile: Literal["auto", "true", "false"] = "false"
    mixed_precision: bool = False
    strategy: str = "auto"
    out: Optional[str] = Field(None, description="output dir; default runs/<dataset>/<arch>/inverters/<layer>")

    @property
    def conditional(self) -> bool:
        return self.layer != UNCONDITIONAL

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return artifacts.inverter_dir(self.dataset, self.arch, self.layer, self.workspace)

    def model_path(self) -> Path:
        return Path(self.out_dir()) / "inverter.keras"


@dataclass
class InverterData:
    """The pipelines and facts a training run needs."""

    train: object  # tf.data.Dataset of ({"x", "h"}, x), repeated and batched
    validation: object  # tf.data.Dataset, batched, finite
    validation_arrays: dict  # {"x", "h"} NumPy, for exact per-image evaluation
    test_arrays: dict | None
    image_shape: tuple[int, int, int]
    h_shape: tuple[int, ...] | None
    source: dict


# --- data ---------------------------------------------------------------------------


def _carve(arrays: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    """Split in-memory arrays deterministically into (train, validation)."""
    n = len(arrays["x"])
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    val, train = order[:n_val], order[n_val:]
    return {k: v[train] for k, v in arrays.items()}, {k: v[val] for k, v in arrays.items()}


def _feature_arrays(config: InverterConfig) -> tuple[dict, dict, dict | None, dict]:
    """Return train/validation/test arrays {"x", "h"} and a provenance dict."""
    from invkeras.features import ExtractConfig, extract_features, open_features

    if config.features:
        path = Path(config.features)
        if path.is_dir() and (path / "train" / "manifest.json").exists():
            train = open_features(path / "train").load_all(config.train_examples)
            if (path / "validation" / "manifest.json").exists():
                val = open_features(path / "validation").load_all(config.eval_examples)
            else:
                train, val = _carve(train, 0.1, config.seed)
            test = open_features(path / "test").load_all(config.eval_examples) if (path / "test").exists() else None
        else:
            everything = open_features(path).load_all()
            train, val = _carve(everything, 0.1, config.seed)
            test = None
            if config.train_examples:
                train = {k: v[: config.train_examples] for k, v in train.items()}
        return train, val, test, {"features": str(path)}

    extract = ExtractConfig(
        dataset=config.dataset,
        data_dir=config.data_dir,
        arch=config.arch,
        model=config.model,
        layers=[config.layer],
        splits=["train", "validation", "test"],
        seed=config.seed,
        workspace=config.workspace,
    )
    manifests = extract_features(extract)[config.layer]
    train = open_features(manifests["train"].parent).load_all(config.train_examples)
    val = open_features(manifests["validation"].parent).load_all(config.eval_examples)
    test = open_features(manifests["test"].parent).load_all(config.eval_examples)
    source = {"dataset": config.dataset, "classifier": str(extract.model_path()), "layer": config.layer}
    return train, val, test, source


def _image_arrays(config: InverterConfig) -> tuple[dict, dict, dict, dict]:
    """Images only, for the unconditional model."""
    from invkeras.datasets import load_arrays

    def split(name, limit):
        x, _ = load_arrays(config.dataset, name, data_dir=config.data_dir, seed=config.seed, limit=limit)
        return {"x": x}

    return (
        split("train", config.train_examples),
        split("validation", config.eval_examples),
        split("test", config.eval_examples),
        {"dataset": config.dataset, "layer": UNCONDITIONAL},
    )


def inverter_arrays(config: InverterConfig) -> tuple[dict, dict, dict | None, dict]:
    """Train, validation and test arrays for an inverter config, plus where they came from."""
    if config.conditional or config.features:
        # An unconditional model given --features uses those images (and ignores h), so it
        # can be compared with a conditional model on exactly the same data and order.
        return _feature_arrays(config)
    return _image_arrays(config)


def make_inverter_data(config: InverterConfig) -> InverterData:
    import tensorflow as tf

    train, val, test, source = inverter_arrays(config)
    if len(train["x"]) < config.batch_size:
        raise InvkerasError(f"--batch-size {config.batch_size}: only {len(train['x'])} training examples")

    def to_inputs(batch):
        x = tf.cast(batch["x"], tf.float32)
        inputs = {"x": x}
        if "h" in batch:
            inputs["h"] = batch["h"]
        return inputs, x

    keep = ["x", "h"] if config.conditional else ["x"]
    train_ds = (
        tf.data.Dataset.from_tensor_slices({k: train[k] for k in keep})
        .shuffle(min(len(train["x"]), 20_000), seed=config.seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(config.batch_size, drop_remainder=True)
        .map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = (
        tf.data.Dataset.from_tensor_slices({k: val[k] for k in keep})
        .batch(config.batch_size)
        .map(to_inputs)
        .prefetch(tf.data.AUTOTUNE)
    )
    return InverterData(
        train=train_ds,
        validation=val_ds,
        validation_arrays={k: val[k] for k in keep},
        test_arrays={k: test[k] for k in keep} if test is not None else None,
        image_shape=tuple(int(d) for d in train["x"].shape[1:]),
        h_shape=tuple(int(d) for d in train["h"].shape[1:]) if config.conditional else None,
        source={**source, "train_examples": len(train["x"]), "validation_examples": len(val["x"])},
    )


# --- model --------------------------------------------------------------------------


def pixelcnn_config_for(config: InverterConfig, image_shape, h_shape):
    """The network config: the --scale preset, then any explicit overrides."""
    from invkeras.pixelcnn import PixelCNNConfig

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
    net = PixelCNNConfig.from_scale(
        config.scale,
        image_shape=tuple(image_shape),
        likelihood=likelihood,
        conditioning=conditioning,
        h_shape=tuple(h_shape) if h_shape else None,
    )
    overrides = {
        k: v
        for k, v in {
            "filters": config.filters,
            "nr_resnet": config.nr_resnet,
            "dropout_rate": config.dropout_rate,
            "h_dropout": config.h_dropout,
            "num_mixtures": config.num_mixtures,
        }.items()
        if v is not None
    }
    return PixelCNNConfig(**{**net.model_dump(), **overrides})  # re-validated


def build_inverter(net_config, *, learning_rate: float, lr_decay: float, jit_compile="false"):
    """The PixelCNN++ compiled with the exact NLL loss (nats per image) and the paper's optimiser."""
    import keras

    from invkeras.likelihoods import NegativeLogLikelihood
    from invkeras.pixelcnn import build_pixelcnn

    model = build_pixelcnn(net_config)
    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=1, decay_rate=lr_decay)
    jit = {"auto": "auto", "true": True, "false": False}.get(str(jit_compile).lower(), jit_compile)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=NegativeLogLikelihood(likelihood=net_config.likelihood, num_channels=net_config.image_shape[-1]),
        jit_compile=jit,
    )
    return model


# --- evaluation ---------------------------------------------------------------------


def saved_per_image_nll(model_path: str | Path, split: str) -> np.ndarray | None:
    """The per-image NLLs recorded when the inverter at `model_path` was trained, or None if
    that split was not recorded or the file belongs to another model."""
    model_path = Path(model_path)
    meta = artifacts.read_metadata(model_path) or {}
    token = (meta.get("results") or {}).get("per_image_nll_token")
    path = model_path.parent / PER_IMAGE_NLL_FILE
    if token is None or not path.is_file():
        return None
    with np.load(path) as saved:
        if str(saved["token"]) != token or split not in saved.files:
            return None
        return saved[split]


def per_image_nll_nats(model, net_config, arrays: dict, batch_size: int = 64) -> np.ndarray:
    """Exact -log p(x|h) in nats for every image (inference mode, no dropout)."""
    import keras

    from invkeras.likelihoods import log_prob_per_image

    out = []
    for start in range(0, len(arrays["x"]), batch_size):
        x = arrays["x"][start : start + batch_size].astype("float32")
        inputs = {"x": x}
        if "h" in arrays and net_config.conditioning != "none":
            inputs["h"] = arrays["h"][start : start + batch_size]
        params = model(inputs, training=False)
        logp = log_prob_per_image(params, keras.ops.convert_to_tensor(x), net_config.likelihood, net_config.image_shape[-1])
        out.append(np.asarray(keras.ops.convert_to_numpy(logp), dtype=np.float64))
    return -np.concatenate(out)


def summarize_nll(nll_nats: np.ndarray, image_shape) -> dict:
    """Mean NLL with its standard error and 95% interval over images, in nats and bits/dim."""
    n = len(nll_nats)
    mean = float(np.mean(nll_nats))
    se = float(np.std(nll_nats, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    dims = int(np.prod(image_shape))
    to_bpd = 1.0 / (dims * math.log(2))
    return {
        "n": n,
        "nll_nats": mean,
        "se_nats": se,
        "ci95_nats": [mean - 1.96 * se, mean + 1.96 * se],
        "bits_per_dim": mean * to_bpd,
        "se_bits_per_dim": se * to_bpd,
    }


# --- training -----------------------------------------------------------------------


@dataclass
class InverterResult:
    model_path: Path
    layer: str
    steps: int
    validation: dict
    test: dict | None
    seconds: float
    stopped_early: bool
    resumed_from_step: int = 0


def _callbacks(config: InverterConfig, net_config, out_dir: Path):
    import keras

    from invkeras.progress import RichProgressCallback

    dims = int(np.prod(net_config.image_shape))

    class BitsPerDim(keras.callbacks.Callback):
        """Adds bits/dim to the logs, derived from the NLL in nats (no second likelihood pass)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                for key in ("loss", "val_loss"):
                    if key in logs:
                        logs[key.replace("loss", "bpd")] = float(logs[key]) / (dims * math.log(2))

    class StopOnNonFinite(keras.callbacks.Callback):
        """Raise as soon as the loss is NaN/inf; the backup from the last good interval stays on disk."""

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"train-inverter layer '{config.layer}': loss became {float(loss)} at step "
                    f"{int(self.model.optimizer.iterations.numpy())}; the last good checkpoint is in "
                    f"{out_dir / 'backup'} (rerun with a lower --learning-rate to resume from it)"
                )

    return [
        BitsPerDim(),
        StopOnNonFinite(),
        # Kept until inverter.keras is written, so a kill during final evaluation loses nothing.
        keras.callbacks.BackupAndRestore(
            str(out_dir / "backup"), save_freq="epoch", double_checkpoint=True, delete_checkpoint=False
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        RichProgressCallback(description=f"inverter {config.layer}"),
    ]


def train_inverter(config: InverterConfig, *, callbacks=()) -> InverterResult:
    """Train one inverter end to end and write inverter.keras plus its metadata.

    Extra Keras `callbacks` run after the built-in ones (tests use this to simulate a kill).
    """
    import keras

    from invkeras.distribution import get_strategy, strategy_scope
    from invkeras.weight_norm import initialize_weight_norm

    started = time.time()
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        data = make_inverter_data(config)
        net_config = pixelcnn_config_for(config, data.image_shape, data.h_shape)
        out_dir = config.out_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        strategy = get_strategy(config.strategy)
        with strategy_scope(strategy):
            model = build_inverter(
                net_config, learning_rate=config.learning_rate, lr_decay=config.lr_decay, jit_compile=config.jit_compile
            )
            # Data-dependent weight-norm initialisation: one batch, before fit. A resumed run
            # overwrites these values from the backup at the start of fit.
            init_inputs, _ = next(iter(data.train))
            initialize_weight_norm(model, init_inputs)
        epochs = max(1, math.ceil(config.max_steps / config.steps_per_checkpoint))
        history = model.fit(
            data.train,
            validation_data=data.validation,
            epochs=epochs,
            steps_per_epoch=config.steps_per_checkpoint,
            callbacks=[*_callbacks(config, net_config, out_dir), *callbacks],
            shuffle=False,  # the pipeline shuffles already
            verbose=0,
        )
    finally:
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("float32")

    steps = int(model.optimizer.iterations.numpy())
    # history.epoch lists the epochs run in this call; a resumed run starts past 0.
    first_epoch = history.epoch[0] if history.epoch else epochs
    last_epoch = history.epoch[-1] if history.epoch else epochs - 1
    per_image = {"validation": per_image_nll_nats(model, net_config, data.validation_arrays)}
    if data.test_arrays is not None:
        per_image["test"] = per_image_nll_nats(model, net_config, data.test_arrays)
    validation = summarize_nll(per_image["validation"], data.image_shape)
    test = summarize_nll(per_image["test"], data.image_shape) if "test" in per_image else None
    if not math.isfinite(validation["nll_nats"]):
        raise NonFiniteLossError(f"train-inverter layer '{config.layer}': validation NLL is not finite")

    path = config.model_path()
    # The per-image NLLs, kept so that estimate-mi need not evaluate the model again. The token,
    # also in the model's metadata, ties them to this model (a killed retrain can leave new
    # NLLs beside an old model).
    token = uuid.uuid4().hex
    nll_path = artifacts.save_npz_atomic(out_dir / PER_IMAGE_NLL_FILE, token=np.array(token), **per_image)
    artifacts.write_metadata(nll_path, kind="per-image-nll", config=config, seed=config.seed, data=data.source,
                             results={split: len(v) for split, v in per_image.items()}, inverter=str(path))
    with artifacts.atomic_path(path) as tmp:
        model.save(tmp)
    seconds = time.time() - started
    artifacts.write_metadata(
        path,
        kind="inverter",
        config=config,
        seed=config.seed,
        data=data.source,
        results={"validation": validation, "test": test, "steps": steps, "seconds": seconds,
                 "resumed_from_step": first_epoch * config.steps_per_checkpoint, "per_image_nll_token": token},
        network=net_config,
        layer=config.layer,
        image_shape=list(data.image_shape),
        h_shape=list(data.h_shape) if data.h_shape else None,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
    )
    shutil.rmtree(out_dir / "backup", ignore_errors=True)  # only once the artefact is complete
    return InverterResult(
        model_path=path,
        layer=config.layer,
        steps=steps,
        validation=validation,
        test=test,
        seconds=seconds,
        stopped_early=last_epoch + 1 < epochs,
        resumed_from_step=first_epoch * config.steps_per_checkpoint,
    )


def load_inverter(path: str | Path):
    """Load an inverter and the network config it was built with (from its metadata)."""
    import keras

    import invkeras.pixelcnn  # noqa: F401  (registers the custom layers)
    from invkeras.pixelcnn import PixelCNNConfig

    path = Path(path)
    if path.is_dir():
        path = path / "inverter.keras"
    if not path.exists():
        raise InvkerasError(f"--inverter {path}: file not found (train one with `invkeras train-inverter`)")
    meta = artifacts.read_metadata(path)
    if meta is None or meta.get("kind") != "inverter":
        raise InvkerasError(f"--inverter {path}: no inverter metadata beside it ({artifacts.metadata_path(path).name})")
    model = keras.saving.load_model(path, compile=False)
    return model, PixelCNNConfig(**meta["network"]), meta
