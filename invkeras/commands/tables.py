"""What commands print: the console, and the rich tables of each command's results.

Numbers are formatted by the report's helpers (`invkeras.reports.sections.fmt`, `pm`), so a
value reads the same in the terminal and in the HTML report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from invkeras.reports.sections import fmt, pm

console = Console()
err_console = Console(stderr=True)


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A rich table with a left-aligned title; cells are shown as text, long ones folded."""
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*[str(v) for v in row])
    return result


def headline_text(headline: dict) -> str:
    """A held-out summary's headline, 'value ± se'."""
    return pm(headline["value"], headline["se"])


def held_out_rows(result, describe: Callable[[str, dict], list]) -> list[list]:
    """Model, steps and wall time of a training result, then one row per held-out split it has."""
    rows = [["model", result.model_path], ["steps", result.steps], ["wall time", f"{result.seconds:.1f} s"]]
    return rows + [describe(name, summary) for name, summary in (("validation", result.validation),
                                                                   ("test", result.test)) if summary]


def robust_rows(result, config) -> list[list]:
    """Clean beside robust accuracy, on the same test images, when an attack was set."""
    if result.robust_accuracy is None:
        return []
    from invkeras.classifiers.adversarial import Attack

    attack = Attack(result.attack["epsilon"], result.attack["steps"], result.attack["step_size"])
    trained = "adversarial (PGD)" if config.adversarial == "pgd" else "standard"
    return [["training", trained],
            [f"clean accuracy (n={result.robust_examples})", f"{result.clean_accuracy:.4f}"],
            [f"robust accuracy ({attack.label()})", f"{result.robust_accuracy:.4f}"]]


def comparison_table(payload: dict) -> Table:
    """Kinds side by side on one layer: Table 1 distances, label agreement, pixel L1 to the input, diversity, NLL."""

    def entry_pm(entry, key="mean", digits=2, scale=1.0):
        return "" if not entry else pm(entry[key] * scale, entry["se"] * scale, digits)

    nn = payload["nearest_training"]
    rows = [["1NN (training)", "", "", entry_pm(nn, "mean_l1"), "", "", "", "", ""]]
    for r in payload["rows"]:
        rows.append([r["label"], r["kind"], entry_pm(r["IM-S"], "mean_l1"), entry_pm(r["IM-NN"], "mean_l1"),
                     entry_pm(r["label_agreement"], digits=1, scale=100.0),
                     entry_pm(r.get("pixel_l1_to_input"), digits=0), entry_pm(r["diversity_pixel_l1"], digits=0),
                     entry_pm(r["diversity_h_l1"]), entry_pm(r["nll_nats"])])
    title = (f"{payload['layer']}: {payload['n_images']} {payload['split']} images x {payload['samples_per_image']} "
             f"samples; L1 in the layer's space (sum over {payload['feature_dims']} dims), ± s.e.")
    result = table(title, ["x'", "kind", "IM-S", "IM-NN", "label agree %", "px L1 to x", "diversity px",
                           "diversity h", "NLL nats"], rows)
    if payload.get("note"):
        result.caption, result.caption_justify = payload["note"], "left"
    return result


def mi_report_table(path: Path) -> Table:
    """The table of a written estimate-mi JSON, pixel-space or latent-space."""
    from invkeras.analyses.latent_mi import LatentMIReport
    from invkeras.analyses.mi import MIReport

    if json.loads(Path(path).read_text()).get("space") == "latent":
        return latent_mi_table(LatentMIReport.from_json(path))
    return mi_table(MIReport.from_json(path))


def latent_mi_table(report) -> Table:
    """The latent-space information table: H*(z|h) and H*(z) - H*(z|h) in nats per image, ± paired
    standard errors; labelled as a latent-space estimate, never beside the pixel-space NCE."""
    from invkeras.analyses.latent_mi import ESTIMATE, LABEL, NLL, NOTE

    rows = [[r["layer"], r["n_images"], pm(r[NLL], r["se nats"]), fmt(r["nats/dim"], 3),
             pm(r["H*(z|h) - H*(z|h)(ref)"], r["se (paired, ref)"]), pm(r[ESTIMATE], r["se (paired)"])]
            for r in report.rows]
    dim = (report.latent or {}).get("latent_dim")
    title = (f"Latent information per layer, {LABEL.upper()}: nats/image of z = E(x)"
             f"{f' ({dim}-d)' if dim else ''} ({report.dataset}, {report.split})")
    result = table(title, ["layer", "n", "H*(z|h) ± se", "nats/dim", "vs ref ± se (paired)",
                           "I est. H*(z)-H*(z|h) ± se (paired)"], rows)
    result.caption = NOTE
    result.caption_justify = "left"
    return result


