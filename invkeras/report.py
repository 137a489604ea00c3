"""One self-contained HTML report (plus a Markdown twin) of everything in a run directory.

`write_report(run_dir)` walks a workspace (`runs/`) or one run (`runs/<dataset>/<arch>/`),
finds every artefact by its `*.meta.json`, and writes

    <out>.html   tables, plots and sample grids; images embedded as base64 data URIs, inline
                 CSS, no external assets, so the one file can be mailed or archived
    <out>.md     the same content, with images referenced by relative path
    <out>-*.png  the plots (NCE by layer, test accuracy, NCE over training when several
                 classifier checkpoints have inverters), each with its own metadata

Each artefact's provenance (command, config, seed, time) is given in a collapsible block.
Artefact kinds this module does not know are listed, not rejected, so new commands can add
their own without breaking the report. The default output is `<run_dir>/report/report.html`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.plots import PLOT_KIND, order_layers, plot_accuracy, plot_nce_by_layer, plot_nce_over_training

REPORT_KIND = "report"
# Our own outputs: never reported on (a rerun would otherwise list the previous report).
# Reports' own outputs, and per-image arrays whose summaries the inverter tables already show.
_SKIP_KINDS = {REPORT_KIND, PLOT_KIND, "per-image-nll"}
_CHECKPOINT_STEP = re.compile(r"step-(\d+)\.keras$")


# --- collecting ---------------------------------------------------------------------


@dataclass
class Artifact:
    """One artefact on disk and its metadata."""

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
    run_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable metadata, with the reason

    def of_kind(self, *kinds: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind in kinds]


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
            contents.skipped.append(f"{relative}: unreadable metadata ({exc.__class__.__name__})")
            continue
        if not isinstance(meta, dict) or meta.get("kind") in _SKIP_KINDS:
            continue
        artifact = meta_path.with_name(meta_path.name[: -len(artifacts.META_SUFFIX)])
        contents.artifacts.append(Artifact(artifact, meta, str(relative)[: -len(artifacts.META_SUFFIX)]))
    if not contents.artifacts:
        raise InvkerasError(
            f"report: no artefacts in {run_dir} (no *.meta.json files); point it at a workspace such as runs/ "
            "or a run such as runs/procedural/conv"
        )
    return contents


# --- linking inverters to the classifiers they invert --------------------------------


def _candidate_paths(path_text: str) -> list[Path]:
    """Where a recorded classifier path may be: as recorded (a .keras file or a run dir)."""
    path = Path(path_text)
    if path.suffix == ".keras":
        return [path]
    return [path / "classifier" / "model.keras", path / "model.keras"]


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
        match = _CHECKPOINT_STEP.search(path.name)
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


# --- summarising --------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _pm(mean: Any, se: Any, digits: int = 2) -> str:
    if mean is None:
        return ""
    return _fmt(mean, digits) + ("" if se is None else f" ± {_fmt(se, digits)}")


def held_out(inverter: Artifact) -> tuple[str | None, dict]:
    """('test'|'validation', summary) from an inverter's metadata; test preferred."""
    for split in ("test", "validation"):
        summary = inverter.results.get(split)
        if isinstance(summary, dict) and summary.get("nll_nats") is not None:
            return split, summary
    return None, {}


@dataclass
class InverterInfo:
    artifact: Artifact
    layer: str
    dataset: str
    arch: str
    classifier: Path | None
    classifier_meta: dict | None
    step: int | None
    regime: str
    split: str | None
    summary: dict


def inverter_infos(contents: RunContents) -> list[InverterInfo]:
    infos = []
    for artifact in contents.of_kind("inverter"):
        config = artifact.config
        layer = str(artifact.meta.get("layer") or config.get("layer") or "?")
        classifier, classifier_meta = find_classifier(artifact.data.get("classifier"), contents)
        split, summary = held_out(artifact)
        dataset = str(config.get("dataset") or artifact.data.get("dataset") or "?")
        if config.get("features"):
            dataset = f"features:{Path(str(config['features'])).name}"
        infos.append(InverterInfo(
            artifact=artifact, layer=layer, dataset=dataset, arch=str(config.get("arch") or "?"),
            classifier=classifier, classifier_meta=classifier_meta, step=checkpoint_step(classifier, classifier_meta),
            regime=regime(classifier_meta), split=split, summary=summary,
        ))
    return infos


