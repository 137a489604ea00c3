"""The report of `invkeras inspect`: what each layer of one classifier keeps, read from its artefacts.

`write_inspect_report(facts)` writes `<out>/report.html` and its Markdown twin `report.md`:

    Reading          one paragraph in plain words: what the deepest layer still keeps (the
                     label agreement of its samples, its NCE relative to the first layer, the
                     diversity of its samples), and the classifier's test accuracy
    Layers           one row per layer: its shape, label agreement, diversity, distances in
                     its own space against the nearest training image, NCE
    Information      the estimate-mi table (H(x) beside it where it is exact) and NCE by layer
    Layer <name>     per layer: the sample grids (input | samples, and the MSE reconstruction
                     beside them) and the comparison's top-k grids, with its table
    Classifier, Plan and time   the accuracy; planned and reached steps and minutes

Images stay PNG files beside the page (linked, not inlined), so the page is light however
many layers there are. Every figure's caption gives the command that draws it again and its
seed; its provenance (the recorded command, config and versions) folds out under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invkeras import artifacts
from invkeras.reports.collect import Artifact
from invkeras.reports.render import render_html, render_markdown
from invkeras.reports.sections import Image, Section, Table, fmt, measure, pm

REPORT_KIND = "report"
HTML_NAME = "report.html"


@dataclass
class LayerFacts:
    """One inspected layer and where its artefacts are."""

    name: str
    role: str
    shape: tuple
    grids: list[Path] = field(default_factory=list)  # samples.png / samples_reconstruction.png of its inverters
    comparison: Path | None = None  # compare.json
    topk_grids: list[Path] = field(default_factory=list)


@dataclass
class ModelRow:
    """One trained model: planned against reached."""

    kind: str
    layer: str
    planned_steps: int | None
    steps: int
    planned_seconds: float | None
    seconds: float | None
    stopped_by: str
    headline: dict | None = None


@dataclass
class InspectFacts:
    """Everything the report shows, gathered by the run."""

    out_dir: Path
    model: str
    model_path: str
    dataset: str
    budget: float
    spent: float
    seed: int
    command: str
    kinds: list[str]
    layers: list[LayerFacts]
    information: Path | None  # mi/test.json
    entropy_nats: float | None
    accuracy: float | None
    models: list[ModelRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, float] = field(default_factory=dict)  # calibration key -> step seconds


# --- reading the artefacts ---------------------------------------------------------------


def _json(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _artifact(path: Path, out_dir: Path) -> Artifact | None:
    meta = artifacts.read_metadata(path)
    if meta is None:
        return None
    try:
        rel = Path(path).resolve().relative_to(Path(out_dir).resolve()).as_posix()
    except ValueError:
        rel = str(path)
    return Artifact(Path(path), meta, rel)


def _mean(stat: Any) -> float | None:
    return stat.get("mean") if isinstance(stat, dict) else None


def _rows_by_kind(comparison: dict) -> dict[str, dict]:
    return {str(row.get("kind")): row for row in comparison.get("rows") or [] if isinstance(row, dict)}


def _sampling_row(comparison: dict) -> dict | None:
    """The comparison row of the best kind: of the kinds that draw samples, the one whose samples
    keep the label best; a point estimate only where no kind draws samples."""
    from invkeras.inverters import inverter_kinds

    known = inverter_kinds()
    rows = list(_rows_by_kind(comparison).values())
    sampling = [row for row in rows if row.get("kind") in known and not known[row["kind"]].point_estimate]
    if not sampling:
        return next(iter(rows), None)
    return max(sampling, key=lambda row: _mean(row.get("label_agreement")) or 0.0)


def _likelihood_kinds(kinds=None) -> list[str]:
    """Of `kinds` (default: every registered kind), those with a pixel likelihood."""
    from invkeras.inverters import inverter_kinds

    known = inverter_kinds()
    return [kind for kind in (known if kinds is None else kinds)
            if kind in known and "pixel_log_prob" in known[kind].capabilities]


def _point_estimate(kind) -> bool:
    from invkeras.inverters import inverter_kinds

    cls = inverter_kinds().get(str(kind))
    return bool(cls and cls.point_estimate)


def _mi_rows(information: dict) -> dict[str, dict]:
    return {str(row.get("layer")): row for row in information.get("rows") or [] if isinstance(row, dict)}


def _shape_text(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


# --- the reading -------------------------------------------------------------------------


def reading(facts: InspectFacts) -> str:
    """The opening paragraph: what the deepest layer still keeps, in plain words."""
    first, deepest = facts.layers[0], facts.layers[-1]
    sentences = []
    size = (f"{deepest.shape[0]} values" if len(deepest.shape) == 1
            else f"a {_shape_text(deepest.shape)} feature map")
    comparisons = {layer.name: _json(layer.comparison) for layer in facts.layers}
    row = _sampling_row(comparisons[deepest.name]) if comparisons[deepest.name] else None
    agreement = _mean(row.get("label_agreement")) if row else None
    opening = f"The deepest layer inverted, {deepest.name} ({size})"
    if agreement is not None:
        if agreement >= 0.9:
            verdict = "still carries the class"
        elif agreement >= 0.5:
            verdict = "mostly carries the class"
        else:
            verdict = "no longer pins down the class"
        sentences.append(f"{opening}, {verdict}: the classifier gives {agreement:.0%} of the images sampled from it "
                         f"({row.get('kind')}) the label of the input they were drawn for.")
    else:
        sentences.append(f"{opening}, has no label agreement to report (it needs the classifier to label the samples "
                         "and a kind that samples).")
    information = _json(facts.information)
    mi = _mi_rows(information).get(deepest.name)
    if mi is not None and deepest.name != first.name and mi.get("NCE - NCE(ref)") is not None:
        difference, se = mi["NCE - NCE(ref)"], mi.get("se (paired)")
        relation = "less" if difference < 0 else "more"
        total = (f"; the images carry exactly {facts.entropy_nats:.2f} nats each" if facts.entropy_nats else "")
        sentences.append(f"It keeps {abs(difference):.2f} ± {se or 0:.2f} nats {relation} information about the "
                         f"image than {first.name}, the first layer inverted (its NCE relative to {first.name}, "
                         f"from the held-out pixel likelihoods of conditional models{total}).")
    elif not _likelihood_kinds(facts.kinds):
        named = ", ".join(_likelihood_kinds()) or "one"
        sentences.append(f"There is no information estimate: it needs a kind with a pixel likelihood ({named}).")
    first_row = _sampling_row(comparisons[first.name]) if comparisons[first.name] else None
    deep_diversity = _mean(row.get("diversity_pixel_l1")) if row else None
    first_diversity = _mean(first_row.get("diversity_pixel_l1")) if first_row else None
    if deep_diversity is not None and _point_estimate(row.get("kind")):
        sentences.append(f"Only a point estimate ({row.get('kind')}) samples it, and it has no diversity, so what the "
                         "layer discards cannot be seen in its samples.")
    elif deep_diversity is not None and first_diversity and deepest.name != first.name:
        ratio = deep_diversity / first_diversity
        meaning = ": what varies between them is what the layer has let go" if ratio > 1 else ""
        sentences.append(f"Its samples differ from one another {ratio:.1f} times as much as {first.name}'s (mean "
                         f"pixel L1 between two samples of one input: {deep_diversity:,.0f} against "
                         f"{first_diversity:,.0f}, on a 0-255 scale){meaning}.")
    elif deep_diversity is not None:
        sentences.append(f"Two of its samples of one input differ by {deep_diversity:,.0f} in pixel L1 (0-255 scale).")
    if facts.accuracy is not None:
        sentences.append(f"The classifier labels {facts.accuracy:.1%} of the test images correctly.")
    return " ".join(sentences)


# --- sections ----------------------------------------------------------------------------


def _layers_section(facts: InspectFacts) -> Section:
    information = _mi_rows(_json(facts.information))
    columns = ["layer", "chosen as", "shape", "kind sampled", "label agreement", "diversity pixel L1",
               "IM-NN L1", "1NN L1", "NCE nats ± SE", "NCE - NCE(first) ± SE"]
    rows = []
    for layer in facts.layers:
        comparison = _json(layer.comparison)
        row = _sampling_row(comparison) or {}
        mi = information.get(layer.name) or {}
        agreement = _mean(row.get("label_agreement"))
        rows.append([layer.name, layer.role, _shape_text(layer.shape), fmt(row.get("kind")),
                     "" if agreement is None else f"{agreement:.0%}",
                     pm(_mean(row.get("diversity_pixel_l1")), (row.get("diversity_pixel_l1") or {}).get("se"), 0),
                     pm((row.get("IM-NN") or {}).get("mean_l1"), (row.get("IM-NN") or {}).get("se")),
                     pm((comparison.get("nearest_training") or {}).get("mean_l1"),
                        (comparison.get("nearest_training") or {}).get("se")),
                     pm(mi.get("NCE nats"), mi.get("se nats")),
                     pm(mi.get("NCE - NCE(ref)"), mi.get("se (paired)"))])
    note = ("label agreement: share of samples the classifier gives the input's label; diversity: mean pixel L1 "
            "between two samples of one input (0-255 scale); IM-NN: L1 in the layer's space from h(x) to the "
            "closest of its samples, 1NN: to the nearest training image; NCE = -H*(x|h), relative to the first layer "
            "with a paired SE")
    return Section("Layers", intro="Each layer inverted, as the tables below measure it.",
                   tables=[Table("Layers", columns, rows, note=note)])


def _information_section(facts: InspectFacts, out_stem: Path) -> Section | None:
    from invkeras.reports.plots import plot_nce_by_layer

    information = _json(facts.information)
    if not information:
        return None
    columns = ["layer", "n", "H*(x|h) nats ± SE", "95% interval", "bits/dim", "NCE nats", "NCE - NCE(first) ± SE",
               "H*(x) - H*(x|h) estimate", "H(x) - H*(x|h) bound on I"]
    rows = []
    for r in information.get("rows") or []:
        low, high = r.get("ci95 low"), r.get("ci95 high")
        rows.append([fmt(r.get("layer")), fmt(r.get("n_images")), pm(r.get("H*(x|h) nats"), r.get("se nats")),
                     f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else "",
                     fmt(r.get("bits/dim"), 4), fmt(r.get("NCE nats")), pm(r.get("NCE - NCE(ref)"),
                                                                          r.get("se (paired)")),
                     fmt(r.get("H*(x) - H*(x|h) [estimate]")), fmt(r.get("H(x) - H*(x|h) [lower bound on I]"))])
    entropy = information.get("entropy_nats")
    unconditional = any(r.get("layer") == "none" for r in information.get("rows") or [])
    note = (("layer 'none' is the unconditional model, whose NLL estimates H(x); " if unconditional else "")
            + (f"H(x) = {entropy:.3f} nats exactly (the dataset's images are drawn from a known distribution), "
               "so H(x) - H*(x|h) is a true lower bound on I(x;h)" if entropy is not None
               else "H(x) is not known for these images, so only the estimate H*(x) - H*(x|h) is given"))
    notes = [r.get("note") for r in information.get("rows") or [] if r.get("note")]
    section = Section("Information", intro="Held-out NLL of each layer's PixelCNN++ on the same test images. "
                      "NCE = -H*(x|h): higher means the layer keeps more about the image. " + " ".join(notes),
                      tables=[Table("Information per layer (nats per image)", columns, rows, note=note)])
    artifact = _artifact(facts.information, facts.out_dir)
    if artifact is not None:
        section.provenance.append(artifact)
    section.links = _existing([("information table (JSON)", Path(facts.information)),
                               ("CSV", Path(facts.information).with_suffix(".csv"))])
    reference = facts.layers[0].name
    plotted = [{**r, "reference": reference} for r in information.get("rows") or [] if r.get("layer") != "none"]
    if plotted:
        path = out_stem.with_name(out_stem.name + "-nce-by-layer.png")
        plot_nce_by_layer(plotted, path, reference=reference if len(plotted) > 1 else None)
        section.images.append(Image(
            "NCE by layer", path,
            f"NCE relative to {reference} with paired ±1 SE, from {Path(facts.information).name}; drawn by "
            f"`{facts.command}` (seed {facts.seed})", details=_artifact(path, facts.out_dir)))
    return section


def _grid_caption(path: Path, meta: dict, seed: int) -> str:
    config = meta.get("config") or {}
    inverter = Path(str(config.get("inverter") or path.parent)).parent
    kind = meta.get("inverter_kind") or "?"
    layer = meta.get("layer")
    common = (f"--inverter {inverter} --num-inputs {config.get('num_inputs')} --num-samples "
              f"{config.get('num_samples')} --seed {meta.get('seed', seed)}")
    if meta.get("kind") == "inversion-samples-with-reconstruction":
        reconstructor = Path(str(config.get("reconstructor") or "")).parent
        what = (f"layer {layer}: input | {meta.get('reconstruction_kind')} reconstruction | samples of the {kind} "
                f"inverter (reconstruction MSE {fmt((meta.get('results') or {}).get('reconstruction_mse_per_pixel'), 1)}"
                " per pixel)")
        command = f"invkeras sample-grid {common} --reconstructor {reconstructor}"
    else:
        what = f"layer {layer}: input, then {config.get('num_samples')} samples of the {kind} inverter"
        command = f"invkeras sample {common}"
    return f"{what}. Drawn by `{command}` (seed {meta.get('seed', seed)})."


def _comparison_table(layer: LayerFacts, comparison: dict) -> Table:
    columns = ["kind", "IM-S L1 ± SE", "IM-NN L1 ± SE", "label agreement", "diversity pixel L1",
               "pixel L1 to input", "NLL nats ± SE"]
    nearest = comparison.get("nearest_training") or {}
    rows = [["1NN (training)", "", pm(nearest.get("mean_l1"), nearest.get("se")), "", "", "", ""]]
    for r in comparison.get("rows") or []:
        agreement = r.get("label_agreement")
        rows.append([fmt(r.get("kind")), pm((r.get("IM-S") or {}).get("mean_l1"), (r.get("IM-S") or {}).get("se")),
                     pm((r.get("IM-NN") or {}).get("mean_l1"), (r.get("IM-NN") or {}).get("se")),
                     "" if _mean(agreement) is None else pm(100 * agreement["mean"], 100 * agreement["se"], 1) + "%",
                     pm(_mean(r.get("diversity_pixel_l1")), (r.get("diversity_pixel_l1") or {}).get("se"), 0),
                     pm(_mean(r.get("pixel_l1_to_input")), (r.get("pixel_l1_to_input") or {}).get("se"), 0),
                     measure(_mean(r.get("nll_nats")), (r.get("nll_nats") or {}).get("se"))])
    note = (f"n = {fmt(comparison.get('n_images'))} test images, K = {fmt(comparison.get('samples_per_image'))} "
            f"samples each, {fmt(comparison.get('training_examples_searched'))} training images searched for 1NN; "
            "L1 summed over the layer's features")
    return Table(f"Layer {layer.name}: the kinds compared in its space", columns, rows, note=note)


def _existing(links: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    return [(label, path) for label, path in links if path is not None and Path(path).is_file()]


def _shown_grids(grids: list[Path]) -> list[Path]:
    """A kind's samples beside the MSE reconstruction stand for its plain sample grid (same samples)."""
    beside = {grid.parent for grid in grids if grid.name == "samples_reconstruction.png"}
    return [grid for grid in grids if grid.name != "samples.png" or grid.parent not in beside]


