"""Running a recipe: each step in order, skipping those whose outputs are complete.

A step whose outputs (artefact plus metadata) all exist is skipped on a rerun, and long
steps resume from their own checkpoints, so `invkeras run` can simply be run again after a
kill. Runners are looked up by command; `train-inverter` runs whatever kind the step names.

Steps also form a graph (`step_dependencies`), which lets `invkeras.recipes.executors` run
the ones that do not depend on each other at the same time. The rule is the one a build
tool uses for files: each step declares the paths it reads and writes (`step_access`), and
a step waits for every earlier step that writes something it reads or writes, or reads
something it writes. Run in an order the graph allows, a recipe therefore sees on disk
exactly what it would have seen run top to bottom.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.recipes.schema import (CompareStep, EditStep, EstimateMIStep, ExportStep, ExtractStep, Recipe,
                                     SampleStep, TrainClassifierStep)

SAMPLE_GRID = "samples.png"
RECONSTRUCTION_GRID = "samples_reconstruction.png"
COMPARISON = "compare.json"


@dataclass
class StepResult:
    name: str
    command: str
    status: str  # "ran" or "skipped"; with an executor also "failed" or "not run"
    seconds: float
    summary: str
    outputs: list[str]
    started: float = 0.0  # time.time() when the step started (0 when skipped)
    log: str = ""  # the step's own log file, when an executor ran it in a worker


def _is_train_inverter(step: BaseModel) -> bool:
    return getattr(step, "command", None) == "train-inverter"


def step_outputs(step: BaseModel) -> list[Path]:
    """The artefacts whose completeness means the step is done."""
    if isinstance(step, TrainClassifierStep):
        return [step.model_path()]
    if isinstance(step, ExtractStep):
        from invkeras.data.features import MANIFEST

        return [step.split_dir(layer, split) / MANIFEST for layer in step.layers for split in step.splits]
    if isinstance(step, ExportStep):
        return [Path(step.out)]  # export writes <out>.meta.json beside the directory
    if _is_train_inverter(step):
        return [step.model_path()]
    if getattr(step, "command", None) == "train-autoencoder":
        return [step.model_path()]
    if getattr(step, "command", None) == "ground-truth":
        from invkeras.analyses.ground_truth import RESULT_FILE

        return [*step.model_paths(), step.out_dir() / RESULT_FILE]  # a table of fewer subsets is not done
    if getattr(step, "command", None) == "attack":
        from invkeras.analyses.attack import ATTACK_JSON

        return [step.out(layer) / ATTACK_JSON for layer in step.layers]
    if getattr(step, "command", None) == "mix":
        from invkeras.analyses.mix import MIX_GRID

        return [step.inverter(layer) / MIX_GRID for layer in step.layers]
    if isinstance(step, SampleStep):
        from invkeras.analyses.samples import output_name

        grids = [step.inverter(layer) / output_name(SAMPLE_GRID, step.misclassified) for layer in step.layers]
        if step.reconstruction:
            grids += [step.inverter(layer) / output_name(RECONSTRUCTION_GRID, step.misclassified)
                      for layer in step.layers]
        return grids
    if isinstance(step, EditStep):
        from invkeras.analyses.edit import EDITS_JSON

        return [step.out(layer) / EDITS_JSON for layer in step.layers]
    if isinstance(step, CompareStep):
        return [step.out(layer) / COMPARISON for layer in step.layers]
    if isinstance(step, EstimateMIStep):
        return [step.out()]
    if callable(getattr(step, "outputs", None)):  # steps that name their own outputs (the factor INN steps)
        return step.outputs()
    raise TypeError(type(step))


# --- what each step reads and writes: the recipe's graph ---------------------------------


ANALYSIS_COMMANDS = ("sample", "compare", "estimate-mi", "edit", "mix", "attack")
FEATURE_SPLITS = ("train", "validation", "test")  # what an inverter extracts when it has no features


@dataclass
class StepAccess:
    """The paths a step reads and writes, for ordering steps (never for locating files).

    A directory stands for everything inside it. `reads` is None for a command this module
    does not know: such a step is ordered after every earlier step and before every later one.
    `writes_if_missing` are feature directories the step extracts (every example of the
    split) only when they do not hold that already: an inverter without `features` does so.
    `whole_features` are the feature directories the step leaves holding whole splits.
    """

    reads: list[Path] | None
    writes: list[Path]
    writes_if_missing: list[Path] = field(default_factory=list)
    whole_features: list[Path] = field(default_factory=list)


def _model_files(value: str | Path, *names: str) -> list[Path]:
    """A model given as a `.keras` file or as a directory: the files the directory may hold."""
    path = Path(value)
    return [path] if path.suffix == ".keras" else [path / name for name in names]


def _classifier_files(value: str | Path) -> list[Path]:
    return _model_files(value, "classifier/model.keras", "model.keras")  # as data.features.resolve_model_path


def _features_of(step: BaseModel) -> list[Path]:
    """The feature directories a train-inverter step without `features` reads (and may extract)."""
    from invkeras.data.features import ExtractConfig

    extract = ExtractConfig(dataset=step.dataset, arch=step.arch, model=step.model, layers=[step.layer],
                            workspace=step.workspace)
    return [extract.split_dir(step.layer, split) for split in FEATURE_SPLITS]


def _inverters_read(step: BaseModel) -> list[Path]:
    """The directory of every inverter an analysis step loads (each ends in /<layer>)."""
    if isinstance(step, EstimateMIStep):
        return [path for _, path in step.rows()] + ([step.inverter("none")] if step.unconditional else [])
    if isinstance(step, CompareStep):
        return [step.inverter(layer, kind) for layer in step.layers for kind in step.compared_kinds()]
    kinds = [step.kind] + ([step.reconstruction] if getattr(step, "reconstruction", None) else [])
    return [step.inverter(layer, kind) for layer in step.layers for kind in kinds]


def step_access(step: BaseModel) -> StepAccess:
    """What a step reads and writes, by command (see `step_dependencies` for how it is used).

    Reads name a representative file where a directory is shared: an analysis reads an
    inverter's `inverter.keras`, not its whole directory, because other analyses write their
    grids beside it. Writes name everything a step may touch, checkpoints and resume state
    included. Datasets are not workspace paths and order nothing. A step schema may declare
    its own paths with `paths_read()` and `paths_written()` methods; a command with neither
    these nor a case below is a barrier (`reads` None).
    """
    from invkeras.inverters.base import MODEL_FILE

    command = getattr(step, "command", None)
    if callable(getattr(step, "paths_read", None)) and callable(getattr(step, "paths_written", None)):
        return StepAccess(step.paths_read(), step.paths_written())  # a step schema that declares its own
    if command == "train-classifier":
        model = step.model_path()
        return StepAccess([], [model, model.parent / "checkpoints", model.parent / "backup"])
    if command == "train-autoencoder":
        reads = _classifier_files(step.classifier) if step.classifier else []
        return StepAccess(reads, [step.model_path().parent])
    if command == "ground-truth":
        return StepAccess([], [step.out_dir()])
    if command == "extract":
        dirs = [step.split_dir(layer, split) for layer in step.layers for split in step.splits]
        return StepAccess(_classifier_files(step.model_path()), dirs, whole_features=[] if step.limit else dirs)
    if command == "export":
        out = Path(step.out)
        return StepAccess(_model_files(step.model, "classifier/model.keras", "model.keras", MODEL_FILE),
                          [out, artifacts.metadata_path(out)])
    if command == "train-inverter":
        reads, extracts = [], []
        if step.features:
            reads.append(Path(step.features))
        elif step.layer != "none":  # the unconditional model reads only the dataset
            extracts = _features_of(step)
            reads += _classifier_files(step.model or artifacts.run_dir(step.dataset, step.arch, step.workspace))
            reads += extracts
        if getattr(step, "autoencoder", None):
            reads += _model_files(step.autoencoder, MODEL_FILE)
        return StepAccess(reads, [step.out_dir()], writes_if_missing=extracts, whole_features=extracts)
    if command in ANALYSIS_COMMANDS:
        reads = []
        for inverter in _inverters_read(step):
            run = inverter.parents[2]  # runs/<dataset>/<arch>/inverters/<kind>/<layer>
            reads.append(inverter / MODEL_FILE)
            if inverter.name != "none":  # the classifier's labels and the layer's features
                reads += [run / "classifier" / "model.keras", run / "features" / inverter.name]
        return StepAccess(reads, step_outputs(step))
    return StepAccess(None, [])


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _touches(paths: list[Path] | None, others: list[Path] | None) -> bool:
    if paths is None or others is None:
        return True  # an unknown step: ordered against everything
    return any(_overlap(a, b) for a in paths for b in others)


def _whole_on_disk(split_dir: Path) -> bool:
    """Features extracted without a limit, complete: an inverter reuses them as they are."""
    from invkeras.data.features import MANIFEST

    try:
        return artifacts.is_complete(split_dir / MANIFEST) and \
            artifacts.read_metadata(split_dir / MANIFEST)["config"]["limit"] is None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def step_dependencies(recipe: Recipe) -> dict[str, list[str]]:
    """For each step, the earlier steps it must wait for (directly; they wait for the rest).

    Step B waits for an earlier step A when A writes a path that B reads or writes, or reads
    a path that B writes (paths overlap when equal or one holds the other). Together with the
    recipe's order this keeps every file read after it is written, and no two steps writing
    the same place at once, so any order the graph allows has the effect of running the
    recipe top to bottom. A step of a command without declared paths waits for every earlier
    step, and every later step waits for it.

    An inverter without `features` extracts its layer's features itself unless they hold
    every example of each split; that counts as a write unless an earlier step extracts them
    whole (an `extract` step without `limit`, or another inverter) or they are whole on disk
    already (otherwise two inverters of one layer could never train together).
    """
    access = {}
    whole: list[Path] = []
    for name, step in recipe.steps.items():
        a = step_access(step)
        a.reads = None if a.reads is None else [p.resolve() for p in a.reads]
        a.writes = [p.resolve() for p in a.writes]
        for path in a.writes_if_missing:
            if not _touches([path.resolve()], whole) and not _whole_on_disk(path):
                a.writes.append(path.resolve())
        whole += [p.resolve() for p in a.whole_features]
        access[name] = a
    names = list(access)
    waits: dict[str, list[str]] = {}
    before: dict[str, set[str]] = {}  # every step a step waits for, directly or not
    for i, name in enumerate(names):
        b = access[name]
        waits[name] = [earlier for earlier in names[:i]
                       if _touches(access[earlier].writes, b.reads) or _touches(access[earlier].writes, b.writes)
                       or _touches(access[earlier].reads, b.writes)]
        before[name] = set(waits[name]).union(*(before[w] for w in waits[name]))
    # Keep the direct waits only: a step reached through another one adds nothing to the order.
    return {name: [w for w in ws if not any(w in before[other] for other in ws)] for name, ws in waits.items()}


def _config_of(step: BaseModel, config_class: type[BaseModel], **values) -> BaseModel:
    """The library config a step stands for: the step's keys that the config has, plus `values`."""
    fields = set(config_class.model_fields)
    return config_class(**{**{k: v for k, v in step.model_dump().items() if k in fields}, **values})


