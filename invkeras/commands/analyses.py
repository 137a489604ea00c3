"""The commands that analyse trained inverters: `sample` and `sample-grid`, `compare`
(Nash et al. 2019, Table 1), `estimate-mi` (the information table), `edit` (Teterwak et al.
2021), `mix` and `attack` (Rombach et al. 2020), and `report`, which gathers every artefact."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar, List, Literal, Optional

import typer
from pydantic import Field, create_model, field_validator

from invkeras import artifacts
from invkeras.analyses.attack import ATTACK_JSON, AttackConfig, attack_dir, attack_inverter
from invkeras.analyses.compare import CompareConfig, compare_inverters
from invkeras.analyses.edit import EDITS_DIR, EDITS_JSON, EditConfig, edit_inverter, shift_list
from invkeras.analyses.latent_mi import ESTIMATE, NLL
from invkeras.analyses.mi import EstimateMIConfig, estimate_mi, report_name
from invkeras.analyses.mix import MIX_GRID, MixConfig, mix_images
from invkeras.analyses.samples import SampleConfig, draw_inversions, output_name, save_samples_with_reconstruction
from invkeras.commands.base import Command, OnePerLayer, config_of, fields_of, given, register_command
from invkeras.commands.tables import (comparison_table, console, edit_table, latent_mi_table, mi_report_table,
                                      mi_table, table)
from invkeras.commands.workspace import InverterAnalysis, InvertersInWorkspace, SeededInverters, known_kind
from invkeras.errors import InvkerasError
from invkeras.reports.report import write_report


# --- samples ------------------------------------------------------------------


SAMPLE_GRID = "samples.png"
RECONSTRUCTION_GRID = "samples_reconstruction.png"


class SampleStep(create_model("_SampleFields", __base__=InvertersInWorkspace,
                              **fields_of(SampleConfig, without=("inverter", "out")))):
    """Sample grids, one per layer; `reconstruction` names a kind with `reconstruct` (e.g. mse)
    whose inverter of the same layer adds the input | reconstruction | samples grid."""
    command: Literal["sample"]
    reconstruction: Optional[str] = Field(None, description="kind of the reconstruction column, e.g. mse")

    @field_validator("reconstruction")
    @classmethod
    def _reconstruction_kind(cls, value):
        return None if value is None else known_kind(value)


def cli_sample(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras (any kind)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out inputs N (rows of the grid) [default: 8]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per input [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="Images sampled in parallel [default: 64]."),
    method: Optional[str] = typer.Option(None, help="A kind's sampler (pixelcnn: pixel | cached | full)."),
    temperature: Optional[float] = typer.Option(
        None, help="pixelcnn, cinn: draw from the model sharpened by T < 1 (pixelcnn: mixture logits / T, scales "
                   "x T; cinn: the latent's N(0, T^2 I)) [default: 1, the model]."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
    misclassified: bool = typer.Option(
        False, "--misclassified", help="Inputs: held-out images the classifier gets wrong (samples_misclassified.png)."),
) -> None:
    """Draw K samples of p(x|h(x)) for N held-out images: a PNG grid and an .npz."""
    options = given(locals())

    result = draw_inversions(SampleConfig(**options))
    rows = [["grid", result.grid_path], ["arrays", result.arrays_path],
            ["samples", "x".join(map(str, result.samples.shape[:2]))], ["wall time", f"{result.seconds:.1f} s"]]
    if getattr(result, "split", None) is not None:
        rows.insert(0, ["split", result.split])
    if result.mean_l1_to_original is not None:
        rows.append(["mean L1 |h(sample) - h(x)|", f"{result.mean_l1_to_original:.4f}"])
    chosen = result.selection
    if chosen is not None:
        rows.append(["misclassified", f"{chosen['misclassified']} of {chosen['searched']} searched; "
                                      f"showing {chosen['found']}"])
        rows.append(["true -> predicted", ", ".join(f"{int(t)}->{int(p)}" for t, p in
                                                    zip(chosen["y"], chosen["predicted"]))])
        if "share_samples_predicted_label" in chosen:
            rows.append(["samples labelled predicted / true", f"{chosen['share_samples_predicted_label']:.0%} / "
                                                              f"{chosen['share_samples_true_label']:.0%}"])
    console.print(table("Samples", ["", "value"], rows))


@register_command
class Sample(InverterAnalysis):
    name = "sample"
    step_schema = SampleStep
    examples = (
        "invkeras sample --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --num-inputs 8 --num-samples 8",
        "invkeras sample --inverter runs/procedural/conv/inverters/pixelcnn/none --num-samples 16 --seed 1",
        "invkeras sample --inverter runs/procedural/conv/inverters/mse/fc3      # any kind",
        "invkeras sample --inverter runs/mnist/conv/inverters/gan/logits --misclassified   # the classifier's mistakes",
    )
    cli = staticmethod(cli_sample)

    @staticmethod
    def run(step) -> str:
        for layer in step.layers:
            config = config_of(step, SampleConfig, inverter=str(step.inverter(layer)))
            if not artifacts.is_complete(step.inverter(layer) / config.output_name(SAMPLE_GRID)):  # only missing grids
                draw_inversions(config)
            if step.reconstruction and not artifacts.is_complete(step.inverter(layer) /
                                                                 config.output_name(RECONSTRUCTION_GRID)):
                save_samples_with_reconstruction(config, str(step.inverter(layer, step.reconstruction)))
        return f"grids for {', '.join(step.layers)}" + (f" (+ {step.reconstruction} reconstructions)"
                                                         if step.reconstruction else "")

    @staticmethod
    def outputs(step):
        grids = [step.inverter(layer) / output_name(SAMPLE_GRID, step.misclassified) for layer in step.layers]
        if step.reconstruction:
            grids += [step.inverter(layer) / output_name(RECONSTRUCTION_GRID, step.misclassified)
                      for layer in step.layers]
        return grids


def cli_sample_grid(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras (draws the samples)."),
    reconstructor: str = typer.Option(..., "--reconstructor", "--decoder",
                                      help="An inverter of the same layer that can reconstruct (e.g. kind mse)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out inputs N (rows of the grid) [default: 8]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per input [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples [default: 0]."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
) -> None:
    """Write samples_reconstruction.png: input | reconstruction | K samples, as in Nash et al. (2019) Figs. 1 and 4."""
    options = given(locals())

    reconstructor = options.pop("reconstructor")
    result = save_samples_with_reconstruction(SampleConfig(**options), reconstructor)
    rows = [["grid", result.grid_path], ["reconstruction MSE per pixel", f"{result.mse_per_pixel:.1f}"],
            ["wall time", f"{result.seconds:.1f} s"]]
    console.print(table("Samples with reconstruction", ["", "value"], rows))


@register_command
class SampleGrid(Command):
    name = "sample-grid"
    examples = (
        "invkeras sample-grid --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --reconstructor runs/procedural/conv/inverters/mse/fc3",
    )
    cli = staticmethod(cli_sample_grid)


# --- compare ------------------------------------------------------------------


COMPARISON = "compare.json"


class CompareStep(create_model("_CompareFields", __base__=SeededInverters,
                               **fields_of(CompareConfig, without=("inverters", "labels", "out")))):
    """Kinds side by side, one comparison per layer: Table 1 distances, label agreement,
    diversity and NLL, in runs/<dataset>/<arch>/comparisons/<layer>/."""
    command: Literal["compare"]
    kinds: Optional[list[str]] = Field(None, min_length=1, description="kinds compared; default [kind]")

    @field_validator("kinds")
    @classmethod
    def _kinds_known(cls, value):
        return None if value is None else [known_kind(k) for k in value]

    def compared_kinds(self) -> list[str]:
        return self.kinds or [self.kind]

    def seed_candidates(self):
        return [(None, kind, layer) for layer in self.layers for kind in self.compared_kinds()]

    def compared(self, layer: str) -> list[Path]:
        """Every inverter of the layer compared: each kind's, with all its seeds."""
        return [path for kind in self.compared_kinds() for path in self.inverters_of(layer, kind)]

    def out(self, layer: str) -> Path:
        return artifacts.comparison_dir(self.dataset, self.arch, layer, self.workspace)