def _layer_section(layer: LayerFacts, facts: InspectFacts) -> Section:
    section = Section(f"Layer {layer.name} ({layer.role}, {_shape_text(layer.shape)})")
    if layer.comparison is not None:
        section.links = _existing([("comparison (JSON)", layer.comparison),
                                   ("CSV", layer.comparison.with_suffix(".csv"))])
    for grid in _shown_grids(layer.grids):
        artifact = _artifact(grid, facts.out_dir)
        meta = artifact.meta if artifact else {}
        section.images.append(Image(f"{layer.name}: {grid.name}", grid, _grid_caption(grid, meta, facts.seed),
                                    details=artifact))
    comparison = _json(layer.comparison)
    if comparison:
        section.tables.append(_comparison_table(layer, comparison))
        compared = _artifact(layer.comparison, facts.out_dir)
        config = compared.config if compared else {}
        command = ("invkeras compare " + " ".join(f"--inverter {Path(p).parent}" for p in config.get("inverters") or [])
                   + f" --num-images {config.get('num_images')} --num-samples {config.get('num_samples')} --top-k "
                     f"{config.get('top_k')} --grid-samples {config.get('grid_samples')} --grid-inputs "
                     f"{config.get('grid_inputs')} --seed {config.get('seed')}")
        for grid in layer.topk_grids:
            artifact = _artifact(grid, facts.out_dir)
            label = (artifact.meta.get("label") if artifact else None) or grid.stem
            section.images.append(Image(
                f"{layer.name}: top-k of {label}", grid,
                f"{label}: the input, the {config.get('top_k')} of {config.get('grid_samples')} samples closest to it "
                f"in {layer.name}'s space, then the {config.get('top_k')} closest training images. Drawn by "
                f"`{command}` (seed {config.get('seed')}).", details=artifact, row=f"topk-{layer.name}"))
        if compared is not None:
            section.provenance.append(compared)
    elif facts.accuracy is None:
        section.intro = ("No comparison in the layer's space: the representations are the user's own (--features), "
                         "so there is no classifier to read the samples' features with.")
    return section