def _run_train_classifier(step: TrainClassifierStep) -> str:
    from invkeras.classifiers.training import ClassifierConfig, train_classifier

    result = train_classifier(_config_of(step, ClassifierConfig))
    robust = "" if result.robust_accuracy is None else f", robust accuracy {result.robust_accuracy:.4f}"
    return f"test accuracy {result.test_accuracy:.4f}{robust}"


def _run_train_autoencoder(step) -> str:
    from invkeras.autoencoders.training import AutoencoderConfig, train_autoencoder

    result = train_autoencoder(_config_of(step, AutoencoderConfig))
    return f"latent {result.latent_dim}: held-out L1 per pixel {result.validation['l1_per_pixel']:.2f}, " \
           f"PSNR {result.validation['psnr_db']:.1f} dB"


def _run_mix(step) -> str:
    from invkeras.analyses.mix import MIX_GRID, MixConfig, mix_images

    for layer in step.layers:
        if not artifacts.is_complete(step.inverter(layer) / MIX_GRID):  # a rerun redoes only the missing grids
            mix_images(_config_of(step, MixConfig, inverter=str(step.inverter(layer))))
    return f"mixing grids for {', '.join(step.layers)}"


def _run_attack(step) -> str:
    from invkeras.analyses.attack import ATTACK_JSON, AttackConfig, attack_inverter

    summaries = []
    for layer in step.layers:
        if artifacts.is_complete(step.out(layer) / ATTACK_JSON):  # a rerun redoes only the missing attacks
            continue
        result = attack_inverter(_config_of(step, AttackConfig, inverter=str(step.inverter(layer)),
                                            out=str(step.out(layer))))
        s = result.summary
        summaries.append(f"{layer}: {s['attack_success_rate']:.0%} labels changed, "
                         f"{s['share_decoded_with_adversarial_label']:.0%} decoded as x'")
    return "; ".join(summaries) or "nothing left to attack"


