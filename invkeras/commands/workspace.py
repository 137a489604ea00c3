"""Steps that act on the inverters of a workspace, found by the layout
runs/<dataset>/<arch>/inverters/<kind>/<layer>: the schema they share, and what they read.

An analysis step (sample, compare, estimate-mi, edit, mix, attack) names layers, not paths:
the paths derive from the recipe's workspace, dataset and arch, so a recipe runs on any
dataset unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.commands.base import Command, StepAccess
from invkeras.errors import InvkerasError

DEFAULT_KIND = "pixelcnn"


def known_kind(kind: str) -> str:
    from invkeras.inverters import inverter_kinds

    if kind not in inverter_kinds():
        raise ValueError(f"unknown inverter kind {kind!r}; choose from {', '.join(sorted(inverter_kinds()))}")
    return kind


class InvertersInWorkspace(BaseModel):
    """Steps that act on inverters found by the layout runs/<dataset>/<arch>/inverters/<kind>/<layer>."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "procedural"
    arch: str = "conv"
    workspace: str = str(artifacts.DEFAULT_WORKSPACE)
    layers: list[str] = Field(min_length=1)
    kind: str = Field(DEFAULT_KIND, description="the inverter kind these steps read")

    @field_validator("kind")
    @classmethod
    def _kind_known(cls, value: str) -> str:
        return known_kind(value)

    @field_validator("dataset", "arch", "layers")
    @classmethod
    def _names_of_folders(cls, value, info):
        """The layout's folder names, checked as the layout checks them when it builds the paths,
        but when the step is read: not after the recipe's earlier steps have run."""
        try:
            for name in value if isinstance(value, list) else [value]:
                if info.field_name == "dataset":
                    artifacts.dataset_folder(name)
                else:
                    artifacts.plain_name(name, "layer" if info.field_name == "layers" else "arch")
        except InvkerasError as exc:
            raise ValueError(str(exc)) from None
        return value

    def inverter(self, layer: str, kind: str | None = None) -> Path:
        return artifacts.inverter_dir(self.dataset, self.arch, layer, self.workspace, kind=kind or self.kind)


class SeededInverters(InvertersInWorkspace):
    """Steps that read every seed of a layer's inverters (`estimate-mi`, `compare`): `seeds` maps
    '<kind>/<layer>' (with the arch in front, '<arch>/<kind>/<layer>', for another arch's run)
    to the seeds trained; a recipe fills it in from its `train-inverter` steps with `seeds`.
    The first seed's inverter is in the usual directory, the others beside it
    (`invkeras.analyses.seeds.seeded_dir`); a layer not in `seeds` has the one inverter."""

    seeds: Optional[dict[str, list[int]]] = Field(
        None, description="seeds of the inverters trained with several, by '<kind>/<layer>' (a recipe fills it in)")

    def seed_key(self, layer: str, kind: str | None = None, arch: str | None = None) -> str:
        key = f"{kind or self.kind}/{layer}"
        return key if arch in (None, self.arch) else f"{arch}/{key}"

    def inverters_of(self, layer: str, kind: str | None = None, arch: str | None = None) -> list[Path]:
        """The directories of every seed of one layer's inverter (one, without seeds)."""
        from invkeras.analyses.seeds import seeded_dir

        base = artifacts.inverter_dir(self.dataset, arch or self.arch, layer, self.workspace, kind=kind or self.kind)
        seeds = (self.seeds or {}).get(self.seed_key(layer, kind, arch))
        return [seeded_dir(base, seed, seeds[0]) for seed in seeds] if seeds else [base]

    def seed_candidates(self) -> list[tuple[str | None, str, str]]:
        """(arch, kind, layer) of every inverter the step reads."""
        return [(None, self.kind, layer) for layer in self.layers]

    def pick_up_seeds(self, seeded: dict[Path, list[int]]):
        """The step with `seeds` filled in from the recipe's seeded runs ({first seed's directory:
        seeds}), unless it sets its own."""
        if self.seeds is not None:
            return self
        found = {}
        for arch, kind, layer in self.seed_candidates():
            base = artifacts.inverter_dir(self.dataset, arch or self.arch, layer, self.workspace, kind=kind)
            if base.resolve() in seeded:
                found[self.seed_key(layer, kind, arch)] = seeded[base.resolve()]
        return self.model_copy(update={"seeds": found}) if found else self


class InverterAnalysis(Command):
    """A command that reads the workspace's inverters of its step's layers and writes beside them.

    It reads each inverter's `inverter.keras` (not the whole directory: other analyses write
    their grids beside it) and, for a conditional inverter, the classifier and the layer's
    features of its run; it writes its outputs."""

    @classmethod
    def inverters_read(cls, step) -> list[Path]:
        """The directory of every inverter the step loads (each ends in /<layer>)."""
        kinds = [step.kind] + ([step.reconstruction] if getattr(step, "reconstruction", None) else [])
        return [step.inverter(layer, kind) for layer in step.layers for kind in kinds]

    @classmethod
    def access(cls, step) -> StepAccess:
        from invkeras.inverters.base import MODEL_FILE

        reads = []
        for inverter in cls.inverters_read(step):
            run = inverter.parents[2]  # runs/<dataset>/<arch>/inverters/<kind>/<layer>
            reads.append(inverter / MODEL_FILE)
            if inverter.name != "none":  # the classifier's labels and the layer's features
                reads += [artifacts.classifier_of_run(run), run / "features" / inverter.name]
        return StepAccess(reads, cls.outputs(step))