def _classifier_label(info: InverterInfo, contents: RunContents) -> str:
    if info.classifier is None:
        return "" if info.layer == "none" else "(features)"
    try:
        return str(info.classifier.relative_to(contents.run_dir))
    except ValueError:
        return str(info.classifier)


def classifier_rows(contents: RunContents) -> list[dict]:
    rows = []
    for artifact in contents.of_kind("classifier"):
        config, results = artifact.config, artifact.results
        rows.append({
            "dataset": config.get("dataset"), "arch": config.get("arch"), "regime": regime(artifact.meta),
            "test accuracy": results.get("test_accuracy"), "best val accuracy": results.get("best_val_accuracy"),
            "epochs": results.get("epochs"), "steps": results.get("steps"),
            "seconds": results.get("seconds"),  # not every version records it
            "train examples": config.get("train_examples"), "dropout": config.get("dropout"),
            "checkpoints": ", ".join(str(_CHECKPOINT_STEP.search(c).group(1).lstrip("0") or "0")
                                     for c in results.get("checkpoints") or [] if _CHECKPOINT_STEP.search(c)),
            "path": artifact.rel,
        })
    return rows


def mi_tables(contents: RunContents) -> list[dict]:
    """Each MI estimate: its file, reference layer, H(x) if known, and rows (as written by estimate_mi)."""
    tables = []
    for artifact in contents.of_kind("mi-estimate"):
        try:
            payload = json.loads(artifact.path.read_text())
        except (OSError, ValueError):
            contents.skipped.append(f"{artifact.rel}: MI estimate unreadable")
            continue
        rows = [r for r in payload.get("rows") or [] if isinstance(r, dict)]
        reference = artifact.config.get("reference")
        # The inverters of the rows, found in the run directory (None where not found).
        inverters = []
        for row in rows:
            inverter_file = Path(str(row.get("inverter") or ""))
            inverter_file = inverter_file if inverter_file.suffix == ".keras" else inverter_file / "inverter.keras"
            inverters.append(match_artifact(inverter_file, contents.of_kind("inverter"), min_parts=5)
                             if row.get("inverter") else None)
        # The run it belongs to: the inverters' arch, else the default layout runs/<dataset>/<arch>/mi/<split>.json.
        archs = {a.config.get("arch") for a in inverters if a is not None and a.config.get("arch")}
        arch = archs.pop() if len(archs) == 1 else ("architectures" if archs else None)
        where = Path(artifact.rel).parent
        where = where.parent if where.name == "mi" else where
        tables.append({
            "artifact": artifact, "split": payload.get("split"), "dataset": payload.get("dataset"),
            "arch": arch or artifact.path.parent.parent.name, "where": where.as_posix(),
            "entropy_nats": payload.get("entropy_nats"), "reference": reference, "rows": rows, "inverters": inverters,
        })
    # Tell apart tables that would otherwise have the same title (several checkpoints, or splits).
    titles = Counter((t["dataset"], t["arch"], t["split"]) for t in tables)
    splits: dict[tuple, set] = {}
    for table in tables:
        splits.setdefault((table["dataset"], table["arch"]), set()).add(table["split"])
    for table in tables:
        table["title"] = f"{table['dataset']} / {table['arch']}, {table['split']} split"
        table["label"] = f"{table['dataset']} / {table['arch']}"
        if len(splits[(table["dataset"], table["arch"])]) > 1:
            table["label"] += f" ({table['split']})"
        if titles[(table["dataset"], table["arch"], table["split"])] > 1:
            table["title"] += f" ({table['where']})"
            table["label"] += f" ({table['where']})"
    return tables


