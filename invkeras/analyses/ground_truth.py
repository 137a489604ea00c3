"""Ground truth for the information bounds: H*(x|h) beside the exact H(x|h).

Every other estimate in invkeras is a bound whose slack is unknown: real images never tell
us H(x | h). The embedded procedural dataset does. Its image is a bijection of five
independent, uniform, discrete factors (shape, size, row, col, intensity; see
`invkeras.data.procedural`), so if h is a subset S of the factors,

    H(x | h) = sum over the factors f not in S of log |f|        (nats, exactly)

from 0 (h = all factors: x is determined) to log 6912 = 8.841 (h = none). This analysis
trains one conditional PixelCNN++ per subset on h = the one-hot codes of that subset's
factors, and sets its held-out test NLL, H*(x | h), beside the truth. The NLL is a
cross-entropy, so in expectation it can only lie above the truth; the gap is the slack of
the bound at that amount of unexplained entropy. A gap below minus three standard errors
would mean the likelihood is not normalised: the check `bound_holds` looks for it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.stats import standard_error

DATASET = "procedural"
ALL, NONE = "all", "none"
# From all factors to none, dropping the one with the fewest values first, so each step
# leaves more entropy to model.
DEFAULT_SUBSETS = (ALL, "shape+size+row+col", "shape+row+col", "row+col", "row", NONE)
TOLERANCE_NATS = 0.5  # the target gap
RESULT_FILE = "ground_truth.json"
PLOT_FILE = "ground_truth.png"


def parse_subset(text: str) -> tuple[str, ...]:
    """'all', 'none' or factor names joined by '+' (e.g. 'shape+size'), in the dataset's order."""
    from invkeras.data.procedural import FACTOR_NAMES

    text = str(text).strip()
    if text == ALL:
        return tuple(FACTOR_NAMES)
    if text == NONE:
        return ()
    names = [name.strip() for name in text.split("+")]
    unknown = [name for name in names if name not in FACTOR_NAMES]
    if unknown or not names:
        raise InvkerasError(f"factor subset '{text}': unknown factor {', '.join(unknown) or '(empty)'}; use "
                            f"'{ALL}', '{NONE}' or names from {', '.join(FACTOR_NAMES)} joined by '+'")
    if len(set(names)) != len(names):
        raise InvkerasError(f"factor subset '{text}': a factor is named twice")
    return tuple(name for name in FACTOR_NAMES if name in names)


def subset_name(factors: tuple[str, ...]) -> str:
    from invkeras.data.procedural import FACTOR_NAMES

    return ALL if len(factors) == len(FACTOR_NAMES) else "+".join(factors) if factors else NONE


def true_conditional_entropy(factors: tuple[str, ...]) -> float:
    """Exact H(x | factors) in nats: the log-count of the combinations the subset leaves open."""
    from invkeras.data.procedural import FACTOR_NAMES, FACTOR_SIZES

    return float(sum(math.log(size) for name, size in zip(FACTOR_NAMES, FACTOR_SIZES) if name not in factors))


def one_hot_factors(factor_indices: np.ndarray, factors: tuple[str, ...]) -> np.ndarray:
    """h: the concatenated one-hot codes of the chosen factors, float32 [n, sum of their sizes]."""
    from invkeras.data.procedural import FACTOR_NAMES, FACTOR_SIZES

    parts = [np.eye(FACTOR_SIZES[i], dtype=np.float32)[factor_indices[:, i]]
             for i, name in enumerate(FACTOR_NAMES) if name in factors]
    return np.concatenate(parts, axis=1)


class GroundTruthConfig(BaseModel):
    """`invkeras ground-truth`: one PixelCNN++ per factor subset, its test NLL beside the truth."""

    model_config = ConfigDict(extra="forbid")

    subsets: list[str] = Field(default_factory=lambda: list(DEFAULT_SUBSETS), min_length=1,
                               description="factor subsets: 'all', 'none' or names joined by '+'")
    kind: str = Field("pixelcnn", description="an inverter kind with a pixel likelihood")
    scale: str = "tiny"
    filters: Optional[int] = Field(16, gt=0)
    learning_rate: float = Field(0.003, gt=0)
    batch_size: int = Field(16, gt=0)
    max_steps: int = Field(1500, gt=0)
    steps_per_checkpoint: int = Field(500, gt=0)
    patience: int = Field(5, ge=0)
    eval_examples: int = Field(500, gt=1, description="validation and test images per subset")
    seed: int = 0
    workspace: str = "runs"
    name: str = Field("ground-truth", description="the folder under <workspace>/procedural/")
    out: Optional[str] = Field(None, description="default <workspace>/procedural/<name>")

    @field_validator("subsets")
    @classmethod
    def _known(cls, subsets: list[str]) -> list[str]:
        names = [subset_name(parse_subset(s)) for s in subsets]
        if len(set(names)) != len(names):
            raise InvkerasError("ground-truth: a factor subset is listed twice")
        return names

    @field_validator("kind")
    @classmethod
    def _has_pixel_likelihood(cls, kind: str) -> str:
        from invkeras.inverters.base import inverter_class

        if "pixel_log_prob" not in inverter_class(kind).capabilities:
            raise InvkerasError(f"ground-truth --kind {kind}: needs a kind with a pixel likelihood (pixel_log_prob)")
        return kind

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        from invkeras.artifacts import plain_name

        return Path(self.workspace) / DATASET / plain_name(self.name, "name")

    def model_paths(self) -> list[Path]:
        """Each subset's inverter file: with the table, what a finished run has written."""
        from invkeras.inverters.base import MODEL_FILE

        return [self.out_dir() / "inverters" / name / MODEL_FILE for name in self.subsets]


