"""Every setting of a factor INN run (`invkeras train-factors`, and a recipe's `train-factors` step)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from invkeras.factors.pairs import CLASS_BLOCK, FACTOR_PAIRS, LABEL_PAIRS

MODEL_FILE = "factor_inn.keras"
FACTORS_DIR = "factor_inn"
# Settings that do not change a run's trajectory: changing them may resume a backup.
NON_TRAJECTORY_FIELDS = ("max_steps", "patience", "out")


def checked_factor_names(names: list[str], pairs: str) -> list[str]:
    """The blocks' factors: for label pairs always ['class']; for procedural factor pairs the named
    ones (default all five), in the dataset's order; ValueError naming an unknown or repeated one."""
    from invkeras.data.procedural import FACTOR_NAMES

    names = [str(name) for name in names]
    if pairs == LABEL_PAIRS:
        if names and names != [CLASS_BLOCK]:
            raise ValueError(f"pairs 'labels' give one block, '{CLASS_BLOCK}'; {', '.join(names)} is not it")
        return [CLASS_BLOCK]
    unknown = [name for name in names if name not in FACTOR_NAMES]
    if unknown:
        raise ValueError(f"'{unknown[0]}' is not a procedural factor; choose from {', '.join(FACTOR_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError("a factor is named twice")
    chosen = set(names) or set(FACTOR_NAMES)
    return [name for name in FACTOR_NAMES if name in chosen]


def factor_dir_name(pairs: str, shuffled: bool) -> str:
    """The folder of a factor model under its representation: `factors`, `labels`, `factors-shuffled`."""
    return f"{pairs}-shuffled" if shuffled else pairs


class FactorConfig(BaseModel):
    """A factor INN over one representation: the source of r, the pairs, the network and the loop."""

    model_config = ConfigDict(extra="forbid")

    inverter: Optional[str] = Field(None, description="a cinn inverter (directory or inverter.keras): r = (h, v)")
    features: Optional[str] = Field(None, description="extract directory or .npz with x, h (and y): r = h")
    pairs: Literal["factors", "labels"] = Field(FACTOR_PAIRS, description="factors: the procedural dataset's own "
                                                "factors (a pair shares exactly one); labels: pairs of one class")
    factor: list[str] = Field(default_factory=list, validate_default=True,
                              description="the factors that get blocks (default: all five procedural factors; "
                                          "'class' for labels)")
    dims: dict[str, int] = Field(default_factory=dict, description="block size per factor (default: estimated "
                                                                   "from pairs); the residual takes the rest")
    shuffled: bool = Field(False, description="control: pairs whose shared-factor labels are shuffled")
    rho: float = Field(0.975, gt=0, lt=1, description="correlation of a shared factor's blocks in a pair")
    noise: float = Field(0.05, ge=0, description="dequantisation noise, std in standardised units of r")
    num_blocks: int = Field(8, gt=0, description="blocks of ActNorm, double coupling, permutation")
    hidden: int = Field(128, gt=0, description="width of the coupling networks")
    depth: int = Field(2, gt=0, description="hidden layers per scale/shift network")
    batch_size: int = Field(128, gt=0, description="pairs per step")
    learning_rate: float = Field(1e-3, gt=0)
    lr_decay: float = Field(0.9995, gt=0, le=1, description="multiplied into the learning rate every step")
    max_steps: int = Field(4000, gt=0)
    steps_per_checkpoint: int = Field(500, gt=0)
    patience: int = Field(5, ge=0, description="checkpoint intervals without validation improvement")
    num_pairs: int = Field(100_000, ge=2, description="training pairs (a fixed, seeded pool)")
    eval_pairs: int = Field(2000, ge=2, description="validation pairs")
    dim_pairs: int = Field(5000, ge=2, description="pairs for the dimensionality estimate")
    train_examples: Optional[int] = Field(None, gt=0, description="cap on the stored training examples used")
    init_examples: int = Field(1024, gt=0, description="rows for the data-dependent initialisation")
    seed: int = 0
    out: Optional[str] = Field(None, description="output directory (default: beside the representation, "
                                                 "<inverter dir>/factor_inn/<pairs>)")

    @field_validator("factor", mode="before")
    @classmethod
    def _as_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("factor")
    @classmethod
    def _known_factors(cls, value, info: ValidationInfo):
        return checked_factor_names(value, info.data.get("pairs", FACTOR_PAIRS))

    @model_validator(mode="after")
    def _one_source(self):
        if (self.inverter is None) == (self.features is None):
            raise ValueError("give exactly one of inverter (a cinn inverter) or features")
        return self

    @property
    def source(self) -> str:
        return str(self.inverter if self.inverter is not None else self.features)

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = factor_dir_name(self.pairs, self.shuffled)
        source = Path(self.source)
        if self.inverter is not None:
            base = source.parent if source.suffix == ".keras" else source
            return base / FACTORS_DIR / name
        if source.suffix == ".npz":
            return source.parent / f"{source.stem}-{FACTORS_DIR}" / name
        return source / FACTORS_DIR / name

    def model_path(self) -> Path:
        return self.out_dir() / MODEL_FILE

    def trajectory(self) -> dict:
        from invkeras.training import trajectory_settings

        return trajectory_settings(self, NON_TRAJECTORY_FIELDS)
