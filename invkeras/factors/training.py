"""Training a factor INN, saving it, and loading it back.

A run (`train_factors`):

    1. opens the representation (a cinn inverter's (h, v), or stored features) and its tables;
    2. draws three seeded sets of pairs from independent streams: a fixed pool of `num_pairs`
       training pairs, `eval_pairs` validation pairs and `dim_pairs` pairs for the
       dimensionality estimate (`dimensions.py`), which sizes the blocks unless `dims` does;
    3. initialises the INN from data (standardisation and ActNorm) and trains it in the shared,
       resumable loop (`invkeras.training`): the batches are rows of the pool, gathered into
       {"a": r_a, "b": r_b, "shared": one-hot shared block} by a pure function of the pool
       indices, and the dequantisation noise comes from a seed generator saved with the model,
       so a killed run resumes to exactly the weights of an uninterrupted one;
    4. scores the validation pairs (the pair NLL in nats per dimension under a fixed noise draw)
       and the block correlations: for pairs labelled as sharing factor F (the labels are shuffled
       in the control), the mean over block k's dimensions of the correlation between z~_a and
       z~_b (the loss asks for rho on the diagonal, 0 off it);
    5. writes `factor_inn.keras` atomically, then its metadata (the commit point), then drops the
       backup.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError, NonFiniteLossError
from invkeras.factors.config import MODEL_FILE, FactorConfig
from invkeras.factors.network import Compiled
from invkeras.factors.pairs import DIMENSION_STREAM, TRAIN_STREAM, VALIDATION_STREAM, Pairs, make_pairs

ARTIFACT_KIND = "factor-inn"
NOISE_STREAM = 15


@dataclass
class TrainedFactors:
    model_path: Path
    blocks: list[dict]
    dimensions: dict
    validation: dict
    steps: int
    seconds: float
    resumed_from_step: int
    stopped_early: bool


def pair_batch(r: np.ndarray, pairs: dict, num_blocks: int) -> dict:
    """{"a", "b", "shared"} for a batch of pair indices: the pair's rows of r and the one-hot shared block."""
    shared = np.zeros((len(pairs["a"]), num_blocks), np.float32)
    shared[np.arange(len(pairs["a"])), pairs["shared"]] = 1.0
    return {"a": r[pairs["a"]], "b": r[pairs["b"]], "shared": shared}


def block_correlations(z_a: np.ndarray, z_b: np.ndarray, shared: np.ndarray, block_names: list[str],
                       block_sizes: list[int], factor_names: list[str]) -> list[list[float | None]]:
    """[block][factor]: over pairs sharing the factor, the mean over the block's dimensions of the
    correlation between the pair members' z~ (None when fewer than 2 pairs share the factor)."""
    starts = np.cumsum([0, *block_sizes])
    matrix = []
    for k in range(len(block_names)):
        row = []
        for f in range(len(factor_names)):
            rows = np.flatnonzero(shared == f)
            if len(rows) < 2:
                row.append(None)
                continue
            a, b = z_a[rows, starts[k] : starts[k + 1]], z_b[rows, starts[k] : starts[k + 1]]
            a, b = a - a.mean(0), b - b.mean(0)
            corr = (a * b).mean(0) / np.maximum(a.std(0) * b.std(0), 1e-12)
            row.append(float(corr.mean()))
        matrix.append(row)
    return matrix


