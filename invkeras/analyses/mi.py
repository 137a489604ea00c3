"""Information estimates from inverters' held-out likelihoods (Nash et al. 2019, Sec. 3).

For an inverter q(x|h) evaluated on held-out images, the mean NLL H*(x|h) = E[-log q(x|h)]
is a cross-entropy and so bounds the true conditional entropy from above: H(x|h) <= H*(x|h).
Hence
  * NCE = -H*(x|h) is a lower bound on I(x;h) up to the constant H(x): I(x;h) >= H(x) + NCE;
  * where H(x) is known exactly (the embedded procedural dataset), H(x) - H*(x|h) is a true
    lower bound on I(x;h);
  * with an unconditional model q(x), H*(x) - H*(x|h) is only an *estimate* of I(x;h)
    (H*(x) is itself an upper bound, so the difference is not a bound either way).
All inverters are evaluated on the same images in the same order, so differences between
layers use paired standard errors; every estimate carries the fingerprint of its images and
a report refuses to mix estimates of different images.

The table is honest about what the numbers cannot mean: an estimate H*(x) - H*(x|h) above the
exact H(x) is impossible for I(x;h) <= H(x), so the unconditional model is undertrained by at
least the excess (flag "estimate exceeds H(x)"); a bound H(x) - H*(x|h) below zero says
nothing (flag "lower bound vacuous"). The raw numbers are kept either way.

The split is the one asked for; when that is only the default (test) and the inverters'
data have no test split (a user's features .npz), the held-out split they all have, with a
note saying so (`invkeras.inverters.data.choose_held_out_split`).

Several inverters of one layer that differ only in their seed are one row: H*(x|h) is their
mean, and beside the test-image interval the row has one that adds the spread between the
training runs (`invkeras.analyses.seeds`; columns "n_seeds", "se seeds+images nats" and
"ci95 low/high (seeds)", present only when some layer has several seeds). Rows of layers of
one feed-forward chain are checked against the data-processing inequality
(`invkeras.analyses.data_processing`): a deeper layer whose estimate exceeds a shallower one's
beyond the difference's interval is flagged under its row. The chain is the classifier's
graph order, or the `order` given.

Only kinds with a pixel likelihood (`pixel_log_prob`) give such bounds; any other kind is
refused in one line. Kinds with a latent likelihood (`latent_likelihood`, e.g. cinn) get a
separate latent-space table instead (`invkeras.analyses.latent_mi`, written to
mi/latent_<split>.json); latent-space and pixel-space inverters in one run are refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from invkeras import artifacts
from invkeras.analyses import data_processing, seeds
from invkeras.errors import InvkerasError
from invkeras.stats import standard_error

COMMAND = "estimate-mi"
ESTIMATE = "H*(x) - H*(x|h) [estimate]"
LOWER_BOUND = "H(x) - H*(x|h) [lower bound on I]"
EXCEEDS = "estimate exceeds H(x)"
VACUOUS = "lower bound vacuous"


class EstimateMIConfig(BaseModel):
    """Settings of `invkeras estimate-mi` (and of the recipe step)."""

    model_config = ConfigDict(extra="forbid")

    inverters: list[str] = Field(min_length=1, description="inverter directories or model files (pixel likelihoods)")
    unconditional: Optional[Union[str, list[str]]] = Field(
        None, description="an unconditional inverter (layer 'none'), for H*(x) - H*(x|h); several: its seeds")
    reference: Optional[str] = Field(None, description="layer (or label) whose NCE the others are compared with")
    split: str = Field("test", description="validation | test")
    eval_examples: Optional[int] = Field(None, gt=0, description="evaluate on N held-out images, a fixed sample")
    out: Optional[str] = Field(None, description="JSON path (a CSV twin beside it); default runs/<dataset>/<arch>/mi/<split>.json")
    labels: Optional[list[str]] = Field(None, description="row names instead of the layers, one per inverter")
    order: Optional[list[str]] = Field(None, description="rows (layers or labels) of one feed-forward chain, shallow to "
                                       "deep, for the data-processing check; default the classifier's graph order")

    @field_validator("out")
    @classmethod
    def _out_is_a_file(cls, value: Optional[str]) -> Optional[str]:
        return artifacts.file_not_folder(value)


def rows_csv(rows: list[dict]) -> str:
    """CSV of table rows (the union of their keys as columns; None as an empty cell)."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