# --- plots --------------------------------------------------------------------------


def make_plots(contents: RunContents, infos: list[InverterInfo], tables: list[dict], out_stem: Path) -> list[dict]:
    """The report's figures: [{"title", "path", "caption"}]; a figure with no data is left out."""
    figures = []

    # NCE by layer: from the MI estimates (paired SEs); else straight from the inverters' metadata.
    # Estimates over classifier checkpoints belong to the NCE-over-training plot instead.
    step_of = {info.artifact.path: info.step for info in infos}
    by_layer = [t for t in tables
                if not any(a is not None and step_of.get(a.path) is not None for a in t["inverters"])]
    rows: list[dict] = []
    for table in by_layer:
        rows += [{**r, "group": table["label"], "reference": table["reference"]} for r in table["rows"] if "layer" in r]
    references = {t["reference"] for t in by_layer}
    reference = references.pop() if len(references) == 1 else None
    source = "the MI estimates"
    if not tables:
        source = "the inverters' held-out NLL"
        for info in infos:
            if info.step is None and info.summary:
                rows.append({"group": f"{info.dataset} / {info.arch}", "layer": info.layer,
                             "H*(x|h) nats": info.summary["nll_nats"], "se": info.summary.get("se_nats")})
    if rows:
        path = out_stem.with_name(out_stem.name + "-nce-by-layer.png")
        try:
            plot_nce_by_layer(rows, path, reference=reference)
        except ValueError:
            reference = None
            plot_nce_by_layer(rows, path)
        caption = (f"NCE = -H*(x|h) per layer from {source}, ±1 SE"
                   + (f", relative to {reference} (paired SE), as in Nash et al. (2019) Fig. 5a" if reference else "")
                   + ". Higher means the layer keeps more information about the input.")
        figures.append({"title": "NCE by layer", "path": path, "caption": caption})

    accuracy = [{"label": f"{r['dataset']} / {r['arch']}" + ("" if r["regime"] == "normal" else f" ({r['regime']})"),
                 "accuracy": r["test accuracy"]} for r in classifier_rows(contents) if r["test accuracy"] is not None]
    if accuracy:
        path = out_stem.with_name(out_stem.name + "-accuracy.png")
        plot_accuracy(accuracy, path)
        figures.append({"title": "Classifier test accuracy", "path": path,
                        "caption": "Test accuracy of each trained classifier (best validation epoch)."})

    points = [{"step": i.step, "layer": i.layer, "regime": i.regime, "nce": -i.summary["nll_nats"],
               "se": i.summary.get("se_nats")} for i in infos if i.step is not None and i.summary]
    if len({p["step"] for p in points}) >= 2:
        path = out_stem.with_name(out_stem.name + "-nce-over-training.png")
        plot_nce_over_training(points, path)
        figures.append({"title": "NCE over training", "path": path,
                        "caption": "NCE of inverters trained on classifier checkpoints against the checkpoint's "
                                   "training step, ±1 SE (Nash et al. (2019) Fig. 5b); dashed lines: overfitted regime."})
    return figures


# --- rendering ----------------------------------------------------------------------


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Image:
    title: str
    path: Path
    caption: str
    details: Artifact | None = None


@dataclass
class Section:
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    provenance: list[Artifact] = field(default_factory=list)