def _classifier_section(facts: InspectFacts) -> Section:
    rows = [["model", facts.model_path], ["dataset", facts.dataset],
            ["test accuracy", "" if facts.accuracy is None else f"{facts.accuracy:.4f}"],
            ["layers inverted", ", ".join(layer.name for layer in facts.layers)],
            ["kinds", ", ".join(facts.kinds)]]
    return Section("Classifier", tables=[Table("Classifier", ["", "value"], rows)],
                   links=_existing([("the model as inspected", Path(facts.out_dir) / "classifier.keras")]))


def _plan_section(facts: InspectFacts) -> Section:
    from invkeras.inspection.config import format_duration

    def duration(value):
        return "" if value is None else format_duration(value)

    columns = ["kind", "layer", "planned steps", "steps", "planned time", "time", "stopped by", "held-out headline"]
    rows = []
    for m in facts.models:
        headline = m.headline or {}
        value = measure(headline.get("value"), headline.get("se")) if headline else ""
        rows.append([m.kind, "(images only)" if m.layer == "none" else m.layer, fmt(m.planned_steps), fmt(m.steps),
                     duration(m.planned_seconds), duration(m.seconds), m.stopped_by,
                     f"{headline.get('name')} {value}" if headline else ""])
    calibration = "; ".join(f"{key} {1000 * seconds:.0f} ms" for key, seconds in facts.calibration.items())
    intro = (f"{format_duration(facts.spent)} of a {format_duration(facts.budget)} budget. Each model trained under "
             "a wall-clock cap set from its calibrated step time; 'stopped by' says what ended it. "
             + (f"Step times measured here: {calibration}. " if calibration else "") + " ".join(facts.notes))
    return Section("Plan and time", intro=intro.strip(), tables=[Table("Models", columns, rows)],
                   links=_existing([("plan, calibration and times (JSON)", Path(facts.out_dir) / "inspect.json")]))