def _run_extract(step: ExtractStep) -> str:
    from invkeras.data.features import ExtractConfig, extract_features

    written = extract_features(_config_of(step, ExtractConfig))
    return f"{len(written)} layer(s) x {len(step.splits)} split(s)"


def _run_export(step: ExportStep) -> str:
    from invkeras.export import export_saved_model

    return f"SavedModel at {export_saved_model(step.model, step.out)}"


def _run_train_inverter(step) -> str:
    from invkeras.inverters import inverter_class, train_inverter

    config = _config_of(step, inverter_class(step.kind).config_class)
    result = train_inverter(config)
    held_out = result.test or result.validation
    headline = held_out["headline"]
    return f"{step.kind} {step.layer}: {headline['name']} {headline['value']:.2f}, {result.steps} steps"


def _run_sample(step: SampleStep) -> str:
    from invkeras.analyses.samples import SampleConfig, draw_inversions, save_samples_with_reconstruction

    for layer in step.layers:
        config = _config_of(step, SampleConfig, inverter=str(step.inverter(layer)))
        if not artifacts.is_complete(step.inverter(layer) / config.output_name(SAMPLE_GRID)):  # only missing grids
            draw_inversions(config)
        if step.reconstruction and not artifacts.is_complete(step.inverter(layer) /
                                                             config.output_name(RECONSTRUCTION_GRID)):
            save_samples_with_reconstruction(config, str(step.inverter(layer, step.reconstruction)))
    return f"grids for {', '.join(step.layers)}" + (f" (+ {step.reconstruction} reconstructions)"
                                                     if step.reconstruction else "")


