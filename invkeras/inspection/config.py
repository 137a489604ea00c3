"""`InspectConfig`: everything `invkeras inspect` takes, and the budget's notation (30m, 90s, 1h)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from invkeras import artifacts
from invkeras.errors import InvkerasError

AUTO = "auto"
DEFAULT_BUDGET = "30m"
_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str | float | int, *, flag: str = "--budget") -> float:
    """Seconds from '30m', '90s', '1h', '1h30m' or '2m30s' (a bare number needs a unit)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)  # already seconds (a config written by the library)
    else:
        compact = str(text).strip().lower().replace(" ", "")
        match = _DURATION.match(compact)
        if not compact or not match or not any(match.groupdict().values()):
            hint = " (a bare number needs a unit)" if re.fullmatch(r"\d+(\.\d+)?", compact) else ""
            raise InvkerasError(f"{flag} {text}: not a duration{hint}; write e.g. 30m, 90s, 1h or 1h30m")
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        seconds = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    if seconds <= 0:
        raise InvkerasError(f"{flag} {text}: the duration must be more than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """'1h05m', '4m10s', '42s': how the plan and the report write a duration."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class InspectConfig(BaseModel):
    """Settings of `invkeras inspect`: the model and images, what to invert, the time budget.

    With `features`, the representations come from the user (one extract directory or `.npz`
    of x and h per layer, under that directory, named after the layer), so a model from any
    framework can be inspected; `model` and `dataset` are then optional.
    """

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(None, description="the classifier: a .keras file or a run directory")
    dataset: Optional[str] = Field(None, description="its images: a dataset spec, e.g. npz:my_images.npz")
    layers: Optional[list[str]] = Field(None, description="layers to invert; default: each conv block's output, "
                                                          "the last hidden dense layer and the logits")
    kinds: list[str] = Field(default_factory=lambda: [AUTO], description="inverter kinds, or auto")
    budget: float = Field(default_factory=lambda: parse_duration(DEFAULT_BUDGET),
                          description="the whole run's wall-clock budget in seconds (the CLI takes 30m, 90s, 1h)")
    out: Optional[str] = Field(None, description="output directory; default <workspace>/<dataset>/inspect")
    workspace: str = Field(str(artifacts.DEFAULT_WORKSPACE), description="root of the default output directory")
    seed: int = 0
    data_dir: Optional[str] = Field(None, description="TFDS data directory holding prepared datasets")
    features: Optional[str] = Field(None, description="a directory with one extract directory or .npz of x and h "
                                                      "per layer (representations from any framework)")
    eval_examples: int = Field(500, gt=0, description="held-out images each model is evaluated on")
    grid_inputs: int = Field(8, gt=0, description="rows of each sample grid")
    grid_samples: int = Field(8, gt=0, description="samples per row of each sample grid")
    compare_images: int = Field(64, gt=0, description="held-out images of the representation-space comparison")
    compare_samples: int = Field(4, ge=2, description="samples per image of the comparison (>= 2, for diversity)")

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value):
        return parse_duration(value)

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        kinds = [str(k).strip() for k in value if str(k).strip()]
        return kinds or [AUTO]

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        if value is None:
            return None
        return [str(k).strip() for k in value if str(k).strip()] or None

    @model_validator(mode="after")
    def _what_to_inspect(self):
        if self.features is None and (self.model is None or self.dataset is None):
            missing = " and ".join(f"--{name}" for name in ("model", "dataset") if getattr(self, name) is None)
            raise InvkerasError(f"inspect: give {missing} (the classifier and its images), or --features DIR")
        if AUTO in self.kinds and len(self.kinds) > 1:
            raise InvkerasError(f"--kinds {','.join(self.kinds)}: 'auto' stands alone; name the kinds or write auto")
        return self

    @property
    def auto_kinds(self) -> bool:
        return self.kinds == [AUTO]

    @property
    def dataset_label(self) -> str:
        """The dataset as a folder name: its slug, or the features directory's name."""
        if self.dataset:
            return artifacts.dataset_slug(self.dataset)
        return f"features-{Path(str(self.features)).name}"

    def command_line(self) -> str:
        """The `invkeras inspect` command line that asks for this config (options at their default left out)."""
        parts = ["invkeras inspect"]
        for name in ("model", "dataset", "features", "data_dir", "out"):
            if getattr(self, name) is not None:
                parts.append(f"--{name.replace('_', '-')} {getattr(self, name)}")
        if self.layers:
            parts.append(f"--layers {','.join(self.layers)}")
        parts.append(f"--kinds {','.join(self.kinds)}")
        parts.append(f"--budget {format_duration(self.budget)} --seed {self.seed}")
        return " ".join(parts)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.workspace) / self.dataset_label / "inspect"