@dataclass
class PerImageNLL:
    """One inverter's held-out NLLs, per image, with their mean and standard error; or several
    inverters of one layer differing only in their training seed, whose per-image NLLs
    [seeds, images] are `per_seed` and whose per-image mean is `nll_nats`."""

    layer: str
    inverter: str
    nll_nats: np.ndarray  # per image
    per_seed: np.ndarray | None = field(default=None, kw_only=True)
    seeds: list[int] | None = field(default=None, kw_only=True)

    @property
    def n_seeds(self) -> int:
        return 1 if self.per_seed is None else len(self.per_seed)

    @property
    def seed_values(self) -> np.ndarray:
        """Per-image NLLs as [seeds, images] (one row for one seed)."""
        return self.nll_nats[None] if self.per_seed is None else self.per_seed

    @property
    def n(self) -> int:
        return len(self.nll_nats)

    @property
    def mean(self) -> float:
        return float(np.mean(self.nll_nats))

    @property
    def se(self) -> float:
        return standard_error(self.nll_nats)


@dataclass
class LayerEstimate(PerImageNLL):
    bits_per_dim_factor: float
    fingerprint: str | None = None  # of the held-out images (None: unknown, e.g. hand-made)
    kind: str | None = None


def combine_seeds(estimates: list[PerImageNLL], seeds: list[int]) -> PerImageNLL:
    """One estimate of a layer from its inverters of several seeds (pixel or latent ones), all
    evaluated on the same images: per image, the mean NLL over the seeds; each seed's kept for
    the interval."""
    if len(estimates) == 1:
        return estimates[0]
    _check_same_images(estimates)
    per_seed = np.stack([e.nll_nats for e in estimates])
    return dataclasses.replace(estimates[0], nll_nats=per_seed.mean(axis=0), per_seed=per_seed, seeds=list(seeds))


@dataclass
class MIReport:
    split: str
    dataset: str
    entropy_nats: float | None
    rows: list[dict] = field(default_factory=list)
    fingerprint: str | None = None  # of the held-out images every row was evaluated on
    data_processing: dict | None = None  # the chains checked and their breaches (None: nothing checked)

    @classmethod
    def from_json(cls, path: str | Path) -> "MIReport":
        import json

        payload = json.loads(Path(path).read_text())
        return cls(split=payload["split"], dataset=payload["dataset"], entropy_nats=payload["entropy_nats"],
                   rows=payload["rows"], fingerprint=payload.get("fingerprint"),
                   data_processing=payload.get("data_processing"))

    def to_csv(self) -> str:
        return rows_csv(self.rows)


def _load(inverter):
    from invkeras.inverters import Inverter, load_inverter

    return inverter if isinstance(inverter, Inverter) else load_inverter(inverter)