def build_sections(contents: RunContents, out_stem: Path) -> list[Section]:
    sections = []
    infos = inverter_infos(contents)
    tables = mi_tables(contents)

    classifiers = classifier_rows(contents)
    if classifiers:
        columns = ["dataset", "arch", "regime", "test accuracy", "best val accuracy", "epochs", "steps", "seconds",
                   "train examples", "dropout", "checkpoints", "path"]
        rows = [[_fmt(r[c], 4) if "accuracy" in c else _fmt(r[c], 1) for c in columns] for r in classifiers]
        sections.append(Section("Classifiers", tables=[Table("Classifiers", columns, rows)],
                                provenance=contents.of_kind("classifier")))

    if infos:
        columns = ["layer", "dataset", "arch", "classifier", "step", "regime", "held-out", "NLL nats ± SE", "bits/dim",
                   "n", "steps", "seconds", "scale", "path"]
        layer_order = order_layers(i.layer for i in infos)
        infos = sorted(infos, key=lambda i: (i.dataset, i.arch, i.regime, -1 if i.step is None else i.step,
                                             layer_order.index(i.layer), i.artifact.rel))
        rows = []
        for i in infos:
            s = i.summary
            rows.append([i.layer, i.dataset, i.arch, _classifier_label(i, contents), _fmt(i.step),
                         i.regime if i.classifier_meta else "", i.split or "", _pm(s.get("nll_nats"), s.get("se_nats")),
                         _fmt(s.get("bits_per_dim"), 4), _fmt(s.get("n")), _fmt(i.artifact.results.get("steps")),
                         _fmt(i.artifact.results.get("seconds"), 1), _fmt(i.artifact.config.get("scale")),
                         i.artifact.rel])
        sections.append(Section(
            "Inverters", intro="Held-out NLL H*(x|h) in nats per image (an upper bound on H(x|h)), on the test split "
                               "when there is one. Layer 'none' is the unconditional model, whose NLL estimates H(x).",
            tables=[Table("Inverters", columns, rows)], provenance=[i.artifact for i in infos]))

    if tables:
        section = Section("Information estimates",
                          intro="From `invkeras estimate-mi`: all inverters of a table evaluated on the same held-out "
                                "images. NCE = -H*(x|h); NCE - NCE(ref) has a paired SE; H*(x) - H*(x|h) is an estimate "
                                "of I(x;h), not a bound; H(x) - H*(x|h) is a lower bound on I(x;h) where H(x) is exact.")
        columns = ["layer", "n", "H*(x|h) nats ± SE", "95% interval", "bits/dim", "NCE nats", "NCE - NCE(ref) ± SE",
                   "H*(x) - H*(x|h) estimate", "H(x) - H*(x|h) bound on I"]
        for table in tables:
            rows = []
            for r in table["rows"]:
                low, high = r.get("ci95 low"), r.get("ci95 high")
                rows.append([
                    _fmt(r.get("layer")), _fmt(r.get("n_images")), _pm(r.get("H*(x|h) nats"), r.get("se nats")),
                    f"[{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else "",
                    _fmt(r.get("bits/dim"), 4), _fmt(r.get("NCE nats")), _pm(r.get("NCE - NCE(ref)"), r.get("se (paired)")),
                    _fmt(r.get("H*(x) - H*(x|h) [estimate]")), _fmt(r.get("H(x) - H*(x|h) [lower bound on I]")),
                ])
            title = table["title"]
            notes = [f"reference layer: {table['reference']}" if table["reference"] else "no reference layer"]
            if table["entropy_nats"] is not None:
                notes.append(f"H(x) = {_fmt(table['entropy_nats'], 3)} nats exactly")
            notes.append(f"file: {table['artifact'].rel}")
            section.tables.append(Table(title, columns, rows, note="; ".join(notes)))
            section.provenance.append(table["artifact"])
        sections.append(section)

    figures = make_plots(contents, infos, tables, out_stem)
    if figures:
        sections.append(Section("Plots", images=[Image(f["title"], f["path"], f["caption"]) for f in figures]))

    decoders = contents.of_kind("mse-decoder")
    if decoders:
        columns = ["layer", "dataset", "arch", "held-out", "MSE per pixel ± SE", "PSNR dB", "mean-image MSE", "n",
                   "steps", "seconds", "path"]
        rows = []
        for a in decoders:
            split = "test" if a.results.get("test") else "validation"
            s = a.results.get(split) or {}
            rows.append([_fmt(a.meta.get("layer")), _fmt(a.data.get("dataset") or a.config.get("dataset")),
                         _fmt(a.config.get("arch")), split, _pm(s.get("mse_per_pixel"), s.get("se"), 1),
                         _fmt(s.get("psnr_db"), 2), _fmt(s.get("mean_image_mse_per_pixel"), 1), _fmt(s.get("n")),
                         _fmt(a.results.get("steps")), _fmt(a.results.get("seconds"), 1), a.rel])
        sections.append(Section(
            "MSE decoders", intro="The point-estimate baseline x_hat = f(h) (`train-inverter --kind mse`), in 0..255 "
                                  "pixel units. Where a layer has discarded information it can only draw the average.",
            tables=[Table("MSE decoders", columns, rows)], provenance=decoders))

    comparisons = [a for a in contents.of_kind("representation-comparison") if a.path.suffix == ".json"]
    if comparisons:
        section = Section(
            "Representation-space distances",
            intro="Nash et al. (2019) Table 1, from `invkeras compare`: mean L1 distance ||h(x) - h(x')||_1 in the "
                  "layer's space over held-out inputs x, where x' is the nearest training image in that space (1NN, "
                  "exact), one inversion-model sample (IM-S), or the closest of K samples (IM-NN); ± standard error.")
        methods = []
        for a in comparisons:
            for row in a.results.get("rows") or []:
                if row.get("method") not in methods:
                    methods.append(row.get("method"))
        layer_order = order_layers(str(a.meta.get("layer")) for a in comparisons)
        comparisons = sorted(comparisons, key=lambda a: (str(a.data.get("dataset")), str(a.rel).split("/inverters/")[0],
                                                         layer_order.index(str(a.meta.get("layer")))))
        rows = []
        for a in comparisons:
            by_method = {r.get("method"): r for r in a.results.get("rows") or []}
            rows.append([_fmt(a.meta.get("layer")), _fmt(a.meta.get("n_images")), _fmt(a.meta.get("samples_per_image")),
                         _fmt(a.meta.get("training_examples_searched")), _fmt(a.meta.get("feature_dims"))]
                        + [_pm(by_method[m].get("mean_l1"), by_method[m].get("se"), 2) if m in by_method else ""
                           for m in methods] + [a.rel])
        section.tables.append(Table("L1 distance in representation space",
                                    ["layer", "n", "K", "train searched", "dims", *methods, "path"], rows))
        section.provenance = comparisons
        section.images = [Image(a.rel, a.path, "top-k of the samples (left) and of the training images (right) by L1 "
                                "in the layer's space; first column: the input", details=a)
                          for a in contents.of_kind("representation-comparison")
                          if a.path.suffix == ".png" and a.path.is_file()]
        sections.append(section)

    grids = [a for a in contents.of_kind("inversion-samples", "inversion-samples-with-mse")
             if a.path.suffix == ".png" and a.path.exists()]
    if grids:
        images = []
        for grid in grids:
            config = grid.config
            caption = (f"layer {grid.meta.get('layer')}: {config.get('num_samples')} samples per input"
                       + (f" for {config.get('num_inputs')} held-out {config.get('split')} inputs (first column: the input)"
                          if grid.meta.get("layer") not in (None, "none") else "")
                       + f"; seed {grid.meta.get('seed')}, method {config.get('method')}")
            if grid.kind == "inversion-samples-with-mse":
                caption = (f"layer {grid.meta.get('layer')}: input | MSE reconstruction | samples; "
                           f"reconstruction MSE {_fmt(grid.results.get('reconstruction_mse_per_pixel'), 1)} per pixel")
            l1 = grid.results.get("mean_l1_h_sample_to_h_x")
            if l1 is not None:
                caption += f"; mean L1 |h(sample) - h(x)| = {_fmt(l1, 4)}"
            images.append(Image(grid.rel, grid.path, caption, details=grid))
        sections.append(Section("Samples", intro="Samples of p(x | h(x)): what the layer cannot tell apart.",
                                images=images))

    features = contents.of_kind("features")
    if features:
        columns = ["layer", "split", "examples", "h shape", "model", "path"]
        rows = [[_fmt(a.meta.get("layer")), _fmt(a.meta.get("split")), _fmt(a.results.get("num_examples")),
                 "x".join(str(d) for d in a.results.get("h_shape") or []), _fmt(Path(str(a.meta.get("model") or "")).name),
                 str(Path(a.rel).parent)] for a in features]
        sections.append(Section("Features", tables=[Table("Extracted features", columns, rows)], provenance=features))

    recipes = contents.of_kind("recipe-run")
    if recipes:
        section = Section("Recipes")
        for recipe in recipes:
            try:
                record = json.loads(recipe.path.read_text())
            except (OSError, ValueError):
                record = {}
            steps = record.get("steps") or []
            rows = [[_fmt(s.get("name")), _fmt(s.get("command")), _fmt(s.get("status")), _fmt(s.get("seconds"), 1),
                     _fmt(s.get("summary"))] for s in steps if isinstance(s, dict)]
            name = (record.get("recipe") or {}).get("name") or recipe.path.stem
            section.tables.append(Table(f"recipe {name}", ["step", "command", "status", "seconds", "summary"], rows,
                                        note=f"source: {record.get('source') or '?'}; record: {recipe.rel}"))
            section.provenance.append(recipe)
        sections.append(section)

    known = {"classifier", "classifier-checkpoint", "inverter", "mi-estimate", "inversion-samples", "features",
             "recipe-run", "mse-decoder", "representation-comparison", "inversion-samples-with-mse"}
    others = [a for a in contents.artifacts if a.kind not in known]
    checkpoints = contents.of_kind("classifier-checkpoint")
    if others or checkpoints or contents.skipped:
        section = Section("Other artefacts")
        rows = [[a.kind, a.rel, _fmt(a.meta.get("created")), _summary(a.results)] for a in checkpoints + others]
        if rows:
            section.tables.append(Table("Other artefacts", ["kind", "path", "created", "results"], rows))
        section.images = [Image(a.rel, a.path, f"{a.kind} image", details=a) for a in others
                          if a.path.suffix == ".png" and a.path.is_file()]
        if contents.skipped:
            section.intro = "Skipped: " + "; ".join(contents.skipped)
        section.provenance = checkpoints + others
        sections.append(section)
    return sections


