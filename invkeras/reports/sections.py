"""The report's sections: what they hold, and the registry that builds them.

A section is built by a *section builder*, a function `(contents, out_stem) -> Section |
list[Section] | None` that reads the collected artefacts (`RunContents`) and returns what to
show: tables, images and the artefacts whose provenance to give. `out_stem` is the report's
path without its suffix; a builder that draws figures writes them as `<out_stem>-<name>.png`.
Returning None (or an empty list) means "nothing of mine here", and no section appears.

Builders register themselves with `register_section(order, kinds)`:

    @register_section(order=65, kinds=("my-analysis",))
    def my_analysis(contents, out_stem):
        found = contents.of_kind("my-analysis")
        return Section("My analysis", tables=[...], provenance=found) if found else None

`order` places the section (the built-in ones use 10, 20, ... 80); `kinds` are the artefact
kinds the section shows, so they are not listed again under "Other artefacts", where every
kind no builder claims ends up. A new command can thus add its section from its own module,
as long as that module is imported before the report is written; the built-in sections
live in `invkeras.reports.builtin_sections`.

The formatting helpers (`fmt`, `pm`, `measure`) are here for builders to share, so numbers
look the same in every section.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invkeras.reports.collect import Artifact, RunContents


@dataclass
class Table:
    """A table of already formatted cells; `note` is a line of small print under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Image:
    """A PNG shown with a caption (embedded in the HTML, linked from the Markdown).

    Consecutive images of a section with the same non-empty `row` are shown side by side.
    `details` is the artefact whose provenance to give under the image.
    """

    title: str
    path: Path
    caption: str
    details: Artifact | None = None
    row: str = ""


@dataclass
class Section:
    """One heading of the report: an intro paragraph, links to its files, tables, images, then
    provenance blocks. `links` are (label, path) pairs, linked relative to the page."""

    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    provenance: list[Artifact] = field(default_factory=list)
    links: list[tuple[str, Path]] = field(default_factory=list)


SectionBuilder = Callable[[RunContents, Path], "Section | list[Section] | None"]


@dataclass
class Registration:
    """A registered section builder, where it goes, and which artefact kinds it shows."""

    order: int
    kinds: tuple[str, ...]
    builder: SectionBuilder

    @property
    def name(self) -> str:
        return f"{self.builder.__module__}.{self.builder.__qualname__}"


_REGISTRY: list[Registration] = []
OTHER_TITLE = "Other artefacts"


def register_section(order: int, kinds: tuple[str, ...] = ()) -> Callable[[SectionBuilder], SectionBuilder]:
    """Decorator: add a section builder to every report, at position `order`, claiming `kinds`.

    Registering a function of the same module and name again replaces the earlier one (so a
    reloaded module does not show its section twice). The builder is returned unchanged.
    """
    if isinstance(kinds, str):
        kinds = (kinds,)

    def decorate(builder: SectionBuilder) -> SectionBuilder:
        registration = Registration(int(order), tuple(str(k) for k in kinds), builder)
        _REGISTRY[:] = [r for r in _REGISTRY if r.name != registration.name]
        _REGISTRY.append(registration)
        return builder

    return decorate


def registered_sections() -> list[Registration]:
    """All registered builders, in the order their sections appear (ties: first registered first)."""
    _load_builtin_sections()
    return sorted(_REGISTRY, key=lambda r: r.order)


def claimed_kinds() -> set[str]:
    """The artefact kinds some registered section shows."""
    return {kind for r in registered_sections() for kind in r.kinds}


def build_sections(contents: RunContents, out_stem: Path) -> list[Section]:
    """Run every registered builder in order, then list what no builder claims under "Other artefacts"."""
    sections: list[Section] = []
    registrations = registered_sections()
    for registration in registrations:
        built = registration.builder(contents, out_stem)
        if built is None:
            continue
        sections += [built] if isinstance(built, Section) else [s for s in built if s is not None]
    claimed = {kind for r in registrations for kind in r.kinds}
    other = other_artifacts(contents, claimed)
    return sections + ([other] if other else [])


def other_artifacts(contents: RunContents, claimed: set[str]) -> Section | None:
    """Artefacts of kinds no section shows, with a one-line view of their results and any images;
    plus the notes of what could not be read at all."""
    others = [a for a in contents.artifacts if a.kind not in claimed]
    if not others and not contents.skipped:
        return None
    section = Section(OTHER_TITLE, provenance=others)
    rows = [[a.kind, a.rel, fmt(a.meta.get("created")), summary_text(a.results)] for a in others]
    if rows:
        section.tables.append(Table(OTHER_TITLE, ["kind", "path", "created", "results"], rows))
    section.images = [Image(a.rel, a.path, f"{a.kind} image", details=a) for a in others
                      if a.path.suffix == ".png" and a.path.is_file()]
    if contents.skipped:
        section.intro = "Skipped: " + "; ".join(contents.skipped)
    return section


def _load_builtin_sections() -> None:
    # Imported here, not at the top: the built-in sections import this module to register.
    import invkeras.reports.builtin_sections  # noqa: F401


# --- formatting cells ---------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    """A cell: '' for None, floats to `digits` decimals, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def pm(mean: Any, se: Any, digits: int = 2) -> str:
    """'mean ± se' ('' without a mean, just the mean without an SE)."""
    if mean is None:
        return ""
    return fmt(mean, digits) + ("" if se is None else f" ± {fmt(se, digits)}")


def decimals(value: Any) -> int:
    """Decimals that show at least three significant figures of `value`, and never fewer than two."""
    try:
        magnitude = abs(float(value))
    except (TypeError, ValueError):
        return 2
    if magnitude == 0 or not math.isfinite(magnitude):
        return 2
    return max(2, min(6, 2 - math.floor(math.log10(magnitude))))


def measure(mean: Any, se: Any) -> str:
    """'mean ± se' of a measure whose scale is not known in advance (an inverter's headline)."""
    if isinstance(mean, (int, float)) and not isinstance(mean, bool):
        mean = float(mean)
    if isinstance(se, (int, float)) and not isinstance(se, bool):
        se = float(se)
    return pm(mean, se, decimals(mean))


def summary_text(results: dict, limit: int = 160) -> str:
    """A short one-line view of a results dict: its scalars, and those one level down (test.mse=...)."""
    scalar = (int, float, str, bool)
    parts = []
    for key, value in results.items():
        if isinstance(value, scalar):
            parts.append(f"{key}={fmt(value, 4)}")
        elif isinstance(value, dict):
            parts += [f"{key}.{k}={fmt(v, 4)}" for k, v in value.items() if isinstance(v, scalar)]
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"
