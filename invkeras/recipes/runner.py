"""Running a recipe: each step in order, skipping those whose outputs are complete.

A step whose outputs (artefact plus metadata) all exist is skipped on a rerun, and long
steps resume from their own checkpoints, so `invkeras run` can simply be run again after a
kill. Runners are looked up by command; `train-inverter` runs whatever kind the step names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
    status: str  # "ran" or "skipped"
    seconds: float
    summary: str
    outputs: list[str]


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
    raise TypeError(type(step))


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


RUNNERS: dict[str, Callable[[Any], str]] = {
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
) -> list[StepResult]:
    """Run each step in order, skipping the ones whose outputs are complete."""
    results = []
    for name, step in recipe.steps.items():
        outputs = step_outputs(step)
        if all(artifacts.is_complete(p) for p in outputs):
            results.append(StepResult(name, step.command, "skipped", 0.0, "outputs complete", [str(p) for p in outputs]))
            continue
        if on_step is not None:
            on_step(name, step)
        started = time.time()
        try:
            summary = RUNNERS[step.command](step)
        except InvkerasError as exc:
            raise type(exc)(f"recipe {source or recipe.name}: step '{name}': {exc}") from exc
        results.append(StepResult(name, step.command, "ran", time.time() - started, summary, [str(p) for p in outputs]))
    record = Path(recipe.workspace) / "recipes" / f"{recipe.name}.json"
    artifacts.write_json_atomic(record, {"recipe": recipe, "source": str(source), "steps": [r.__dict__ for r in results]})
    artifacts.write_metadata(record, kind="recipe-run", config=recipe, seed=recipe.seed, data=recipe.dataset)
    return results
