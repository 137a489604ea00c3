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
layers use paired standard errors.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from invkeras import artifacts
from invkeras.errors import InvkerasError


@dataclass
class LayerEstimate:
    layer: str
    inverter: str
    nll_nats: np.ndarray  # per image
    bits_per_dim_factor: float

    @property
    def n(self) -> int:
        return len(self.nll_nats)

    @property
    def mean(self) -> float:
        return float(np.mean(self.nll_nats))

    @property
    def se(self) -> float:
        return _se(self.nll_nats)


@dataclass
class MIReport:
    split: str
    dataset: str
    entropy_nats: float | None
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, path: str | Path) -> "MIReport":
        import json

        payload = json.loads(Path(path).read_text())
        return cls(split=payload["split"], dataset=payload["dataset"], entropy_nats=payload["entropy_nats"],
                   rows=payload["rows"])

    def to_csv(self) -> str:
        buffer = io.StringIO()
        columns = list(self.rows[0].keys()) if self.rows else []
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return buffer.getvalue()


def _se(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def held_out_nll(inverter_path: str | Path, *, split: str = "test", eval_examples: int | None = None,
                 batch_size: int = 64, reuse: bool = True) -> LayerEstimate:
    """Per-image NLL (nats) of one inverter on a held-out split of the data it was trained for.

    The NLLs recorded at the end of training are reused when they cover the same images
    (`reuse=False` evaluates the saved model afresh).
    """
    from invkeras.train_inverter import (InverterConfig, inverter_arrays, load_inverter, per_image_nll_nats,
                                         saved_per_image_nll)

    model, net_config, meta = load_inverter(inverter_path)
    config = InverterConfig(**meta["config"])
    dims = int(np.prod(net_config.image_shape))
    if reuse and eval_examples in (None, config.eval_examples):
        saved = saved_per_image_nll(_inverter_file(inverter_path), split)
        if saved is not None:
            return LayerEstimate(config.layer, str(inverter_path), saved, 1.0 / (dims * math.log(2)))
    config = config.model_copy(update={"eval_examples": eval_examples or config.eval_examples})
    _, val, test, _ = inverter_arrays(config)
    arrays = {"validation": val, "test": test}.get(split)
    if arrays is None:
        raise InvkerasError(f"--split {split}: inverter {inverter_path} has no held-out '{split}' data")
    nll = per_image_nll_nats(model, net_config, arrays, batch_size=batch_size)
    return LayerEstimate(config.layer, str(inverter_path), nll, 1.0 / (dims * math.log(2)))


def build_report(
    estimates: list[LayerEstimate],
    *,
    split: str,
    dataset: str,
    unconditional: LayerEstimate | None = None,
    reference_layer: str | None = None,
    entropy_nats: float | None = None,
) -> MIReport:
    """Rows of H*(x|h), NCE, NCE relative to a reference layer, and the MI estimates/bounds."""
    if not estimates:
        raise InvkerasError("estimate-mi: no inverters given")
    sizes = {e.n for e in estimates} | ({unconditional.n} if unconditional else set())
    if len(sizes) != 1:
        raise InvkerasError(f"estimate-mi: inverters were evaluated on different numbers of images {sorted(sizes)}")
    reference = None
    if reference_layer is not None:
        matches = [e for e in estimates if e.layer == reference_layer]
        if not matches:
            layers = ", ".join(e.layer for e in estimates)
            raise InvkerasError(f"--reference {reference_layer}: not among the inverters' layers ({layers})")
        reference = matches[0]

    report = MIReport(split=split, dataset=dataset, entropy_nats=entropy_nats)
    for estimate in [*estimates, *([unconditional] if unconditional else [])]:
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
            "H*(x) - H*(x|h) [estimate]": None,
            "H(x) - H*(x|h) [lower bound on I]": None,
            "inverter": estimate.inverter,
        }
        if reference is not None:
            diff = reference.nll_nats - estimate.nll_nats  # NCE(layer) - NCE(ref)
            row["NCE - NCE(ref)"] = float(np.mean(diff))
            row["se (paired)"] = _se(diff)
        if unconditional is not None and estimate is not unconditional:
            row["H*(x) - H*(x|h) [estimate]"] = float(np.mean(unconditional.nll_nats - estimate.nll_nats))
        if entropy_nats is not None:
            row["H(x) - H*(x|h) [lower bound on I]"] = entropy_nats - estimate.mean
        report.rows.append(row)
    return report


def estimate_mi(
    inverters: list[str | Path],
    *,
    split: str = "test",
    unconditional: str | Path | None = None,
    reference_layer: str | None = None,
    eval_examples: int | None = None,
    out: str | Path | None = None,
    labels: list[str] | None = None,
) -> tuple[MIReport, Path]:
    """Evaluate inverters on one held-out split and write the report as JSON and CSV.

    `labels` name the rows instead of the layers, e.g. "conv/fc3" and "fc/fc3" when one layer of
    several architectures is compared; `reference_layer` then names a label.
    """
    from invkeras.data import dataset_info

    estimates = [held_out_nll(p, split=split, eval_examples=eval_examples) for p in inverters]
    if labels is not None:
        if len(labels) != len(estimates) or len(set(labels)) != len(labels):
            raise InvkerasError(f"estimate-mi: need one distinct label per inverter, got {labels}")
        for estimate, label in zip(estimates, labels):
            estimate.layer = label
    base = held_out_nll(unconditional, split=split, eval_examples=eval_examples) if unconditional else None
    meta = artifacts.read_metadata(_inverter_file(inverters[0])) or {}
    dataset = (meta.get("config") or {}).get("dataset", "unknown")
    entropy = None
    if not (meta.get("config") or {}).get("features"):
        entropy = dataset_info(dataset).entropy_nats
    report = build_report(
        estimates, split=split, dataset=dataset, unconditional=base, reference_layer=reference_layer, entropy_nats=entropy
    )
    out_path = Path(out) if out else _inverter_file(inverters[0]).parent.parent.parent / "mi" / f"{split}.json"
    payload = {"split": split, "dataset": dataset, "entropy_nats": entropy, "rows": report.rows}
    artifacts.write_json_atomic(out_path, payload)
    artifacts.write_text_atomic(out_path.with_suffix(".csv"), report.to_csv())
    artifacts.write_metadata(
        out_path,
        kind="mi-estimate",
        config={"inverters": [str(p) for p in inverters], "unconditional": str(unconditional) if unconditional else None,
                "reference": reference_layer, "split": split, "eval_examples": eval_examples, "labels": labels},
        data=dataset,
    )
    return report, out_path


def _inverter_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "inverter.keras" if path.is_dir() else path