def cli_compare(
    inverter: List[str] = typer.Option(..., help="Inverter directory of one layer, any kind (repeatable)."),
    label: List[str] = typer.Option([], help="Row name per --inverter (default: the kinds)."),
    num_images: Optional[int] = typer.Option(None, help="Held-out images N [default: 500, as the paper]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per image: IM-S uses one, IM-NN the closest [default: 10]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples [default: 0]."),
    top_k: Optional[int] = typer.Option(None, help="Samples and training neighbours shown per grid row [default: 8]."),
    grid_samples: Optional[int] = typer.Option(None, help="Samples K' drawn per grid row, of which the top-k are shown [default: 64]."),
    grid_inputs: Optional[int] = typer.Option(None, help="Grid rows (0: no grid) [default: 4]."),
    batch_size: Optional[int] = typer.Option(None, help="Images sampled in parallel [default: 64]."),
    max_train_examples: Optional[int] = typer.Option(None, help="Search N training images only, a fixed sample (default all)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/<dataset>/<arch>/comparisons/<layer>)."),
) -> None:
    """Inverters of one layer side by side: L1 distance in the layer's space to 1NN, IM-S and IM-NN
    (Nash et al. 2019 Table 1), label agreement, sample diversity and NLL, plus top-k grids."""
    options = given(locals())

    options["inverters"] = options.pop("inverter")
    options["labels"] = options.pop("label") or None
    result = compare_inverters(CompareConfig(**options))
    console.print(comparison_table(json.loads(result.json_path.read_text())))
    if compare_seeds_table(result.rows) is not None:
        console.print(compare_seeds_table(result.rows))
    written = [result.json_path, result.csv_path, result.arrays_path, *result.grid_paths.values()]
    console.print("written: " + ", ".join(str(p) for p in written if p is not None))