def train_factors(config: FactorConfig, *, hooks=(), progress: bool = True) -> TrainedFactors:
    """Train a factor INN on `config`'s representation and pairs; rerunning after a kill resumes."""
    import keras

    from invkeras.factors.dimensions import estimate_dimensions, given_dimensions
    from invkeras.factors.network import build_factor_model
    from invkeras.factors.representation import open_representation
    from invkeras.stats import standard_error
    from invkeras.training import BACKUP_DIR, Backup, CompiledModelTrainee, Schedule, train

    started = time.time()
    keras.utils.set_random_seed(config.seed)
    what = f"train-factors ({config.pairs} pairs) on {config.source}"
    representation = open_representation(inverter=config.inverter, features=config.features,
                                         train_examples=config.train_examples)
    train_table, val_table = representation.training_tables(config.pairs, config.train_examples)
    names = list(config.factor)
    train_keys = train_table.keys(config.pairs, what)
    val_keys = val_table.keys(config.pairs, what)

    def pairs_of(keys, n, stream) -> Pairs:
        return make_pairs(config.pairs, keys, names, n, config.seed, stream, shuffled=config.shuffled)

    pool = pairs_of(train_keys, config.num_pairs, TRAIN_STREAM)
    validation_pairs = pairs_of(val_keys, config.eval_pairs, VALIDATION_STREAM)
    # The estimate's pairs share F and draw the other factors independently: forcing them to differ
    # would anti-correlate them (covariance -Var/(|g| - 1)) and bias every score down.
    dim_pairs = make_pairs(config.pairs, train_keys, names, config.dim_pairs, config.seed, DIMENSION_STREAM,
                           others="independent")
    dim = representation.dim
    if config.dims:
        dimensions = given_dimensions(config.dims, names, dim)
    else:  # always from true pairs: the control changes the labels the loss sees, not the block sizes
        dimensions = estimate_dimensions(train_table.r[dim_pairs.a], train_table.r[dim_pairs.b], dim_pairs.shared,
                                         names)
    block_names, block_sizes = dimensions.names, dimensions.sizes

    model = build_factor_model(dim, block_names, block_sizes, num_blocks=config.num_blocks, hidden=config.hidden,
                               depth=config.depth, rho=config.rho, noise=config.noise, seed=config.seed,
                               learning_rate=config.learning_rate, lr_decay=config.lr_decay)
    rng = np.random.default_rng([config.seed, NOISE_STREAM])
    init_rows = rng.choice(len(train_table), min(len(train_table), config.init_examples), replace=False)
    init = train_table.r[np.sort(init_rows)]
    model.inn.initialize(init, config.noise * rng.standard_normal(init.shape))  # a resume overwrites these

    val_batch = pair_batch(val_table.r, validation_pairs.arrays(), len(block_names))
    val_noise = config.noise * rng.standard_normal((2, len(validation_pairs), dim)).astype(np.float32)
    val_inputs = {**val_batch, "noise_a": val_noise[0], "noise_b": val_noise[1]}

    def validation_nll() -> np.ndarray:
        return np.concatenate([np.asarray(model.predict_on_batch({k: v[i : i + 1024] for k, v in val_inputs.items()}))
                               for i in range(0, len(validation_pairs), 1024)])

    initial = float(np.mean(validation_nll()))
    trainee = CompiledModelTrainee(model, inputs=lambda batch: batch,
                                   targets=lambda batch: np.zeros(len(batch["a"]), "float32"),
                                   validate=lambda: {"val_loss": float(np.mean(validation_nll()))})
    schedule = Schedule(config.max_steps, config.steps_per_checkpoint, config.patience, config.batch_size, config.seed)
    out = config.model_path()
    outcome = train(trainee, pool.arrays(), schedule, out_dir=out.parent, settings=config.trajectory(), what=what,
                    hooks=hooks, progress=progress,
                    batch_transform=lambda batch, step: pair_batch(train_table.r, batch, len(block_names)),
                    non_finite_hint=lambda: "try a lower --learning-rate, fewer --num-blocks or more --noise")

    nll = validation_nll()
    if not np.all(np.isfinite(nll)):
        raise NonFiniteLossError(f"{what}: the validation pair NLL is not finite")
    encoder = Compiled(lambda r: model.inn(r)[0], [model.inn])
    correlations = block_correlations(encoder.apply_batched(val_table.r[validation_pairs.a]),
                                      encoder.apply_batched(val_table.r[validation_pairs.b]),
                                      validation_pairs.shared, block_names, block_sizes, names)
    validation = {"pair_nll_nats_per_dim": float(nll.mean()), "se": standard_error(nll), "n_pairs": len(nll),
                  "initial_pair_nll_nats_per_dim": initial, "block_correlations": correlations,
                  "rho": config.rho}
    starts = np.cumsum([0, *block_sizes])
    blocks = [{"name": n, "size": int(s), "start": int(starts[k])} for k, (n, s) in enumerate(zip(block_names,
                                                                                                   block_sizes))]
    seconds = time.time() - started
    with artifacts.atomic_path(out) as tmp:
        model.save(tmp)
    artifacts.write_metadata(
        out, kind=ARTIFACT_KIND, config=config, seed=config.seed, data=representation.describe(),
        layer=representation.layer, pairs=config.pairs, shuffled=config.shuffled, factors=names, blocks=blocks,
        dimensions=dimensions.as_dict(), history=outcome.history,
        results={"validation": validation, "steps": outcome.steps, "seconds": seconds, "best_step": outcome.best_step,
                 "resumed_from_step": outcome.resumed_from_step, "stopped_early": outcome.stopped_early,
                 "train_rows": len(train_table), "validation_rows": len(val_table)})
    Backup(out.parent / BACKUP_DIR).remove()  # only once the artefact is complete
    return TrainedFactors(out, blocks, dimensions.as_dict(), validation, outcome.steps, seconds,
                          outcome.resumed_from_step, outcome.stopped_early)


