"""The report's built-in sections, one builder per artefact family, registered in report order.

    10 Classifiers             classifier                    (checkpoints go to "Other artefacts")
    20 Inverters               inverter                      (every inverter kind, one table)
    30 Information estimates   mi-estimate
    40 Plots                   (figures drawn from the three above)
    50 Representation-space distances   representation-comparison
    60 Samples                 inversion-samples, inversion-samples-with-reconstruction
    70 Features                features
    80 Recipes                 recipe-run

Nothing here depends on which inverter kinds exist: an inverter's kind, its headline measure
and whether it has a pixel likelihood (`nll_nats`) all come from its metadata, normalised by
`invkeras.reports.collect.inverter_metadata`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from invkeras.reports.collect import (
    CHECKPOINT_STEP,
    Artifact,
    RunContents,
    checkpoint_step,
    find_classifier,
    find_inverter,
    regime,
)
from invkeras.reports.plots import order_layers, plot_accuracy, plot_nce_by_layer, plot_nce_over_training
from invkeras.reports.sections import Image, Section, Table, fmt, measure, pm, register_section

# --- classifiers --------------------------------------------------------------------


def classifier_rows(contents: RunContents) -> list[dict]:
    """One dict per trained classifier (final models only), with the table's columns as keys."""
    rows = []
    for artifact in contents.of_kind("classifier"):
        config, results = artifact.config, artifact.results
        rows.append({
            "dataset": config.get("dataset"), "arch": config.get("arch"), "regime": regime(artifact.meta),
            "test accuracy": results.get("test_accuracy"), "best val accuracy": results.get("best_val_accuracy"),
            "epochs": results.get("epochs"), "steps": results.get("steps"),
            "seconds": results.get("seconds"),  # not every version records it
            "train examples": config.get("train_examples"), "dropout": config.get("dropout"),
            "checkpoints": ", ".join(str(CHECKPOINT_STEP.search(c).group(1).lstrip("0") or "0")
                                     for c in results.get("checkpoints") or [] if CHECKPOINT_STEP.search(c)),
            "path": artifact.rel,
        })
    return rows


@register_section(order=10, kinds=("classifier",))
def classifiers_section(contents: RunContents, out_stem: Path) -> Section | None:
    """Every trained classifier: accuracy, training length, regime and saved checkpoints."""
    classifiers = classifier_rows(contents)
    if not classifiers:
        return None
    columns = ["dataset", "arch", "regime", "test accuracy", "best val accuracy", "epochs", "steps", "seconds",
               "train examples", "dropout", "checkpoints", "path"]
    rows = [[fmt(r[c], 4) if "accuracy" in c else fmt(r[c], 1) for c in columns] for r in classifiers]
    return Section("Classifiers", tables=[Table("Classifiers", columns, rows)],
                   provenance=contents.of_kind("classifier"))


# --- inverters ----------------------------------------------------------------------


def held_out(inverter: Artifact) -> tuple[str | None, dict]:
    """('test'|'validation', summary) from an inverter's results; test preferred, a headline required."""
    for split in ("test", "validation"):
        summary = inverter.results.get(split)
        if isinstance(summary, dict) and isinstance(summary.get("headline"), dict):
            return split, summary
    return None, {}


@dataclass
class InverterInfo:
    """An inverter with what the report derives about it: its classifier, checkpoint step, held-out summary."""

    artifact: Artifact
    kind: str
    layer: str
    dataset: str
    arch: str
    classifier: Path | None
    classifier_meta: dict | None
    step: int | None
    regime: str
    split: str | None
    summary: dict

    @property
    def nll(self) -> float | None:
        """Held-out NLL in nats per image, for kinds with a pixel likelihood (else None)."""
        return self.summary.get("nll_nats")


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
            artifact=artifact, kind=str(artifact.meta.get("inverter_kind") or config.get("kind") or "?"), layer=layer,
            dataset=dataset, arch=str(config.get("arch") or "?"), classifier=classifier,
            classifier_meta=classifier_meta, step=checkpoint_step(classifier, classifier_meta),
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


