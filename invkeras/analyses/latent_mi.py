"""Latent information: H*(z) - H*(z|h) from flows over an autoencoder latent z = E(x).

For a kind with a latent likelihood (`latent_likelihood`: it encodes z = E(x) and gives
log p(z | h), as kind cinn does), the held-out mean -log q(z | h) is a cross-entropy of the
continuous z, so it bounds the *differential* entropy h(z | h) from above, and with an
unconditional flow q(z) (layer 'none') over the same latent

    H*(z) - H*(z|h)      nats per image

is an estimate of I(z; h), the information the layer keeps about the autoencoder's code of
the image. It is a **latent-space estimate**: differential entropies of z can be negative
and depend on z's scale, so these numbers are never put beside the pixel-space NCE table
of `estimate-mi` (discrete pixels, kind pixelcnn). `estimate-mi` refuses, in one line, to
mix latent-space and pixel-space inverters in one run: run it once for each.

As for pixels, inverters of one layer that differ only in their training seed make one row,
with the interval that adds the spread between them (`invkeras.analyses.seeds`), and every
inverter is evaluated on the same held-out images (their fingerprint
must agree, or the table is refused) and through the same autoencoder (its identity must
agree), so differences are paired and carry paired standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from invkeras import artifacts
from invkeras.analyses.mi import PerImageNLL, rows_csv, seed_interval_columns
from invkeras.errors import InvkerasError
from invkeras.stats import standard_error

COMMAND = "estimate-mi"
SPACE = "latent"
LABEL = "latent-space estimate"
NLL = "H*(z|h) nats"
ESTIMATE = "H*(z) - H*(z|h) [latent-space estimate]"
NOTE = ("latent-space estimate: differential entropies of the autoencoder latent z = E(x), in nats per image; "
        "not comparable with pixel-space NLL or NCE")


@dataclass
class LatentEstimate(PerImageNLL):  # nll_nats: -log q(z | h) per image
    latent_dim: int
    latent: dict  # which latent space (the autoencoder)
    fingerprint: str | None = None
    kind: str | None = None


@dataclass
class LatentMIReport:
    split: str
    dataset: str
    latent: dict
    rows: list[dict] = field(default_factory=list)
    fingerprint: str | None = None
    space: str = SPACE
    label: str = LABEL

    @classmethod
    def from_json(cls, path: str | Path) -> "LatentMIReport":
        import json

        payload = json.loads(Path(path).read_text())
        return cls(split=payload["split"], dataset=payload["dataset"], latent=payload.get("latent") or {},
                   rows=payload["rows"], fingerprint=payload.get("fingerprint"))

    def payload(self) -> dict:
        return {"space": self.space, "label": self.label, "note": NOTE, "split": self.split, "dataset": self.dataset,
                "latent": self.latent, "fingerprint": self.fingerprint, "rows": self.rows}

    def to_csv(self) -> str:
        return rows_csv(self.rows)


def is_latent(inverter) -> bool:
    return bool(getattr(inverter, "latent_likelihood", False))


def held_out_latent_nll(inverter, *, split: str = "test", eval_examples: int | None = None,
                        batch_size: int = 256) -> LatentEstimate:
    """-log q(E(x) | h) per held-out image (nats), with the fingerprint of the images."""
    from invkeras.analyses.mi import _whole_split
    from invkeras.inverters.data import fingerprint, held_out_inputs

    if not is_latent(inverter):
        raise InvkerasError(f"{COMMAND}: inverter {inverter.path.parent} (kind '{inverter.kind}') has no latent "
                            "likelihood")
    config = inverter.config
    count = eval_examples or config.eval_examples
    inputs = held_out_inputs(config, split, count) if count else _whole_split(config, split)
    z = inverter.encode(inputs["x"], batch_size=batch_size)
    h = inputs.get("h") if inverter.conditional else None
    nll = -np.asarray(inverter.latent_log_prob(z, h, batch_size=batch_size), np.float64)
    latent = inverter.latent_space() or {}
    return LatentEstimate(inverter.layer, str(inverter.path), nll, int(z.shape[-1]), latent,
                          fingerprint(inputs["x"]), inverter.kind)


def _check_comparable(estimates: list[LatentEstimate]) -> None:
    from invkeras.analyses.mi import LayerEstimate, _check_same_images

    _check_same_images([LayerEstimate(e.layer, e.inverter, e.nll_nats, 1.0, e.fingerprint) for e in estimates])
    first = estimates[0]
    for other in estimates[1:]:
        if other.latent != first.latent:
            raise InvkerasError(f"{COMMAND}: inverters {first.inverter} and {other.inverter} model different latent "
                                f"spaces ({first.latent} and {other.latent}); latent NLLs of different "
                                "autoencoders cannot share a table")


def build_latent_report(estimates: list[LatentEstimate], *, split: str, dataset: str,
                        unconditional: LatentEstimate | None = None,
                        reference_layer: str | None = None) -> LatentMIReport:
    """Rows of H*(z|h) per layer, differences to a reference layer and H*(z) - H*(z|h), with
    paired standard errors over the same images."""
    if not estimates:
        raise InvkerasError(f"{COMMAND}: no inverters given")
    everything = [*estimates, *([unconditional] if unconditional else [])]
    _check_comparable(everything)
    reference = None
    if reference_layer is not None:
        matches = [e for e in estimates if e.layer == reference_layer]
        if not matches:
            raise InvkerasError(f"--reference {reference_layer}: not among the inverters' layers "
                                f"({', '.join(e.layer for e in estimates)})")
        reference = matches[0]
    report = LatentMIReport(split=split, dataset=dataset, latent=everything[0].latent,
                            fingerprint=everything[0].fingerprint)
    for estimate in everything:
        row = {
            "layer": estimate.layer,
            "space": SPACE,
            "n_images": estimate.n,
            "latent_dim": estimate.latent_dim,
            NLL: estimate.mean,
            "se nats": estimate.se,
            "ci95 low": estimate.mean - 1.96 * estimate.se,
            "ci95 high": estimate.mean + 1.96 * estimate.se,
            "nats/dim": estimate.mean / estimate.latent_dim,
            "H*(z|h) - H*(z|h)(ref)": None,
            "se (paired, ref)": None,
            ESTIMATE: None,
            "se (paired)": None,
            "inverter": estimate.inverter,
            **seed_interval_columns(estimate),
        }
        if reference is not None:
            diff = estimate.nll_nats - reference.nll_nats
            row["H*(z|h) - H*(z|h)(ref)"] = float(np.mean(diff))
            row["se (paired, ref)"] = standard_error(diff)
        if unconditional is not None and estimate is not unconditional:
            diff = unconditional.nll_nats - estimate.nll_nats
            row[ESTIMATE] = float(np.mean(diff))
            row["se (paired)"] = standard_error(diff)
        report.rows.append(row)
    return report


def estimate_latent_mi(config, inverters: list, base_inverters: list = (), *, default_out) -> tuple[LatentMIReport, Path]:
    """The latent-space table of `estimate-mi` for inverters that all have a latent likelihood;
    `base_inverters` are the unconditional flow's runs (several: its training seeds)."""
    for inverter in [*inverters, *base_inverters]:
        if not is_latent(inverter):
            raise InvkerasError(f"{COMMAND}: inverter {inverter.path.parent} (kind '{inverter.kind}') has no latent "
                                "likelihood")
    from invkeras.analyses.mi import combine_seeds, group_seeds

    # Inverters of one layer that differ only in their training seed are one row, as in pixel space.
    each = [held_out_latent_nll(i, split=config.split, eval_examples=config.eval_examples) for i in inverters]
    groups = group_seeds(inverters, config.labels)
    estimates = [combine_seeds([each[i] for i in group], [inverters[i].config.run_seed for i in group])
                 for group in groups]
    for estimate, group in zip(estimates, groups):
        if config.labels is not None:
            estimate.layer = config.labels[group[0]]
    base = None
    if base_inverters:
        base = combine_seeds([held_out_latent_nll(i, split=config.split, eval_examples=config.eval_examples)
                              for i in base_inverters], [i.config.run_seed for i in base_inverters])
    first = inverters[0].config
    dataset = f"features:{first.features}" if first.features else first.dataset
    report = build_latent_report(estimates, split=config.split, dataset=dataset, unconditional=base,
                                 reference_layer=config.reference)
    out_path = Path(config.out) if config.out else default_out
    artifacts.write_json_atomic(out_path, report.payload())
    artifacts.write_text_atomic(out_path.with_suffix(".csv"), report.to_csv())
    artifacts.write_metadata(
        out_path,
        kind="latent-mi-estimate",
        config={**config.model_dump(), "inverters": [str(i.path) for i in inverters],
                "unconditional": ([str(i.path) for i in base_inverters] if len(base_inverters) > 1
                                  else str(base_inverters[0].path) if base_inverters else None)},
        data=dataset,
        space=SPACE,
        label=LABEL,
        results={"fingerprint": report.fingerprint, "n_images": report.rows[0]["n_images"], "latent": report.latent},
    )
    return report, out_path