def held_out_nll(inverter, *, split: str = "test", eval_examples: int | None = None, batch_size: int = 64,
                 reuse: bool = True) -> LayerEstimate:
    """Per-image NLL (nats) of one inverter (a path or a loaded inverter) on a held-out split
    of the data it was trained for, with the fingerprint of those images.

    The kind must have a pixel likelihood. The NLLs recorded at the end of training are reused
    when they cover the same images (`reuse=False` evaluates the saved model afresh).
    """
    from invkeras.inverters.base import nats_to_bits_per_dim
    from invkeras.inverters.data import fingerprint, held_out_inputs

    inverter = _load(inverter)
    inverter.require("pixel_log_prob", COMMAND)
    config = inverter.config
    factor = nats_to_bits_per_dim(inverter.image_shape)
    where = str(inverter.path)

    def estimate(nll, prints):
        return LayerEstimate(inverter.layer, where, np.asarray(nll, np.float64), factor, prints, inverter.kind)

    recorded = inverter.recorded_nll(split) if reuse else None
    if recorded is not None:
        nll, prints = recorded
        if eval_examples in (None, config.eval_examples, len(nll)):  # the same first images of the split
            if prints is None:  # recorded before fingerprints were: take them from the images now
                prints = fingerprint(held_out_inputs(config, split, len(nll))["x"])
            return estimate(nll, prints)
    count = eval_examples or config.eval_examples
    inputs = held_out_inputs(config, split, count) if count else _whole_split(config, split)
    nll = -np.asarray(inverter.log_prob(inputs["x"], inputs.get("h"), batch_size=batch_size), np.float64)
    return estimate(nll, fingerprint(inputs["x"]))


def _whole_split(config, split: str) -> dict:
    """Every held-out pair of a split of the data the inverter was trained on."""
    from invkeras.inverters.data import paired_arrays

    from invkeras.inverters.data import held_out_splits

    available = held_out_splits(config)
    if split not in available:
        raise InvkerasError(f"--split {split}: this inverter's data has no held-out '{split}' split; "
                            f"it has: {', '.join(available)}")
    _, val, test, _ = paired_arrays(config)
    return {"validation": val, "test": test}[split]


def _check_same_images(estimates: list[LayerEstimate]) -> None:
    sizes = {e.n for e in estimates}
    if len(sizes) != 1:
        raise InvkerasError(f"{COMMAND}: inverters were evaluated on different numbers of images {sorted(sizes)}")
    known = [e for e in estimates if e.fingerprint is not None]
    for other in known[1:]:
        if other.fingerprint != known[0].fingerprint:
            raise InvkerasError(f"{COMMAND}: inverters {known[0].inverter} and {other.inverter} were evaluated on "
                                f"different held-out images (fingerprints {known[0].fingerprint} and "
                                f"{other.fingerprint}); estimates of different data cannot share a table")