@register_section(order=20, kinds=("inverter",))
def inverters_section(contents: RunContents, out_stem: Path) -> Section | None:
    """All inverters, of every kind, in one table with each kind's own headline measure."""
    infos = inverter_infos(contents)
    if not infos:
        return None
    columns = ["layer", "kind", "dataset", "arch", "classifier", "step", "regime", "held-out", "headline",
               "value ± SE", "bits/dim", "n", "steps", "seconds", "path"]
    layer_order = order_layers(i.layer for i in infos)
    infos = sorted(infos, key=lambda i: (i.dataset, i.arch, i.regime, -1 if i.step is None else i.step,
                                         layer_order.index(i.layer), i.kind, i.artifact.rel))
    rows = []
    for i in infos:
        headline = i.summary.get("headline") or {}
        rows.append([i.layer, i.kind, i.dataset, i.arch, _classifier_label(i, contents), fmt(i.step),
                     i.regime if i.classifier_meta else "", i.split or "", fmt(headline.get("name")),
                     measure(headline.get("value"), headline.get("se")), fmt(i.summary.get("bits_per_dim"), 4),
                     fmt(i.summary.get("n")), fmt(i.artifact.results.get("steps")),
                     fmt(i.artifact.results.get("seconds"), 1), i.artifact.rel])
    intro = ("Each inverter's headline measure on held-out data (the test split when there is one), ± standard error, "
             "as its kind reports it: for a pixel likelihood, the NLL H*(x|h) in nats per image (an upper bound on "
             "H(x|h), with bits/dim); for a point estimate, its reconstruction error. Headlines of different names are "
             "not comparable. Layer 'none' is the unconditional model, whose NLL estimates H(x).")
    return Section("Inverters", intro=intro, tables=[Table("Inverters", columns, rows)],
                   provenance=[i.artifact for i in infos])


# --- information estimates ----------------------------------------------------------