@register_command
class Compare(OnePerLayer, InverterAnalysis):
    name = "compare"
    step_schema = CompareStep
    examples = (
        "invkeras compare --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --inverter runs/procedural/conv/inverters/mse/fc3",
        "invkeras compare --inverter runs/procedural/conv/inverters/pixelcnn/conv1 --num-images 100 --grid-samples 256",
        "invkeras compare --inverter A --inverter B --label small --label paper --out comparisons/fc3",
    )
    cli = staticmethod(cli_compare)

    @staticmethod
    def layer_output(step, layer):
        return step.out(layer) / COMPARISON

    @staticmethod
    def run_layer(step, layer) -> str:
        inverters = [str(path) for path in step.compared(layer)]
        result = compare_inverters(config_of(step, CompareConfig, inverters=inverters, out=str(step.out(layer))))
        return layer + " " + ", ".join(f"{r['label']} IM-NN {r['IM-NN']['mean_l1']:.2f}" if r.get("IM-NN")
                                       else f"{r['label']} (no classifier: no IM-NN)" for r in result.rows)

    @classmethod
    def inverters_read(cls, step):
        return [path for layer in step.layers for path in step.compared(layer)]

    @staticmethod
    def show(step) -> None:
        """The comparison tables, after a recipe has run, and what label agreement across the layers says."""
        for layer in step.layers:
            comparison = json.loads((step.out(layer) / COMPARISON).read_text())
            console.print(comparison_table(comparison))
            if compare_seeds_table(comparison["rows"]) is not None:
                console.print(compare_seeds_table(comparison["rows"]))
        for sentence in label_agreement_lines(step):
            console.print(sentence)