def build_inspect_sections(facts: InspectFacts, out_stem: Path) -> tuple[list[Section], str]:
    """The report's sections and its reading paragraph."""
    text = reading(facts)
    sections = [Section("Reading", intro=text), _layers_section(facts)]
    information = _information_section(facts, out_stem)
    if information is not None:
        sections.append(information)
    sections += [_layer_section(layer, facts) for layer in facts.layers]
    sections += [_classifier_section(facts), _plan_section(facts)]
    return sections, text


def write_inspect_report(facts: InspectFacts) -> tuple[Path, Path, str]:
    """Write report.html (images linked beside it) and report.md in `facts.out_dir`; return both
    paths and the reading paragraph."""
    from invkeras.inspection.config import format_duration

    out = Path(facts.out_dir).resolve()
    html_path, md_path = out / HTML_NAME, out / "report.md"
    sections, text = build_inspect_sections(facts, html_path.with_suffix(""))
    title = f"What the layers of {facts.model} keep"
    subtitle = (f"invkeras inspect of {facts.model_path} on {facts.dataset}: {len(facts.layers)} layers, kinds "
                f"{', '.join(facts.kinds)}; {format_duration(facts.spent)} of a {format_duration(facts.budget)} "
                f"budget; seed {facts.seed}")
    artifacts.write_text_atomic(html_path, render_html(title, subtitle, sections, image_base=out))
    artifacts.write_text_atomic(md_path, render_markdown(title, subtitle, sections, out))
    config = {"out": str(html_path), "layers": [layer.name for layer in facts.layers], "kinds": facts.kinds}
    for path in (html_path, md_path):
        artifacts.write_metadata(path, kind=REPORT_KIND, config=config, seed=facts.seed,
                                 results={"reading": text, "sections": [s.title for s in sections]})
    return html_path, md_path, text