def _run_compare(step: CompareStep) -> str:
    from invkeras.analyses.compare import CompareConfig, compare_inverters

    summaries = []
    for layer in step.layers:
        if artifacts.is_complete(step.out(layer) / COMPARISON):
            continue
        inverters = [str(step.inverter(layer, kind)) for kind in step.compared_kinds()]
        result = compare_inverters(_config_of(step, CompareConfig, inverters=inverters, out=str(step.out(layer))))
        summaries.append(layer + " " + ", ".join(f"{r['label']} IM-NN {r['IM-NN']['mean_l1']:.2f}" for r in result.rows))
    return "; ".join(summaries) or "nothing left to compare"


def _run_estimate_mi(step: EstimateMIStep) -> str:
    from invkeras.analyses.mi import EstimateMIConfig, estimate_mi

    rows = step.rows()
    config = _config_of(step, EstimateMIConfig, inverters=[str(inverter) for _, inverter in rows],
                        unconditional=str(step.inverter("none")) if step.unconditional else None,
                        out=str(step.out()), labels=[label for label, _ in rows] if step.archs else None)
    report, _ = estimate_mi(config)
    if getattr(report, "space", None) == "latent":
        from invkeras.analyses.latent_mi import ESTIMATE, NLL

        return "latent-space estimate: " + "; ".join(
            f"{r['layer']} H*(z|h) {r[NLL]:.1f}" + ("" if r[ESTIMATE] is None else f", I est. {r[ESTIMATE]:.1f}")
            for r in report.rows) + " nats"
    return "; ".join(f"{r['layer']} {r['H*(x|h) nats']:.1f}" for r in report.rows) + " nats"


def _run_edit(step: EditStep) -> str:
    from invkeras.analyses.edit import EDITS_JSON, EditConfig, edit_inverter

    summaries = []
    for layer in step.layers:
        if artifacts.is_complete(step.out(layer) / EDITS_JSON):
            continue
        result = edit_inverter(_config_of(step, EditConfig, inverter=str(step.inverter(layer)), out=str(step.out(layer))))
        for op in result.operations:
            last = op["per_strength"][-1]
            target = last.get("share_target_class", last.get("share_partner_label"))
            summaries.append(f"{layer} {op['name']}: " + (f"{target:.0%} target label" if target is not None else
                                                          f"{last['share_input_label']:.0%} keep the input's label"))
    return "; ".join(summaries) or "nothing left to edit"


def _run_ground_truth(step) -> str:
    from invkeras.analyses.ground_truth import GroundTruthConfig, ground_truth

    result = ground_truth(_config_of(step, GroundTruthConfig))
    worst = max(result["rows"], key=lambda r: abs(r["gap_nats"]))
    return (f"{len(result['rows'])} subsets; largest gap {worst['gap_nats']:+.2f} nats ({worst['subset']}); "
            f"bounds {'hold' if result['all_bounds_hold'] else 'VIOLATED'}")