def compare_seeds_table(rows: list[dict]):
    """The rows of several seeds: each value's 95% interval with the spread between the seeds'
    training runs (None when no row has several seeds)."""
    from invkeras.reports.sections import fmt

    seeded = [r for r in rows if (r.get("n_seeds") or 1) > 1]
    if not seeded:
        return None
    keys = [k for k in ("IM-S", "IM-NN", "label_agreement", "diversity_pixel_l1", "nll_nats")
            if any(k in (r.get("seed_intervals") or {}) for r in seeded)]

    def cell(interval):
        return "" if not interval else f"{fmt(interval['mean'])} [{fmt(interval['low'])}, {fmt(interval['high'])}]"

    return table("Over training seeds: mean [95% interval with the seeds' spread]", ["label", "seeds", *keys],
                 [[r["label"], r["n_seeds"], *[cell((r.get("seed_intervals") or {}).get(k)) for k in keys]]
                  for r in seeded])


def label_agreement_lines(step) -> list[str]:
    """Label agreement across the step's layers, in the classifier's graph order (nothing for one
    layer, or where the layers are not one chain): `compare.label_agreement_in_chain`."""
    from invkeras.analyses.compare import label_agreement_in_chain

    found = label_agreement_in_chain(artifacts.classifier_path(step.dataset, step.arch, step.workspace),
                                     {layer: step.out(layer) for layer in step.layers})
    return [] if found is None else found[1]


# --- information --------------------------------------------------------------


class EstimateMIStep(create_model("_EstimateMIFields", __base__=SeededInverters,
                                  **fields_of(EstimateMIConfig,
                                               without=("inverters", "unconditional", "out", "labels")))):
    """The information table over the layers' inverters: pixel-space for a kind with a pixel
    likelihood, a separate latent-space table (mi/latent_<split>.json) for a kind with a latent
    one (`kind: cinn`; its unconditional flow gives H*(z) - H*(z|h)).

    With `archs`, one table compares the layers of several architectures' runs on the same
    test images (paired), in rows labelled arch/layer; it is written to
    runs/<dataset>/architectures/mi/<split>.json, and `reference` names such a label.

    A layer trained with several seeds (`seeds` on its train-inverter step) is one row over all of
    them, with the interval that adds the spread between the runs.
    """
    command: Literal["estimate-mi"]
    unconditional: bool = Field(True, description="also use the 'none' inverter for H*(x) - H*(x|h)")
    archs: Optional[list[str]] = Field(None, min_length=2, description="compare these architectures' runs")

    def rows(self) -> list[tuple[Optional[str], Path]]:
        """(label, inverter dir) per inverter, every seed of a row with the row's label; the label
        is None when rows are plain layers."""
        if not self.archs:
            return [(None, path) for layer in self.layers for path in self.inverters_of(layer)]
        return [(f"{arch}/{layer}", path) for arch in self.archs for layer in self.layers
                for path in self.inverters_of(layer, arch=arch)]

    def seed_candidates(self):
        rows = [(arch, self.kind, layer) for arch in (self.archs or [None]) for layer in self.layers]
        return rows + ([(None, self.kind, "none")] if self.unconditional else [])

    def unconditional_inverters(self) -> list[Path]:
        return self.inverters_of("none") if self.unconditional else []

    def out(self) -> Path:
        """mi/<split>.json, or mi/latent_<split>.json for a kind with a latent likelihood (cinn)."""
        from invkeras.inverters import inverter_class

        run = "architectures" if self.archs else self.arch
        name = report_name(self.split, inverter_class(self.kind).latent_likelihood)
        return artifacts.run_dir(self.dataset, run, self.workspace) / "mi" / name