def build_report(
    estimates: list[LayerEstimate],
    *,
    split: str,
    dataset: str,
    unconditional: LayerEstimate | None = None,
    reference_layer: str | None = None,
    entropy_nats: float | None = None,
    order: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> MIReport:
    """Rows of H*(x|h), NCE, NCE relative to a reference layer, and the MI estimates/bounds, flagged
    where they cannot be read as they stand (see the module docstring).

    `order` names rows of one feed-forward chain, shallow to deep (or several chains, as lists),
    for the data-processing check; None checks nothing."""
    if not estimates:
        raise InvkerasError(f"{COMMAND}: no inverters given")
    everything = [*estimates, *([unconditional] if unconditional else [])]
    _check_same_images(everything)
    reference = None
    if reference_layer is not None:
        matches = [e for e in estimates if e.layer == reference_layer]
        if not matches:
            layers = ", ".join(e.layer for e in estimates)
            raise InvkerasError(f"--reference {reference_layer}: not among the inverters' layers ({layers})")
        reference = matches[0]

    seeded = any(e.n_seeds > 1 for e in everything)
    prints = {e.fingerprint for e in everything if e.fingerprint is not None}
    report = MIReport(split=split, dataset=dataset, entropy_nats=entropy_nats,
                      fingerprint=prints.pop() if prints else None)
    for estimate in everything:
        row = {
            "layer": estimate.layer,
            "n_images": estimate.n,
            "H*(x|h) nats": estimate.mean,
            "se nats": estimate.se,
            "ci95 low": estimate.mean - 1.96 * estimate.se,
            "ci95 high": estimate.mean + 1.96 * estimate.se,
            "bits/dim": estimate.mean * estimate.bits_per_dim_factor,
            "NCE nats": -estimate.mean,
            "NCE - NCE(ref)": None,
            "se (paired)": None,
            ESTIMATE: None,
            LOWER_BOUND: None,
            EXCEEDS: None,
            VACUOUS: None,
            "note": None,
            "inverter": estimate.inverter,
        }
        notes = []
        if reference is not None:
            diff = reference.nll_nats - estimate.nll_nats  # NCE(layer) - NCE(ref)
            row["NCE - NCE(ref)"] = float(np.mean(diff))
            row["se (paired)"] = standard_error(diff)
        if unconditional is not None and estimate is not unconditional:
            row[ESTIMATE] = float(np.mean(unconditional.nll_nats - estimate.nll_nats))
            if entropy_nats is not None:
                excess = row[ESTIMATE] - entropy_nats
                row[EXCEEDS] = bool(excess > 0)
                if excess > 0:
                    notes.append(f"H*(x) - H*(x|h) exceeds H(x) = {entropy_nats:.3f} nats by {excess:.3f}, but "
                                 f"I(x;h) <= H(x): the unconditional model is undertrained by at least {excess:.3f} "
                                 "nats, so this estimate overstates I(x;h)")
        if entropy_nats is not None:
            row[LOWER_BOUND] = entropy_nats - estimate.mean
            row[VACUOUS] = bool(row[LOWER_BOUND] < 0)
            if row[VACUOUS]:
                notes.append(f"H(x) - H*(x|h) < 0: the bound I(x;h) >= {row[LOWER_BOUND]:.3f} says nothing "
                             "(H*(x|h) is loose by at least that much)")
        if seeded:
            row.update(seed_interval_columns(estimate))
            if reference is not None and max(estimate.n_seeds, reference.n_seeds) > 1:
                # NCE(layer) - NCE(ref) = H*(x|ref) - H*(x|h), paired over images, with both layers' seed spread
                row["se (paired, seeds+images)"] = seeds.difference(reference.seed_values, estimate.seed_values).se
        row["note"] = "; ".join(notes) or None
        report.rows.append(row)
    _check_data_processing(report, estimates, order)
    return report


def seed_interval_columns(estimate: PerImageNLL) -> dict:
    """The seed columns of a row: the combined interval where the layer has several seeds; a
    layer of one seed has no estimate of the spread between runs, so none is made up."""
    if estimate.n_seeds < 2:
        return {"n_seeds": 1, "se seeds+images nats": None, "ci95 low (seeds)": None, "ci95 high (seeds)": None,
                "seeds": estimate.seeds}
    combined = seeds.interval(estimate.seed_values)
    return {"n_seeds": estimate.n_seeds, "se seeds+images nats": combined.se, "ci95 low (seeds)": combined.low,
            "ci95 high (seeds)": combined.high, "seeds": estimate.seeds}


def _check_data_processing(report: MIReport, estimates: list[LayerEstimate], order) -> None:
    """Flag, under the deeper row, each pair of a chain whose deeper layer keeps more than the
    shallower beyond the interval of their difference (`invkeras.analyses.data_processing`)."""
    if not order:
        return
    chains = [list(order)] if isinstance(order[0], str) else [list(chain) for chain in order]
    values = {e.layer: -e.seed_values for e in estimates}  # NCE per image: grows with what the layer keeps
    chains = [[name for name in chain if name in values] for chain in chains]
    chains = [chain for chain in chains if len(chain) >= 2]
    if not chains:
        return
    found = [breach for chain in chains for breach in data_processing.breaches(chain, values)]
    rows = {row["layer"]: row for row in report.rows}
    for breach in found:
        row = rows[breach.deeper]
        row["note"] = "; ".join(filter(None, [row["note"], breach.sentence()]))
    report.data_processing = {"chains": chains, "breaches": [b.as_dict() for b in found],
                              "flag": data_processing.FLAG if found else None}


def report_name(split: str, latent: bool = False) -> str:
    """<split>.json for the pixel-space table, latent_<split>.json for the latent-space one."""
    return f"latent_{split}.json" if latent else f"{split}.json"


def default_out(inverter, split: str) -> Path:
    """runs/<dataset>/<arch>/mi/<split>.json of the inverter's run (beside it, for user features);
    latent_<split>.json for inverters with a latent likelihood."""
    config = inverter.config
    name = report_name(split, bool(getattr(inverter, "latent_likelihood", False)))
    if config.features:
        return inverter.path.parent / "mi" / name
    return artifacts.run_dir(config.dataset, config.arch, config.workspace) / "mi" / name


def _check_unconditional(inverter) -> None:
    if inverter.conditional:
        raise InvkerasError(f"--unconditional {inverter.path.parent}: inverts layer '{inverter.layer}'; give an "
                            "unconditional inverter (layer 'none')")


def _split_by_space(inverters: list) -> bool:
    """True when every inverter has a latent likelihood, False when none has; latent-space and
    pixel-space inverters together are refused in one line (their entropies are of different things)."""
    from invkeras.analyses.latent_mi import is_latent

    latent = [i for i in inverters if is_latent(i)]
    if latent and len(latent) != len(inverters):
        other = next(i for i in inverters if not is_latent(i))
        raise InvkerasError(f"{COMMAND}: inverter {latent[0].path.parent} (kind '{latent[0].kind}') gives a "
                            f"latent-space estimate (differential entropies of an autoencoder latent), inverter "
                            f"{other.path.parent} (kind '{other.kind}') does not; they cannot share a table: run "
                            f"{COMMAND} once for the latent-space and once for the pixel-space inverters")
    return bool(latent)


# Settings in which the runs of one layer's seeds may differ: where they are, how long they ran.
_NOT_THE_RUN = ("seed", "training_seed", "out", "workspace", "max_steps", "max_time", "patience", "eval_examples",
                "strategy")


def group_seeds(inverters: list, labels: list[str] | None) -> list[list[int]]:
    """Indices of the inverters, grouped into rows: inverters of one layer (and label) whose
    settings differ only in their seed are one row; every other inverter is a row of its own,
    as is a second inverter of a seed already in its group."""
    from invkeras.training import trajectory_settings

    groups: list[list[int]] = []
    keys: list[tuple] = []
    for index, inverter in enumerate(inverters):
        settings = trajectory_settings(inverter.config, _NOT_THE_RUN)
        key = (inverter.kind, inverter.layer, None if labels is None else labels[index], repr(settings))
        for group, other in zip(groups, keys):
            if other == key and all(inverters[i].config.run_seed != inverter.config.run_seed for i in group):
                group.append(index)
                break
        else:
            groups.append([index])
            keys.append(key)
    return groups


def chain_order(config: EstimateMIConfig, inverters: list, names: list[str]) -> list[list[str]] | None:
    """The chains of rows for the data-processing check: the `order` given, else per classifier
    its graph order of the rows' layers (rows of given features have no graph: none)."""
    if config.order is not None:
        unknown = [name for name in config.order if name not in names]
        if unknown:
            raise InvkerasError(f"--order {','.join(config.order)}: {', '.join(unknown)} not among the rows "
                                f"({', '.join(names)})")
        return [list(config.order)]
    by_classifier: dict[str, list[tuple[str, str]]] = {}
    for inverter, name in zip(inverters, names):
        classifier = inverter.classifier_path if inverter.conditional else None
        if classifier and Path(classifier).exists():
            by_classifier.setdefault(str(classifier), []).append((inverter.layer, name))
    chains = []
    for classifier, members in by_classifier.items():
        layers = list(dict.fromkeys(layer for layer, _ in members))
        if len(layers) < 2 or len(layers) != len(members):  # two rows of one layer: no order between them
            continue
        ordered = data_processing.classifier_order(classifier, layers)
        if ordered is not None:
            chains.append([name for layer in ordered for other, name in members if other == layer])
    return chains or None


def estimate_mi(config: EstimateMIConfig) -> tuple[MIReport, Path]:
    """Evaluate inverters on one held-out split and write the report as JSON and CSV.

    `labels` name the rows instead of the layers, e.g. "conv/fc3" and "fc/fc3" when one layer of
    several architectures is compared; `reference` then names a label.
    """
    from invkeras.data import dataset_info

    from invkeras.inverters.data import choose_held_out_split

    inverters = [_load(path) for path in config.inverters]
    unconditional = [config.unconditional] if isinstance(config.unconditional, str) else config.unconditional or []
    base_inverters = [_load(path) for path in unconditional]
    if config.labels is not None and len(config.labels) != len(inverters):
        raise InvkerasError(f"{COMMAND}: need one distinct label per inverter, got {config.labels}")
    groups = group_seeds(inverters, config.labels)
    if config.labels is not None and len({config.labels[g[0]] for g in groups}) != len(groups):
        raise InvkerasError(f"{COMMAND}: need one distinct label per inverter, got {config.labels}")
    owners = {f"inverter {i.path.parent}": i.config for i in [*inverters, *base_inverters]}
    split = choose_held_out_split(owners, config.split, given="split" in config.model_fields_set, command=COMMAND)
    if split != config.split:
        config = config.model_copy(update={"split": split})
    latent = _split_by_space([*inverters, *base_inverters])
    if not latent:  # a latent table checks for its own likelihood
        for inverter in [*inverters, *base_inverters]:
            inverter.require("pixel_log_prob", COMMAND)
    for inverter in base_inverters:
        _check_unconditional(inverter)
    if len(group_seeds(base_inverters, None)) > 1:
        raise InvkerasError(f"{COMMAND}: the unconditional inverters {', '.join(str(i.path.parent) for i in base_inverters)} "
                            "differ in more than their seed; give one, or the seeds of one")
    if latent:
        from invkeras.analyses.latent_mi import estimate_latent_mi

        return estimate_latent_mi(config, inverters, base_inverters, default_out=default_out(inverters[0], config.split))

    each = [held_out_nll(i, split=config.split, eval_examples=config.eval_examples) for i in inverters]
    estimates = [combine_seeds([each[i] for i in group], [inverters[i].config.run_seed for i in group])
                 for group in groups]
    for estimate, group in zip(estimates, groups):
        if config.labels is not None:
            estimate.layer = config.labels[group[0]]
    base = None
    if base_inverters:
        base = combine_seeds([held_out_nll(i, split=config.split, eval_examples=config.eval_examples)
                              for i in base_inverters], [i.config.run_seed for i in base_inverters])
    first = inverters[0].config
    if first.features:
        dataset, entropy = f"features:{first.features}", None
    else:
        dataset = first.dataset
        entropy = dataset_info(first.dataset, data_dir=first.data_dir, seed=first.seed).entropy_nats
    order = chain_order(config, [inverters[g[0]] for g in groups], [e.layer for e in estimates])
    report = build_report(estimates, split=config.split, dataset=dataset, unconditional=base,
                          reference_layer=config.reference, entropy_nats=entropy, order=order)
    out_path = Path(config.out) if config.out else default_out(inverters[0], config.split)
    payload = {"split": config.split, "dataset": dataset, "entropy_nats": entropy, "fingerprint": report.fingerprint,
               "rows": report.rows}
    if report.data_processing is not None:
        payload["data_processing"] = report.data_processing
    artifacts.write_json_atomic(out_path, payload)
    artifacts.write_text_atomic(out_path.with_suffix(".csv"), report.to_csv())
    artifacts.write_metadata(
        out_path,
        kind="mi-estimate",
        config={**config.model_dump(), "inverters": [str(i.path) for i in inverters],
                "unconditional": (None if not base_inverters else str(base_inverters[0].path) if len(base_inverters) == 1
                                  else [str(i.path) for i in base_inverters])},
        data=dataset,
        results={"fingerprint": report.fingerprint, "n_images": report.rows[0]["n_images"]},
    )
    return report, out_path