def mi_tables(contents: RunContents) -> list[dict]:
    """Each MI estimate: its file, reference layer, H(x) if known, and rows (as written by estimate_mi)."""
    tables = []
    for artifact in contents.of_kind("mi-estimate"):
        try:
            payload = json.loads(artifact.path.read_text())
        except (OSError, ValueError):
            contents.skip(f"{artifact.rel}: MI estimate unreadable")
            continue
        rows = [r for r in payload.get("rows") or [] if isinstance(r, dict)]
        reference = artifact.config.get("reference")
        # The inverters of the rows, found in the run directory (None where not found).
        inverters = [find_inverter(row.get("inverter"), contents) for row in rows]
        # The run it belongs to: the inverters' arch, else the default layout runs/<dataset>/<arch>/mi/<split>.json.
        archs = {a.config.get("arch") for a in inverters if a is not None and a.config.get("arch")}
        arch = archs.pop() if len(archs) == 1 else ("architectures" if archs else None)
        where = Path(artifact.rel).parent
        where = where.parent if where.name == "mi" else where
        tables.append({
            "artifact": artifact, "split": payload.get("split"), "dataset": payload.get("dataset"),
            "arch": arch or artifact.path.parent.parent.name, "where": where.as_posix(),
            "entropy_nats": payload.get("entropy_nats"), "reference": reference, "rows": rows, "inverters": inverters,
            "data_processing": payload.get("data_processing") if isinstance(payload.get("data_processing"), dict)
            else None,
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


SEED_HEADERS = ["seeds", "95% interval with the seeds' spread"]
SEEDS_NOTE = ("the 95% interval counts the test images only; the one with the seeds' spread adds the variance between "
              "training runs of the layer's seeds (a t-interval, Welch-Satterthwaite degrees of freedom)")


def seed_cells(row: dict) -> list[str]:
    """A row's seeds and its interval with the seeds' spread (empty for a layer of one seed)."""
    low, high = row.get("ci95 low (seeds)"), row.get("ci95 high (seeds)")
    return [fmt(row.get("n_seeds") or 1), f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""]


def data_processing_notes(checked: dict | None) -> list[str]:
    """The data-processing check of a table: each breach, with what it means, or nothing."""
    if not checked or not checked.get("breaches"):
        return []
    from invkeras.analyses.data_processing import MEANING

    pairs = ", ".join(f"{b.get('deeper')} above {b.get('shallower')} by {fmt(b.get('excess'), 3)} "
                      f"(± {fmt(b.get('half_width'), 3)})" for b in checked["breaches"] if isinstance(b, dict))
    return [f"data-processing check: {pairs}: {MEANING}"]


@register_section(order=30, kinds=("mi-estimate",))
def information_section(contents: RunContents, out_stem: Path) -> Section | None:
    """The `estimate-mi` tables: NCE, paired differences to a reference layer, estimates and bounds on I(x;h)."""
    tables = mi_tables(contents)
    if not tables:
        return None
    section = Section("Information estimates",
                      intro="From `invkeras estimate-mi`: all inverters of a table evaluated on the same held-out "
                            "images. NCE = -H*(x|h); NCE - NCE(ref) has a paired SE; H*(x) - H*(x|h) is an estimate "
                            "of I(x;h), not a bound; H(x) - H*(x|h) is a lower bound on I(x;h) where H(x) is exact.")
    columns = ["layer", "n", "H*(x|h) nats ± SE", "95% interval", "bits/dim", "NCE nats", "NCE - NCE(ref) ± SE",
               "H*(x) - H*(x|h) estimate", "H(x) - H*(x|h) bound on I"]
    for table in tables:
        rows = []
        seeded = any((r.get("n_seeds") or 1) > 1 for r in table["rows"])
        for r in table["rows"]:
            low, high = r.get("ci95 low"), r.get("ci95 high")
            rows.append([
                fmt(r.get("layer")), fmt(r.get("n_images")), pm(r.get("H*(x|h) nats"), r.get("se nats")),
                f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else "",
                fmt(r.get("bits/dim"), 4), fmt(r.get("NCE nats")), pm(r.get("NCE - NCE(ref)"), r.get("se (paired)")),
                fmt(r.get("H*(x) - H*(x|h) [estimate]")), fmt(r.get("H(x) - H*(x|h) [lower bound on I]")),
            ] + (seed_cells(r) if seeded else []))
        notes = [f"reference layer: {table['reference']}" if table["reference"] else "no reference layer"]
        if table["entropy_nats"] is not None:
            notes.append(f"H(x) = {fmt(table['entropy_nats'], 3)} nats exactly")
        if seeded:
            notes.append(SEEDS_NOTE)
        notes += data_processing_notes(table["data_processing"])
        notes.append(f"file: {table['artifact'].rel}")
        section.tables.append(Table(table["title"], columns + (SEED_HEADERS if seeded else []), rows,
                                    note="; ".join(notes)))
        section.provenance.append(table["artifact"])
    return section


# --- plots --------------------------------------------------------------------------


@register_section(order=40)
def plots_section(contents: RunContents, out_stem: Path) -> Section | None:
    """The report's figures, written beside it: NCE by layer, classifier accuracy, NCE over training.

    NCE needs a pixel likelihood, so only inverters whose summary has `nll_nats` are drawn.
    A figure with no data is left out.
    """
    infos = [i for i in inverter_infos(contents) if i.nll is not None]
    tables = mi_tables(contents)
    images = []

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
        rows += [{"group": f"{i.dataset} / {i.arch}", "layer": i.layer, "H*(x|h) nats": i.nll,
                  "se": i.summary.get("se_nats")} for i in infos if i.step is None]
    if rows:
        path = out_stem.with_name(out_stem.name + "-nce-by-layer.png")
        try:
            plot_nce_by_layer(rows, path, reference=reference)
        except ValueError:
            reference = None
            plot_nce_by_layer(rows, path)
        seeded = any((r.get("n_seeds") or 1) > 1 for r in rows)
        caption = (f"NCE = -H*(x|h) per layer from {source}, ±1 SE"
                   + (" over the test images (narrow bars) and with the spread between training seeds (wide, light "
                      "bars) for layers with several seeds" if seeded else "")
                   + (f", relative to {reference} (paired SE), as in Nash et al. (2019) Fig. 5a" if reference else "")
                   + ". Higher means the layer keeps more information about the input.")
        images.append(Image("NCE by layer", path, caption))

    accuracy = [{"label": f"{r['dataset']} / {r['arch']}" + ("" if r["regime"] == "normal" else f" ({r['regime']})"),
                 "accuracy": r["test accuracy"]} for r in classifier_rows(contents) if r["test accuracy"] is not None]
    if accuracy:
        path = out_stem.with_name(out_stem.name + "-accuracy.png")
        plot_accuracy(accuracy, path)
        images.append(Image("Classifier test accuracy", path,
                            "Test accuracy of each trained classifier (best validation epoch)."))

    points = nce_over_training_points(infos, tables)
    if len({p["step"] for p in points}) >= 2:
        path = out_stem.with_name(out_stem.name + "-nce-over-training.png")
        plot_nce_over_training(points, path)
        images.append(Image("NCE over training", path,
                            "NCE of inverters trained on classifier checkpoints against the checkpoint's training "
                            "step, ±1 SE (Nash et al. (2019) Fig. 5b); dashed lines: overfitted regime. Where a "
                            "checkpoint's layer has several training seeds, its point is their mean and its bar "
                            "counts the spread between them."))
    return Section("Plots", images=images) if images else None


def nce_over_training_points(infos: list, tables: list[dict]) -> list[dict]:
    """One point per (layer, regime, checkpoint step): from a checkpoint's MI table where it has
    one (a layer's seeds are then one row, with the seed interval's standard error), else from
    the inverter's own held-out NLL."""
    info_of = {info.artifact.path: info for info in infos}
    points, covered = [], set()
    for table in tables:
        for row, artifact in zip(table["rows"], table["inverters"]):
            info = info_of.get(artifact.path) if artifact is not None else None
            if info is None or info.step is None or row.get("H*(x|h) nats") is None:
                continue
            key = (info.layer, info.regime, info.step)
            if key not in covered:
                covered.add(key)
                se = row.get("se seeds+images nats") if row.get("se seeds+images nats") is not None else row.get("se nats")
                points.append({"step": info.step, "layer": info.layer, "regime": info.regime,
                               "nce": -row["H*(x|h) nats"], "se": se})
    points += [{"step": i.step, "layer": i.layer, "regime": i.regime, "nce": -i.nll, "se": i.summary.get("se_nats")}
               for i in infos if i.step is not None and (i.layer, i.regime, i.step) not in covered]
    return points


# --- representation-space distances (`invkeras compare`) ------------------------------


_COMPARISON_FACTS = ("layer", "split", "n_images", "samples_per_image", "feature_dims", "training_examples_searched",
                     "distance")


def comparison_payload(artifact: Artifact, contents: RunContents) -> dict | None:
    """A compare.json's content (rows as dicts); from its metadata if the file is unreadable."""
    try:
        payload = json.loads(artifact.path.read_text())
    except (OSError, ValueError):
        payload = None
    if not isinstance(payload, dict):
        if not isinstance(artifact.results.get("rows"), list):
            contents.skip(f"{artifact.rel}: comparison unreadable")
            return None
        payload = {**{k: artifact.meta.get(k) for k in _COMPARISON_FACTS}, "rows": artifact.results["rows"]}
    payload = dict(payload)
    payload["rows"] = [r for r in payload.get("rows") or [] if isinstance(r, dict)]
    return payload


def _is_old_format(payload: dict) -> bool:
    """Written before comparisons had one row per inverter: rows are methods (1NN, IM-S, IM-NN, ...)."""
    return any("method" in r for r in payload["rows"])


def _l1(stat: object, per_dim: bool = False) -> str:
    if not isinstance(stat, dict):
        return ""
    if per_dim:
        return measure(stat.get("mean_l1_per_dim"), stat.get("se_per_dim"))
    return pm(stat.get("mean_l1"), stat.get("se"))


def _mean_se(stat: object, scale: float = 1.0, digits: int | None = None, unit: str = "") -> str:
    """'mean ± se' of a {"mean", "se"} dict, times `scale` ('' for null); digits to suit the value by default."""
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return ""
    mean, se = scale * stat["mean"], None if stat.get("se") is None else scale * stat["se"]
    return (measure(mean, se) if digits is None else pm(mean, se, digits)) + unit


def _comparison_title(artifact: Artifact, payload: dict) -> str:
    return f"{Path(artifact.rel).parent.as_posix()}: layer {payload.get('layer')}, {payload.get('split')} split"


def _comparison_table(artifact: Artifact, payload: dict) -> Table:
    note = (f"n = {fmt(payload.get('n_images'))} held-out images, K = {fmt(payload.get('samples_per_image'))} samples "
            f"each, {fmt(payload.get('training_examples_searched'))} training images searched, "
            f"{fmt(payload.get('feature_dims'))} feature dimensions; distance: {fmt(payload.get('distance'))}; "
            f"file: {artifact.rel}")
    if _is_old_format(payload):
        columns = ["method", "n", "mean L1 ± SE", "per dim ± SE"]
        rows = [[fmt(r.get("method")), fmt(r.get("n")), _l1(r), _l1(r, per_dim=True)] for r in payload["rows"]]
        return Table(_comparison_title(artifact, payload), columns, rows,
                     note=note + " (written by an older `invkeras compare`: one row per method)")
    columns = ["inverter", "kind", "IM-S L1 ± SE", "IM-S per dim", "IM-NN L1 ± SE", "IM-NN per dim",
               "label agreement", "pixel L1 to input", "diversity pixel L1", "diversity h L1", "NLL nats ± SE"]
    nearest = payload.get("nearest_training")
    rows = [["1NN (training)", "", "", "", _l1(nearest), _l1(nearest, per_dim=True), "", "", "", "", ""]]
    for r in payload["rows"]:
        rows.append([fmt(r.get("label")), fmt(r.get("kind")), _l1(r.get("IM-S")), _l1(r.get("IM-S"), per_dim=True),
                     _l1(r.get("IM-NN")), _l1(r.get("IM-NN"), per_dim=True),
                     _mean_se(r.get("label_agreement"), 100, 1, "%"), _mean_se(r.get("pixel_l1_to_input")),
                     _mean_se(r.get("diversity_pixel_l1")),
                     _mean_se(r.get("diversity_h_l1")), _mean_se(r.get("nll_nats"), digits=2)])
    return Table(_comparison_title(artifact, payload), columns, rows,
                 note=note + "; 1NN (the nearest training image) is under the nearest-of columns (IM-NN)")


def _table1_cells(artifact: Artifact, payload: dict, contents: RunContents) -> tuple[str, dict[str, tuple[str, str]]]:
    """(1NN cell, {inverter label: (IM-S cell, IM-NN cell)}) of one comparison, in either format."""
    if _is_old_format(payload):
        by_method = {r.get("method"): r for r in payload["rows"]}
        inverter = find_inverter(artifact.config.get("inverter"), contents)
        label = str(inverter.meta.get("inverter_kind")) if inverter is not None else "inverter"
        cells = {label: (_l1(by_method.get("IM-S")), _l1(by_method.get("IM-NN")))}
        return _l1(by_method.get("1NN")), cells
    cells = {str(r.get("label") or r.get("kind") or "?"): (_l1(r.get("IM-S")), _l1(r.get("IM-NN")))
             for r in payload["rows"]}
    return _l1(payload.get("nearest_training")), cells


@register_section(order=50, kinds=("representation-comparison",))
def comparisons_section(contents: RunContents, out_stem: Path) -> Section | None:
    """Nash et al. (2019) Table 1 and Fig. 2: one table per compare.json, a summary across layers, top-k grids."""
    found = contents.of_kind("representation-comparison")
    comparisons = [(a, p) for a in found if a.path.suffix == ".json" for p in [comparison_payload(a, contents)]
                   if p is not None]
    grids = [a for a in found if a.path.suffix == ".png" and a.path.is_file()]
    if not comparisons and not grids:
        return None
    section = Section(
        "Representation-space distances",
        intro="Nash et al. (2019) Table 1, from `invkeras compare`: mean L1 distance ||h(x) - h(x')||_1 in the "
              "layer's space over held-out inputs x, where x' is the nearest training image in that space (1NN, "
              "exact), one sample of an inverter (IM-S), or the closest of its K samples (IM-NN); ± standard error, "
              "summed over the layer's features and per dimension. Label agreement: how often the classifier gives "
              "a sample the input's label. Diversity: mean L1 distance between samples of the same input, in pixels "
              "and in the layer's space; a diversity of 0 means a point estimate, which shows nothing of what the "
              "layer is invariant to.")
    layer_order = order_layers(str(p.get("layer")) for _, p in comparisons)
    comparisons.sort(key=lambda c: (str(c[0].data.get("dataset")), c[0].rel.split("/inverters/")[0],
                                    layer_order.index(str(c[1].get("layer"))), c[0].rel))
    if comparisons:
        summary_rows, labels = [], []
        for artifact, payload in comparisons:
            nearest, cells = _table1_cells(artifact, payload, contents)
            labels += [label for label in cells if label not in labels]
            summary_rows.append((artifact, payload, nearest, cells))
        columns = ["layer", "split", "n", "K", "dims", "1NN"]
        columns += [f"{label} {method}" for label in labels for method in ("IM-S", "IM-NN")] + ["path"]
        rows = [[fmt(p.get("layer")), fmt(p.get("split")), fmt(p.get("n_images")), fmt(p.get("samples_per_image")),
                 fmt(p.get("feature_dims")), nearest]
                + [cell for label in labels for cell in cells.get(label, ("", ""))] + [a.rel]
                for a, p, nearest, cells in summary_rows]
        section.tables.append(Table("Table 1: L1 distance in representation space", columns, rows,
                                    note=" ".join(label_agreement_notes(comparisons))))
        section.tables += [_comparison_table(a, p) for a, p in comparisons]

    # The top-k grids of a comparison (one per inverter) side by side; grids of no known comparison last.
    # Within a comparison, in the order of its rows.
    order = {(a.path.parent, str(r.get("label"))): (i, j) for i, (a, p) in enumerate(comparisons)
             for j, r in enumerate(p["rows"])}
    grids.sort(key=lambda g: (*order.get((g.path.parent, str(g.meta.get("label"))), (len(order), 0)), g.rel))
    for grid in grids:
        label = grid.meta.get("label") or grid.meta.get("inverter_kind") or grid.path.stem
        where = Path(grid.rel).parent.as_posix()
        section.images.append(Image(
            f"{where}: {label}", grid.path,
            f"{label}, layer {grid.meta.get('layer')}: top-k of the samples (left) and of the training images (right) "
            "by L1 in the layer's space; first column: the input", details=grid, row=where))
    section.provenance = [a for a, _ in comparisons]
    return section


def label_agreement_notes(comparisons: list[tuple[Artifact, dict]]) -> list[str]:
    """What label agreement says across the layers of each run's comparisons
    (<run>/comparisons/<layer>/compare.json), in its classifier's graph order
    (`invkeras.analyses.compare.label_agreement_in_chain`), or that no two layers differ beyond
    noise. Nothing where the layers are not one chain or the classifier is missing."""
    from invkeras import artifacts
    from invkeras.analyses.compare import label_agreement_in_chain

    by_run: dict[Path, dict[str, Path]] = {}
    for artifact, payload in comparisons:
        folder = artifact.path.parent
        if folder.parent.name == "comparisons" and payload.get("layer"):
            by_run.setdefault(folder.parent.parent, {})[str(payload["layer"])] = folder
    notes = []
    for run, folders in sorted(by_run.items()):
        found = label_agreement_in_chain(artifacts.classifier_of_run(run), folders)
        if found is not None:
            order, sentences = found
            notes.append(f"Label agreement across {' → '.join(order)}: " + ("; ".join(sentences) if sentences else
                         "no two layers differ beyond the 95% interval of their difference") + ".")
    return notes


# --- samples ------------------------------------------------------------------------


# Grids of samples beside a reconstruction; the legacy kind's reconstruction was always an MSE decoder's.
_WITH_RECONSTRUCTION = {"inversion-samples-with-reconstruction": None, "inversion-samples-with-mse": "mse"}


def _inverter_kind_of(artifact: Artifact, contents: RunContents) -> str | None:
    """The kind of inverter an artefact was drawn from: as recorded, else that of the inverter it names."""
    if artifact.meta.get("inverter_kind"):
        return str(artifact.meta["inverter_kind"])
    inverter = find_inverter(artifact.config.get("inverter"), contents)
    return None if inverter is None else str(inverter.meta.get("inverter_kind"))


@register_section(order=60, kinds=("inversion-samples", *_WITH_RECONSTRUCTION))
def samples_section(contents: RunContents, out_stem: Path) -> Section | None:
    """Sample grids of p(x | h(x)), with or without a reconstruction column, of every inverter kind."""
    grids = [a for a in contents.of_kind("inversion-samples", *_WITH_RECONSTRUCTION)
             if a.path.suffix == ".png" and a.path.exists()]
    if not grids:
        return None
    images = []
    for grid in grids:
        config, layer = grid.config, grid.meta.get("layer")
        kind = _inverter_kind_of(grid, contents)
        inverter = f"{kind} inverter" if kind else "inverter"
        if grid.kind in _WITH_RECONSTRUCTION:
            reconstruction = grid.meta.get("reconstruction_kind") or _WITH_RECONSTRUCTION[grid.kind] or "?"
            caption = (f"layer {layer}: input | {reconstruction} reconstruction | samples of the {inverter}; "
                       f"reconstruction MSE {fmt(grid.results.get('reconstruction_mse_per_pixel'), 1)} per pixel")
        else:
            caption = (f"layer {layer}, {inverter}: {config.get('num_samples')} samples per input"
                       + (f" for {config.get('num_inputs')} held-out {config.get('split')} inputs (first column: "
                          "the input)" if layer not in (None, "none") else "")
                       + f"; seed {grid.meta.get('seed')}"
                       + (f", method {config['method']}" if config.get("method") else ""))
        l1 = grid.results.get("mean_l1_h_sample_to_h_x")
        if l1 is not None:
            caption += f"; mean L1 |h(sample) - h(x)| = {fmt(l1, 4)}"
        images.append(Image(grid.rel, grid.path, caption, details=grid))
    return Section("Samples", intro="Samples of p(x | h(x)): what the layer cannot tell apart.", images=images)


# --- features and recipes -----------------------------------------------------------


@register_section(order=70, kinds=("features",))
def features_section(contents: RunContents, out_stem: Path) -> Section | None:
    """Extracted feature sets: layer, split, size and the model they came from."""
    features = contents.of_kind("features")
    if not features:
        return None
    columns = ["layer", "split", "examples", "h shape", "model", "path"]
    rows = [[fmt(a.meta.get("layer")), fmt(a.meta.get("split")), fmt(a.results.get("num_examples")),
             "x".join(str(d) for d in a.results.get("h_shape") or []), fmt(Path(str(a.meta.get("model") or "")).name),
             str(Path(a.rel).parent)] for a in features]
    return Section("Features", tables=[Table("Extracted features", columns, rows)], provenance=features)


@register_section(order=80, kinds=("recipe-run",))
def recipes_section(contents: RunContents, out_stem: Path) -> Section | None:
    """Recipe runs: each step's command, status, time and summary."""
    recipes = contents.of_kind("recipe-run")
    if not recipes:
        return None
    section = Section("Recipes")
    for recipe in recipes:
        try:
            record = json.loads(recipe.path.read_text())
        except (OSError, ValueError):
            record = {}
        steps = record.get("steps") or []
        rows = [[fmt(s.get("name")), fmt(s.get("command")), fmt(s.get("status")), fmt(s.get("seconds"), 1),
                 fmt(s.get("summary"))] for s in steps if isinstance(s, dict)]
        name = (record.get("recipe") or {}).get("name") or recipe.path.stem
        section.tables.append(Table(f"recipe {name}", ["step", "command", "status", "seconds", "summary"], rows,
                                    note=f"source: {record.get('source') or '?'}; record: {recipe.rel}"))
        section.provenance.append(recipe)
    return section