def mi_table(report) -> Table:
    """The information table; an estimate above the exact H(x) is marked '!' and a lower bound
    below zero 'vacuous', with the reason under the table (the JSON keeps the raw numbers)."""
    from invkeras.analyses.mi import EXCEEDS, VACUOUS

    rows, notes = [], []
    for r in report.rows:
        estimate = fmt(r["H*(x) - H*(x|h) [estimate]"]) + (" !" if r.get(EXCEEDS) else "")
        bound = "vacuous" if r.get(VACUOUS) else fmt(r["H(x) - H*(x|h) [lower bound on I]"])
        rows.append([r["layer"], r["n_images"], pm(r["H*(x|h) nats"], r["se nats"]), fmt(r["bits/dim"], 4),
                     fmt(r["NCE nats"]), pm(r["NCE - NCE(ref)"], r["se (paired)"]), estimate, bound])
        if r.get("note"):
            notes.append(f"{r['layer']}: {r['note']}")
    title = f"Information per layer, nats/image ({report.dataset}, {report.split})"
    if report.entropy_nats is not None:
        title += f", H(x) = {report.entropy_nats:.3f}"
    # Short headers keep the table readable at 80 columns; the JSON/CSV spell them out.
    columns = ["layer", "n", "H*(x|h) ± se", "bits/dim", "NCE", "NCE-ref ± se", "I est.", "I ≥"]
    result = table(title, columns, rows)
    if notes:
        result.caption = "\n".join(notes)
        result.caption_justify = "left"
    return result


def edit_table(result) -> Table:
    """Per operation and strength: the share of edited samples keeping the input's label, and
    the share labelled with the shifted class or the interpolation partner's label."""
    rows = []
    for op in result.operations:
        for row in op["per_strength"]:
            target = row.get("share_target_class", row.get("share_partner_label"))
            moves = f"{row['moved_towards']} / {row['moved_away']}" if "moved_towards" in row else ""
            asked = row.get("share_argmax_h")
            rows.append([op["name"], f"{row['strength']:g}", row["edit"], f"{row['share_input_label']:.0%}",
                         "" if target is None else f"{target:.0%}", moves, "" if asked is None else f"{asked:.0%}"])
    title = f"Edits of {result.layer} decoded by a {result.kind} inverter, labelled by the classifier"
    return table(title, ["operation", "t", "edit", "input's label", "target label", "moved to / from",
                          "argmax h label"], rows)


def factor_score_tables(rows: list[dict]) -> list[Table]:
    """Block sizes per layer, then accuracies and label swaps per layer, then each layer's matrix."""

    def pct(value):
        return "" if value is None else f"{value:.0%}"

    blocks = list(dict.fromkeys(b["name"] for r in rows for b in r["blocks"]))
    sizes = [[r["label"], r["dim"], *[next((str(b["size"]) for b in r["blocks"] if b["name"] == name), "")
                                      for name in blocks]] for r in rows]
    tables = [table("Dimensions per factor block", ["layer", "dim", *blocks], sizes)]
    names = list(dict.fromkeys(name for r in rows for name in (r.get("edit_accuracy") or {})))
    columns = [*[f"edit {n}" for n in names]]
    if any(r.get("label_swaps") for r in rows):
        columns += ["recon.: A's label", "class swap: B's label", "residual swap: A's label"]
    summary = []
    for r in rows:
        swaps = r.get("label_swaps") or {}
        row = [r["label"], pct(r.get("reconstruction_accuracy")),
               *[pct((r.get("edit_accuracy") or {}).get(n, {}).get("edit_accuracy")) for n in names]]
        if len(columns) > len(names):
            row += [pct(swaps.get(k)) for k in ("reconstruction_keeps_a_label", "class_swap_takes_b_label",
                                                "residual_swap_keeps_a_label")]
        summary.append(row)
    if columns or any(r.get("reconstruction_accuracy") is not None for r in rows):
        tables.append(table("Edits read back: reconstruction, edit accuracy, label swaps", ["layer", "recon.",
                                                                                            *columns], summary))
    for r in rows:
        matrix = r.get("disentanglement")
        if matrix:
            body = [[b, *[f"{v:.2f}" for v in values]] for b, values in zip(matrix["blocks"], matrix["matrix"])]
            tables.append(table(f"{r['label']}: disentanglement, I(f of swap; f of B) / H(f), {r['num_pairs']} swaps",
                                 ["block", *matrix["factors"]], body))
    return tables