def cli_estimate_mi(
    inverter: List[str] = typer.Option(..., help="Inverter directory with a pixel likelihood, or all with a latent "
                                            "one (kind cinn: a separate latent-space table) (repeatable)."),
    unconditional: List[str] = typer.Option([], help="Unconditional inverter, for H*(x) - H*(x|h) (repeat for "
                                                     "its seeds)."),
    reference: Optional[str] = typer.Option(None, help="Layer whose NCE the others are compared with."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    eval_examples: Optional[int] = typer.Option(None, help="Evaluate on N held-out images, a fixed sample."),
    order: Optional[str] = typer.Option(None, help="Comma-separated layers of one feed-forward chain, shallow to "
                                                   "deep, for the data-processing check [default: the classifier's "
                                                   "graph order]."),
    out: Optional[str] = typer.Option(None, help="JSON path (a CSV twin is written beside it)."),
) -> None:
    """Held-out NLL per inverter, the NCE bound on I(x;h), and MI estimates, as a table, JSON and CSV.
    Inverters of one layer that differ only in their seed are one row, with an interval over the seeds too."""
    options = given(locals())

    options["inverters"] = options.pop("inverter")
    given_unconditional = options.pop("unconditional")
    if given_unconditional:
        options["unconditional"] = given_unconditional[0] if len(given_unconditional) == 1 else given_unconditional
    if order is not None:
        options["order"] = [name.strip() for name in order.split(",") if name.strip()]
    report, path = estimate_mi(EstimateMIConfig(**options))
    console.print(latent_mi_table(report) if getattr(report, "space", None) == "latent" else mi_table(report))
    if seeds_table(report) is not None:
        console.print(seeds_table(report))
    console.print(f"written: {path} and {path.with_suffix('.csv')}")


def seeds_table(report) -> Optional[object]:
    """H*(x|h) (or, in latent space, H*(z|h)) of the rows with several seeds: the test-image
    interval beside the one that adds the spread between the seeds' training runs (None when no
    row has several)."""
    from invkeras.reports.sections import fmt, pm

    rows = [r for r in report.rows if (r.get("n_seeds") or 1) > 1]
    if not rows:
        return None
    what = "H*(z|h)" if getattr(report, "space", None) == "latent" else "H*(x|h)"
    return table(f"{what} over training seeds, nats/image (95% intervals)",
                 ["layer", "seeds", "mean ± se (images)", "interval (images)", "± se (seeds + images)",
                  "interval (seeds + images)"],
                 [[r["layer"], r["n_seeds"], pm(r[f"{what} nats"], r["se nats"]),
                   f"[{fmt(r['ci95 low'])}, {fmt(r['ci95 high'])}]", fmt(r["se seeds+images nats"]),
                   f"[{fmt(r['ci95 low (seeds)'])}, {fmt(r['ci95 high (seeds)'])}]"] for r in rows])


@register_command
class EstimateMI(InverterAnalysis):
    name = "estimate-mi"
    step_schema = EstimateMIStep
    examples = (
        "invkeras estimate-mi --inverter runs/procedural/conv/inverters/pixelcnn/conv1 --inverter runs/procedural/conv/inverters/pixelcnn/fc3 --unconditional runs/procedural/conv/inverters/pixelcnn/none --reference conv1",
        "invkeras estimate-mi --inverter runs/mnist/conv/inverters/cinn/conv1 --inverter runs/mnist/conv/inverters/cinn/fc3 --unconditional runs/mnist/conv/inverters/cinn/none   # latent-space estimate H*(z) - H*(z|h), mi/latent_test.json",
    )
    cli = staticmethod(cli_estimate_mi)

    @staticmethod
    def run(step) -> str:
        rows = step.rows()
        unconditional = [str(path) for path in step.unconditional_inverters()]
        config = config_of(step, EstimateMIConfig, inverters=[str(inverter) for _, inverter in rows],
                           unconditional=(unconditional[0] if len(unconditional) == 1 else unconditional) or None,
                           out=str(step.out()), labels=[label for label, _ in rows] if step.archs else None)
        report, _ = estimate_mi(config)
        if getattr(report, "space", None) == "latent":
            return "latent-space estimate: " + "; ".join(
                f"{r['layer']} H*(z|h) {r[NLL]:.1f}" + ("" if r[ESTIMATE] is None else f", I est. {r[ESTIMATE]:.1f}")
                for r in report.rows) + " nats"
        return "; ".join(f"{r['layer']} {r['H*(x|h) nats']:.1f}" for r in report.rows) + " nats"

    @staticmethod
    def outputs(step):
        return [step.out()]

    @classmethod
    def inverters_read(cls, step):
        return [path for _, path in step.rows()] + step.unconditional_inverters()

    @staticmethod
    def show(step) -> None:
        """The information table, after a recipe has run: the result people run it for."""
        from invkeras.analyses.mi import MIReport

        console.print(mi_report_table(step.out()))
        seeded = seeds_table(MIReport.from_json(step.out())) if step.out().name == report_name(step.split) else None
        if seeded is not None:
            console.print(seeded)


# --- edit ---------------------------------------------------------------------


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvkerasError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not values:
        raise InvkerasError(f"{flag} {text!r}: give at least one number")
    if not all(math.isfinite(v) for v in values):
        raise InvkerasError(f"{flag} {text!r}: every number must be finite")
    return values


class EditStep(create_model("_EditFields", __base__=InvertersInWorkspace,
                            **fields_of(EditConfig, without=("inverter", "out")))):
    """Logit editing, one run per layer's inverter: grids sweeping each operation's strength and
    edits.json with the classifier's labels, in <inverter dir>/<subdir>/."""
    command: Literal["edit"]
    # `scale` here multiplies h; the recipe's top-level `scale` (a model size) must not reach it.
    own_keys: ClassVar[tuple[str, ...]] = ("scale",)
    subdir: str = Field(EDITS_DIR, description="folder under the inverter's directory (several edit steps of "
                                               "one inverter need different ones)")

    @field_validator("shift", mode="before")
    @classmethod
    def _shift_list(cls, value):
        return shift_list(value)

    @field_validator("subdir")
    @classmethod
    def _plain_subdir(cls, value: str) -> str:
        try:
            return artifacts.plain_name(value, "subdir")  # one folder, checked as the layout checks it
        except InvkerasError as exc:
            raise ValueError(str(exc)) from None

    def out(self, layer: str) -> Path:
        return self.inverter(layer) / artifacts.plain_name(self.subdir, "subdir")


def cli_edit(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras (any kind that can sample)."),
    shift: List[str] = typer.Option([], "--shift", help="CLASS:DELTA: add DELTA to logit (unit) CLASS of h; repeatable."),
    scale: Optional[float] = typer.Option(None, help="Multiply h by S (swept from 1 to S)."),
    noise: Optional[float] = typer.Option(None, help="Add Gaussian noise of standard deviation SIGMA to h (h's units)."),
    interpolate: bool = typer.Option(False, "--interpolate", help="Interpolate from each input's h to the next one's."),
    strengths: Optional[str] = typer.Option(None, help="Comma-separated sweep, 0 = h unedited [default: 0,0.25,0.5,0.75,1]."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out inputs N [default: 8]."),
    num_samples: Optional[int] = typer.Option(None, help="Samples K per input and strength [default: 1]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="Same seed, same samples and noise [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="Images sampled in parallel [default: 64]."),
    method: Optional[str] = typer.Option(None, help="A kind's sampler (pixelcnn: pixel | cached | full)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default <inverter dir>/edits)."),
) -> None:
    """Edit the logits (or any layer's h) of held-out images, decode them with the inverter, and label the
    results: a grid per operation sweeping its strength, and edits.json (Teterwak et al. 2021)."""
    options = given(locals())

    if not shift:
        options.pop("shift")
    if not interpolate:
        options.pop("interpolate")
    if strengths is not None:
        options["strengths"] = parse_floats(strengths, "--strengths")
    result = edit_inverter(EditConfig(**options))
    console.print(edit_table(result))
    console.print("written: " + ", ".join(str(p) for p in [result.json_path, result.arrays_path,
                                                           *result.grid_paths.values()]))


@register_command
class Edit(InverterAnalysis):
    name = "edit"
    step_schema = EditStep
    examples = (
        "invkeras edit --inverter runs/mnist/conv/inverters/gan/logits --shift 3:10",
        "invkeras edit --inverter runs/mnist/conv/inverters/pixelcnn/logits --shift 0:8 --shift 7:8 --scale 3 --noise 2 --interpolate --num-inputs 6   # any kind that can sample",
        "invkeras edit --inverter DIR --scale 0 --strengths 0,0.5,0.9,1 --num-samples 4",
    )
    cli = staticmethod(cli_edit)

    @staticmethod
    def run(step) -> str:
        summaries = []
        for layer in step.layers:
            if artifacts.is_complete(step.out(layer) / EDITS_JSON):
                continue
            result = edit_inverter(config_of(step, EditConfig, inverter=str(step.inverter(layer)),
                                             out=str(step.out(layer))))
            for op in result.operations:
                last = op["per_strength"][-1]
                target = last.get("share_target_class", last.get("share_partner_label"))
                summaries.append(f"{layer} {op['name']}: " + (f"{target:.0%} target label" if target is not None else
                                                              f"{last['share_input_label']:.0%} keep the input's label"))
        return "; ".join(summaries) or "nothing left to edit"

    @staticmethod
    def outputs(step):
        return [step.out(layer) / EDITS_JSON for layer in step.layers]


# --- latent -------------------------------------------------------------------


class MixStep(create_model("_MixFields", __base__=InvertersInWorkspace,
                           **fields_of(MixConfig, without=("inverter", "out")))):
    """Image mixing grids D(t^-1(v_A | h_B)), one per layer, for a kind with a latent residual
    (set `kind: cinn`); mix.png and mix.npz in each inverter's directory."""
    command: Literal["mix"]


def cli_mix(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras of a kind with a latent residual (cinn)."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out images N; the grid is N x N [default: 6]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 256]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the inverter's)."),
) -> None:
    """Image A's residual under image B's representation, D(t^-1(v_A | h_B)) (Rombach et al. 2020):
    an N x N grid, rows A, columns B; the diagonal is the autoencoder's reconstruction."""
    options = given(locals())

    result = mix_images(MixConfig(**options))
    rows = [["grid", result.grid_path], ["arrays", result.arrays_path], ["wall time", f"{result.seconds:.1f} s"]]
    if result.share_label_of_b is not None:
        rows.append(["mixes labelled as image B (as image A)",
                     f"{result.share_label_of_b:.2f} ({result.share_label_of_a:.2f})"])
    console.print(table("Mixes", ["", "value"], rows))


@register_command
class Mix(OnePerLayer, InverterAnalysis):
    name = "mix"
    step_schema = MixStep
    examples = (
        "invkeras mix --inverter runs/procedural/conv/inverters/cinn/fc3",
        "invkeras mix --inverter runs/procedural/conv/inverters/cinn/conv1 --num-inputs 8 --split validation",
    )
    cli = staticmethod(cli_mix)

    @staticmethod
    def layer_output(step, layer):
        return step.inverter(layer) / MIX_GRID

    @staticmethod
    def run_layer(step, layer) -> str:
        mix_images(config_of(step, MixConfig, inverter=str(step.inverter(layer))))
        return f"{layer}: mixing grid"


class AttackStep(create_model("_AttackFields", __base__=InvertersInWorkspace,
                              **fields_of(AttackConfig, without=("inverter", "out")))):
    """Adversarial examples for the classifier and D(t^-1(v_x | h(x'))), one attack per layer's
    inverter, for a kind with a latent residual (set `kind: cinn`); attack.png, .npz and .json in
    <inverter dir>/attacks/<method>_eps<epsilon>/."""
    command: Literal["attack"]

    def out(self, layer: str) -> Path:
        return attack_dir(self.inverter(layer), self.method, self.epsilon)


def cli_attack(
    inverter: str = typer.Option(..., help="Inverter directory or inverter.keras of a kind with a latent residual (cinn)."),
    epsilon: float = typer.Option(..., help="L-inf radius on [0, 1] pixels (MNIST: 0.3)."),
    method: Optional[str] = typer.Option(None, help="pgd | fgsm [default: pgd]."),
    pgd_steps: Optional[int] = typer.Option(None, help="PGD steps [default: 10]."),
    pgd_step_size: Optional[float] = typer.Option(None, help="PGD step size on [0, 1] pixels [default: 2.5 * eps / steps]."),
    num_inputs: Optional[int] = typer.Option(None, help="Held-out images N (rows of the grid) [default: 8]."),
    split: Optional[str] = typer.Option(None, help="validation | test [default: test]."),
    seed: Optional[int] = typer.Option(None, help="PGD's random start [default: 0]."),
    batch_size: Optional[int] = typer.Option(None, help="[default: 256]"),
    out: Optional[str] = typer.Option(None, help="Output directory (default <inverter dir>/attacks/<method>_eps<e>)."),
) -> None:
    """Adversarial examples x' (FGSM or PGD) for the inverter's classifier, and D(t^-1(v_x | h(x'))): what the
    attack changed in the layer's representation, with x's own residual (Rombach et al. 2020). Rows:
    x | D(E(x)) || x' | decoded."""
    options = given(locals())

    result = attack_inverter(AttackConfig(**options))
    s = result.summary

    def share(value):
        return "" if value is None else f"{value:.0%}"

    rows = [["attack", s["label"]], ["inputs", s["n"]],
            ["attack success rate (label of x' != label of x)", share(s["attack_success_rate"])],
            ["decoded labelled with the adversarial label of x' (successful attacks only)",
             f"{share(s['share_decoded_with_adversarial_label'])} "
             f"({share(s['share_decoded_with_adversarial_label_successful'])})"],
            ["decoded keeping x's label", share(s["share_decoded_with_input_label"])],
            ["reconstructions keeping x's label", share(s["share_reconstructions_with_input_label"])],
            ["labels x / D(E(x)) / x' / decoded",
             ", ".join(f"{p['x']}/{p['reconstruction']}/{p['x_adv']}/{p['decoded']}" for p in s["per_input"])],
            ["wall time", f"{result.seconds:.1f} s"]]
    console.print(table("Attack on the representation", ["", "value"], rows))
    console.print("written: " + ", ".join(str(p) for p in result.paths))


@register_command
class Attack(OnePerLayer, InverterAnalysis):
    name = "attack"
    step_schema = AttackStep
    examples = (
        "invkeras attack --inverter runs/mnist/conv/inverters/cinn/fc3 --epsilon 0.3",
        "invkeras attack --inverter runs/mnist/conv/inverters/cinn/logits --epsilon 0.1 --method fgsm --num-inputs 16",
        "invkeras attack --inverter DIR --epsilon 0.3 --pgd-steps 40 --out attacks/fc3-pgd40",
    )
    cli = staticmethod(cli_attack)

    @staticmethod
    def layer_output(step, layer):
        return step.out(layer) / ATTACK_JSON

    @staticmethod
    def run_layer(step, layer) -> str:
        s = attack_inverter(config_of(step, AttackConfig, inverter=str(step.inverter(layer)),
                                      out=str(step.out(layer)))).summary
        return (f"{layer}: {s['attack_success_rate']:.0%} labels changed, "
                f"{s['share_decoded_with_adversarial_label']:.0%} decoded as x'")


# --- report -------------------------------------------------------------------


def cli_report(
    run_dir: str = typer.Argument(..., help="A workspace (runs/) or one run (runs/<dataset>/<arch>)."),
    out: Optional[str] = typer.Option(None, help="HTML path (default <RUN_DIR>/report/report.html), or a folder to hold report.html; the .md twin and plots go beside it."),
) -> None:
    """One self-contained HTML report (and a Markdown twin) of every artefact in a run directory."""
    html_path, md_path = write_report(run_dir, out)
    console.print(f"written: {html_path} and {md_path}")


@register_command
class Report(Command):
    name = "report"
    examples = (
        "invkeras report runs                           # writes runs/report/report.html (+ .md)",
        "invkeras report runs/procedural/conv           # one run",
        "invkeras report runs --out reports/all.html    # + reports/all.md, reports/all-*.png",
    )
    cli = staticmethod(cli_report)