# --- loading --------------------------------------------------------------------------


class FactorModel:
    """A trained factor INN with its metadata: r <-> z~, its blocks, and its representation."""

    def __init__(self, model, meta: dict, path: Path):
        self.model, self.meta, self.path = model, meta, Path(path)

    @property
    def inn(self):
        return self.model.inn

    @property
    def config(self) -> FactorConfig:
        return FactorConfig(**self.meta["config"])

    @property
    def layer(self) -> str:
        return str(self.meta.get("layer"))

    @property
    def pairs(self) -> str:
        return str(self.meta.get("pairs"))

    @property
    def factors(self) -> list[str]:
        return list(self.meta.get("factors") or [])

    @property
    def block_names(self) -> list[str]:
        return list(self.inn.block_names)

    def block_slice(self, name: str) -> slice:
        if name not in self.block_names:
            raise InvkerasError(f"--factor {name}: factor model {self.path.parent} has no block '{name}'; its blocks "
                                f"are {', '.join(self.block_names)}")
        return self.inn.block_slice(name)

    @functools.cached_property
    def _encoder(self):
        return Compiled(lambda r: self.inn(r)[0], [self.inn])

    @functools.cached_property
    def _decoder(self):
        return Compiled(lambda z: self.inn.inverse(z), [self.inn])

    def encode(self, r: np.ndarray) -> np.ndarray:
        """z~ = T(r), float32 [N, dim] (no noise)."""
        return self._encoder.apply_batched(np.asarray(r, np.float32)).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """r = T^-1(z~)."""
        return self._decoder.apply_batched(np.asarray(z, np.float32)).astype(np.float32)

    def swap(self, z_a: np.ndarray, z_b: np.ndarray, name: str) -> np.ndarray:
        """z~_a with block `name` taken from z~_b."""
        out = np.array(z_a, np.float32, copy=True)
        part = self.block_slice(name)
        out[:, part] = z_b[:, part]
        return out

    @functools.cached_property
    def representation(self):
        """The representation the model was trained on, opened again from its source."""
        from invkeras.factors.representation import open_representation

        config = self.config
        representation = open_representation(inverter=config.inverter, features=config.features,
                                             train_examples=config.train_examples)
        if representation.dim != self.inn.dim:
            raise InvkerasError(f"factor model {self.path.parent}: its representation now has {representation.dim} "
                                f"dimensions, the model {self.inn.dim}; retrain it")
        return representation


def load_factor_model(path: str | Path, flag: str = "--factors") -> FactorModel:
    """A factor model from its directory or `factor_inn.keras`; one line when it is not one."""
    import invkeras.factors.network  # noqa: F401  (registers FactorINN, FactorPairModel)
    import invkeras.inverters.cinn.network  # noqa: F401  (ConditionalINN and its pieces)
    from invkeras.models import load_keras_model, model_file

    file = model_file(path, MODEL_FILE, flag=flag, missing=f"no {MODEL_FILE} (train one with `invkeras train-factors`)")
    meta = artifacts.read_metadata(file)
    if not meta or meta.get("kind") != ARTIFACT_KIND:
        raise InvkerasError(f"{flag} {file}: no factor INN metadata beside it ({artifacts.metadata_path(file).name})")
    model = load_keras_model(file, what="factor INN", flag=flag)
    return FactorModel(model, meta, file)