def _features_for(config: GroundTruthConfig, factors: tuple[str, ...]) -> Path:
    """The subset's (x, one-hot h) pairs for every split, in the extract format (reused if complete)."""
    from invkeras.data.features import MANIFEST, write_features
    from invkeras.data.procedural import load_split_with_factors

    root = config.out_dir() / "features" / subset_name(factors)
    for split in ("train", "validation", "test"):
        if artifacts.is_complete(root / split / MANIFEST):
            continue
        x, y, factor_indices = load_split_with_factors(split, seed=config.seed)
        write_features(root / split, layer=subset_name(factors), split=split, x=x,
                       h=one_hot_factors(factor_indices, factors), y=y, dataset=DATASET, config=config,
                       seed=config.seed, source=f"procedural factors {subset_name(factors)} (one-hot)")
    return root


def _inverter_for(config: GroundTruthConfig, factors: tuple[str, ...], progress: bool):
    from invkeras.inverters.base import config_for, load_inverter, train_inverter

    out = config.model_paths()[config.subsets.index(subset_name(factors))].parent
    options = dict(scale=config.scale, filters=config.filters, learning_rate=config.learning_rate,
                   batch_size=config.batch_size, max_steps=config.max_steps,
                   steps_per_checkpoint=config.steps_per_checkpoint, patience=config.patience,
                   eval_examples=config.eval_examples, seed=config.seed, workspace=config.workspace, out=str(out))
    if factors:
        options.update(features=str(_features_for(config, factors)), layer=subset_name(factors))
    else:  # h = nothing: the unconditional model of the same dataset and splits
        options.update(dataset=DATASET, layer="none")
    inverter_config = config_for(config.kind, options)
    path = inverter_config.model_path()
    if artifacts.is_complete(path):
        # Reuse a finished model only if it was trained exactly as asked now.
        saved = (artifacts.read_metadata(path) or {}).get("config") or {}
        wanted = inverter_config.model_dump(mode="json")
        changed = sorted(k for k, v in wanted.items() if k not in ("out", "workspace") and saved.get(k) != v)
        if changed:
            raise InvkerasError(f"ground-truth subset '{subset_name(factors)}': {path} was trained with other settings "
                                f"({', '.join(changed)}); delete {out} or give another --out")
    else:
        train_inverter(inverter_config, progress=progress)
    return load_inverter(path)


def ground_truth(config: GroundTruthConfig, *, progress: bool = True) -> dict:
    """Train (or reuse) one inverter per subset; return and save the table of truth vs bound."""
    from invkeras.data.procedural import ENTROPY_NATS

    rows = []
    for name in config.subsets:
        factors = parse_subset(name)
        inverter = _inverter_for(config, factors, progress)
        recorded = inverter.recorded_nll("test")
        if recorded is None:
            raise InvkerasError(f"ground-truth subset '{name}': {inverter.path} has no recorded test NLL; delete it "
                                "and rerun")
        nll = np.asarray(recorded[0], np.float64)
        truth, estimate, se = true_conditional_entropy(factors), float(nll.mean()), standard_error(nll)
        rows.append({"subset": name, "factors": list(factors), "true_nats": truth, "estimate_nats": estimate,
                     "se_nats": se, "gap_nats": estimate - truth, "num_images": int(len(nll)),
                     "within_tolerance": bool(abs(estimate - truth) <= TOLERANCE_NATS),
                     "bound_holds": bool(estimate >= truth - 3 * se),
                     "steps": inverter.results.get("steps"), "train_seconds": inverter.results.get("seconds")})
    result = {"dataset": DATASET, "entropy_nats": ENTROPY_NATS, "tolerance_nats": TOLERANCE_NATS, "rows": rows,
              "all_within_tolerance": all(r["within_tolerance"] for r in rows),
              "all_bounds_hold": all(r["bound_holds"] for r in rows)}
    out = config.out_dir()
    path = artifacts.write_json_atomic(out / RESULT_FILE, result)
    artifacts.write_metadata(path, kind="ground-truth", config=config, seed=config.seed, data={"dataset": DATASET},
                             results={"all_within_tolerance": result["all_within_tolerance"],
                                      "all_bounds_hold": result["all_bounds_hold"]})
    plot_ground_truth(rows, out / PLOT_FILE, config=config)
    result["path"], result["plot"] = str(path), str(out / PLOT_FILE)
    return result


def plot_ground_truth(rows: list[dict], path: Path, *, config: GroundTruthConfig) -> Path:
    """Truth and estimate (with 2 standard errors) per subset, most entropy left on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(rows, key=lambda r: r["true_nats"])
    positions = np.arange(len(order))
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    axes.plot(positions, [r["true_nats"] for r in order], "k_", markersize=28, mew=2, label="exact H(x|h)")
    axes.errorbar(positions, [r["estimate_nats"] for r in order], yerr=[2 * r["se_nats"] for r in order], fmt="o",
                  color="tab:blue", label="H*(x|h), test NLL ± 2 se")
    axes.fill_between(positions, [r["true_nats"] for r in order], [r["true_nats"] + TOLERANCE_NATS for r in order],
                      color="tab:green", alpha=0.15, step=None, label=f"within {TOLERANCE_NATS} nats")
    axes.set_xticks(positions, [r["subset"] for r in order], rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("nats per image")
    axes.set_xlabel("h = these procedural factors")
    axes.set_title("Bound vs exact conditional entropy (procedural)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with artifacts.atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)
    artifacts.write_metadata(path, kind="plot", config=config, seed=config.seed, data={"dataset": DATASET},
                             results={"plot": "ground-truth", "rows": rows})
    return path
