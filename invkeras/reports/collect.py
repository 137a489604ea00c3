"""Collecting a run directory's artefacts for the report, and linking them to each other.

`collect(run_dir)` walks a workspace (`runs/`) or one run (`runs/<dataset>/<arch>/`) and
returns every artefact that has a `*.meta.json` beside it, as an `Artifact` (path, metadata,
display path). Nothing here knows how a kind is shown: that is the sections' job
(`invkeras.reports.sections`).

Inverters are the one kind whose metadata is normalised on the way in
(`inverter_metadata`), so the report reads a single contract whatever the inverter's kind
and however old the workspace. The functions below it link an inverter to the classifier
(or classifier checkpoint) it inverts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.reports.plots import PLOT_KIND

REPORT_KIND = "report"
# Never reported on: reports' own outputs (a rerun would otherwise list the previous report and
# its plots), and per-image arrays whose summaries the inverter table already shows.
SKIP_KINDS = {REPORT_KIND, PLOT_KIND, "per-image-nll"}
CHECKPOINT_STEP = re.compile(r"step-(\d+)\.keras$")


@dataclass
class Artifact:
    """One artefact on disk and its metadata (for inverters, normalised by `inverter_metadata`)."""

    path: Path  # the artefact (file or directory), absolute
    meta: dict
    rel: str  # path relative to the run directory, for display

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind") or "unknown")

    @property
    def config(self) -> dict:
        config = self.meta.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def results(self) -> dict:
        results = self.meta.get("results")
        return results if isinstance(results, dict) else {}

    @property
    def data(self) -> dict:
        data = self.meta.get("data")
        return data if isinstance(data, dict) else {}


@dataclass
class RunContents:
    """Everything `collect` found: the artefacts, and notes on what it had to skip."""

    run_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable files, with the reason

    def of_kind(self, *kinds: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind in kinds]

    def skip(self, note: str) -> None:
        """Record something that could not be shown (once, however many sections notice it)."""
        if note not in self.skipped:
            self.skipped.append(note)


# --- the inverter metadata contract -------------------------------------------------


def _legacy_inverters() -> dict[str, tuple[str, list[str]]]:
    """What an inverter recorded before inverters had kinds was, as each kind declares it:
    {artefact kind: (inverter kind, capabilities)}."""
    from invkeras.inverters import inverter_kinds

    return {cls.legacy_artifact_kind: (name, sorted(cls.capabilities))
            for name, cls in inverter_kinds().items() if cls.legacy_artifact_kind}
# Summaries written before headlines: (headline name, value key, SE key), the first present wins.
_LEGACY_HEADLINES = (("NLL nats", "nll_nats", "se_nats"), ("MSE per pixel", "mse_per_pixel", "se"))


def inverter_metadata(meta: dict) -> dict | None:
    """An inverter's metadata in the current contract, or None if `meta` is not an inverter's.

    The contract: kind "inverter", `inverter_kind` (the kind's name), `capabilities`, and
    results whose held-out summaries each have `n` and `headline` {name, value, se}.
    Older metadata is brought up to it: kind "inverter" without `inverter_kind` was a
    PixelCNN, kind "mse-decoder" an MSE decoder, and a summary without a headline gets one
    from its NLL or MSE. The original kind, where different, is kept as `recorded_kind`.
    """
    kind = meta.get("kind")
    if kind != "inverter" and kind not in _legacy_inverters():
        return None
    meta = dict(meta)
    if kind != "inverter" or not meta.get("inverter_kind"):
        if kind not in _legacy_inverters():
            return None
        legacy_kind, capabilities = _legacy_inverters()[kind]
        meta.setdefault("capabilities", list(capabilities))
        meta["inverter_kind"] = legacy_kind
        if kind != "inverter":
            meta["recorded_kind"], meta["kind"] = kind, "inverter"
    meta["inverter_kind"] = str(meta["inverter_kind"])
    results = meta.get("results")
    if isinstance(results, dict):
        results = dict(results)
        for split, summary in list(results.items()):
            if isinstance(summary, dict) and not isinstance(summary.get("headline"), dict):
                for name, value, se in _LEGACY_HEADLINES:
                    if summary.get(value) is not None:
                        results[split] = {**summary, "headline": {"name": name, "value": summary[value],
                                                                  "se": summary.get(se)}}
                        break
        meta["results"] = results
    return meta


# --- collecting ---------------------------------------------------------------------


def collect(run_dir: str | Path) -> RunContents:
    """Every artefact under `run_dir` that has metadata (temporary and resume files excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise InvkerasError(f"report: run directory {run_dir} not found")
    if not run_dir.is_dir():
        raise InvkerasError(f"report: {run_dir} is not a directory")
    root = run_dir.resolve()
    contents = RunContents(run_dir=root)
    for meta_path in sorted(root.rglob(f"*{artifacts.META_SUFFIX}")):
        relative = meta_path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or "backup" in relative.parts[:-1]:
            continue  # a temporary name (mid-write) or resume state
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            contents.skip(f"{relative}: unreadable metadata ({exc.__class__.__name__})")
            continue
        if not isinstance(meta, dict) or meta.get("kind") in SKIP_KINDS:
            continue
        meta = inverter_metadata(meta) or meta
        artifact = meta_path.with_name(meta_path.name[: -len(artifacts.META_SUFFIX)])
        contents.artifacts.append(Artifact(artifact, meta, str(relative)[: -len(artifacts.META_SUFFIX)]))
    if not contents.artifacts:
        raise InvkerasError(
            f"report: no artefacts in {run_dir} (no *.meta.json files); point it at a workspace such as runs/ "
            "or a run such as runs/procedural/conv"
        )
    return contents


# --- linking artefacts to each other -------------------------------------------------


def _candidate_paths(path_text: str) -> list[Path]:
    """Where a recorded classifier path may be: as recorded (a .keras file or a run dir)."""
    path = Path(path_text)
    if path.suffix == ".keras":
        return [path]
    return [artifacts.classifier_of_run(path), path / "model.keras"]


def _common_suffix(a: Path, b: Path) -> int:
    n = 0
    for x, y in zip(reversed(a.parts), reversed(b.parts)):
        if x != y:
            break
        n += 1
    return n


def match_artifact(path: Path, candidates: list[Artifact], min_parts: int = 4) -> Artifact | None:
    """The candidate that is `path`: the same file if it exists here, else the one sharing the
    longest path ending (at least `min_parts` parts, or all of a shorter `path`), if unique.

    Recorded paths are often relative to wherever a command ran, so an exact match alone
    would miss them when the report runs elsewhere.
    """
    if path.exists():
        resolved = path.resolve()
        for artifact in candidates:
            if artifact.path.resolve() == resolved:
                return artifact
    scored = sorted(((_common_suffix(a.path, path), i) for i, a in enumerate(candidates)), reverse=True)
    if not scored:
        return None
    best, index = scored[0]
    if best < min(min_parts, len(path.parts)) or (len(scored) > 1 and scored[1][0] == best):
        return None
    return candidates[index]


def find_inverter(path_text: str | None, contents: RunContents) -> Artifact | None:
    """The inverter a recorded path (its directory or model file) points to, if it is in the run."""
    if not path_text:
        return None
    path = Path(str(path_text))
    path = path if path.suffix == ".keras" else path / "inverter.keras"
    return match_artifact(path, contents.of_kind("inverter"), min_parts=5)


def find_classifier(path_text: str | None, contents: RunContents) -> tuple[Path | None, dict | None]:
    """The classifier (final model or checkpoint) an inverter was trained on, and its metadata.

    Looked up among the run directory's classifiers first, then read from disk.
    """
    if not path_text:
        return None, None
    known = contents.of_kind("classifier", "classifier-checkpoint")
    for candidate in _candidate_paths(path_text):
        artifact = match_artifact(candidate, known)
        if artifact is not None:
            return artifact.path, artifact.meta
    for candidate in _candidate_paths(path_text):
        if candidate.is_file():
            return candidate.resolve(), artifacts.read_metadata(candidate)
    return Path(path_text), None


def checkpoint_step(path: Path | None, meta: dict | None) -> int | None:
    """The training step of a classifier checkpoint (None for a final model)."""
    if meta and meta.get("kind") == "classifier-checkpoint":
        step = (meta.get("results") or {}).get("step")
        if step is not None:
            return int(step)
    if path is not None:
        match = CHECKPOINT_STEP.search(path.name)
        if match:
            return int(match.group(1))
    return None


def regime(classifier_meta: dict | None) -> str:
    """'normal', or 'overfitted' (the paper's few-examples, no-dropout regime)."""
    config = (classifier_meta or {}).get("config") or {}
    examples = config.get("train_examples")
    if examples is None:
        return "normal"
    return "overfitted" if not config.get("dropout", True) else f"{examples} examples"