def _run_train_factors(step) -> str:
    from invkeras.factors.training import train_factors

    summaries = []
    for layer in step.layers:
        config = step.config(layer)
        if artifacts.is_complete(config.model_path()):  # a rerun trains only the missing layers
            continue
        result = train_factors(config)
        blocks = " ".join(f"{b['name']}:{b['size']}" for b in result.blocks)
        summaries.append(f"{layer} {blocks}, pair NLL {result.validation['pair_nll_nats_per_dim']:.3f} nats/dim")
    return "; ".join(summaries) or "nothing left to train"


def _run_edit_factors(step) -> str:
    from invkeras.analyses.factors import EDITS_JSON, EditFactorsConfig, edit_factors

    summaries = []
    for layer in step.layers:
        if artifacts.is_complete(step.out(layer) / EDITS_JSON):
            continue
        result = edit_factors(_config_of(step, EditFactorsConfig, factors=str(step.factor_dir(layer)),
                                         out=str(step.out(layer))))
        accuracy = [f"{name} {s['share_edit_accuracy']:.0%}" for name, s in result.summary.items()
                    if "share_edit_accuracy" in s]
        summaries.append(f"{layer}: {len(result.grids)} block(s)" + (f", edits right {', '.join(accuracy)}"
                                                                      if accuracy else ""))
    return "; ".join(summaries) or "nothing left to edit"


def _run_score_factors(step) -> str:
    from invkeras.analyses.factors import ScoreFactorsConfig, score_factors

    result = score_factors(_config_of(step, ScoreFactorsConfig, factors=[str(step.factor_dir(layer))
                                                                         for layer in step.layers],
                                      out=str(step.out())))
    parts = []
    for row in result.rows:
        matrix, swaps = row.get("disentanglement"), row.get("label_swaps")
        if matrix:
            diagonal = [values[matrix["factors"].index(b)] for b, values in zip(matrix["blocks"], matrix["matrix"])
                        if b in matrix["factors"]]
            parts.append(f"{row['label']} mean diagonal MI {sum(diagonal) / len(diagonal):.2f}")
        if swaps:
            parts.append(f"{row['label']} class swaps take B's label {swaps['class_swap_takes_b_label']:.0%}")
    return "; ".join(parts) or f"{len(result.rows)} factor model(s) scored"


RUNNERS: dict[str, Callable[[Any], str]] = {
    "train-factors": _run_train_factors,
    "edit-factors": _run_edit_factors,
    "score-factors": _run_score_factors,
    "ground-truth": _run_ground_truth,
    "train-classifier": _run_train_classifier,
    "train-autoencoder": _run_train_autoencoder,
    "mix": _run_mix,
    "attack": _run_attack,
    "extract": _run_extract,
    "export": _run_export,
    "train-inverter": _run_train_inverter,
    "sample": _run_sample,
    "compare": _run_compare,
    "estimate-mi": _run_estimate_mi,
    "edit": _run_edit,
}


def run_recipe(
    recipe: Recipe,
    *,
    source: str | Path = "",
    on_step: Callable[[str, BaseModel], None] | None = None,
    executor: Any = None,
) -> list[StepResult]:
    """Run each step in order, skipping the ones whose outputs are complete.

    With an `executor` (`invkeras.recipes.executors`), steps run in worker processes or on a
    Ray cluster instead, as many at once as the graph and the executor allow; the skip rule is
    the same, and `on_step` is not called (the executor reports its own progress).
    """
    if executor is not None:
        results = executor.run(recipe, source=source)
    else:
        results = []
        for name, step in recipe.steps.items():
            outputs = step_outputs(step)
            if all(artifacts.is_complete(p) for p in outputs):
                results.append(StepResult(name, step.command, "skipped", 0.0, "outputs complete",
                                          [str(p) for p in outputs]))
                continue
            if on_step is not None:
                on_step(name, step)
            started = time.time()
            try:
                summary = RUNNERS[step.command](step)
            except InvkerasError as exc:
                raise type(exc)(f"recipe {source or recipe.name}: step '{name}': {exc}") from exc
            results.append(StepResult(name, step.command, "ran", time.time() - started, summary,
                                      [str(p) for p in outputs], started=started))
    record = Path(recipe.workspace) / "recipes" / f"{recipe.name}.json"
    artifacts.write_json_atomic(record, {"recipe": recipe, "source": str(source), "steps": [r.__dict__ for r in results]})
    artifacts.write_metadata(record, kind="recipe-run", config=recipe, seed=recipe.seed, data=recipe.dataset)
    return results