def _summary(results: dict, limit: int = 160) -> str:
    """A short one-line view of a results dict: its scalars, and those one level down (test.mse=...)."""
    scalar = (int, float, str, bool)
    parts = []
    for key, value in results.items():
        if isinstance(value, scalar):
            parts.append(f"{key}={_fmt(value, 4)}")
        elif isinstance(value, dict):
            parts += [f"{key}.{k}={_fmt(v, 4)}" for k, v in value.items() if isinstance(v, scalar)]
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _provenance_text(artifact: Artifact) -> tuple[str, str, str]:
    """(command, seed/data/created summary, config JSON) for a details block."""
    meta = artifact.meta
    facts = [f"kind {artifact.kind}", f"seed {_fmt(meta.get('seed'))}", f"created {_fmt(meta.get('created'))}"]
    versions = meta.get("versions") or {}
    if versions:
        facts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    config = json.dumps(meta.get("config"), indent=2, sort_keys=True, default=str)
    return str(meta.get("command") or ""), "; ".join(facts), config


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .88em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; image-rendering: pixelated; }
figcaption, .note { color: #555; font-size: .9em; }
details { margin: .2em 0; font-size: .88em; }
summary { cursor: pointer; }
pre, code { font-family: Menlo, Consolas, monospace; font-size: .92em; background: #f6f8fa; }
pre { padding: .6em; overflow-x: auto; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _details_html(artifact: Artifact) -> str:
    command, facts, config = _provenance_text(artifact)
    e = html.escape
    return (f"<details><summary>how <code>{e(artifact.rel)}</code> was made</summary>"
            f"<p><b>command</b></p><pre>{e(command)}</pre><p class=\"note\">{e(facts)}</p>"
            f"<p><b>config</b></p><pre>{e(config)}</pre></details>\n")


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{e(title)}</title>\n"
             f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n<p class=\"note\">{e(subtitle)}</p>\n"]
    parts.append("<ul>" + "".join(f"<li><a href=\"#s{i}\">{e(s.title)}</a></li>" for i, s in enumerate(sections))
                 + "</ul>\n")
    for i, section in enumerate(sections):
        parts.append(f"<h2 id=\"s{i}\">{e(section.title)}</h2>\n")
        if section.intro:
            parts.append(f"<p>{e(section.intro)}</p>\n")
        for table in section.tables:
            if len(section.tables) > 1 or table.title != section.title:
                parts.append(f"<h3>{e(table.title)}</h3>\n")
            parts.append("<table>\n<tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns) + "</tr>\n")
            for row in table.rows:
                parts.append("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>\n")
            parts.append("</table>\n")
            if table.note:
                parts.append(f"<p class=\"note\">{e(table.note)}</p>\n")
        for image in section.images:
            parts.append(f"<figure><h3>{e(image.title)}</h3><img src=\"{_data_uri(image.path)}\" alt=\"{e(image.title)}\">"
                         f"<figcaption>{e(image.caption)}</figcaption>\n")
            if image.details is not None:
                parts.append(_details_html(image.details))
            parts.append("</figure>\n")
        if section.provenance:
            parts.append("<h3>Provenance</h3>\n" + "".join(_details_html(a) for a in section.provenance))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, sections: list[Section], md_dir: Path) -> str:
    lines = [f"# {title}", "", f"_{subtitle}_", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        for table in section.tables:
            if len(section.tables) > 1 or table.title != section.title:
                lines += [f"### {table.title}", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.rows]
            lines.append("")
            if table.note:
                lines += [f"_{table.note}_", ""]
        for image in section.images:
            relative = Path(os.path.relpath(image.path, md_dir)).as_posix()
            lines += [f"### {image.title}", "", f"![{image.title}]({relative})", "", image.caption, ""]
        if section.provenance:
            lines += ["<details><summary>Provenance</summary>", ""]
            for artifact in section.provenance:
                command, facts, config = _provenance_text(artifact)
                lines += [f"- `{artifact.rel}`: `{command}` ({facts})", "", "  ```json"]
                lines += [f"  {line}" for line in config.splitlines()]
                lines += ["  ```", ""]
            lines += ["</details>", ""]
    return "\n".join(lines) + "\n"


# --- entry point --------------------------------------------------------------------


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write `<out>` (HTML, self-contained) and its Markdown twin; return both paths.

    `out` is the HTML path (default `<run_dir>/report/report.html`); the Markdown file and
    the plot PNGs are written beside it, sharing its stem.
    """
    contents = collect(run_dir)
    html_path = Path(out) if out else contents.run_dir / "report" / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        html_path = html_path.with_name(html_path.name + ".html")
    html_path = html_path.resolve()
    md_path = html_path.with_suffix(".md")
    out_stem = html_path.with_suffix("")

    sections = build_sections(contents, out_stem)
    kinds = Counter(a.kind for a in contents.artifacts)
    title = f"invkeras report: {Path(run_dir)}"
    subtitle = (f"{len(contents.artifacts)} artefacts in {contents.run_dir} ("
                + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")")
    artifacts.write_text_atomic(html_path, render_html(title, subtitle, sections))
    artifacts.write_text_atomic(md_path, render_markdown(title, subtitle, sections, md_path.parent))
    config = {"run_dir": str(Path(run_dir)), "out": str(html_path)}
    results = {"artifacts": len(contents.artifacts), "kinds": dict(kinds), "sections": [s.title for s in sections]}
    artifacts.write_metadata(html_path, kind=REPORT_KIND, config=config, results=results)
    artifacts.write_metadata(md_path, kind=REPORT_KIND, config=config, results=results)
    return html_path, md_path
